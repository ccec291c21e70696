"""threshold: multi-level Otsu thresholds on a per-pixel index (brightness, NDVI, excess green)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from pipeline.models.base import SegmentationModel

INDICES = ("brightness", "ndvi", "exg")
EPS = 1e-6


def pixel_index(images: torch.Tensor, index: str, channels: dict[str, int]) -> torch.Tensor:
    """The index (N, H, W) of images (N, 3, H, W) in [0, 1].

    ``brightness`` is the mean of the three bands; ``ndvi`` is (NIR - red) / (NIR + red) with
    ``channels`` giving the positions of ``nir`` and ``red``; ``exg`` is excess green
    2g - r - b on chromatic coordinates (each band over the sum of the three, bands in
    R, G, B order), as Woebbecke et al. define it.
    """
    x = images.float()
    if index == "brightness":
        return x.mean(dim=1)
    if index == "ndvi":
        nir, red = x[:, channels["nir"]], x[:, channels["red"]]
        return (nir - red) / (nir + red).clamp_min(EPS)
    if index == "exg":
        chroma = x / x.sum(dim=1, keepdim=True).clamp_min(EPS)
        return 2 * chroma[:, 1] - chroma[:, 0] - chroma[:, 2]
    raise ValueError(f"unknown index {index!r} (choose from {', '.join(INDICES)})")


def interval_scores(values: torch.Tensor, thresholds: torch.Tensor, softness: float
                    ) -> torch.Tensor:
    """Class probabilities (N, K, H, W) for index values (N, H, W) and K-1 sorted thresholds.

    Class ``c`` is the interval ``(t[c-1], t[c]]`` (Otsu's ``value > t`` is the upper class);
    its score is ``-distance to the interval / softness``, so the argmax is exactly the
    interval holding the value and the confidence falls towards 1/2 at a threshold.
    """
    t = thresholds.to(values.device, torch.float32)
    inf = torch.full((1,), float("inf"), device=values.device)
    low = torch.cat([-inf, t]).view(1, -1, 1, 1)
    high = torch.cat([t, inf]).view(1, -1, 1, 1)
    v = values[:, None]
    dist = torch.relu(low - v) + torch.relu(v - high)
    return torch.softmax(-dist / softness, dim=1)


class ThresholdModel(SegmentationModel):
    """K classes from K-1 thresholds on one index per pixel; each pixel is independent."""

    method: ClassVar[str] = "threshold"

    def __init__(
        self,
        thresholds: torch.Tensor,
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
        if thresholds.numel() != len(class_names) - 1:
            raise ValueError("K classes need K-1 thresholds")
        self.register_buffer("thresholds", thresholds.float().sort().values)
        self.index = index
        self.channels = {k: int(v) for k, v in channels.items()}
        self.bands = [int(b) for b in bands]
        self.softness = float(softness)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class probabilities from the index and the thresholds."""
        values = pixel_index(images, self.index, self.channels)
        return interval_scores(values, self.thresholds, self.softness)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"thresholds": self.thresholds.detach().cpu().contiguous()}

    def metadata(self) -> dict[str, Any]:
        return {"index": self.index, "channels": self.channels, "input_bands": self.bands,
                "softness": self.softness,
                "thresholds": [float(v) for v in self.thresholds]}

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model_dir: str
    ) -> ThresholdModel:
        p = meta["params"]
        return cls(tensors["thresholds"], p["index"], p["channels"], p["input_bands"],
                   p["softness"], meta["class_names"], [tuple(c) for c in meta["colors"]])
