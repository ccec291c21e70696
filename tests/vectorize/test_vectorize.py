"""Behaviour of pipeline.vectorize: block-wise polygonizing with exact seam merging and sieving."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pyproj
import pytest
import rasterio.features
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine
from scipy import ndimage

from pipeline.vectorize import VectorizeStats, sieve, vectorize_labels
from pipeline.vectorize import writer as vectorize_writer

NODATA = 255
FOUR = ndimage.generate_binary_structure(2, 1)
UTM = CRS.from_epsg(32633)
NAMES = ["water", "forest", "field", "urban", "bare"]
NORTH_UP = Affine(2.5, 0.0, 350_000.0, 0.0, -2.5, 5_800_000.0)


# ---------------------------------------------------------------------------------------------
# helpers


def blobby(height: int, width: int, classes: int = 5, seed: int = 0, sigma: float = 6.0):
    """Smooth noise quantized into `classes` classes: blobs of all sizes and shapes."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((height, width)), sigma)
    edges = np.quantile(field, np.linspace(0, 1, classes + 1)[1:-1])
    return np.digitize(field, edges).astype(np.uint8)


@pytest.fixture(scope="module")
def raster() -> np.ndarray:
    """700x900 blobby 5-class raster with a nodata patch."""
    labels = blobby(700, 900)
    labels[200:330, 410:600] = NODATA
    return labels


def count_regions(labels: np.ndarray) -> int:
    """Number of 4-connected regions of equal class, nodata excluded."""
    values = np.unique(labels[labels != NODATA])
    return sum(ndimage.label(labels == v, structure=FOUR)[1] for v in values)


