"""Region-based (object-based) refinement of any model: class probabilities averaged within
SLIC superpixels of each tile before blending, like the dense CRF."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.models.base import SegmentationModel, as_array

REFINE_CHOICES = ("none", "regions")
SLIC_ITERATIONS = 10  # skimage's own default
SLIC_STRIPS = 2  # a tile's superpixels: its two halves', one thread each (few-labels.md)
SAMPLE_STRIDE = 4  # lattice of the superpixel means: as good as every pixel (few-labels.md)


def superpixels(image: np.ndarray, pixels: int, compactness: float = 10.0,
                iterations: int = SLIC_ITERATIONS, strips: int = 1) -> np.ndarray:
    """SLIC superpixels (H, W) int64 of an image (H, W, 3) in [0, 1], about ``pixels`` each
    (after a Gaussian of sigma 1, without which noise breaks them up into ragged pieces). In
    float32: the same superpixels as float64 on Potsdam tiles, 10 % faster. With ``strips``
    > 1, each of that many horizontal strips gets its own superpixels, in its own thread
    (SLIC releases the GIL): the result depends on the strips, never on the threads."""
    h = image.shape[0]
    bounds = np.linspace(0, h, max(1, min(strips, h)) + 1).round().astype(int)
    parts = [image[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    if len(parts) == 1:
        return _slic(parts[0], pixels, compactness, iterations)
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        labels = list(pool.map(lambda p: _slic(p, pixels, compactness, iterations), parts))
    offsets = np.cumsum([0] + [int(lab.max()) + 1 for lab in labels[:-1]])
    return np.concatenate([lab + o for lab, o in zip(labels, offsets, strict=True)])


def _slic(image: np.ndarray, pixels: int, compactness: float, iterations: int) -> np.ndarray:
    from skimage.segmentation import slic  # imports scipy.cluster (0.4 s): only when used

    h, w = image.shape[:2]
    n = max(1, round(h * w / max(pixels, 1)))
    return slic(np.asarray(image, dtype=np.float32), n_segments=n, compactness=compactness,
                start_label=0, channel_axis=-1, enforce_connectivity=True, sigma=1.0,
                max_num_iter=iterations)


def average_within(probs: np.ndarray, segments: np.ndarray,
                   mask: np.ndarray | None = None) -> np.ndarray:
    """Probabilities (K, H, W) replaced by their mean over each segment of ``segments``
    (over the segment's pixels in ``mask`` only, when given; every segment needs one)."""
    seg = segments.astype(np.int64).ravel()
    n = int(seg.max()) + 1
    weight = None if mask is None else np.asarray(mask, dtype=np.float64).ravel()
    count = np.maximum(np.bincount(seg, weights=weight, minlength=n), 1)
    flat = np.asarray(probs, dtype=np.float32).reshape(probs.shape[0], -1)
    means = np.stack([np.bincount(seg, weights=row if weight is None else row * weight,
                                  minlength=n) / count for row in flat])
    return means.astype(np.float32)[:, seg].reshape(probs.shape)


def sample_mask(segments: np.ndarray, stride: int) -> np.ndarray:
    """The pixels (H, W) bool that estimate each segment's mean: every ``stride``-th pixel
    along both axes, plus every pixel of a segment that no lattice pixel falls in."""
    mask = np.zeros(segments.shape, dtype=bool)
    mask[::stride, ::stride] = True
    n = int(segments.max()) + 1
    covered = np.bincount(segments[mask].ravel(), minlength=n) > 0
    if not covered.all():
        mask |= ~covered[segments]
    return mask


class RegionRefined(SegmentationModel):
    """Wraps a model: its probabilities on each tile, averaged within the tile's superpixels.

    Superpixels come from the tile alone and tiles lie on the global grid, so the result is
    seamless whatever the blocks. Superpixels follow colour edges, so an object larger than a
    superpixel with its own colour keeps its own superpixels and its label. Takes what the
    inner model takes (tensors for a torch model) and returns NumPy probabilities. A model
    that can predict at chosen pixels (the classifier) is asked for every ``sample_stride``-th
    pixel only: the means of a stride-4 sample measured as good as the full means on
    Potsdam-3 and the demo scene (docs/few-labels.md) at a sixteenth of the trees' work.
    """

    def __init__(self, model: SegmentationModel, pixels: int = 64,
                 compactness: float = 10.0, sample_stride: int = SAMPLE_STRIDE) -> None:
        super().__init__(model.class_names, model.colors)
        if pixels < 1:
            raise ValueError("refine superpixel size must be >= 1 pixel")
        self.inner = model
        self.uses_torch = model.uses_torch  # type: ignore[misc]  # what the input must be
        self.pixels = int(pixels)
        self.compactness = float(compactness)
        if sample_stride < 1:
            raise ValueError("refine sample stride must be >= 1")
        self.sample_stride = int(sample_stride)
        self.method = model.method  # type: ignore[misc]
        self.patch_size = model.patch_size

    def predict(self, images: Any) -> np.ndarray:
        """The inner model's probabilities, averaged within superpixels of each image. A
        model with ``predict_sampled`` is asked only for a lattice of every
        ``sample_stride``-th pixel (and the whole of a superpixel the lattice misses): the
        superpixel means from that sample (:func:`sample_mask`)."""
        rgb = np.clip(as_array(images), 0, 1).transpose(0, 2, 3, 1)
        segments = [superpixels(im, self.pixels, self.compactness, strips=SLIC_STRIPS)
                    for im in rgb]
        sampled = getattr(self.inner, "predict_sampled", None)
        if self.sample_stride == 1 or sampled is None:
            probs = as_array(self.inner.predict(images))
            return np.stack([average_within(p, s)
                             for p, s in zip(probs, segments, strict=True)])
        masks = [sample_mask(s, self.sample_stride) for s in segments]
        probs = as_array(sampled(images, masks))
        return np.stack([average_within(p, s, m)
                         for p, s, m in zip(probs, segments, masks, strict=True)])

    def state_tensors(self) -> dict[str, Any]:
        return self.inner.state_tensors()

    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata()


def with_refinement(model: SegmentationModel, refine: str, pixels: int) -> SegmentationModel:
    """``model`` itself for ``refine="none"``, wrapped in :class:`RegionRefined` for
    ``"regions"``."""
    if refine == "none":
        return model
    if refine == "regions":
        return RegionRefined(model, pixels)
    raise ValueError(f"unknown refinement {refine!r} (choose from {', '.join(REFINE_CHOICES)})")
