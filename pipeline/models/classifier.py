"""classifier: the analyst's classes from a few samples, by a classifier over per-pixel
features (bands, local statistics, backbone patch features) that fit and segment compute the
same way."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models import backbone as bb
from pipeline.models.forest import FOREST_KEYS, predict_forest, predict_forest_grid
from pipeline.models.local_stats import band_features
from pipeline.models.torch_model import TorchSegmentationModel

HEADS = ("trees", "linear")


def band_feature_tensor(images: torch.Tensor, radii: list[int],
                        mask: np.ndarray | None = None) -> torch.Tensor:
    """:func:`~pipeline.models.local_stats.band_features` of images (N, C, H, W), as a tensor
    (N, C + 2·C·len(radii), H, W) on the images' device (a channels-last view)."""
    hwc = np.stack([band_features(im, radii, mask)
                    for im in images.detach().float().cpu().numpy()])
    return torch.from_numpy(hwc).permute(0, 3, 1, 2).to(images.device)


def local_statistics(images: torch.Tensor, radii: list[int]) -> torch.Tensor:
    """Mean and standard deviation of each band in (2r+1)² windows, per radius (reflected at
    the tile's edges, which the tiles' overlap and blending hide): (N, 2·C·len(radii), H, W).
    """
    return band_feature_tensor(images, radii)[:, images.shape[1]:]


