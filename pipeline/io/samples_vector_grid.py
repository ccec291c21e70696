"""Placing a sample layer on one raster's pixel grid: features reprojected to the raster's CRS,
points on the pixel that contains them, polygons rasterized block by block (pixel centres,
``all_touched=False``; overlapping polygons of different classes give ambiguous pixels), and a
polygon too small to cover any pixel centre on the pixel under its centroid."""

from __future__ import annotations

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo
from pipeline.io.samples_grid import (
    BLOCK,
    Block,
    Candidates,
    pixel_bbox,
    pixel_coords,
    same_crs,
    transformer,
)
from pipeline.io.samples_vector import VectorLayer

MAX_CENTRE_TEST = 64  # polygons whose bounding box spans more pixel centres cover at least one
CALL_COST_PIXELS = 100_000  # a rasterize call costs about as much as burning this many pixels


def projected(layer: VectorLayer, info: RasterInfo) -> np.ndarray:
    """The layer's geometries in ``info``'s CRS (cached per CRS); InputError when one side has
    a CRS and the other has none."""
    import shapely

    if layer.crs is None and info.crs_wkt is not None:
        raise InputError(layer.path, f"no CRS: the layer has no coordinate reference system "
                                     f"but the raster {info.path} has one; assign the layer's "
                                     "CRS (e.g. a .prj file, or QGIS 'Assign projection')")
    if layer.crs is not None and info.crs_wkt is None:
        raise InputError(layer.path, f"the raster {info.path} has no CRS, so a layer with a "
                                     "CRS cannot be placed on it")
    if layer.crs is None or same_crs(layer.crs, info.crs_wkt):
        return layer.geoms
    key = info.crs_wkt
    cache = layer.projected
    if key not in cache:
        tr = transformer(layer.crs, key)

        def fn(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))

        with np.errstate(invalid="ignore"):
            cache[key] = shapely.transform(layer.geoms, fn)
    return cache[key]


def covers_no_centre(geoms: np.ndarray, bb: np.ndarray, affine: Affine,
                     max_test: int = MAX_CENTRE_TEST) -> np.ndarray:
    """Per polygon: whether no pixel centre lies inside it (bounding boxes ``bb`` in fractional
    pixels); polygons whose box holds more than ``max_test`` centres are assumed to cover one."""
    import shapely

    with np.errstate(invalid="ignore"):
        c_lo, r_lo = np.ceil(bb[:, 0] - 0.5), np.ceil(bb[:, 1] - 0.5)
        nc = np.floor(bb[:, 2] - 0.5) - c_lo + 1
        nr = np.floor(bb[:, 3] - 0.5) - r_lo + 1
        n = np.where(np.isfinite(nc * nr), np.clip(nc, 0, None) * np.clip(nr, 0, None), -1)
    tiny = n == 0
    idx = np.flatnonzero((n > 0) & (n <= max_test))
    if len(idx):
        counts = n[idx].astype(np.int64)
        rep = np.repeat(idx, counts)
        k = np.arange(len(rep)) - np.repeat(np.cumsum(counts) - counts, counts)
        ncr = np.repeat(nc[idx].astype(np.int64), counts)
        cc = np.repeat(c_lo[idx], counts) + k % ncr + 0.5
        rr = np.repeat(r_lo[idx], counts) + k // ncr + 0.5
        a = affine
        hit = shapely.contains_xy(geoms[rep], a.a * cc + a.b * rr + a.c,
                                  a.d * cc + a.e * rr + a.f)
        covered = np.zeros(len(geoms), dtype=bool)
        covered[rep[hit]] = True
        tiny[idx] = ~covered[idx]
    return tiny


