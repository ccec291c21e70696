"""The confusion matrix (clusters x GT codes), counted block by block with ``np.bincount``,
and STEGO's unsupervised scores from it (Hungarian matching, accuracy, IoU)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.labels import NODATA

_SPAN_BINCOUNT = 4096  # GT value spans up to this are counted with one bincount per block


def _blocks(height: int, width: int, rows: int, cols: int) -> Iterator[tuple[int, int, int, int]]:
    for r0 in range(0, height, rows):
        for c0 in range(0, width, cols):
            yield r0, min(height, r0 + rows), c0, min(width, c0 + cols)


@dataclass
class _Counts:
    """Per GT code: counts over PRED codes 0..254 and 255 (PRED nodata)."""

    by_code: dict[int, np.ndarray] = field(default_factory=dict)
    gt_nodata: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))

    def add(self, code: int, counts: np.ndarray) -> None:
        if code in self.by_code:
            self.by_code[code] += counts
        else:
            self.by_code[code] = counts.astype(np.int64, copy=True)


def _pred_codes(p: np.ndarray, nodata: set[int], path: str) -> np.ndarray:
    """PRED values as cluster codes 0..254, nodata as 255."""
    if p.dtype == np.uint8 and nodata == {NODATA}:
        return p
    bad = np.zeros(p.shape, dtype=bool)
    for v in nodata:
        bad |= p == v
    valid = p[~bad]
    if valid.size and (valid.min() < 0 or valid.max() > 254):
        raise InputError(path, "PRED values must be cluster ids 0..254 (255 = nodata)")
    out = p.astype(np.uint8)
    out[bad] = NODATA
    return out


def _accumulate_block(acc: _Counts, p: np.ndarray, g: np.ndarray,
                      g_invalid: np.ndarray | None) -> None:
    if g_invalid is not None:
        acc.gt_nodata += np.bincount(p[g_invalid].ravel(), minlength=256)
        p, g = p[~g_invalid], g[~g_invalid]
    p = p.ravel()
    g = g.ravel()
    if g.size == 0:
        return
    lo, hi = int(g.min()), int(g.max())
    span = hi - lo + 1
    if span <= _SPAN_BINCOUNT:
        idx = (g.astype(np.int64) - lo) * 256 + p
        table = np.bincount(idx, minlength=span * 256).reshape(span, 256)
        codes = np.nonzero(table.any(axis=1))[0]
        for i in codes:
            acc.add(lo + int(i), table[i])
    else:
        values, inv = np.unique(g, return_inverse=True)
        table = np.bincount(inv.ravel().astype(np.int64) * 256 + p,
                            minlength=len(values) * 256).reshape(len(values), 256)
        for i, v in enumerate(values.tolist()):
            acc.add(int(v), table[i])


def _pct(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(100.0 * float(x), 4)


def _scores(m: np.ndarray, match: dict[int, int], n_classes: int) -> tuple[float, np.ndarray]:
    """Accuracy and per-class IoU of a confusion matrix under a cluster -> class matching."""
    total = m.sum()
    tp = np.zeros(n_classes, dtype=np.float64)
    pred_px = np.zeros(n_classes, dtype=np.float64)
    for r, c in match.items():
        tp[c] = m[r, c]
        pred_px[c] = m[r].sum()
    gt_px = m.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (pred_px + gt_px - tp)
        acc = tp.sum() / total if total else float("nan")
    return float(acc), iou


def _stego_official(m: np.ndarray) -> dict[str, Any]:
    """STEGO's own ``UnsupervisedMetrics`` (mhamilton723/STEGO, ``src/utils.py``) on a
    (clusters x classes) matrix whose rows are the cluster ids 0..k-1.

    As there, pixels predicted into a cluster id >= n_classes are dropped (``update`` masks
    ``preds < n_classes``), the Hungarian assignment runs on the full (n_classes +
    extra_clusters) x n_classes histogram, and with extra clusters the histogram is rebuilt
    from the assignment of the transposed matrix (one row per class), the clusters the first
    assignment left out summed into an extra row and an all-zero extra column; accuracy is its
    trace over its sum and mIoU the mean over its non-NaN IoUs (the extra entry included).
    Fewer clusters than classes (which STEGO does not allow) count as empty clusters.
    Returns the accuracy, the per-class IoU, the mIoU, the cluster -> class matching and the
    number of dropped pixels (fractions, not percentages).
    """
    from scipy.optimize import linear_sum_assignment

    k, c = m.shape
    stats = np.zeros((max(k, c), c), dtype=np.int64)
    stats[:k] = m
    dropped = int(stats[c:].sum())
    stats[c:] = 0
    assignments = linear_sum_assignment(stats, maximize=True)
    if stats.shape[0] == c:  # square: assignments[0] is 0..c-1
        rows = np.argsort(assignments[1])
        histogram = stats[rows].astype(np.float64)
    else:
        rows = np.asarray(linear_sum_assignment(stats.T, maximize=True)[1])
        missing = sorted(set(range(stats.shape[0])) - {int(r) for r in assignments[0]})
        histogram = np.zeros((c + 1, c + 1), dtype=np.float64)
        histogram[:c, :c] = stats[rows]
        histogram[c, :c] = stats[missing].sum(axis=0)
    tp = np.diag(histogram)
    fp = histogram.sum(axis=0) - tp
    fn = histogram.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        acc = tp.sum() / histogram.sum()
    valid = iou[~np.isnan(iou)]
    return {"accuracy": float(acc), "iou": iou[:c],
            "mIoU": float(valid.mean()) if valid.size else float("nan"),
            "matching": {int(r): j for j, r in enumerate(rows.tolist()) if r < k},
            "dropped": dropped}


def hungarian_metrics(confusion: np.ndarray, class_names: Sequence[str],
                      cluster_names: Sequence[str]) -> dict[str, Any]:
    """STEGO's unsupervised metrics from a (clusters x classes) pixel-count matrix.

    Clusters are matched one-to-one to classes maximising matched pixels. Main variant: pixels of
    unmatched clusters count as errors; accuracy = matched / total; IoU = tp / (tp + fp + fn)
    per class (NaN, reported null, for a class with no pixels either way; an unmatched class with
    pixels gets 0), mIoU = their nanmean. ``stego_variant`` is what STEGO's official evaluation
    reports (:func:`_stego_official`): with more clusters than classes it drops the pixels
    predicted into cluster ids >= the number of classes before matching, whichever clusters
    would match. Values are percentages.
    """
    from scipy.optimize import linear_sum_assignment

    m = np.asarray(confusion, dtype=np.int64)
    k, c = m.shape
    if len(class_names) != c or len(cluster_names) != k:
        raise ValueError(f"confusion is {k}x{c} but there are {len(cluster_names)} cluster "
                         f"and {len(class_names)} class names")
    rows, cols = linear_sum_assignment(m, maximize=True)
    match = {int(r): int(cl) for r, cl in zip(rows, cols, strict=True)}
    unmatched = [i for i in range(k) if i not in match]
    acc, iou = _scores(m, match, c)
    official = _stego_official(m)
    by_class = {cl: r for r, cl in match.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        miou = float(np.nanmean(iou))
    per_class = []
    for j, name in enumerate(class_names):
        r = by_class.get(j)
        per_class.append({
            "class": name, "cluster": r, "cluster_name": None if r is None else cluster_names[r],
            "iou": _pct(iou[j]), "gt_pixels": int(m[:, j].sum()),
            "pred_pixels": 0 if r is None else int(m[r].sum()),
            "matched_pixels": 0 if r is None else int(m[r, j]),
        })
    return {
        "units": "percent",
        "accuracy": _pct(acc),
        "mIoU": _pct(miou),
        "per_class_iou": {n: _pct(iou[j]) for j, n in enumerate(class_names)},
        "matching": {str(r): class_names[cl] for r, cl in sorted(match.items())},
        "unmatched_clusters": unmatched,
        "unmatched_classes": [class_names[j] for j in range(c) if j not in by_class],
        "per_class": per_class,
        "pixels_in_unmatched_clusters": int(m[unmatched].sum()) if unmatched else 0,
        "stego_variant": {
            "description": "STEGO's official metric (UnsupervisedMetrics): pixels predicted "
                           "into cluster ids >= the number of classes are dropped before the "
                           "Hungarian matching and scoring",
            "accuracy": _pct(official["accuracy"]),
            "mIoU": _pct(official["mIoU"]),
            "per_class_iou": {n: _pct(official["iou"][j]) for j, n in enumerate(class_names)},
            "matching": {str(r): class_names[cl] for r, cl in sorted(official["matching"].items())},
            "dropped_pixels": official["dropped"],
        },
        "clusters": list(cluster_names),
        "classes": list(class_names),
        "confusion": {"rows": "clusters", "columns": "classes", "matrix": m.tolist()},
    }
