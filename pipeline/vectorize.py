"""Block-wise vectorizing of a class raster into one polygon layer.

The label raster (``uint8`` class ids, ``255`` = nodata) may be far larger than memory. It is
read in ``block_size`` squares (plus a halo when sieving), each block is optionally sieved
(:func:`sieve`, seamless thanks to the halo) and polygonized with 4-connectivity in integer pixel
coordinates of the whole raster. Polygons that touch an interior block seam ("seam pieces") are
held back and, at the end, pieces of the same class sharing a boundary of positive length are
unioned, so that every 4-connected raster region becomes exactly one polygon (and the polygons
are the same as with one single block). Shared boundaries are found exactly from the pieces'
ring segments lying on seam lines (integer pixel coordinates), not by geometric predicates. All
other polygons are written as soon as their block is done, so memory stays bounded by one block
plus the seam pieces.

Output attributes: ``class_id``, ``class_name`` (``class_<id>`` for ids beyond ``class_names``),
``area_m2`` and ``perimeter_m``: planar (times the CRS unit factor) in a projected CRS, geodesic on
the CRS ellipsoid in a geographic CRS, NaN without a CRS. Simplification is applied per polygon,
so with ``simplify_tolerance > 0`` neighbouring polygons no longer share boundaries exactly.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import pyproj
import rasterio.features
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "NODATA",
    "BlockResult",
    "BlockTask",
    "Features",
    "VectorizeStats",
    "block_tasks",
    "make_features",
    "merge_seam_pieces",
    "process_block",
    "sieve",
    "vectorize_labels",
]

log = logging.getLogger(__name__)

NODATA = 255
MAX_HALO = 1024
FLUSH_FEATURES = 50_000
FIELDS = ["class_id", "class_name", "area_m2", "perimeter_m"]
_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class VectorizeStats:
    """Summary of one :func:`vectorize_labels` run."""

    polygons: int  # features written
    blocks: int
    seam_groups_merged: int  # groups of >1 seam pieces unioned
    pixels: int  # raster pixels covered (width*height)
    seconds: float
    # seconds per stage: read, sieve, polygonize, features (seam split, CRS transform, measures,
    # WKB), merge (seam pieces), write; block stages summed over blocks (CPU time, not wall)
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# sieve


def sieve(
    labels: np.ndarray,
    min_pixels: int,
    *,
    nodata: int = NODATA,
    cut_edges: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> np.ndarray:
    """Replace 4-connected regions smaller than min_pixels by the majority label of their
    larger neighbours.

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


# --------------------------------------------------------------------------------------------
# per-block work (runs wherever map_fn sends it)


