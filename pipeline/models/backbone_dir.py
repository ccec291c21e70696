"""Backbone directories: ``backbone.safetensors`` (timm state dict) + ``backbone.json`` (timm
name, overrides, normalisation, patch, provenance), as written by ``stego pretrain``. They are
used wherever weights are accepted (``--weights DIR``); nothing in them is ever unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import InputError

FORMAT = "stego-pipeline/backbone"
FORMAT_VERSION = 1
WEIGHTS = "backbone.safetensors"
DESCRIPTION = "backbone.json"


def is_backbone_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding a ``backbone.json``."""
    return Path(path).is_dir() and (Path(path) / DESCRIPTION).is_file()


def read_backbone_json(path: str | os.PathLike) -> dict[str, Any]:
    """The checked description of a backbone directory (one-line errors on bad files)."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(p, "backbone directory not found")
    j = p / DESCRIPTION
    if not j.is_file():
        raise InputError(p, f"not a backbone directory ({DESCRIPTION} missing; written by "
                         "`stego pretrain`)")
    try:
        meta = json.loads(j.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(j, f"corrupt {DESCRIPTION} ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(j, f"not a {FORMAT} description")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(j, f"unsupported backbone format {meta.get('format_version')!r}")
    for key in ("timm_name", "overrides", "normalisation"):
        if key not in meta:
            raise InputError(j, f"{DESCRIPTION} lacks '{key}'")
    return meta


def read_backbone_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``backbone.safetensors``."""
    w = Path(path) / WEIGHTS
    if not w.is_file():
        raise InputError(w, "backbone weights missing")
    try:
        return load_file(str(w))
    except (SafetensorError, OSError) as exc:
        raise InputError(w, f"corrupt backbone weights ({exc})") from None


def write_backbone_dir(path: str | os.PathLike, state: dict[str, torch.Tensor],
                       meta: dict[str, Any]) -> Path:
    """Write weights and description atomically (temporary names, then rename)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    tmp_w = out / f".{WEIGHTS}.tmp-{os.getpid()}"
    tmp_j = out / f".{DESCRIPTION}.tmp-{os.getpid()}"
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp_w))
        tmp_j.write_text(json.dumps(doc, indent=2, default=str))
        os.replace(tmp_w, out / WEIGHTS)
        os.replace(tmp_j, out / DESCRIPTION)
    finally:
        for t in (tmp_w, tmp_j):
            t.unlink(missing_ok=True)
    return out
