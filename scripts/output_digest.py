"""Digest of every file a run wrote, to check that a refactor changed no output.

    python scripts/output_digest.py run DIR          # small offline demo into DIR, then digest
    python scripts/output_digest.py digest DIR       # digest of an existing output tree
    python scripts/output_digest.py compare A.json B.json

Binary files (GeoTIFF, Zarr chunks, safetensors, PNG) are hashed byte for byte. What legitimately
changes between two identical runs is normalised away first: the run directory's own path,
wall-clock fields (`seconds`, `timings`, `steps_per_second`, ...), the hashes derived from
JSON files that hold them (`model_hash`, `fingerprint`), and GeoPackage `last_change` stamps.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

VOLATILE = {"seconds", "model_seconds", "read_seconds", "steps_per_second", "timings",
            "created", "datetime", "hash", "model_hash", "fingerprint", "elapsed",
            "started", "finished", "last_change", "timings_s", "stage_seconds",
            "key", "id", "stego:model_hash"}


def _scrub(obj: Any, root: str) -> Any:
    if isinstance(obj, dict):
        return {k: ("<volatile>" if k in VOLATILE else _scrub(v, root)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<DIR>")
    return obj


def _gpkg(path: Path) -> str:
    h = hashlib.sha256()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    tables = [r[0] for r in con.execute(
        "select name from sqlite_master where type='table' order by name")]
    for t in tables:
        cols = [r[1] for r in con.execute(f'pragma table_info("{t}")')
                if r[1] not in ("last_change", "update_time")]
        rows = con.execute(f'select {", ".join(chr(34) + c + chr(34) for c in cols)} from "{t}"')
        h.update(t.encode())
        for row in sorted(rows, key=repr):
            h.update(repr(row).encode())
    con.close()
    return h.hexdigest()


def digest(root: Path) -> dict[str, str]:
    """Normalised SHA-256 of every file under root, keyed by relative path."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(root))
        if p.suffix == ".json":
            doc = _scrub(json.loads(p.read_text()), str(root.resolve()))
            data = json.dumps(doc, sort_keys=True).encode()
            out[rel] = hashlib.sha256(data).hexdigest()
        elif p.suffix == ".gpkg":
            out[rel] = _gpkg(p)
        elif p.suffix in (".qml", ".csv", ".txt", ".md"):
            out[rel] = hashlib.sha256(
                p.read_text().replace(str(root.resolve()), "<DIR>").encode()).hexdigest()
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd == "run":
        out = Path(argv[1]).resolve()
        subprocess.run([sys.executable, "-m", "flows.cli", "demo", str(out), "--size", "768",
                        "--pretrain-steps", "4", "--steps", "30", "-q"],
                       check=True, stdout=sys.stderr)
        cmd, argv = "digest", ["digest", str(out)]
    if cmd == "digest":
        print(json.dumps(digest(Path(argv[1]).resolve()), indent=1, sort_keys=True))
        return 0
    if cmd == "compare":
        a, b = (json.loads(Path(x).read_text()) for x in argv[1:3])
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        for k in diff:
            print(f"differs: {k}")
        print(f"{len(a)} files, {len(diff)} differ")
        return 1 if diff else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
