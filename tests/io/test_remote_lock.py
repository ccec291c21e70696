"""One writer per object-store output, on any host: the lease object URL/.stego.lock, against
a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from flows.cli import main
from pipeline.errors import InputError
from pipeline.io.lock import LOCK_NAME, LeaseLost
from pipeline.io.remote import MANIFEST, filesystem, write_bytes
from pipeline.io.remote_lock import RaceLost, RemoteLease, remote_lease


def _url() -> str:
    return f"s3://results/lease/{uuid.uuid4().hex[:8]}"


def _plant(url: str, expires_in: float, host: str = "client-pod-b") -> None:
    """A lease of another run, on another host, expiring ``expires_in`` s from now."""
    now = time.time()
    write_bytes(f"{url}/{LOCK_NAME}", json.dumps({
        "pid": 4242, "host": host, "started": now - 60, "renewed": now,
        "expires": now + expires_in, "lease": 120, "token": "theirs"}).encode())


def _keys(url: str) -> list[str]:
    fs, root = filesystem(url)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def test_a_second_run_on_the_same_url_is_refused_while_the_first_holds_it(s3_server):
    url = _url()
    with remote_lease(url, 30, settle=0.1) as first:
        with pytest.raises(InputError, match=r"another run \(pid \d+ on host .*lease runs"):
            with remote_lease(url, 30, settle=0.1):
                pass
        first.check()  # the refused run left the holder's lease alone
    assert LOCK_NAME not in _keys(url)  # released: the object is gone


def test_a_live_lease_of_another_host_is_refused_and_a_lapsed_one_taken_over(s3_server):
    url = _url()
    _plant(url, expires_in=60)
    with pytest.raises(InputError, match="pid 4242 on host client-pod-b"):
        with remote_lease(url, 30, settle=0.1):
            pass
    _plant(url, expires_in=-1)  # its holder died and the lease lapsed
    with remote_lease(url, 30, settle=0.1) as held:
        held.check()
    _plant(url, expires_in=60)
    with remote_lease(url, 30, force=True, settle=0.1) as held:  # --force-unlock
        held.check()


def test_a_run_whose_lease_was_taken_over_must_not_publish(s3_server):
    url = _url()
    with remote_lease(url, 30, settle=0.1) as held:
        _plant(url, expires_in=60)  # another host took it while this run stalled
        with pytest.raises(LeaseLost, match="nothing published"):
            held.check()
    assert LOCK_NAME in _keys(url)  # the new owner's lease stays


def test_of_two_runs_that_both_found_no_lease_only_the_first_write_lands(s3_server):
    url = _url()
    first, second = RemoteLease(url, 30), RemoteLease(url, 30)
    _, seen_first = first.read()
    _, seen_second = second.read()  # both looked before either wrote
    first.put(seen_first)
    with pytest.raises(RaceLost):  # the exclusive create of S3 refuses the second
        second.put(seen_second)
    assert first.owner()["token"] == first.token


def test_a_takeover_racing_the_holders_renewal_is_refused(s3_server):
    url = _url()
    holder = RemoteLease(url, 0.5)
    holder.put(holder.read()[1])
    time.sleep(0.6)  # the holder stalled: its lease lapsed
    taker = RemoteLease(url, 30)
    owner, version = taker.read()
    assert owner["expires"] < time.time()
    assert holder.renew()  # ... and came back between the taker's read and its write
    with pytest.raises(RaceLost):
        taker.put(version)
    assert holder.owner()["token"] == holder.token
    with pytest.raises(InputError, match="lease runs until"):  # seen now, refused plainly
        taker.acquire()


def test_a_renewal_after_a_takeover_does_not_overwrite_the_new_owner(s3_server):
    url = _url()
    holder = RemoteLease(url, 0.5)
    holder.put(holder.read()[1])
    time.sleep(0.6)
    taker = RemoteLease(url, 30)
    taker.acquire()  # the lapsed lease is taken over
    try:
        assert not holder.renew() and "taken over" in holder.lost
        assert taker.owner()["token"] == taker.token
    finally:
        taker.release()


def test_segment_into_a_url_another_run_holds_is_one_error_line_and_publishes_nothing(
        s3_server, prefect_harness, demo_scene, pixel_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEGO_CACHE", str(tmp_path / "cache"))
    url = _url()
    _plant(url, expires_in=120)
    code = main(["segment", str(demo_scene[0]), "--model", str(pixel_model), "--out", url,
                 "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {url}: another run (pid 4242 on host client-pod-b")
    assert MANIFEST not in _keys(url) and "labels.tif" not in _keys(url)
