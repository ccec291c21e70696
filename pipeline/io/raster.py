"""Opening, validating and reading input rasters window by window (GDAL via rasterio)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from pipeline.errors import InputError

_SUPPORTED_KINDS = {"u", "i", "f"}


@dataclass(frozen=True)
class RasterInfo:
    """What the pipeline needs to know about an input raster (small and picklable)."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    bands: tuple[int, ...]
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None
    nodata: float | None = None

    @property
    def affine(self) -> Affine:
        """The geotransform as an Affine."""
        return Affine(*self.transform)


@dataclass(frozen=True)
class Scaling:
    """Linear map of raw band values to [0, 1], computed once per scene."""

    kind: str  # "uint8" or "percentile"
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] | None = None
    sample_shape: tuple[int, int] | None = field(default=None)

    def to_dict(self) -> dict:
        """JSON-friendly form for run.json."""
        return {
            "kind": self.kind,
            "low": list(self.low),
            "high": list(self.high),
            "percentiles": list(self.percentiles) if self.percentiles else None,
            "sample_shape": list(self.sample_shape) if self.sample_shape else None,
        }


def _is_remote(path: str) -> bool:
    return path.startswith("/vsi") or "://" in path


def open_raster_info(path: str | os.PathLike, bands: list[int] | None = None) -> RasterInfo:
    """Open ``path`` with GDAL and check it can feed a 3-channel model; one-line errors."""
    p = os.fspath(path)
    if not _is_remote(p):
        if not os.path.exists(p):
            raise InputError(p, "file not found")
        if os.path.isdir(p) and not p.endswith((".zarr", ".gdb")):
            raise InputError(p, "is a directory, not a raster file")
        if os.path.isfile(p) and os.path.getsize(p) == 0:
            raise InputError(p, "is an empty (0-byte) file")
    try:
        with rasterio.open(p) as ds:
            width, height, count = ds.width, ds.height, ds.count
            dtypes = set(ds.dtypes)
            transform = tuple(ds.transform)[:6]
            crs_wkt = ds.crs.to_wkt() if ds.crs else None
            nodata = ds.nodata
    except RasterioIOError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "cannot be opened"
        raise InputError(p, f"not a raster GDAL can read ({msg})") from None
    if width == 0 or height == 0 or count == 0:
        raise InputError(p, f"raster is empty ({width}x{height}, {count} bands)")
    if bands is None:
        if count < 3:
            raise InputError(
                p,
                f"has {count} band(s) but the model needs 3; choose them with --bands "
                f"(e.g. --bands {','.join(['1'] * 3)})",
            )
        chosen = (1, 2, 3)
    else:
        chosen = tuple(int(b) for b in bands)
        if len(chosen) != 3:
            raise InputError(p, f"--bands must name exactly 3 bands (got {len(chosen)})")
        bad = [b for b in chosen if b < 1 or b > count]
        if bad:
            raise InputError(p, f"band {bad[0]} out of range (the raster has {count} band(s))")
    for dt in dtypes:
        if np.dtype(dt).kind not in _SUPPORTED_KINDS:
            raise InputError(p, f"unsupported data type {dt} (use integer or float bands)")
    _check_readable(p, width, height)
    dtype = str(np.result_type(*[np.dtype(d) for d in dtypes]))
    return RasterInfo(
        path=p,
        width=width,
        height=height,
        count=count,
        dtype=dtype,
        bands=chosen,
        transform=transform,  # type: ignore[arg-type]
        crs_wkt=crs_wkt,
        nodata=nodata,
    )


def _check_readable(path: str, width: int, height: int) -> None:
    """Read the first and last pixel: a truncated file fails here, not mid-run."""
    try:
        with rasterio.open(path) as ds:
            ds.read(1, window=Window(0, 0, 1, 1))
            ds.read(1, window=Window(width - 1, height - 1, 1, 1))
    except RasterioIOError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "read error"
        raise InputError(path, f"cannot read pixels (truncated or corrupt file? {first})") from None


