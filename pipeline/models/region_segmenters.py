"""Classic region segmenters on one image (scikit-image): seeded region growing, edge-based
regions closed by watershed, and the per-region statistics a region classifier labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import canny
from skimage.filters import gaussian, sobel
from skimage.measure import label as connected_components
from skimage.morphology import dilation, disk
from skimage.segmentation import watershed

N_FEATURES = 8  # mean colour (3), colour std (3), mean gradient, log area


@dataclass(frozen=True)
class RegionParams:
    """Parameters of the region (growing) and edge segmenters."""

    tolerance: float = 0.1  # region growing: max colour distance of a pixel to its region
    seed_spacing: int = 12  # region growing: one seed (gradient minimum) per cell of this edge
    smoothing: float = 1.0  # Gaussian sigma before gradients and colour tests (pixels)
    edge_sigma: float = 1.5  # Canny's Gaussian sigma
    edge_closing: int = 1  # edges dilated by a disk of this radius to close gaps


def gradient(image: np.ndarray, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed image (H, W, 3) and its Sobel gradient magnitude (max over bands)."""
    smooth = gaussian(image, sigma=smoothing, channel_axis=-1) if smoothing > 0 else image
    grad = np.max([sobel(smooth[..., c]) for c in range(smooth.shape[-1])], axis=0)
    return smooth.astype(np.float32), grad.astype(np.float32)


def grid_minima_seeds(grad: np.ndarray, spacing: int) -> np.ndarray:
    """Markers (H, W) int32: one seed per ``spacing``-pixel cell, at its lowest gradient."""
    h, w = grad.shape
    ph, pw = -h % spacing, -w % spacing
    padded = np.pad(grad, ((0, ph), (0, pw)), constant_values=np.inf)
    gh, gw = padded.shape[0] // spacing, padded.shape[1] // spacing
    cells = padded.reshape(gh, spacing, gw, spacing).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    best = cells.argmin(axis=-1)
    rows = (np.arange(gh)[:, None] * spacing + best // spacing).ravel()
    cols = (np.arange(gw)[None, :] * spacing + best % spacing).ravel()
    markers = np.zeros((h, w), dtype=np.int32)
    markers[rows, cols] = np.arange(1, rows.size + 1, dtype=np.int32)
    return markers


def _region_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``values`` (H, W, C) per label 0..n-1: (n, C)."""
    flat = labels.ravel()
    count = np.maximum(np.bincount(flat, minlength=n), 1)
    return np.stack([np.bincount(flat, values[..., c].ravel(), minlength=n) / count
                     for c in range(values.shape[-1])], axis=1)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..n-1 in order of first appearance (row-major)."""
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    return order[inverse].reshape(labels.shape).astype(np.int32)


def grow_regions(image: np.ndarray, params: RegionParams, rounds: int = 3) -> np.ndarray:
    """Seeded region growing: regions (H, W) int32 numbered 0..n-1.

    Seeds are the gradient minima of a grid; all regions grow at once from them, the pixel of
    lowest gradient joining first (watershed flooding, the order of Adams and Bischof's
    seeded region growing), until the image is partitioned. A pixel whose colour (3x3 median)
    differs from its seed's by more than ``tolerance`` does not belong: each connected group
    of such pixels gets a seed of its own (at its lowest gradient) and the regions grow again,
    up to ``rounds`` times; what still differs then becomes a region of its own.
    """
    _, grad = gradient(image, params.smoothing)
    # colours compared after a 3x3 median: noise shrinks, steps between objects stay sharp
    smooth = ndi.median_filter(image.astype(np.float32), size=(3, 3, 1), mode="reflect")
    markers = grid_minima_seeds(grad, params.seed_spacing)
    for r in range(rounds + 1):
        regions = watershed(grad, markers)
        pos = np.flatnonzero(markers.ravel())
        seed_colour = np.zeros((int(markers.max()) + 1, smooth.shape[-1]), dtype=np.float32)
        seed_colour[markers.ravel()[pos]] = smooth.reshape(-1, smooth.shape[-1])[pos]
        far = np.linalg.norm(smooth - seed_colour[regions], axis=-1) > params.tolerance
        if not far.any():
            break
        split = connected_components(far, connectivity=1)
        if r == rounds:
            regions = np.where(far, int(regions.max()) + split, regions)
            break
        n = int(split.max())
        at = ndi.minimum_position(grad, split, index=np.arange(1, n + 1))
        rows, cols = np.array(at, dtype=np.int64).reshape(-1, 2).T
        markers = markers.copy()
        markers[rows, cols] = int(markers.max()) + np.arange(1, n + 1, dtype=np.int32)
    return _relabel(regions)


def edge_regions(image: np.ndarray, params: RegionParams) -> np.ndarray:
    """Edge-based regions (H, W) int32: Canny edges of every band, gaps closed by dilation,
    connected non-edge areas as markers, and the edge pixels given to their regions by a
    watershed on the Sobel gradient, so every boundary is closed."""
    edges = np.zeros(image.shape[:2], dtype=bool)
    for c in range(image.shape[-1]):
        edges |= canny(image[..., c].astype(np.float64), sigma=params.edge_sigma)
    if params.edge_closing > 0:
        edges = dilation(edges, disk(params.edge_closing))
    markers = connected_components(~edges, connectivity=1)
    if markers.max() == 0:  # edges everywhere: one region
        return np.zeros(image.shape[:2], dtype=np.int32)
    _, grad = gradient(image, params.smoothing)
    return _relabel(watershed(grad, markers) - 1)


def region_features(image: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region statistics (n, 8): mean colour, colour std (texture), mean Sobel gradient,
    log area; and the areas (n,) in pixels."""
    n = int(regions.max()) + 1
    flat = regions.ravel()
    area = np.bincount(flat, minlength=n).astype(np.float64)
    mean = _region_means(image, regions, n)
    sq = _region_means(image.astype(np.float64) ** 2, regions, n)
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    grad = np.max([sobel(image[..., c]) for c in range(image.shape[-1])], axis=0)
    mgrad = ndi.sum_labels(grad, regions, index=np.arange(n)) / np.maximum(area, 1)
    feats = np.concatenate([mean, std, mgrad[:, None], np.log(np.maximum(area, 1))[:, None]],
                           axis=1)
    return feats.astype(np.float32), area
