"""Few labels, as an analyst runs it: `stego fit IN.tif --samples S --class-field cls --out
MODEL` with points, polygons, a label raster, a layer in lon/lat, `FILE=NAME` and two inputs;
then `stego segment` with the analyst's class names in every output, a map that matches the
planted classes, and one `error:` line for every bad sample file."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from affine import Affine

from flows.cli import main
from pipeline.io.raster import compute_scaling, open_raster_info, read_window
from pipeline.io.zarr_store import open_labels
from pipeline.models.store import load_model
from tests.flows import samples_data as sd

TINY = ["--backbone-arg", "depth=2", "--backbone-arg", "embed_dim=64",
        "--backbone-arg", "num_heads=2", "--weights", "random"]
TILES = ["--set", "tiling.tile_size=128", "--set", "tiling.overlap=16"]
SEGMENT = [*TILES, "--set", "tiling.chunk_size=64", "--set", "dask.processes=false", "-q"]
NAMES = sd.CLASSES  # building, grass, water


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 256 px UTM scene (0.5 m) with three planted classes, and its truth."""
    truth = sd.planted_truth()
    return sd.write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", truth), truth


def fit(inputs: list[Path], samples: list[str], out: Path, *extra: str) -> int:
    """`stego fit` exactly as documented, with the tiny random backbone."""
    return main(["fit", *map(str, inputs), "--samples", *samples, *extra, "--out", str(out),
                 *TINY, *TILES, "-q"])


def agreement(model_dir: Path, raster: Path, truth: np.ndarray) -> float:
    """Share of pixels where the model, applied to the whole raster at once, predicts the
    planted class (matched by name)."""
    model = load_model(model_dir)
    info = open_raster_info(raster)
    img = read_window(info, compute_scaling(info), 0, 0, info.height, info.width)[0]
    with torch.no_grad():
        pred = model.predict(torch.from_numpy(img)[None])[0].argmax(0).numpy()
    return float((np.array(model.class_names)[pred] == np.array(NAMES)[truth]).mean())


@pytest.fixture(scope="module")
def fitted(prefect_harness, scene, tmp_path_factory) -> Path:
    src, truth = scene
    d = tmp_path_factory.mktemp("pts")
    pts = sd.points_layer(d / "S.gpkg", truth)
    assert fit([src], [str(pts)], d / "model", "--class-field", "cls") == 0
    return d / "model"


