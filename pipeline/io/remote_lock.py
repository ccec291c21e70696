"""One run per object-store output: a lease object ``URL/.stego.lock`` (the local lock's JSON:
``pid``, ``host``, ``started``, ``renewed``, ``expires``, ``lease``, ``token``).

A run refuses a URL whose lease is another's and still running (until ``expires``;
``--force-unlock`` takes it anyway), then writes its own. On S3 every write of the lease is
conditional (the conditional writes of S3, which AWS and SeaweedFS honour): the first one
is an exclusive create (``If-None-Match: *``), a takeover or a renewal replaces only the
version that was read (``If-Match`` its ETag). Of two runs racing for the same URL, or a
takeover racing the holder's renewal, exactly one write lands and the other run refuses at
once. Other stores (``gs://``, ``az://``, ``file://``), and S3 servers that ignore the
conditions, are covered by reading the lease back after a moment: of two runs that started
together the later writer keeps it. The holder renews it every ``lease / 3`` seconds, and
:meth:`RemoteLease.check` (called before publishing) raises
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

SETTLE_S = 1.0  # between writing the lease and reading it back (stores without conditions)
_log = logging.getLogger("stego.lock")
_ABSENT = ""  # the version of a lease object that is not there (an exclusive create)


class RaceLost(Exception):
    """A conditional write of the lease found another version than the one it was read as."""


def conditional(fs: Any) -> bool:
    """Whether writes through ``fs`` can be made conditional (S3: If-None-Match / If-Match)."""
    return "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 refusal of a conditional write (412 PreconditionFailed, 409 conflict)."""
    seen: BaseException | None = exc
    while seen is not None:
        code = str(getattr(seen, "response", {}).get("Error", {}).get("Code", ""))
        if code in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
            return True
        if "pre-condition" in str(seen).lower() or "precondition" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RemoteLease:
    """This process's lease on the output at ``url``."""

    def __init__(self, url: str, lease: float, settle: float = SETTLE_S) -> None:
        self.url = url.rstrip("/")
        self.path = f"{self.url}/{LOCK_NAME}"
        self.lease, self.settle = float(lease), float(settle)
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self.lost: str | None = None
        self.version: str | None = None  # the lease object's version this run last wrote
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner(self) -> dict[str, Any] | None:
        """The lease object's content; None when there is none, {} when it is unreadable."""
        return self.read()[0]

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lease object's content (as :meth:`owner`) and the version it was read as: its
        ETag where writes can be conditional (read before the content, so a write made between
        the two reads makes a conditional write on it fail), ``""`` when there is none, None
        elsewhere."""
        fs, path = filesystem(self.path)
        fs.invalidate_cache()
        version: str | None = None
        try:
            if conditional(fs):
                version = str(fs.info(path).get("ETag") or "") or None
            raw = fs.cat_file(path)
        except FileNotFoundError:
            return None, _ABSENT if conditional(fs) else None
        try:
            data = json.loads(raw)
        except ValueError:
            return {}, version
        return (data if isinstance(data, dict) else {}), version

    def put(self, version: str | None) -> None:
        """Write this run's lease over ``version`` of the object (see :meth:`read`): on S3 only
        if the object is still that version, else :class:`RaceLost`; elsewhere plainly."""
        now = time.time()
        data = json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "started": self.started,
            "renewed": now, "expires": now + self.lease, "lease": self.lease,
            "token": self.token}).encode()
        fs, path = filesystem(self.path)
        if version is None or not conditional(fs):
            write_bytes(self.path, data)
            self.version = None
            return
        when = {"mode": "create"} if version == _ABSENT else {"IfMatch": version}
        try:
            out = fs.pipe_file(path, data, **when)
        except Exception as exc:
            if _precondition_failed(exc):
                raise RaceLost(str(exc)) from None
            raise
        etag = out.get("ETag") if isinstance(out, dict) else None
        self.version = str(etag) if etag else self.read()[1]

    def refuse_if_held(self, force: bool = False,
                       owner: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool] | None:
        """Raise InputError naming the run whose live lease the URL carries (unless
        ``force``); returns another run's lease found and whether it is live (None: none).
        ``owner``: the lease object's content when it was just read."""
        if owner is None:
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
        found, version = self.read()
        other = self.refuse_if_held(force, found)
        if other is not None:
            owner, live = other
            _log.warning("%s: taking over the output from %s (%s)", self.url,
                         describe_owner(owner), "forced" if live else "its lease lapsed")
        try:
            self.put(version)
        except RaceLost:
            now = self.owner() or {}
            raise InputError(self.url, f"another run ({describe_owner(now)}) took this output "
                             "at the same moment; rerun when it has finished") from None
        if self.version is None:  # no conditional write: the later of two writers keeps it
            time.sleep(self.settle)
        now = self.owner() or {}
        if now.get("token") != self.token:
            raise InputError(self.url, f"another run ({describe_owner(now)}) took this output "
                             "at the same moment; rerun when it has finished")
        self._thread = threading.Thread(target=self._renew_loop, name="stego-remote-lease",
                                        daemon=True)
        self._thread.start()

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost`` says why) when it is no longer this run's.
        On S3 the new lease replaces only the version this run wrote last."""
        owner = self.owner() or {}
        if owner.get("token") != self.token:
            self.lost = (f"taken over by {describe_owner(owner)}" if owner
                         else "its lease object was removed")
        else:
            try:
                self.put(self.version)
                return True
            except RaceLost:
                self.lost = f"taken over by {describe_owner(self.owner() or {})}"
        _log.error("%s: this run's lease was %s: it will not publish", self.url, self.lost)
        return False

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not self.renew():
                    return
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
