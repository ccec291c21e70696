"""Resuming a segment run: whether a finished store or stage output still matches the plan
(content-keyed cache keys and receipts), and cleaning temporaries a killed run left."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.segment.plan import SegmentPlan


def complete_store_matches(plan: SegmentPlan) -> bool:
    """Whether labels.zarr is already complete for exactly this run (killed after it)."""
    return receipt_holds({"stores": {str(plan.zarr_location()): plan.fingerprint}})


_STAGE_SECTIONS = {"write-cog": ("output",), "vectorize": ("vectorize",)}


def stage_cache_key(stage: str, plan: SegmentPlan) -> str:
    """Cache key of a stage: what its output depends on, never the run id.

    Input content (checksum), model hash and the output-relevant config (the run fingerprint),
    the block windows, the output directory and the stage's own settings.
    """
    cfg = plan.config.model_dump(mode="json")
    ident = {
        "stage": stage,
        "fingerprint": plan.fingerprint,
        "out_dir": str(Path(plan.out_dir).resolve()),
        "blocks": [(b.row_off, b.col_off, b.height, b.width) for b in plan.blocks],
        **{k: cfg[k] for k in _STAGE_SECTIONS.get(stage, ())},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def output_receipt(plan: SegmentPlan, *kinds: str) -> dict[str, Any]:
    """What a stage left on disk: size and mtime of its files, the fingerprint of the store.

    A cached stage result is trusted only while its receipt still holds (the files were not
    deleted or replaced by another run since).
    """
    files: dict[str, list[int]] = {}
    stores: dict[str, str] = {}
    for kind in kinds:
        if kind == "zarr":
            stores[str(plan.zarr_location())] = plan.fingerprint
        else:
            path = plan.output(kind)
            st = path.stat()
            files[str(path)] = [st.st_size, st.st_mtime_ns]
    return {"files": files, "stores": stores}


def receipt_holds(receipt: dict[str, Any] | None) -> bool:
    """Whether every file and store named in a receipt is still exactly as recorded."""
    import zarr

    if not receipt:
        return False
    for path, (size, mtime) in receipt.get("files", {}).items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            return False
    for path, fingerprint in receipt.get("stores", {}).items():
        try:
            attrs = zarr.open_group(path, mode="r").attrs
        except Exception:  # noqa: BLE001 - missing or unreadable: the receipt fails
            return False
        if attrs.get("status") != "complete" or attrs.get("fingerprint") != fingerprint:
            return False
    return True


def clean_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove temporary files left by a killed run (call while holding the output lock).

    The partial Zarr store is kept: it is what a resumed run continues from.
    """
    removed = []
    for p in Path(out_dir).glob(".*"):
        name = p.name
        if p.is_file() and (".tmp-" in name or name.endswith((".build.tif", ".cog.tif"))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
