"""STEGO: frozen DINO backbone -> segmentation head -> cluster probe (-> dense CRF)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.models import backbone as bb
from pipeline.models.stego_head import ClusterProbe, SegmentationHead
from pipeline.models.torch_model import TorchSegmentationModel

# average the codes of each tile and its horizontal mirror (STEGO's evaluation does); what a
# model does when neither it nor `model.flip` says: off, since it measured no better for twice
# the backbone work (docs/models.md)
FLIP_DEFAULT = False


class StegoModel(TorchSegmentationModel):
    """Class probabilities ``softmax(alpha * cos(code, centroid))`` at pixel resolution.

    Codes are upsampled bilinearly to the (resampled) tile before the probe, as STEGO's
    evaluation does. ``input_scale`` resamples tiles before the backbone (e.g. 0.5 runs 5 cm
    imagery at 10 cm, as STEGO trained on Potsdam); probabilities come back at full resolution.
    With ``crf`` on, each tile's probabilities are refined by a dense CRF on its RGB pixels;
    tiles are on the global grid, so the result stays seamless.
    """

    method: ClassVar[str] = "stego"

    def __init__(
        self,
        backbone: torch.nn.Module,
        backbone_info: dict[str, Any],
        head: SegmentationHead,
        probe: ClusterProbe,
        class_names: list[str],
        colors: list[tuple[int, int, int]],
        alpha: float = 2.0,
        input_scale: float = 1.0,
        crf: bool = False,
        embed_backbone: bool = False,
        linear_probe: torch.nn.Conv2d | None = None,
        flip: bool = FLIP_DEFAULT,
    ) -> None:
        super().__init__(class_names, colors)
        if probe.clusters.shape[0] != len(class_names):
            raise ValueError("one class name per cluster is required")
        self.backbone = backbone.eval()
        self.backbone_info = dict(backbone_info)
        self.head = head.eval()
        self.probe = probe
        self.linear_probe = linear_probe
        self.alpha = float(alpha)
        self.input_scale = float(input_scale)
        self.crf = bool(crf)
        self.flip = bool(flip)
        self.use_linear_probe = False  # the supervised probe, for evaluation only
        # tiles must map to a whole number of patches after resampling
        self.patch_size = bb.model_patch(backbone, self.input_scale)
        mean, std = bb.normalisation(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.embed_backbone = embed_backbone or backbone_info["weights"]["source"] == "random"

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """Head codes (N, dim, h, w) for images in [0, 1] at the model's resolution."""
        x = (images.float() - self.mean) / self.std
        feats = bb.patch_features(self.backbone, x)
        with bb.full_precision(feats):
            return self.head(feats)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K, H, W) for images (N, 3, H, W) in [0, 1]. With ``flip``,
        the codes are the mean of the image's and its horizontal mirror's (mirrored back), as
        STEGO's own evaluation computes them."""
        h, w = images.shape[-2:]
        x = bb.resample(images.float(), self.input_scale)
        codes = self.codes(x)
        if self.flip:
            codes = (codes + self.codes(x.flip(-1)).flip(-1)) / 2
        with bb.full_precision(codes):
            return self._probs(images, x, codes, h, w)

    def _probs(self, images: torch.Tensor, x: torch.Tensor, codes: torch.Tensor,
               h: int, w: int) -> torch.Tensor:
        """Probe (and CRF) on the head's codes, in float32."""
        codes = F.interpolate(codes, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.use_linear_probe:
            if self.linear_probe is None:
                raise InputError("model.probe", "this model has no linear probe (fit with "
                                 "--labels to train one)")
            probs = torch.softmax(self.linear_probe(codes), dim=1)
        else:
            probs = self.probe.probs(codes, self.alpha)
        if self.input_scale != 1.0:
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        if self.crf:
            from pipeline.models.crf import dense_crf

            rgb = (images.clamp(0, 1) * 255).round().to(torch.uint8)
            # the lattice Gaussian reproduces pydensecrf (and so STEGO) within 1e-4
            probs = torch.stack([dense_crf(p, im, gaussian="lattice")
                                 for p, im in zip(probs, rgb, strict=True)])
        return probs

    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        t["probe.clusters"] = self.probe.clusters.detach()
        if self.linear_probe is not None:
            t.update({f"linear_probe.{k}": v for k, v in self.linear_probe.state_dict().items()})
        if self.embed_backbone:
            t.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}

    def metadata(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "input_scale": self.input_scale, "crf": self.crf,
            "flip": self.flip,
            "dim": self.head.dim, "in_dim": self.head.in_dim,
            "backbone_embedded": self.embed_backbone,
            "linear_probe": self.linear_probe is not None,
        }

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model_dir: str
    ) -> StegoModel:
        info, params = meta["backbone"], meta["params"]
        net = bb.load_backbone(info, tensors, params.get("backbone_embedded", False), model_dir)
        head = SegmentationHead(params["in_dim"], params["dim"])
        head.load_state_dict(bb.prefixed(tensors, "head."), strict=True)
        probe = ClusterProbe(params["dim"], tensors["probe.clusters"].shape[0])
        probe.clusters.data.copy_(tensors["probe.clusters"])
        linear = None
        if params.get("linear_probe"):
            w = tensors["linear_probe.weight"]
            linear = torch.nn.Conv2d(w.shape[1], w.shape[0], 1)
            linear.load_state_dict(bb.prefixed(tensors, "linear_probe."), strict=True)
        return cls(net, info, head, probe, meta["class_names"], [tuple(c) for c in meta["colors"]],
                   alpha=params["alpha"], input_scale=params["input_scale"], crf=params["crf"],
                   embed_backbone=params.get("backbone_embedded", False), linear_probe=linear,
                   flip=params.get("flip", FLIP_DEFAULT))



