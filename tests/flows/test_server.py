"""`stego server` and the Prefect API a run chooses: a recorded server is found by its state file
and a health check (stale, reused-pid, corrupt and silent records are not trusted), the user's
PREFECT_API_URL wins, else a temporary server starts early and is stopped at the end; runs on
either keep Prefect's task caching."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows.local_server import STATE_NAME, healthy, read_state, running_api_url

ROOT = Path(__file__).resolve().parents[2]


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"true" if self.path == "/api/health" else b"{}"
        self.send_response(200 if self.path == "/api/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_api():
    """A local HTTP server that answers Prefect's /api/health like a running server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()


def _record(home: Path, api_url: str, pid: int | None = None,
            create_time: float | None = None) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    pid = os.getpid() if pid is None else pid
    if create_time is None:
        create_time = psutil.Process(pid).create_time()
    path = home / STATE_NAME
    path.write_text(json.dumps({"pid": pid, "create_time": create_time, "api_url": api_url,
                                "port": int(api_url.rsplit(":", 1)[1].split("/")[0])}))
    return path


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/api"


def test_a_recorded_running_server_is_found(tmp_path, fake_api):
    _record(tmp_path, fake_api)
    assert read_state(tmp_path).status == "running"
    assert running_api_url(tmp_path) == (fake_api, None)


def test_a_state_file_whose_process_is_gone_is_stale_and_removed(tmp_path, fake_api):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = _record(tmp_path, fake_api, pid=gone.pid, create_time=time.time())
    assert read_state(tmp_path).status == "stale"
    assert not path.exists()
    assert running_api_url(tmp_path) == (None, None)


def test_a_reused_pid_is_stale(tmp_path, fake_api):
    path = _record(tmp_path, fake_api, create_time=12345.0)  # alive, but not the same process
    assert read_state(tmp_path).status == "stale"
    assert not path.exists()


def test_a_corrupt_state_file_is_stale(tmp_path):
    (tmp_path / STATE_NAME).write_text("{not json")
    assert read_state(tmp_path).status == "stale"
    assert not (tmp_path / STATE_NAME).exists()


def test_a_recorded_server_that_does_not_answer_is_not_used(tmp_path):
    path = _record(tmp_path, _closed_port_url())
    url, why = running_api_url(tmp_path)
    assert url is None and "did not answer" in why
    assert path.exists()  # its process lives: `stego server stop` decides, not a run


def test_a_silent_listener_is_given_up_within_the_health_timeout():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        t0 = time.monotonic()
        assert not healthy(f"http://127.0.0.1:{silent.getsockname()[1]}/api", timeout=0.5)
        assert time.monotonic() - t0 < 2.0


BEGIN = """
import json, sys
from flows import prefect_api
prefect_api.begin(temporary=True)
api = prefect_api.RUN_API
pid = api.temporary.process.pid if api.temporary else None
prefect_api.close()
print(json.dumps({"mode": api.mode, "url": api.url, "pid": pid,
                  "prefect": "prefect" in sys.modules}))
"""


def _begin(env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", BEGIN], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"),
               STEGO_SERVER_HOME=str(tmp_path / "stego-server"), **extra)
    return env


def _gone(pid: int, within: float = 30.0) -> bool:
    """The process exits within ``within`` s. A temporary server stopped while still starting
    took over 10 s to exit on the 2-core machine with a benchmark running beside the tests."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_the_api_is_chosen_before_prefect_loads(tmp_path, fake_api):
    # the user's PREFECT_API_URL wins over everything
    got = _begin(_clean_env(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api"))
    assert got == {"mode": "user", "url": None, "pid": None, "prefect": False}
    # so does one in the active Prefect profile (what `prefect config set` writes)
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "mine"\n[profiles.mine]\n'
                                        'PREFECT_API_URL = "http://127.0.0.1:9/api"\n')
    assert _begin(_clean_env(tmp_path))["mode"] == "user"
    (home / "profiles.toml").unlink()
    # then a running stego server
    _record(tmp_path / "stego-server", fake_api)
    assert _begin(_clean_env(tmp_path)) == {"mode": "server", "url": fake_api, "pid": None,
                                            "prefect": False}
    # else a temporary server, started at once and stopped by close()
    (tmp_path / "stego-server" / STATE_NAME).unlink()
    got = _begin(_clean_env(tmp_path))
    assert got["mode"] == "temporary" and not got["prefect"]
    assert _gone(got["pid"])


USE = """
import json
from flows import prefect_api
prefect_api.begin(temporary=True)
began, pid = prefect_api.RUN_API.mode, prefect_api.RUN_API.temporary.process.pid
with prefect_api.use_api() as url:
    pass
