"""Execution on Dask: worker processes, an existing scheduler, models loaded once per worker."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from dask.distributed import LocalCluster

from flows.segment_flow import segment
from pipeline.models.store import model_hash
from pipeline.segment.executor import cached_model
from tests.conftest import small_config


def _labels(out):
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def reference(prefect_harness, demo_scene, pixel_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "o"
    segment(demo_scene[0], pixel_model, out, small_config(), progress=False)
    return _labels(out)


def test_two_worker_processes_give_the_same_labels(reference, demo_scene, pixel_model,
                                                   tmp_path):
    cfg = small_config()
    cfg.dask.workers = 2
    cfg.dask.processes = True
    doc = segment(demo_scene[0], pixel_model, tmp_path / "o", cfg, progress=False)
    np.testing.assert_array_equal(_labels(tmp_path / "o"), reference)
    assert doc["config"]["dask"]["workers"] == 2


def test_an_existing_scheduler_can_be_used(reference, demo_scene, pixel_model, tmp_path):
    from distributed.diagnostics.plugin import SchedulerPlugin

    class CountFinished(SchedulerPlugin):
        finished: list[str] = []

        def transition(self, key, start, finish, *args, **kwargs):
            if finish == "memory":
                CountFinished.finished.append(str(key))

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        cluster.scheduler.add_plugin(CountFinished())
        cfg = small_config()
        cfg.dask.scheduler_address = cluster.scheduler_address
        doc = segment(demo_scene[0], pixel_model, tmp_path / "o", cfg, progress=False)
    ran = [key.split("-")[0] for key in CountFinished.finished]
    assert ran.count("infer_and_write_block") == 16  # every block ran on this cluster
    assert ran.count("vectorize") == 1  # and the polygons' (one block here) too
    assert ran.count("cog") == 1  # and the COG's
    assert doc["polygons"]["blocks_on"] == "workers"
    np.testing.assert_array_equal(_labels(tmp_path / "o"), reference)


def test_an_unreachable_scheduler_is_a_clear_error(prefect_harness, demo_scene, pixel_model,
                                                   tmp_path):
    from pipeline.errors import InputError

    cfg = small_config()
    cfg.dask.scheduler_address = "tcp://127.0.0.1:9"
    cfg.dask.connect_timeout = 1
    with pytest.raises(InputError, match="cannot reach Dask scheduler"):
        segment(demo_scene[0], pixel_model, tmp_path / "o", cfg, progress=False)


def test_models_are_loaded_once_per_worker(pixel_model):
    h = model_hash(pixel_model)
    first = cached_model(str(pixel_model), h, "cpu")
    assert cached_model(str(pixel_model), h, "cpu") is first


def test_blocks_read_pixels_from_the_file_not_from_the_scheduler(demo_scene, pixel_model):
    import pickle

    from pipeline.segment.blocks import block_job
    from pipeline.segment.plan import plan_segment

    plan = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out", small_config())
    job = block_job(plan, "/tmp/store", 1)
    # what is shipped per task: a block description and a job of paths and numbers, no arrays
    assert len(pickle.dumps((plan.blocks[0], job))) < 4000


def test_transient_io_errors_are_retried_with_backoff_but_bad_input_is_not(monkeypatch):
    import time

    from pipeline.errors import InputError
    from pipeline.segment.blocks import retry_transient

    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise OSError("NFS hiccup")
        return {"ok": True}

    assert retry_transient(flaky, 3, 0.5) == {"ok": True, "io_retries": 2}
    assert sleeps == [0.5, 1.0]

    def bad():
        calls["n"] += 1
        raise InputError("x.tif", "corrupt")

    calls["n"] = 0
    with pytest.raises(InputError):
        retry_transient(bad, 3, 0.5)
    assert calls["n"] == 1
    with pytest.raises(OSError):
        retry_transient(lambda: (_ for _ in ()).throw(OSError("gone")), 2, 0.1)


def test_simplification_tolerance_is_given_in_metres(demo_scene, pixel_model):
    from pipeline.segment.plan import plan_segment, simplify_tolerance_crs

    cfg = small_config()
    cfg.vectorize.simplify_tolerance = 0.5
    plan = plan_segment(str(demo_scene[0]), str(pixel_model), "/tmp/unused-out", cfg)
    assert simplify_tolerance_crs(plan) == pytest.approx(0.5)  # EPSG:25833 is in metres
    from dataclasses import replace

    from pyproj import CRS

    geo = replace(plan, info=replace(plan.info, crs_wkt=CRS.from_epsg(4326).to_wkt(),
                                     transform=(1e-5, 0, 13.0, 0, -1e-5, 52.4)))
    assert simplify_tolerance_crs(geo) == pytest.approx(0.5 / (111_320 * 0.6103), rel=0.01)


def test_a_full_disk_is_not_retried(monkeypatch):
    import errno
    import time

    from pipeline.segment.blocks import retry_transient

    calls = {"n": 0}
    monkeypatch.setattr(time, "sleep", lambda s: None)

    def full():
        calls["n"] += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        retry_transient(full, 3, 0.1)
    assert calls["n"] == 1


def test_stale_temporaries_are_removed_but_the_partial_store_is_kept(tmp_path):
    from pipeline.segment.resume import clean_stale_temporaries

    for name in (".polygons.gpkg.tmp-123.gpkg", ".labels.tif.build.tif", ".run.json.tmp-9"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".labels.zarr.partial-0123abcd").mkdir()
    (tmp_path / "labels.tif").write_text("keep")
    removed = clean_stale_temporaries(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".labels.zarr.partial-0123abcd",
                                                          "labels.tif"]


def test_one_worker_runs_in_process_and_several_in_their_own_processes():
    """One in-process worker saves process start, re-imports and shutdown on small runs."""
    from pipeline.config import DaskConfig
    from pipeline.segment.executor import dask_client

    with dask_client(DaskConfig()) as client:
        assert set(client.run(os.getpid).values()) == {os.getpid()}
    with dask_client(DaskConfig(workers=2)) as client:
        pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids
