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
from dataclasses import dataclass
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
    regions, region_value = _label_regions(labels)
    sizes = np.bincount(regions.ravel(), minlength=region_value.size)
    is_nodata = region_value == nodata
    large = (sizes >= min_pixels) | _touching_cut_edges(regions, region_value.size, cut_edges)
    pending = ~large & ~is_nodata
    if not pending.any():
        return out
    src, dst, weight = _neighbour_weights(regions, pending, is_nodata)
    new_value = _resolve_rounds(src, dst, weight, region_value, pending, large & ~is_nodata)
    if np.array_equal(new_value, region_value):
        return out
    return new_value.astype(labels.dtype)[regions]


def _label_regions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected regions of equal value: (region id per pixel 0..n-1, value per region)."""
    regions = np.empty(labels.shape, dtype=np.int64 if labels.size >= 2**31 else np.int32)
    values: list[np.ndarray] = []
    offset = 0
    for value in np.flatnonzero(np.bincount(labels.ravel())):
        mask = labels == value
        lab, count = ndimage.label(mask, structure=_FOUR)
        regions[mask] = lab[mask] + (offset - 1)
        values.append(np.full(count, value, dtype=labels.dtype))
        offset += count
    return regions, np.concatenate(values)


def _touching_cut_edges(
    regions: np.ndarray, n_regions: int, cut_edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Boolean per region: touches one of the edges flagged as cut."""
    top, bottom, left, right = cut_edges
    touching = np.zeros(n_regions, dtype=bool)
    edges = [(top, regions[0, :]), (bottom, regions[-1, :]), (left, regions[:, 0])]
    edges.append((right, regions[:, -1]))
    for is_cut, edge in edges:
        if is_cut:
            touching[edge] = True
    return touching


def _neighbour_weights(
    regions: np.ndarray, candidate: np.ndarray, is_nodata: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(small region, neighbour region, number of distinct neighbour pixels) for candidate regions.

    Only non-nodata neighbour regions are listed; every pair appears once.
    """
    width = regions.shape[1]
    flat = regions.ravel()
    src_parts, pix_parts = [], []
    for step, a, b in ((1, regions[:, :-1], regions[:, 1:]), (width, regions[:-1], regions[1:])):
        rows, cols = np.nonzero(a != b)
        p = rows.astype(np.int64) * width + cols
        q = p + step
        for s, n in ((p, q), (q, p)):  # region of s sees pixel n
            keep = candidate[flat[s]] & ~is_nodata[flat[n]]
            src_parts.append(flat[s[keep]].astype(np.int64))
            pix_parts.append(n[keep])
    src = np.concatenate(src_parts)
    pix = np.concatenate(pix_parts)
    pairs = np.unique(src * flat.size + pix)  # distinct (region, neighbour pixel)
    src, pix = np.divmod(pairs, flat.size)
    n_regions = candidate.size
    keys, weight = np.unique(src * n_regions + flat[pix], return_counts=True)
    src, dst = np.divmod(keys, n_regions)
    return src, dst, weight


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
    keys, inverse = np.unique(region * 256 + value, return_inverse=True)
    total = np.bincount(inverse.ravel(), weights=weight)
    reg, val = np.divmod(keys, 256)
    order = np.lexsort((val, -total, reg))
    reg_sorted = reg[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = reg_sorted[1:] != reg_sorted[:-1]
    best = order[first]
    return reg[best], val[best]


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
    core = _read_core(labels, task)
    geoms, classes = _polygonize(core, task.row0, task.col0)
    on_seam = _touches_seam(geoms, task)
    final = _finish(geoms[~on_seam], task.transform, task.simplify_tolerance)
    return BlockResult(
        final=make_features(final, classes[~on_seam], task.crs_wkt),
        seam_wkb=list(shapely.to_wkb(geoms[on_seam])),
        seam_class=classes[on_seam],
        seam_segments=_seam_segments(geoms[on_seam], task),
    )


def _read_core(labels: Any, task: BlockTask) -> np.ndarray:
    """The block core, sieved with its halo when min_pixels > 1."""
    r0, c0, r1, c1 = task.read_window
    window = _as_uint8(labels[r0:r1, c0:c1])
    if task.min_pixels > 1:
        cut = (r0 > 0, r1 < task.height, c0 > 0, c1 < task.width)
        window = sieve(window, task.min_pixels, nodata=NODATA, cut_edges=cut)
    core = window[task.row0 - r0 : task.row1 - r0, task.col0 - c0 : task.col1 - c0]
    return np.ascontiguousarray(core)


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
    i, j = _shared_edges(np.asarray(segments, dtype=np.int64).reshape(-1, 5), classes)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(geoms.size,) * 2)
    group = connected_components(graph, directed=False)[1]
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    members = np.split(order, starts[1:])
    out = [geoms[m[0]] if m.size == 1 else _union_polygon(geoms[m]) for m in members]
    merged = sum(1 for m in members if m.size > 1)
    return np.array(out, dtype=object), classes[[m[0] for m in members]], merged


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


def _union_polygon(pieces: np.ndarray) -> shapely.Geometry:
    """Union of edge-connected pieces of one region.

    Holes of a piece never reach its block edge, so they stay holes of the union: only the
    shells are unioned (much faster with many holes), the collinear vertices left where seams
    were are removed, and the pieces' holes are added back.
    """
    shells = shapely.polygons(shapely.get_exterior_ring(pieces))
    union = shapely.simplify(shapely.union_all(shells), 0.0, preserve_topology=False)
    if shapely.get_type_id(union) != shapely.GeometryType.POLYGON:
        return shapely.union_all(pieces)  # not expected for pixel geometry; exact fallback
    holes = [ring for piece in pieces for ring in shapely.get_rings(piece)[1:]]
    rings = shapely.get_rings(union)
    return shapely.Polygon(rings[0], [*rings[1:], *holes])


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
    try:
        results = map_fn(partial(process_block, labels), tasks)
        seam_geoms, seam_classes, segments = _write_finals(writer, results)
        merged, merged_classes, n_groups = merge_seam_pieces(seam_geoms, seam_classes, segments)
        finished = _finish(merged, tuple(transform)[:6], simplify_tolerance)
        writer.add(make_features(finished, merged_classes, crs_wkt))
        writer.flush()
        _commit(tmp, out_path)
    except BaseException:
        _discard(tmp)
        raise
    stats = VectorizeStats(
        polygons=writer.written, blocks=len(tasks), seam_groups_merged=n_groups,
        pixels=height * width, seconds=time.perf_counter() - start,
    )
    log.info("vectorized %s: %s", out_path, stats)
    return stats


def _shape(labels: Any) -> tuple[int, int]:
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(f"labels must be 2-D (height, width), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _write_finals(
    writer: _LayerWriter, results: Iterable[BlockResult]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write every block's final polygons; collect the seam pieces and their seam segments."""
    seam_wkb: list[bytes] = []
    seam_classes: list[np.ndarray] = [np.empty(0, np.uint8)]
    segments: list[np.ndarray] = [np.empty((0, 5), np.int64)]
    for result in results:
        writer.add(result.final)
        seg = np.array(result.seam_segments, dtype=np.int64).reshape(-1, 5)
        seg[:, 0] += len(seam_wkb)
        segments.append(seg)
        seam_wkb.extend(result.seam_wkb)
        seam_classes.append(np.asarray(result.seam_class, dtype=np.uint8))
    geoms = shapely.from_wkb(np.array(seam_wkb, dtype=object)) if seam_wkb else np.empty(0, object)
    return geoms, np.concatenate(seam_classes), np.concatenate(segments)
