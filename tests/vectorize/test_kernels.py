"""The compiled kernels against the libraries they stand in for: region labelling against
scikit-image, ring tracing (polygons) against GDAL's polygonize (rasterio.features.shapes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import shapely
from shapely.geometry import shape
from skimage.measure import label

from pipeline.vectorize.blocks import _polygonize
from pipeline.vectorize.kernels import label_regions

NODATA = 255


def random_labels(rng: np.random.Generator) -> np.ndarray:
    """Small rasters of 1-4 classes with 0-40 % nodata: every corner case of 4-connectivity
    (diagonal contacts, one-pixel regions, holes in holes, regions on the border)."""
    height, width = rng.integers(1, 36, size=2)
    labels = rng.integers(0, rng.integers(1, 5), size=(height, width)).astype(np.uint8)
    labels[rng.random((height, width)) < rng.random() * 0.4] = NODATA
    return labels


def gdal_polygons(labels: np.ndarray) -> list[tuple[shapely.Polygon, int]]:
    mask = labels != NODATA
    if not mask.any():
        return []
    shapes = rasterio.features.shapes(labels, mask=mask, connectivity=4)
    return [(shape(geom), int(value)) for geom, value in shapes]


def our_polygons(labels: np.ndarray, seams: tuple[bool, ...]) -> list[tuple[shapely.Polygon, int]]:
    finals, pieces = _polygonize(labels, 0, 0, seams)
    geoms = np.concatenate([finals.geometries(), pieces.geometries()])
    classes = np.concatenate([finals.classes, pieces.classes])
    return list(zip(geoms.tolist(), classes.tolist(), strict=True))


def canonical(polygons: list[tuple[shapely.Polygon, int]]) -> list[tuple]:
    """Sort key per polygon: class, bounds, area, perimeter (distinct for distinct regions
    of one raster often enough; equality is then checked geometrically)."""
    return sorted(
        ((v, *np.round(g.bounds, 9), round(g.area, 9), round(g.length, 9)), g)
        for g, v in polygons
    )


def test_labels_are_scikit_images_regions_in_raster_order():
    rng = np.random.default_rng(3)
    for _ in range(200):
        labels = random_labels(rng)
        regions, value, size = label_regions(labels, NODATA)
        ours = regions[1:-1, 1:-1]
        theirs, count = label(labels, background=NODATA, connectivity=1, return_num=True)
        assert (regions[0] == -1).all() and (regions[-1] == -1).all()
        assert (regions[:, 0] == -1).all() and (regions[:, -1] == -1).all()
        assert value.size == size.size == count + 1
        assert np.array_equal(ours == 0, labels == NODATA)
        # the same partition: a one-to-one map between the two labellings
        pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
        assert pairs.shape[1] == np.unique(ours).size == np.unique(theirs).size
        assert np.array_equal(np.bincount(ours.ravel(), minlength=count + 1), size)
        assert np.array_equal(value[ours][labels != NODATA], labels[labels != NODATA])
        firsts = [np.flatnonzero(ours.ravel() == k)[0] for k in range(1, count + 1)]
        assert firsts == sorted(firsts)  # numbered by first pixel in raster order


def test_polygons_are_gdals_polygons_and_valid():
    rng = np.random.default_rng(1)
    for _ in range(250):
        labels = random_labels(rng)
        seams = tuple(bool(s) for s in rng.integers(0, 2, size=4))
        ours, theirs = our_polygons(labels, seams), gdal_polygons(labels)

        assert len(ours) == len(theirs)
        assert all(g.is_valid and g.geom_type == "Polygon" for g, _ in ours)
        for (key_a, a), (key_b, b) in zip(canonical(ours), canonical(theirs), strict=True):
            assert key_a[0] == key_b[0] and a.equals(b)


def test_seam_split_is_by_touching_the_seam_edges():
    labels = np.array([[0, 0, 1], [2, 1, 1], [2, 2, 2]], dtype=np.uint8)
    finals, pieces = _polygonize(labels, 10, 20, (True, False, False, False))  # top is a seam

    assert sorted(pieces.classes.tolist()) == [0, 1]
    assert finals.classes.tolist() == [2]
    (piece,) = [g for g, v in zip(pieces.geometries(), pieces.classes, strict=True) if v == 0]
    assert piece.equals(shapely.box(20, 10, 22, 11))  # raster pixel coordinates


@pytest.mark.parametrize("touching", ["diagonal ring", "checkerboard"])
def test_a_region_touching_itself_at_a_corner_gives_a_valid_polygon(touching):
    if touching == "diagonal ring":  # a ring of class 3 around class 5, closed at a corner
        labels = np.full((4, 4), 3, dtype=np.uint8)
        labels[1:3, 1:3] = 5
        labels[0, 0] = 7  # (0, 1) and (1, 0) now meet only at the corner (1, 1)
    else:
        labels = (np.indices((6, 6)).sum(axis=0) % 2).astype(np.uint8)
    ours, theirs = our_polygons(labels, (False,) * 4), gdal_polygons(labels)

    assert all(g.is_valid for g, _ in ours)
    assert len(ours) == len(theirs)
    if touching == "diagonal ring":
        (ring,) = [g for g, v in ours if v == 3]
        assert len(ring.interiors) == 1 and ring.area == 11
    for (_, a), (_, b) in zip(canonical(ours), canonical(theirs), strict=True):
        assert a.equals(b)


def test_warm_up_loads_every_kernel_a_run_calls():
    """The CLI's warm-up (while a temporary server starts) leaves no kernel for the first real
    vectorize to load: checked in a fresh interpreter, where nothing had called them."""
    probe = (
        "from pipeline.vectorize import kernels\n"
        "from pipeline.vectorize.blocks import warm_up\n"
        "public = [f for n, f in vars(kernels).items() if hasattr(f, 'signatures')"
        " and not n.startswith('_')]\n"
        "before = sum(len(f.signatures) for f in public)\n"
        "warm_up()\n"
        "print(len(public), before, min(len(f.signatures) for f in public))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    n, before, least = map(int, done.stdout.split())
    assert n >= 4 and before == 0 and least >= 1, done.stderr
