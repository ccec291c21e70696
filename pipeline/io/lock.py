"""One run per output directory: a lock file that is a lease, renewed while its run lives.

``OUT_DIR/.stego.lock`` holds JSON: ``pid``, ``host``, ``started``, ``renewed``, ``expires``
(Unix seconds), ``lease`` (seconds), a random ``token`` and whatever the caller adds (the
Prefect flow run id). A thread of the holder renews ``expires`` every ``lease / 3`` seconds.
Another run takes the lock over, with a warning naming the old owner, when

* the owner's process is gone (same host: at once),
* its lease has lapsed (any host: now > ``expires``; a rescheduled pod with a new host name),
* the file cannot be read and has not changed for a lease (a run killed while creating it),
* or the caller forces it (``--force-unlock``).

Clocks: ``expires`` is written with the holder's wall clock and compared with the taker's.
Hosts must agree to well within ``lease - lease / 3`` (NTP keeps them within milliseconds):
a live holder's ``expires`` is always at least that far ahead of its own clock.

Takeover is race-safe: a lock file is only ever removed by a process holding the short-lived
``.stego.lock.break`` file (created with O_EXCL, held for microseconds), and only if the path
is still the very inode it judged stale (its descriptor stays open, so the inode number cannot
be reused meanwhile); a new lock is created with O_EXCL. Of any number of contenders exactly
one holds the lock, and a lock created after another was judged is never removed. A holder
whose lock was taken over (it stalled for a whole lease) finds someone else's token at its
next renewal: it logs an error, stops renewing, and :meth:`RunLock.check` raises
:class:`LeaseLost`, which the run calls before each stage and as blocks finish.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

LOCK_NAME = ".stego.lock"
DEFAULT_LEASE_S = 120.0
_log = logging.getLogger("stego.lock")
_HELD: dict[str, RunLock] = {}  # resolved output directory -> this process's lock on it


class LeaseLost(RuntimeError):
    """This run's output lock was taken over or removed: it must stop writing."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _read(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return {}


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_owner(owner: dict[str, Any]) -> str:
    """``pid N on host H`` (and its Prefect flow run, if it named one)."""
    text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("flow_run_id"):
        text += f", flow run {owner['flow_run_id']}"
    return text


def _stale_reason(owner: dict[str, Any], st: os.stat_result, lease: float,
                  force: bool) -> str | None:
    """Why an existing lock may be taken over, or None while it is held."""
    now = time.time()
    if force:
        return "--force-unlock"
    if not owner:
        if now - st.st_mtime > lease:
            return f"unreadable lock file, unchanged since {_when(st.st_mtime)}"
        return None
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return "its process is gone"
    expires = owner.get("expires")
    if isinstance(expires, int | float) and now > expires:
        return f"its lease expired at {_when(expires)} ({now - expires:.0f} s ago)"
    return None


BREAK_STALE_S = 10.0  # a break file this old was left by a process killed while holding it


