"""run.json: what was run, with which model and weights, and how long each stage took."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON to a temporary name in the same directory, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file written by this package."""
    return json.loads(Path(path).read_text())
