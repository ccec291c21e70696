"""Shared fixtures: small generated scenes, fitted tiny models, the Prefect test harness."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.config import RunConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when it is absent (users' clones)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture
def one_torch_thread():
    """Small torch ops run fastest and most reproducibly on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect flows run against a temporary SQLite database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 384 px generated aerial scene (image, labels) with a nodata collar."""
    from pipeline.demo import write_demo_scene

    d = tmp_path_factory.mktemp("scene")
    return write_demo_scene(d / "scene.tif", size=384, seed=1)


@pytest.fixture(scope="session")
def pixel_model(tmp_path_factory, demo_scene) -> Path:
    """A pixel-kmeans model fitted on the demo scene (no Prefect)."""
    from pipeline.fit.methods import fit_pixel_kmeans
    from pipeline.io.crops import sample_crops
    from pipeline.io.raster import compute_scaling, open_raster_info
    from pipeline.models.store import save_model

    info = open_raster_info(demo_scene[0])
    crops = sample_crops([(info, compute_scaling(info))], 16, 64, seed=0)
    model, _ = fit_pixel_kmeans(crops, 4, 20_000, 20, seed=0)
    return save_model(model, tmp_path_factory.mktemp("pixel_model"), {})


@pytest.fixture(scope="session")
def feature_model(tmp_path_factory, demo_scene) -> Path:
    """A feature-kmeans model on a tiny random ViT-S/8-shaped backbone."""
    from pipeline.fit.methods import fit_feature_kmeans
    from pipeline.io.crops import sample_crops
    from pipeline.io.raster import compute_scaling, open_raster_info
    from pipeline.models.store import save_model

    info = open_raster_info(demo_scene[0])
    crops = sample_crops([(info, compute_scaling(info))], 8, 64, seed=0)
    model, _ = fit_feature_kmeans(crops, 4, "vit_small_patch8_224.dino", "random", TINY_VIT,
                                  iterations=10, seed=0)
    return save_model(model, tmp_path_factory.mktemp("feature_model"), {})


def small_config(**tiling) -> RunConfig:
    """Small tiles and blocks so that a few hundred pixels make many blocks and tiles."""
    t = {"tile_size": 64, "overlap": 16, "block_size": 96, "chunk_size": 32, "batch_size": 3}
    t.update(tiling)
    return RunConfig.model_validate({"tiling": t, "dask": {"processes": False}})


def scene_folder(folder: Path, size: int) -> Path:
    """``folder`` with two small generated scenes a.tif and b.tif (label rasters removed)."""
    from pipeline.demo import write_demo_scene

    for i, name in enumerate("ab"):
        _, labels = write_demo_scene(folder / f"{name}.tif", size=size, seed=i + 1)
        labels.unlink()
    return folder


def write_raster(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633",
                 transform: Affine | None = None, mask: np.ndarray | None = None,
                 nodata: float | None = None, **extra) -> Path:
    """Write (bands, h, w) data as a GeoTIFF, optionally with an internal mask."""
    bands, h, w = data.shape
    transform = transform or Affine(0.5, 0, 500000, 0, -0.5, 5800000)
    profile = {"driver": "GTiff", "width": w, "height": h, "count": bands,
               "dtype": data.dtype.name, "transform": transform, "nodata": nodata, **extra}
    if crs:
        profile["crs"] = crs
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
    return path


os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on 127.0.0.1 with buckets ``scenes`` and ``results``; its
    endpoint and credentials are in the environment for the session (skipped, with the
    reason, where it cannot start)."""
    from tests import s3_server as s3

    started = s3.start(tmp_path_factory.mktemp("s3"))
    if isinstance(started, str):
        pytest.skip(f"no S3 server: {started}")
    proc, server = started
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3.stop(proc)


@pytest.fixture(scope="module")
def worker_processes(tmp_path_factory):
    """A Dask LocalCluster of two worker processes started in their own empty working
    directory (so a relative path of the client means nothing there), one per test module."""
    from dask.distributed import LocalCluster

    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("workers"))
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster:
            os.chdir(here)
            yield cluster
    finally:
        os.chdir(here)
