"""``tiling.block_size: auto``: the block edge follows the cluster's worker threads, the labels
do not change, run.json says what was planned, and resume and segment-folder's skipping keep
working (issue 31, item 4)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
import zarr
from dask.distributed import LocalCluster

from flows.segment_flow import segment
from pipeline.segment.plan import plan_segment
from tests.conftest import small_config


def _labels(out):
    with rasterio.open(out / "labels.tif") as ds:
        labels = ds.read(1)
    confidence = zarr.open_group(str(out / "labels.zarr"), mode="r")["confidence"][:]
    return labels, confidence


def _auto(**dask):
    cfg = small_config(block_size="auto")  # tile 64, overlap 16 (stride 48), chunk 32
    for key, value in dask.items():
        setattr(cfg.dask, key, value)
    return cfg


@pytest.fixture(scope="module")
def fixed(prefect_harness, demo_scene, pixel_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixed") / "o"
    segment(demo_scene[0], pixel_model, out, small_config(), progress=False)  # 96: 16 blocks
    return _labels(out)


@pytest.fixture(scope="module")
def auto_run(prefect_harness, demo_scene, pixel_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "o"
    doc = segment(demo_scene[0], pixel_model, out, _auto(), progress=False)
    return out, doc


def test_auto_gives_the_labels_of_a_fixed_block_size(auto_run, fixed):
    out, doc = auto_run
    assert doc["config"]["tiling"]["block_size"] == 288  # one thread: 2 x 2 blocks, not 4 x 4
    labels, confidence = _labels(out)
    np.testing.assert_array_equal(labels, fixed[0])
    np.testing.assert_array_equal(confidence, fixed[1])


def test_run_json_states_the_block_size_tasks_per_thread_and_amplification(auto_run):
    out, doc = auto_run
    on_disk = json.loads((out / "run.json").read_text())
    par = on_disk["parallelism"]
    assert par == doc["parallelism"]
    assert par["block_size_requested"] == "auto" and par["block_size"] == 288
    assert par["blocks"] == 4 == on_disk["counts"]["blocks_total"] == len(on_disk["blocks"])
    assert par["worker_threads"] == 1 and par["threads_of"] == "local cluster"
    assert par["blocks_per_thread"] == 4
    assert par["compute_amplification"] == pytest.approx(
        on_disk["counts"]["compute_amplification"])
    assert 1 < par["compute_amplification"] < 3


def test_an_identical_rerun_resumes(auto_run, demo_scene, pixel_model):
    out, doc = auto_run
    again = segment(demo_scene[0], pixel_model, out, _auto(), progress=False)
    assert again["fingerprint"] == doc["fingerprint"]
    assert "infer-blocks" in again["cached_stages"]
    assert again["counts"]["blocks_computed"] == 0 and again["counts"]["blocks_resumed"] == 4


def test_the_fingerprint_holds_the_resolved_edge(demo_scene, pixel_model):
    one = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out", _auto())
    same = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out", _auto())
    two = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out",
                       _auto(threads_per_worker=2))
    pinned = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out",
                          small_config(block_size=288))
    assert one.fingerprint == same.fingerprint == pinned.fingerprint  # the same blocks
    assert two.config.tiling.block_size == 96 and len(two.blocks) == 16
    assert two.parallelism["blocks_per_thread"] == 8
    assert two.fingerprint != one.fingerprint  # another cluster size: another store
    assert pinned.parallelism["block_size_requested"] == 288


def test_auto_counts_the_threads_of_the_schedulers_workers(fixed, demo_scene, pixel_model,
                                                          tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False,
                      dashboard_address=None) as cluster:
        cfg = _auto(scheduler_address=cluster.scheduler_address)
        doc = segment(demo_scene[0], pixel_model, tmp_path / "o", cfg, progress=False)
    par = doc["parallelism"]
    assert par["threads_of"] == "scheduler" and par["worker_threads"] == 3
    assert par["block_size"] == 96 and par["blocks"] == 16  # 12 needed
    labels, confidence = _labels(tmp_path / "o")
    np.testing.assert_array_equal(labels, fixed[0])
    np.testing.assert_array_equal(confidence, fixed[1])


def test_a_pinned_block_size_that_idles_threads_says_so(demo_scene, pixel_model):
    cfg = small_config(block_size=384)
    cfg.dask.threads_per_worker = 3
    plan = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out", cfg)
    assert plan.parallelism["blocks"] == 1 and plan.parallelism["worker_threads"] == 3
    assert any("1 block(s) for 3 worker threads: 2 idle" in w and "auto" in w
               for w in plan.warnings)


def test_segment_folder_skips_a_scene_done_with_auto_on_a_cluster_of_another_size(
        prefect_harness, demo_scene, pixel_model, tmp_path):
    from flows.batch_flow import is_done, segment_folder

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    shutil.copy(demo_scene[0], scenes / "a.tif")
    cfg = _auto().model_dump(mode="json")
    first = segment_folder(str(scenes / "*.tif"), str(pixel_model), str(tmp_path / "out"), cfg)
    assert first["processed"] == [str(scenes / "a.tif")]
    again = segment_folder(str(scenes / "*.tif"), str(pixel_model), str(tmp_path / "out"), cfg)
    assert again["skipped"] == [str(scenes / "a.tif")]
    out = tmp_path / "out" / "a"
    bigger = _auto(threads_per_worker=2)  # would resolve to 96, the labels would not change
    assert is_done(str(scenes / "a.tif"), str(pixel_model), out, bigger)
    other_tiles = _auto()
    other_tiles.tiling.overlap = 8
    assert not is_done(str(scenes / "a.tif"), str(pixel_model), out, other_tiles)
    # a scene done as one block has a grid of its own (other labels near the edges): auto,
    # which never makes this scene one block, does it again
    one_block = tmp_path / "one-block"
    segment(scenes / "a.tif", pixel_model, one_block, small_config(block_size=384),
            progress=False)
    assert is_done(str(scenes / "a.tif"), str(pixel_model), one_block,
                   small_config(block_size=384))
    assert not is_done(str(scenes / "a.tif"), str(pixel_model), one_block, _auto())


def test_an_unfinished_auto_run_resumes_on_a_cluster_of_another_size(
        prefect_harness, demo_scene, pixel_model, fixed, tmp_path):
    from pipeline.segment.blocks import block_job, infer_and_write_block, prepare_labels_store

    out = tmp_path / "o"
    crashed = plan_segment(str(demo_scene[0]), str(pixel_model), str(out), _auto())  # 288
    store, todo = prepare_labels_store(crashed)
    job = block_job(crashed, store, 1)
    for block in todo[:2]:  # the crashed run had finished two of its four blocks
        infer_and_write_block(block, job)
    bigger = _auto(threads_per_worker=2)  # alone, this cluster would make 16 blocks of 96
    doc = segment(demo_scene[0], pixel_model, out, bigger, progress=False)
    assert doc["parallelism"]["block_size"] == 288 and doc["parallelism"]["blocks"] == 4
    assert doc["counts"]["blocks_resumed"] == 2 and doc["counts"]["blocks_computed"] == 2
    assert any("the unfinished run this one resumes" in w for w in doc["warnings"])
    labels, confidence = _labels(out)
    np.testing.assert_array_equal(labels, fixed[0])
    np.testing.assert_array_equal(confidence, fixed[1])
    # a finished run is not adopted, and --fresh plans for the cluster it runs on
    again = segment(demo_scene[0], pixel_model, out, bigger, progress=False, fresh=True)
    assert again["parallelism"]["block_size"] == 96 and again["counts"]["blocks_computed"] == 16


def test_on_a_scheduler_the_cli_splits_for_its_threads_unless_the_block_size_is_pinned(
        prefect_harness, demo_scene, pixel_model, fixed, tmp_path, monkeypatch):
    from flows.cli import main

    monkeypatch.setenv("STEGO_CACHE", str(tmp_path / "cache"))
    unpinned = tmp_path / "unpinned.yaml"
    unpinned.write_text("tiling: {tile_size: 64, overlap: 16, chunk_size: 32, batch_size: 2}\n")
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=False,
                      dashboard_address=None) as cluster:
        for name, extra in (("auto", []), ("pinned", ["--set", "tiling.block_size=384"])):
            assert main(["segment", str(demo_scene[0]), "--model", str(pixel_model), "--out",
                         str(tmp_path / name), "--config", str(unpinned), "-q",
                         "--scheduler-address", cluster.scheduler_address, *extra]) == 0
    auto = json.loads((tmp_path / "auto" / "run.json").read_text())
    assert auto["parallelism"]["block_size_requested"] == "auto"
    assert auto["parallelism"]["block_size"] == 96 and auto["parallelism"]["blocks"] == 16
    np.testing.assert_array_equal(_labels(tmp_path / "auto")[0], fixed[0])
    pinned = json.loads((tmp_path / "pinned" / "run.json").read_text())
    assert pinned["parallelism"]["block_size_requested"] == 384
    assert any("2 idle" in w for w in pinned["warnings"])


def test_a_flow_given_a_scheduler_and_no_block_size_splits_for_the_cluster():
    from pipeline.config import blocks_follow_the_cluster, build_config

    asked = build_config({"dask": {"scheduler_address": "tcp://127.0.0.1:8786"}})
    assert blocks_follow_the_cluster(asked).tiling.block_size == "auto"
    pinned = build_config({"dask": {"scheduler_address": "tcp://127.0.0.1:8786"},
                           "tiling": {"block_size": 10240}})
    assert blocks_follow_the_cluster(pinned).tiling.block_size == 10240
    assert blocks_follow_the_cluster(build_config({})).tiling.block_size == 10240  # local
