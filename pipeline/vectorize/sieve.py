"""Sieving of a label raster: 4-connected regions below a size take the majority label of their
larger neighbours, computed on horizontal runs rather than pixel by pixel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
    out = labels.copy()
    if min_pixels <= 1 or labels.size == 0:
        return out
    runs = _Runs.of(labels)
    n_regions, run_region = _connect_runs(runs)
    region_value = np.empty(n_regions, dtype=labels.dtype)
    region_value[run_region] = runs.value
    sizes = np.bincount(run_region, weights=runs.length, minlength=n_regions)
    is_nodata = region_value == nodata
    large = (sizes >= min_pixels) | _touching_cut_edges(runs, run_region, n_regions, cut_edges)
    pending = ~large & ~is_nodata
    if not pending.any():
        return out
    regions = np.repeat(run_region, runs.length).reshape(labels.shape)
    small_pixels = runs.pixels(pending[run_region])
    single = sizes[regions.ravel()[small_pixels]] == 1
    src, dst, weight = _neighbour_weights(regions, small_pixels, single, is_nodata)
    new_value = _resolve_rounds(src, dst, weight, region_value, pending, large & ~is_nodata)
    changed = new_value[run_region] != runs.value
    new_pixels = np.repeat(new_value[run_region[changed]], runs.length[changed])
    out.ravel()[runs.pixels(changed)] = new_pixels
    return out


@dataclass(frozen=True)
class _Runs:
    """Horizontal runs of equal value of a 2-D array, in scan order."""

    start: np.ndarray  # flat index of the first pixel
    length: np.ndarray
    value: np.ndarray
    width: int

    @classmethod
    def of(cls, labels: np.ndarray) -> _Runs:
        begins = np.empty(labels.shape, dtype=bool)
        begins[:, 0] = True
        np.not_equal(labels[:, 1:], labels[:, :-1], out=begins[:, 1:])
        start = np.flatnonzero(begins)
        length = np.diff(start, append=labels.size)
        return cls(start, length, labels.ravel()[start], labels.shape[1])

    def pixels(self, selected: np.ndarray) -> np.ndarray:
        """Flat indices of all pixels of the selected runs."""
        start, length = self.start[selected], self.length[selected]
        first = np.cumsum(length) - length  # position of each run's first pixel in the output
        return np.arange(int(length.sum())) + np.repeat(start - first, length)


def _connect_runs(runs: _Runs) -> tuple[int, np.ndarray]:
    """4-connected regions of equal value: (number of regions, region of every run).

    Runs of consecutive rows are linked where they overlap and have the same value. The run
    starts of every row but the last, merged with those of every row but the first moved up
    one row, cut each row into intervals that lie in exactly one run of the row and one of the
    row below; listing those two runs for each interval lists every overlapping pair.
    """
    start, width = runs.start, runs.width
    n_upper = int(np.searchsorted(start, start[-1] - start[-1] % width))  # runs above last row
    first_lower = int(np.searchsorted(start, width))  # first run of the second row
    cuts = np.concatenate([start[:n_upper], start[first_lower:] - width])
    order = np.argsort(cuts, kind="stable")
    from_upper = order < n_upper
    upper = np.cumsum(from_upper) - 1
    lower = np.cumsum(~from_upper) - 1 + first_lower
    cuts = cuts[order]
    last = np.ones(cuts.size, dtype=bool)  # at a shared cut, the last copy sees both runs
    last[:-1] = cuts[1:] != cuts[:-1]
    upper, lower = upper[last], lower[last]
    same = runs.value[upper] == runs.value[lower]
    edges = (np.ones(int(same.sum()), dtype=np.int8), (upper[same], lower[same]))
    graph = coo_matrix(edges, shape=(start.size, start.size))
    return connected_components(graph, directed=False)


def _touching_cut_edges(
    runs: _Runs, run_region: np.ndarray, n_regions: int, cut_edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Boolean per region: touches one of the edges flagged as cut."""
    top, bottom, left, right = cut_edges
    start, width = runs.start, runs.width
    col = start % width
    end_col = col + runs.length - 1
    last_row = start[-1] - start[-1] % width
    touching = np.zeros(n_regions, dtype=bool)
    for is_cut, on_edge in (
        (top, start < width), (bottom, start >= last_row), (left, col == 0),
        (right, end_col == width - 1),
    ):
        if is_cut:
            touching[run_region[on_edge]] = True
    return touching


