"""SIGTERM / SIGINT (a systemd stop, a CI timeout, Ctrl-C) during segment, fit and pretrain.

The real command line runs in a subprocess (its own process group) and gets the signal while it
works. It must end within seconds with one last `error: interrupted by SIG…` line that says how
the run resumes, leave run.json (or the pretrain checkpoint) marked interrupted and no half
files, and the same command run again must finish with the uninterrupted run's result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows.cli import main
from pipeline.io.lock import LOCK_NAME
from pipeline.io.zarr_store import partial_stores

ROOT = Path(__file__).resolve().parents[2]
SMALL = """
tiling: {tile_size: 64, overlap: 16, block_size: 96, chunk_size: 32, batch_size: 2}
dask: {workers: 1, processes: false}
"""
PRETRAIN = ["--steps", "40", "--backbone-arg", "depth=1", "--backbone-arg", "embed_dim=32",
            "--backbone-arg", "num_heads=2", "--set", "pretrain.batch_size=4",
            "--set", "pretrain.pool_crops=8", "--set", "pretrain.source_size=64",
            "--set", "pretrain.global_size=32", "--set", "pretrain.local_size=16",
            "--set", "pretrain.local_views=1", "--set", "pretrain.out_dim=64",
            "--set", "pretrain.checkpoint_every=5", "--set", "pretrain.log_every=5", "-q"]
EXIT_WITHIN_S = 15.0  # from the signal to the process's exit, on a loaded 2-core machine


def _env(base: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_HOME": str(base / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _interrupt_when(argv: list[str], base: Path, ready, sig: int) -> tuple[int, float, str]:
    """Run ``stego ARGV``; send ``sig`` to it once ``ready()``; (exit code, seconds, stderr)."""
    err_path = base / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT,
                                env=_env(base), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            if proc.poll() is not None:
                pytest.fail(f"finished before the signal: {err_path.read_text()[-2000:]}")
            t0 = time.monotonic()
            proc.send_signal(sig)  # the main process only, as `systemctl stop` / `kill` do
            code = proc.wait(timeout=120)
            seconds = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return code, seconds, err_path.read_text()


def _check_interrupted(code: int, seconds: float, err: str, sig: int, hint: str) -> None:
    name = signal.Signals(sig).name
    assert code == 128 + sig, err
    assert seconds < EXIT_WITHIN_S, f"took {seconds:.1f} s to stop"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]], err
    assert lines[-1].startswith(f"error: interrupted by {name}; ") and hint in lines[-1]
    # (Prefect's own "Crash detected" log may come before it, with its traceback)


def _done_flags(out: Path) -> int:
    """Blocks the partial store marks done: chunk files of its ``block_done`` array (any Zarr
    format: ``0.1`` or ``c/0/1``; metadata files start with a dot or are ``zarr.json``)."""
    try:
        return sum(1 for store in partial_stores(out / "labels.zarr")
                   for base in store.glob("**/block_done")
                   for f in base.rglob("*")
                   if f.is_file() and not f.name.startswith(".") and f.name != "zarr.json")
    except FileNotFoundError:  # the store was renamed away while we looked
        return 0


def _labels(out: Path) -> np.ndarray:
    with rasterio.open(out / "labels.tif") as ds:
        return ds.read(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_segment_interrupted_by_a_signal_stops_marks_run_json_and_resumes(
        sig, prefect_harness, demo_scene, feature_model, tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)

    def args(out: Path) -> list[str]:
        return ["segment", str(demo_scene[0]), "--model", str(feature_model), "--out", str(out),
                "--config", str(cfg), "-q"]

    out = tmp_path / "out"
    code, seconds, err = _interrupt_when(args(out), tmp_path, lambda: _done_flags(out) >= 2, sig)
    _check_interrupted(code, seconds, err, sig, "run the same command again to resume")
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "interrupted"
    assert not (out / "labels.tif").exists() and not (out / "labels.zarr").exists()
    assert not (out / LOCK_NAME).exists()  # the lock went with the run
    done = _done_flags(out)
    assert done >= 2

    assert main(args(out)) == 0  # the same command resumes ...
    doc = json.loads((out / "run.json").read_text())
    assert doc["status"] == "complete" and doc["counts"]["blocks_resumed"] == done
    clean = tmp_path / "clean"
    assert main(args(clean)) == 0  # ... to the uninterrupted run's labels
    np.testing.assert_array_equal(_labels(out), _labels(clean))


def test_pretrain_interrupted_by_sigterm_marks_its_checkpoint_and_resumes_exactly(
        prefect_harness, demo_scene, tmp_path):
    out = tmp_path / "bb"
    state = out / ".pretrain" / "checkpoint.json"
    argv = ["pretrain", str(demo_scene[0]), "--out", str(out), *PRETRAIN]

    def ready() -> bool:  # a checkpoint exists and the run is past it
        try:
            return json.loads(state.read_text())["step"] >= 5
        except (OSError, ValueError):
            return False

    code, seconds, err = _interrupt_when(argv, tmp_path, ready, signal.SIGTERM)
    _check_interrupted(code, seconds, err, signal.SIGTERM, "resume from its last checkpoint")
    doc = json.loads(state.read_text())
    assert doc["status"] == "interrupted" and doc["interrupted_at_step"] >= doc["step"] >= 5
    assert not (out / "backbone.safetensors").exists()

    # the resumed and the clean run in fresh processes too, as the interrupted one did: floats
    # must not depend on what earlier tests left in this process (threads, flags)
    clean = tmp_path / "clean"
    for args in (argv, ["pretrain", str(demo_scene[0]), "--out", str(clean), *PRETRAIN]):
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT,
                              env=_env(tmp_path), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((out / "backbone.json").read_text())
    assert resumed["weights_sha256"] == json.loads((clean / "backbone.json").read_text())[
        "weights_sha256"]


def test_fit_interrupted_by_sigterm_stops_without_a_model_and_runs_again(
        prefect_harness, demo_scene, tmp_path):
    out = tmp_path / "model"
    argv = ["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--weights", "random",
            "--backbone-arg", "depth=1", "--backbone-arg", "embed_dim=32",
            "--backbone-arg", "num_heads=2", "--clusters", "3", "--set", "fit.crops=600",
            "--set", "fit.crop_size=64", "--set", "fit.iterations=5", "--set", "fit.n_init=1",
            "--out", str(out), "-q"]
    code, seconds, err = _interrupt_when(argv, tmp_path, out.exists, signal.SIGTERM)
    _check_interrupted(code, seconds, err, signal.SIGTERM, "run the same command again")
    assert not (out / "model.json").exists() and not (out / "model.safetensors").exists()
    argv[argv.index("fit.crops=600")] = "fit.crops=8"  # the re-run only has to finish
    assert main(argv) == 0 and (out / "model.json").exists()
