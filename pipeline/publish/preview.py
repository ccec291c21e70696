"""A small preview map: the input image beside the colour-coded labels, with a legend."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image, ImageDraw

from pipeline.labels import NODATA


def class_histogram(labels: Any, rows: int = 1024) -> np.ndarray:
    """Pixels per label value (256 bins, 255 = nodata), read ``rows`` rows at a time."""
    hist = np.zeros(256, dtype=np.int64)
    for r0 in range(0, labels.shape[0], rows):
        hist += np.bincount(np.asarray(labels[r0 : r0 + rows]).ravel(), minlength=256)
    return hist


def _decimated_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    f = max(1.0, max(height, width) / max_side)
    return max(1, round(height / f)), max(1, round(width / f))


def write_preview(
    labels_tif: Path,
    image_path: str | None,
    out_png: Path,
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    bands: Sequence[int] = (1, 2, 3),
    max_side: int = 768,
) -> Path:
    """Decimated reads (COG overviews), so the cost does not grow with the raster."""
    with rasterio.open(labels_tif) as ds:
        shape = _decimated_shape(ds.height, ds.width, max_side)
        lab = ds.read(1, out_shape=shape)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    panels = [palette[lab]]
    panels[0][lab == NODATA] = 255
    if image_path:
        with rasterio.open(image_path) as src:
            img = src.read(list(bands), out_shape=(3, *shape)).astype(np.float64)
            valid = np.all(src.read_masks(list(bands), out_shape=(3, *shape)) > 0, axis=0)
        for b in range(3):
            v = img[b][valid]
            lo, hi = (np.percentile(v, (2, 98)) if v.size else (0.0, 1.0))
            img[b] = (img[b] - lo) / max(hi - lo, 1e-9) * 255
        rgb = np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        rgb[~valid] = 255
        panels.insert(0, rgb)
    gap = np.full((shape[0], 8, 3), 255, dtype=np.uint8)
    body = np.concatenate([p for pair in zip(panels, [gap] * len(panels), strict=True)
                           for p in pair][:-1], axis=1)
    row_h = 18
    legend_h = row_h * len(class_names) + 8
    canvas = Image.new("RGB", (body.shape[1], body.shape[0] + legend_h), "white")
    canvas.paste(Image.fromarray(body), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(zip(class_names, colors, strict=True)):
        y = body.shape[0] + 4 + i * row_h
        draw.rectangle([6, y, 20, y + 12], fill=tuple(color), outline=(0, 0, 0))
        draw.text((28, y), f"{i}: {name}", fill=(0, 0, 0))
    tmp = out_png.with_name(f".{out_png.name}.tmp-{os.getpid()}.png")
    try:
        canvas.save(tmp)
        os.replace(tmp, out_png)
    finally:
        tmp.unlink(missing_ok=True)
    return out_png