def stego_model_from_import(
    imported: Any,
    source_path: str,
    overrides: dict[str, Any] | None = None,
    alpha: float = 2.0,
    input_scale: float = 1.0,
    crf: bool = False,
) -> StegoModel:
    """Our StegoModel from an official checkpoint (``stego_checkpoint.ImportedStego``).

    The backbone weights come from the checkpoint, so they are always embedded. Its position
    embeddings are resampled as DINO's ViT, which STEGO's code runs, does at other tile sizes.
    """
    from pipeline.models.base import default_class_names, default_colors
    from pipeline.models.pos_embed import DINO, set_interpolation

    net, _ = bb.build_backbone(imported.backbone_name, "random", overrides)
    try:
        net.load_state_dict(imported.backbone_state, strict=True)
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1].strip()
        raise InputError(source_path, f"backbone does not fit {imported.backbone_name} "
                         f"(pass --backbone-arg for non-standard sizes): {last}") from None
    set_interpolation(net, DINO)
    provenance = {"source": "checkpoint", "path": str(source_path),
                  "file_sha256": bb.file_sha256(source_path),
                  "sha256": bb.tensor_hash(net.state_dict())}
    info = bb.describe_backbone(imported.backbone_name, overrides, provenance, net)
    head = SegmentationHead(net.num_features, imported.dim)
    head.load_state_dict(imported.head_state, strict=True)
    probe = ClusterProbe(imported.dim, imported.n_clusters)
    probe.clusters.data.copy_(imported.clusters)
    linear = None
    if imported.linear_probe is not None:
        w = imported.linear_probe["weight"]
        linear = torch.nn.Conv2d(w.shape[1], w.shape[0], 1)
        linear.load_state_dict(imported.linear_probe, strict=True)
    k = imported.n_clusters
    return StegoModel(net, info, head.eval(), probe, default_class_names(k), default_colors(k),
                      alpha=alpha, input_scale=input_scale, crf=crf, embed_backbone=True,
                      linear_probe=linear)