@dataclass(frozen=True)
class BlockTask:
    """One block: its core window, its read window (core + halo) and the per-block settings."""

    row0: int
    col0: int
    row1: int
    col1: int
    halo: int
    height: int
    width: int
    min_pixels: int
    transform: tuple[float, ...]  # affine coefficients a, b, c, d, e, f
    simplify_tolerance: float
    crs_wkt: str | None

    @property
    def read_window(self) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) of core plus halo, clipped to the raster."""
        h = self.halo
        return (
            max(self.row0 - h, 0),
            max(self.col0 - h, 0),
            min(self.row1 + h, self.height),
            min(self.col1 + h, self.width),
        )

    @property
    def seams(self) -> tuple[bool, bool, bool, bool]:
        """(top, bottom, left, right): core edges shared with another block."""
        return (self.row0 > 0, self.row1 < self.height, self.col0 > 0, self.col1 < self.width)


@dataclass(frozen=True)
class Features:
    """Polygons ready to write: WKB in CRS coordinates and their attributes."""

    wkb: list[bytes]
    class_id: np.ndarray  # uint8
    area_m2: np.ndarray
    perimeter_m: np.ndarray

    def __len__(self) -> int:
        return len(self.wkb)


@dataclass(frozen=True)
class BlockResult:
    """Polygons of one block: final ones ready to write, seam pieces in pixel coordinates."""

    final: Features
    seam_wkb: list[bytes]
    seam_class: np.ndarray
    seam_segments: np.ndarray  # int64 (k, 5): piece index in seam_wkb, axis, line, lo, hi
    timings: dict[str, float] = field(default_factory=dict)  # seconds: read, sieve, ...


def block_tasks(
    height: int,
    width: int,
    *,
    block_size: int,
    min_pixels: int,
    transform: Affine,
    simplify_tolerance: float,
    crs_wkt: str | None = None,
) -> list[BlockTask]:
    """Grid of block_size squares anchored at (0, 0), the last ones clipped."""
    halo = min(2 * min_pixels + 2, MAX_HALO) if min_pixels > 1 else 0
    coeffs = tuple(float(v) for v in tuple(transform)[:6])
    return [
        BlockTask(
            r, c, min(r + block_size, height), min(c + block_size, width), halo,
            height, width, min_pixels, coeffs, simplify_tolerance, crs_wkt,
        )
        for r in range(0, height, block_size)
        for c in range(0, width, block_size)
    ]


def process_block(labels: Any, task: BlockTask) -> BlockResult:
    """Read, sieve and polygonize one block; split its polygons into final ones and seam pieces."""
    clock = _Clock()
    core = _read_core(labels, task, clock)
    geoms, classes = _polygonize(core, task.row0, task.col0)
    clock.lap("polygonize")
    on_seam = _touches_seam(geoms, task)
    final = _finish(geoms[~on_seam], task.transform, task.simplify_tolerance)
    features = make_features(final, classes[~on_seam], task.crs_wkt)
    seam_wkb = list(shapely.to_wkb(geoms[on_seam]))
    segments = _seam_segments(geoms[on_seam], task)
    clock.lap("features")
    return BlockResult(features, seam_wkb, classes[on_seam], segments, clock.seconds)


class _Clock:
    """Accumulates the seconds since the previous lap under the lap's name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now


def _read_core(labels: Any, task: BlockTask, clock: _Clock) -> np.ndarray:
    """The block core, sieved with its halo when min_pixels > 1."""
    r0, c0, r1, c1 = task.read_window
    window = _as_uint8(labels[r0:r1, c0:c1])
    clock.lap("read")
    if task.min_pixels > 1:
        cut = (r0 > 0, r1 < task.height, c0 > 0, c1 < task.width)
        window = sieve(window, task.min_pixels, nodata=NODATA, cut_edges=cut)
    core = window[task.row0 - r0 : task.row1 - r0, task.col0 - c0 : task.col1 - c0]
    core = np.ascontiguousarray(core)
    clock.lap("sieve")
    return core


def _as_uint8(block: Any) -> np.ndarray:
    """The block as uint8, refusing values that do not fit."""
    arr = np.asarray(block)
    if arr.dtype == np.uint8:
        return arr
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"labels must be uint8 class ids, got values outside 0..255 ({arr.dtype})")
    return arr.astype(np.uint8)


def _polygonize(core: np.ndarray, row0: int, col0: int) -> tuple[np.ndarray, np.ndarray]:
    """4-connected polygons of non-nodata pixels, in integer pixel coordinates of the raster."""
    mask = core != NODATA
    if not mask.any():
        return np.empty(0, dtype=object), np.empty(0, dtype=np.uint8)
    rings: list[list[tuple[float, float]]] = []
    ring_counts: list[int] = []
    classes: list[float] = []
    shift = Affine.translation(col0, row0)
    for geom, value in rasterio.features.shapes(core, mask=mask, connectivity=4, transform=shift):
        rings.extend(geom["coordinates"])
        ring_counts.append(len(geom["coordinates"]))
        classes.append(value)
    ring_sizes = np.fromiter(map(len, rings), dtype=np.int64, count=len(rings))
    flat = chain.from_iterable(chain.from_iterable(rings))
    coords = np.fromiter(flat, dtype=np.float64, count=2 * int(ring_sizes.sum())).reshape(-1, 2)
    offsets = (_offsets(ring_sizes), _offsets(np.asarray(ring_counts, dtype=np.int64)))
    geoms = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, offsets)
    return geoms, np.asarray(classes).astype(np.uint8)


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """Ragged-array offsets (0, cumulative sizes)."""
    return np.concatenate([[0], np.cumsum(sizes)])


