"""pixel-kmeans: k-means on pixel colours (the clustering baseline of the STEGO paper)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from pipeline.models.base import SegmentationModel


class PixelKMeans(SegmentationModel):
    """Soft nearest-centroid assignment in colour space: softmax(-d^2 / (2 sigma^2))."""

    method: ClassVar[str] = "pixel-kmeans"

    def __init__(
        self,
        centroids: torch.Tensor,
        sigma2: float,
        class_names: list[str],
        colors: list[tuple[int, int, int]],
    ) -> None:
        super().__init__(class_names, colors)
        self.register_buffer("centroids", centroids.float())
        self.sigma2 = float(sigma2)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel probabilities; each pixel is independent of its neighbours."""
        x = images.float().permute(0, 2, 3, 1)  # N,H,W,3
        d2 = ((x[..., None, :] - self.centroids) ** 2).sum(-1)  # N,H,W,K
        return torch.softmax(-d2 / (2 * self.sigma2), dim=-1).permute(0, 3, 1, 2)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"centroids": self.centroids.detach().cpu().contiguous()}

    def metadata(self) -> dict[str, Any]:
        return {"sigma2": self.sigma2}

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model_dir: str
    ) -> PixelKMeans:
        return cls(tensors["centroids"], meta["params"]["sigma2"], meta["class_names"],
                   [tuple(c) for c in meta["colors"]])
