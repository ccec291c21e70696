"""The bad-input catalogue: each case gets one line on stderr, exit code 2, and no outputs.

`python -m tests.flows.test_bad_inputs` prints the catalogue as the Markdown table in
docs/usage.md, so the table is generated from the same cases the tests run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from tests.conftest import write_raster


@dataclass(frozen=True)
class Case:
    """One bad (or odd) input, how to make it, and what the user must see."""

    name: str
    behaviour: str  # for docs/usage.md
    make: Callable[[Path, Path], list[str]]  # (tmp, good model) -> argv after "stego"
    expect: str | None  # substring of the one-line error; None = the run succeeds


def _rgb(h=40, w=40, dtype=np.uint8):
    return np.random.default_rng(0).integers(1, 200, size=(3, h, w)).astype(dtype)


def _seg(src, model, tmp, *extra):
    return ["segment", str(src), "--model", str(model), "--out", str(tmp / "out"), *extra]


def _good(tmp):
    return write_raster(tmp / "good.tif", _rgb())


def _text(tmp, model):
    (tmp / "notes.tif").write_text("not a raster")
    return _seg(tmp / "notes.tif", model, tmp)


def _jpeg(tmp, model):
    from PIL import Image

    Image.fromarray(_rgb().transpose(1, 2, 0)).save(tmp / "photo.jpg", format="JPEG")
    (tmp / "photo.jpg").rename(tmp / "photo.tif")
    return _seg(tmp / "photo.tif", model, tmp)


def _truncated(tmp, model):
    data = np.random.default_rng(1).integers(0, 255, size=(3, 300, 300), dtype=np.uint8)
    src = write_raster(tmp / "full.tif", data)
    blob = src.read_bytes()
    (tmp / "cut.tif").write_bytes(blob[: len(blob) // 2])
    return _seg(tmp / "cut.tif", model, tmp)


def _empty(tmp, model):
    (tmp / "empty.tif").write_bytes(b"")
    return _seg(tmp / "empty.tif", model, tmp)


def _zero_size(tmp, model):
    (tmp / "zero.vrt").write_text('<VRTDataset rasterXSize="0" rasterYSize="10">'
                                  '<VRTRasterBand dataType="Byte" band="1"/></VRTDataset>')
    return _seg(tmp / "zero.vrt", model, tmp)


def _one_band(tmp, model):
    return _seg(write_raster(tmp / "pan.tif", _rgb()[:1]), model, tmp)


def _band_range(tmp, model):
    return _seg(_good(tmp), model, tmp, "--bands", "1,2,5")


def _complex(tmp, model):
    return _seg(write_raster(tmp / "c.tif", _rgb().astype(np.complex64)), model, tmp)


def _all_nodata(tmp, model):
    src = write_raster(tmp / "void.tif", _rgb(), mask=np.zeros((40, 40), bool))
    return _seg(src, model, tmp)


def _nan(tmp, model):
    data = _rgb(dtype=np.float32)
    data[:, :5] = np.nan
    data[0, 10, 10] = np.inf
    return _seg(write_raster(tmp / "f.tif", data), model, tmp)


def _tiny(tmp, model):
    return _seg(write_raster(tmp / "tiny.tif", _rgb(3, 2)), model, tmp)


def _no_crs(tmp, model):
    return _seg(write_raster(tmp / "nocrs.tif", _rgb(), crs=None), model, tmp)


def _model_missing(tmp, model):
    return _seg(_good(tmp), tmp / "no-model", tmp)


def _model_corrupt(tmp, model):
    shutil.copytree(model, tmp / "m")
    (tmp / "m" / "model.safetensors").write_bytes(b"garbage")
    return _seg(_good(tmp), tmp / "m", tmp)


def _model_json_corrupt(tmp, model):
    shutil.copytree(model, tmp / "m")
    (tmp / "m" / "model.json").write_text("{")
    return _seg(_good(tmp), tmp / "m", tmp)


def _model_other_backbone(tmp, model):
    shutil.copytree(model, tmp / "m")
    meta = json.loads((tmp / "m" / "model.json").read_text())
    meta["backbone"]["overrides"]["embed_dim"] = 32  # weights no longer fit
    (tmp / "m" / "model.json").write_text(json.dumps(meta))
    return _seg(_good(tmp), tmp / "m", tmp)


def _config_key(tmp, model):
    (tmp / "c.yaml").write_text("tiling:\n  tile_sise: 64\n")
    return _seg(_good(tmp), model, tmp, "--config", str(tmp / "c.yaml"))


def _config_type(tmp, model):
    (tmp / "c.yaml").write_text("tiling:\n  batch_size: lots\n")
    return _seg(_good(tmp), model, tmp, "--config", str(tmp / "c.yaml"))


def _out_is_file(tmp, model):
    (tmp / "taken").write_text("")
    return ["segment", str(_good(tmp)), "--model", str(model), "--out", str(tmp / "taken")]


def _out_is_input(tmp, model):
    src = _good(tmp)
    return ["segment", str(src), "--model", str(model), "--out", str(src)]


def _nan_band(tmp, model):
    data = _rgb(dtype=np.float32)
    data[1] = np.nan
    return _seg(write_raster(tmp / "nanband.tif", data), model, tmp)


def _odd_transform(tmp, model, name, transform, crs="EPSG:32633"):
    return _seg(write_raster(tmp / f"{name}.tif", _rgb(), transform=transform, crs=crs),
                model, tmp)


def _palette(tmp, model, *extra):
    from tests.flows.odd_rasters import Spec, write_spec

    src = write_spec(Spec("uint8", 1, 40, 40, "none", "north-up", None, kind="palette"), tmp)
    return _seg(src, model, tmp, *extra)


def _vrt_missing(tmp, model):
    from tests.flows.odd_rasters import Spec, write_spec

    src = write_spec(Spec("uint8", 3, 40, 40, "none", "north-up", None, kind="vrt-missing"), tmp)
    return _seg(src, model, tmp)


def _alpha(tmp, model):
    from tests.flows.odd_rasters import Spec, write_spec

    return _seg(write_spec(Spec("uint16", 3, 40, 40, "alpha", "north-up", None), tmp), model, tmp)


def _no_scheduler(tmp, model):
    import socket

    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _seg(_good(tmp), model, tmp, "--scheduler-address", f"tcp://127.0.0.1:{port}")


ODD = [  # issue 18: odd inputs and flags found by hand and by tests/flows/test_odd_inputs.py
    Case("one band entirely NaN (others valid)",
         "error: band 2 has no valid pixel … leave it out with --bands", _nan_band,
         "band 2 has no valid pixel"),
    Case("palette (colour-table) raster", "error: has 1 band(s)…; --bands 1,1,1 segments the "
         "indices", _palette, "has 1 band(s)"),
    Case("palette raster with --bands 1,1,1", "works (on the palette indices)",
         lambda t, m: _palette(t, m, "--bands", "1,1,1"), None),
    Case("alpha band (RGBA)", "works: alpha 0 is nodata (255)", _alpha, None),
    Case("VRT with a missing source file", "error: cannot read pixels", _vrt_missing,
         "cannot read pixels"),
    Case("south-up transform", "works", lambda t, m: _odd_transform(
        t, m, "southup", Affine(0.5, 0, 500000, 0, 0.5, 5800000)), None),
    Case("rotated transform", "works", lambda t, m: _odd_transform(
        t, m, "rotated", Affine.translation(500000, 5800000) * Affine.rotation(30)
        * Affine.scale(0.5, -0.5)), None),
    Case("geographic CRS (degrees)", "works", lambda t, m: _odd_transform(
        t, m, "geo", Affine(1e-5, 0, 13.4, 0, -1e-5, 52.5), "EPSG:4326"), None),
    Case("1 x N raster", "works (reflect padding)",
         lambda t, m: _seg(write_raster(t / "row.tif", _rgb(1, 70)), m, t), None),
    Case("--workers 0 (or negative)", "error: --workers: Input should be greater than or equal "
         "to 1", lambda t, m: _seg(_good(t), m, t, "--workers", "0"), "--workers"),
    Case("--set tiling.batch_size=0", "error: config key 'tiling': batch_size must be >= 1 …",
         lambda t, m: _seg(_good(t), m, t, "--set", "tiling.batch_size=0"),
         "batch_size must be >= 1"),
    Case("--scheduler-address that is not an address",
         "error: --scheduler-address: not a scheduler address like tcp://host:8786",
         lambda t, m: _seg(_good(t), m, t, "--scheduler-address", "tcp://x:99999"),
         "not a scheduler address"),
    Case("--scheduler-address where nothing listens",
         "error: cannot reach Dask scheduler (at once; within dask.connect_timeout when "
         "nothing answers)", _no_scheduler, "cannot reach Dask scheduler"),
]


CASES = [
    Case("missing file", "error: file not found", lambda t, m: _seg(t / "nope.tif", m, t),
         "file not found"),
    Case("directory instead of a file", "error: is a directory",
         lambda t, m: _seg(t, m, t / "x"), "is a directory"),
    Case("text file named .tif", "error: not a raster GDAL can read", _text,
         "not a raster GDAL can read"),
    Case("JPEG renamed .tif", "works: GDAL identifies files by content", _jpeg, None),
    Case("truncated TIFF", "error: cannot read pixels (truncated or corrupt)", _truncated,
         "cannot read pixels"),
    Case("zero-byte file", "error: is an empty (0-byte) file", _empty, "empty (0-byte)"),
    Case("0 width or height", "error: not a raster GDAL can read", _zero_size,
         "not a raster GDAL can read"),
    Case("1-band input without --bands", "error: has 1 band(s)… choose them with --bands",
         _one_band, "has 1 band(s)"),
    Case("band index out of range", "error: band 5 out of range", _band_range,
         "band 5 out of range"),
    Case("complex data type", "error: unsupported data type complex64", _complex,
         "unsupported data type"),
    Case("all-nodata raster", "error: every pixel is nodata; nothing to segment", _all_nodata,
         "every pixel is nodata"),
    Case("NaN / inf in float input", "works: treated as nodata (255)", _nan, None),
    Case("raster smaller than one tile", "works (reflect padding)", _tiny, None),
    Case("raster without CRS", "works, with a warning; outputs without CRS", _no_crs, None),
    Case("model directory missing", "error: model directory not found", _model_missing,
         "model directory not found"),
    Case("model weights corrupt", "error: corrupt model weights", _model_corrupt,
         "corrupt model weights"),
    Case("model.json corrupt", "error: corrupt model.json", _model_json_corrupt,
         "corrupt model.json"),
    Case("model built for another backbone", "error: model weights do not fit its description",
         _model_other_backbone, "do not fit"),
    Case("config with an unknown key", "error: unknown config key … (valid keys: …)",
         _config_key, "unknown config key 'tiling.tile_sise'"),
    Case("config value of the wrong type", "error: config key 'tiling.batch_size': …",
         _config_type, "tiling.batch_size"),
    Case("output path is a file", "error: output path exists and is not a directory",
         _out_is_file, "not a directory"),
    Case("output path equals the input", "error: output … must not be the input file",
         _out_is_input, "must not be the input"),
    *ODD,
]


def markdown_table() -> str:
    """The catalogue as docs/usage.md shows it."""
    rows = ["| input | behaviour |", "|---|---|"]
    rows += [f"| {c.name} | {c.behaviour} |" for c in CASES]
    return "\n".join(rows)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_catalogue(case, tmp_path, feature_model, prefect_harness, capsys):
    from flows.cli import main

    argv = case.make(tmp_path, feature_model)
    argv += ["--set", "tiling.tile_size=32", "--set", "tiling.overlap=8",
             "--set", "tiling.block_size=64", "--set", "tiling.chunk_size=32",
             "--set", "dask.processes=false", "-q"]
    code = main(argv)
    err = capsys.readouterr().err
    out_dir = tmp_path / "out"
    if case.expect is None:
        assert code == 0, err
        assert (out_dir / "labels.tif").exists()
        return
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and case.expect in lines[0] and "Traceback" not in err
    assert err.strip().splitlines()[-1] == lines[0]  # the last line, after any log output
    final = [out_dir / n for n in ("labels.tif", "labels.zarr", "polygons.gpkg", "run.json")]
    assert not any(p.exists() for p in final)


def test_the_usage_docs_show_this_catalogue():
    readme = (Path(__file__).resolve().parents[2] / "docs" / "usage.md").read_text()
    assert markdown_table() in readme


if __name__ == "__main__":
    print(markdown_table())


def test_an_error_inside_the_flow_is_the_last_line_also_in_json(feature_model, tmp_path):
    """The console script on Prefect's temporary server (issue 18's case): a scheduler address
    where something listens but no Dask scheduler answers fails inside the flow, within
    dask.connect_timeout; the error: line still comes after Prefect's "Stopping temporary
    server" log, and --json prints it on stdout."""
    import os
    import socket
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "ph"), PREFECT_LOGGING_LEVEL="INFO",
               STEGO_SERVER_HOME=str(tmp_path / "no-stego-server"))  # a temporary server
    with socket.socket() as silent:  # accepts connections, never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        argv = _seg(_good(tmp_path), feature_model, tmp_path, "--scheduler-address",
                    f"tcp://127.0.0.1:{silent.getsockname()[1]}", "--set",
                    "dask.connect_timeout=2", "--json")
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - t0
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: tcp://127.0.0.1:") and "within dask.connect_timeout" in last
    assert "Stopping temporary server" in res.stderr  # Prefect's log came, and came first
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {
        "status": "failed", "error": last.removeprefix("error: "), "exit_code": 2}
    assert seconds < 120
    assert not (tmp_path / "out" / "labels.tif").exists()
