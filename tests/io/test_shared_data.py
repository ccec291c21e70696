"""Real rasters from ../shared/data (skipped when absent): bands, dtypes, nodata, no CRS."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import pytest
import rasterio

from flows.cli import main
from tests.conftest import shared_file

CONFIG = """
tiling: {tile_size: 128, overlap: 16, block_size: 224, chunk_size: 32, batch_size: 8}
dask: {workers: 1, processes: false}
"""


@pytest.fixture()
def cfg(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG)
    return str(path)


def _segment(src, model, out, cfg, *extra):
    return main(["segment", str(src), "--model", str(model), "--out", str(out),
                 "--config", cfg, "-q", *extra])


def _check_nodata_follows_mask(src, out, bands=(1, 2, 3)):
    with rasterio.open(src) as ds, rasterio.open(out / "labels.tif") as lab:
        valid = np.all(ds.read_masks(list(bands)) > 0, axis=0)
        labels = lab.read(1)
        assert lab.crs == ds.crs and lab.transform == ds.transform
    assert (labels[~valid] == 255).all() and (labels[valid] != 255).all()
    return valid


def test_naip_four_band_with_nodata(prefect_harness, pixel_model, tmp_path, cfg):
    src = shared_file("naip_north_dakota", "m_4709963_se_14_1_20200831.tif")
    assert _segment(src, pixel_model, tmp_path / "o", cfg) == 0
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["input"]["bands"] == [1, 2, 3]
    _check_nodata_follows_mask(src, tmp_path / "o")  # declared nodata=0 (no such pixels)


def test_landsat_nodata_collar_is_never_classified(prefect_harness, pixel_model, tmp_path, cfg):
    src = shared_file("landsat7_rgb_byte", "RGB.byte.tif")
    assert _segment(src, pixel_model, tmp_path / "o", cfg) == 0
    valid = _check_nodata_follows_mask(src, tmp_path / "o")
    assert 0.1 < (~valid).mean() < 0.5  # the collar around the rotated scene


def test_spacenet_single_band_needs_a_band_mapping(prefect_harness, pixel_model, tmp_path, cfg,
                                                   capsys):
    src = shared_file("spacenet4_atlanta", "sample_geotiff.tif")
    assert _segment(src, pixel_model, tmp_path / "o", cfg) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}: has 1 band(s)") and "--bands" in err
    assert not (tmp_path / "o").exists()
    assert _segment(src, pixel_model, tmp_path / "o", cfg, "--bands", "1,1,1") == 0
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["scaling"]["kind"] == "percentile" and doc["input"]["dtype"] == "uint16"
    assert 54 <= doc["scaling"]["low"][0] < doc["scaling"]["high"][0] <= 6615
    _check_nodata_follows_mask(src, tmp_path / "o", bands=(1, 1, 1))


def test_potsdam_png_without_crs_works_and_says_so(prefect_harness, pixel_model, tmp_path, cfg,
                                                   capsys):
    src = shared_file("isprs_potsdam", "images", "2_10_0_0_512_512.png")
    assert _segment(src, pixel_model, tmp_path / "o", cfg) == 0
    assert f"warning: {src}: raster has no CRS" in capsys.readouterr().err
    with rasterio.open(tmp_path / "o" / "labels.tif") as lab:
        assert lab.crs is None and lab.shape == (512, 512)
        assert (lab.read(1) != 255).all()
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["input"]["crs"] is None and any("no CRS" in w for w in doc["warnings"])
    _, _, _, fields = pyogrio.raw.read(tmp_path / "o" / "polygons.gpkg", layer="polygons")
    assert len(fields[0]) > 0
