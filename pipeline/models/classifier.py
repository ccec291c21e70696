"""classifier: the analyst's classes from a few samples, by a classifier over per-pixel
features (bands, local statistics, backbone patch features) that fit and segment compute the
same way."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.models import backbone as bb
from pipeline.models.forest import FOREST_KEYS, predict_forest
from pipeline.models.torch_model import TorchSegmentationModel

HEADS = ("trees", "linear")


def local_statistics(images: torch.Tensor, radii: list[int]) -> torch.Tensor:
    """Mean and standard deviation of each band in (2r+1)² windows, per radius (reflected at
    the tile's edges, which the tiles' overlap and blending hide): (N, 2·C·len(radii), H, W)."""
    out = []
    for r in radii:
        k = 2 * r + 1
        pad = F.pad(images, (r, r, r, r), mode="reflect" if r < min(images.shape[-2:])
                    else "replicate")
        mean = F.avg_pool2d(pad, k, 1)
        sq = F.avg_pool2d(pad * pad, k, 1)
        out += [mean, (sq - mean * mean).clamp_min(0).sqrt()]
    return torch.cat(out, 1) if out else images.new_zeros(images.shape[0], 0, *images.shape[2:])


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
        self.head_tensors = {k: v.detach().cpu() for k, v in head_tensors.items()}
        self._forest = ({k: v.numpy() for k, v in self.head_tensors.items()}
                        if head == "trees" else None)

    @property
    def feature_dim(self) -> int:
        """Features per pixel."""
        n = 3 + 6 * len(self.local_radii)
        return n + (int(self.backbone.num_features) if self.backbone is not None else 0)

    def pixel_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W) float32 features of images (N, 3, H, W) in [0, 1]: the bands, their
        local statistics, and the backbone's unit-length patch features upsampled bilinearly."""
        x = images.float()
        parts = [x]
        with bb.full_precision(x):
            parts.append(local_statistics(x, self.local_radii))
        if self.backbone is not None:
            scaled = bb.resample(x, self.input_scale)
            f = bb.patch_features(self.backbone, (scaled - self.mean) / self.std)
            with bb.full_precision(f):
                f = F.normalize(f.float(), dim=1)
                parts.append(F.interpolate(f, size=x.shape[-2:], mode="bilinear",
                                           align_corners=False))
        with bb.full_precision(x):
            return torch.cat([p.float() for p in parts], 1)

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
        out = []
        for img in images:
            f = self.pixel_features(img[None])[0]
            d, h, w = f.shape
            p = self.classify(f.reshape(d, h * w).T)
            out.append(p.T.reshape(-1, h, w))
        return torch.stack(out)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {k: v.contiguous() for k, v in self.head_tensors.items()}
        if self.backbone is not None and self.embed_backbone:
            tensors.update(bb.embedded_tensors(self.backbone))
        return tensors

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"head": self.head, "local_radii": self.local_radii,
                                # segment's default for this model (model.refine: null): the
                                # superpixel averaging measured better (docs/few-labels.md)
                                "refine": "regions", "refine_pixels": 256,
                                "backbone_features": self.backbone is not None,
                                "backbone_embedded": self.embed_backbone,
                                "feature_dim": self.feature_dim}
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
        return cls(net, meta.get("backbone"), params["head"], head, meta["class_names"],
                   [tuple(c) for c in meta["colors"]], params["local_radii"],
                   input_scale=params.get("input_scale", 1.0),
                   embed_backbone=params["backbone_embedded"])


def forest_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Tree arrays (:func:`pipeline.models.forest.forest_arrays`) as tensors to save."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
