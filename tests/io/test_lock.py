"""One run per output directory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from pipeline.errors import InputError
from pipeline.io.lock import LOCK_NAME, output_lock


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    with output_lock(tmp_path) as lock:
        owner = json.loads(lock.read_text())
        assert owner["host"] == socket.gethostname()
        with pytest.raises(InputError, match=r"another run \(pid \d+ on host"):
            with output_lock(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host":
                                                  socket.gethostname()}))
    with output_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] != int(dead.stdout)


def test_a_lock_held_on_another_host_is_respected(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(InputError, match="host elsewhere"):
        with output_lock(tmp_path):
            pass
