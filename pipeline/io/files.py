"""Files on disk: JSON written atomically, the content identity (SHA-256) of inputs, and
checked output directories."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import InputError


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write`` on a temporary sibling (``.NAME.tmp-PID``), then rename it over ``path``;
    the temporary file never outlives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON to a temporary name in the same directory, then rename over ``path``."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file written by this package."""
    return json.loads(Path(path).read_text())


_CHECKSUMS: dict[tuple[str, int, int, int, int], str] = {}


def _file_sha256(path: str) -> str:
    """SHA-256 of a file, memoised per process while its inode, size, mtime and ctime hold
    (ctime cannot be set back, so a rewrite with a restored mtime is still noticed)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _CHECKSUMS:
        with open(path, "rb") as f:
            _CHECKSUMS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _CHECKSUMS[key]


def _local_file_of(name: str) -> str | None:
    """The local file behind a GDAL name: itself, or the archive of a /vsizip/ path."""
    if os.path.isfile(name):
        return name
    if name.startswith(("/vsizip/", "/vsitar/", "/vsigzip/")):
        parts = name.split("/")
        for i in range(3, len(parts) + 1):
            candidate = "/".join(parts[2:i])
            if candidate.strip("/") and os.path.isfile(candidate):
                return candidate
    return None


def input_checksum(path: str) -> dict[str, Any]:
    """Content identity of a raster: SHA-256 of every file GDAL opens for it (sidecars, the
    sources of a VRT, the archive of a /vsizip/ path). Moving or touching the file keeps it;
    changing a pixel changes it. Network sources (/vsicurl/ ...) cannot be hashed here: their
    identity is the path and GDAL's reported size, and ``kind`` says so."""
    import rasterio

    with rasterio.open(path) as ds:
        names = list(ds.files) or [path]  # a VRT lists its sources too
    digests = []
    for name in dict.fromkeys(names):
        local = _local_file_of(name)
        if local is None:
            return {"kind": "path", "path": path, "files": names}
        digests.append(_file_sha256(local))
    combined = hashlib.sha256(json.dumps(sorted(digests)).encode()).hexdigest()
    return {"kind": "sha256", "sha256": combined}


def ensure_output_dir(out_dir: Path | str) -> Path:
    """Create ``out_dir`` if needed and check it is a writable directory (one-line errors)."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise InputError(out_dir, "output path exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out_dir, f"cannot create output directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise InputError(out_dir, "output directory is not writable")
    return out
