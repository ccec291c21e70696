"""The command line as a user runs it: fit, segment, outputs, resume and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.features import rasterize

from flows.cli import main
from pipeline.demo import DEMO_CLASSES
from pipeline.io.zarr_store import open_labels

SMALL = """
tiling: {tile_size: 64, overlap: 16, block_size: 96, chunk_size: 32, batch_size: 4}
dask: {workers: 1, processes: false}
vectorize: {min_pixels: 0}
"""


@pytest.fixture(scope="module")
def small_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def fitted(prefect_harness, demo_scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m") / "model"
    code = main(["fit", str(demo_scene[0]), "--method", "pixel-kmeans", "--clusters", "4",
                 "--out", str(out), "--set", "fit.crops=8", "--set", "fit.crop_size=64", "-q"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def segmented(fitted, demo_scene, small_yaml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "out"
    code = main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out", str(out),
                 "--config", str(small_yaml), "-q"])
    assert code == 0
    return out


def test_segment_writes_the_four_outputs(segmented):
    assert sorted(p.name for p in segmented.iterdir()) == [
        "item.json", "labels.qml", "labels.tif", "labels.tif.aux.xml", "labels.zarr",
        "polygons.gpkg", "polygons.qml", "preview.png", "run.json"]


def test_cog_and_zarr_hold_identical_georeferenced_labels(segmented, demo_scene):
    with rasterio.open(segmented / "labels.tif") as cog, rasterio.open(demo_scene[0]) as src:
        labels = cog.read(1)
        assert cog.crs == src.crs and cog.transform == src.transform
        valid = src.read_masks(1) > 0
    np.testing.assert_array_equal(open_labels(segmented / "labels.zarr")[:], labels)
    assert (labels[~valid] == 255).all() and (labels[valid] < 4).all()


def test_polygons_rasterize_back_to_the_labels(segmented):
    with rasterio.open(segmented / "labels.tif") as cog:
        labels, transform = cog.read(1), cog.transform
    info = pyogrio.read_info(segmented / "polygons.gpkg", layer="polygons")
    assert info["crs"].endswith("25833")
    assert {"class_id", "class_name", "area_m2"} <= set(info["fields"])
    meta, _, geoms, fields = pyogrio.raw.read(segmented / "polygons.gpkg", layer="polygons")
    names = list(meta["fields"])
    class_id = fields[names.index("class_id")]
    import shapely

    shapes = zip(shapely.from_wkb(geoms), class_id, strict=True)
    back = rasterize(shapes, out_shape=labels.shape, transform=transform, fill=255,
                     dtype="uint8")
    np.testing.assert_array_equal(back, labels)
    area = fields[names.index("area_m2")]
    assert area.sum() == pytest.approx((labels != 255).sum() * 0.05 * 0.05)


def test_run_json_records_inputs_model_weights_counts_and_timings(segmented, fitted):
    doc = json.loads((segmented / "run.json").read_text())
    assert doc["status"] == "complete"
    assert doc["model"]["method"] == "pixel-kmeans"
    assert doc["scaling"]["kind"] == "uint8"
    assert doc["counts"]["blocks_total"] == 16 and doc["counts"]["blocks_computed"] == 16
    assert set(doc["timings_s"]) >= {"validate", "infer", "cog", "vectorize", "total"}
    assert doc["input"]["bands"] == [1, 2, 3]


def test_run_summary_preview_and_prefect_artifact(segmented):
    from PIL import Image
    from prefect.artifacts import Artifact

    doc = json.loads((segmented / "run.json").read_text())
    classes = doc["summary"]["classes"]
    assert sum(c["share"] for c in classes.values()) == pytest.approx(1.0)
    labels = open_labels(segmented / "labels.zarr")[:]  # counted by the COG's blocks
    assert [c["pixels"] for c in classes.values()] == np.bincount(
        labels.ravel(), minlength=256)[:len(classes)].tolist()
    assert doc["summary"]["nodata_pixels"] == int((labels == 255).sum())
    for c in classes.values():
        assert c["area_m2"] == pytest.approx(c["pixels"] * 0.05 * 0.05)
    with Image.open(segmented / "preview.png") as im:
        assert im.width > 2 * 384 and im.height > 384  # image | labels, plus a legend
    artifact = Artifact.get("segment-summary")
    assert artifact is not None and "| class | pixels | share | area m² |" in artifact.data
    assert "cluster 0" in artifact.data


def test_qgis_styles_and_stac_item_come_with_the_outputs(segmented):
    import sqlite3

    item = json.loads((segmented / "item.json").read_text())
    assert item["type"] == "Feature" and item["properties"]["proj:code"] == "EPSG:25833"
    assert set(item["assets"]) >= {"labels", "zarr", "polygons", "preview", "manifest"}
    with sqlite3.connect(segmented / "polygons.gpkg") as db:
        rows = db.execute("SELECT f_table_name, useAsDefault FROM layer_styles").fetchall()
    assert rows == [("polygons", 1)]
    assert "paletted" in (segmented / "labels.qml").read_text()


def test_outputs_open_in_gis_clients_as_delivered(segmented):
    """GDAL's own API reads the class names, attribute table and Zarr georeferencing; the
    STAC item validates offline against the published schemas."""
    from tests.gdal_capi import rasterio_gdal
    from tests.schemas import stac_item_errors

    doc = json.loads((segmented / "run.json").read_text())
    gdal = rasterio_gdal()
    cog = gdal.describe(str(segmented / "labels.tif"))
    names = doc["model"]["class_names"]
    assert cog["category_names"] == names
    counts = {row[1]: int(float(row[5])) for row in cog["rat_rows"]}
    assert counts == {n: c["pixels"] for n, c in doc["summary"]["classes"].items()}
    zarr_info = gdal.describe(f'ZARR:"{segmented / "labels.zarr"}":/labels')
    assert zarr_info["nodata"] == 255 and 'AUTHORITY["EPSG","25833"]' in zarr_info["wkt"]
    assert zarr_info["geotransform"] == pytest.approx(cog["geotransform"], rel=1e-9)
    assert doc["outputs"]["cog_aux"] == str(segmented / "labels.tif.aux.xml")
    item = json.loads((segmented / "item.json").read_text())
    assert item["assets"]["labels_aux"]["href"] == "./labels.tif.aux.xml"
    assert item["properties"]["stego:datetime_source"] == "processing time"
    assert any("no acquisition time" in w for w in doc["warnings"])
    assert stac_item_errors(item) == []


def test_datetime_option_sets_the_acquisition_time(segmented, fitted, demo_scene, small_yaml):
    code = main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out",
                 str(segmented), "--config", str(small_yaml), "-q",
                 "--datetime", "2023-07-01T11:30:00+02:00"])
    assert code == 0
    props = json.loads((segmented / "item.json").read_text())["properties"]
    assert props["datetime"] == "2023-07-01T09:30:00Z"
    assert props["stego:datetime_source"] == "stac.datetime"
    assert props["created"] > "2025"
    assert main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out",
                 str(segmented), "--datetime", "yesterday", "-q"]) == 2


def test_evaluate_and_name_clusters_from_the_cli(segmented, fitted, demo_scene, tmp_path,
                                                 capsys):
    import shutil

    code = main(["evaluate", str(segmented / "labels.tif"), str(demo_scene[1]),
                 "--image", str(demo_scene[0]), "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    assert "accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 < metrics["accuracy"] <= 100 and len(metrics["classes"]) == 5
    assert (tmp_path / "eval" / "confusion.png").exists()
    assert (tmp_path / "eval" / "preview.png").exists()
    model = tmp_path / "named"
    shutil.copytree(fitted, model)
    assert main(["name-clusters", str(model), "--from",
                 str(tmp_path / "eval" / "metrics.json")]) == 0
    names = json.loads((model / "model.json").read_text())["class_names"]
    matched = set(metrics["matching"].values())
    assert matched <= set(names) and len(matched) == 4  # 4 clusters matched to 5 classes
    assert main(["evaluate", str(segmented / "labels.tif"), "--out", str(tmp_path / "e")]) == 2


@pytest.mark.parametrize("fmt", ["parquet", "fgb"])
def test_polygons_as_geoparquet_or_flatgeobuf(fitted, demo_scene, small_yaml, tmp_path, fmt,
                                              segmented):
    code = main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out",
                 str(tmp_path / "o"), "--config", str(small_yaml),
                 "--set", f"vectorize.format={fmt}", "-q"])
    assert code == 0
    path = tmp_path / "o" / f"polygons.{fmt}"
    reference = pyogrio.read_info(segmented / "polygons.gpkg", layer="polygons")["features"]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        geo = json.loads(table.schema.metadata[b"geo"])
        assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["crs"]
        assert table.num_rows == reference
        assert {"class_id", "class_name", "area_m2", "bbox"} <= set(table.column_names)
        assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
        item = json.loads((tmp_path / "o" / "item.json").read_text())
        assert item["assets"]["polygons"]["type"] == "application/vnd.apache.parquet"
    else:
        assert pyogrio.read_info(path)["features"] == reference
    assert not (tmp_path / "o" / "polygons.gpkg").exists()
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["outputs"]["polygons"] == str(path)


def test_json_mode_for_cron(fitted, demo_scene, small_yaml, tmp_path, capsys):
    code = main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out",
                 str(tmp_path / "o"), "--config", str(small_yaml), "--json"])
    assert code == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["status"] == "complete"
    events = [json.loads(x) for x in captured.err.splitlines() if x.startswith('{"event"')]
    assert events and events[-1]["done"] == events[-1]["total"] == 16


def test_a_rerun_resumes_and_reproduces_the_same_labels(segmented, fitted, demo_scene,
                                                        small_yaml, tmp_path):
    import shutil

    before = (segmented / "labels.tif").read_bytes()
    # pretend the run was killed after some blocks: an unfinished store is left behind
    from pipeline.io.zarr_store import partial_path

    partial = partial_path(segmented / "labels.zarr", "killed")
    shutil.copytree(segmented / "labels.zarr", partial)
    shutil.rmtree(segmented / "labels.zarr")  # killed before the store was finalized:
    (partial / ".zmetadata").unlink()  # not consolidated yet, bookkeeping still there
    import zarr

    from pipeline.io.zarr_writes import RESUME

    resume = zarr.open_group(str(partial), mode="r+", use_consolidated=False).create_group(RESUME)
    for name, dtype in (("block_done", "uint8"), ("block_rows_done", "int32")):
        resume.create_array(name, shape=(4, 4), chunks=(1, 1), dtype=dtype, fill_value=0)
    resume["block_done"][:2, :] = 1  # the first two block rows were done
    code = main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out",
                 str(segmented), "--config", str(small_yaml), "-q"])
    assert code == 0
    doc = json.loads((segmented / "run.json").read_text())
    assert doc["counts"]["blocks_computed"] == 8 and doc["counts"]["blocks_resumed"] == 8
    assert (segmented / "labels.tif").read_bytes() == before


def test_a_run_killed_after_the_store_was_finalized_does_not_recompute(
        segmented, fitted, demo_scene, small_yaml):
    before = (segmented / "labels.tif").read_bytes()
    (segmented / "labels.tif").unlink()  # killed while writing the COG
    (segmented / ".labels.tif.build.tif").write_bytes(b"half a file")
    code = main(["segment", str(demo_scene[0]), "--model", str(fitted), "--out",
                 str(segmented), "--config", str(small_yaml), "-q"])
    assert code == 0
    doc = json.loads((segmented / "run.json").read_text())
    assert doc["counts"]["blocks_computed"] == 0 and doc["counts"]["blocks_resumed"] == 16
    assert "infer-blocks" in doc["cached_stages"] and "write-cog" not in doc["cached_stages"]
    assert (segmented / "labels.tif").read_bytes() == before
    assert not (segmented / ".labels.tif.build.tif").exists()


def test_feature_kmeans_fits_and_segments_from_the_cli(prefect_harness, demo_scene, small_yaml,
                                                       tmp_path):
    model = tmp_path / "fm"
    code = main(["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--clusters", "3",
                 "--weights", "random", "--backbone-arg", "depth=2", "--backbone-arg",
                 "embed_dim=64", "--backbone-arg", "num_heads=2", "--out", str(model),
                 "--set", "fit.crops=4", "--set", "fit.crop_size=64", "-q"])
    assert code == 0
    code = main(["segment", str(demo_scene[0]), "--model", str(model), "--out",
                 str(tmp_path / "o"), "--config", str(small_yaml), "-q"])
    assert code == 0
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["model"]["weights"]["source"] == "random"


def test_stego_is_the_default_method_and_trains_from_the_cli(prefect_harness, demo_scene,
                                                             small_yaml, tmp_path, capsys):
    model = tmp_path / "sm"
    code = main(["fit", str(demo_scene[0]), "--clusters", "3", "--weights", "random",
                 "--backbone-arg", "depth=2", "--backbone-arg", "embed_dim=64",
                 "--backbone-arg", "num_heads=2", "--out", str(model),
                 "--set", "fit.crops=8", "--set", "fit.crop_size=64", "--set", "stego.steps=6",
                 "--set", "stego.batch_size=4", "--set", "stego.log_every=3", "-q"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "stego" and result["steps_per_second"] > 0
    assert set(result["stage_seconds"]) == {"sample", "features", "knn", "train"}
    assert (model / "loss.png").stat().st_size > 0 and (model / ".cache" / "features.zarr").exists()
    history = json.loads((model / "training.json").read_text())["history"]
    assert [h["step"] for h in history] == [3, 6]
    code = main(["segment", str(demo_scene[0]), "--model", str(model), "--out",
                 str(tmp_path / "o"), "--config", str(small_yaml), "-q"])
    assert code == 0
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["model"]["method"] == "stego" and doc["status"] == "complete"


def test_the_demo_command_runs_the_whole_path_offline(prefect_harness, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", str(tmp_path / "d"), "--size", "256", "--pretrain-steps", "2",
                 "--steps", "4", "-q"]) == 0
    captured = capsys.readouterr()
    assert "self-supervised pretraining" in captured.err  # no weights: it pretrains its own
    rows = [line for line in captured.out.splitlines() if line.startswith("| ")]
    assert rows[0] == "| method | accuracy % | mIoU % |"
    methods = [r.split("|")[1].strip() for r in rows[1:]]
    assert methods == ["pixel-kmeans", "feature-kmeans (self-pretrained)",
                       "STEGO + CRF (self-pretrained)",
                       "few labels: 20 points per class, classifier (untrained tiny ViT)"]
    assert all(0 <= float(r.split("|")[2]) <= 100 for r in rows[1:])
    assert "labels.tif" in captured.out
    d = tmp_path / "d"
    assert json.loads((d / "backbone" / "backbone.json").read_text())["steps"] == 2
    names = sorted(p.name for p in (d / "output").iterdir())
    assert {"labels.tif", "labels.zarr", "polygons.gpkg", "run.json"} <= set(names)
    for method in ("pixel-kmeans", "feature-kmeans", "stego", "classifier"):
        assert (d / "compare" / method / "evaluation" / "metrics.json").exists()
    few = json.loads((d / "models" / "classifier" / "model.json").read_text())
    assert few["class_names"] == sorted(DEMO_CLASSES)  # the analyst's names, from the points
    assert few["fit"]["samples"]["pixels_per_class"] == dict.fromkeys(sorted(DEMO_CLASSES), 20)
    stego_model = json.loads((d / "models" / "stego" / "model.json").read_text())
    assert stego_model["backbone"]["weights"]["source"] == "directory"
    assert stego_model["params"]["crf"] is True
    assert (d / "scene_labels.tif").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_bad_input_is_one_line_on_stderr_with_exit_code_2(tmp_path, pixel_model):
    res = _cli("segment", str(tmp_path / "missing.tif"), "--model", str(pixel_model), "--out",
               str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {tmp_path / 'missing.tif'}: file not found"
    assert not (tmp_path / "o").exists()


def test_usage_errors_are_one_line_with_exit_code_2():
    res = _cli("segment", "x.tif")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: stego segment:")


@pytest.mark.parametrize("argv,expected", [
    (["fit", "X", "--out", "m", "--clusters", "1"], "--clusters: must be between 2 and 254"),
    (["segment", "X", "--model", "nomodel", "--out", "o"], "model directory not found"),
    (["segment", "X", "--model", "M", "--out", "o", "--set", "tiling.nope=1"], "tiling.nope"),
])
def test_in_process_errors_return_2(prefect_harness, demo_scene, pixel_model, tmp_path, capsys,
                                    argv, expected):
    argv = [str(demo_scene[0]) if a == "X" else str(pixel_model) if a == "M" else
            str(tmp_path / a) if a in ("m", "o", "nomodel") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


def test_deploy_and_run_deployment_report_bad_input_in_one_line(prefect_harness, pixel_model,
                                                                tmp_path, capsys):
    assert main(["run-deployment", "no-such-deployment"]) == 2
    assert "no such deployment" in capsys.readouterr().err
    assert main(["deploy", "--name", "n", "--cron", "not a cron", "--input-glob",
                 str(tmp_path / "*.tif"), "--model", str(pixel_model), "--out-root",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --cron") and err.count("\n") == 1


def test_finished_stages_are_cached_by_content_not_by_run(fitted, demo_scene, small_yaml,
                                                          tmp_path):
    """Prefect caches each expensive stage under input checksum, model, config, block windows
    and output directory; a hit counts only while its files are still the ones it wrote."""
    out = tmp_path / "out"
    args = ["segment", str(demo_scene[0]), "--model", str(fitted), "--out", str(out),
            "--config", str(small_yaml), "-q"]

    def run(*extra: str) -> dict:
        assert main([*args, *extra]) == 0
        return json.loads((out / "run.json").read_text())

    first = run()
    assert first["cached_stages"] == []
    cog, gpkg = (out / "labels.tif").read_bytes(), (out / "polygons.gpkg").stat().st_mtime_ns
    again = run()
    assert again["cached_stages"] == ["infer-blocks", "write-cog", "vectorize"]
    assert (out / "polygons.gpkg").stat().st_mtime_ns == gpkg  # not rewritten
    (out / "labels.tif").unlink()  # a cached stage whose output is gone runs again
    assert run()["cached_stages"] == ["infer-blocks", "vectorize"]
    assert (out / "labels.tif").read_bytes() == cog
    # another sieve threshold: only the polygons depend on it
    other = run("--set", "vectorize.min_pixels=40")
    assert other["cached_stages"] == ["infer-blocks", "write-cog"]
    # back to the first settings: the cached polygons are no longer on disk, so they are redone
    assert run()["cached_stages"] == ["infer-blocks", "write-cog"]
    assert run("--fresh")["cached_stages"] == []


def test_the_cli_lets_idle_openmp_threads_sleep_unless_the_user_says_otherwise(tmp_path):
    """Spinning OpenMP threads slowed the in-process worker's model by 20-30 % (issue 5).
    OpenMP reads the policy once, when torch loads, so the CLI sets it before that."""
    import subprocess
    import sys

    code = ("import os, sys\nfrom flows import cli\n"
            "cli._openmp_defaults = lambda real=cli._openmp_defaults: (\n"
            "    print('torch loaded before:', 'torch' in sys.modules), real())\n"
            "cli.main(['segment', 'missing.tif', '--model', 'm', '--out', 'o'])\n"
            "print(os.environ['OMP_WAIT_POLICY'])")

    def run(env_value: str | None) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if env_value:
            env["OMP_WAIT_POLICY"] = env_value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, cwd=tmp_path,
                             check=True)
        return out.stdout.strip().splitlines()

    assert run(None) == ["torch loaded before: False", "PASSIVE"]
    assert run("ACTIVE")[-1] == "ACTIVE"


def test_the_cli_keeps_gdals_block_cache_small_unless_the_user_sets_it(monkeypatch):
    """GDAL's default cache is 5 % of RAM and would grow with the raster (issue 5 memory)."""
    from flows.cli import _gdal_defaults

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    _gdal_defaults()
    assert os.environ["GDAL_CACHEMAX"] == "256"
    monkeypatch.setenv("GDAL_CACHEMAX", "1024")
    _gdal_defaults()
    assert os.environ["GDAL_CACHEMAX"] == "1024"
