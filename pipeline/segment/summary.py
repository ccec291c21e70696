"""What a segment run reports: per-class areas, block statistics, and the run.json manifest
(what ran, with which model and weights, how long each stage took)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pipeline import __version__
from pipeline.io.remote import absolute
from pipeline.segment.plan import OUTPUT_NAMES, SegmentPlan, pixel_area_m2
from pipeline.tiling import compute_amplification


def class_summary(plan: SegmentPlan, hist: Any) -> dict[str, Any]:
    """Pixels, share of valid pixels and area per class, from the final labels' histogram."""
    valid = int(hist[: len(plan.class_names)].sum())
    px_area = pixel_area_m2(plan.info)
    classes = {}
    for i, name in enumerate(plan.class_names):
        n = int(hist[i])
        classes[name] = {"class_id": i, "pixels": n,
                         "share": n / valid if valid else 0.0,
                         "area_m2": n * px_area if px_area is not None else None}
    return {"valid_pixels": valid, "nodata_pixels": int(hist[255]), "classes": classes}


def summarize_blocks(plan: SegmentPlan, stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over the blocks computed in this run."""
    k = len(plan.class_names)
    counts = [0] * k
    for s in stats:
        counts = [a + b for a, b in zip(counts, s["class_counts"], strict=True)]
    return {
        "blocks_total": len(plan.blocks),
        "blocks_computed": len(stats),
        "blocks_resumed": len(plan.blocks) - len(stats),
        "tiles": sum(s["tiles"] for s in stats),
        "model_pixels": sum(s["model_pixels"] for s in stats),
        "valid_pixels_computed": sum(s["valid_pixels"] for s in stats),
        "class_pixels_computed": dict(zip(plan.class_names, counts, strict=True)),
        "model_seconds": sum(s["model_seconds"] for s in stats),
        "read_seconds": sum(s["read_seconds"] for s in stats),
        "compute_amplification": compute_amplification(
            plan.info.height, plan.info.width, plan.grid, plan.config.tiling.block_size
        ),
    }


def manifest(plan: SegmentPlan, status: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The run.json document."""
    meta = plan.model_meta
    return {
        "status": status,
        "pipeline_version": __version__,
        "input": {
            "path": plan.input_path, "width": plan.info.width, "height": plan.info.height,
            "bands": list(plan.info.bands), "dtype": plan.info.dtype, "crs": plan.info.crs_wkt,
            "transform": list(plan.info.transform), "identity": plan.input_id,
        },
        "scaling": plan.scaling.to_dict(),
        "model": {
            "dir": absolute(plan.model_dir), "hash": plan.model_hash,
            "method": meta["method"], "class_names": meta["class_names"],
            "colors": meta["colors"], "backbone": meta.get("backbone"),
            "weights": (meta.get("backbone") or {}).get("weights"),
            "accuracy": meta.get("accuracy"),  # the classifier's hold-out, from `fit`
        },
        "device": plan.device,
        "precision": plan.precision,
        "config": plan.config.model_dump(mode="json"),
        "fingerprint": plan.fingerprint,
        "parallelism": plan.parallelism,
        "outputs": {k: str(plan.output(k)) for k in OUTPUT_NAMES},
        "timings_s": plan.timings,
        "warnings": plan.warnings,
        "blocks": [asdict(b) for b in plan.blocks] if len(plan.blocks) <= 64 else len(plan.blocks),
        **extra,
    }