def _touches_seam(geoms: np.ndarray, task: BlockTask) -> np.ndarray:
    """Boolean per polygon: its bounds reach a core edge that is an interior block seam."""
    if geoms.size == 0:
        return np.zeros(0, dtype=bool)
    minx, miny, maxx, maxy = shapely.bounds(geoms).T
    top, bottom, left, right = task.seams
    return (
        (top & (miny <= task.row0))
        | (bottom & (maxy >= task.row1))
        | (left & (minx <= task.col0))
        | (right & (maxx >= task.col1))
    )


def _seam_segments(geoms: np.ndarray, task: BlockTask) -> np.ndarray:
    """Exterior-ring segments lying on the block's interior seams.

    Rows (piece, axis, line, lo, hi): axis 0 is a vertical seam ``x = line`` and axis 1 a
    horizontal one ``y = line``; [lo, hi] is the extent along the line, all in whole pixels.
    """
    if geoms.size == 0:
        return np.empty((0, 5), dtype=np.int64)
    coords, index = shapely.get_coordinates(shapely.get_exterior_ring(geoms), return_index=True)
    coords = np.rint(coords).astype(np.int64)
    start, end, piece = coords[:-1], coords[1:], index[:-1]
    same_ring = index[:-1] == index[1:]
    top, bottom, left, right = task.seams
    edges = [(0, task.col0, left), (0, task.col1, right), (1, task.row0, top)]
    edges.append((1, task.row1, bottom))
    parts = []
    for axis, line, active in edges:
        if not active:
            continue
        on = same_ring & (start[:, axis] == line) & (end[:, axis] == line)
        a, b = start[on, 1 - axis], end[on, 1 - axis]
        parts.append(np.column_stack([
            piece[on], np.full(a.size, axis), np.full(a.size, line),
            np.minimum(a, b), np.maximum(a, b),
        ]))
    return np.concatenate(parts).astype(np.int64) if parts else np.empty((0, 5), np.int64)


