"""Crash recovery without a human: a SIGKILLed `stego segment` leaves its Prefect flow run
Running and its output lock behind; the next run takes the lock over and marks that flow run
Crashed. A lock whose lease lapsed on another host (a rescheduled pod) is taken over too; a
live one is refused with its expiry, and `--force-unlock` removes it."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli import main
from pipeline.io.lock import LOCK_NAME

ROOT = Path(__file__).resolve().parents[2]
SMALL = """
tiling: {tile_size: 64, overlap: 16, block_size: 96, chunk_size: 32, batch_size: 2}
dask: {workers: 1, processes: false}
"""


def _env(base: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_HOME": str(base / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(run_id))


def _lock_owner(out: Path) -> dict:
    try:
        return json.loads((out / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture
def run_log(prefect_harness) -> Iterator[list[str]]:
    """The flow runs' log lines (Prefect's console handler keeps the stderr it first saw,
    and whether its records reach pytest's handler depends on what configured logging)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # now, not at the first flow run (which would drop our handler)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.INFO)
    logger = logging.getLogger("prefect.flow_runs")  # Prefect's run loggers
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _args(scene: Path, model: Path, out: Path, cfg: Path, *extra: str) -> list[str]:
    return ["segment", str(scene), "--model", str(model), "--out", str(out),
            "--config", str(cfg), "-q", *extra]


def test_a_sigkilled_run_leaves_a_running_flow_run_that_the_next_run_marks_crashed(
        prefect_harness, demo_scene, feature_model, tmp_path, run_log):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    argv = _args(demo_scene[0], feature_model, out, cfg)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT,
                            env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while (not _lock_owner(out).get("flow_run_id") and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    owner = _lock_owner(out)
    assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()
    killed = owner["flow_run_id"]
    assert _flow_run(killed).state.type.value == "RUNNING"  # nobody ends it: Running forever

    assert main(argv) == 0  # same host, its process gone: taken over at once
    err = "\n".join(run_log)
    assert f"took over the lock of pid {proc.pid} on host {socket.gethostname()}" in err
    assert f"flow run {killed}" in err and "its process is gone" in err
    state = _flow_run(killed).state
    assert state.type.value == "CRASHED", state
    assert "stopped without ending it" in state.message and "its process is gone" in state.message
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not (out / LOCK_NAME).exists()


def _running_flow_run() -> str:
    """A flow run in the Running state, as a killed client leaves it."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    @flow(name="segment")
    def placeholder() -> None:
        """Stands for the segment flow of the pod that was rescheduled."""

    with get_client(sync_client=True) as client:
        return str(client.create_flow_run(placeholder, state=Running()).id)


def test_a_lapsed_lease_of_a_rescheduled_pod_is_taken_over_and_its_run_marked_crashed(
        prefect_harness, demo_scene, pixel_model, tmp_path, run_log):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    out.mkdir()
    old_run = _running_flow_run()
    lapsed = time.time() - 30
    (out / LOCK_NAME).write_text(json.dumps({
        "pid": 1, "host": "client-pod-a", "started": lapsed - 3600, "renewed": lapsed - 120,
        "expires": lapsed, "lease": 120, "token": "old", "flow_run_id": old_run}))
    assert main(_args(demo_scene[0], pixel_model, out, cfg)) == 0
    err = "\n".join(run_log)
    assert "took over the lock of pid 1 on host client-pod-a" in err and "lease expired" in err
    state = _flow_run(old_run).state
    assert state.type.value == "CRASHED" and "client-pod-a" in state.message
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_live_lock_is_refused_with_its_expiry_and_force_unlock_removes_it(
        prefect_harness, demo_scene, pixel_model, tmp_path, capsys, run_log):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    out.mkdir()
    live = {"pid": 1, "host": "client-pod-a", "started": time.time(),
            "expires": time.time() + 90, "lease": 120, "token": "theirs"}
    (out / LOCK_NAME).write_text(json.dumps(live))
    argv = _args(demo_scene[0], pixel_model, out, cfg)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {out}: another run (pid 1 on host client-pod-a) is "
                              "writing to this directory; its lease runs until ")
    assert "--force-unlock" in err[-1]
    assert json.loads((out / LOCK_NAME).read_text())["token"] == "theirs"

    assert main([*argv, "--force-unlock"]) == 0
    err = "\n".join(run_log)
    assert "took over the lock of pid 1 on host client-pod-a (--force-unlock)" in err
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("lease", ["0", "nan"])
def test_a_bad_lease_is_a_config_error(lease, prefect_harness, demo_scene, pixel_model,
                                        tmp_path, capsys):
    code = main(["segment", str(demo_scene[0]), "--model", str(pixel_model), "--out",
                 str(tmp_path / "o"), "--set", f"recovery.lock_lease={lease}", "-q"])
    assert code == 2
    assert "recovery.lock_lease" in capsys.readouterr().err


def test_a_run_whose_lock_was_taken_over_stops_without_touching_the_new_owners_files(
        prefect_harness, demo_scene, feature_model, tmp_path, capsys, run_log):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    theirs = {"pid": 1, "host": "client-pod-b", "expires": time.time() + 600, "token": "theirs"}
    stolen = threading.Event()

    def take_over() -> None:  # what a rerun elsewhere does once this run's lease lapsed
        deadline = time.monotonic() + 240
        while not _lock_owner(out).get("flow_run_id") and time.monotonic() < deadline:
            time.sleep(0.002)
        (out / LOCK_NAME).unlink()
        (out / LOCK_NAME).write_text(json.dumps(theirs))
        stolen.set()

    thief = threading.Thread(target=take_over, daemon=True)
    thief.start()
    code = main(_args(demo_scene[0], feature_model, out, cfg))
    thief.join(5)
    assert stolen.is_set()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(f"error: LeaseLost: {out}: another run took over")
    assert json.loads((out / LOCK_NAME).read_text()) == theirs  # never removed
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # not rewritten
    assert not (out / "labels.tif").exists()
