"""pixel-kmeans: k-means on pixel colours (the clustering baseline of the STEGO paper)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pipeline.models.base import SegmentationModel, softmax_neg


class PixelKMeans(SegmentationModel):
    """Soft nearest-centroid assignment in colour space: softmax(-d^2 / (2 sigma^2)).

    Computed with NumPy on the CPU: a pixel-kmeans run does not import torch."""

    method: ClassVar[str] = "pixel-kmeans"

    def __init__(
        self,
        centroids: Any,
        sigma2: float,
        class_names: list[str],
        colors: list[tuple[int, int, int]],
    ) -> None:
        super().__init__(class_names, colors)
        self.centroids = np.array(centroids, dtype=np.float32)  # (K, bands)
        if self.centroids.ndim != 2 or self.centroids.shape[0] != len(class_names):
            raise ValueError(f"centroids must be ({len(class_names)}, bands), "
                             f"not {self.centroids.shape}")
        self.sigma2 = float(sigma2)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel probabilities (N, K, H, W); each pixel is independent of its neighbours."""
        x = np.asarray(images, dtype=np.float32)
        n, _, h, w = x.shape
        d2 = np.zeros((n, self.n_classes, h, w), dtype=np.float32)
        diff = np.empty((n, h, w), dtype=np.float32)
        for k, centroid in enumerate(self.centroids):
            for band, value in enumerate(centroid):
                np.subtract(x[:, band], value, out=diff)
                diff *= diff
                d2[:, k] += diff
        return softmax_neg(d2, 2 * self.sigma2, axis=1)

    def state_tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": np.ascontiguousarray(self.centroids)}

    def metadata(self) -> dict[str, Any]:
        return {"sigma2": self.sigma2}

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, Any], model_dir: str
    ) -> PixelKMeans:
        return cls(tensors["centroids"], meta["params"]["sigma2"], meta["class_names"],
                   [tuple(c) for c in meta["colors"]])
