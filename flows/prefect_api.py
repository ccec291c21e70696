"""Which Prefect API a `stego` run talks to, chosen before Prefect is imported: the user's
(PREFECT_API_URL), a running `stego server`, or a temporary server that starts in the background
while the CLI imports its libraries and checks its inputs, and is stopped without waiting."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.local_server import free_port, healthy, running_api_url

log = logging.getLogger("prefect")  # Prefect's own logger: its lines look like Prefect's
HEARTBEAT_VARS = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the active profile in PREFECT_HOME/profiles.toml, read without
    importing Prefect (``prefect config set PREFECT_API_URL=...`` writes it there)."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = data.get("profiles", {}).get(name, {}) if isinstance(name, str) else {}
    value = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(value) if value else None


def _die_with_parent() -> None:
    """In the server process before it starts (Linux): SIGTERM when the stego process ends,
    however it ends (even SIGKILL), so a temporary server never outlives its run."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class TemporaryServer:
    """Prefect's temporary API server (the uvicorn app, arguments and settings Prefect uses for
    its ephemeral server; flows/server_boot.py imports it with the garbage collector paused),
    started now and waited for only when the first flow needs it."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="stego-prefect-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self.attempts = 0
        self.ready_at: float | None = None
        self._spawn()

    def _spawn(self) -> None:
        from importlib.util import find_spec

        spec = find_spec("prefect")
        assert spec is not None and spec.submodule_search_locations, "prefect is not installed"
        app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
        self.port = free_port()
        self.attempts += 1
        self.started = time.perf_counter()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        with open(self.log_path, "ab") as out:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "flows.server_boot", "--app-dir", app_dir, "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
                 str(self.port), "--log-level", "error", "--lifespan", "on"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches stego, which reports, then stops it
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    @property
    def api_url(self) -> str:
        """``http://127.0.0.1:PORT/api``."""
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> str:
        """Block until the server answers (a port taken meanwhile: start again on another);
        returns its API URL, or raises RuntimeError with the server's last log lines."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None, "the temporary server was stopped"
            code = self.process.poll()
            if code is not None:
                text = self.log_path.read_text(errors="replace")
                if "address already in use" in text.lower() and self.attempts < 3:
                    self._spawn()
                    continue
                tail = " | ".join(text.strip().splitlines()[-3:])
                raise RuntimeError(f"Prefect's temporary server exited with code {code}: "
                                   f"{tail}")
            if healthy(self.api_url, timeout=1.0):
                self.ready_at = time.perf_counter()
                return self.api_url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Prefect's temporary server did not answer within {timeout:g} s "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        """SIGTERM without waiting: the server finishes its shutdown on its own (~0.2 s)."""
        if self.process is not None:
            if self.process.poll() is None:
                if self.ready_at is not None:
                    log.info("Stopping temporary server on http://127.0.0.1:%d", self.port)
                self.process.terminate()
            self.process = None
        self.log_path.unlink(missing_ok=True)


class RunAPI:
    """The API chosen for this process's runs: ``mode`` is ``user`` (PREFECT_API_URL),
    ``server`` (a running `stego server`), ``temporary``, or ``prefect`` (left to Prefect)."""

    def __init__(self) -> None:
        self.mode = "prefect"
        self.url: str | None = None
        self.temporary: TemporaryServer | None = None
        self.note: str | None = None

    def begin(self, temporary: bool) -> None:
        """Choose before Prefect loads; with ``temporary`` start a temporary server now if no
        other API is there. Does nothing once Prefect is imported (tests, library use)."""
        if self.mode != "prefect" or "prefect" in sys.modules:
            return
        if os.environ.get("PREFECT_API_URL") or _profile_api_url():
            self.mode = "user"
            return
        self.url, self.note = running_api_url()
        if self.url is not None:
            self.mode = "server"
        elif temporary:
            self.temporary = TemporaryServer()
            self.mode = "temporary"

    @contextlib.contextmanager
    def use(self) -> Iterator[str | None]:
        """Around the flow calls: Prefect's settings point at the chosen API (waiting for the
        temporary server if it is still starting); yields the API URL."""
        if self.mode not in ("server", "temporary"):
            yield None
            return
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
            temporary_settings,
        )

        if PREFECT_API_URL.value():  # set in .env, prefect.toml or pyproject.toml: the user's
            self.close()
            self.mode = "user"
            yield PREFECT_API_URL.value()
            return
        if self.note:
            log.warning("%s; using a temporary server", self.note)
        if self.temporary is not None:
            self.url = self.temporary.wait(startup_timeout(
                float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())))
            log.info("Starting temporary server on http://127.0.0.1:%d (started %.1f s before "
                     "it was needed; `stego server start` keeps one running between runs)",
                     self.temporary.port, self.temporary.ready_at - self.temporary.started)
        else:
            log.info("Using the stego server at %s", self.url)
        updates: dict[Any, Any] = {PREFECT_API_URL: self.url}
        if self.temporary is not None and not any(k in os.environ for k in HEARTBEAT_VARS):
            # a server that ends with this process has no one to read flow-run heartbeats
            # later, and each flow run waits up to 1 s for the heartbeat thread to wake and stop
            updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
        with temporary_settings(updates=updates):
            try:
                yield self.url
            finally:
                drain_prefect_workers()

    def close(self) -> None:
        """Stop the temporary server, if one was started (without waiting for it to exit)."""
        if self.temporary is not None:
            self.temporary.stop()
            self.temporary = None


PREFECT_STARTUP_TIMEOUT_DEFAULT = 20.0  # Prefect's own default for its temporary server
STARTUP_TIMEOUT_S = 90.0


def startup_timeout(setting: float) -> float:
    """How long a run waits for its temporary server: the user's
    ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` when set, else 90 s rather than
    Prefect's 20 s. A first run creates the server's database, and on a busy 2-core machine
    that and the server's 4 s import took over 20 s (a run that fails there only to
    succeed when retried helps no one)."""
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        return setting
    return STARTUP_TIMEOUT_S if setting == PREFECT_STARTUP_TIMEOUT_DEFAULT else setting


def drain_prefect_workers(timeout: float = 5.0) -> None:
    """Send the logs and events Prefect has queued while the API is still up."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - none running, or already stopped: nothing to send
            pass


RUN_API = RunAPI()


def begin(temporary: bool = True) -> None:
    """Choose this process's API now (see :meth:`RunAPI.begin`)."""
    RUN_API.begin(temporary)


def use_api() -> contextlib.AbstractContextManager[str | None]:
    """Context manager around flow calls (see :meth:`RunAPI.use`)."""
    return RUN_API.use()


def close() -> None:
    """Stop this process's temporary server, if any."""
    RUN_API.close()


def describe() -> dict[str, Any]:
    """Which API this process chose (for the start-up benchmark)."""
    return {"mode": RUN_API.mode, "url": RUN_API.url}
