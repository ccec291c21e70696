"""Evaluation of unsupervised label maps against ground truth, as STEGO scores them.

A dataset-level confusion matrix (clusters x classes) is accumulated over all PRED/GT pairs,
block by block (no full-size array is ever allocated), then clusters are matched to classes with
the Hungarian assignment that maximises matched pixels. Reported: unsupervised pixel accuracy,
mean IoU, per-class IoU, the matching and the confusion matrix, plus the "STEGO variant" that
drops the pixels predicted into unmatched clusters.

Ground truth is a single-band class-index raster (aligned with PRED by coordinates, or on the
same pixel grid when not georeferenced) or a polygon layer rasterized onto PRED's grid.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError

NODATA = 255
IGNORE = -1
BACKGROUND = None  # the key of the area no polygon covers (vector ground truth)
VECTOR_SUFFIXES = {".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml", ".sqlite",
                   ".parquet", ".geoparquet"}
CLASS_FIELD_NAMES = ("class", "class_name", "classname", "class_id", "classid", "label",
                     "label_name", "label_id", "category", "landcover", "land_cover")
_SPAN_BINCOUNT = 4096  # GT value spans up to this are counted with one bincount per block

POTSDAM6 = ["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"]
POTSDAM3 = ["roads and cars", "buildings and clutter", "vegetation and trees"]


# --------------------------------------------------------------------------------------------
# Mappings


@dataclass
class Mapping:
    """GT value -> class index (``-1`` = ignore) and the class names, in order."""

    name: str
    classes: list[str]
    lookup: dict[Any, int]

    def index(self, value: Any) -> int | None:
        """Class index of a GT value, ``-1`` for ignored, None when the mapping lacks it."""
        for key in _key_variants(value):
            if key in self.lookup:
                return self.lookup[key]
        return None


def _key_variants(value: Any) -> list[Any]:
    out = [value]
    if isinstance(value, str):
        try:
            out.append(int(value))
        except ValueError:
            pass
    elif value is not None:
        out.append(str(value))
    return out


def _builtin(name: str) -> Mapping:
    if name == "potsdam6":
        lookup = {0: IGNORE, **{v: v - 1 for v in range(1, 7)}}
        return Mapping("potsdam6", list(POTSDAM6), lookup)
    lookup = {0: IGNORE, 1: 0, 5: 0, 2: 1, 6: 1, 3: 2, 4: 2}
    return Mapping("potsdam3", list(POTSDAM3), lookup)


def _parse_key(text: Any) -> Any:
    if isinstance(text, bool):
        raise ValueError("a boolean is not a class value; quote YAML keys such as 'yes'")
    if isinstance(text, int):
        return text
    if isinstance(text, float) and text.is_integer():
        return int(text)
    s = str(text).strip()
    try:
        return int(s)
    except ValueError:
        return s


def _is_ignore(name: Any) -> bool:
    return name is None or str(name).strip().lower() in ("", "ignore", "-")


def _mapping_from_pairs(name: str, pairs: list[tuple[Any, Any]], path: Path) -> Mapping:
    classes: list[str] = []
    lookup: dict[Any, int] = {}
    for raw_value, raw_class in pairs:
        try:
            value = _parse_key(raw_value)
        except ValueError as exc:
            raise InputError(path, f"bad value {raw_value!r} ({exc})") from None
        if value in lookup:
            raise InputError(path, f"value {value!r} is mapped twice")
        if _is_ignore(raw_class):
            lookup[value] = IGNORE
            continue
        cls = str(raw_class).strip()
        if cls not in classes:
            classes.append(cls)
        lookup[value] = classes.index(cls)
    if not classes:
        raise InputError(path, "the mapping names no class")
    return Mapping(name, classes, lookup)


def load_mapping(spec: str | None) -> Mapping | None:
    """``potsdam3``, ``potsdam6``, a CSV (``value,class``) or YAML (``{value: class}``) file.

    Several values may map to one class; a class written ``ignore`` (or empty / null) means the
    value is ignored. None gives None (each GT value is its own class).
    """
    if spec is None:
        return None
    if str(spec).lower() in ("potsdam3", "potsdam6"):
        return _builtin(str(spec).lower())
    path = Path(spec)
    if not path.is_file():
        raise InputError(spec, "mapping not found (use potsdam3, potsdam6 or a CSV/YAML file)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise InputError(path, "empty mapping file")
        header = [h.strip().lower() for h in rows[0]]
        name_col = next((c for c in ("class", "class_name", "name") if c in header), None)
        if "value" not in header or name_col is None:
            raise InputError(path, "a CSV mapping needs a 'value,class' header")
        vi, ci = header.index("value"), header.index(name_col)
        pairs = []
        for n, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= vi or not row[vi].strip():
                raise InputError(path, f"line {n}: expected value,class")
            pairs.append((row[vi], row[ci] if ci < len(row) else ""))
        return _mapping_from_pairs(str(path), pairs, path)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(path, "a YAML mapping must be {value: class_name, ...}")
    return _mapping_from_pairs(str(path), list(data.items()), path)


# --------------------------------------------------------------------------------------------
# Readers


def _is_zarr(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "zarr.json").is_file() or p.suffix == ".zarr")


def _is_georeferenced(transform: Affine, crs: Any) -> bool:
    return crs is not None or not transform.almost_equals(Affine.identity())


def _open_rasterio(path: str | Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if not str(path).startswith("/vsi") and not Path(path).exists():
        raise InputError(path, "not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(path, f"cannot open as a raster ({exc})") from None


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "none"
    try:
        from pyproj import CRS

        c = CRS.from_user_input(crs if isinstance(crs, str) else crs.to_wkt())
        auth = c.to_authority()
        return ":".join(auth) if auth else c.name
    except Exception:  # noqa: BLE001 - only for messages
        return str(crs)[:60]


def _same_crs(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    from pyproj import CRS

    ca = CRS.from_user_input(a if isinstance(a, str) else a.to_wkt())
    cb = CRS.from_user_input(b if isinstance(b, str) else b.to_wkt())
    return ca.equals(cb, ignore_axis_order=True)


class PredReader:
    """A label raster from ``stego segment``: ``labels.tif`` (rasterio) or ``labels.zarr``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._ds = None
        self._arr = None
        if _is_zarr(path):
            self._open_zarr(Path(path))
        else:
            self._open_tif()
        self.georeferenced = _is_georeferenced(self.transform, self.crs)

    def _open_zarr(self, path: Path) -> None:
        import zarr

        try:
            group = zarr.open_group(str(path), mode="r")
            arr = group["labels"]
        except Exception as exc:  # noqa: BLE001 - any failure means "not a label store"
            raise InputError(path, f"not a labels.zarr store ({exc.__class__.__name__})") from None
        if arr.ndim != 2:
            raise InputError(path, "the labels array must be 2-D (y, x)")
        self._arr = arr
        self.height, self.width = (int(s) for s in arr.shape)
        attrs = dict(group.attrs)
        sref: dict[str, Any] = {}
        if "spatial_ref" in group:
            sref = dict(group["spatial_ref"].attrs)
        if "GeoTransform" in sref:
            c, a, b, f, d, e = (float(v) for v in str(sref["GeoTransform"]).split())
            self.transform = Affine(a, b, c, d, e, f)
        elif attrs.get("spatial:transform"):
            self.transform = Affine(*[float(v) for v in attrs["spatial:transform"][:6]])
        else:
            self.transform = Affine.identity()
        wkt = sref.get("crs_wkt") or attrs.get("proj:wkt2")
        self.crs = None
        if wkt:
            from rasterio.crs import CRS

            self.crs = CRS.from_user_input(wkt)
        larr = dict(arr.attrs)
        self.nodata = {NODATA}
        if larr.get("nodata") is not None:
            self.nodata.add(int(larr["nodata"]))
        self.class_names = [str(n) for n in (attrs.get("class_names")
                                             or larr.get("class_names") or [])]
        colors = attrs.get("class_colors") or larr.get("class_colors")
        self.colors = [tuple(int(v) for v in c[:3]) for c in colors] if colors else None
        self.dtype = np.dtype(arr.dtype)

    def _open_tif(self) -> None:
        ds = _open_rasterio(self.path)
        self._ds = ds
        self.height, self.width = ds.height, ds.width
        self.transform = ds.transform
        self.crs = ds.crs
        self.nodata = {NODATA}
        if ds.nodata is not None and float(ds.nodata).is_integer():
            self.nodata.add(int(ds.nodata))
        self.dtype = np.dtype(ds.dtypes[0])
        if not np.issubdtype(self.dtype, np.integer):
            raise InputError(self.path, f"PRED must be an integer label raster, not {self.dtype}")
        tags = ds.tags(1)
        names: dict[int, str] = {}
        for key, value in tags.items():
            if key.startswith("class_") and key[6:].isdigit():
                names[int(key[6:])] = value
        self.class_names = [names.get(i, f"cluster {i}") for i in range(max(names) + 1)] \
            if names else []
        try:
            cmap = ds.colormap(1)
        except ValueError:
            cmap = None
        self.colors = None
        if cmap:
            used = [i for i, c in cmap.items() if i < NODATA and tuple(c) != (0, 0, 0, 0)]
            n = len(self.class_names) or (max(used) + 1 if used else 0)
            self.colors = [tuple(int(v) for v in cmap.get(i, (128, 128, 128))[:3])
                           for i in range(n)] or None

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Pixels [r0:r1, c0:c1] as an integer array."""
        if self._arr is not None:
            return np.asarray(self._arr[r0:r1, c0:c1])
        from rasterio.windows import Window

        return self._ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))

    def read_decimated(self, r0: int, r1: int, c0: int, c1: int,
                       out_shape: tuple[int, int]) -> np.ndarray:
        """A nearest-neighbour decimated read of the window, of ``out_shape``."""
        oh, ow = out_shape
        if self._arr is not None:
            rows = r0 + ((np.arange(oh) + 0.5) * (r1 - r0) / oh).astype(np.int64)
            cols = c0 + ((np.arange(ow) + 0.5) * (c1 - c0) / ow).astype(np.int64)
            out = np.empty((oh, ow), dtype=self._arr.dtype)
            for s in range(0, oh, 64):
                out[s:s + 64] = self._arr.get_orthogonal_selection((rows[s:s + 64], cols))
            return out
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        return self._ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), out_shape=(oh, ow),
                             resampling=Resampling.nearest)

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()


@dataclass
class Overlap:
    """The evaluated window: in PRED pixels, and where it starts in the other raster."""

    row: int
    col: int
    height: int
    width: int
    other_row: int = 0
    other_col: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"row_off": self.row, "col_off": self.col, "height": self.height,
                "width": self.width}


def align(pred: PredReader, path: str, transform: Affine, crs: Any,
          shape: tuple[int, int], what: str = "GT") -> Overlap:
    """Where a raster on PRED's pixel grid overlaps PRED (clear errors when it cannot)."""
    h, w = shape
    georef = _is_georeferenced(transform, crs)
    if not (georef and pred.georeferenced):
        if (h, w) != (pred.height, pred.width):
            who = "neither raster is" if not (georef or pred.georeferenced) else (
                f"{what} is not" if not georef else "PRED is not")
            raise InputError(path, f"{who} georeferenced, so the shapes must match: {what} is "
                                   f"{h}x{w}, PRED {pred.height}x{pred.width} (rows x cols)")
        return Overlap(0, 0, h, w)
    if not _same_crs(crs, pred.crs):
        raise InputError(path, f"CRS differs from PRED's ({_crs_name(crs)} vs "
                               f"{_crs_name(pred.crs)}); reproject it onto PRED's grid first")
    t, p = transform, pred.transform
    if t.b or t.d or p.b or p.d:
        if not t.almost_equals(p):
            raise InputError(path, "rotated grids are only supported when identical to PRED's")
    tol = 1e-6 * max(abs(p.a), abs(p.e))
    if abs(t.a - p.a) > tol or abs(t.e - p.e) > tol:
        raise InputError(path, f"pixel size differs from PRED's ({abs(t.a):g} x {abs(t.e):g} vs "
                               f"{abs(p.a):g} x {abs(p.e):g}); resample it onto PRED's grid "
                               "first (e.g. gdalwarp -tr ... -tap -r near)")
    col = (t.c - p.c) / p.a
    row = (t.f - p.f) / p.e
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        raise InputError(path, f"grid is shifted by a fraction of a pixel from PRED's "
                               f"({row:.3f}, {col:.3f} px)")
    row, col = int(round(row)), int(round(col))
    r0, r1 = max(0, row), min(pred.height, row + h)
    c0, c1 = max(0, col), min(pred.width, col + w)
    if r1 <= r0 or c1 <= c0:
        raise InputError(path, f"{what} does not overlap PRED")
    return Overlap(r0, c0, r1 - r0, c1 - c0, r0 - row, c0 - col)


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
        return self._codes(self._ds.read(1, window=win))

    def read_decimated(self, out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        o = self.overlap
        win = Window(o.other_col, o.other_row, o.width, o.height)
        data = self._ds.read(1, window=win, out_shape=out_shape, resampling=Resampling.nearest)
        return self._codes(data)

    def _codes(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        invalid = None
        if np.issubdtype(data.dtype, np.floating):
            invalid = ~np.isfinite(data)
            if self.nodata is not None and not math.isnan(self.nodata):
                invalid |= data == self.nodata
            values = np.where(invalid, 0, data)
            if not np.all(np.equal(np.mod(values, 1), 0)):
                raise InputError(self.path, "ground truth must hold integer class values")
            return values.astype(np.int64), invalid
        if self.nodata is not None and float(self.nodata).is_integer():
            invalid = data == int(self.nodata)
            if not invalid.any():
                invalid = None
        return data, invalid

    def key(self, code: int) -> Any:
        return int(code)

    def close(self) -> None:
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
        t = self.pred.transform @ Affine.translation(c0, r0)
        return self._rasterize(t, (r1 - r0, c1 - c0)), None

    def read_decimated(self, out_shape: tuple[int, int]) -> tuple[np.ndarray, None]:
        oh, ow = out_shape
        t = self.pred.transform @ Affine.scale(self.pred.width / ow, self.pred.height / oh)
        return self._rasterize(t, out_shape), None

    def key(self, code: int) -> Any:
        return self.keys[int(code)]

    def close(self) -> None:
        pass


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (
        isinstance(v, str) and not v.strip())


def _sort_key(k: Any) -> tuple:
    if k is None:
        return (0, 0, "")
    if isinstance(k, (int, np.integer)):
        return (1, int(k), "")
    return (2, 0, str(k))


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


# --------------------------------------------------------------------------------------------
# Accumulation


def _blocks(height: int, width: int, rows: int, cols: int) -> Iterator[tuple[int, int, int, int]]:
    for r0 in range(0, height, rows):
        for c0 in range(0, width, cols):
            yield r0, min(height, r0 + rows), c0, min(width, c0 + cols)


@dataclass
class _Counts:
    """Per GT code: counts over PRED codes 0..254 and 255 (PRED nodata)."""

    by_code: dict[int, np.ndarray] = field(default_factory=dict)
    gt_nodata: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))

    def add(self, code: int, counts: np.ndarray) -> None:
        if code in self.by_code:
            self.by_code[code] += counts
        else:
            self.by_code[code] = counts.astype(np.int64, copy=True)