@pytest.fixture(scope="module")
def segmented(fitted, scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "out"
    assert main(["segment", str(scene[0]), "--model", str(fitted), "--out", str(out),
                 *SEGMENT]) == 0
    return out


# ---- fit: every kind of sample


def test_points_with_a_text_class_field_make_a_model_in_those_classes(fitted, scene):
    meta = json.loads((fitted / "model.json").read_text())
    assert meta["method"] == "classifier"
    assert meta["class_names"] == NAMES  # text classes, alphabetical
    assert len(meta["colors"]) == 3
    samples = meta["fit"]["samples"]
    assert samples["class_fields"] == ["cls"] and samples["pixels"] == 24
    assert samples["pixels_per_class"] == {n: 8 for n in NAMES}
    acc = meta["accuracy"]  # two of each class's eight points held out
    assert acc["held_out_features"] == 6 and acc["held_out_pixels"] == 6
    assert [c["name"] for c in acc["classes"]] == NAMES
    assert np.array(acc["confusion"]).sum() == 6 and acc["overall_accuracy"] >= 5 / 6
    assert agreement(fitted, *scene) > 0.97


def test_polygons(prefect_harness, scene, tmp_path):
    src, truth = scene
    polys = sd.polygons_layer(tmp_path / "rois.gpkg", truth)
    assert fit([src], [str(polys)], tmp_path / "m", "--class-field", "cls") == 0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["class_names"] == NAMES
    assert meta["fit"]["samples"]["pixels_per_class"] == {n: 5 * 36 for n in NAMES}
    assert meta["fit"]["samples"]["features"] == 15
    assert meta["accuracy"]["held_out_features"] == 3  # one whole polygon per class
    assert meta["accuracy"]["held_out_pixels"] == 3 * 36
    assert agreement(tmp_path / "m", src, truth) > 0.97


def test_a_label_raster_with_a_class_table(prefect_harness, scene, tmp_path):
    """Nodata pixels are unlabelled; the class table names the values and colours them."""
    src, truth = scene
    labels = sd.label_raster(tmp_path / "truth_patches.tif", truth)
    table = sd.class_table(tmp_path / "classes.csv")
    assert fit([src], [str(labels)], tmp_path / "m", "--classes", str(table)) == 0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["class_names"] == NAMES
    assert meta["colors"] == [list(sd.COLOURS[n]) for n in NAMES]
    assert meta["fit"]["samples"]["pixels_per_class"] == {n: 5 * 36 for n in NAMES}
    assert meta["fit"]["samples"]["class_fields"] == [None]
    assert meta["accuracy"]["held_out_features"] == 3  # one labelled region per class
    assert meta["accuracy"]["held_out_pixels"] == 3 * 36
    assert agreement(tmp_path / "m", src, truth) > 0.97


def test_a_file_of_one_class_and_a_file_with_a_class_field(prefect_harness, scene, tmp_path):
    """`buildings.geojson=building` (footprints without a class field) plus points of the
    other classes."""
    src, truth = scene
    footprints = sd.squares(truth, NAMES.index("building"), 4, seed=7)
    buildings = sd.write_layer(tmp_path / "buildings.geojson", footprints,
                               height=np.array([6.5, 9.0, 12.0, 3.0]))
    pts, names = sd.sample_points(truth, seed=3)
    keep = names != "building"
    others = sd.write_layer(tmp_path / "others.gpkg", [p for p, k in zip(pts, keep, strict=True)
                                                       if k], cls=names[keep])
    assert fit([src], [f"{buildings}=building", str(others)], tmp_path / "m",
               "--class-field", "cls") == 0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["class_names"] == NAMES
    samples = meta["fit"]["samples"]
    assert samples["pixels_per_class"] == {"building": 4 * 36, "grass": 8, "water": 8}
    assert samples["class_fields"] == [None, "cls"]
    assert samples["sources"] == [str(buildings), str(others)]
    assert agreement(tmp_path / "m", src, truth) > 0.97


def test_two_inputs_and_a_layer_in_lon_lat(prefect_harness, scene, tmp_path):
    """The second raster lies east of the first and water is labelled only there; the layer
    is in EPSG:4326 over the UTM rasters, and every point lands on its pixel."""
    from pyproj import Transformer

    src, truth = scene
    east = Affine(sd.RES, 0, sd.X0 + sd.SIZE * sd.RES, 0, -sd.RES, sd.Y0)
    src2 = sd.write_scene(tmp_path / "east.tif", truth, seed=1, transform=east)
    pts1, names1 = sd.sample_points(truth, seed=0)
    pts2, names2 = sd.sample_points(truth, seed=5, transform=east)
    pts = [p for p, n in zip(pts1, names1, strict=True) if n != "water"] + \
          [p for p, n in zip(pts2, names2, strict=True) if n == "water"]
    names = np.concatenate([names1[names1 != "water"], names2[names2 == "water"]])
    to_ll = Transformer.from_crs(sd.UTM, "EPSG:4326", always_xy=True)
    ll = [shapely.Point(*to_ll.transform(p.x, p.y)) for p in pts]
    layer = sd.write_layer(tmp_path / "S.geojson", ll, crs="EPSG:4326", cls=names)
    assert fit([src, src2], [str(layer)], tmp_path / "m", "--class-field", "cls") == 0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["fit"]["inputs"] == [str(src.resolve()), str(src2.resolve())]
    assert meta["class_names"] == NAMES
    assert meta["fit"]["samples"]["pixels_per_class"] == {n: 8 for n in NAMES}
    assert meta["fit"]["samples"]["warnings"] == []  # every point landed
    assert agreement(tmp_path / "m", src2, truth) > 0.97
    assert agreement(tmp_path / "m", src, truth) > 0.97


def test_classifier_max_pixels_caps_the_labelled_pixels(prefect_harness, scene, tmp_path):
    src, truth = scene
    polys = sd.polygons_layer(tmp_path / "rois.gpkg", truth)  # 15 polygons, 540 pixels
    assert fit([src], [str(polys)], tmp_path / "m", "--class-field", "cls",
               "--set", "classifier.max_pixels=100",
               "--set", "classifier.backbone_features=false") == 0
    samples = json.loads((tmp_path / "m" / "model.json").read_text())["fit"]["samples"]
    assert sum(samples["pixels_per_class"].values()) == samples["pixels"]
    assert samples["pixels"] <= 100


# ---- segment: the analyst's classes in every output


def test_segment_writes_the_outputs_with_the_class_names(segmented):
    assert {"labels.tif", "labels.tif.aux.xml", "labels.zarr", "polygons.gpkg", "item.json",
            "run.json", "labels.qml", "polygons.qml"} <= {p.name for p in segmented.iterdir()}
    band = ET.parse(segmented / "labels.tif.aux.xml").getroot().find("PAMRasterBand")
    assert [c.text for c in band.find("CategoryNames")] == NAMES
    rat = band.find("GDALRasterAttributeTable")
    columns = [f.findtext("Name") for f in rat.findall("FieldDefn")]
    rows = [[f.text for f in row.findall("F")] for row in rat.findall("Row")]
    name_col = columns.index("Class_Name")
    assert [r[name_col] for r in rows] == NAMES
    assert [int(r[columns.index("Value")]) for r in rows] == [0, 1, 2]


def test_gis_clients_read_the_class_names_and_colours(segmented, fitted):
    """GDAL itself (as QGIS reads the file) sees the category names and attribute table."""
    from tests.gdal_capi import rasterio_gdal

    cog = rasterio_gdal().describe(str(segmented / "labels.tif"))
    assert cog["category_names"] == NAMES
    assert [row[1] for row in cog["rat_rows"]] == NAMES
    colors = json.loads((fitted / "model.json").read_text())["colors"]
    with rasterio.open(segmented / "labels.tif") as ds:
        assert ds.nodata == 255
        assert [list(ds.colormap(1)[k][:3]) for k in range(3)] == colors


def test_stac_item_polygons_and_run_json_carry_the_classes_and_accuracy(segmented, fitted):
    item = json.loads((segmented / "item.json").read_text())
    band = item["assets"]["labels"]["raster:bands"][0]
    classes = [c for c in band["classification:classes"] if not c.get("nodata")]
    assert [c["title"] for c in classes] == NAMES and [c["name"] for c in classes] == NAMES
    assert [c["value"] for c in classes] == [0, 1, 2]
    assert any("classification" in e for e in item["stac_extensions"])
    meta, _, _, fields = pyogrio.raw.read(segmented / "polygons.gpkg", layer="polygons")
    class_name = fields[list(meta["fields"]).index("class_name")]
    assert set(class_name.tolist()) == set(NAMES)
    run = json.loads((segmented / "run.json").read_text())
    model = json.loads((fitted / "model.json").read_text())
    assert run["model"]["method"] == "classifier"
    assert run["model"]["accuracy"] == model["accuracy"] is not None
    assert run["model"]["class_names"] == NAMES


def test_the_map_matches_the_planted_classes(segmented, scene):
    _, truth = scene
    with rasterio.open(segmented / "labels.tif") as ds:
        labels = ds.read(1)
    assert (labels == truth).mean() > 0.98
    np.testing.assert_array_equal(open_labels(segmented / "labels.zarr")[:], labels)


def test_segment_crf_refines_the_classifiers_map(segmented, fitted, scene, tmp_path):
    """`--crf` adds the dense CRF after the superpixel averaging (it is off by default, and a
    model without its own CRF was once left as it was): the probabilities change, the classes
    stay right, and the margin stays the classifier's own, from before the CRF."""
    import zarr

    out = tmp_path / "crf"
    assert main(["segment", str(scene[0]), "--model", str(fitted), "--out", str(out), "--crf",
                 *SEGMENT]) == 0
    for run, crf in ((segmented, False), (out, True)):
        assert json.loads((run / "run.json").read_text())["config"]["model"]["crf"] is crf
        with rasterio.open(run / "labels.tif") as ds:
            assert (ds.read(1) == scene[1]).mean() > 0.98
    plain, refined = ({name: zarr.open_array(str(d / "labels.zarr"), path=name, mode="r")[:]
                       for name in ("confidence", "margin")} for d in (segmented, out))
    assert (plain["confidence"] != refined["confidence"]).mean() > 0.1
    np.testing.assert_array_equal(plain["margin"], refined["margin"])


def test_blocks_leave_no_seams(fitted, scene, tmp_path, one_torch_thread):
    """Cut into 9 blocks, or into blocks off the tile grid, a 128 px part of the scene where
    the three classes meet segments exactly as in one block on the same tile grid
    (tests/segment's seam check, with the classifier)."""
    from pipeline.tiling import TileGrid, plan_blocks
    from tests.segment.test_inference import _segment

    src, truth = scene
    with rasterio.open(src) as ds:
        part = ds.read(window=rasterio.windows.Window(32, 80, 128, 128))
    transform = Affine(sd.RES, 0, sd.X0 + 32 * sd.RES, 0, -sd.RES, sd.Y0 - 80 * sd.RES)
    path = tmp_path / "part.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3,
                       dtype="uint8", crs=sd.UTM, transform=transform) as dst:
        dst.write(part)
    model = load_model(fitted)
    info = open_raster_info(path)
    grid = TileGrid(64, 16)
    one, conf_one = _segment(model, info, grid, 512)
    many, conf_many = _segment(model, info, grid, 48)  # a multiple of the stride: 3 x 3
    odd, _ = _segment(model, info, grid, 80)  # not aligned with the tile grid
    assert len(plan_blocks(info.height, info.width, 48)) == 9
    np.testing.assert_array_equal(many, one)
    np.testing.assert_array_equal(odd, one)
    assert np.abs(conf_many.astype(int) - conf_one).max() <= 1
    assert set(np.unique(one).tolist()) == {0, 1, 2}
    assert (one == truth[80:208, 32:160]).mean() > 0.97


