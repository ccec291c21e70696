"""`stego server`: a long-lived local Prefect server in the background (its own home, port and
SQLite database), recorded in a small state file that later `stego` runs find in milliseconds."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.io.files import write_json_atomic

STATE_NAME = "server.json"
HEALTH_TIMEOUT_S = 0.5  # a run waits at most this long for a recorded server to answer


def server_home(home: Path | str | None = None) -> Path:
    """The server's directory: ``home``, else ``$STEGO_SERVER_HOME``, else ~/.stego/server."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get("STEGO_SERVER_HOME")
    return Path(env).expanduser() if env else Path.home() / ".stego" / "server"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (chosen by the OS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(api_url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether a Prefect API answers ``GET /health`` with ``true`` within ``timeout`` seconds.

    Plain http.client on purpose: no proxy settings apply to a local server, and it imports in
    milliseconds (Prefect's own client takes a second to import)."""
    rest = api_url.split("://", 1)[-1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host or hostport, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", f"/{path}".rstrip("/") + "/health")
        response = conn.getresponse()
        return response.status == 200 and response.read().strip() == b"true"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@dataclass
class ServerState:
    """What `stego server status` reports: ``running``, ``not answering``, ``stale`` or
    ``not running``, with the recorded server (if any)."""

    status: str
    home: Path
    record: dict[str, Any]

    @property
    def api_url(self) -> str | None:
        """The recorded server's API URL (``http://127.0.0.1:PORT/api``)."""
        return self.record.get("api_url")

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for ``status --json``)."""
        return {"status": self.status, "home": str(self.home), **self.record}


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {"corrupt": True}
    return record if isinstance(record, dict) else {"corrupt": True}


def _same_process(record: dict[str, Any]) -> bool:
    """The recorded pid is alive and is still the process that was started (not a new process
    that reused the pid after a reboot or a crash)."""
    import psutil  # a dependency of dask.distributed

    try:
        proc = psutil.Process(int(record["pid"]))
        return abs(proc.create_time() - float(record["create_time"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def read_state(home: Path | str | None = None, timeout: float = HEALTH_TIMEOUT_S) -> ServerState:
    """The state of the server recorded in ``HOME/server.json``; a stale record (its process
    is gone, or the file is unreadable) is removed and reported as ``stale``."""
    home = server_home(home)
    path = home / STATE_NAME
    record = _read_record(path)
    if not record:
        return ServerState("not running", home, {})
    if record.get("corrupt") or not _same_process(record):
        path.unlink(missing_ok=True)
        return ServerState("stale", home, record)
    if healthy(str(record.get("api_url")), timeout):
        return ServerState("running", home, record)
    return ServerState("not answering", home, record)


def running_api_url(home: Path | str | None = None) -> tuple[str | None, str | None]:
    """(API URL of a running `stego server`, None) or (None, why a recorded one is not used:
    None when there is none)."""
    state = read_state(home)
    if state.status == "running":
        return state.api_url, None
    if state.status == "not answering":
        return None, (f"the stego server recorded in {state.home / STATE_NAME} (pid "
                      f"{state.record.get('pid')}, {state.api_url}) did not answer within "
                      f"{HEALTH_TIMEOUT_S:g} s")
    return None, None


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    """One `stego server start` or `stop` at a time per home (an advisory file lock)."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in tail)


def server_command(port: int, ui: bool) -> list[str]:
    """Prefect's own `prefect server start` in the foreground of the background process."""
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
            "--port", str(port), "--analytics-off", "--ui" if ui else "--no-ui"]


def start_server(home: Path | str | None = None, port: int | None = None, ui: bool = True,
                 timeout: float = 120.0) -> ServerState:
    """Start the background server (or find the one already running) and wait until it answers.

    The server runs `prefect server start` with ``PREFECT_HOME=HOME`` (its own SQLite
    database, log ``HOME/server.log``) in a new session, so it outlives the terminal."""
    home = server_home(home)
    with _home_lock(home):
        state = read_state(home)
        if state.status in ("running", "not answering"):
            if state.status == "running":
                return state
            raise InputError(str(home / STATE_NAME), f"a server (pid {state.record['pid']}) "
                             "is recorded but does not answer; `stego server stop` first")
        if port is not None and not _port_free(port):
            raise InputError("--port", f"127.0.0.1:{port} is already in use")
        port = port or free_port()
        log_path = home / "server.log"
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(server_command(port, ui), env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=home,
                                    start_new_session=True)
        import psutil

        record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                  "port": port, "api_url": f"http://127.0.0.1:{port}/api",
                  "ui_url": f"http://127.0.0.1:{port}" if ui else None, "home": str(home),
                  "log": str(log_path), "started": datetime.now(UTC).isoformat(),
                  "python": sys.executable}
        write_json_atomic(home / STATE_NAME, record)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                (home / STATE_NAME).unlink(missing_ok=True)
                raise RuntimeError(f"the Prefect server exited with code {proc.returncode}: "
                                   f"{_log_tail(log_path)} (log: {log_path})")
            if healthy(record["api_url"]):
                return ServerState("running", home, record)
            time.sleep(0.2)
        _terminate(proc.pid, 10.0)
        (home / STATE_NAME).unlink(missing_ok=True)
        raise RuntimeError(f"the Prefect server did not answer within {timeout:g} s; stopped "
                           f"it (log: {log_path})")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _terminate(pid: int, wait_s: float) -> bool:
    """SIGTERM the server's process group, SIGKILL it after ``wait_s``; True if it had run."""
    import psutil

    try:
        proc = psutil.Process(pid)
        os.killpg(os.getpgid(pid), signal.SIGTERM)
    except (psutil.Error, ProcessLookupError):
        return False
    try:
        proc.wait(wait_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.wait(5)
    return True


def stop_server(home: Path | str | None = None, wait_s: float = 15.0) -> ServerState:
    """Stop the recorded server (SIGTERM, then SIGKILL after ``wait_s``) and remove its state
    file; returns the state it was in before."""
    home = server_home(home)
    with _home_lock(home):
        state = read_state(home)
        if state.status in ("running", "not answering"):
            _terminate(int(state.record["pid"]), wait_s)
            (home / STATE_NAME).unlink(missing_ok=True)
        return state
