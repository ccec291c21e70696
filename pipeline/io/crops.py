"""Training crops read from the user's rasters: windows drawn by area (mostly-nodata ones
skipped, seeded) and their scaled pixels with validity masks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo, Scaling, read_window


@dataclass
class Crop:
    """A training crop: image in [0, 1] and its validity mask."""

    source: str
    row_off: int
    col_off: int
    image: np.ndarray  # float32 (3, s, s)
    valid: np.ndarray  # bool (s, s)


@dataclass(frozen=True)
class CropWindow:
    """Where a training crop comes from (raster index and native-resolution window)."""

    raster: int
    row_off: int
    col_off: int
    size: int


def sample_crop_windows(
    rasters: list[tuple[RasterInfo, Scaling]],
    n: int,
    size: int,
    seed: int,
    max_nodata_fraction: float = 0.5,
) -> list[CropWindow]:
    """Draw ``n`` crop windows across all rasters (by area), skipping mostly-nodata ones.

    Only masks are read here, so this stays cheap for many crops; seeded.
    """
    rng = np.random.default_rng(seed)
    areas = np.array([info.width * info.height for info, _ in rasters], dtype=np.float64)
    weights = areas / areas.sum()
    out: list[CropWindow] = []
    checked: dict[tuple[int, int, int], bool] = {}  # a small raster draws the same window often
    attempts = 0
    while len(out) < n and attempts < 20 * n + 20:
        attempts += 1
        i = int(rng.choice(len(rasters), p=weights))
        info, _ = rasters[i]
        r = int(rng.integers(0, max(1, info.height - size + 1)))
        c = int(rng.integers(0, max(1, info.width - size + 1)))
        if (i, r, c) not in checked:
            valid = _valid_fraction(info, r, c, size)
            checked[(i, r, c)] = 1.0 - valid <= max_nodata_fraction
        if checked[(i, r, c)]:
            out.append(CropWindow(i, r, c, size))
    if not out:
        paths = ", ".join(info.path for info, _ in rasters)
        raise InputError(paths, "no crop with enough valid pixels to fit on (all nodata?)")
    return out


def _valid_fraction(info: RasterInfo, r: int, c: int, size: int) -> float:
    import rasterio
    from rasterio.windows import Window

    h, w = min(size, info.height - r), min(size, info.width - c)
    with rasterio.open(info.path) as ds:
        masks = ds.read_masks(list(info.bands), window=Window(c, r, w, h))
    return float(np.all(masks > 0, axis=0).mean())


def read_crops(rasters: list[tuple[RasterInfo, Scaling]], windows: Sequence[CropWindow]
               ) -> Iterator[Crop]:
    """:func:`read_crop` of each window in order, reading a window drawn again (a raster
    little larger than the crop) only once; every crop gets its own arrays. Only windows still
    to come again are held, so a pool of distinct windows is never held twice."""
    left = Counter(windows)
    held: dict[CropWindow, Crop] = {}
    for w in windows:
        left[w] -= 1
        first = held.pop(w, None) if not left[w] else held.get(w)
        if first is None:
            crop = read_crop(rasters, w)
            if left[w]:
                held[w] = crop
            yield crop
        else:
            yield Crop(first.source, first.row_off, first.col_off, first.image.copy(),
                       first.valid.copy())


def read_crop(rasters: list[tuple[RasterInfo, Scaling]], win: CropWindow) -> Crop:
    """Read one crop window (reflect-padded where it passes the raster edge)."""
    info, scaling = rasters[win.raster]
    img, valid = read_window(info, scaling, win.row_off, win.col_off, win.size, win.size)
    return Crop(info.path, win.row_off, win.col_off, img, valid)


def sample_crops(
    rasters: list[tuple[RasterInfo, Scaling]],
    n: int,
    size: int,
    seed: int,
    max_nodata_fraction: float = 0.5,
) -> list[Crop]:
    """Draw and read ``n`` crops across all rasters, skipping mostly-nodata ones; seeded."""
    windows = sample_crop_windows(rasters, n, size, seed, max_nodata_fraction)
    return list(read_crops(rasters, windows))
