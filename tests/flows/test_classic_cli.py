"""`stego fit --method threshold | region | edge` and `stego segment --refine regions` from the
command line: an NDVI run end to end, and bad parameters as one `error:` line with exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import write_raster

SMALL = ["--set", "tiling.tile_size=32", "--set", "tiling.overlap=8", "--set",
         "tiling.block_size=64", "--set", "tiling.chunk_size=32", "--set",
         "dask.processes=false", "--set", "fit.crops=4", "--set", "fit.crop_size=32", "-q"]


def _four_band(tmp_path):
    """Red, green, blue, NIR: vegetation (left) bright in NIR, bare soil (right) not."""
    rng = np.random.default_rng(0)
    data = np.zeros((4, 64, 64), dtype=np.uint8)
    data[:, :, :32] = np.array([40, 90, 40, 200])[:, None, None]
    data[:, :, 32:] = np.array([150, 120, 90, 140])[:, None, None]
    data = (data + rng.integers(0, 10, data.shape)).astype(np.uint8)
    return write_raster(tmp_path / "rgbn.tif", data)


def _run(capsys, argv):
    from flows.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def _one_error(code, err):
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ndvi_threshold_fits_segments_and_refines(tmp_path, prefect_harness, capsys):
    import rasterio

    src = _four_band(tmp_path)
    code, err = _run(capsys, ["fit", str(src), "--method", "threshold", "--clusters", "2",
                              "--bands", "4,1,2", "--set", "threshold.index=ndvi",
                              "--set", "threshold.nir_band=4", "--out", str(tmp_path / "m"),
                              *SMALL])
    assert code == 0, err
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["params"]["channels"] == {"nir": 0, "red": 1}
    assert meta["params"]["input_bands"] == [4, 1, 2]
    code, err = _run(capsys, ["segment", str(src), "--model", str(tmp_path / "m"), "--bands",
                              "4,1,2", "--refine", "regions", "--out", str(tmp_path / "o"),
                              *SMALL])
    assert code == 0, err
    with rasterio.open(tmp_path / "o" / "labels.tif") as ds:
        labels = ds.read(1)
    # vegetation (NDVI ~0.65) above the threshold, soil (~0.05) below it
    assert (labels[:, :30] == 1).all() and (labels[:, 34:] == 0).all()
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["config"]["model"]["refine"] == "regions"
    # the index was fitted on bands 4,1,2: other bands are refused
    code, err = _run(capsys, ["segment", str(src), "--model", str(tmp_path / "m"),
                              "--out", str(tmp_path / "o2"), *SMALL])
    assert "fitted on bands 4,1,2" in _one_error(code, err)


@pytest.mark.parametrize(("extra", "expect"), [
    (["--method", "threshold", "--clusters", "1"], "--clusters"),
    (["--method", "region", "--clusters", "1"], "--clusters"),
    (["--method", "threshold", "--clusters", "9"], "threshold fits 2 to 8 classes"),
    (["--method", "threshold", "--set", "threshold.index=ndvi", "--set",
      "threshold.nir_band=5"], "threshold.nir_band=5: the raster has 4 band(s)"),
    (["--method", "threshold", "--set", "threshold.index=ndvi", "--set",
      "threshold.nir_band=4"], "not among the bands fed to the model (1,2,3)"),
    (["--method", "threshold", "--set", "threshold.index=ndvi"], "threshold.nir_band"),
    (["--method", "threshold", "--set", "threshold.index=savi"], "threshold.index"),
    (["--method", "region", "--set", "regions.tolerance=0"], "regions.tolerance"),
], ids=["threshold-K<2", "region-K<2", "threshold-K>8", "nir-band-missing",
        "nir-band-not-selected", "ndvi-without-nir", "unknown-index", "zero-tolerance"])
def test_bad_classic_parameters_are_one_line_errors(tmp_path, prefect_harness, capsys, extra,
                                                    expect):
    src = _four_band(tmp_path)
    code, err = _run(capsys, ["fit", str(src), *extra, "--out", str(tmp_path / "m"), *SMALL])
    assert expect in _one_error(code, err)
    assert not (tmp_path / "m" / "model.json").exists()


def test_refine_flag_rejects_unknown_values(capsys):
    code, err = _run(capsys, ["segment", "x.tif", "--model", "m", "--out", "o",
                              "--refine", "crf"])
    assert "--refine" in _one_error(code, err)
