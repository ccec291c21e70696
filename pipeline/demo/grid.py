"""The demo scene's pixel grid: its georeferencing and minimum size, pixel rectangles and their
overlap and clipping tests, and the scale of object sizes for small scenes."""

from __future__ import annotations

import numpy as np

DEMO_CRS = "EPSG:25833"
DEMO_PIXEL_SIZE = 0.05
DEMO_ORIGIN: tuple[float, float] = (368000.0, 5808000.0)  # upper-left x, y (Potsdam)
MIN_SIZE = 64

Rect = tuple[int, int, int, int]  # y0, x0, y1, x1 (pixels, end-exclusive, may leave the scene)


# Object sizes are given in metres; for scenes smaller than 1024 px they are shrunk (down to 0.3x
# at 256 px and below) so that small test scenes still hold a road, buildings, trees and cars.
# Textures stay at the native 5 cm pixel scale.
def object_scale(size: int) -> float:
    """Factor applied to object sizes in metres (1 for size >= 1024 px)."""
    return float(np.clip(size / 1024.0, 0.3, 1.0))


def overlaps(a: Rect, b: Rect, pad: int = 0) -> bool:
    """Whether rectangles a and b, each grown by ``pad`` px, intersect."""
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def clip(r: Rect, n: int) -> tuple[slice, slice] | None:
    """The part of r inside the n x n scene as (rows, cols) slices, or None."""
    y0, x0, y1, x1 = max(r[0], 0), max(r[1], 0), min(r[2], n), min(r[3], n)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def visible_area(r: Rect, n: int) -> int:
    """Number of pixels of r inside the n x n scene."""
    return max(0, min(r[2], n) - max(r[0], 0)) * max(0, min(r[3], n) - max(r[1], 0))
