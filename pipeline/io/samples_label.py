"""Label rasters as training samples: a single band of integer class values where GDAL's mask
(nodata value, internal mask, alpha) marks unlabelled pixels, and, when the raster has no mask
at all, the value 0 does. Placed on an input raster's grid by direct reads when the grids line
up, else by nearest-neighbour reprojection block by block; each connected region (4-connected,
one class) is one group, merged across block seams."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo, band_validity
from pipeline.io.samples_grid import (
    BLOCK,
    Block,
    Candidates,
    GroupCounter,
    pixel_bbox,
    same_crs,
)
from pipeline.io.samples_table import ClassRegistry

UNLABELLED = np.iinfo(np.int32).min
_PLACEHOLDER_CRS = "EPSG:3857"  # both sides without CRS: a pure affine resampling


class LabelRaster:
    """An open single-band label raster and the classes of the values met so far."""

    def __init__(self, path: str, fixed_class: str | None) -> None:
        import rasterio
        from rasterio.enums import MaskFlags
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        self.path, self.fixed_class = path, fixed_class
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.ds = rasterio.open(path)
        except RasterioIOError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "unreadable"
            raise InputError(path, f"cannot be read as a label raster ({first})") from None
        ds = self.ds
        if ds.count != 1:
            self.close()
            raise InputError(path, f"label raster has {ds.count} bands; expected one band of "
                                   "class values")
        if np.dtype(ds.dtypes[0]).kind not in "uif":
            self.close()
            raise InputError(path, f"label raster has data type {ds.dtypes[0]}; expected "
                                   "integer class values")
        self.crs = ds.crs.to_wkt() if ds.crs else None
        self.georeferenced = self.crs is not None or not ds.transform.is_identity
        self.zero_unlabelled = ds.nodata is None and \
            ds.mask_flag_enums[0] == [MaskFlags.all_valid]
        try:
            self.colormap: dict[int, Any] = ds.colormap(1)
        except ValueError:
            self.colormap = {}
        self.placed = 0  # labelled pixels that fell on an input raster
        self._class_of: dict[int, int] = {}

    def class_of(self, value: int, registry: ClassRegistry) -> int:
        """The class id of a label value."""
        cid = self._class_of.get(value)
        if cid is None:
            rgba = self.colormap.get(value)
            color = tuple(int(c) for c in rgba[:3]) if rgba is not None else None
            if self.fixed_class is not None:
                cid = registry.class_id(self.path, self.fixed_class, self.fixed_class, color)
            else:
                cid = registry.class_id(self.path, value, None, color)  # type: ignore[arg-type]
            self._class_of[value] = cid
        return cid

    def codes(self, data: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Label values as int32 with ``UNLABELLED`` where the raster says unlabelled."""
        labelled = band_validity(data, mask)
        if self.zero_unlabelled:
            labelled &= data != 0
        vals = data[labelled]
        if vals.size:
            if data.dtype.kind == "f" and not np.all(np.mod(vals, 1) == 0):
                raise InputError(self.path, "label raster must hold integer class values")
            if vals.min() <= UNLABELLED or vals.max() > np.iinfo(np.int32).max:
                raise InputError(self.path, "label values must fit in 32-bit integers")
        out = np.full(data.shape, UNLABELLED, dtype=np.int32)
        out[labelled] = vals.astype(np.int32)
        return out

    def close(self) -> None:
        """Close the raster."""
        self.ds.close()


def _aligned_offset(label_affine: Any, affine: Any) -> tuple[int, int] | None:
    """(row, col) offset from input pixels to label pixels when the grids coincide."""
    m = ~label_affine @ affine
    if not np.allclose([m.a, m.b, m.d, m.e], [1, 0, 0, 1], atol=1e-6):
        return None
    dc, dr = round(m.c), round(m.f)
    if abs(m.c - dc) > 1e-6 or abs(m.f - dr) > 1e-6:
        return None
    return int(dr), int(dc)