def _finish(geoms: np.ndarray, transform: Sequence[float], tolerance: float) -> np.ndarray:
    """Pixel coordinates -> CRS coordinates, then optional topology-preserving simplification."""
    a, b, c, d, e, f = transform[:6]

    def affine(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([a * x + b * y + c, d * x + e * y + f])

    out = shapely.transform(geoms, affine)
    if tolerance > 0:
        out = shapely.simplify(out, tolerance, preserve_topology=True)
    return out


# --------------------------------------------------------------------------------------------
# seam merging


def merge_seam_pieces(
    geoms: np.ndarray, classes: np.ndarray, segments: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Union same-class pieces that share a seam boundary of positive length.

    ``segments`` rows are (piece, axis, line, lo, hi) as made by the block workers. Returns
    (polygons, their classes, number of groups with more than one piece).
    """
    geoms = np.asarray(geoms, dtype=object)
    classes = np.asarray(classes, dtype=np.uint8)
    if geoms.size == 0:
        return geoms, classes, 0
    segments = np.asarray(segments, dtype=np.int64).reshape(-1, 5)
    i, j = _shared_edges(segments, classes)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(geoms.size,) * 2)
    group = connected_components(graph, directed=False)[1]
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    members = np.split(order, starts[1:])
    out = geoms[order[starts]]
    multi = np.flatnonzero(np.diff(np.r_[starts, order.size]) > 1)
    if multi.size:
        out[multi] = _union_groups(geoms, [members[k] for k in multi], segments)
    return out, classes[order[starts]], int(multi.size)


def _shared_edges(segments: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of pieces whose seam segments on the same line, same class, overlap (length > 0).

    Exact sweep: within one (axis, line, class) group sorted by ``lo``, segments of one side
    are disjoint, so a segment overlapping any earlier one overlaps the earlier segment that
    reaches furthest; linking to that one yields the same connected components.
    """
    piece, axis, line, lo, hi = segments.T
    cls = classes[piece].astype(np.int64)
    order = np.lexsort((lo, cls, line, axis))
    piece, lo, hi = piece[order], lo[order], hi[order]
    keys = np.column_stack([axis, line, cls])[order]
    group = np.cumsum(np.r_[False, np.any(keys[1:] != keys[:-1], axis=1)])
    span = int(hi.max(initial=0)) + 1
    reach = group * span + hi  # increases from group to group: one running max for all
    best = np.maximum.accumulate(reach)
    arg = np.maximum.accumulate(np.where(reach == best, np.arange(reach.size), 0))
    overlap = group[1:] * span + lo[1:] < best[:-1]
    return piece[1:][overlap], piece[arg[:-1][overlap]]


def _union_groups(
    geoms: np.ndarray, groups: list[np.ndarray], segments: np.ndarray
) -> np.ndarray:
    """Union of each group of edge-connected pieces (all of one region), exactly.

    The pieces' shells are made to share vertices along the seams (every seam-segment end
    point lying inside another piece's seam segment on the same line is inserted there), so
    they form a proper polygon coverage and GEOS's coverage union dissolves the shared edges
    in linear time. The collinear vertices left on the seams are then dropped, and the pieces'
    holes, which never reach a block edge, are added back as holes of the union.
    """
    pieces = np.concatenate(groups)
    sizes = np.array([g.size for g in groups])
    ends = np.cumsum(sizes)
    used = np.isin(segments[:, 0], pieces)
    shells = _insert_seam_points(shapely.get_exterior_ring(geoms[pieces]), segments[used])
    unions = np.array(
        [shapely.coverage_union_all(shells[e - n : e]) for n, e in zip(sizes, ends, strict=True)],
        dtype=object,
    )
    out = np.empty(len(groups), dtype=object)
    polygon = shapely.get_type_id(unions) == shapely.GeometryType.POLYGON
    for k in np.flatnonzero(~polygon):  # not expected for pixel geometry; exact fallback
        out[k] = shapely.union_all(geoms[groups[k]])
    ok = np.flatnonzero(polygon)
    if ok.size == 0:
        return out
    # rings of the unions (shell first), then the holes of their pieces, grouped by union
    union_rings, union_of = shapely.get_rings(unions[ok], return_index=True)
    union_rings = _drop_collinear(union_rings)
    ok_pieces = np.concatenate([groups[k] for k in ok])
    piece_rings, piece_of = shapely.get_rings(geoms[ok_pieces], return_index=True)
    is_hole = np.r_[False, piece_of[1:] == piece_of[:-1]]
    owner = np.repeat(np.arange(ok.size), sizes[ok])[piece_of[is_hole]]
    rings = np.concatenate([union_rings, piece_rings[is_hole]])
    index = np.concatenate([union_of, owner])
    order = np.argsort(index, kind="stable")
    out[ok] = shapely.polygons(rings[order], indices=index[order])
    return out


def _insert_seam_points(rings: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Polygons from rings, with the end points of ``segments`` (rows piece, axis, line, lo,
    hi) inserted into every ring segment that runs along the same line past them."""
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    xy = np.rint(coords).astype(np.int64)
    span = int(max(xy.max(initial=0), segments[:, 2:].max(initial=0))) + 2
    _, axis, line, lo, hi = segments.T
    on_line = (axis * span + line) * span
    points = np.sort(np.concatenate([on_line + lo, on_line + hi]))  # keys (axis, line, pos)
    distinct = np.ones(points.size, dtype=bool)
    distinct[1:] = points[1:] != points[:-1]
    points = points[distinct]
    start, end = xy[:-1], xy[1:]
    along = np.where(start[:, 0] == end[:, 0], 0, 1)  # vertical segments lie on x = line
    seg_line = np.where(along == 0, start[:, 0], start[:, 1])
    a = np.where(along == 0, start[:, 1], start[:, 0])
    b = np.where(along == 0, end[:, 1], end[:, 0])
    base = (along * span + seg_line) * span
    first = np.searchsorted(points, base + np.minimum(a, b), side="right")
    count = np.searchsorted(points, base + np.maximum(a, b), side="left") - first
    count = np.maximum(count, 0)  # (a zero-length segment has nothing inside)
    count[ring[:-1] != ring[1:]] = 0  # from the last vertex of a ring to the next ring
    count = np.append(count, 0)
    out_len = 1 + count
    total = int(out_len.sum())
    head = np.cumsum(out_len) - out_len  # output position of every original vertex
    new = np.empty((total, 2), dtype=np.float64)
    new[head] = coords
    has = np.flatnonzero(count)
    if has.size:
        n = count[has]
        k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # 0.. within a segment
        seg = np.repeat(has, n)
        ascending = np.repeat(a[has] < b[has], n)
        pick = np.where(ascending, first[seg] + k, first[seg] + count[seg] - 1 - k)
        pos = (points[pick] % span).astype(np.float64)
        fixed = seg_line[seg].astype(np.float64)
        vertical = along[seg] == 0
        new[head[seg] + 1 + k] = np.column_stack(
            [np.where(vertical, fixed, pos), np.where(vertical, pos, fixed)]
        )
    return shapely.polygons(shapely.linearrings(new, indices=np.repeat(ring, out_len)))


def _drop_collinear(rings: np.ndarray) -> np.ndarray:
    """The rings without the vertices lying on a straight (axis-parallel) line between their
    neighbours; every ring of pixel geometry keeps at least its four corners."""
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring[1:] != ring[:-1], True]
    coords, ring = coords[~closing], ring[~closing]
    first = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    last = np.r_[first[1:], ring.size] - 1
    prev = np.arange(ring.size) - 1
    prev[first] = last
    nxt = np.arange(ring.size) + 1
    nxt[last] = first
    x, y = coords.T
    straight = ((x[prev] == x) & (x == x[nxt])) | ((y[prev] == y) & (y == y[nxt]))
    return shapely.linearrings(coords[~straight], indices=ring[~straight])


# --------------------------------------------------------------------------------------------
# output


class _LayerWriter:
    """Buffers features and appends them to one layer with pyogrio, chunk by chunk."""

    def __init__(
        self, path: Path, *, layer: str, driver: str, crs_wkt: str | None,
        class_names: Sequence[str],
    ) -> None:
        self.path = path
        self.layer = layer
        self.driver = driver
        self.crs_wkt = crs_wkt
        known = list(class_names)
        self.names = np.array(
            [known[i] if i < len(known) else f"class_{i}" for i in range(256)], dtype=object
        )
        self.written = 0
        self.started = False
        self._buffer: list[Features] = []
        self._buffered = 0

    def add(self, features: Features) -> None:
        """Queue features; write them once the buffer is full."""
        if len(features):
            self._buffer.append(features)
            self._buffered += len(features)
        if self._buffered >= FLUSH_FEATURES:
            self.flush()

    def flush(self) -> None:
        """Write the buffered features (also when there are none and nothing was written yet)."""
        if self._buffered == 0 and self.started:
            return
        parts = self._buffer or [make_features(np.empty(0, object), np.empty(0, np.uint8), None)]
        wkb = np.array([b for part in parts for b in part.wkb], dtype=object)
        class_id = np.concatenate([part.class_id for part in parts]).astype(np.int32)
        area = np.concatenate([part.area_m2 for part in parts])
        perimeter = np.concatenate([part.perimeter_m for part in parts])
        self._write(wkb, [class_id, self.names[class_id], area, perimeter])
        self._buffer, self._buffered = [], 0

    def _write(self, wkb: np.ndarray, field_data: list[np.ndarray]) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            pyogrio.raw.write(
                str(self.path),
                geometry=wkb,
                field_data=field_data,
                fields=FIELDS,
                layer=self.layer,
                driver=self.driver,
                geometry_type="Polygon",
                crs=self.crs_wkt,
                append=self.started,
            )
        if not self.started:
            self.layer = self._created_layer()
            self.started = True
        self.written += wkb.size

    def _created_layer(self) -> str:
        """Name of the layer just created (single-layer formats such as Shapefile rename it)."""
        names = [str(name) for name, _ in pyogrio.list_layers(self.path)]
        return self.layer if self.layer in names or len(names) != 1 else names[0]


def make_features(geoms: np.ndarray, classes: np.ndarray, crs_wkt: str | None) -> Features:
    """Measure polygons in CRS coordinates and encode them (empty ones dropped, multis split)."""
    geoms, classes = _drop_empty(np.asarray(geoms, dtype=object), np.asarray(classes, np.uint8))
    geoms, classes = _explode_multi(geoms, classes)
    area, perimeter = _measurer(crs_wkt)(geoms)
    wkb = list(shapely.to_wkb(geoms)) if geoms.size else []
    return Features(wkb, classes, np.asarray(area, np.float64), np.asarray(perimeter, np.float64))


def _drop_empty(geoms: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if geoms.size == 0:
        return geoms, classes
    keep = ~shapely.is_empty(geoms)
    return geoms[keep], classes[keep]


def _explode_multi(geoms: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split MultiPolygons (not expected from exact pixel geometry) so the layer stays Polygon."""
    if geoms.size == 0:
        return geoms, classes
    multi = shapely.get_type_id(geoms) != shapely.GeometryType.POLYGON
    if not multi.any():
        return geoms, classes
    log.warning("%d non-Polygon geometries split into parts", int(multi.sum()))
    parts, index = shapely.get_parts(geoms, return_index=True)
    keep = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
    return parts[keep], classes[index[keep]]


@lru_cache(maxsize=8)
def _measurer(crs_wkt: str | None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Function giving (area m², perimeter m) per polygon in the CRS's coordinates."""
    if crs_wkt is None:
        return _nan_measure
    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        return partial(_geodesic_measure, pyproj.CRS.from_wkt(crs_wkt).get_geod())
    try:
        factor = float(crs.linear_units_factor[1])
    except CRSError:  # e.g. an engineering CRS without a linear unit
        log.warning("CRS has no linear unit; area_m2/perimeter_m are NaN")
        return _nan_measure
    return partial(_planar_measure, factor)


def _nan_measure(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    nan = np.full(geoms.size, np.nan)
    return nan, nan.copy()


def _planar_measure(factor: float, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    area = shapely.area(geoms) * factor**2 if geoms.size else np.empty(0)
    length = shapely.length(geoms) * factor if geoms.size else np.empty(0)
    return np.asarray(area, dtype=np.float64), np.asarray(length, dtype=np.float64)


def _geodesic_measure(geod: pyproj.Geod, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic area (shell minus holes) and perimeter (all rings), ring by ring."""
    rings, owner = shapely.get_rings(geoms, return_index=True)
    is_shell = np.r_[True, owner[1:] != owner[:-1]] if owner.size else np.empty(0, bool)
    area = np.empty(rings.size)
    length = np.empty(rings.size)
    for k, ring in enumerate(rings):
        lon, lat = shapely.get_coordinates(ring).T
        ring_area, length[k] = geod.polygon_area_perimeter(lon, lat)
        area[k] = abs(ring_area)
    signed = np.where(is_shell, area, -area)
    return (
        np.bincount(owner, weights=signed, minlength=geoms.size),
        np.bincount(owner, weights=length, minlength=geoms.size),
    )


def _temp_path(out_path: Path) -> Path:
    """Hidden sibling of out_path with the same extension (so the driver is the same)."""
    return out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}{out_path.suffix}")


def _temp_files(tmp: Path) -> list[Path]:
    """The temporary file and its sidecars (e.g. .dbf/.shx of a shapefile)."""
    stem = tmp.name[: len(tmp.name) - len(tmp.suffix)] if tmp.suffix else tmp.name
    return [p for p in tmp.parent.iterdir() if p == tmp or p.name.startswith(stem + ".")]


def _commit(tmp: Path, out_path: Path) -> None:
    """Move the finished temporary file(s) into place; the main file last."""
    for side in _temp_files(tmp):
        if side != tmp:
            os.replace(side, out_path.with_suffix(side.suffix))
    os.replace(tmp, out_path)


def _discard(tmp: Path) -> None:
    for path in _temp_files(tmp):
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# driver


def vectorize_labels(
    labels: Any,
    *,
    transform: Affine,
    crs: CRS | None,
    class_names: Sequence[str],
    out_path: Path,
    block_size: int = 2048,
    min_region_pixels: int = 0,
    simplify_tolerance: float = 0.0,
    layer: str = "polygons",
    driver: str = "GPKG",
    map_fn: Callable[..., Iterable[BlockResult]] = map,
) -> VectorizeStats:
    """Vectorize a (possibly huge) uint8 label raster into one polygon layer at out_path.

    ``labels`` is any 2-D array-like sliceable as ``labels[r0:r1, c0:c1]`` (numpy, zarr); it is
    read one block (plus halo) at a time. Blocks are processed by
    ``map_fn(functools.partial(process_block, labels), tasks)``, which must return an iterable of
    :class:`BlockResult` in any order (e.g. for Dask: ``lambda fn, xs: (f.result() for f in
    as_completed(client.map(fn, xs)))``). Every 4-connected region becomes exactly one polygon.
    ``simplify_tolerance`` is in CRS units. The file appears atomically at out_path (written to
    a hidden temporary sibling first); on failure nothing is left behind.
    """
    start = time.perf_counter()
    height, width = _shape(labels)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if simplify_tolerance < 0:
        raise ValueError(f"simplify_tolerance must be >= 0, got {simplify_tolerance}")
    crs_wkt = CRS.from_user_input(crs).to_wkt() if crs is not None else None
    tasks = block_tasks(
        height, width, block_size=block_size, min_pixels=min_region_pixels,
        transform=transform, simplify_tolerance=simplify_tolerance, crs_wkt=crs_wkt,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(out_path)
    _discard(tmp)
    writer = _LayerWriter(tmp, layer=layer, driver=driver, crs_wkt=crs_wkt, class_names=class_names)
    timings: dict[str, float] = {}
    try:
        results = map_fn(partial(process_block, labels), tasks)
        seam_geoms, seam_classes, segments = _write_finals(writer, results, timings)
        clock = _Clock()
        merged, merged_classes, n_groups = merge_seam_pieces(seam_geoms, seam_classes, segments)
        clock.lap("merge")
        finished = _finish(merged, tuple(transform)[:6], simplify_tolerance)
        features = make_features(finished, merged_classes, crs_wkt)
        clock.lap("features")
        writer.add(features)
        writer.flush()
        _commit(tmp, out_path)
        clock.lap("write")
        for name, seconds in clock.seconds.items():
            timings[name] = timings.get(name, 0.0) + seconds
    except BaseException:
        _discard(tmp)
        raise
    stats = VectorizeStats(
        polygons=writer.written, blocks=len(tasks), seam_groups_merged=n_groups,
        pixels=height * width, seconds=time.perf_counter() - start, timings=timings,
    )
    log.info("vectorized %s: %s", out_path, stats)
    return stats


def _shape(labels: Any) -> tuple[int, int]:
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(f"labels must be 2-D (height, width), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _write_finals(
    writer: _LayerWriter, results: Iterable[BlockResult], timings: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write every block's final polygons; collect the seam pieces and their seam segments.

    Adds the blocks' stage times and the time spent writing to ``timings``.
    """
    seam_wkb: list[bytes] = []
    seam_classes: list[np.ndarray] = [np.empty(0, np.uint8)]
    segments: list[np.ndarray] = [np.empty((0, 5), np.int64)]
    for result in results:
        for name, seconds in getattr(result, "timings", {}).items():
            timings[name] = timings.get(name, 0.0) + seconds
        clock = _Clock()
        writer.add(result.final)
        clock.lap("write")
        timings["write"] = timings.get("write", 0.0) + clock.seconds["write"]
        seg = np.array(result.seam_segments, dtype=np.int64).reshape(-1, 5)
        seg[:, 0] += len(seam_wkb)
        segments.append(seg)
        seam_wkb.extend(result.seam_wkb)
        seam_classes.append(np.asarray(result.seam_class, dtype=np.uint8))
    geoms = shapely.from_wkb(np.array(seam_wkb, dtype=object)) if seam_wkb else np.empty(0, object)
    return geoms, np.concatenate(seam_classes), np.concatenate(segments)
