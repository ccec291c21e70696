"""Sieving of a label raster: 4-connected regions below a size take the majority label of their
larger neighbours, with the labelling, neighbour counts and majority rounds compiled
(``kernels``)."""

from __future__ import annotations

import numpy as np

from pipeline.labels import NODATA

__all__ = ["sieve"]


def sieve(
    labels: np.ndarray,
    min_pixels: int,
    *,
    nodata: int = NODATA,
    cut_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> np.ndarray:
    """Replace 4-connected regions under min_pixels by the majority label of larger neighbours.

    ``cut_edges`` = (top, bottom, left, right) marks edges where ``labels`` was cut out of a
    larger raster: regions touching them may continue outside and count as large. In
    synchronous rounds, every small region with neighbour pixels in large (or already resolved)
    regions takes the label owning most such distinct neighbour pixels (ties: smallest id);
    nodata is never changed and never a donor. Returns a new array.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"sieve expects a 2-D uint8 array, got {labels.dtype} {labels.shape}")
    if min_pixels <= 1 or labels.size == 0:
        return labels.copy()
    from pipeline.vectorize.kernels import label_regions, resolve_rounds, small_region_neighbours

    regions, region_value, sizes = label_regions(labels, nodata)
    is_nodata = np.zeros(sizes.size, dtype=bool)
    is_nodata[0] = True
    large = (sizes >= min_pixels) | _touching_cut_edges(regions, sizes.size, cut_edges)
    pending = ~large & ~is_nodata
    if not pending.any():
        return labels.copy()
    src, dst, weight = small_region_neighbours(regions, pending, sizes)
    new_value = resolve_rounds(src, dst, weight, region_value, pending, large & ~is_nodata)
    return new_value.astype(labels.dtype)[regions[1:-1, 1:-1]]


def _touching_cut_edges(
    regions: np.ndarray, count: int, cut_edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Boolean per region: touches one of the edges flagged as cut (``regions`` has a border)."""
    top, bottom, left, right = cut_edges
    touching = np.zeros(count, dtype=bool)
    for is_cut, edge in ((top, regions[1, 1:-1]), (bottom, regions[-2, 1:-1]),
                         (left, regions[1:-1, 1]), (right, regions[1:-1, -2])):
        if is_cut:
            touching[edge] = True
    touching[0] = False
    return touching
