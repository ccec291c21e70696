"""Directories on object storage (``s3://``, ``gs://``, ``az://``, through fsspec): published
with a manifest written last, and fetched into a local cache only when that manifest says the
upload finished.

Object stores have no rename, so a directory is never "moved into place": its files are
uploaded one by one (each object appears whole or not at all), then ``MANIFEST.json`` lists
them with their sizes and sha256. A reader (a worker, a later run) takes the directory for
finished only when the manifest is there and every file matches it. A re-publish removes the
old manifest first. Credentials come from where the storage's own library looks (environment,
profiles, instance roles); they are never written anywhere by this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.io.lock import LOCK_NAME

MANIFEST = "MANIFEST.json"
# URL schemes of object stores and the fsspec package that serves each
SCHEMES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
           "abfs": "adlfs", "abfss": "adlfs"}


def scheme(location: str | os.PathLike[str]) -> str | None:
    """The object-store scheme of ``location`` (``s3``, ``gs``, ``az`` …), None for a path."""
    text = str(location)
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.lower() in SCHEMES else None


def is_remote(location: str | os.PathLike[str]) -> bool:
    """True for an object-store URL (``s3://…``, ``gs://…``, ``az://…``)."""
    return scheme(location) is not None


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for an object-store URL; a missing client library
    is one clear error, not an ImportError."""
    import fsspec

    name = scheme(url)
    if name is None:
        raise InputError(url, "not an object-store URL (s3://, gs:// or az://)")
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError:
        raise InputError(url, f"{name}:// needs the {SCHEMES[name]} package "
                         f"(pip install {SCHEMES[name]})") from None
    return fs, path.rstrip("/")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__


def check_writable(url: str) -> None:
    """Refuse, before anything is written, a URL whose bucket cannot be reached or listed
    with the credentials at hand."""
    _check_bucket(url)


def _check_bucket(url: str) -> None:
    fs, path = filesystem(url)
    fs.invalidate_cache()
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise InputError(url, f"bucket {bucket!r} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint, permissions: one line
        raise InputError(url, f"cannot reach the bucket ({_short(exc)})") from None


# GDAL's names for object stores, and the URL scheme fsspec lists each with
VSI_SCHEMES = {"/vsis3/": "s3", "/vsigs/": "gs", "/vsiaz/": "az"}


def vsi_url(location: str) -> str | None:
    """``s3://b/k`` for GDAL's ``/vsis3/b/k`` (likewise ``/vsigs/``, ``/vsiaz/``), else None."""
    for prefix, name in VSI_SCHEMES.items():
        if str(location).startswith(prefix):
            return f"{name}://{str(location)[len(prefix):]}"
    return None


def glob_files(pattern: str) -> list[str]:
    """The objects matching a glob on object storage (``s3://bucket/scenes/*.tif``; ``**``
    also matches nested prefixes), sorted, named as the pattern is (a URL, or GDAL's
    ``/vsis3/`` form); prefixes ("folders") left out. A missing bucket or refused credentials
    is one line (a listing of a missing bucket would otherwise just be empty)."""
    import glob as _glob

    url = vsi_url(pattern) or pattern
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    if _glob.has_magic(bucket):
        raise InputError(pattern, "the bucket (first part after the scheme) cannot be a "
                         "pattern")
    _check_bucket(url)
    try:
        found = fs.glob(path, detail=True)
    except Exception as exc:  # noqa: BLE001 - a listing refused half way: one line
        raise InputError(pattern, f"cannot list the objects ({_short(exc)})") from None
    head = next((p for p in VSI_SCHEMES if pattern.startswith(p)),
                url.split("://", 1)[0] + "://")
    return sorted(head + name for name, info in found.items()
                  if info.get("type") != "directory")


def published_files(url: str) -> dict[str, Any] | None:
    """The manifest of a directory published at ``url`` when it is there and every file it
    lists is there with its size (a listing of the folders holding them, not of everything
    under ``url``); None otherwise (no manifest: never published, or its upload did not
    finish). A bucket that cannot be read is one line."""
    fs, root = filesystem(url)
    fs.invalidate_cache()
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict):
            return None
        sizes: dict[str, Any] = {}
        for folder in {f"{root}/{name}".rpartition("/")[0] for name in files}:
            sizes.update({e["name"].rstrip("/"): e.get("size")
                          for e in fs.ls(folder, detail=True)})
    except (FileNotFoundError, ValueError):  # no manifest, or a corrupt one: not finished
        return None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: one line
        raise InputError(url, f"cannot read ({_short(exc)})") from None
    if any(sizes.get(f"{root}/{name}") != entry.get("size") for name, entry in files.items()):
        return None
    return manifest


