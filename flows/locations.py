"""Command-line locations: local paths, or object-store URLs (``s3://``, ``gs://``, ``az://``)
where a command supports them (models and backbones); refused in one line where not."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import InputError
from pipeline.io.lock import DEFAULT_LEASE_S
from pipeline.io.remote import (
    cache_root,
    check_writable,
    glob_files,
    is_remote,
    publish_dir,
    vsi_url,
)
from pipeline.io.remote_lock import remote_lease


def location(text: str) -> Path | str:
    """argparse type: a local ``Path``, or an object-store URL kept as text (a ``Path`` would
    fold ``s3://bucket`` into ``s3:/bucket``, a local folder)."""
    return text if is_remote(text) else Path(text)


def find_scenes(pattern: str) -> list[str]:
    """The files a glob matches (``**`` recursive), sorted; directories are left out. On
    object storage (``s3://…``, ``gs://…``, ``az://…``, or GDAL's ``/vsis3/…``) the objects
    it matches, named the way the pattern is; a missing bucket or refused credentials is an
    InputError. Light: the CLI checks a pattern with it before Prefect loads."""
    if is_remote(pattern) or vsi_url(pattern):
        return glob_files(pattern)
    return sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                  if not os.path.isdir(p))


def refuse_remote(value: Path | str, flag: str) -> None:
    """One clear line, before anything is written, for a URL where only paths work."""
    if is_remote(value):
        raise InputError(value, f"{flag} must be a local or shared path: this command does not "
                         "write to object storage (`segment --out`, `segment-folder` and "
                         "`deploy --out-root`, and the models of `fit`, `pretrain` and "
                         "`import-checkpoint` can go there; see docs/execution.md)")


def staging_dir(url: str) -> Path:
    """The local folder where a command writes what it then publishes to ``url`` (the same
    one on a rerun, so a resumable command resumes)."""
    key = hashlib.sha256(str(url).rstrip("/").encode()).hexdigest()[:24]
    return cache_root().parent / "staging" / key


@contextmanager
def published(out: Path | str) -> Iterator[Path]:
    """The local directory a command writes ``out`` into. For a URL: the bucket is checked
    first, the command writes into a staging folder of the local cache (the same one on a
    rerun, so a resumable command resumes), and when it succeeds the folder is published
    (files, then ``MANIFEST.json`` last) and removed; meanwhile the command holds the URL's
    lease (:mod:`pipeline.io.remote_lock`)."""
    if not is_remote(out):
        yield Path(out)
        return
    url = str(out).rstrip("/")
    check_writable(url)
    stage = staging_dir(url)
    with remote_lease(url, DEFAULT_LEASE_S) as lease:  # one writer at a time, on any host
        stage.mkdir(parents=True, exist_ok=True)
        yield stage
        lease.check()
        publish_dir(stage, url)
    shutil.rmtree(stage, ignore_errors=True)
