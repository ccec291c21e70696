"""feature-kmeans: cosine k-means on frozen DINO patch features (STEGO's DINO baseline)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from pipeline.models import backbone as bb
from pipeline.models.torch_model import TorchSegmentationModel


class FeatureKMeans(TorchSegmentationModel):
    """softmax(alpha * cos(feature, centroid)), upsampled bilinearly from patches to pixels.

    ``input_scale`` resamples images before the backbone (a preset's ground sampling
    distance), at fit and at segment alike."""

    method: ClassVar[str] = "feature-kmeans"

    def __init__(
        self,
        backbone: torch.nn.Module,
        backbone_info: dict[str, Any],
        centroids: torch.Tensor,
        class_names: list[str],
        colors: list[tuple[int, int, int]],
        alpha: float = 2.0,
        embed_backbone: bool = False,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__(class_names, colors)
        self.backbone = backbone.eval()
        self.backbone_info = dict(backbone_info)
        self.register_buffer("centroids", F.normalize(centroids.float(), dim=1))
        self.alpha = float(alpha)
        self.input_scale = float(input_scale)
        self.patch_size = bb.model_patch(backbone, self.input_scale)
        mean, std = bb.normalisation(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        # random weights cannot be recreated elsewhere, so they always travel with the model
        source = self.backbone_info["weights"]["source"]
        self.embed_backbone = embed_backbone or source == "random"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone patch features (N, C, H/p, W/p) for images in [0, 1] (p: ``patch_size``)."""
        return self.scaled_features(bb.resample(images.float(), self.input_scale))

    def scaled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features of images already resampled by ``input_scale``."""
        return bb.patch_features(self.backbone, (x.float() - self.mean) / self.std)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities at pixel resolution."""
        feats = self.features(images)
        with bb.full_precision(feats):
            f = F.normalize(feats, dim=1)
            cos = torch.einsum("nchw,kc->nkhw", f, self.centroids)
            cos = F.interpolate(cos, size=images.shape[-2:], mode="bilinear",
                                align_corners=False)
            return torch.softmax(self.alpha * cos, dim=1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"centroids": self.centroids.detach().cpu().contiguous()}
        if self.embed_backbone:
            tensors.update(bb.embedded_tensors(self.backbone))
        return tensors

    def metadata(self) -> dict[str, Any]:
        meta = {"alpha": self.alpha, "backbone_embedded": self.embed_backbone}
        if self.input_scale != 1.0:  # model files without it (older, or native GSD) load as 1
            meta["input_scale"] = self.input_scale
        return meta

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model_dir: str
    ) -> FeatureKMeans:
        info = meta["backbone"]
        params = meta["params"]
        embedded = params.get("backbone_embedded", False)
        net = bb.load_backbone(info, tensors, embedded, model_dir)
        return cls(net, info, tensors["centroids"], meta["class_names"],
                   [tuple(c) for c in meta["colors"]], alpha=params["alpha"],
                   embed_backbone=params.get("backbone_embedded", False),
                   input_scale=params.get("input_scale", 1.0))