class VectorOnGrid:
    """One layer on one raster's grid: the blocks it touches and its candidates per block."""

    def __init__(self, layer: VectorLayer, info: RasterInfo, block: int = BLOCK) -> None:
        import shapely

        assert layer.class_ids is not None and layer.groups is not None
        assert layer.placed is not None
        self.layer, self.size = layer, block
        geoms = projected(layer, info)
        aff, w, h = info.affine, info.width, info.height
        cls, grp = layer.class_ids, layer.groups
        is_pt = np.isin(shapely.get_type_id(geoms), (0, 4))
        pidx = np.flatnonzero(is_pt)
        coords, which = shapely.get_coordinates(geoms[pidx], return_index=True)
        poly = np.flatnonzero(~is_pt)
        bb = pixel_bbox(aff, shapely.bounds(geoms[poly]).reshape(-1, 4))
        with np.errstate(invalid="ignore"):
            inside = (np.isfinite(bb).all(axis=1) & (bb[:, 2] > 0) & (bb[:, 0] < w)
                      & (bb[:, 3] > 0) & (bb[:, 1] < h))
        tiny = covers_no_centre(geoms[poly], bb, aff)
        small = poly[inside & tiny]
        centroids = shapely.get_coordinates(shapely.centroid(geoms[small]))
        xy = np.concatenate([coords, centroids])
        feats = np.concatenate([pidx[which], small]).astype(np.int64)
        with np.errstate(invalid="ignore"):
            fc, fr = pixel_coords(aff, xy[:, 0], xy[:, 1])
            ok = np.isfinite(fc) & np.isfinite(fr) & (fc >= 0) & (fc < w) & (fr >= 0) & (fr < h)
        feats = feats[ok]
        rows, cols = np.floor(fr[ok]).astype(np.int64), np.floor(fc[ok]).astype(np.int64)
        layer.placed[feats] = True
        self.points = Candidates(rows, cols, cls[feats], grp[feats])
        nbx = (w + block - 1) // block
        bid = (rows // block) * nbx + cols // block
        order = np.argsort(bid, kind="stable")
        keys, starts = np.unique(bid[order], return_index=True)
        ends = np.r_[starts[1:], len(order)][: len(starts)]
        self._pt_blocks = {(int(k) // nbx, int(k) % nbx): order[s:e] for k, s, e in
                           zip(keys, starts, ends, strict=True)}
        keep = inside & ~tiny
        self.polys = poly[keep]
        self.pgeoms = geoms[self.polys]
        self.tree = shapely.STRtree(self.pgeoms)
        pb = self.pbb = bb[keep]
        self.affine = aff
        self._spans = np.unique(np.column_stack([
            np.clip(np.floor(pb[:, 1]), 0, h - 1), np.clip(np.ceil(pb[:, 3]) - 1, 0, h - 1),
            np.clip(np.floor(pb[:, 0]), 0, w - 1), np.clip(np.ceil(pb[:, 2]) - 1, 0, w - 1),
        ]).astype(np.int64) // block, axis=0)

    def blocks(self) -> set[tuple[int, int]]:
        """Indices (row, col) of the blocks that hold any of this layer's samples."""
        out = set(self._pt_blocks)
        for bi0, bi1, bj0, bj1 in self._spans.tolist():
            out.update((bi, bj) for bi in range(bi0, bi1 + 1) for bj in range(bj0, bj1 + 1))
        return out

    def candidates(self, key: tuple[int, int], block: Block) -> Candidates:
        """The layer's samples in ``block``: its points, then its polygons' pixels (a pixel under
        polygons of several classes appears once per extreme class, so it reads ambiguous)."""
        parts = []
        sel = self._pt_blocks.get(key)
        if sel is not None:
            parts.append(self.points.take(sel))
        if len(self.polys):
            parts.append(self._polygons(block))
        return Candidates.concat(parts)

    def _polygons(self, block: Block) -> Candidates:
        import shapely

        idx = self.tree.query(shapely.polygons(block.world_corners()), predicate="intersects")
        if len(idx) == 0:
            return Candidates.empty()
        pb = self.pbb[idx]  # pixel windows clipped to the block: r0, c0, r1, c1 (exclusive)
        win = np.column_stack([
            np.maximum(np.floor(pb[:, 1]), block.r0), np.maximum(np.floor(pb[:, 0]), block.c0),
            np.minimum(np.ceil(pb[:, 3]), block.r0 + block.h),
            np.minimum(np.ceil(pb[:, 2]), block.c0 + block.w)]).astype(np.int64)
        lo, hi = win[:, :2].min(axis=0), win[:, 2:].max(axis=0)
        if len(idx) * CALL_COST_PIXELS < (hi - lo).prod():
            # a few polygons scattered over the block: one small window each (pixels of
            # overlapping polygons repeat; the block's merge drops those of two classes)
            parts = [self._burn(idx[i:i + 1], win[i, :2], win[i, 2:]) for i in range(len(idx))]
            return Candidates.concat(parts)
        return self._burn(idx, lo, hi)

    def _burn(self, idx: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Candidates:
        """Pixels of polygons ``idx`` in the pixel window ``lo``..``hi`` (row, col): each pixel
        once with the highest class over it and once with the lowest where those differ."""
        from rasterio.features import rasterize

        shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        if shape[0] <= 0 or shape[1] <= 0:
            return Candidates.empty()
        transform = self.affine @ Affine.translation(int(lo[1]), int(lo[0]))
        feats = self.polys[idx]
        classes, groups = self.layer.class_ids, self.layer.groups
        assert classes is not None and groups is not None and self.layer.placed is not None
        cls = classes[feats]
        order = np.lexsort((feats, cls))  # the last burnt is the highest class
        burn = [(self.pgeoms[idx[o]], i + 1) for i, o in enumerate(order.tolist())]
        high = rasterize(burn, out_shape=shape, transform=transform, fill=0,
                         all_touched=False, dtype="int32")
        rr, cc = np.nonzero(high)
        f_hi = feats[order[high[rr, cc] - 1]]
        rr, cc = rr + lo[0], cc + lo[1]
        parts = [Candidates(rr, cc, classes[f_hi], groups[f_hi])]
        self.layer.placed[f_hi] = True
        if cls.min() != cls.max():  # burnt in reverse order: the lowest class last
            rev = [(g, len(burn) - v + 1) for g, v in reversed(burn)]
            low = rasterize(rev, out_shape=shape, transform=transform, fill=0,
                            all_touched=False, dtype="int32")
            f_lo = feats[order[::-1][low[rr - lo[0], cc - lo[1]] - 1]]
            two = classes[f_lo] != classes[f_hi]
            parts.append(Candidates(rr[two], cc[two], classes[f_lo[two]], groups[f_lo[two]]))
            self.layer.placed[f_lo] = True
        return Candidates.concat(parts)