def _pred_codes(p: np.ndarray, nodata: set[int], path: str) -> np.ndarray:
    """PRED values as cluster codes 0..254, nodata as 255."""
    if p.dtype == np.uint8 and nodata == {NODATA}:
        return p
    bad = np.zeros(p.shape, dtype=bool)
    for v in nodata:
        bad |= p == v
    valid = p[~bad]
    if valid.size and (valid.min() < 0 or valid.max() > 254):
        raise InputError(path, "PRED values must be cluster ids 0..254 (255 = nodata)")
    out = p.astype(np.uint8)
    out[bad] = NODATA
    return out


def _accumulate_block(acc: _Counts, p: np.ndarray, g: np.ndarray,
                      g_invalid: np.ndarray | None) -> None:
    if g_invalid is not None:
        acc.gt_nodata += np.bincount(p[g_invalid].ravel(), minlength=256)
        p, g = p[~g_invalid], g[~g_invalid]
    p = p.ravel()
    g = g.ravel()
    if g.size == 0:
        return
    lo, hi = int(g.min()), int(g.max())
    span = hi - lo + 1
    if span <= _SPAN_BINCOUNT:
        idx = (g.astype(np.int64) - lo) * 256 + p
        table = np.bincount(idx, minlength=span * 256).reshape(span, 256)
        codes = np.nonzero(table.any(axis=1))[0]
        for i in codes:
            acc.add(lo + int(i), table[i])
    else:
        values, inv = np.unique(g, return_inverse=True)
        table = np.bincount(inv.ravel().astype(np.int64) * 256 + p,
                            minlength=len(values) * 256).reshape(len(values), 256)
        for i, v in enumerate(values.tolist()):
            acc.add(int(v), table[i])


