"""After `fit --samples` and `segment`, the analyst's loop from the command line: an
accuracy assessment against validation samples (`evaluate RUN --samples`), a stratified
random validation sample (`sample-points`), where to label next (`suggest`, then back into
`fit --samples`), and naming an unsupervised model's clusters from samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from flows.cli import main
from tests.flows import samples_data as sd

TINY = ["--backbone-arg", "depth=2", "--backbone-arg", "embed_dim=64",
        "--backbone-arg", "num_heads=2", "--weights", "random"]
TILES = ["--set", "tiling.tile_size=128", "--set", "tiling.overlap=16"]
NAMES = sd.CLASSES


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory) -> tuple[Path, np.ndarray, Path, Path]:
    """(scene, truth, model, segment output) for 8 points per planted class."""
    d = tmp_path_factory.mktemp("loop")
    truth = sd.planted_truth()
    src = sd.write_scene(d / "scene.tif", truth)
    pts = sd.points_layer(d / "clicks.gpkg", truth)
    assert main(["fit", str(src), "--samples", str(pts), "--class-field", "cls",
                 "--out", str(d / "model"), *TINY, *TILES, "-q"]) == 0
    assert main(["segment", str(src), "--model", str(d / "model"), "--out", str(d / "out"),
                 *TILES, "--set", "dask.processes=false", "-q"]) == 0
    return src, truth, d / "model", d / "out"


def _fill_from_truth(layer: Path, truth: np.ndarray, field: str = "class") -> Path:
    """What the analyst does in QGIS: give each point its true class."""
    import shapely

    _meta, _fids, geom = pyogrio.raw.read(layer)[:3]
    pts = shapely.from_wkb(geom)
    inv = ~sd.TRANSFORM
    names = []
    for p in pts:
        c, r = inv @ (p.x, p.y)
        names.append(NAMES[truth[int(r), int(c)]])
    out = layer.with_name(layer.stem + "_filled.gpkg")
    return sd.write_layer(out, list(pts), **{field: np.array(names, dtype=object)})


def test_evaluate_with_samples_reports_the_error_matrix_and_per_class_accuracy(run, tmp_path,
                                                                               capsys):
    src, truth, _model, out = run
    val = sd.points_layer(tmp_path / "val.gpkg", truth, per_class=10, seed=7)
    assert main(["evaluate", str(out), "--samples", str(val), "--class-field", "cls",
                 "--out", str(tmp_path / "eval"), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "overall accuracy" in printed
    report = json.loads((tmp_path / "eval" / "accuracy.json").read_text())
    assert report["n"] == 30 and report["design"] == "none"
    assert [c["name"] for c in report["classes"]] == NAMES
    assert report["overall_accuracy"] > 0.9
    assert np.asarray(report["confusion"]).sum() == 30
    assert "area_weighted" not in report and "do not apply" in report["note"]
    assert "Error matrix" in (tmp_path / "eval" / "accuracy.md").read_text()


def test_a_stratified_sample_gives_class_areas_with_confidence_intervals(run, tmp_path):
    src, truth, _model, out = run
    layer = tmp_path / "validation.gpkg"
    assert main(["sample-points", str(out), "--per-class", "12", "--out", str(layer)]) == 0
    _meta, _fids, _geom, data = pyogrio.raw.read(layer)[:4]
    assert len(data[0]) == 36 and all(v is None for v in data[1])  # id, empty class
    filled = _fill_from_truth(layer, truth)
    assert main(["evaluate", str(out), "--samples", str(filled), "--class-field", "class",
                 "--design", "stratified", "--out", str(tmp_path / "eval"), "-q"]) == 0
    aw = json.loads((tmp_path / "eval" / "accuracy.json").read_text())["area_weighted"]
    true_area = np.bincount(truth.ravel(), minlength=3) * abs(sd.TRANSFORM.a * sd.TRANSFORM.e)
    for c, area in zip(aw["classes"], true_area, strict=True):
        low, high = c["area"]["ci95"]
        assert low <= area * 1.05 and high >= area * 0.95, (c["name"], low, high, area)
    assert aw["overall_accuracy"]["se"] is not None


def test_suggest_writes_points_to_label_and_they_go_back_into_fit(run, tmp_path, capsys):
    src, truth, _model, out = run
    nxt = tmp_path / "next.gpkg"
    assert main(["suggest", str(out), "--n", "9", "--out", str(nxt), "-q"]) == 0
    assert "points to label" in capsys.readouterr().out
    meta, _fids, _geom, data = pyogrio.raw.read(nxt)[:4]
    fields = list(meta["fields"])
    assert len(data[0]) == 9
    assert all(v is None for v in data[fields.index("class")])
    assert set(data[fields.index("predicted")]) <= set(NAMES)
    with rasterio.open(out / "labels.tif") as ds:
        assert pyogrio.read_info(nxt, layer="suggestions")["crs"] is not None
        assert ds.crs is not None
    filled = _fill_from_truth(nxt, truth, field="cls")
    clicks = sd.points_layer(tmp_path / "clicks.gpkg", truth)
    assert main(["fit", str(src), "--samples", str(clicks), str(filled), "--class-field",
                 "cls", "--out", str(tmp_path / "m2"), *TINY, *TILES, "-q"]) == 0
    samples = json.loads((tmp_path / "m2" / "model.json").read_text())["fit"]["samples"]
    assert samples["sources"] == [str(clicks), str(filled)]
    assert samples["pixels"] == 24 + 9


def test_name_clusters_from_samples_names_an_unsupervised_model(run, tmp_path, capsys):
    src, truth, _model, _out = run
    assert main(["fit", str(src), "--method", "pixel-kmeans", "--clusters", "3",
                 "--out", str(tmp_path / "px"), "-q"]) == 0
    pts = sd.points_layer(tmp_path / "names.gpkg", truth)
    assert main(["name-clusters", str(tmp_path / "px"), "--from", str(pts),
                 "--class-field", "cls"]) == 0
    names = json.loads((tmp_path / "px" / "model.json").read_text())["class_names"]
    assert sorted(names) == sorted(NAMES)  # the three planted classes, one cluster each
