"""Writing the demo scene as GeoTIFFs: the tiled, masked RGB image and its palette labels raster,
both moved into place atomically."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

from pipeline.demo.classes import DEMO_CLASSES, DEMO_COLORS, NODATA_LABEL
from pipeline.demo.grid import DEMO_CRS, DEMO_ORIGIN, DEMO_PIXEL_SIZE
from pipeline.demo.scene import generate_demo_arrays


def labels_path_for(image_path: Path) -> Path:
    """<stem>_labels.tif next to the image."""
    image_path = Path(image_path)
    return image_path.with_name(f"{image_path.stem}_labels.tif")


def _block_size(n: int) -> int:
    """512 px tiles, or the largest multiple of 16 that fits a smaller scene."""
    return 512 if n >= 512 else max(16, n // 16 * 16)


def _base_profile(n: int, count: int) -> dict:
    bs = _block_size(n)
    return {
        "driver": "GTiff",
        "width": n,
        "height": n,
        "count": count,
        "dtype": "uint8",
        "crs": DEMO_CRS,
        "transform": Affine(
            DEMO_PIXEL_SIZE, 0.0, DEMO_ORIGIN[0], 0.0, -DEMO_PIXEL_SIZE, DEMO_ORIGIN[1]
        ),
        "tiled": True,
        "blockxsize": bs,
        "blockysize": bs,
        "compress": "deflate",
    }


def _write_image(path: Path, rgb: np.ndarray, valid: np.ndarray, size: int, seed: int) -> None:
    profile = _base_profile(rgb.shape[-1], 3)
    profile.update(photometric="RGB", interleave="pixel", predictor=2)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rgb)
            dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
            for i, name in enumerate(("red", "green", "blue"), start=1):
                dst.set_band_description(i, name)
            dst.update_tags(DEMO_SCENE="synthetic suburb", DEMO_SIZE=str(size), DEMO_SEED=str(seed))
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))


def _write_labels(path: Path, labels: np.ndarray) -> None:
    profile = _base_profile(labels.shape[-1], 1)
    profile.update(nodata=NODATA_LABEL)
    with rasterio.open(path, "w", **profile) as dst:
        # The colour table goes in before any pixel data so that the TIFF is written with
        # photometric=palette.
        colormap = {i: (*c, 255) for i, c in enumerate(DEMO_COLORS)}
        colormap[NODATA_LABEL] = (0, 0, 0, 0)
        dst.write_colormap(1, colormap)
        dst.set_band_description(1, "labels")
        dst.update_tags(1, **{f"class_{i}": name for i, name in enumerate(DEMO_CLASSES)})
        dst.update_tags(classes=",".join(DEMO_CLASSES))
        dst.write(labels, 1)


def _temp_path(final: Path) -> Path:
    """A unique hidden name next to ``final`` (created by GDAL with the usual permissions)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def write_demo_scene(path: Path, size: int = 2560, seed: int = 0) -> tuple[Path, Path]:
    """Write the image GeoTIFF and its labels GeoTIFF; return (image_path, labels_path).

    Both files are written under temporary names in the target directory and then moved into
    place with ``os.replace`` (labels first), so the final paths never hold a partial file.
    """
    image_path = Path(path)
    labels_path = labels_path_for(image_path)
    rgb, labels, valid = generate_demo_arrays(size, seed)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        tmp_image = _temp_path(image_path)
        temps.append(tmp_image)
        tmp_labels = _temp_path(labels_path)
        temps.append(tmp_labels)
        _write_image(tmp_image, rgb, valid, size, seed)
        _write_labels(tmp_labels, labels)
        os.replace(tmp_labels, labels_path)
        os.replace(tmp_image, image_path)
    finally:
        for tmp in temps:
            for leftover in (
                tmp,
                tmp.with_name(tmp.name + ".msk"),
                tmp.with_name(tmp.name + ".aux.xml"),
            ):
                leftover.unlink(missing_ok=True)
    return image_path, labels_path


def write_truth_points(labels_path: Path, out: Path, per_class: int = 20, seed: int = 0,
                       field: str = "class") -> Path:
    """``per_class`` random points of each true class of a demo scene, as a GeoPackage with
    the class name in ``field`` and its colour in ``color``: the clicks of a simulated analyst
    (`stego demo`)."""
    from pipeline.io.sample_points import stratified_points, write_points

    rows, cols, values = stratified_points(labels_path, per_class, seed, ignore=[NODATA_LABEL])
    with rasterio.open(labels_path) as ds:
        transform, crs = tuple(ds.transform)[:6], ds.crs.to_wkt()
    names = np.array([DEMO_CLASSES[v] for v in values.tolist()], dtype=object)
    colors = np.array(["#{:02x}{:02x}{:02x}".format(*DEMO_COLORS[v]) for v in values.tolist()],
                      dtype=object)
    return write_points(out, rows, cols, transform, crs, {field: names, "color": colors})
