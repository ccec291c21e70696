"""Cloud-Optimized GeoTIFF of the labels, copied chunk-row by chunk-row from the Zarr store, with
GDAL's ``.aux.xml`` sidecar (category names, raster attribute table) beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from pipeline.io.pam import aux_path, write_pam_sidecar
from pipeline.labels import NODATA


def overview_factors(height: int, width: int, tile: int) -> list[int]:
    """Powers of two until the smallest overview fits in one tile."""
    factors, f = [], 2
    while max(height, width) / (f // 2) > tile:
        factors.append(f)
        f *= 2
    return factors


def write_cog(
    labels: Any,
    out_path: Path,
    *,
    transform: Affine,
    crs_wkt: str | None,
    class_names: list[str],
    colors: list[tuple[int, int, int]],
    tile: int = 512,
    compress: str = "DEFLATE",
    resampling: str = "nearest",
    sidecar: bool = True,
) -> Path:
    """Write ``labels`` (2-D array-like, uint8) as a paletted COG; atomic via temp + rename.

    With ``sidecar`` (the default) ``<out>.aux.xml`` follows with the class names and a raster
    attribute table holding each class's pixel count; a stale sidecar is removed otherwise.
    """
    out_path = Path(out_path)
    height, width = labels.shape
    stem = out_path.with_name(f".{out_path.name}.{os.getpid()}")
    tmp = stem.with_suffix(".build.tif")
    tmp_cog = stem.with_suffix(".cog.tif")
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
        "nodata": NODATA, "transform": transform, "crs": crs_wkt, "tiled": True,
        "blockxsize": tile, "blockysize": tile, "compress": compress, "BIGTIFF": "IF_SAFER",
    }
    palette = {i: tuple(colors[i]) + (255,) for i in range(len(colors))}
    palette[NODATA] = (0, 0, 0, 0)
    counts = np.zeros(256, dtype=np.int64)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, height, tile):
                r1 = min(height, r0 + tile)
                rows = np.asarray(labels[r0:r1, :], dtype=np.uint8)
                counts += np.bincount(rows.ravel(), minlength=256)
                dst.write(rows, 1, window=Window(0, r0, width, r1 - r0))
            dst.write_colormap(1, palette)
            dst.set_band_description(1, "class label")
            dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(class_names)})
            dst.update_tags(CLASS_NAMES=",".join(class_names))
            factors = overview_factors(height, width, tile)
            if factors:
                dst.build_overviews(factors, getattr(Resampling, resampling))
                dst.update_tags(ns="rio_overview", resampling=resampling)
        rasterio.shutil.copy(
            tmp, tmp_cog, driver="COG", COMPRESS=compress, BLOCKSIZE=tile,
            OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE", BIGTIFF="IF_SAFER",
        )
        os.replace(tmp_cog, out_path)
    finally:
        for p in (tmp, tmp_cog):
            p.unlink(missing_ok=True)
            Path(str(p) + ".ovr").unlink(missing_ok=True)
            aux_path(p).unlink(missing_ok=True)
    if sidecar:
        write_pam_sidecar(out_path, class_names, colors, counts.tolist())
    else:
        aux_path(out_path).unlink(missing_ok=True)
    return out_path
