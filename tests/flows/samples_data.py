"""A small georeferenced scene with planted classes, and the analyst's samples on it: points,
polygons and a label raster, written the way GIS tools write them (helpers for
tests/flows/test_few_labels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from affine import Affine

UTM = "EPSG:32633"
SIZE = 256
RES = 0.5
X0, Y0 = 500000.0, 5800000.0
TRANSFORM = Affine(RES, 0, X0, 0, -RES, Y0)
CLASSES = ["building", "grass", "water"]  # text classes sort alphabetically: ids 0, 1, 2
COLOURS = {"building": (200, 185, 170), "grass": (60, 140, 50), "water": (30, 60, 140)}


def planted_truth(size: int = SIZE) -> np.ndarray:
    """Class ids (size, size): water on the left, grass top right, buildings bottom right,
    with edges that cut through tiles and blocks."""
    rows, cols = np.mgrid[:size, :size]
    truth = np.full((size, size), CLASSES.index("grass"), dtype=np.uint8)
    truth[cols < size * 3 // 8] = CLASSES.index("water")
    truth[(cols >= size * 3 // 8) & (rows >= size * 9 // 16)] = CLASSES.index("building")
    return truth


def write_scene(path: Path, truth: np.ndarray, seed: int = 0,
                transform: Affine = TRANSFORM) -> Path:
    """An RGB uint8 GeoTIFF whose pixels are each class's colour plus noise."""
    rng = np.random.default_rng(seed)
    lut = np.array([COLOURS[n] for n in CLASSES], dtype=np.float32)  # (K, 3)
    data = lut[truth].transpose(2, 0, 1) + rng.normal(0, 12, (3, *truth.shape))
    data = np.clip(np.rint(data), 1, 255).astype(np.uint8)
    h, w = truth.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
                       crs=UTM, transform=transform) as ds:
        ds.write(data)
    return path


def interior_pixels(truth: np.ndarray, cls: int, n: int, seed: int,
                    margin: int = 6) -> list[tuple[int, int]]:
    """``n`` seeded (row, col) pixels of class ``cls`` at least ``margin`` px from any other
    class and from the raster's edge."""
    from scipy.ndimage import binary_erosion

    inside = binary_erosion(truth == cls, iterations=margin, border_value=0)
    rows, cols = np.nonzero(inside)
    pick = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    return [(int(rows[i]), int(cols[i])) for i in pick]


def centre(transform: Affine, row: int, col: int) -> tuple[float, float]:
    """The map coordinates of a pixel's centre."""
    return transform @ (col + 0.5, row + 0.5)


def pixel_box(transform: Affine, r0: int, c0: int, r1: int, c1: int) -> shapely.Polygon:
    """The polygon covering rows r0..r1-1 and cols c0..c1-1 exactly."""
    (xa, ya), (xb, yb) = transform @ (c0, r0), transform @ (c1, r1)
    return shapely.box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))


def write_layer(path: Path, geoms: list, crs: str | None = UTM, **fields) -> Path:
    """A vector layer of ``geoms`` with attribute columns ``fields`` (pyogrio, any driver)."""
    kinds = {g.geom_type for g in geoms}
    with_crs = {"crs": crs} if crs else {}
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.array(geoms, dtype=object)),
                      field_data=[np.asarray(v) for v in fields.values()], fields=list(fields),
                      geometry_type=kinds.pop() if len(kinds) == 1 else "Unknown",
                      **with_crs)
    return path


def sample_points(truth: np.ndarray, per_class: int = 8, seed: int = 0,
                  transform: Affine = TRANSFORM) -> tuple[list, np.ndarray]:
    """Points inside each planted class and their class names."""
    pts, names = [], []
    for k, name in enumerate(CLASSES):
        for r, c in interior_pixels(truth, k, per_class, seed + k):
            pts.append(shapely.Point(centre(transform, r, c)))
            names.append(name)
    return pts, np.array(names, dtype=object)


def points_layer(path: Path, truth: np.ndarray, per_class: int = 8, seed: int = 0,
                 transform: Affine = TRANSFORM, **kw) -> Path:
    """A point layer with a text class field ``cls``."""
    pts, names = sample_points(truth, per_class, seed, transform)
    return write_layer(path, pts, cls=names, **kw)


def squares(truth: np.ndarray, cls: int, n: int, seed: int, half: int = 3,
            transform: Affine = TRANSFORM) -> list[shapely.Polygon]:
    """``n`` squares of (2·half)² pixels inside class ``cls``."""
    return [pixel_box(transform, r - half, c - half, r + half, c + half)
            for r, c in interior_pixels(truth, cls, n, seed, margin=half + 4)]


def polygons_layer(path: Path, truth: np.ndarray, per_class: int = 5, seed: int = 0) -> Path:
    """Small square polygons inside each planted class, text class field ``cls``."""
    polys, names = [], []
    for k, name in enumerate(CLASSES):
        got = squares(truth, k, per_class, seed + 10 * k)
        polys += got
        names += [name] * len(got)
    return write_layer(path, polys, cls=np.array(names, dtype=object))


def label_raster(path: Path, truth: np.ndarray, per_class: int = 5, seed: int = 0) -> Path:
    """A uint8 label raster on the scene's grid: class id + 1 inside small squares, nodata 0
    (unlabelled) elsewhere."""
    lab = np.zeros_like(truth)
    for k in range(len(CLASSES)):
        for r, c in interior_pixels(truth, k, per_class, seed + 20 * k, margin=7):
            lab[r - 3:r + 3, c - 3:c + 3] = k + 1
    with rasterio.open(path, "w", driver="GTiff", width=lab.shape[1], height=lab.shape[0],
                       count=1, dtype="uint8", crs=UTM, transform=TRANSFORM, nodata=0) as ds:
        ds.write(lab[None])
    return path


def class_table(path: Path) -> Path:
    """A CSV class table naming the label raster's values 1..3."""
    rows = [f"{k + 1},{n},#{''.join(f'{v:02x}' for v in COLOURS[n])}"
            for k, n in enumerate(CLASSES)]
    path.write_text("value,name,color\n" + "\n".join(rows) + "\n")
    return path
