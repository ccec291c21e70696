"""Ground-truth readers on PRED's grid: a single-band class-index raster, or a polygon layer
rasterized block by block; ``open_gt`` picks one from the path."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.evaluation.mapping import BACKGROUND, _parse_key, _sort_key
from pipeline.evaluation.readers import Overlap, PredReader, _open_rasterio, _same_crs, align
from pipeline.io.raster import band_validity

VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite",
                   ".parquet", ".geoparquet"}
CLASS_FIELD_NAMES = ("class", "class_name", "classname", "class_id", "classid", "label",
                     "label_name", "label_id", "category", "landcover", "land_cover")


class RasterGT:
    """A single-band class-index raster."""

    kind = "raster"

    def __init__(self, path: str, pred: PredReader) -> None:
        self.path = path
        ds = _open_rasterio(path)
        self._ds = ds
        if ds.count != 1:
            ds.close()
            raise InputError(path, f"ground truth has {ds.count} bands; expected one band of "
                                   "class values (convert colour-coded labels first)")
        self.dtype = np.dtype(ds.dtypes[0])
        self.nodata = ds.nodata
        try:
            self.overlap = align(pred, path, ds.transform, ds.crs, (ds.height, ds.width))
        except InputError:
            ds.close()
            raise
        self.class_field = None

    def read(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """GT codes for PRED window rows/cols (relative to the overlap) and an invalid mask."""
        from rasterio.windows import Window

        o = self.overlap
        win = Window(o.other_col + c0, o.other_row + r0, c1 - c0, r1 - r0)
        return self._codes(self._ds.read(1, window=win), self._ds.read_masks(1, window=win))

    def read_decimated(self, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole overlap, nearest-neighbour decimated to ``out_shape``, and its invalid mask."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        o = self.overlap
        win = Window(o.other_col, o.other_row, o.width, o.height)
        data = self._ds.read(1, window=win, out_shape=out_shape, resampling=Resampling.nearest)
        mask = self._ds.read_masks(1, window=win, out_shape=out_shape,
                                   resampling=Resampling.nearest)
        return self._codes(data, mask)

    def _codes(self, data: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        # the input rule (io.raster.band_validity): GDAL's mask (nodata value, internal mask,
        # alpha) and, for floats, NaN/inf are nodata
        invalid = ~band_validity(data, mask)
        if np.issubdtype(data.dtype, np.floating):
            values = np.where(invalid, 0, data)
            if not np.all(np.equal(np.mod(values, 1), 0)):
                raise InputError(self.path, "ground truth must hold integer class values")
            return values.astype(np.int64), invalid
        return data, (invalid if invalid.any() else None)

    def key(self, code: int) -> Any:
        """The GT value of a code (the raster value itself)."""
        return int(code)

    def close(self) -> None:
        """Close the raster."""
        self._ds.close()


def _read_vector(path: str):
    import pyogrio
    import pyogrio.errors

    try:
        info = pyogrio.read_info(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise InputError(path, f"cannot open as a raster or vector file ({exc})") from None
    return info


class VectorGT:
    """Polygons rasterized onto PRED's grid: class codes 1..n, 0 where no polygon lies."""

    kind = "vector"

    def __init__(self, path: str, pred: PredReader, class_field: str | None) -> None:
        import pyogrio.raw
        import shapely

        self.path = path
        info = _read_vector(path)
        if not pred.georeferenced:
            raise InputError(path, "PRED is not georeferenced, so vector ground truth cannot be "
                                   "placed on its grid")
        fields = [str(f) for f in info["fields"]]
        types = [str(t) for t in info["dtypes"]]
        if class_field is not None and class_field not in fields:
            raise InputError(path, f"no field {class_field!r} (fields: {', '.join(fields)})")
        if class_field is None:
            lower = {f.lower(): f for f, t in zip(fields, types, strict=True)
                     if t == "object" or t.startswith(("int", "uint"))}
            class_field = next((lower[n] for n in CLASS_FIELD_NAMES if n in lower), None)
        self.class_field = class_field
        _meta, _fids, wkb, field_data = pyogrio.raw.read(
            path, columns=[class_field] if class_field else [])[:4]
        geoms = shapely.from_wkb(wkb)
        keep = ~shapely.is_missing(geoms) & np.isin(
            shapely.get_type_id(geoms), [shapely.GeometryType.POLYGON,
                                         shapely.GeometryType.MULTIPOLYGON])
        self.skipped = int((~keep).sum())
        geoms = geoms[keep]
        vcrs = info.get("crs")
        self.warnings: list[str] = []
        if self.skipped:
            self.warnings.append(f"{path}: {self.skipped} non-polygon or empty features skipped")
        if vcrs is None:
            self.warnings.append(f"{path}: no CRS; assumed to be PRED's")
        elif pred.crs is None or not _same_crs(vcrs, pred.crs):
            if pred.crs is None:
                raise InputError(path, "PRED has no CRS; cannot place CRS-referenced polygons")
            from pyproj import Transformer

            tr = Transformer.from_crs(vcrs, pred.crs.to_wkt(), always_xy=True)
            geoms = shapely.transform(
                geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        if class_field:
            raw = field_data[0][keep]
            values = [None if _missing(v) else str(v) if isinstance(v, bool) else _parse_key(v)
                      for v in raw.tolist()]
            if any(v is None for v in values):
                self.warnings.append(f"{path}: polygons with an empty {class_field!r} are "
                                     "treated as background")
        else:
            values = ["foreground"] * len(geoms)
        distinct = sorted({v for v in values if v is not None}, key=_sort_key)
        self.keys: list[Any] = [BACKGROUND, *distinct]
        index = {k: i for i, k in enumerate(self.keys)}
        codes = np.array([index[v] for v in values], dtype=np.int64)
        sel = codes > 0
        self.geoms, self.codes = geoms[sel], codes[sel]
        self.tree = shapely.STRtree(self.geoms)
        self.pred = pred
        self.overlap = Overlap(0, 0, pred.height, pred.width)
        self.dtype = np.dtype(np.uint16 if len(self.keys) < 65535 else np.int32)

    def _rasterize(self, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
        import shapely
        from rasterio.features import rasterize

        h, w = shape
        x0, y0 = transform @ (0, 0)
        x1, y1 = transform @ (w, h)
        idx = np.sort(self.tree.query(shapely.box(min(x0, x1), min(y0, y1),
                                                  max(x0, x1), max(y0, y1))))
        if len(idx) == 0:
            return np.zeros(shape, dtype=self.dtype)
        shapes = zip(self.geoms[idx], self.codes[idx].tolist(), strict=True)
        return rasterize(shapes, out_shape=shape, transform=transform, fill=0,
                         all_touched=False, dtype=self.dtype)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, None]:
        """Polygon codes rasterized on PRED window rows/cols (no invalid mask)."""
        t = self.pred.transform @ Affine.translation(c0, r0)
        return self._rasterize(t, (r1 - r0, c1 - c0)), None

    def read_decimated(self, out_shape: tuple[int, int]) -> tuple[np.ndarray, None]:
        """Polygon codes rasterized over all of PRED at the coarser ``out_shape`` grid."""
        oh, ow = out_shape
        t = self.pred.transform @ Affine.scale(self.pred.width / ow, self.pred.height / oh)
        return self._rasterize(t, out_shape), None

    def key(self, code: int) -> Any:
        """The class-field value of a code (``BACKGROUND`` for 0)."""
        return self.keys[int(code)]

    def close(self) -> None:
        """Nothing to close (the polygons are in memory)."""
        pass


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (
        isinstance(v, str) and not v.strip())


def _is_vector(path: str) -> bool:
    return Path(path).suffix.lower() in VECTOR_SUFFIXES


def open_gt(path: str, pred: PredReader, class_field: str | None) -> RasterGT | VectorGT:
    """The ground truth as a raster, or a polygon layer rasterized on PRED's grid."""
    if _is_vector(path):
        if not Path(path).exists():
            raise InputError(path, "not found")
        return VectorGT(path, pred, class_field)
    try:
        return RasterGT(path, pred)
    except InputError as exc:
        if "cannot open as a raster" not in exc.problem:
            raise
    return VectorGT(path, pred, class_field)