def _resolve_classes(
    keys: list[Any], mapping: Mapping | None, ignore: Sequence[Any], background: str | None,
) -> tuple[list[str], dict[Any, int], list[Any]]:
    """Class names and GT key -> class index (-1 ignored); also the keys the mapping lacks."""
    ignored = {str(v) for v in ignore}
    lookup: dict[Any, int] = {}
    unmapped: list[Any] = []
    classes: list[str] = list(mapping.classes) if mapping is not None else []
    has_background = BACKGROUND in keys and background is not None
    if mapping is None and has_background:
        classes.append(background)  # first, like value 0 of a raster
    for k in sorted(keys, key=_sort_key):
        if k is BACKGROUND:
            continue
        if str(k) in ignored:
            lookup[k] = IGNORE
        elif mapping is not None:
            idx = mapping.index(k)
            if idx is None:
                unmapped.append(k)
            else:
                lookup[k] = idx
        else:
            name = f"class {k}" if isinstance(k, int) else str(k)
            if name not in classes:
                classes.append(name)
            lookup[k] = classes.index(name)
    if BACKGROUND in keys:
        if background is None:
            lookup[BACKGROUND] = IGNORE
        else:
            if background not in classes:
                classes.append(background)
            lookup[BACKGROUND] = classes.index(background)
    return classes, lookup, unmapped