print(json.dumps({"began": began, "mode": prefect_api.RUN_API.mode, "url": url, "pid": pid}))
"""


def test_an_api_url_in_prefect_toml_wins_once_prefect_loads(tmp_path):
    """Settings files only Prefect reads (prefect.toml, .env) are honoured too: the early
    temporary server is stopped and the run uses the configured API."""
    work = tmp_path / "project"
    work.mkdir()
    (work / "prefect.toml").write_text('[api]\nurl = "http://127.0.0.1:9/api"\n')
    env = _clean_env(tmp_path, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", USE], capture_output=True, text=True,
                          cwd=work, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["began"] == "temporary" and got["mode"] == "user"
    assert got["url"] == "http://127.0.0.1:9/api"
    assert _gone(got["pid"])


def _server_boots(prefect_home: Path) -> list[psutil.Process]:
    """Temporary server processes started with this PREFECT_HOME."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "flows.server_boot" in (proc.info["cmdline"] or []) and \
                    proc.environ().get("PREFECT_HOME") == str(prefect_home):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _stego(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=300)


def _no_server_left(prefect_home: Path, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _server_boots(prefect_home):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_bad_input_stops_the_temporary_server_it_started(tmp_path, pixel_model):
    env = _clean_env(tmp_path)
    done = _stego(["segment", str(tmp_path / "missing.tif"), "--model", str(pixel_model),
                   "--out", str(tmp_path / "o")], env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert _no_server_left(tmp_path / "prefect-home")


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_run_takes_its_temporary_server_with_it(tmp_path, demo_scene, pixel_model):
    env = _clean_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "segment", str(demo_scene[0]),
                             "--model", str(pixel_model), "--out", str(tmp_path / "o"), "-q"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _server_boots(tmp_path / "prefect-home") and time.monotonic() < deadline:
            time.sleep(0.02)
        servers = _server_boots(tmp_path / "prefect-home")
        assert servers, "no temporary server was started"
        assert servers[0].pid != proc.pid and os.getpgid(servers[0].pid) != proc.pid
    finally:
        proc.kill()  # SIGKILL: no cleanup code of stego's runs
        proc.wait()
    assert _no_server_left(tmp_path / "prefect-home")


def test_cold_then_stego_server_runs_share_the_task_cache(tmp_path, demo_scene, pixel_model):
    """A cold run on the temporary server, then `stego server`: the second run finds the
    first one's cached stages (Prefect's cache records live with the client, not the server),
    its flow run is recorded in the server, and `stop` ends the server."""
    import httpx

    env = _clean_env(tmp_path, PREFECT_LOGGING_LEVEL="INFO")
    argv = ["segment", str(demo_scene[0]), "--model", str(pixel_model), "--out",
            str(tmp_path / "out")]
    cold = _stego(argv, env)
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert "Starting temporary server on http://127.0.0.1:" in cold.stderr
    assert _no_server_left(tmp_path / "prefect-home")
    first = json.loads((tmp_path / "out" / "run.json").read_text())
    assert first["status"] == "complete" and first["cached_stages"] == []

    started = _stego(["server", "start", "--no-ui", "--json"], env)
    assert started.returncode == 0, started.stderr[-3000:]
    state = json.loads(started.stdout)
    try:
        assert state["status"] == "running"
        status = _stego(["server", "status", "--json"], env)
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == state["pid"]
        warm = _stego(argv, env)
        assert warm.returncode == 0, warm.stderr[-3000:]
        assert f"Using the stego server at {state['api_url']}" in warm.stderr
        assert "temporary server" not in warm.stderr
        second = json.loads((tmp_path / "out" / "run.json").read_text())
        assert {"infer-blocks", "write-cog", "vectorize"} <= set(second["cached_stages"])
        runs = httpx.post(f"{state['api_url']}/flow_runs/filter",
                          json={"flows": {"name": {"any_": ["segment"]}}}, timeout=10).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
    finally:
        stopped = _stego(["server", "stop"], env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert _gone(state["pid"])
    after = _stego(["server", "status"], env)
    assert after.returncode == 3 and "not running" in after.stdout


def test_a_run_waits_90_s_for_its_temporary_server_unless_the_user_set_a_timeout(monkeypatch):
    from flows.prefect_api import startup_timeout

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert startup_timeout(20.0) == 90.0  # Prefect's default: too short on a busy machine
    assert startup_timeout(45.0) == 45.0  # set in prefect.toml or a profile
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
    assert startup_timeout(20.0) == 20.0  # set explicitly, even to the default
