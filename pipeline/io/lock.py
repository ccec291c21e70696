"""One run per output directory: a lock file naming its owner (pid and host).

A lock left by a process that no longer exists on this host is stale and is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import InputError

LOCK_NAME = ".stego.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def output_lock(out_dir: Path) -> Iterator[Path]:
    """Hold ``OUT_DIR/.stego.lock`` for the duration of a run; refuse a second live run."""
    path = Path(out_dir) / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            same_host = owner.get("host") == me["host"]
            if same_host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise InputError(out_dir, f"another run (pid {owner.get('pid', '?')} on host "
                             f"{owner.get('host', '?')}) is writing to this directory; "
                             f"remove {path} if it is not running") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield path
    finally:
        if _read(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
