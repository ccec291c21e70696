"""``evaluate``: every PRED/GT pair read and counted into one dataset-level confusion matrix,
then scored; returns the content of metrics.json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.evaluation.ground_truth import open_gt
from pipeline.evaluation.mapping import IGNORE, _json_key, _resolve_classes, _sort_key, load_mapping
from pipeline.evaluation.metrics import (
    _accumulate_block,
    _blocks,
    _Counts,
    _pred_codes,
    hungarian_metrics,
)
from pipeline.evaluation.readers import PredReader, _crs_name, _open_rasterio, align
from pipeline.labels import NODATA


@dataclass
class EvalPair:
    """A prediction (labels.tif / labels.zarr), its ground truth and optionally its image."""

    pred: str
    gt: str
    image: str | None = None


def _check_image(path: str, pred: PredReader) -> None:
    ds = _open_rasterio(path)
    try:
        align(pred, path, ds.transform, ds.crs, (ds.height, ds.width), what="image")
    finally:
        ds.close()


def check_pairs(pairs: Sequence[tuple[str, str]], mapping: str | None = None,
                class_field: str | None = None, image: str | None = None) -> None:
    """The one-line InputError `evaluate` would raise on opening its inputs (mapping, PRED,
    GT, their alignment, the image), without counting anything: the CLI's early check."""
    load_mapping(mapping)
    for i, (pred_path, gt_path) in enumerate(pairs):
        pred = PredReader(pred_path)
        try:
            open_gt(str(gt_path), pred, class_field).close()
            if image and i == 0:
                _check_image(str(image), pred)
        finally:
            pred.close()


def evaluate(
    pairs: list[EvalPair],
    *,
    mapping: str | None = None,
    ignore: Sequence[int] = (),
    class_field: str | None = None,
    block_rows: int = 2048,
    background: str | None = "background",
) -> dict[str, Any]:
    """Score PRED/GT pairs together (one confusion matrix); returns the metrics.json content.

    Windows of ``block_rows`` x ``2 * block_rows`` pixels are read from PRED and GT and counted
    with ``np.bincount``. For vector ground truth the area no polygon covers is the class
    ``background`` (None: ignored).
    """
    if not pairs:
        raise InputError("evaluate", "no PRED/GT pair given")
    if block_rows < 1:
        raise InputError("--block-rows", "must be positive")
    the_mapping = load_mapping(mapping)
    block_cols = 2 * block_rows
    per_pair: list[tuple[EvalPair, dict[Any, np.ndarray], np.ndarray, dict[str, Any]]] = []
    cluster_names: list[str] = []
    cluster_colors: list[tuple[int, int, int]] | None = None
    run_warnings: list[str] = []
    max_code = -1
    for pair in pairs:
        pred = PredReader(pair.pred)
        try:
            gt = open_gt(str(pair.gt), pred, class_field)
            try:
                if pair.image:
                    _check_image(str(pair.image), pred)
                run_warnings.extend(getattr(gt, "warnings", []))
                if not cluster_names:
                    cluster_names, cluster_colors = list(pred.class_names), pred.colors
                elif pred.class_names and pred.class_names != cluster_names[
                        :len(pred.class_names)]:
                    run_warnings.append(f"{pair.pred}: cluster names differ from the first "
                                        "PRED's; the first PRED's names are reported")
                acc = _Counts()
                o = gt.overlap
                for r0, r1, c0, c1 in _blocks(o.height, o.width, block_rows, block_cols):
                    p = _pred_codes(pred.read(o.row + r0, o.row + r1, o.col + c0, o.col + c1),
                                    pred.nodata, pair.pred)
                    g, g_invalid = gt.read(r0, r1, c0, c1)
                    _accumulate_block(acc, p, g, g_invalid)
                raw = {}
                for code, counts in acc.by_code.items():
                    key = gt.key(code)
                    raw[key] = raw[key] + counts if key in raw else counts
                    nz = np.nonzero(counts[:NODATA])[0]
                    if nz.size:
                        max_code = max(max_code, int(nz.max()))
                nz = np.nonzero(acc.gt_nodata[:NODATA])[0]
                if nz.size:
                    max_code = max(max_code, int(nz.max()))
                info = {
                    "pred": str(pair.pred), "gt": str(pair.gt),
                    "image": None if pair.image is None else str(pair.image),
                    "gt_type": gt.kind, "class_field": gt.class_field,
                    "pred_window": o.to_dict(),
                    "pred_shape": [pred.height, pred.width],
                    "pred_crs": _crs_name(pred.crs) if pred.crs is not None else None,
                }
                per_pair.append((pair, raw, acc.gt_nodata, info))
            finally:
                gt.close()
        finally:
            pred.close()

    keys = sorted({k for _, raw, _, _ in per_pair for k in raw}, key=_sort_key)
    classes, lookup, unmapped = _resolve_classes(keys, the_mapping, ignore, background)
    if unmapped:
        first = next(p.gt for p, raw, _, _ in per_pair if any(k in raw for k in unmapped))
        shown = ", ".join(str(k) for k in unmapped[:10])
        raise InputError(first, f"values {shown} are not in the mapping "
                                f"{the_mapping.name if the_mapping else ''}; map them or "
                                "ignore them (--ignore)")
    if not classes:
        raise InputError(pairs[0].gt, "no class to evaluate (every GT value is ignored)")
    n_clusters = max(len(cluster_names), max_code + 1, 1)
    cluster_names = cluster_names + [f"cluster {i}" for i in range(len(cluster_names),
                                                                    n_clusters)]
    confusion = np.zeros((n_clusters, len(classes)), dtype=np.int64)
    totals = {"total": 0, "evaluated": 0, "ignored": 0, "nodata": 0}
    inputs = []
    for _pair, raw, gt_nodata, info in per_pair:
        px = {"total": 0, "evaluated": 0, "ignored": int(gt_nodata[:NODATA].sum()),
              "nodata": int(gt_nodata[NODATA])}
        for key, counts in raw.items():
            px["nodata"] += int(counts[NODATA])
            cls = lookup[key]
            if cls == IGNORE:
                px["ignored"] += int(counts[:NODATA].sum())
            else:
                confusion[:, cls] += counts[:n_clusters]
                px["evaluated"] += int(counts[:NODATA].sum())
        px["total"] = px["evaluated"] + px["ignored"] + px["nodata"]
        info["pixels"] = px
        inputs.append(info)
        for k in totals:
            totals[k] += px[k]
    if totals["evaluated"] == 0:
        raise InputError(pairs[0].gt, "no pixel to evaluate (all are ignored or PRED nodata)")
    metrics = hungarian_metrics(confusion, classes, cluster_names)
    metrics["pixels"] = {**totals,
                         "in_unmatched_clusters": metrics.pop("pixels_in_unmatched_clusters")}
    metrics["cluster_colors"] = [list(c) for c in cluster_colors] if cluster_colors else None
    metrics["gt_values"] = [
        {"value": _json_key(k), "class": None if lookup[k] == IGNORE else classes[lookup[k]],
         "pixels": int(sum(raw[k][:NODATA].sum() for _, raw, _, _ in per_pair if k in raw))}
        for k in keys
    ]
    metrics["mapping"] = the_mapping.name if the_mapping else None
    metrics["ignore"] = [int(v) if isinstance(v, (int, np.integer)) else v for v in ignore]
    metrics["background"] = background
    metrics["inputs"] = inputs
    metrics["warnings"] = run_warnings
    return metrics
