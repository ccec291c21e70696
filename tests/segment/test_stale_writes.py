"""No stale writes: a block still running on a Dask worker after its client was killed never
writes into the store of a later run.

End to end with real processes: a Dask cluster of one worker process, `stego segment` (a
subprocess) on it, the worker frozen (SIGSTOP) while a block is half written, the client
SIGKILLed, a rerun with another model started, and the frozen block let go (SIGCONT) while
the rerun writes. The rerun's outputs must equal an undisturbed run of its model, byte for
byte.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from flows.cli import main
from pipeline.io.zarr_store import open_labels, partial_stores
from pipeline.io.zarr_writes import RESUME

ROOT = Path(__file__).resolve().parents[2]
TILING = "tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 32, batch_size: 1}"


def _half_written_block(out: Path) -> tuple[Path, int] | None:
    """(store, block index) of a block with some but not all chunk rows written, if any."""
    for store in partial_stores(out / "labels.zarr"):
        try:
            group = zarr.open_group(str(store), mode="r", use_consolidated=False)
            rows = group[f"{RESUME}/block_rows_done"][:]
            done = group[f"{RESUME}/block_done"][:]
        except Exception:  # noqa: BLE001 - the store is still being created
            continue
        half = np.flatnonzero(((rows > 0) & (done == 0)).ravel())
        if len(half):
            return store, int(half[0])
    return None


def _executing(dask_worker) -> int:
    return len(dask_worker.state.executing)


def test_an_orphaned_block_never_writes_into_a_rerun_with_another_model(
        prefect_harness, demo_scene, pixel_model, tmp_path):
    from dask.distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL

    from tests.segment.test_resilience import _fit_other_model

    scene = demo_scene[0]
    other = _fit_other_model(scene, tmp_path / "other-model")
    local_yaml = tmp_path / "local.yaml"
    local_yaml.write_text(TILING + "\ndask: {workers: 1, processes: false}\n")
    expected = tmp_path / "expected"  # the rerun's model, undisturbed
    assert main(["segment", str(scene), "--model", str(other), "--out", str(expected),
                 "--config", str(local_yaml), "-q"]) == 0

    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as watcher:
        worker_pid = next(iter(watcher.run(os.getpid).values()))
        cluster_yaml = tmp_path / "cluster.yaml"
        cluster_yaml.write_text(
            TILING + f"\ndask: {{scheduler_address: '{cluster.scheduler_address}'}}\n")
        client = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "segment", str(scene), "--model",
             str(pixel_model), "--out", str(out), "--config", str(cluster_yaml), "-q"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        frozen = None
        try:
            deadline = time.monotonic() + 120
            while frozen is None and client.poll() is None and time.monotonic() < deadline:
                os.kill(worker_pid, signal.SIGSTOP)  # look at the store with the worker still
                frozen = _half_written_block(out)
                if frozen is None:
                    os.kill(worker_pid, signal.SIGCONT)
                    time.sleep(0.003)
            assert frozen is not None, "never caught a block half written"
            os.killpg(client.pid, signal.SIGKILL)  # the client dies; its block stays frozen
            client.wait()
            old_store, block = frozen

            rerun = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", "segment", str(scene), "--model",
                 str(other), "--out", str(out), "--config", str(local_yaml), "-q"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                start_new_session=True)
            deadline = time.monotonic() + 120
            while not [p for p in partial_stores(out / "labels.zarr") if p != old_store]:
                assert rerun.poll() is None and time.monotonic() < deadline, \
                    rerun.stderr.read().decode() if rerun.stderr else "no rerun store"
                time.sleep(0.005)
            os.kill(worker_pid, signal.SIGCONT)  # the orphan finishes while the rerun writes
            deadline = time.monotonic() + 60
            while sum(watcher.run(_executing).values()) and time.monotonic() < deadline:
                time.sleep(0.01)
            _, err = rerun.communicate(timeout=180)
            assert rerun.returncode == 0, err.decode()
        finally:
            os.kill(worker_pid, signal.SIGCONT)
            if client.poll() is None:
                os.killpg(client.pid, signal.SIGKILL)
    assert (out / "labels.tif").read_bytes() == (expected / "labels.tif").read_bytes()
    np.testing.assert_array_equal(open_labels(out / "labels.zarr")[:],
                                  open_labels(expected / "labels.zarr")[:])
    # at most the orphan's own directory, if its last write came after the rerun's clean-up
    assert set(partial_stores(out / "labels.zarr")) <= {old_store}