class LabelOnGrid:
    """A label raster on one input raster's grid: the blocks it covers, its labelled pixels
    per block with their component groups, and the component joins across block seams."""

    def __init__(self, src: LabelRaster, info: RasterInfo, registry: ClassRegistry,
                 counter: GroupCounter, block: int = BLOCK) -> None:
        from rasterio.warp import transform_bounds

        ds = src.ds
        self.src, self.info, self.registry, self.counter = src, info, registry, counter
        self.size = block
        self.edges: list[np.ndarray] = []
        self._borders: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        if not src.georeferenced:
            if (ds.width, ds.height) != (info.width, info.height):
                raise InputError(src.path, f"has no georeferencing and its size "
                                           f"{ds.width}x{ds.height} differs from the "
                                           f"{info.width}x{info.height} of {info.path}")
            self.offset: tuple[int, int] | None = (0, 0)
        else:
            if src.crs is None and info.crs_wkt is not None:
                raise InputError(src.path, f"no CRS: the label raster has none but {info.path} "
                                           "has one")
            if src.crs is not None and info.crs_wkt is None:
                raise InputError(src.path, f"the raster {info.path} has no CRS, so a label "
                                           "raster with a CRS cannot be placed on it")
            self.offset = _aligned_offset(ds.transform, info.affine) \
                if same_crs(src.crs, info.crs_wkt) else None
        w, h = info.width, info.height
        if self.offset is not None:
            dr, dc = self.offset
            lo_r, hi_r, lo_c, hi_c = -dr, ds.height - dr - 1, -dc, ds.width - dc - 1
        else:
            b = tuple(ds.bounds)
            if src.crs is not None and not same_crs(src.crs, info.crs_wkt):
                b = transform_bounds(src.crs, info.crs_wkt, *b, densify_pts=21)
            bb = pixel_bbox(info.affine, np.array([b], dtype=np.float64))[0]
            lo_c, lo_r = int(np.floor(bb[0])), int(np.floor(bb[1]))
            hi_c, hi_r = int(np.ceil(bb[2])) - 1, int(np.ceil(bb[3])) - 1
        self.window = (max(lo_r, 0), min(hi_r, h - 1), max(lo_c, 0), min(hi_c, w - 1))

    def blocks(self) -> set[tuple[int, int]]:
        """Indices (row, col) of the blocks the label raster covers."""
        r_lo, r_hi, c_lo, c_hi = self.window
        if r_lo > r_hi or c_lo > c_hi:
            return set()
        s = self.size
        return {(bi, bj) for bi in range(r_lo // s, r_hi // s + 1)
                for bj in range(c_lo // s, c_hi // s + 1)}

    def candidates(self, key: tuple[int, int], block: Block) -> Candidates:
        """The labelled pixels of ``block`` (call in row-major block order: seams with the
        blocks above and to the left are joined)."""
        from skimage.measure import label

        codes = self._direct(block) if self.offset is not None else self._warped(block)
        labelled = codes != UNLABELLED
        if not labelled.any():
            return Candidates.empty()
        values = np.unique(codes[labelled])
        ids = np.array([self.src.class_of(int(v), self.registry) for v in values.tolist()])
        cls = np.full(codes.shape, -1, dtype=np.int64)
        cls[labelled] = ids[np.searchsorted(values, codes[labelled])]
        comp = label(cls, background=-1, connectivity=1).astype(np.int64)
        base = self.counter.take(int(comp.max()))
        groups = np.where(comp > 0, comp - 1 + base, -1)
        self._join_seams(key, cls, groups)
        rr, cc = np.nonzero(labelled)
        self.src.placed += len(rr)
        return Candidates(rr + block.r0, cc + block.c0, cls[rr, cc], groups[rr, cc])

    def _join_seams(self, key: tuple[int, int], cls: np.ndarray, groups: np.ndarray) -> None:
        bi, bj = key
        self._borders[key] = (cls[-1], groups[-1], cls[:, -1], groups[:, -1])
        for nb, mine_c, mine_g, which in (((bi - 1, bj), cls[0], groups[0], 0),
                                          ((bi, bj - 1), cls[:, 0], groups[:, 0], 2)):
            other = self._borders.get(nb)
            if other is None:
                continue
            oc, og = other[which], other[which + 1]
            join = (mine_c >= 0) & (mine_c == oc)
            if join.any():
                self.edges.append(np.column_stack([og[join], mine_g[join]]))

    def _direct(self, block: Block) -> np.ndarray:
        from rasterio.windows import Window

        ds = self.src.ds
        dr, dc = self.offset  # type: ignore[misc]
        r0, c0 = max(block.r0 + dr, 0), max(block.c0 + dc, 0)
        r1 = min(block.r0 + dr + block.h, ds.height)
        c1 = min(block.c0 + dc + block.w, ds.width)
        out = np.full((block.h, block.w), UNLABELLED, dtype=np.int32)
        if r1 <= r0 or c1 <= c0:
            return out
        win = Window(c0, r0, c1 - c0, r1 - r0)
        part = self.src.codes(ds.read(1, window=win), ds.read_masks(1, window=win))
        out[r0 - dr - block.r0:r1 - dr - block.r0, c0 - dc - block.c0:c1 - dc - block.c0] = part
        return out

    def _warped(self, block: Block) -> np.ndarray:
        from rasterio.enums import Resampling
        from rasterio.warp import reproject, transform_bounds
        from rasterio.windows import Window

        ds, src = self.src.ds, self.src
        corners = block.world_corners()
        b = (*corners.min(axis=0), *corners.max(axis=0))
        if src.crs is not None and not same_crs(src.crs, self.info.crs_wkt):
            b = transform_bounds(self.info.crs_wkt, src.crs, *b, densify_pts=21)
        out = np.full((block.h, block.w), UNLABELLED, dtype=np.int32)
        bb = pixel_bbox(ds.transform, np.array([b], dtype=np.float64))[0]
        if not np.isfinite(bb).all():
            return out
        c0, r0 = max(int(np.floor(bb[0])) - 1, 0), max(int(np.floor(bb[1])) - 1, 0)
        c1, r1 = min(int(np.ceil(bb[2])) + 1, ds.width), min(int(np.ceil(bb[3])) + 1, ds.height)
        if r1 <= r0 or c1 <= c0:
            return out
        win = Window(c0, r0, c1 - c0, r1 - r0)
        codes = src.codes(ds.read(1, window=win), ds.read_masks(1, window=win))
        if not (codes != UNLABELLED).any():
            return out
        reproject(codes, out, src_transform=ds.transform @ Affine.translation(c0, r0),
                  src_crs=src.crs or _PLACEHOLDER_CRS, dst_transform=block.transform,
                  dst_crs=self.info.crs_wkt or _PLACEHOLDER_CRS, src_nodata=UNLABELLED,
                  dst_nodata=UNLABELLED, resampling=Resampling.nearest)
        return out