@contextmanager
def _breaking(path: Path, wait: float) -> Iterator[bool]:
    """Hold ``<lock>.break`` (O_EXCL), the right to remove a lock file; yields False when it
    stayed busy for ``wait`` seconds. Held for microseconds: one left behind by a killed
    process is removed once it is BREAK_STALE_S old."""
    brk = path.with_name(path.name + ".break")
    deadline = time.monotonic() + wait
    while True:
        try:
            os.close(os.open(brk, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            try:
                if time.time() - brk.stat().st_mtime > BREAK_STALE_S:
                    brk.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
        if time.monotonic() >= deadline:
            yield False
            return
        time.sleep(0.005 + 0.02 * (uuid.uuid4().int % 100) / 100)
    try:
        yield True
    finally:
        brk.unlink(missing_ok=True)


def _remove_if_same(path: Path, ino: int, wait: float = 5.0) -> bool:
    """Remove the lock file at ``path`` if it is still the inode ``ino`` (whose descriptor the
    caller holds open); True when this call removed it."""
    with _breaking(path, wait) as held:
        if not held:
            return False
        try:
            if os.stat(path).st_ino != ino:
                return False  # removed, and maybe a newer lock created, since it was judged
        except FileNotFoundError:
            return False
        path.unlink()
        return True


class RunLock:
    """A held output lock: ``path``, its content ``owner``, the ``previous`` owner it took
    over (with ``reason``), and ``lost`` once someone else holds it."""

    def __init__(self, path: Path, lease: float, extra: dict[str, Any],
                 log: logging.Logger | logging.LoggerAdapter) -> None:
        now = time.time()
        self.path = path
        self.lease = float(lease)
        self.token = uuid.uuid4().hex
        self.owner: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": now, "renewed": now, "expires": now + lease,
                                      "lease": self.lease, "token": self.token, **extra}
        self.previous: dict[str, Any] | None = None
        self.reason: str | None = None
        self.lost = threading.Event()
        self._log = log
        self._size = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _payload(self) -> bytes:
        data = json.dumps(self.owner).encode()
        self._size = max(self._size, len(data))
        return data.ljust(self._size)  # never shorter: a reader sees no stale tail

    def create(self) -> bool:
        """Create the lock file (O_EXCL); False when one exists."""
        now = time.time()
        self.owner.update(started=now, renewed=now, expires=now + self.lease)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.pwrite(fd, self._payload(), 0)
        finally:
            os.close(fd)
        return True

    def renew(self) -> bool:
        """Move ``expires`` a lease ahead if the file is still ours; False when it is not.

        Written in place through a descriptor whose content was just checked: a lock file
        removed by a taker meanwhile gets the write, never the taker's new file."""
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                fd = -1
            if fd >= 0:
                try:
                    if _parse(os.pread(fd, 1 << 16, 0)).get("token") == self.token:
                        now = time.time()
                        self.owner.update(renewed=now, expires=now + self.lease)
                        os.pwrite(fd, self._payload(), 0)
                        return True
                finally:
                    os.close(fd)
            if attempt == 0:  # read again once: a lost lease is never a misread
                time.sleep(min(1.0, self.lease / 12))
        return False

    def _renew_loop(self) -> None:
        interval = self.lease / 3
        while not self._stop.wait(interval):
            try:
                held = self.renew()
            except OSError as exc:  # a full disk, a network file system hiccup: try again
                self._log.warning("%s: could not renew the lock lease (%s)", self.path, exc)
                continue
            if not held:
                now = _read(self.path)
                by = f"now held by {describe_owner(now)}" if now else "removed"
                self._log.error("%s: this run lost its output lock (%s); it stops", self.path,
                                by)
                self.lost.set()
                return

    def start(self) -> None:
        """Start renewing in a daemon thread."""
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"stego-lock-renew {self.path.parent.name}")
        self._thread.start()

    def check(self) -> None:
        """Raise LeaseLost once another run holds (or someone removed) this lock (the file
        is read: a takeover is seen at once, not only at the next renewal)."""
        for attempt in range(2):
            if self.lost.is_set() or _read(self.path).get("token") == self.token:
                break
            if attempt == 0:  # read again once: a lost lease is never a misread
                time.sleep(0.2)
            else:
                self.lost.set()
        if self.lost.is_set():
            raise LeaseLost(f"{self.path.parent}: another run took over this output directory "
                            "(this run's lock lease lapsed or was force-unlocked); stopped")

    def release(self) -> None:
        """Stop renewing; remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if _parse(os.pread(fd, 1 << 16, 0)).get("token") == self.token:
                # (a break file stuck for longer leaves the lock: the next run takes it over)
                _remove_if_same(self.path, os.fstat(fd).st_ino, wait=BREAK_STALE_S + 5)
        finally:
            os.close(fd)


def check_held(out_dir: str | Path) -> None:
    """Raise LeaseLost if this process holds the lock of ``out_dir`` and lost it."""
    lock = _HELD.get(str(Path(out_dir).resolve()))
    if lock is not None:
        lock.check()


def _refusal(out_dir: Path, path: Path, owner: dict[str, Any]) -> InputError:
    expires = owner.get("expires")
    until = (f"its lease runs until {_when(expires)} and is taken over once it lapses"
             if isinstance(expires, int | float) else "its lock has no lease (an older stego)")
    return InputError(out_dir, f"another run ({describe_owner(owner)}) is writing to this "
                      f"directory; {until}; if it is not running, rerun with --force-unlock "
                      f"(or remove {path})")


def _acquire(lock: RunLock, out_dir: Path, force: bool,
             on_takeover: Callable[[dict[str, Any], str], None] | None) -> None:
    path = lock.path
    for _ in range(50):  # each pass either wins, refuses, or saw the lock change under it
        if lock.create():
            return
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # released or removed meanwhile
        try:  # the descriptor keeps the inode (and its number) while it is judged
            st = os.fstat(fd)
            owner = _parse(os.pread(fd, 1 << 16, 0))
            reason = _stale_reason(owner, st, lock.lease, force)
            force = False  # only the lock first seen is forced away, never a newer one
            if reason is None:
                raise _refusal(out_dir, path, owner)
            if not _remove_if_same(path, st.st_ino):
                continue
        finally:
            os.close(fd)
        lock.previous, lock.reason = owner, reason
        lock._log.warning("%s: took over the lock of %s (%s)", out_dir,
                          describe_owner(owner) if owner else "an unknown run", reason)
        if on_takeover is not None:
            on_takeover(owner, reason)
    raise InputError(out_dir, "could not take the output lock: it kept changing (several "
                     "runs starting at once?)")


@contextmanager
def output_lock(out_dir: Path, *, lease: float = DEFAULT_LEASE_S, force: bool = False,
                extra: dict[str, Any] | None = None,
                on_takeover: Callable[[dict[str, Any], str], None] | None = None,
                log: logging.Logger | logging.LoggerAdapter | None = None) -> Iterator[RunLock]:
    """Hold ``OUT_DIR/.stego.lock`` as a lease for the duration of a run.

    A live run's lock is refused (InputError naming it, its lease expiry and
    ``--force-unlock``); a stale one is taken over (see the module docstring), ``force``
    removes any. ``extra`` goes into the file; ``on_takeover(old_owner, reason)`` runs after
    a stale lock was removed.
    """
    if not lease > 0:
        raise ValueError("lease must be positive")
    lock = RunLock(Path(out_dir) / LOCK_NAME, lease, dict(extra or {}), log or _log)
    _acquire(lock, Path(out_dir), force, on_takeover)
    key = str(Path(out_dir).resolve())
    lock.start()
    _HELD[key] = lock
    try:
        yield lock
    finally:
        if _HELD.get(key) is lock:
            del _HELD[key]
        lock.release()
