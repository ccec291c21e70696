"""Relative paths on the command line work with workers in another working directory: the
input, model and output paths are made absolute before anything is sent to a worker."""

from __future__ import annotations

import shutil

import numpy as np
import rasterio

from flows.cli import main

SMALL = "tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 32, batch_size: 2}\n"


def test_relative_input_model_and_output_with_workers_elsewhere(
        prefect_harness, demo_scene, pixel_model, tmp_path, monkeypatch):
    from dask.distributed import LocalCluster

    client_dir, worker_dir = tmp_path / "client", tmp_path / "workers"
    client_dir.mkdir()
    worker_dir.mkdir()
    shutil.copy(demo_scene[0], client_dir / "scene.tif")
    shutil.copytree(pixel_model, client_dir / "model")
    monkeypatch.chdir(worker_dir)  # the worker processes start (and stay) here
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        monkeypatch.chdir(client_dir)
        (client_dir / "cluster.yaml").write_text(
            SMALL + f"dask: {{scheduler_address: '{cluster.scheduler_address}'}}\n")
        assert main(["segment", "scene.tif", "--model", "model", "--out", "out", "--config",
                     "cluster.yaml", "-q"]) == 0
        (client_dir / "local.yaml").write_text(SMALL + "dask: {workers: 1, processes: false}\n")
        assert main(["segment", "scene.tif", "--model", "model", "--out", "local", "--config",
                     "local.yaml", "-q"]) == 0
    with rasterio.open(client_dir / "out" / "labels.tif") as a, \
            rasterio.open(client_dir / "local" / "labels.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert list(worker_dir.glob("out*")) == [] and list(worker_dir.glob(".*partial*")) == []
