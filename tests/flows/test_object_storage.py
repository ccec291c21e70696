"""Models on object storage, against a real S3 server (SeaweedFS on 127.0.0.1): `fit --out`
and `import-checkpoint --out` publish to a bucket (files, then MANIFEST.json last), `segment
--model s3://…` reads it and gives the labels of the local model; outputs that cannot go to
object storage are refused in one line before anything is written; credentials never reach
run.json. With input, model and outputs on S3 and workers that share nothing with the client:
tests/flows/test_shared_nothing.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows.cli import main
from pipeline.io.remote import MANIFEST, filesystem

FIT = ["--method", "pixel-kmeans", "--clusters", "3", "-q"]
SMALL = "tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 32, batch_size: 2}\n"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEGO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _keys(url: str) -> list[str]:
    fs, root = filesystem(url)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _labels(out: Path) -> np.ndarray:
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


def test_a_model_fitted_into_a_bucket_segments_like_the_local_one(
        s3_server, prefect_harness, demo_scene, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative URL must never become a local ./s3: folder
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL + "dask: {workers: 1, processes: false}\n")
    url = "s3://results/models/px"
    assert main(["fit", str(demo_scene[0]), *FIT, "--out", url]) == 0
    assert not (tmp_path / "s3:").exists()
    assert _keys(url) == [MANIFEST, "model.json", "model.safetensors"]
    assert main(["fit", str(demo_scene[0]), *FIT, "--out", str(tmp_path / "px")]) == 0

    local_out, remote_out = tmp_path / "local", tmp_path / "remote"
    assert main(["segment", str(demo_scene[0]), "--model", str(tmp_path / "px"), "--out",
                 str(local_out), "--config", str(cfg), "-q"]) == 0
    assert main(["segment", str(demo_scene[0]), "--model", url, "--out", str(remote_out),
                 "--config", str(cfg), "-q"]) == 0
    np.testing.assert_array_equal(_labels(remote_out), _labels(local_out))
    run = (remote_out / "run.json").read_text()
    assert json.loads(run)["model"]["dir"] == url
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in run
    assert os.environ["AWS_ACCESS_KEY_ID"] not in run


def test_an_unfinished_upload_is_not_taken_for_a_model(s3_server, demo_scene, cache, tmp_path,
                                                       capsys):
    fs, root = filesystem("s3://results/models/half")
    fs.pipe_file(f"{root}/model.json", b"{}")  # no manifest: the upload never finished
    code = main(["segment", str(demo_scene[0]), "--model", "s3://results/models/half",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "s3://results/models/half: no MANIFEST.json" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, needle", [
    (["segment", "SCENE", "--model", "MODEL", "--out", "s3://no-such-bucket/runs/x"],
     "s3://no-such-bucket/runs/x: bucket 'no-such-bucket' does not exist"),
    (["evaluate", "A", "B", "--out", "s3://results/runs/x"],
     "s3://results/runs/x: --out must be a local or shared path"),
    (["fit", "SCENE", *FIT, "--out", "s3://no-such-bucket/m"],
     "s3://no-such-bucket/m: bucket 'no-such-bucket' does not exist"),
    (["evaluate", "A", "B", "--out", "gs://results/e"], "gs://results/e: --out must be"),
])
def test_outputs_that_cannot_be_written_are_refused_before_anything_is(
        s3_server, demo_scene, pixel_model, cache, tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    argv = [str(demo_scene[0]) if a == "SCENE" else str(pixel_model) if a == "MODEL" else a
            for a in argv]
    assert main(argv) == 2
    assert needle in _one_line_error(capsys)
    assert [p for p in tmp_path.iterdir() if p.name != "cache"] == []  # no local s3: folder
    fs, _ = filesystem("s3://results")
    fs.invalidate_cache()
    assert not fs.exists("results/runs/x")


def test_wrong_credentials_are_one_line(s3_server, demo_scene, cache, tmp_path, monkeypatch,
                                        capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    try:
        assert main(["fit", str(demo_scene[0]), *FIT, "--out", "s3://results/m"]) == 2
        line = _one_line_error(capsys)
        assert "s3://results/m: cannot reach the bucket" in line and "wrong" not in line
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
