"""One run per output directory: the lock is a lease that a rerun from any host takes over once
it has lapsed; a live one is refused; of racing takers exactly one wins."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.io.lock import LOCK_NAME, LeaseLost, check_held, output_lock

ROOT = Path(__file__).resolve().parents[2]


def _write_lock(out: Path, **owner) -> Path:
    path = out / LOCK_NAME
    path.write_text(json.dumps(owner))
    return path


def _dead_pid() -> int:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(dead.stdout)


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    with output_lock(tmp_path) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
        assert owner["expires"] > time.time() + 100 and owner["lease"] == 120
        with pytest.raises(InputError, match=r"another run \(pid \d+ on host") as exc:
            with output_lock(tmp_path):
                pass
        assert "its lease runs until" in str(exc.value) and "--force-unlock" in str(exc.value)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path, caplog):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid, host=socket.gethostname(), expires=time.time() + 3600)
    with caplog.at_level(logging.WARNING, "stego.lock"), output_lock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        assert lock.previous["pid"] == pid and lock.reason == "its process is gone"
    assert f"took over the lock of pid {pid} on host {socket.gethostname()}" in caplog.text


def test_a_lock_from_an_older_stego_without_a_lease_on_another_host_is_respected(tmp_path):
    _write_lock(tmp_path, pid=1, host="elsewhere")
    with pytest.raises(InputError, match="host elsewhere.*no lease.*--force-unlock"):
        with output_lock(tmp_path):
            pass


def test_a_lapsed_lease_from_another_host_is_taken_over_with_a_warning(tmp_path, caplog):
    # the case: the client's pod was rescheduled under another host name
    expired = time.time() - 5
    _write_lock(tmp_path, pid=1, host="client-pod-a", started=expired - 600, expires=expired,
                flow_run_id="0b5f6f9e-0000-4000-8000-000000000000")
    seen = []
    with caplog.at_level(logging.WARNING, "stego.lock"), \
            output_lock(tmp_path, on_takeover=lambda o, r: seen.append((o, r))) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
    assert seen and seen[0][0]["host"] == "client-pod-a"
    assert seen[0][1].startswith("its lease expired at ")
    line = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert len(line) == 1 and "pid 1 on host client-pod-a" in line[0]
    assert "flow run 0b5f6f9e-0000-4000-8000-000000000000" in line[0]
    assert "lease expired" in line[0]
    assert not (tmp_path / LOCK_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left aside


def test_a_live_lease_from_another_host_is_refused_until_it_lapses(tmp_path):
    expires = time.time() + 90
    path = _write_lock(tmp_path, pid=1, host="client-pod-a", expires=expires)
    with pytest.raises(InputError) as exc:
        with output_lock(tmp_path):
            pass
    msg = str(exc.value)
    assert "another run (pid 1 on host client-pod-a)" in msg
    assert time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(expires)) + " UTC" in msg
    assert "--force-unlock" in msg and "\n" not in msg
    assert json.loads(path.read_text())["host"] == "client-pod-a"  # left alone


def test_force_removes_a_live_lock_with_a_warning(tmp_path, caplog):
    _write_lock(tmp_path, pid=1, host="client-pod-a", expires=time.time() + 90)
    with caplog.at_level(logging.WARNING, "stego.lock"), \
            output_lock(tmp_path, force=True) as lock:
        assert lock.reason == "--force-unlock"
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert "took over the lock of pid 1 on host client-pod-a (--force-unlock)" in caplog.text


def test_an_unreadable_lock_is_taken_over_only_once_unchanged_for_a_lease(tmp_path):
    path = tmp_path / LOCK_NAME
    path.write_text("")  # a run killed between creating the file and writing it
    with pytest.raises(InputError, match="another run"):
        with output_lock(tmp_path, lease=60):
            pass
    old = time.time() - 61
    os.utime(path, (old, old))
    with output_lock(tmp_path, lease=60) as lock:
        assert lock.reason.startswith("unreadable lock file")


def test_the_holder_renews_its_lease(tmp_path):
    with output_lock(tmp_path, lease=1.5) as lock:  # renewed every 0.5 s
        first = json.loads(lock.path.read_text())
        time.sleep(2.5)  # longer than the lease itself
        now = json.loads(lock.path.read_text())
        assert now["expires"] > first["expires"] + 1 and now["expires"] > time.time()
        assert now["renewed"] > first["renewed"] and now["started"] == first["started"]
        # a contender from another host sees a live lease
        with pytest.raises(InputError, match="its lease runs until"):
            with output_lock(tmp_path, lease=1.5):
                pass
        lock.check()
        check_held(tmp_path)
    assert not lock.lost.is_set()


def test_a_holder_that_lost_its_lock_stops_renewing_and_fails(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, "stego.lock"):
        with output_lock(tmp_path, lease=1.5) as lock:
            # another host took over after this holder stalled for a whole lease
            aside = tmp_path / "moved"
            os.rename(lock.path, aside)
            theirs = _write_lock(tmp_path, pid=1, host="client-pod-b", token="theirs",
                                 expires=time.time() + 60)
            assert lock.lost.wait(3)
            with pytest.raises(LeaseLost, match="another run took over"):
                lock.check()
            with pytest.raises(LeaseLost):
                check_held(tmp_path)
            time.sleep(1)
            assert json.loads(aside.read_text())["token"] == lock.token  # renewals stopped
            before = aside.stat().st_mtime
            time.sleep(1)
            assert aside.stat().st_mtime == before
    assert json.loads(theirs.read_text())["host"] == "client-pod-b"  # never removed
    assert "lost its output lock (now held by pid 1 on host client-pod-b)" in caplog.text


def test_check_sees_a_takeover_before_the_next_renewal(tmp_path):
    with output_lock(tmp_path, lease=600) as lock:
        lock.path.unlink()
        _write_lock(tmp_path, pid=1, host="client-pod-b", token="theirs")
        with pytest.raises(LeaseLost):
            lock.check()


def test_of_threads_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    for round_ in range(15):
        out = tmp_path / f"r{round_}"
        out.mkdir()
        _write_lock(out, pid=1, host="client-pod-a", expires=time.time() - 1)
        start = threading.Barrier(6)
        won: list[int] = []
        refused: list[int] = []
        release = threading.Event()

        def contend(i: int, out: Path = out, start: threading.Barrier = start,
                    won: list[int] = won, refused: list[int] = refused,
                    release: threading.Event = release) -> None:
            start.wait()
            try:
                with output_lock(out):
                    won.append(i)
                    release.wait(10)
            except InputError:
                refused.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(won) + len(refused) < 6 and len(refused) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        release.set()
        for t in threads:
            t.join(10)
        assert len(won) == 1 and len(refused) == 5, (round_, won, refused)
        assert not (out / LOCK_NAME).exists() and not list(out.iterdir())


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.errors import InputError
    from pipeline.io.lock import output_lock
    out, go = Path(sys.argv[1]), float(sys.argv[2])
    while time.time() < go:
        pass
    try:
        with output_lock(out):
            print("won", flush=True)
            time.sleep(1.5)
    except InputError:
        print("refused", flush=True)
""")


def test_of_processes_racing_for_a_lapsed_lease_exactly_one_wins(tmp_path):
    _write_lock(tmp_path, pid=1, host="client-pod-a", expires=time.time() - 1)
    go = time.time() + 3  # all have imported by then, then start in the same instant
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["refused", "refused", "refused", "won"]
    assert not list(tmp_path.iterdir())