def region_sizes(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(size, mask) of every 4-connected non-nodata region."""
    out = []
    for v in np.unique(labels[labels != NODATA]):
        lab, n = ndimage.label(labels == v, structure=FOUR)
        sizes = np.bincount(lab.ravel())
        out.extend((int(sizes[i]), lab == i) for i in range(1, n + 1))
    return out


def read_layer(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    meta, _, wkb, values = pyogrio.raw.read(path)
    fields = dict(zip(meta["fields"], values, strict=True))
    return shapely.from_wkb(wkb), fields, meta


def rasterize_back(path: Path, shape: tuple[int, int], transform: Affine) -> np.ndarray:
    geoms, fields, _ = read_layer(path)
    if len(geoms) == 0:
        return np.full(shape, NODATA, dtype=np.uint8)
    pairs = zip(geoms, fields["class_id"].tolist(), strict=True)
    return rasterio.features.rasterize(
        pairs, out_shape=shape, transform=transform, fill=NODATA, dtype="uint8"
    )


def run(labels, tmp_path: Path, name: str = "out.gpkg", **kw) -> tuple[Path, VectorizeStats]:
    kw.setdefault("transform", NORTH_UP)
    kw.setdefault("crs", UTM)
    kw.setdefault("class_names", NAMES)
    out = tmp_path / name
    return out, vectorize_labels(labels, out_path=out, **kw)


def reference_sieve(labels: np.ndarray, min_pixels: int, cut_edges=(False,) * 4) -> np.ndarray:
    """Slow, literal reading of the sieve rules, region by region."""
    regions = []  # [value, mask]
    for v in np.unique(labels):
        lab, n = ndimage.label(labels == v, structure=FOUR)
        regions.extend([int(v), lab == i] for i in range(1, n + 1))
    owner = np.zeros(labels.shape, dtype=int)
    for k, (_, mask) in enumerate(regions):
        owner[mask] = k
    edges = [owner[0], owner[-1], owner[:, 0], owner[:, -1]]
    on_cut = {k for cut, edge in zip(cut_edges, edges, strict=True) if cut for k in edge.tolist()}
    value = [v for v, _ in regions]
    valid = [k for k in range(len(regions)) if value[k] != NODATA]
    donors = {k for k in valid if regions[k][1].sum() >= min_pixels or k in on_cut}
    pending = set(valid) - donors
    while True:
        winners = {}
        for k in pending:
            mask = regions[k][1]
            around = ndimage.binary_dilation(mask, FOUR) & ~mask
            votes = Counter(value[o] for o in owner[around].tolist() if o in donors)
            if votes:
                winners[k] = min(votes, key=lambda v: (-votes[v], v))
        if not winners:
            break
        for k, v in winners.items():
            value[k] = v
        pending -= winners.keys()
        donors |= winners.keys()
    out = labels.copy()
    for k, (_, mask) in enumerate(regions):
        out[mask] = value[k]
    return out


class RecordingArray:
    """Array-like that records every read and refuses reads larger than `max_pixels`."""

    def __init__(self, data: np.ndarray, max_pixels: int) -> None:
        self.data = data
        self.shape = data.shape
        self.max_pixels = max_pixels
        self.reads: list[tuple[slice, slice]] = []

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        block = self.data[key]
        assert block.size <= self.max_pixels, f"read {block.shape} at once"
        self.reads.append(key)
        return block.copy()


# ---------------------------------------------------------------------------------------------
# exact geometry and seam merging


@pytest.mark.parametrize(
    "transform",
    [NORTH_UP, Affine(2.0, 0.6, 1_000.0, 0.4, -2.0, 9_000.0)],
    ids=["north-up", "rotated"],
)
def test_rasterizing_the_polygons_back_reproduces_the_labels(raster, tmp_path, transform):
    out, stats = run(raster, tmp_path, transform=transform, block_size=128)

    assert stats.blocks == 6 * 8
    assert stats.pixels == 700 * 900
    assert np.array_equal(rasterize_back(out, raster.shape, transform), raster)


def test_every_connected_region_is_exactly_one_polygon(raster, tmp_path):
    out, stats = run(raster, tmp_path, block_size=128)
    geoms, fields, meta = read_layer(out)

    assert meta["geometry_type"] == "Polygon"
    assert set(shapely.get_type_id(geoms)) == {shapely.GeometryType.POLYGON}
    assert shapely.is_valid(geoms).all()
    assert len(geoms) == stats.polygons == count_regions(raster)
    assert stats.seam_groups_merged > 0


def test_block_size_does_not_change_the_polygons(raster, tmp_path):
    small, _ = run(raster, tmp_path, "small.gpkg", block_size=100)
    whole, stats = run(raster, tmp_path, "whole.gpkg", block_size=4096)

    def canonical(path):
        geoms, fields, _ = read_layer(path)
        wkt = shapely.to_wkt(shapely.normalize(geoms))
        return sorted(zip(fields["class_id"].tolist(), wkt, strict=True))

    assert stats.blocks == 1 and stats.seam_groups_merged == 0
    assert canonical(small) == canonical(whole)


def test_block_size_does_not_change_the_sieved_polygons_of_a_noisy_raster(tmp_path):
    labels = blobby(230, 260, seed=7, sigma=3.0)
    rng = np.random.default_rng(8)
    salt = rng.random(labels.shape) < 0.08
    labels[salt] = rng.integers(0, 5, salt.sum())
    labels[rng.random(labels.shape) < 0.01] = NODATA
    labels[100:140, 30:90] = NODATA

    def canonical(path):
        geoms, fields, _ = read_layer(path)
        wkt = shapely.to_wkt(shapely.normalize(geoms))
        area = np.round(fields["area_m2"], 6)
        return sorted(zip(fields["class_id"].tolist(), wkt, area, strict=True))

    whole, _ = run(labels, tmp_path, "whole.gpkg", block_size=4096, min_region_pixels=6)
    for block in (37, 64):
        tiled, stats = run(labels, tmp_path, f"{block}.gpkg", block_size=block, min_region_pixels=6)
        assert stats.seam_groups_merged > 0
        assert canonical(tiled) == canonical(whole)
    assert np.array_equal(rasterize_back(whole, labels.shape, NORTH_UP), sieve(labels, 6))


def test_u_shape_crossing_a_seam_twice_is_one_polygon(tmp_path):
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[3:16, 2:4] = 1  # left arm, crosses the seam at row 10
    labels[3:16, 6:8] = 1  # right arm
    labels[14:16, 2:8] = 1  # bottom, below the seam
    out, stats = run(labels, tmp_path, block_size=10, transform=Affine.identity())
    geoms, fields, _ = read_layer(out)

    ones = geoms[fields["class_id"] == 1]
    assert len(ones) == 1
    assert ones[0].area == labels.sum()
    assert len(geoms) == count_regions(labels) == 2  # the U and the background around it
    assert stats.seam_groups_merged >= 1


def test_regions_touching_only_at_a_corner_stay_separate(tmp_path):
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[8:10, 8:10] = 1  # touches the next one only at the block corner (10, 10)
    labels[10:12, 10:12] = 1
    labels[8:10, 3:5] = 2  # touches the next one only at a point on the seam row 10
    labels[10:12, 5:7] = 2
    out, _ = run(labels, tmp_path, block_size=10, transform=Affine.identity())
    _, fields, _ = read_layer(out)

    assert np.sum(fields["class_id"] == 1) == 2
    assert np.sum(fields["class_id"] == 2) == 2
    assert len(fields["class_id"]) == count_regions(labels)


def test_never_reads_more_than_one_block_with_halo(raster, tmp_path):
    block, min_pixels = 128, 10
    halo = 2 * min_pixels + 2
    source = RecordingArray(raster, max_pixels=(block + 2 * halo) ** 2)
    out, stats = run(source, tmp_path, block_size=block, min_region_pixels=min_pixels)

    assert len(source.reads) == stats.blocks
    assert pyogrio.read_info(out)["features"] == stats.polygons


def test_tiny_blocks_on_noisy_rasters_still_give_one_exact_polygon_per_region(tmp_path):
    rng = np.random.default_rng(11)
    for case in range(6):
        labels = rng.integers(0, 3, (45, 60)).astype(np.uint8)
        if case % 2:
            labels = ndimage.median_filter(labels, 3)
        labels[rng.random(labels.shape) < 0.03] = NODATA
        block = 3 + case  # pieces with holes, spirals and corner contacts across many seams
        out, stats = run(labels, tmp_path, transform=Affine.identity(), block_size=block)
        geoms, _, _ = read_layer(out)

        assert np.array_equal(rasterize_back(out, labels.shape, Affine.identity()), labels)
        assert len(geoms) == stats.polygons == count_regions(labels)
        assert shapely.is_valid(geoms).all()


def test_simplification_keeps_one_valid_polygon_per_region(raster, tmp_path):
    plain, _ = run(raster, tmp_path, "plain.gpkg", block_size=128)
    simple, stats = run(raster, tmp_path, "simple.gpkg", block_size=128, simplify_tolerance=5.0)
    plain_geoms, _, _ = read_layer(plain)
    simple_geoms, _, _ = read_layer(simple)

    assert stats.polygons == count_regions(raster)
    assert shapely.is_valid(simple_geoms).all()
    coords = shapely.get_num_coordinates
    assert coords(simple_geoms).sum() < 0.7 * coords(plain_geoms).sum()


# ---------------------------------------------------------------------------------------------
# sieve


def test_sieve_leaves_no_region_smaller_than_min_pixels():
    labels = blobby(300, 300, seed=3)
    rng = np.random.default_rng(4)
    salt = rng.random(labels.shape) < 0.02
    labels[salt] = rng.integers(0, 5, salt.sum())

    sieved = sieve(labels, 25)

    assert min(size for size, _ in region_sizes(sieved)) >= 25
    assert count_regions(sieved) < count_regions(labels)


def test_sieve_follows_the_rules_literally_on_random_rasters():
    rng = np.random.default_rng(5)
    for case in range(60):
        shape = tuple(rng.integers(4, 25, 2))
        labels = rng.integers(0, rng.integers(2, 5), shape).astype(np.uint8)
        if case % 2:
            labels = ndimage.median_filter(labels, 2)
        labels[rng.random(shape) < 0.05] = NODATA
        min_pixels = int(rng.integers(2, 10))
        cut = tuple(bool(c) for c in rng.integers(0, 2, 4))

        expected = reference_sieve(labels, min_pixels, cut)
        assert np.array_equal(sieve(labels, min_pixels, cut_edges=cut), expected), case


def test_sieve_follows_the_rules_literally_with_many_one_pixel_regions():
    rng = np.random.default_rng(6)
    for case in range(4):
        labels = blobby(40, 50, classes=3 + case % 2, seed=case, sigma=2.0)
        salt = rng.random(labels.shape) < 0.15  # single pixels, pairs and clumps of noise
        labels[salt] = rng.integers(0, 4, salt.sum())
        labels[rng.random(labels.shape) < 0.03] = NODATA
        cut = tuple(bool(c) for c in rng.integers(0, 2, 4))

        expected = reference_sieve(labels, 7, cut)
        assert np.array_equal(sieve(labels, 7, cut_edges=cut), expected), case


def test_sieve_takes_the_majority_neighbour_label():
    labels = np.zeros((9, 9), dtype=np.uint8)
    labels[:, 5:] = 2
    labels[3:6, 3:5] = 1  # 6 px; neighbour pixels: 3 left + 2 above + 2 below of 0, 3 of 2

    sieved = sieve(labels, 8)

    assert (sieved[:, :5] == 0).all()
    assert (sieved[:, 5:] == 2).all()


def test_sieve_ties_go_to_the_smallest_class_id():
    labels = np.full((4, 6), 7, dtype=np.uint8)
    labels[:, 3:] = 4
    labels[1:3, 2:4] = 9  # 2x2 straddling the border: 4 neighbour pixels of 7 and 4 of 4
    sieved = sieve(labels, 5)

    assert (sieved[1:3, 2:4] == 4).all()
    assert (sieved[:, :2] == 7).all() and (sieved[:, 4:] == 4).all()


def test_sieve_resolves_nested_small_regions_in_rounds():
    labels = np.zeros((11, 11), dtype=np.uint8)
    labels[4:7, 4:7] = 1  # 8-px ring of class 1 around ...
    labels[5, 5] = 2  # ... a 1-px region that only sees the ring: resolved one round later

    sieved = sieve(labels, 30)

    assert (sieved == 0).all()


def test_sieve_never_changes_nodata_and_keeps_regions_isolated_by_it():
    labels = np.full((10, 10), NODATA, dtype=np.uint8)
    labels[2:4, 2:4] = 3  # isolated by nodata
    labels[6:, :] = 1
    labels[8, 5] = 2  # small, inside class 1
    sieved = sieve(labels, 10)

    assert (sieved[labels == NODATA] == NODATA).all()
    assert (sieved[2:4, 2:4] == 3).all()
    assert sieved[8, 5] == 1


def test_sieve_treats_regions_on_cut_edges_as_possibly_large():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[0:2, 4:6] = 1  # 4 px on the top edge
    labels[8:10, 4:6] = 2  # 4 px on the bottom edge

    cut_top = sieve(labels, 10, cut_edges=(True, False, False, False))

    assert (cut_top[0:2, 4:6] == 1).all()  # may continue above the cut: kept
    assert (cut_top[8:10, 4:6] == 0).all()  # real raster border: judged by size
    assert (sieve(labels, 10) == 0).all()


def test_sieve_with_min_pixels_at_most_one_changes_nothing():
    labels = blobby(50, 50)
    for min_pixels in (0, 1):
        out = sieve(labels, min_pixels)
        assert out is not labels and np.array_equal(out, labels)


def test_sieve_of_a_window_with_halo_matches_the_whole_array(raster):
    min_pixels = 20
    halo = 2 * min_pixels + 2
    whole = sieve(raster, min_pixels)
    r0, r1, c0, c1 = 150, 350, 380, 640  # core, overlapping the nodata patch
    window = raster[r0 - halo : r1 + halo, c0 - halo : c1 + halo]

    part = sieve(window, min_pixels, cut_edges=(True, True, True, True))

    assert np.array_equal(part[halo:-halo, halo:-halo], whole[r0:r1, c0:c1])


def test_vectorized_sieve_is_seamless(raster, tmp_path):
    tiled, _ = run(raster, tmp_path, "tiled.gpkg", block_size=64, min_region_pixels=20)
    single, _ = run(raster, tmp_path, "single.gpkg", block_size=4096, min_region_pixels=20)

    tiled_back = rasterize_back(tiled, raster.shape, NORTH_UP)
    assert np.array_equal(tiled_back, rasterize_back(single, raster.shape, NORTH_UP))
    assert np.array_equal(tiled_back, sieve(raster, 20))
    assert read_layer(tiled)[0].size == count_regions(tiled_back)


# ---------------------------------------------------------------------------------------------
# attributes


def test_attributes_in_a_projected_crs(raster, tmp_path):
    out, _ = run(raster, tmp_path, block_size=128)
    geoms, fields, meta = read_layer(out)

    assert list(meta["fields"]) == ["class_id", "class_name", "area_m2", "perimeter_m"]
    assert CRS.from_user_input(meta["crs"]) == UTM
    assert [NAMES[c] for c in fields["class_id"]] == list(fields["class_name"])
    pixel_area = 2.5 * 2.5
    for value in np.unique(raster[raster != NODATA]):
        total = fields["area_m2"][fields["class_id"] == value].sum()
        assert total == pytest.approx(np.sum(raster == value) * pixel_area, rel=1e-12)
    np.testing.assert_allclose(fields["perimeter_m"], shapely.length(geoms), rtol=1e-12)


def test_area_and_perimeter_of_a_square_in_feet_are_converted_to_metres(tmp_path):
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:5, 2:5] = 1  # 3x3 pixels of 2 ft
    foot = 0.3048006096012192  # US survey foot
    transform = Affine(2.0, 0, 1_000_000.0, 0, -2.0, 200_000.0)
    out, _ = run(labels, tmp_path, transform=transform, crs=CRS.from_epsg(2263))
    _, fields, _ = read_layer(out)

    square = fields["class_id"] == 1
    assert fields["area_m2"][square][0] == pytest.approx(36 * foot**2)
    assert fields["perimeter_m"][square][0] == pytest.approx(24 * foot)


def test_geographic_crs_gives_geodesic_metres(tmp_path):
    labels = blobby(200, 300, classes=4, seed=7)
    transform = Affine(0.0001, 0, 10.0, 0, -0.0001, 45.0)  # ~8 m x 11 m pixels
    out, _ = run(labels, tmp_path, block_size=64, transform=transform, crs=CRS.from_epsg(4326))
    geoms, fields, _ = read_layer(out)

    laea = pyproj.CRS.from_proj4("+proj=laea +lat_0=44.99 +lon_0=10.015 +ellps=WGS84")
    to_laea = pyproj.Transformer.from_crs("EPSG:4326", laea, always_xy=True)
    projected = shapely.transform(geoms, lambda xy: np.column_stack(to_laea.transform(*xy.T)))
    np.testing.assert_allclose(fields["area_m2"], shapely.area(projected), rtol=0.01)
    np.testing.assert_allclose(fields["perimeter_m"], shapely.length(projected), rtol=0.01)
    assert fields["area_m2"].sum() == pytest.approx(200 * 300 * 7.86 * 11.12, rel=0.01)


def test_without_crs_areas_are_nan(tmp_path):
    out, _ = run(blobby(60, 60), tmp_path, block_size=32, crs=None)
    _, fields, meta = read_layer(out)

    assert meta["crs"] is None
    assert np.isnan(fields["area_m2"]).all() and np.isnan(fields["perimeter_m"]).all()


def test_class_ids_without_a_name_get_a_generic_one(tmp_path):
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:, 4:] = 6
    out, _ = run(labels, tmp_path, class_names=["a", "b"])
    _, fields, _ = read_layer(out)

    assert dict(zip(fields["class_id"].tolist(), fields["class_name"], strict=True)) == {
        0: "a",
        6: "class_6",
    }


# ---------------------------------------------------------------------------------------------
# output file


def test_all_nodata_gives_a_valid_empty_layer(tmp_path):
    labels = np.full((300, 200), NODATA, dtype=np.uint8)
    out, stats = run(labels, tmp_path, block_size=128, min_region_pixels=5)

    info = pyogrio.read_info(out, layer="polygons")
    assert info["features"] == 0 == stats.polygons
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == ["class_id", "class_name", "area_m2", "perimeter_m"]
    assert stats.blocks == 6


@pytest.mark.filterwarnings("ignore:Normalized/laundered field name")  # Shapefile: 10 chars
@pytest.mark.parametrize(
    ("name", "driver", "files"),
    [
        ("out.fgb", "FlatGeobuf", ["out.fgb"]),
        ("out.shp", "ESRI Shapefile", ["out.cpg", "out.dbf", "out.prj", "out.shp", "out.shx"]),
    ],
)
def test_other_drivers_appending_chunk_by_chunk(raster, tmp_path, monkeypatch, name, driver, files):
    monkeypatch.setattr(vectorize_writer, "FLUSH_FEATURES", 1)  # one append per block
    labels = raster[:200, :200]
    out, stats = run(labels, tmp_path, name, driver=driver, layer="classes", block_size=64)

    assert pyogrio.read_info(out)["features"] == stats.polygons == count_regions(labels)
    assert np.array_equal(rasterize_back(out, labels.shape, NORTH_UP), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def _failing_map(fn, blocks):
    """Processes the first blocks, then fails like a crashed worker."""
    for i, block in enumerate(blocks):
        if i == 3:
            raise RuntimeError("worker died")
        yield fn(block)


def test_a_failure_leaves_no_output_and_no_temporary_file(raster, tmp_path, monkeypatch):
    monkeypatch.setattr(vectorize_writer, "FLUSH_FEATURES", 1)  # the temporary file exists early
    seen: list[list[str]] = []

    def spying_map(fn, blocks):
        for result in _failing_map(fn, blocks):
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            yield result

    with pytest.raises(RuntimeError, match="worker died"):
        run(raster, tmp_path, block_size=128, map_fn=spying_map)

    assert seen[-1] == [f".out.gpkg.tmp-{os.getpid()}.gpkg"]  # written to while running
    assert list(tmp_path.iterdir()) == []


def test_a_failure_leaves_a_previous_output_untouched(raster, tmp_path):
    out, _ = run(raster[:100, :100], tmp_path, block_size=64)
    before = out.read_bytes()
    mtime = os.stat(out).st_mtime_ns

    with pytest.raises(RuntimeError):
        run(raster, tmp_path, block_size=128, map_fn=_failing_map)

    assert out.read_bytes() == before and os.stat(out).st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["out.gpkg"]


def test_a_successful_run_replaces_the_previous_output(raster, tmp_path):
    run(raster[:100, :100], tmp_path, block_size=64)
    out, stats = run(raster, tmp_path, block_size=256)

    assert pyogrio.read_info(out)["features"] == stats.polygons == count_regions(raster)
    assert [p.name for p in tmp_path.iterdir()] == ["out.gpkg"]


def test_stats_are_consistent(raster, tmp_path):
    _, stats = run(raster, tmp_path, block_size=300)

    assert stats.blocks == math.ceil(700 / 300) * math.ceil(900 / 300)
    assert stats.seconds > 0
    stages = {"read", "sieve", "polygonize", "features", "merge", "write"}
    assert set(stats.timings) == stages
    assert all(seconds >= 0 for seconds in stats.timings.values())