def read_published(url: str, name: str) -> bytes | None:
    """One file of the directory published at ``url``, when the manifest lists it and its
    bytes match the manifest's sha256; None otherwise."""
    manifest = published_files(url)
    entry = (manifest or {}).get("files", {}).get(name)
    if not entry:
        return None
    fs, root = filesystem(url)
    try:
        data = fs.cat_file(f"{root}/{name}")
    except FileNotFoundError:
        return None
    return data if hashlib.sha256(data).hexdigest() == entry.get("sha256") else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_dir(local: Path, url: str, prune: bool = True,
                last: tuple[str, ...] = ()) -> dict[str, Any]:
    """Upload every file under ``local`` to ``url`` (the names in ``last`` after the others),
    then the manifest, last. Returns the manifest. With ``prune``, objects under ``url`` that
    this publish does not have are removed (not with a store the workers wrote there)."""
    fs, root = filesystem(url)
    fs.invalidate_cache()  # listings cached by an earlier call in this process may be stale
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST
                   and not p.name.startswith("."))
    manifest = {"files": {p.relative_to(local).as_posix(): {"size": p.stat().st_size,
                                                             "sha256": _sha256(p)}
                          for p in files},
                "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        if fs.exists(f"{root}/{MANIFEST}"):
            fs.rm_file(f"{root}/{MANIFEST}")  # readers stop trusting the old files first
        for p in sorted(files, key=lambda p: p.relative_to(local).as_posix() in last):
            fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")
        if prune:
            keep = {f"{root}/{name}" for name in manifest["files"]}
            for old in fs.find(root):
                if old not in keep and old.rsplit("/", 1)[-1] != LOCK_NAME:  # a run's lease
                    fs.rm_file(old)
        fs.pipe_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the upload failed: one line, no manifest
        raise InputError(url, f"upload failed ({_short(exc)})") from None
    return manifest


def read_manifest(url: str) -> dict[str, Any]:
    """The manifest of a published directory; a missing one is a clear error."""
    fs, root = filesystem(url)
    fs.invalidate_cache()
    try:
        raw = fs.cat_file(f"{root}/{MANIFEST}")
    except FileNotFoundError:
        raise InputError(url, f"no {MANIFEST}: not a published directory, or its upload did "
                         "not finish") from None
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: one line
        raise InputError(url, f"cannot read ({_short(exc)})") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise InputError(url, f"corrupt {MANIFEST}") from None


def cache_root() -> Path:
    """Where fetched directories are kept: ``$STEGO_CACHE`` or ``~/.cache/stego``."""
    return Path(os.environ.get("STEGO_CACHE") or Path.home() / ".cache" / "stego") / "remote"


def fetch_dir(url: str, cache: Path | None = None) -> Path:
    """A local copy of the published directory at ``url``, checked against its manifest (each
    file's size and sha256); reused while the manifest is unchanged. Safe to call from several
    processes at once (each downloads to a temporary name, the first rename wins)."""
    manifest = read_manifest(url)
    key = hashlib.sha256((url.rstrip("/") + "\n" + json.dumps(manifest, sort_keys=True))
                         .encode()).hexdigest()[:24]
    target = (cache or cache_root()) / key
    if (target / MANIFEST).is_file():
        return target
    fs, root = filesystem(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=target.parent))
    try:
        for name, entry in manifest.get("files", {}).items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                fs.get_file(f"{root}/{name}", str(dest))
            except Exception as exc:  # noqa: BLE001 - one line
                raise InputError(f"{url.rstrip('/')}/{name}",
                                 f"download failed ({_short(exc)})") from None
            if dest.stat().st_size != entry["size"] or _sha256(dest) != entry["sha256"]:
                raise InputError(f"{url.rstrip('/')}/{name}", "does not match the manifest "
                                 "(changed since it was published?)")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: its copy is the same
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---- locations that are a local path or an object-store URL (the Zarr store of a run)


def absolute(location: str | os.PathLike[str]) -> str:
    """How a location is named to other processes (workers may run in another working
    directory): a URL or a GDAL dataset string as it is, a local path made absolute."""
    text = str(location)
    if "://" in text or text.startswith("/vsi") or ":" in text.split("/")[0]:
        return text
    return str(Path(text).resolve())


def join(base: str | os.PathLike[str], *names: str) -> str | Path:
    """``base/names…``: a URL stays text (a ``Path`` would fold ``s3://`` into ``s3:/``)."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base).joinpath(*names)


def parent_and_name(location: str | os.PathLike[str]) -> tuple[str | Path, str]:
    """(the folder holding ``location``, its last name)."""
    if is_remote(location):
        head, _, name = str(location).rstrip("/").rpartition("/")
        return head, name
    p = Path(location)
    return p.parent, p.name


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file, folder or prefix exists there."""
    if not is_remote(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    fs.invalidate_cache()
    return bool(fs.exists(path))


def remove_tree(location: str | os.PathLike[str]) -> None:
    """Remove a folder or a prefix and everything under it (nothing there: nothing done)."""
    if not is_remote(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = filesystem(str(location))
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)


def sibling_dirs(location: str | os.PathLike[str], prefix: str) -> list[str | Path]:
    """The folders (prefixes) next to ``location`` whose name starts with ``prefix``."""
    parent, _ = parent_and_name(location)
    if not is_remote(location):
        return sorted(p for p in Path(parent).glob(f"{prefix}*") if p.is_dir())
    fs, path = filesystem(str(parent))
    fs.invalidate_cache()
    scheme_ = scheme(location)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(f"{scheme_}://{e['name'].rstrip('/')}" for e in entries
                  if e.get("type") == "directory"
                  and e["name"].rstrip("/").rpartition("/")[2].startswith(prefix))


def move_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move a folder into place: a rename on a file system; on object storage (no rename) a
    copy of every object, then the source removed (readers must wait for the run's manifest,
    written last)."""
    if not is_remote(src):
        os.replace(src, dst)
        return
    fs, s = filesystem(str(src))
    _, d = filesystem(str(dst))
    fs.invalidate_cache()
    for obj in fs.find(s):
        fs.copy(obj, d + obj[len(s):])
    fs.rm(s, recursive=True)


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Write one file (one object: it appears whole or not at all)."""
    if not is_remote(location):
        Path(location).write_bytes(data)
        return
    fs, path = filesystem(str(location))
    fs.pipe_file(path, data)
