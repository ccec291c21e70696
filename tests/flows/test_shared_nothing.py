"""Workers that share nothing with the client but the object store: a real `dask scheduler`
and two `dask worker` processes, each in its own mount namespace with an empty tmpfs over
every directory the client writes (as on separate machines), against a real S3 server
(SeaweedFS on 127.0.0.1). Input, model and outputs on S3 give the same labels, COG and
polygons as a local run. Skipped, with the reason, where mount namespaces are not allowed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from pipeline.io.remote import filesystem

SMALL = "tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 32, batch_size: 2}\n"
FIT = ["--method", "pixel-kmeans", "--clusters", "3", "-q"]


def _hidden_worker(address: str, hide: list[Path]) -> list[str]:
    """A `dask worker` command in a new mount namespace where every directory of ``hide`` is
    an empty tmpfs: the worker's own directory and cache live in the first, nothing of the
    client's is there."""
    own = hide[0] / "stego-worker"
    mounts = " && ".join(f"mount -t tmpfs none '{d}'" for d in hide)
    script = (f"{mounts} && mkdir -p '{own}' && cd '{own}' && "
              f"STEGO_CACHE='{own}/cache' exec '{sys.executable}' -m distributed.cli.dask_worker "
              f"'{address}' --nthreads 1 --no-dashboard --host 127.0.0.1 "
              f"--local-directory '{own}'")
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


def _mount_namespaces(probe_dir: Path) -> str | None:
    """None where `unshare -m` can mount a tmpfs here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mount -t tmpfs none '{probe_dir}'"], capture_output=True,
                          text=True, check=False)
    return None if done.returncode == 0 else f"unshare -m failed: {done.stderr.strip()}"


@pytest.fixture
def isolated_cluster(tmp_path_factory):
    """A scheduler and two workers that cannot see the test's temporary directories."""
    from dask.distributed import Client

    base = tmp_path_factory.getbasetemp()
    # /tmp (staging folders, Dask's spill) and the test's files, wherever they are
    hide = [Path("/tmp"), *([] if base.is_relative_to("/tmp") else [base])]
    why = _mount_namespaces(tmp_path_factory.mktemp("probe"))
    if why:
        pytest.skip(f"no mount namespaces: {why}")
    sched_file = tmp_path_factory.mktemp("scheduler") / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs += [subprocess.Popen(_hidden_worker(address, hide), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for _ in range(2)]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            seen = client.run(lambda: [sorted(os.listdir("/tmp")), os.path.exists(base)
                                       and os.listdir(base)])
        yield address, seen
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_input_model_and_outputs_on_s3_with_workers_that_see_no_client_file(
        s3_server, isolated_cluster, prefect_harness, demo_scene, tmp_path, monkeypatch):
    import rasterio

    from pipeline.io.zarr_store import open_labels

    address, seen = isolated_cluster
    # the client's files are hidden from every worker: it sees only its own directory
    assert all(tmp == ["stego-worker"] and not theirs for tmp, theirs in seen.values()), seen
    monkeypatch.setenv("STEGO_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    fs, _ = filesystem("s3://scenes/x")
    fs.put_file(str(demo_scene[0]), "scenes/shared-nothing/scene.tif")
    scene = "s3://scenes/shared-nothing/scene.tif"
    model = "s3://results/models/shared-nothing"
    assert main(["fit", scene, *FIT, "--out", model]) == 0
    assert main(["fit", str(demo_scene[0]), *FIT, "--out", str(tmp_path / "model")]) == 0

    local_cfg = tmp_path / "local.yaml"
    local_cfg.write_text(SMALL + "dask: {workers: 1, processes: false}\n")
    assert main(["segment", str(demo_scene[0]), "--model", str(tmp_path / "model"), "--out",
                 str(tmp_path / "local"), "--config", str(local_cfg), "-q"]) == 0
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(SMALL + f"dask: {{scheduler_address: '{address}'}}\n")
    out = "s3://results/runs/shared-nothing"
    assert main(["segment", scene, "--model", model, "--out", out, "--config", str(cfg),
                 "-q"]) == 0

    _, root = filesystem(out)
    fs.invalidate_cache()
    keys = sorted(k[len(root) + 1:] for k in fs.find(root))
    for name in ("labels.tif", "polygons.gpkg", "run.json", "item.json", "labels.qml",
                 "MANIFEST.json"):
        assert name in keys, (name, keys)
    assert not [k for k in keys if ".partial-" in k or ".old-" in k]  # nothing left behind
    assert fs.cat_file(f"{root}/labels.tif") == (tmp_path / "local" / "labels.tif").read_bytes()
    np.testing.assert_array_equal(open_labels(f"{out}/labels.zarr")[:],
                                  open_labels(tmp_path / "local" / "labels.zarr")[:])
    fs.get_file(f"{root}/polygons.gpkg", str(tmp_path / "remote.gpkg"))
    import pyogrio

    remote = pyogrio.read_arrow(tmp_path / "remote.gpkg", layer="polygons")[1]
    local = pyogrio.read_arrow(tmp_path / "local" / "polygons.gpkg", layer="polygons")[1]
    assert remote.num_rows == local.num_rows > 0
    for column in ("class_name", "geom"):  # the same polygons, in the same order
        assert remote.column(column).equals(local.column(column)), column
    run = json.loads(fs.cat_file(f"{root}/run.json"))
    assert run["status"] == "complete"
    assert run["polygons"]["blocks_on"] == "workers"
    assert run["outputs"]["cog"] == f"{out}/labels.tif"
    assert str(tmp_path) not in json.dumps(run)  # no staging path leaks into the record
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(run)
    with rasterio.open(tmp_path / "local" / "labels.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