_SIDES = ((-1, 0), (0, -1), (0, 1), (1, 0))  # up, left, right, down (row, column steps)


def _neighbour_weights(
    regions: np.ndarray, small_pixels: np.ndarray, single: np.ndarray, is_nodata: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(small region, neighbour region, number of distinct neighbour pixels) for small regions.

    ``small_pixels`` are the flat indices of all pixels of the small regions, ``single`` marks
    those forming a region on their own. Only non-nodata neighbour regions are listed; every
    pair appears once. A neighbour pixel touching a small region on several sides is counted
    once: only for the first of its sides (up, left, right, down) that faces the region (a
    one-pixel region faces each neighbour pixel on one side only, so needs no check).
    """
    height, width = regions.shape
    flat = regions.ravel()
    receives = ~is_nodata
    row, col = np.divmod(small_pixels, width)
    own = flat[small_pixels]
    src_parts, dst_parts = [], []
    for k, (dr, dc) in enumerate(_SIDES):  # the small pixel lies on side k of its neighbour
        nr, nc = row - dr, col - dc
        ok = (nr >= 0) & (nr < height) & (nc >= 0) & (nc < width)
        n = small_pixels[ok] - (dr * width + dc)
        s_region, n_region = own[ok], flat[n]
        keep = (n_region != s_region) & receives[n_region]
        if k:
            check = np.flatnonzero(keep & ~single[ok])
            nr, nc, m_region = nr[ok][check], nc[ok][check], s_region[check]
            seen = np.zeros(check.size, dtype=bool)
            for er, ec in _SIDES[:k]:  # an earlier side of the neighbour already faces it
                mr, mc = nr + er, nc + ec
                inside = (mr >= 0) & (mr < height) & (mc >= 0) & (mc < width)
                m = np.where(inside, mr * width + mc, 0)
                seen |= inside & (flat[m] == m_region)
            keep[check[seen]] = False
        src_parts.append(s_region[keep])
        dst_parts.append(n_region[keep])
    src, dst = np.concatenate(src_parts), np.concatenate(dst_parts)
    return _sum_pairs(src, dst, np.ones(src.size, dtype=np.int64), (is_nodata.size,) * 2)


def _sum_pairs(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, col) pairs sorted by row then col, with their summed weights.

    A sparse matrix does the grouping: linear, unlike sorting the pairs as keys.
    """
    matrix = coo_matrix((weights, (rows, cols)), shape=shape).tocsr()  # sums duplicates
    matrix.sort_indices()
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(shape[0], dtype=np.int64), counts)
    return rows, matrix.indices.astype(np.int64), matrix.data


def _resolve_rounds(
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    region_value: np.ndarray,
    pending: np.ndarray,
    donor: np.ndarray,
) -> np.ndarray:
    """Synchronous majority rounds; returns the new value of every region."""
    value = region_value.astype(np.int64)
    pending = pending.copy()
    donor = donor.copy()
    while True:
        sel = pending[src] & donor[dst]
        if not sel.any():
            return value
        winners, winner_value = _majority(src[sel], value[dst[sel]], weight[sel])
        value[winners] = winner_value
        pending[winners] = False
        donor[winners] = True
        keep = pending[src]
        src, dst, weight = src[keep], dst[keep], weight[keep]


def _majority(
    region: np.ndarray, value: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per region, the value with the largest total weight (ties: smallest value)."""
    reg, val, total = _sum_pairs(region, value, weight, (int(region.max()) + 1, 256))
    starts = np.flatnonzero(np.r_[True, reg[1:] != reg[:-1]])
    best_total = np.repeat(np.maximum.reduceat(total, starts), np.diff(np.r_[starts, reg.size]))
    ties = np.flatnonzero(total == best_total)  # values sorted within a region: first is smallest
    first = ties[np.r_[True, reg[ties][1:] != reg[ties][:-1]]]
    return reg[first], val[first]