class SampleClassifier(TorchSegmentationModel):
    """Per-pixel features -> a tree ensemble (``trees``) or a multinomial logistic regression
    (``linear``) -> class probabilities. ``backbone`` None: bands and local statistics only."""

    method: ClassVar[str] = "classifier"

    def __init__(
        self,
        backbone: torch.nn.Module | None,
        backbone_info: dict[str, Any] | None,
        head: str,
        head_tensors: dict[str, torch.Tensor],
        class_names: list[str],
        colors: list[tuple[int, int, int]],
        local_radii: list[int],
        input_scale: float = 1.0,
        embed_backbone: bool = False,
        codes_head: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(class_names, colors)
        if head not in HEADS:
            raise ValueError(f"unknown classifier head {head!r}")
        self.head = head
        self.local_radii = [int(r) for r in local_radii]
        self.input_scale = float(input_scale)
        self.backbone = backbone.eval() if backbone is not None else None
        if backbone is not None:
            self.backbone_info = dict(backbone_info or {})
            self.patch_size = bb.model_patch(backbone, self.input_scale)
            mean, std = bb.normalisation(backbone)
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
            source = self.backbone_info["weights"]["source"]
            self.embed_backbone = embed_backbone or source == "random"
        else:
            self.patch_size = 1
            self.embed_backbone = False
        if codes_head is not None and backbone is None:
            raise ValueError("STEGO codes need the backbone they were trained on")
        # a STEGO model's segmentation head: its codes are features too
        self.codes_head = codes_head.eval() if codes_head is not None else None
        self.head_tensors = {k: v.detach().cpu() for k, v in head_tensors.items()}
        self._forest = ({k: v.numpy() for k, v in self.head_tensors.items()}
                        if head == "trees" else None)

    @property
    def feature_dim(self) -> int:
        """Features per pixel."""
        n = 3 + 6 * len(self.local_radii)
        n += int(self.backbone.num_features) if self.backbone is not None else 0
        return n + (int(self.codes_head.dim) if self.codes_head is not None else 0)

    def _features(self, images: torch.Tensor, mask: np.ndarray | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pixel-resolution features (N, 3 + 6·radii, H, W): the bands and their local
        statistics (only at the pixels of ``mask`` when given, 0 elsewhere); and the
        backbone's unit-length patch features (N, C, h, w), followed by a STEGO model's
        unit-length codes when it has one, or None."""
        x = images.float()
        pixel = band_feature_tensor(x, self.local_radii, mask)
        if self.backbone is None:
            return pixel, None
        scaled = bb.resample(x, self.input_scale)
        f = bb.patch_features(self.backbone, (scaled - self.mean) / self.std)
        with bb.full_precision(f):
            patch = F.normalize(f.float(), dim=1)
            if self.codes_head is not None:
                codes = F.normalize(self.codes_head(f.float()), dim=1)
                patch = torch.cat([patch, codes], 1)
            return pixel, patch

    def pixel_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) float32 features of images (N, 3, H, W) in [0, 1]: the bands, their
        local statistics, and the backbone's unit-length patch features upsampled bilinearly."""
        pixel, patch = self._features(images)
        if patch is None:
            return pixel
        with bb.full_precision(patch):
            up = F.interpolate(patch, size=pixel.shape[-2:], mode="bilinear",
                               align_corners=False)
            return torch.cat([pixel, up], 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities (n, K) of feature rows (n, D)."""
        with bb.full_precision(features):
            if self.head == "linear":
                t = self.head_tensors
                z = (features.float() - t["linear.mean"].to(features.device)) \
                    / t["linear.std"].to(features.device)
                logits = z @ t["linear.weight"].to(features.device).T \
                    + t["linear.bias"].to(features.device)
                return torch.softmax(logits, dim=1)
            probs = predict_forest(self._forest, features.detach().float().cpu().numpy())
            return torch.from_numpy(probs).to(features.device)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities at pixel resolution, one image at a time (bounded memory)."""
        return self.predict_sampled(images, None)

    def predict_sampled(self, images: torch.Tensor,
                        masks: list[np.ndarray] | None) -> torch.Tensor:
        """Class probabilities at the pixels of each image's boolean mask (H, W), 0 elsewhere
        (all pixels when ``masks`` is None). The trees read the features they test straight
        from the pixel features and the patch grid, so the (D, H, W) stack is never built."""
        out = []
        for i, img in enumerate(images):
            mask = None if masks is None else masks[i]
            if self.head == "trees":
                pixel, patch = self._features(img[None], mask)  # band features at the mask
                grid = (patch[0].permute(1, 2, 0) if patch is not None
                        else pixel.new_zeros(1, 1, 0))
                p = predict_forest_grid(self._forest, pixel[0].permute(1, 2, 0).cpu().numpy(),
                                        grid.cpu().numpy(), mask)
                out.append(torch.from_numpy(p).to(img.device))
                continue
            f = self.pixel_features(img[None])[0]
            d, h, w = f.shape
            p = self.classify(f.reshape(d, h * w).T).T.reshape(-1, h, w)
            if mask is not None:
                p = p * torch.from_numpy(np.asarray(mask, dtype=bool)).to(p.device)
            out.append(p)
        return torch.stack(out)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {k: v.contiguous() for k, v in self.head_tensors.items()}
        if self.backbone is not None and self.embed_backbone:
            tensors.update(bb.embedded_tensors(self.backbone))
        if self.codes_head is not None:
            tensors.update({f"codes_head.{k}": v.detach().cpu().contiguous()
                            for k, v in self.codes_head.state_dict().items()})
        return tensors

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"head": self.head, "local_radii": self.local_radii,
                                # segment's default for this model (model.refine: null): the
                                # superpixel averaging measured better (docs/few-labels.md);
                                # the dense CRF (--crf) is opt-in: 1.5-1.6x the time
                                "refine": "regions", "refine_pixels": 256,
                                "backbone_features": self.backbone is not None,
                                "backbone_embedded": self.embed_backbone,
                                "feature_dim": self.feature_dim}
        if self.codes_head is not None:
            meta["stego_codes"] = {"in_dim": int(self.codes_head.in_dim),
                                   "dim": int(self.codes_head.dim)}
        if self.input_scale != 1.0:
            meta["input_scale"] = self.input_scale
        return meta

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model_dir: str
    ) -> SampleClassifier:
        params = meta["params"]
        net = None
        if params.get("backbone_features", True):
            net = bb.load_backbone(meta["backbone"], tensors, params["backbone_embedded"],
                                   model_dir)
        keys = FOREST_KEYS if params["head"] == "trees" else \
            ("linear.mean", "linear.std", "linear.weight", "linear.bias")
        head = {k: tensors[k] for k in keys}
        if params["head"] == "trees" and int(head["forest.value"].shape[1]) != \
                len(meta["class_names"]):
            raise ValueError("the trees' classes differ from the model's class names")
        codes_head = None
        if params.get("stego_codes"):
            from pipeline.models.stego_head import SegmentationHead

            spec = params["stego_codes"]
            codes_head = SegmentationHead(int(spec["in_dim"]), int(spec["dim"]))
            codes_head.load_state_dict(bb.prefixed(tensors, "codes_head."), strict=True)
        return cls(net, meta.get("backbone"), params["head"], head, meta["class_names"],
                   [tuple(c) for c in meta["colors"]], params["local_radii"],
                   input_scale=params.get("input_scale", 1.0),
                   embed_backbone=params["backbone_embedded"], codes_head=codes_head)


def forest_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tree arrays (:func:`pipeline.models.forest.forest_arrays`) as tensors to save."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
