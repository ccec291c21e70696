"""`stego segment-folder` on object storage, against a real S3 server (SeaweedFS on 127.0.0.1):
scenes listed from a bucket glob, each published to ``OUT_ROOT/<stem>/`` in a bucket as
`segment --out URL` publishes it (MANIFEST.json last); a rerun skips finished scenes, a scene
whose MANIFEST.json is gone (an unfinished upload) is done again, alone; a pattern matching
nothing or a missing bucket is one `error:` line before anything is written; credentials
appear in no output."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.errors import InputError
from pipeline.io.remote import MANIFEST, filesystem
from tests.conftest import scene_folder

SMALL = ("tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 32, batch_size: 2}\n"
         "dask: {workers: 1, processes: false}\n")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEGO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory) -> Path:
    """Two small generated 3-band GeoTIFFs a.tif and b.tif (label rasters removed)."""
    return scene_folder(tmp_path_factory.mktemp("tiny_scenes"), 128)


@pytest.fixture
def bucket_scenes(s3_server, tiny_scenes) -> str:
    """The two scenes uploaded to a fresh prefix of the ``scenes`` bucket (and a file that
    the glob must not match); returns the prefix URL."""
    url = f"s3://scenes/folder-{uuid.uuid4().hex[:8]}"
    fs, root = filesystem(url)
    for name in ("a.tif", "b.tif"):
        fs.put_file(str(tiny_scenes / name), f"{root}/{name}")
    fs.pipe_file(f"{root}/notes.txt", b"not a scene")
    return url


def _keys(url: str) -> list[str]:
    fs, root = filesystem(url)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def _cat(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def _summary(capsys) -> dict:
    out = capsys.readouterr()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in out.out + out.err
    assert os.environ["AWS_ACCESS_KEY_ID"] not in out.out + out.err
    return json.loads(out.out.strip().splitlines()[-1])


def test_segment_folder_from_a_bucket_glob_into_a_bucket(
        s3_server, prefect_harness, bucket_scenes, tiny_scenes, pixel_model, cache, tmp_path,
        monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a URL must never become a local ./s3: folder
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    out_root = f"s3://results/folders/{uuid.uuid4().hex[:8]}"
    argv = ["segment-folder", f"{bucket_scenes}/*.tif", "--model", str(pixel_model),
            "--out-root", out_root, "--config", str(cfg), "--json", "-q"]
    scenes = [f"{bucket_scenes}/a.tif", f"{bucket_scenes}/b.tif"]

    assert main(argv) == 0
    summary = _summary(capsys)
    assert summary["processed"] == scenes and summary["skipped"] == []
    assert summary["failed"] == {} and summary["out_root"] == out_root
    keys = _keys(out_root)
    for stem in "ab":
        for name in (MANIFEST, "run.json", "labels.tif", "polygons.gpkg", "item.json"):
            assert f"{stem}/{name}" in keys, (stem, name, keys)
        manifest = json.loads(_cat(f"{out_root}/{stem}/{MANIFEST}"))
        assert "run.json" in manifest["files"] and "labels.tif" in manifest["files"]
        run = json.loads(_cat(f"{out_root}/{stem}/run.json"))
        assert run["status"] == "complete"
        assert run["input"]["path"] == f"{bucket_scenes}/{stem}.tif"
        assert run["outputs"]["cog"] == f"{out_root}/{stem}/labels.tif"
        for name in ("run.json", "item.json"):  # no key, no staging path in the records
            text = _cat(f"{out_root}/{stem}/{name}").decode()
            assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
            assert os.environ["AWS_ACCESS_KEY_ID"] not in text
            assert str(cache) not in text
    assert not [k for k in keys if ".partial-" in k or ".old-" in k or "notes" in k]
    assert not (tmp_path / "s3:").exists()
    staging = cache.parent / "staging"
    assert not staging.exists() or not any(staging.iterdir())  # staged, published, removed

    # the same labels as a local segment-folder over the same files
    assert main(["segment-folder", str(tiny_scenes / "*.tif"), "--model", str(pixel_model),
                 "--out-root", str(tmp_path / "local"), "--config", str(cfg), "-q"]) == 0
    for stem in "ab":
        assert _cat(f"{out_root}/{stem}/labels.tif") == \
            (tmp_path / "local" / stem / "labels.tif").read_bytes()

    # a rerun skips both: nothing is uploaded again
    published = {s: json.loads(_cat(f"{out_root}/{s}/{MANIFEST}")) for s in "ab"}
    capsys.readouterr()
    assert main(argv) == 0
    summary = _summary(capsys)
    assert summary["skipped"] == scenes and summary["processed"] == []
    assert {s: json.loads(_cat(f"{out_root}/{s}/{MANIFEST}")) for s in "ab"} == published

    # without its MANIFEST.json, b's output is an unfinished upload: redone, and only b
    fs, root = filesystem(out_root)
    fs.rm_file(f"{root}/b/{MANIFEST}")
    assert main(argv) == 0
    summary = _summary(capsys)
    assert summary["processed"] == [scenes[1]] and summary["skipped"] == [scenes[0]]
    assert json.loads(_cat(f"{out_root}/a/{MANIFEST}")) == published["a"]
    again = json.loads(_cat(f"{out_root}/b/{MANIFEST}"))
    assert again["files"]["labels.tif"] == published["b"]["files"]["labels.tif"]
    assert json.loads(_cat(f"{out_root}/b/run.json"))["status"] == "complete"


def test_a_partial_output_is_not_done(s3_server, prefect_harness, bucket_scenes,
                                      pixel_model, cache, tmp_path):
    """A run.json that says complete but has no MANIFEST.json next to it (the upload stopped
    before its last object), or one that does not match the manifest, is not done."""
    from flows.batch_flow import is_done
    from pipeline.config import load_config

    cfg_file = tmp_path / "small.yaml"
    cfg_file.write_text(SMALL)
    cfg = load_config(cfg_file, [])
    out = f"s3://results/folders/{uuid.uuid4().hex[:8]}/a"
    scene = f"{bucket_scenes}/a.tif"
    assert main(["segment", scene, "--model", str(pixel_model), "--out", out,
                 "--config", str(cfg_file), "-q"]) == 0
    assert is_done(scene, str(pixel_model), out, cfg)
    fs, root = filesystem(out)
    manifest, run = fs.cat_file(f"{root}/{MANIFEST}"), fs.cat_file(f"{root}/run.json")
    fs.rm_file(f"{root}/{MANIFEST}")
    assert not is_done(scene, str(pixel_model), out, cfg)
    fs.pipe_file(f"{root}/{MANIFEST}", manifest)
    assert is_done(scene, str(pixel_model), out, cfg)
    fs.pipe_file(f"{root}/run.json", run.replace(b'"complete"', b'"complete" '))  # edited
    assert not is_done(scene, str(pixel_model), out, cfg)
    fs.pipe_file(f"{root}/run.json", run)
    fs.rm_file(f"{root}/labels.tif")  # a file the manifest lists is gone
    assert not is_done(scene, str(pixel_model), out, cfg)
    assert not (cache.parent / "staging").exists() or \
        not any((cache.parent / "staging").iterdir())  # is_done's planning left nothing


@pytest.mark.parametrize("pattern, out_root, needle", [
    ("SCENES/*.jp2", "s3://results/folders/NEW", "SCENES/*.jp2: no files match this pattern"),
    ("s3://no-such-bucket/scenes/*.tif", "s3://results/folders/NEW",
     "s3://no-such-bucket/scenes/*.tif: bucket 'no-such-bucket' does not exist"),
    ("SCENES/*.tif", "s3://no-such-bucket/out",
     "s3://no-such-bucket/out: bucket 'no-such-bucket' does not exist"),
    ("s3://sc*/x/*.tif", "s3://results/folders/NEW", "the bucket (first part after the "
     "scheme) cannot be a pattern"),
])
def test_a_bad_pattern_or_bucket_is_one_line_and_writes_nothing(
        s3_server, bucket_scenes, pixel_model, cache, tmp_path, monkeypatch, capsys,
        pattern, out_root, needle):
    monkeypatch.chdir(tmp_path)
    new = f"s3://results/folders/{uuid.uuid4().hex[:8]}"
    pattern, needle = (s.replace("SCENES", bucket_scenes) for s in (pattern, needle))
    out_root = out_root.replace("s3://results/folders/NEW", new)
    assert main(["segment-folder", pattern, "--model", str(pixel_model), "--out-root",
                 out_root]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in err[0]
    assert _keys(new) == []
    assert [p for p in tmp_path.iterdir() if p.name != "cache"] == []  # no local s3: folder


def test_bucket_globs_list_objects_named_as_the_pattern(s3_server, bucket_scenes):
    from flows.batch_flow import find_scenes, scene_out_dir

    fs, root = filesystem(bucket_scenes)
    fs.pipe_file(f"{root}/sub/c.tif", b"x")
    fs.pipe_file(f"{root}/d.tif/inside", b"x")  # a "folder" whose name matches: left out
    vsi = "/vsis3/" + bucket_scenes.removeprefix("s3://")
    assert find_scenes(f"{bucket_scenes}/*.tif") == [f"{bucket_scenes}/{n}.tif" for n in "ab"]
    assert find_scenes(f"{vsi}/*.tif") == [f"{vsi}/{n}.tif" for n in "ab"]
    assert find_scenes(f"{bucket_scenes}/**/*.tif") == \
        [f"{bucket_scenes}/{n}.tif" for n in ("a", "b", "sub/c")]
    assert scene_out_dir("s3://results/out/", f"{vsi}/a.tif") == "s3://results/out/a"


def test_a_deployment_keeps_object_store_locations(s3_server, bucket_scenes, pixel_model,
                                                   cache, tmp_path, monkeypatch):
    """`stego deploy` over a bucket: URLs stay URLs (never made into local paths), and their
    buckets are checked when the deployment is made."""
    from flows.deploy import folder_parameters

    monkeypatch.chdir(tmp_path)
    out = f"s3://results/folders/{uuid.uuid4().hex[:8]}/"
    params = folder_parameters(f"{bucket_scenes}/*.tif", str(pixel_model), out)
    assert params["input_glob"] == f"{bucket_scenes}/*.tif"
    assert params["out_root"] == out.rstrip("/") and params["model_dir"] == str(pixel_model)
    with pytest.raises(InputError, match="bucket 'no-such-bucket' does not exist"):
        folder_parameters("s3://no-such-bucket/*.tif", str(pixel_model), out)
    with pytest.raises(InputError, match="bucket 'no-such-bucket' does not exist"):
        folder_parameters(f"{bucket_scenes}/*.tif", str(pixel_model), "s3://no-such-bucket/o")
    assert [p.name for p in tmp_path.iterdir()] in ([], ["cache"])  # no local s3: folder
