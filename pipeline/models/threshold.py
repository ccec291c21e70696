"""threshold: multi-level Otsu thresholds on a per-pixel index (brightness, NDVI, excess green)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pipeline.models.base import SegmentationModel, softmax_neg

INDICES = ("brightness", "ndvi", "exg")
EPS = 1e-6


def pixel_index(images: np.ndarray, index: str, channels: dict[str, int]) -> np.ndarray:
    """The index (N, H, W) of images (N, 3, H, W) in [0, 1], float32.

    ``brightness`` is the mean of the three bands; ``ndvi`` is (NIR - red) / (NIR + red) with
    ``channels`` giving the positions of ``nir`` and ``red``; ``exg`` is excess green
    2g - r - b on chromatic coordinates (each band over the sum of the three, bands in
    R, G, B order), as Woebbecke et al. define it.
    """
    x = np.asarray(images, dtype=np.float32)
    if index == "brightness":
        return x.mean(axis=1, dtype=np.float32)
    if index == "ndvi":
        nir, red = x[:, channels["nir"]], x[:, channels["red"]]
        return (nir - red) / np.maximum(nir + red, np.float32(EPS))
    if index == "exg":
        chroma = x / np.maximum(x.sum(axis=1, keepdims=True), np.float32(EPS))
        return 2 * chroma[:, 1] - chroma[:, 0] - chroma[:, 2]
    raise ValueError(f"unknown index {index!r} (choose from {', '.join(INDICES)})")


def interval_scores(values: np.ndarray, thresholds: np.ndarray, softness: float
                    ) -> np.ndarray:
    """Class probabilities (N, K, H, W) for index values (N, H, W) and K-1 sorted thresholds.

    Class ``c`` is the interval ``(t[c-1], t[c]]`` (Otsu's ``value > t`` is the upper class);
    its score is ``-distance to the interval / softness``, so the argmax is exactly the
    interval holding the value and the confidence falls towards 1/2 at a threshold.
    """
    t = np.asarray(thresholds, dtype=np.float32)
    low = np.concatenate([[-np.inf], t]).astype(np.float32).reshape(1, -1, 1, 1)
    high = np.concatenate([t, [np.inf]]).astype(np.float32).reshape(1, -1, 1, 1)
    v = np.asarray(values, dtype=np.float32)[:, None]
    dist = np.maximum(low - v, 0) + np.maximum(v - high, 0)
    return softmax_neg(dist, softness, axis=1)


class ThresholdModel(SegmentationModel):
    """K classes from K-1 thresholds on one index per pixel; each pixel is independent
    (NumPy on the CPU)."""

    method: ClassVar[str] = "threshold"

    def __init__(
        self,
        thresholds: Any,
        index: str,
        channels: dict[str, int],
        bands: list[int],
        softness: float,
        class_names: list[str],
        colors: list[tuple[int, int, int]],
    ) -> None:
        super().__init__(class_names, colors)
        if index not in INDICES:
            raise ValueError(f"unknown index {index!r}")
        thresholds = np.asarray(thresholds, dtype=np.float32).ravel()
        if thresholds.size != len(class_names) - 1:
            raise ValueError("K classes need K-1 thresholds")
        self.thresholds = np.sort(thresholds)
        self.index = index
        self.channels = {k: int(v) for k, v in channels.items()}
        self.bands = [int(b) for b in bands]
        self.softness = float(softness)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel class probabilities from the index and the thresholds."""
        values = pixel_index(images, self.index, self.channels)
        return interval_scores(values, self.thresholds, self.softness)

    def state_tensors(self) -> dict[str, np.ndarray]:
        return {"thresholds": np.ascontiguousarray(self.thresholds)}

    def metadata(self) -> dict[str, Any]:
        return {"index": self.index, "channels": self.channels, "input_bands": self.bands,
                "softness": self.softness,
                "thresholds": [float(v) for v in self.thresholds]}

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, Any], model_dir: str
    ) -> ThresholdModel:
        p = meta["params"]
        return cls(tensors["thresholds"], p["index"], p["channels"], p["input_bands"],
                   p["softness"], meta["class_names"], [tuple(c) for c in meta["colors"]])
