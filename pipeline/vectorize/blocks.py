"""Per-block work, run wherever ``map_fn`` sends it: the block grid, reading (and sieving) a block
core, polygonizing it in raster pixel coordinates and splitting its polygons into final ones and
seam pieces."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from rasterio.transform import Affine

from pipeline.labels import NODATA
from pipeline.vectorize.measure import Features, make_features
from pipeline.vectorize.sieve import sieve

__all__ = ["BlockResult", "BlockTask", "block_tasks", "process_block"]

MAX_HALO = 1024


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
class BlockResult:
    """Polygons of one block: final ones ready to write, seam pieces in pixel coordinates."""

    final: Features
    seam_wkb: list[bytes]
    seam_class: np.ndarray
    seam_segments: np.ndarray  # int64 (k, 5): piece index in seam_wkb, axis, line, lo, hi
    origin: tuple[int, int]  # (row0, col0) of the block core
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
    finals, pieces = _polygonize(core, task.row0, task.col0, task.seams)
    clock.lap("polygonize")
    final = _finish_ragged(finals, task.transform, task.simplify_tolerance)
    features = make_features(final, finals.classes, task.crs_wkt)
    seam_geoms = pieces.geometries()
    seam_wkb = list(shapely.to_wkb(seam_geoms))
    segments = _seam_segments(seam_geoms, task)
    clock.lap("features")
    origin = (task.row0, task.col0)
    return BlockResult(features, seam_wkb, pieces.classes, segments, origin, clock.seconds)


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


@dataclass(frozen=True)
class _Ragged:
    """Polygons as shapely's ragged arrays: vertices, ring offsets, polygon offsets, classes."""

    coords: np.ndarray  # (k, 2) float64
    ring_offsets: np.ndarray
    polygon_offsets: np.ndarray
    classes: np.ndarray  # uint8, one per polygon

    def geometries(self, coords: np.ndarray | None = None) -> np.ndarray:
        """The polygons (optionally with other coordinates of the same layout)."""
        if self.classes.size == 0:
            return np.empty(0, dtype=object)
        xy = self.coords if coords is None else coords
        offsets = (self.ring_offsets, self.polygon_offsets)
        return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, offsets)


def _polygonize(
    core: np.ndarray, row0: int, col0: int, seams: tuple[bool, bool, bool, bool]
) -> tuple[_Ragged, _Ragged]:
    """4-connected polygons of non-nodata pixels in integer pixel coordinates of the raster:
    (those not touching a ``seams`` edge (top, bottom, left, right), those touching one).

    Regions are labelled and their rings traced by the compiled ``kernels`` (a region's
    first ring is its exterior); rings are then ordered by (touches a seam, region), so each
    group is one slice of the ragged arrays, in the order of the region labels.
    """
    from pipeline.vectorize.kernels import label_regions, trace_rings

    regions, value, _ = label_regions(core, NODATA)
    count = value.size - 1
    if count == 0:
        empty = _Ragged(np.empty((0, 2)), np.zeros(1, np.int64), np.zeros(1, np.int64),
                        np.empty(0, np.uint8))
        return empty, empty
    xy, ring_offsets, ring_region = trace_rings(regions)
    on_seam = np.zeros(count + 1, dtype=bool)
    top, bottom, left, right = seams
    for is_seam, edge in ((top, regions[1, 1:-1]), (bottom, regions[-2, 1:-1]),
                          (left, regions[1:-1, 1]), (right, regions[1:-1, -2])):
        if is_seam:
            on_seam[edge] = True
    order = np.argsort(on_seam[ring_region] * (count + 1) + ring_region, kind="stable")
    sizes = np.diff(ring_offsets)[order]
    new_offsets = _offsets(sizes)
    gather = np.arange(int(new_offsets[-1])) + np.repeat(ring_offsets[order] - new_offsets[:-1],
                                                         sizes)
    rows, cols = np.divmod(xy[gather], regions.shape[1])  # grid points of the padded labels
    coords = np.empty((rows.size, 2), dtype=np.float64)
    coords[:, 0] = cols
    coords[:, 0] += col0
    coords[:, 1] = rows
    coords[:, 1] += row0
    rings_per_region = np.bincount(ring_region, minlength=count + 1)
    groups = []
    ring0 = 0
    for ids in (np.flatnonzero(~on_seam[1:]) + 1, np.flatnonzero(on_seam[1:]) + 1):
        polygon_offsets = _offsets(rings_per_region[ids])
        ring1 = ring0 + int(polygon_offsets[-1])
        ring_part = new_offsets[ring0 : ring1 + 1]
        groups.append(_Ragged(coords[ring_part[0] : ring_part[-1]], ring_part - ring_part[0],
                              polygon_offsets, value[ids]))
        ring0 = ring1
    return groups[0], groups[1]


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """Ragged-array offsets (0, cumulative sizes)."""
    return np.concatenate([[0], np.cumsum(sizes)])


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


def _finish_ragged(polygons: _Ragged, transform: Sequence[float], tolerance: float) -> np.ndarray:
    """Like :func:`_finish`, on ragged arrays: the affine is applied before building them."""
    a, b, c, d, e, f = transform[:6]
    x, y = polygons.coords[:, 0], polygons.coords[:, 1]
    out = polygons.geometries(np.column_stack([a * x + b * y + c, d * x + e * y + f]))
    if tolerance > 0:
        out = shapely.simplify(out, tolerance, preserve_topology=True)
    return out


def warm_up() -> float:
    """Load the compiled kernels' cached machine code in this process by vectorizing a tiny
    planted block (0.7 s the first time here, then nothing); returns the seconds it took.

    The CLI calls it while a temporary Prefect server is still starting, so a small run's
    first vectorize does not pay it."""
    t0 = time.perf_counter()
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2:6, 2:6], labels[0, 0], labels[7, 7] = 1, 2, NODATA
    for task in block_tasks(8, 8, block_size=4, min_pixels=2, transform=Affine.identity(),
                            simplify_tolerance=0.0):
        process_block(labels, task)
    return time.perf_counter() - t0