def band_validity(data: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per band (bands, h, w): GDAL's mask says valid and the value is finite (no NaN/inf).

    The one validity rule of the pipeline (fit, segment, evaluate): a pixel is valid only where
    every chosen band is valid; a chosen band with no valid pixel at all is an input error.
    """
    valid = masks > 0
    if data.dtype.kind == "f":
        valid &= np.isfinite(data)
    return valid


def _valid_from(ds: rasterio.io.DatasetReader, data: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.all(band_validity(data, masks), axis=0)


def _no_valid_band_error(info: RasterInfo, band_any: np.ndarray) -> InputError:
    empty = [b for b, ok in zip(info.bands, band_any, strict=True) if not ok]
    if len(empty) == len(set(info.bands)) or not empty:
        return InputError(info.path, "every pixel is nodata; nothing to segment")
    kinds = "nodata, NaN or inf"
    return InputError(info.path, f"band {empty[0]} has no valid pixel (every value is {kinds}); "
                      "leave it out with --bands")


def compute_scaling(
    info: RasterInfo, percentiles: tuple[float, float] = (2.0, 98.0), max_side: int = 1024
) -> Scaling:
    """uint8 is used as is; other types get per-band robust percentiles from a decimated read.

    A chosen band without any valid pixel raises an InputError naming it; a constant band
    scales to 0 (its range is widened to 1).
    """
    factor = max(1, int(np.ceil(max(info.width, info.height) / max_side)))
    shape = (max(1, info.height // factor), max(1, info.width // factor))
    with rasterio.open(info.path) as ds:
        data = ds.read(list(info.bands), out_shape=(3, *shape))
        valid = _valid_from(ds, data, ds.read_masks(list(info.bands), out_shape=(3, *shape)))
    if not valid.any():  # none in the decimated sample: scan everything (sparse or none)
        values, band_any = _full_valid_sample(info)
        if values.shape[-1] == 0:
            raise _no_valid_band_error(info, band_any)
        data, valid = values, np.ones(values.shape[1:], dtype=bool)
    if np.dtype(info.dtype) == np.uint8:
        return Scaling("uint8", (0.0,) * 3, (255.0,) * 3)
    lows, highs = [], []
    for band in data.astype(np.float64):
        lo, hi = np.percentile(band[valid], percentiles)
        if not hi - lo < np.inf:  # finite values whose range overflows float64
            raise InputError(info.path, f"band values span {lo:g}..{hi:g}, too wide to scale")
        if hi <= lo:
            hi = lo + 1.0
        lows.append(float(lo))
        highs.append(float(hi))
    return Scaling("percentile", tuple(lows), tuple(highs), tuple(percentiles), shape)


def _full_valid_sample(info: RasterInfo, rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Every valid pixel (sparse by construction here), read block by block: (3, 1, n), and
    per chosen band whether it has any valid pixel at all."""
    parts = []
    band_any = np.zeros(3, dtype=bool)
    with rasterio.open(info.path) as ds:
        for r0 in range(0, info.height, rows):
            win = Window(0, r0, info.width, min(rows, info.height - r0))
            data = ds.read(list(info.bands), window=win)
            per_band = band_validity(data, ds.read_masks(list(info.bands), window=win))
            band_any |= per_band.reshape(3, -1).any(axis=1)
            parts.append(data[:, per_band.all(axis=0)].astype(np.float64))
    values = np.concatenate(parts, axis=1)[:, None, :]
    return values, band_any


def reflect_index(start: int, stop: int, size: int) -> np.ndarray:
    """Source indices of positions ``[start, stop)`` on an axis of ``size`` pixels, mirrored
    about the raster's own edges (numpy "reflect", repeated as often as needed).

    Anchored to the raster, not to the window: any window is a slice of the same padded image,
    so a tile reads identical pixels whichever block or band asked for it.
    """
    idx = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * size - 2
    m = np.mod(idx, period)
    return np.where(m < size, m, period - m)


def read_window(
    info: RasterInfo, scaling: Scaling, row_off: int, col_off: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window that may extend past the raster, reflect-padding outside it.

    Returns ``(image, valid)``: image float32 (3, height, width) scaled to [0, 1] with invalid
    pixels set to 0.5, and valid bool (height, width), False outside the raster and on nodata.
    Padding mirrors the raster about its edges (:func:`reflect_index`), whatever the window.
    """
    rows = reflect_index(row_off, row_off + height, info.height)
    cols = reflect_index(col_off, col_off + width, info.width)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    win = Window(c0, r0, c1 - c0, r1 - r0)
    try:
        with rasterio.open(info.path) as ds:
            raw = ds.read(list(info.bands), window=win)
            masks = ds.read_masks(list(info.bands), window=win)
            valid = _valid_from(ds, raw, masks)
    except RasterioIOError as exc:
        raise InputError(info.path, f"read failed ({str(exc).splitlines()[0]})") from None
    work = np.float64 if raw.dtype.itemsize > 4 else np.float32  # float64 beyond float32
    low = np.asarray(scaling.low, dtype=work)[:, None, None]
    high = np.asarray(scaling.high, dtype=work)[:, None, None]
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf pixels are masked below
        img = ((raw.astype(work) - low) / (high - low)).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    img[:, ~valid] = 0.5
    inside_r = np.arange(row_off, row_off + height)
    inside_c = np.arange(col_off, col_off + width)
    if rows.size != r1 - r0 or (rows != inside_r).any() or (cols != inside_c).any():
        img = img[:, rows - r0][:, :, cols - c0]
        valid = valid[rows - r0][:, cols - c0]
        valid &= ((inside_r >= 0) & (inside_r < info.height))[:, None]
        valid &= ((inside_c >= 0) & (inside_c < info.width))[None, :]
    return np.ascontiguousarray(img), valid


def metres_per_unit(info: RasterInfo) -> float | None:
    """Metres per CRS unit (per degree at the raster's centre latitude); None without CRS."""
    if info.crs_wkt is None:
        return None
    from pyproj import CRS

    crs = CRS.from_wkt(info.crs_wkt)
    if crs.is_geographic:
        lat = math.radians(info.affine.f + info.affine.e * info.height / 2)
        return 111_320.0 * max(math.cos(lat), 1e-6)
    return crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0


def ground_sampling_distance(info: RasterInfo) -> float | None:
    """Metres per pixel (mean of the two axes, at the centre for geographic CRSs); None
    without a CRS."""
    unit = metres_per_unit(info)
    if unit is None:
        return None
    a = info.affine
    return unit * (math.hypot(a.a, a.d) + math.hypot(a.b, a.e)) / 2
