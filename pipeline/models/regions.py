"""region and edge: an image is cut into regions (seeded region growing, or edges closed by
watershed), and each region is labelled by a nearest-centroid classifier on its statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np

from pipeline.models.base import SegmentationModel, softmax_neg
from pipeline.models.region_segmenters import (
    N_FEATURES,
    RegionParams,
    edge_regions,
    grow_regions,
    region_features,
)

# relative weight of each statistic in the classifier's distance (after standardising):
# mean colour decides, texture (colour std, gradient) helps, area only breaks ties
FEATURE_WEIGHTS = np.array([1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25], dtype=np.float32)


class RegionModel(SegmentationModel):
    """Regions from ``segmenter``; class probabilities softmax(-d^2 / (2 sigma^2)) of each
    region's standardised statistics to the fitted centroids, the same for all its pixels."""

    method: ClassVar[str] = ""
    segmenter: ClassVar[Callable[[np.ndarray, RegionParams], np.ndarray]]

    def __init__(
        self,
        params: RegionParams,
        centroids: Any,
        feature_mean: Any,
        feature_scale: Any,
        sigma2: float,
        class_names: list[str],
        colors: list[tuple[int, int, int]],
    ) -> None:
        super().__init__(class_names, colors)
        self.centroids = np.array(centroids, dtype=np.float32)
        if self.centroids.shape != (len(class_names), N_FEATURES):
            raise ValueError(f"centroids must be ({len(class_names)}, {N_FEATURES})")
        self.params = params
        self.feature_mean = np.array(feature_mean, dtype=np.float32)
        self.feature_scale = np.array(feature_scale, dtype=np.float32)
        self.sigma2 = float(sigma2)

    def regions(self, image: np.ndarray) -> np.ndarray:
        """Regions (H, W) int32 of one image (H, W, 3) in [0, 1]."""
        return type(self).segmenter(image, self.params)

    def standardise(self, feats: np.ndarray) -> np.ndarray:
        """Region statistics in the classifier's space (standardised, weighted)."""
        return (feats - self.feature_mean) / self.feature_scale * FEATURE_WEIGHTS

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel probabilities: each region's class scores spread over its pixels."""
        out = []
        centroids = self.centroids.astype(np.float64)
        for img in np.asarray(images, dtype=np.float32):
            hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
            regions = self.regions(hwc)
            feats, _ = region_features(hwc, regions)
            z = self.standardise(feats).astype(np.float64)
            d2 = ((z[:, None, :] - centroids[None]) ** 2).sum(-1)
            probs = softmax_neg(d2, 2 * self.sigma2, axis=1)
            out.append(probs.T[:, regions])
        return np.stack(out)

    def state_tensors(self) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(getattr(self, k))
                for k in ("centroids", "feature_mean", "feature_scale")}

    def metadata(self) -> dict[str, Any]:
        return {"sigma2": self.sigma2, "segmenter": asdict(self.params),
                "feature_weights": FEATURE_WEIGHTS.tolist()}

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, Any], model_dir: str
    ) -> RegionModel:
        p = meta["params"]
        return cls(RegionParams(**p["segmenter"]), tensors["centroids"],
                   tensors["feature_mean"], tensors["feature_scale"], p["sigma2"],
                   meta["class_names"], [tuple(c) for c in meta["colors"]])


class RegionGrowingModel(RegionModel):
    """Seeded region growing (gradient-minimum seeds, colour tolerance), regions classified."""

    method: ClassVar[str] = "region"
    segmenter = staticmethod(grow_regions)


class EdgeRegionModel(RegionModel):
    """Canny edges closed into regions by watershed, regions classified."""

    method: ClassVar[str] = "edge"
    segmenter = staticmethod(edge_regions)