# --------------------------------------------------------------------------------------------
# Metrics


def _pct(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(100.0 * float(x), 4)


def _scores(m: np.ndarray, match: dict[int, int], n_classes: int) -> tuple[float, np.ndarray]:
    """Accuracy and per-class IoU of a confusion matrix under a cluster -> class matching."""
    total = m.sum()
    tp = np.zeros(n_classes, dtype=np.float64)
    pred_px = np.zeros(n_classes, dtype=np.float64)
    for r, c in match.items():
        tp[c] = m[r, c]
        pred_px[c] = m[r].sum()
    gt_px = m.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (pred_px + gt_px - tp)
        acc = tp.sum() / total if total else float("nan")
    return float(acc), iou


def hungarian_metrics(confusion: np.ndarray, class_names: Sequence[str],
                      cluster_names: Sequence[str]) -> dict[str, Any]:
    """STEGO's unsupervised metrics from a (clusters x classes) pixel-count matrix.

    Clusters are matched one-to-one to classes maximising matched pixels. Main variant: pixels of
    unmatched clusters count as errors; accuracy = matched / total; IoU = tp / (tp + fp + fn)
    per class (NaN, reported null, for a class with no pixels either way; an unmatched class with
    pixels gets 0), mIoU = their nanmean. ``stego_variant`` drops the pixels predicted into
    unmatched clusters first. Values are percentages.
    """
    from scipy.optimize import linear_sum_assignment

    m = np.asarray(confusion, dtype=np.int64)
    k, c = m.shape
    if len(class_names) != c or len(cluster_names) != k:
        raise ValueError(f"confusion is {k}x{c} but there are {len(cluster_names)} cluster "
                         f"and {len(class_names)} class names")
    rows, cols = linear_sum_assignment(m, maximize=True)
    match = {int(r): int(cl) for r, cl in zip(rows, cols, strict=True)}
    unmatched = [i for i in range(k) if i not in match]
    acc, iou = _scores(m, match, c)
    kept = np.zeros_like(m)
    for r in match:
        kept[r] = m[r]
    acc2, iou2 = _scores(kept, match, c)
    by_class = {cl: r for r, cl in match.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        miou, miou2 = float(np.nanmean(iou)), float(np.nanmean(iou2))
    per_class = []
    for j, name in enumerate(class_names):
        r = by_class.get(j)
        per_class.append({
            "class": name, "cluster": r, "cluster_name": None if r is None else cluster_names[r],
            "iou": _pct(iou[j]), "gt_pixels": int(m[:, j].sum()),
            "pred_pixels": 0 if r is None else int(m[r].sum()),
            "matched_pixels": 0 if r is None else int(m[r, j]),
        })
    return {
        "units": "percent",
        "accuracy": _pct(acc),
        "mIoU": _pct(miou),
        "per_class_iou": {n: _pct(iou[j]) for j, n in enumerate(class_names)},
        "matching": {str(r): class_names[cl] for r, cl in sorted(match.items())},
        "unmatched_clusters": unmatched,
        "unmatched_classes": [class_names[j] for j in range(c) if j not in by_class],
        "per_class": per_class,
        "pixels_in_unmatched_clusters": int(m[unmatched].sum()) if unmatched else 0,
        "stego_variant": {
            "description": "pixels predicted into unmatched clusters are dropped before "
                           "scoring (STEGO's evaluation silently ignores such pixels)",
            "accuracy": _pct(acc2),
            "mIoU": _pct(miou2),
            "per_class_iou": {n: _pct(iou2[j]) for j, n in enumerate(class_names)},
            "dropped_pixels": int(m[unmatched].sum()) if unmatched else 0,
        },
        "clusters": list(cluster_names),
        "classes": list(class_names),
        "confusion": {"rows": "clusters", "columns": "classes", "matrix": m.tolist()},
    }


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalPair:
    """A prediction (labels.tif / labels.zarr), its ground truth and optionally its image."""

    pred: str
    gt: str
    image: str | None = None


def _check_image(path: str, pred: PredReader) -> None:
    ds = _open_rasterio(path)
    try:
        align(pred, path, ds.transform, ds.crs, (ds.height, ds.width), what="image")
    finally:
        ds.close()


def _json_key(k: Any) -> Any:
    return k if k is None or isinstance(k, (int, str)) else str(k)


def evaluate(
    pairs: list[EvalPair],
    *,
    mapping: str | None = None,
    ignore: Sequence[int] = (),
    class_field: str | None = None,
    block_rows: int = 2048,
    background: str | None = "background",
) -> dict[str, Any]:
    """Score PRED/GT pairs together (one confusion matrix); returns the metrics.json content.

    Windows of ``block_rows`` x ``2 * block_rows`` pixels are read from PRED and GT and counted
    with ``np.bincount``. For vector ground truth the area no polygon covers is the class
    ``background`` (None: ignored).
    """
    if not pairs:
        raise InputError("evaluate", "no PRED/GT pair given")
    if block_rows < 1:
        raise InputError("--block-rows", "must be positive")
    the_mapping = load_mapping(mapping)
    block_cols = 2 * block_rows
    per_pair: list[tuple[EvalPair, dict[Any, np.ndarray], np.ndarray, dict[str, Any]]] = []
    cluster_names: list[str] = []
    cluster_colors: list[tuple[int, int, int]] | None = None
    run_warnings: list[str] = []
    max_code = -1
    for pair in pairs:
        pred = PredReader(pair.pred)
        try:
            gt = open_gt(str(pair.gt), pred, class_field)
            try:
                if pair.image:
                    _check_image(str(pair.image), pred)
                run_warnings.extend(getattr(gt, "warnings", []))
                if not cluster_names:
                    cluster_names, cluster_colors = list(pred.class_names), pred.colors
                elif pred.class_names and pred.class_names != cluster_names[
                        :len(pred.class_names)]:
                    run_warnings.append(f"{pair.pred}: cluster names differ from the first "
                                        "PRED's; the first PRED's names are reported")
                acc = _Counts()
                o = gt.overlap
                for r0, r1, c0, c1 in _blocks(o.height, o.width, block_rows, block_cols):
                    p = _pred_codes(pred.read(o.row + r0, o.row + r1, o.col + c0, o.col + c1),
                                    pred.nodata, pair.pred)
                    g, g_invalid = gt.read(r0, r1, c0, c1)
                    _accumulate_block(acc, p, g, g_invalid)
                raw = {}
                for code, counts in acc.by_code.items():
                    key = gt.key(code)
                    raw[key] = raw[key] + counts if key in raw else counts
                    nz = np.nonzero(counts[:NODATA])[0]
                    if nz.size:
                        max_code = max(max_code, int(nz.max()))
                nz = np.nonzero(acc.gt_nodata[:NODATA])[0]
                if nz.size:
                    max_code = max(max_code, int(nz.max()))
                info = {
                    "pred": str(pair.pred), "gt": str(pair.gt),
                    "image": None if pair.image is None else str(pair.image),
                    "gt_type": gt.kind, "class_field": gt.class_field,
                    "pred_window": o.to_dict(),
                    "pred_shape": [pred.height, pred.width],
                    "pred_crs": _crs_name(pred.crs) if pred.crs is not None else None,
                }
                per_pair.append((pair, raw, acc.gt_nodata, info))
            finally:
                gt.close()
        finally:
            pred.close()

    keys = sorted({k for _, raw, _, _ in per_pair for k in raw}, key=_sort_key)
    classes, lookup, unmapped = _resolve_classes(keys, the_mapping, ignore, background)
    if unmapped:
        first = next(p.gt for p, raw, _, _ in per_pair if any(k in raw for k in unmapped))
        shown = ", ".join(str(k) for k in unmapped[:10])
        raise InputError(first, f"values {shown} are not in the mapping "
                                f"{the_mapping.name if the_mapping else ''}; map them or "
                                "ignore them (--ignore)")
    if not classes:
        raise InputError(pairs[0].gt, "no class to evaluate (every GT value is ignored)")
    n_clusters = max(len(cluster_names), max_code + 1, 1)
    cluster_names = cluster_names + [f"cluster {i}" for i in range(len(cluster_names),
                                                                    n_clusters)]
    confusion = np.zeros((n_clusters, len(classes)), dtype=np.int64)
    totals = {"total": 0, "evaluated": 0, "ignored": 0, "nodata": 0}
    inputs = []
    for _pair, raw, gt_nodata, info in per_pair:
        px = {"total": 0, "evaluated": 0, "ignored": int(gt_nodata[:NODATA].sum()),
              "nodata": int(gt_nodata[NODATA])}
        for key, counts in raw.items():
            px["nodata"] += int(counts[NODATA])
            cls = lookup[key]
            if cls == IGNORE:
                px["ignored"] += int(counts[:NODATA].sum())
            else:
                confusion[:, cls] += counts[:n_clusters]
                px["evaluated"] += int(counts[:NODATA].sum())
        px["total"] = px["evaluated"] + px["ignored"] + px["nodata"]
        info["pixels"] = px
        inputs.append(info)
        for k in totals:
            totals[k] += px[k]
    if totals["evaluated"] == 0:
        raise InputError(pairs[0].gt, "no pixel to evaluate (all are ignored or PRED nodata)")
    metrics = hungarian_metrics(confusion, classes, cluster_names)
    metrics["pixels"] = {**totals,
                         "in_unmatched_clusters": metrics.pop("pixels_in_unmatched_clusters")}
    metrics["cluster_colors"] = [list(c) for c in cluster_colors] if cluster_colors else None
    metrics["gt_values"] = [
        {"value": _json_key(k), "class": None if lookup[k] == IGNORE else classes[lookup[k]],
         "pixels": int(sum(raw[k][:NODATA].sum() for _, raw, _, _ in per_pair if k in raw))}
        for k in keys
    ]
    metrics["mapping"] = the_mapping.name if the_mapping else None
    metrics["ignore"] = [int(v) if isinstance(v, (int, np.integer)) else v for v in ignore]
    metrics["background"] = background
    metrics["inputs"] = inputs
    metrics["warnings"] = run_warnings
    return metrics


# --------------------------------------------------------------------------------------------
# Outputs


def _atomic_write(path: Path, write) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_evaluation(metrics: dict[str, Any], pairs: list[EvalPair],
                     out_dir: Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``confusion.png`` and ``preview.png`` (first pair), atomically."""
    from pipeline import evaluation_plots as plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(metrics), indent=2)
    out = {"metrics": _atomic_write(out_dir / "metrics.json",
                                    lambda p: p.write_text(text + "\n"))}
    conf = plots.confusion_image(metrics)
    out["confusion"] = _atomic_write(out_dir / "confusion.png",
                                     lambda p: conf.save(p, format="PNG"))
    if pairs:
        prev = preview_image(metrics, pairs[0])
        out["preview"] = _atomic_write(out_dir / "preview.png",
                                       lambda p: prev.save(p, format="PNG"))
    return out


def _read_image_rgb(path: str, pred: PredReader, o: Overlap,
                    out_shape: tuple[int, int]) -> np.ndarray:
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    ds = _open_rasterio(path)
    try:
        io = align(pred, path, ds.transform, ds.crs, (ds.height, ds.width), what="image")
        # The image window that covers PRED's evaluated window (boundless where it lacks data).
        win = Window(io.other_col - io.col + o.col, io.other_row - io.row + o.row,
                     o.width, o.height)
        bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
        with warnings.catch_warnings():  # rasterio's boundless path uses Affine's `*`
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            data = ds.read(bands, window=win, out_shape=(3, *out_shape), boundless=True,
                           fill_value=0, resampling=Resampling.nearest)
    finally:
        ds.close()
    if data.dtype != np.uint8:
        data = data.astype(np.float64)
        out = np.zeros(data.shape, dtype=np.uint8)
        for b in range(3):
            band = data[b]
            ok = np.isfinite(band) & (band != 0)
            if ok.any():
                lo, hi = np.percentile(band[ok], [2, 98])
                scaled = (band - lo) / max(hi - lo, 1e-12) * 255
                out[b] = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
        data = out
    return np.moveaxis(data, 0, -1)


def preview_image(metrics: dict[str, Any], pair: EvalPair, max_width: int = 1024):
    """image | prediction | ground truth (GT coloured by the matched clusters' colours)."""
    from pipeline import evaluation_plots as plots

    pred = PredReader(pair.pred)
    try:
        field_name = None
        for inp in metrics.get("inputs", []):
            if inp.get("pred") == str(pair.pred) and inp.get("gt") == str(pair.gt):
                field_name = inp.get("class_field")
                break
        gt = open_gt(str(pair.gt), pred, field_name)
        try:
            o = gt.overlap
            panels = 3 if pair.image else 2
            gap = 8
            panel_w = (max_width - 16 - gap * (panels - 1)) // panels
            scale = min(panel_w / o.width, 640 / o.height)
            out_w, out_h = max(1, round(o.width * scale)), max(1, round(o.height * scale))
            read_shape = (min(o.height, out_h), min(o.width, out_w))
            p = _pred_codes(pred.read_decimated(o.row, o.row + o.height, o.col, o.col + o.width,
                                                read_shape), pred.nodata, pair.pred)
            g, g_invalid = gt.read_decimated(read_shape)
            image = _read_image_rgb(str(pair.image), pred, o, read_shape) if pair.image else None
            class_of = {(_json_key(e["value"]) if e["value"] is not None else None): e["class"]
                        for e in metrics.get("gt_values", [])}
            classes = metrics["classes"]
            gt_cls = np.full(g.shape, -1, dtype=np.int32)
            for code in np.unique(g).tolist():
                name = class_of.get(_json_key(gt.key(code)))
                if name is None and not isinstance(gt.key(code), str):
                    name = class_of.get(str(gt.key(code)))
                if name is not None:
                    gt_cls[g == code] = classes.index(name)
            if g_invalid is not None:
                gt_cls[g_invalid] = -1
        finally:
            gt.close()
        colors = metrics.get("cluster_colors") or [list(c) for c in pred.colors or []]
    finally:
        pred.close()
    n_clusters = len(metrics["clusters"])
    if len(colors) < n_clusters:
        from pipeline.models.base import default_colors

        colors = list(colors) + [list(c) for c in default_colors(n_clusters)[len(colors):]]
    return plots.preview_panels(
        metrics, pred=p, gt_classes=gt_cls, image=image,
        cluster_colors=[tuple(int(v) for v in c[:3]) for c in colors],
        size=(out_w, out_h), gap=gap,
    )


# --------------------------------------------------------------------------------------------
# Naming clusters from an evaluation or a hand-written file


def cluster_names_from_metrics(metrics_path: str | Path, n_clusters: int) -> list[str]:
    """Matched clusters take their class's name; the others keep ``cluster N``."""
    path = Path(metrics_path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON ({exc.msg})") from None
    matching = doc.get("matching") if isinstance(doc, dict) else None
    if not isinstance(matching, dict):
        raise InputError(path, "no 'matching' (is this a metrics.json from `stego evaluate`?)")
    names = [f"cluster {i}" for i in range(n_clusters)]
    for key, name in matching.items():
        try:
            i = int(key)
        except ValueError:
            raise InputError(path, f"bad cluster id {key!r} in the matching") from None
        if not 0 <= i < n_clusters:
            raise InputError(path, f"cluster {i} is not in the model ({n_clusters} clusters)")
        names[i] = str(name)
    return names


def parse_color(value: Any, where: str | Path) -> tuple[int, int, int]:
    """``#rrggbb``, ``r g b``, ``r,g,b`` or ``[r, g, b]``."""
    try:
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("#") and len(s) == 7:
                return tuple(int(s[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
            parts = s.replace(",", " ").replace(";", " ").split()
        else:
            parts = list(value)
        rgb = tuple(int(p) for p in parts)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
        return rgb  # type: ignore[return-value]
    except (TypeError, ValueError):
        raise InputError(where, f"bad colour {value!r} (use #rrggbb or r g b)") from None


def cluster_names_from_file(
    path: str | Path, n_clusters: int,
) -> tuple[list[str], list[tuple[int, int, int] | None] | None]:
    """Names (and colours) from YAML ``{id: name}`` / ``{id: {name:, color:}}`` / ``{id: [name,
    color]}``, or CSV ``cluster,name[,color]``; a metrics.json gives its matching.

    Clusters the file omits keep ``cluster N``. Colours: None when the file gives none,
    else one entry per cluster, None where the model's colour should stay.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found")
    if path.suffix.lower() == ".json":
        return cluster_names_from_metrics(path, n_clusters), None
    entries: list[tuple[Any, Any, Any]] = []
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        header = [h.strip().lower() for h in rows[0]] if rows else []
        id_col = next((c for c in ("cluster", "cluster_id", "id", "value") if c in header), None)
        name_col = next((c for c in ("name", "class", "class_name") if c in header), None)
        if id_col is None or name_col is None:
            raise InputError(path, "a CSV needs a 'cluster,name[,color]' header")
        col_col = next((c for c in ("color", "colour") if c in header), None)
        for row in rows[1:]:
            cells = dict(zip(header, row, strict=False))
            color = cells.get(col_col) if col_col else None
            entries.append((cells.get(id_col), cells.get(name_col), color or None))
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise InputError(path, "expected {cluster_id: name} or {cluster_id: {name, color}}")
        for key, value in data.items():
            if isinstance(value, dict):
                entries.append((key, value.get("name"), value.get("color", value.get("colour"))))
            elif isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                entries.append((key, value[0], value[1]))
            else:
                entries.append((key, value, None))
    names = [f"cluster {i}" for i in range(n_clusters)]
    colors: list[tuple[int, int, int] | None] = [None] * n_clusters
    for key, name, color in entries:
        try:
            i = int(str(key).strip().removeprefix("cluster").strip())
        except ValueError:
            raise InputError(path, f"bad cluster id {key!r}") from None
        if not 0 <= i < n_clusters:
            raise InputError(path, f"cluster {i} is not in the model ({n_clusters} clusters)")
        if name is None or not str(name).strip():
            raise InputError(path, f"cluster {i} has no name")
        names[i] = str(name).strip()
        if color is not None:
            colors[i] = parse_color(color, path)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(path, f"duplicate class names: {', '.join(dup)}")
    return names, (colors if any(c is not None for c in colors) else None)


def rename_model_classes(
    model_dir: str | Path, names: Sequence[str],
    colors: Sequence[tuple[int, int, int] | None] | None = None,
) -> Path:
    """Rewrite ``model.json``'s ``class_names`` (and ``colors``) atomically; nothing else changes.

    The model hash changes with it, which is intended: outputs record the names they used.
    """
    from pipeline.models.store import read_model_json

    path = Path(model_dir) / "model.json"
    meta = read_model_json(Path(model_dir))
    old = meta.get("class_names") or []
    if len(names) != len(old):
        raise InputError(path, f"the model has {len(old)} clusters, {len(names)} names given")
    meta["class_names"] = [str(n) for n in names]
    if colors is not None:
        if len(colors) != len(old):
            raise InputError(path, f"the model has {len(old)} clusters, {len(colors)} colours")
        current = meta.get("colors") or [[128, 128, 128]] * len(old)
        meta["colors"] = [list(c) if c is not None else list(current[i])
                          for i, c in enumerate(colors)]
    text = json.dumps(meta, indent=2, default=str)
    return _atomic_write(path, lambda p: p.write_text(text))
