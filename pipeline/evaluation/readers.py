"""PRED label rasters (labels.tif / labels.zarr) and the alignment of another raster with
PRED's pixel grid (same CRS, pixel size and whole-pixel offset)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import InputError
from pipeline.labels import NODATA


def _is_zarr(path: str | Path) -> bool:
    p = Path(path)
    markers = ("zarr.json", ".zgroup", ".zarray")  # Zarr v3, v2
    return p.is_dir() and (p.suffix == ".zarr" or any((p / m).is_file() for m in markers))


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
        """Close the GeoTIFF (a Zarr store needs no closing)."""
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
        """The window in PRED pixels, as recorded in metrics.json."""
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
