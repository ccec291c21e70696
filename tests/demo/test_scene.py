"""Specification of the procedural demo scene (``pipeline.demo``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Compression, MaskFlags

from pipeline.demo import (
    DEMO_CLASSES,
    DEMO_COLORS,
    DEMO_CRS,
    DEMO_PIXEL_SIZE,
    generate_demo_arrays,
    labels_path_for,
    write_demo_scene,
)
from pipeline.demo import write as demo_write

ROAD, BUILDING, TREE, GRASS, CAR = range(5)


SIZE = 640  # more than one 512 px block per side


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_demo_arrays(SIZE, seed=1)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("demo") / "scene.tif"
    return write_demo_scene(out, size=SIZE, seed=1)


def tiff_tags(path: Path) -> dict[int, object]:
    """Raw TIFF tags of the first image file directory."""
    with Image.open(path) as im:
        return dict(im.tag_v2)


# ---- constants and paths --------------------------------------------------------------------


def test_classes_and_colours() -> None:
    assert DEMO_CLASSES == ["road", "building", "tree", "grass", "car"]
    assert len(DEMO_COLORS) == len(DEMO_CLASSES)
    for colour in DEMO_COLORS:
        assert len(colour) == 3 and all(0 <= c <= 255 for c in colour)
    r, g, b = DEMO_COLORS[ROAD]
    assert max(r, g, b) - min(r, g, b) < 20  # grey
    r, g, b = DEMO_COLORS[BUILDING]
    assert r > g + 80 and r > b + 80  # red
    assert DEMO_COLORS[TREE][1] == max(DEMO_COLORS[TREE])  # green
    assert DEMO_COLORS[GRASS][1] == max(DEMO_COLORS[GRASS])
    assert sum(DEMO_COLORS[TREE]) < sum(DEMO_COLORS[GRASS])  # dark vs light green
    assert DEMO_CRS == "EPSG:25833"
    assert DEMO_PIXEL_SIZE == 0.05


def test_labels_path_is_stem_labels_tif_next_to_image(tmp_path: Path) -> None:
    assert labels_path_for(tmp_path / "a" / "scene.tif") == tmp_path / "a" / "scene_labels.tif"
    assert labels_path_for(Path("x.tiff")) == Path("x_labels.tif")


# ---- arrays ---------------------------------------------------------------------------------


def test_arrays_have_documented_shapes_and_types() -> None:
    rgb, labels, valid = generate_demo_arrays(256, seed=0)
    assert rgb.shape == (3, 256, 256) and rgb.dtype == np.uint8
    assert labels.shape == (256, 256) and labels.dtype == np.uint8
    assert valid.shape == (256, 256) and valid.dtype == bool
    assert np.array_equal(labels == 255, ~valid)
    assert set(np.unique(labels[valid]).tolist()) <= set(range(len(DEMO_CLASSES)))


def test_arrays_are_deterministic_per_seed() -> None:
    a = generate_demo_arrays(256, seed=7)
    b = generate_demo_arrays(256, seed=7)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    c = generate_demo_arrays(256, seed=8)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])


def test_minimum_size() -> None:
    rgb, labels, valid = generate_demo_arrays(64, seed=0)
    assert rgb.shape == (3, 64, 64) and valid.any()
    with pytest.raises(ValueError):
        generate_demo_arrays(63)


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nodata_collar_is_a_few_percent_along_the_edges(size: int, seed: int) -> None:
    _, _, valid = generate_demo_arrays(size, seed)
    invalid = ~valid
    assert 0.03 <= invalid.mean() <= 0.10
    corners = [invalid[0, 0], invalid[0, -1], invalid[-1, 0], invalid[-1, -1]]
    assert any(corners)  # the triangle sits in a corner
    edges = [invalid[0].mean(), invalid[-1].mean(), invalid[:, 0].mean(), invalid[:, -1].mean()]
    assert max(edges) > 0.9  # the strip runs along a whole side
    q = size // 4
    assert valid[q:-q, q:-q].all()  # the interior is all data


@pytest.mark.parametrize("seed", range(10))
def test_small_scene_still_has_a_road_and_a_building(seed: int) -> None:
    _, labels, _ = generate_demo_arrays(256, seed)
    assert (labels == ROAD).mean() > 0.05
    assert (labels == BUILDING).mean() > 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_present_at_moderate_size(seed: int) -> None:
    _, labels, valid = generate_demo_arrays(512, seed)
    shares = np.bincount(labels[valid], minlength=5) / valid.sum()
    assert len(shares) == 5  # nothing but 0..4 on valid pixels
    assert all(shares[[ROAD, BUILDING, TREE, GRASS]] > 0.05), shares
    assert shares[CAR] > 0.002, shares


def test_classes_are_separable_but_not_trivially_by_colour(
    scene: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    rgb, labels, valid = scene
    x = rgb[:, valid].T.astype(np.float64)
    y = labels[valid]
    means = np.stack([x[y == k].mean(axis=0) for k in range(5)])

    def greenness(c: np.ndarray) -> float:
        return float(c[1] - (c[0] + c[2]) / 2)

    road, building, tree, grass = means[ROAD], means[BUILDING], means[TREE], means[GRASS]
    assert np.ptp(road) < 15  # asphalt and paving are grey
    assert greenness(grass) > greenness(road) + 20
    assert greenness(tree) > greenness(road) + 10
    assert tree.sum() < grass.sum() - 60  # trees are darker than lawns
    assert building[0] - building[2] > road[0] - road[2] + 15  # roofs redder than roads
    # Nearest class-mean colour gets a fair share right, but texture, shadows and look-alike
    # materials (grey roofs, grey cars, shadowed lawns) keep it far from perfect.
    pred = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    accuracy = float((pred == y).mean())
    assert 0.45 < accuracy < 0.95
    # Per-pixel texture: no class is a flat colour.
    assert all(x[y == k].std(axis=0).min() > 5 for k in range(5))


# ---- files ----------------------------------------------------------------------------------


def test_write_returns_image_and_labels_paths(tmp_path: Path) -> None:
    image, labels = write_demo_scene(tmp_path / "sub" / "dir" / "d.tif", size=128, seed=0)
    assert image == tmp_path / "sub" / "dir" / "d.tif"
    assert labels == tmp_path / "sub" / "dir" / "d_labels.tif"
    assert image.is_file() and labels.is_file()


def test_image_georeferencing(written: tuple[Path, Path]) -> None:
    for path in written:
        with rasterio.open(path) as ds:
            assert ds.crs.to_epsg() == 25833
            t = ds.transform
            assert (t.a, t.b, t.d, t.e) == (DEMO_PIXEL_SIZE, 0.0, 0.0, -DEMO_PIXEL_SIZE)
            # North-up, upper-left corner in Potsdam (ETRS89 / UTM 33N).
            assert 360_000 <= t.c <= 375_000 and 5_800_000 <= t.f <= 5_815_000
            assert (ds.width, ds.height) == (SIZE, SIZE)


def test_image_layout(written: tuple[Path, Path]) -> None:
    image, _ = written
    assert not image.with_name(image.name + ".msk").exists()  # mask is internal
    with rasterio.open(image) as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3
        assert ds.nodata is None  # invalid pixels are marked by the mask, not a value
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert ds.compression == Compression.deflate
        assert ds.profile["tiled"] and ds.block_shapes == [(512, 512)] * 3
        assert all(f == [MaskFlags.per_dataset] for f in ds.mask_flag_enums)
    tags = tiff_tags(image)
    assert tags[262] == 2  # PhotometricInterpretation: RGB
    assert (tags[322], tags[323]) == (512, 512)  # TileWidth, TileLength
    assert tags[259] == 8  # Compression: deflate


@pytest.mark.parametrize("size", [200, 300])
def test_small_images_use_blocks_that_are_multiples_of_16(tmp_path: Path, size: int) -> None:
    image, labels = write_demo_scene(tmp_path / "s.tif", size=size, seed=0)
    for path in (image, labels):
        with rasterio.open(path) as ds:
            assert ds.profile["tiled"]
            for by, bx in ds.block_shapes:
                assert by % 16 == 0 and bx % 16 == 0 and by <= size and bx <= size
        tags = tiff_tags(path)
        assert 322 in tags and 323 in tags  # a tiled TIFF, even with a single tile


def test_written_pixels_and_mask_match_arrays(
    written: tuple[Path, Path], scene: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    rgb, labels, valid = scene
    image, labels_path = written
    with rasterio.open(image) as ds:
        assert np.array_equal(ds.read(), rgb)
        mask = ds.read_masks(1)
        assert np.array_equal(mask == 0, labels == 255)
        assert np.array_equal(mask == 255, valid)
        assert np.array_equal(ds.dataset_mask(), mask)
    with rasterio.open(labels_path) as ds:
        assert np.array_equal(ds.read(1), labels)


def test_labels_file_has_palette_nodata_and_class_names(written: tuple[Path, Path]) -> None:
    _, labels = written
    with rasterio.open(labels) as ds:
        assert ds.count == 1 and ds.dtypes == ("uint8",)
        assert ds.nodata == 255
        assert ds.profile["tiled"] and ds.compression == Compression.deflate
        assert ds.colorinterp == (ColorInterp.palette,)
        cmap = ds.colormap(1)
        for k, colour in enumerate(DEMO_COLORS):
            assert cmap[k][:3] == colour
        tags = ds.tags(1)
        for k, name in enumerate(DEMO_CLASSES):
            assert tags[f"class_{k}"] == name
        assert ds.descriptions == ("labels",)
    assert tiff_tags(labels)[262] == 3  # PhotometricInterpretation: palette


def test_write_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    a = write_demo_scene(tmp_path / "a" / "scene.tif", size=256, seed=3)
    b = write_demo_scene(tmp_path / "b" / "scene.tif", size=256, seed=3)
    for pa, pb in zip(a, b, strict=True):
        assert pa.read_bytes() == pb.read_bytes()


def test_write_leaves_no_temporary_files_and_replaces_old_ones(tmp_path: Path) -> None:
    (tmp_path / "scene.tif").write_bytes(b"old")
    write_demo_scene(tmp_path / "scene.tif", size=128, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "scene_labels.tif"]
    with rasterio.open(tmp_path / "scene.tif") as ds:
        assert ds.count == 3


def test_failed_write_keeps_old_files_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "scene.tif"
    final.write_bytes(b"old")

    def broken(path: Path, labels: np.ndarray) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_write, "_write_labels", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_demo_scene(final, size=128, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]
    assert final.read_bytes() == b"old"