# ---- bad samples: one error line naming the file, exit 2, no model


def _points(d: Path, truth: np.ndarray, names: list[str] | None = None, **kw) -> Path:
    pts, cls = sd.sample_points(truth)
    if names is not None:
        cls = np.array(names, dtype=object)
        pts = pts[:len(cls)]
    return sd.write_layer(d / kw.pop("name", "S.gpkg"), pts, cls=cls, **kw)


def _outside(d, truth):
    pts, names = sd.sample_points(truth)
    far = [shapely.Point(p.x + 5000, p.y) for p in pts]
    return [str(sd.write_layer(d / "far.gpkg", far, cls=names))], "fall outside every input"


def _no_crs(d, truth):
    return [str(_points(d, truth, name="S.shp", crs=None))], "no CRS"


def _field_missing(d, truth):
    return [str(_points(d, truth))], "no class field 'kind'"


def _one_class(d, truth):
    return [str(_points(d, truth, ["grass"] * 8))], "at least two classes"


def _too_few(d, truth):
    return [str(_points(d, truth, ["building"] * 8 + ["grass"] * 8 + ["water"]))], \
        "class 'water' has 1 labelled pixel"


def _bow_tie(d, truth):
    t = sd.TRANSFORM
    bow = shapely.Polygon([t @ (10, 10), t @ (30, 30), t @ (30, 10), t @ (10, 30)])
    polys = [sd.pixel_box(t, 200, 200, 210, 210), bow, sd.pixel_box(t, 10, 200, 20, 210)]
    path = sd.write_layer(d / "rois.gpkg", polys,
                          cls=np.array(["building", "water", "grass"], dtype=object))
    return [str(path)], "invalid geometry"


