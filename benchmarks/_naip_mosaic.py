"""A large real-imagery raster for the benchmarks: the NAIP tile in ../shared/data mirrored
into an N x N mosaic (bands 1-3, uint8, 512² tiles, DEFLATE, nodata 0 with a few empty 512²
blocks), built at run time one window at a time and never committed (the tile is public domain,
but the mosaic is hundreds of MB)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

NAIP = (Path(__file__).resolve().parents[2] / "shared" / "data" / "naip_north_dakota"
        / "m_4709963_se_14_1_20200831.tif")


def naip_available() -> bool:
    """Whether the shared NAIP tile is here (a user's clone will not have it)."""
    return NAIP.is_file()


def _mirror_index(start: int, count: int, period: int) -> np.ndarray:
    """Indices into a length-``period`` axis for ``count`` positions from ``start``, reflected
    at both ends (0..p-1, p-1..0, 0..) so the mosaic has no hard seams."""
    i = np.arange(start, start + count) % (2 * period)
    return np.where(i < period, i, 2 * period - 1 - i)


def _is_empty_block(row: int, col: int) -> bool:
    """Deterministic sparse nodata blocks (about 1 in 23 of the 512² blocks)."""
    return (row * 7 + col * 3) % 23 == 5


def write_naip_mosaic(path: Path, size: int, window: int = 2048) -> Path:
    """Write (once) a ``size`` x ``size`` mirrored mosaic of the NAIP tile to ``path``."""
    import rasterio
    from affine import Affine

    if path.exists():
        return path
    if not naip_available():
        raise SystemExit(f"shared data not found: {NAIP}")
    with rasterio.open(NAIP) as src:
        tile = src.read([1, 2, 3])
        crs, t = src.crs, src.transform
    _, th, tw = tile.shape
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": crs, "transform": Affine(t.a, 0, t.c, 0, t.e, t.f), "nodata": 0,
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, window):
            for c0 in range(0, size, window):
                h, w = min(window, size - r0), min(window, size - c0)
                rows, cols = _mirror_index(r0, h, th), _mirror_index(c0, w, tw)
                block = tile[:, rows[:, None], cols[None, :]]
                block = np.where(block == 0, 1, block)  # 0 is reserved for nodata
                for br in range(r0 // 512, (r0 + h + 511) // 512):
                    for bc in range(c0 // 512, (c0 + w + 511) // 512):
                        if _is_empty_block(br, bc):
                            block[:, br * 512 - r0:(br + 1) * 512 - r0,
                                  bc * 512 - c0:(bc + 1) * 512 - c0] = 0
                dst.write(block, window=((r0, r0 + h), (c0, c0 + w)))
    os.replace(tmp, path)
    return path
