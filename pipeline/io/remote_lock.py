"""One run per object-store output: a lease object ``URL/.stego.lock`` (the local lock's JSON:
``pid``, ``host``, ``started``, ``renewed``, ``expires``, ``lease``, ``token``).

Object stores have no exclusive create, so the lease is taken in two steps: a run refuses a
URL whose lease is another's and still running (until ``expires``; ``--force-unlock`` takes
it anyway), writes its own, and reads it back after a moment: of two runs that started
together the later writer keeps it and the other refuses at once. The holder renews it every
``lease / 3`` seconds, and :meth:`RemoteLease.check` (called before publishing) raises
:class:`~pipeline.io.lock.LeaseLost` when the object no longer carries its token, so a run
whose lease lapsed and was taken never publishes over the new owner's outputs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.errors import InputError
from pipeline.io.lock import LOCK_NAME, LeaseLost, _when, describe_owner
from pipeline.io.remote import filesystem, write_bytes

SETTLE_S = 1.0  # between writing the lease and reading it back
_log = logging.getLogger("stego.lock")


class RemoteLease:
    """This process's lease on the output at ``url``."""

    def __init__(self, url: str, lease: float, settle: float = SETTLE_S) -> None:
        self.url = url.rstrip("/")
        self.path = f"{self.url}/{LOCK_NAME}"
        self.lease, self.settle = float(lease), float(settle)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict[str, Any] | None:
        """The lease object's content; None when there is none, {} when it is unreadable."""
        fs, path = filesystem(self.path)
        fs.invalidate_cache()
        try:
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        now = time.time()
        write_bytes(self.path, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "started": self.started,
            "renewed": now, "expires": now + self.lease, "lease": self.lease,
            "token": self.token}).encode())

    def refuse_if_held(self, force: bool = False) -> tuple[dict[str, Any], bool] | None:
        """Raise InputError naming the run whose live lease the URL carries (unless
        ``force``); returns another run's lease found and whether it is live (None: none)."""
        owner = self.owner()
        if not owner or owner.get("token") == self.token:
            return None
        expires = float(owner.get("expires", 0))
        live = expires > time.time()
        if live and not force:
            raise InputError(self.url, f"another run ({describe_owner(owner)}) is writing "
                             f"here, its lease runs until {_when(expires)}; wait for it, "
                             "or rerun with --force-unlock if it is dead")
        return owner, live

    def acquire(self, force: bool = False) -> None:
        """Take the lease, or raise InputError naming the run that holds it."""
        other = self.refuse_if_held(force)
        if other is not None:
            owner, live = other
            _log.warning("%s: taking over the output from %s (%s)", self.url,
                         describe_owner(owner), "forced" if live else "its lease lapsed")
        self._write()
        time.sleep(self.settle)
        now = self.owner() or {}
        if now.get("token") != self.token:
            raise InputError(self.url, f"another run ({describe_owner(now)}) took this output "
                             "at the same moment; rerun when it has finished")
        self._thread = threading.Thread(target=self._renew_loop, name="stego-remote-lease",
                                        daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                owner = self.owner() or {}
                if owner.get("token") != self.token:
                    self.lost = (f"taken over by {describe_owner(owner)}" if owner
                                 else "its lease object was removed")
                    _log.error("%s: this run's lease was %s: it will not publish", self.url,
                               self.lost)
                    return
                self._write()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried, then lapses
                _log.warning("%s: renewing the lease failed (%s)", self.url, exc)

    def check(self) -> None:
        """Raise LeaseLost unless the lease object still carries this run's token."""
        if self.lost is None and (self.owner() or {}).get("token") != self.token:
            self.lost = "another run holds it now"
        if self.lost is not None:
            raise LeaseLost(f"{self.url}: this run's lease was {self.lost}; nothing published")

    def release(self) -> None:
        """Stop renewing; remove the lease object if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (self.owner() or {}).get("token") == self.token:
                fs, path = filesystem(self.path)
                fs.rm_file(path)
        except Exception as exc:  # noqa: BLE001 - it lapses by itself
            _log.warning("%s: could not remove the lease (%s); it lapses by itself",
                         self.url, exc)


def check_lease_free(url: str, force: bool = False) -> None:
    """Before a command starts: one line naming the run that holds ``url``'s lease."""
    RemoteLease(url, 0.0).refuse_if_held(force)


@contextmanager
def remote_lease(url: str, lease: float, force: bool = False,
                 settle: float = SETTLE_S) -> Iterator[RemoteLease]:
    """Hold the lease on the output at ``url`` for the block (see the module's docstring)."""
    held = RemoteLease(url, lease, settle)
    held.acquire(force)
    try:
        yield held
    finally:
        held.release()