def _garbage(d, truth):
    path = d / "S.gpkg"
    path.write_bytes(np.random.default_rng(0).bytes(3000))
    return [str(path)], "cannot be read"


BAD = {
    "samples outside every raster": _outside,
    "a layer without a CRS": _no_crs,
    "--class-field not in the layer": _field_missing,
    "a single class": _one_class,
    "a class with too few pixels": _too_few,
    "a self-intersecting polygon": _bow_tie,
    "garbage bytes": _garbage,
}


def _expect_one_error(capsys, code: int, named: str, expect: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert named in lines[0] and expect in lines[0], lines[0]
    assert err.strip().splitlines()[-1] == lines[0]
    return lines[0]


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_samples_give_one_error_line_naming_the_file(case, prefect_harness, scene, tmp_path,
                                                          capsys):
    src, truth = scene
    samples, expect = BAD[case](tmp_path, truth)
    field = "kind" if case == "--class-field not in the layer" else "cls"
    code = fit([src], samples, tmp_path / "MODEL", "--class-field", field)
    _expect_one_error(capsys, code, samples[0], expect)
    assert not (tmp_path / "MODEL").exists()


@pytest.mark.parametrize("argv", [
    ["--method", "classifier"],
    ["--samples", "{pts}", "--class-field", "cls", "--method", "pixel-kmeans"],
], ids=["classifier without --samples", "--samples with pixel-kmeans"])
def test_classifier_and_samples_come_together(argv, scene, tmp_path, capsys):
    src, truth = scene
    pts = _points(tmp_path, truth)
    argv = [a.replace("{pts}", str(pts)) for a in argv]
    code = main(["fit", str(src), *argv, "--out", str(tmp_path / "MODEL"), "-q"])
    _expect_one_error(capsys, code, "--samples", "--method classifier")
    assert not (tmp_path / "MODEL").exists()


# ---- a STEGO model's codes as features


def test_a_stego_model_as_weights_gives_its_backbone_and_codes_to_the_classifier(
        prefect_harness, scene, tmp_path):
    """`fit --samples … --weights STEGO_MODEL`: the classifier runs the STEGO model's backbone
    and adds its segmentation head's codes to the features; the saved model carries both and
    segments as the in-memory one does."""
    src, truth = scene
    stego_dir = tmp_path / "stego"
    assert main(["fit", str(src), "--method", "stego", "--clusters", "3", "--out",
                 str(stego_dir), *TINY, *TILES, "--set", "fit.crops=8", "--set",
                 "fit.crop_size=64", "--set", "stego.steps=5", "--set", "stego.dim=8",
                 "--set", "stego.batch_size=4", "-q"]) == 0
    pts = sd.points_layer(tmp_path / "S.gpkg", truth)
    out = tmp_path / "model"
    assert main(["fit", str(src), "--samples", str(pts), "--class-field", "cls",
                 "--weights", str(stego_dir), "--out", str(out), *TILES, "-q"]) == 0
    meta = json.loads((out / "model.json").read_text())
    params = meta["params"]
    assert params["stego_codes"] == {"in_dim": 64, "dim": 8}
    assert params["feature_dim"] == 3 + 6 * 3 + 64 + 8 and params["backbone_embedded"]
    model, stego = load_model(out), load_model(stego_dir)
    torch.testing.assert_close(model.codes_head.linear.weight, stego.head.linear.weight)
    x = torch.from_numpy(read_window(open_raster_info(src), compute_scaling(open_raster_info(
        src)), 0, 0, 128, 128)[0])[None]
    with torch.no_grad():
        f = model.pixel_features(x)
        codes = torch.nn.functional.normalize(stego.codes(x), dim=1)
        up = torch.nn.functional.interpolate(codes, size=(128, 128), mode="bilinear",
                                             align_corners=False)
    torch.testing.assert_close(f[:, -8:], up, atol=1e-5, rtol=0)  # the codes, last
    assert agreement(out, src, truth) > 0.9


def test_a_model_of_another_method_is_refused_as_weights(prefect_harness, scene, tmp_path,
                                                         capsys):
    src, truth = scene
    px = tmp_path / "px"
    assert main(["fit", str(src), "--method", "pixel-kmeans", "--clusters", "3", "--out",
                 str(px), "-q"]) == 0
    capsys.readouterr()
    pts = sd.points_layer(tmp_path / "S.gpkg", truth)
    code = main(["fit", str(src), "--samples", str(pts), "--class-field", "cls", "--weights",
                 str(px), "--out", str(tmp_path / "m"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a pixel-kmeans model: --weights takes" in err[0]
    assert not (tmp_path / "m").exists()
