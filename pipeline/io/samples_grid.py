"""Pixel-grid arithmetic for training samples: the blocks a raster is processed in, candidate
samples of one block (merging duplicates, dropping ambiguous pixels and nodata), the per-feature
pixel cap, CRS comparison and the merging of label-raster components across block seams."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

BLOCK = 1024  # samples are placed block by block: memory stays bounded on large rasters


@dataclass(frozen=True)
class Block:
    """A window of a raster's pixel grid: rows ``r0:r0+h``, cols ``c0:c0+w``."""

    r0: int
    c0: int
    h: int
    w: int
    transform: Affine

    def world_corners(self) -> np.ndarray:
        """The block's four corners in the raster's CRS, shape (4, 2)."""
        t = self.transform
        return np.array([t @ (0, 0), t @ (self.w, 0), t @ (self.w, self.h), t @ (0, self.h)])


def block_at(affine: Affine, width: int, height: int, bi: int, bj: int,
             size: int = BLOCK) -> Block:
    """Block ``(bi, bj)`` (row, column of blocks) of a ``width`` x ``height`` grid."""
    r0, c0 = bi * size, bj * size
    h, w = min(size, height - r0), min(size, width - c0)
    return Block(r0, c0, h, w, affine @ Affine.translation(c0, r0))


def blocks_in(r_lo: int, r_hi: int, c_lo: int, c_hi: int, size: int = BLOCK
              ) -> set[tuple[int, int]]:
    """Block indices covering pixel rows ``r_lo..r_hi`` and cols ``c_lo..c_hi`` (inclusive)."""
    return {(bi, bj) for bi in range(r_lo // size, r_hi // size + 1)
            for bj in range(c_lo // size, c_hi // size + 1)}


def pixel_coords(affine: Affine, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (col, row) of world points: the inverse geotransform on arrays."""
    ia = ~affine
    return ia.a * x + ia.b * y + ia.c, ia.d * x + ia.e * y + ia.f


def pixel_bbox(affine: Affine, bounds: np.ndarray) -> np.ndarray:
    """Fractional pixel bounding boxes (cmin, rmin, cmax, rmax) of world ``bounds`` (n, 4)."""
    xs = bounds[:, [0, 2, 2, 0]]
    ys = bounds[:, [1, 1, 3, 3]]
    c, r = pixel_coords(affine, xs, ys)
    return np.column_stack([c.min(axis=1), r.min(axis=1), c.max(axis=1), r.max(axis=1)])


@functools.lru_cache(maxsize=64)
def _crs(text: str):
    from pyproj import CRS

    return CRS.from_user_input(text)


def same_crs(a: str | None, b: str | None) -> bool:
    """Whether two CRS definitions (WKT, PROJJSON, "EPSG:n") are the same, axis order aside."""
    if a is None or b is None:
        return a is None and b is None
    return a == b or _crs(a).equals(_crs(b), ignore_axis_order=True)


@functools.lru_cache(maxsize=64)
def transformer(src: str, dst: str) -> Any:
    """A cached pyproj Transformer (x/y = easting/northing or lon/lat order)."""
    from pyproj import Transformer

    return Transformer.from_crs(_crs(src), _crs(dst), always_xy=True)


@dataclass
class Candidates:
    """Samples of one block before they are kept: absolute pixel rows/cols, class ids, groups."""

    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray
    groups: np.ndarray

    @staticmethod
    def empty() -> Candidates:
        """No samples."""
        z = np.zeros(0, dtype=np.int64)
        return Candidates(z, z, z, z)

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        """All samples of ``parts``, in order."""
        parts = [p for p in parts if len(p.rows)]
        if not parts:
            return Candidates.empty()
        return Candidates(*(np.concatenate([getattr(p, k) for p in parts]).astype(np.int64)
                            for k in ("rows", "cols", "classes", "groups")))

    def take(self, sel: np.ndarray) -> Candidates:
        """The samples selected by a mask or index array."""
        return Candidates(self.rows[sel], self.cols[sel], self.classes[sel], self.groups[sel])

    def __len__(self) -> int:
        """The number of samples."""
        return len(self.rows)


def resolve_pixels(c: Candidates) -> tuple[Candidates, int]:
    """One sample per pixel: duplicates of one class are merged (the first kept), pixels with
    more than one class are dropped. Returns the kept samples and the number of ambiguous
    pixels."""
    if len(c) == 0:
        return c, 0
    lin = c.rows * (int(c.cols.max()) + 1) + c.cols
    order = np.lexsort((np.arange(len(c)), c.classes, lin))
    lin_s, cls_s = lin[order], c.classes[order]
    start = np.r_[True, lin_s[1:] != lin_s[:-1]]
    first = np.flatnonzero(start)
    last = np.r_[first[1:], len(lin_s)] - 1
    clear = cls_s[first] == cls_s[last]
    return c.take(np.sort(order[first[clear]])), int((~clear).sum())


def valid_on_raster(ds: Any, bands: tuple[int, ...], c: Candidates, tile: int = 256
                    ) -> np.ndarray:
    """Whether each sample's pixel is valid in every chosen band of the open raster ``ds``
    (GDAL mask, and finite for floats). Reads only the samples' bounding window, or, when the
    samples are sparse, the bounding windows of the ``tile``-sized squares that hold them."""
    if len(c) == 0:
        return np.zeros(0, dtype=bool)
    area = (int(c.rows.max()) - int(c.rows.min()) + 1) * (int(c.cols.max()) - int(c.cols.min()) + 1)
    key = (c.rows // tile) * (1 << 31) + c.cols // tile
    uniq, inv = np.unique(key, return_inverse=True)
    if len(uniq) == 1 or len(uniq) * tile * tile * 2 > area:
        return _valid_in_window(ds, bands, c.rows, c.cols)
    out = np.zeros(len(c), dtype=bool)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        sel = order[s:e]
        out[sel] = _valid_in_window(ds, bands, c.rows[sel], c.cols[sel])
    return out


def _valid_in_window(ds: Any, bands: tuple[int, ...], rows: np.ndarray, cols: np.ndarray
                     ) -> np.ndarray:
    from rasterio.windows import Window

    from pipeline.io.raster import band_validity

    r0, c0 = int(rows.min()), int(cols.min())
    win = Window(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1)
    rr, cc = rows - r0, cols - c0
    masks = ds.read_masks(list(bands), window=win)[:, rr, cc]
    if any(np.dtype(dt).kind == "f" for dt in ds.dtypes):
        valid = band_validity(ds.read(list(bands), window=win)[:, rr, cc], masks)
    else:
        valid = masks > 0
    return valid.all(axis=0)


def bottom_k(groups: np.ndarray, priority: np.ndarray, k: int) -> np.ndarray:
    """Indices of the (at most) ``k`` lowest-priority items of every group, sorted: with random
    priorities, a uniform random subset of each group, stable when applied in stages."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((priority, groups))
    g = groups[order]
    start = np.r_[True, g[1:] != g[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(g)), 0))
    rank = np.arange(len(g)) - first
    return np.sort(order[rank < k])


def merge_groups(groups: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Groups joined by ``edges`` (pairs of group ids, shape (n, 2)) renamed to the smallest id
    of their connected set."""
    if len(edges) == 0 or len(groups) == 0:
        return groups
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(edges.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(inv)), (inv[:, 0], inv[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    rep = np.full(comp.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(rep, comp, nodes)
    out = groups.copy()
    pos = np.searchsorted(nodes, groups)
    hit = (pos < n) & (nodes[np.minimum(pos, n - 1)] == groups)
    out[hit] = rep[comp[pos[hit]]]
    return out


class GroupCounter:
    """Hands out group ids: one per sample feature, one per label-raster component."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        """The first of ``n`` fresh consecutive ids."""
        start = self.next
        self.next += int(n)
        return start
