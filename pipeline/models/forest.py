"""A trained tree ensemble as plain arrays (safetensors, never a pickle) and its compiled
prediction: class probabilities averaged over the trees, as scikit-learn's
``predict_proba`` computes them, but fused in one pass over the pixels."""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, parallel=True)

FOREST_KEYS = ("forest.feature", "forest.threshold", "forest.left", "forest.right",
               "forest.value", "forest.roots")


def forest_arrays(estimators: list) -> dict[str, np.ndarray]:
    """Concatenate fitted scikit-learn decision trees into flat node arrays: ``feature``
    (-1 at a leaf), ``threshold`` (float64, go left when ``x <= threshold``), ``left`` /
    ``right`` (absolute node indices), ``value`` (class distribution at each node, float32,
    rows summing to 1) and ``roots`` (first node of each tree)."""
    feats, thr, left, right, value, roots = [], [], [], [], [], []
    base = 0
    for est in estimators:
        t = est.tree_
        n = int(t.node_count)
        leaf = t.children_left < 0
        feats.append(np.where(leaf, -1, t.feature).astype(np.int32))
        thr.append(t.threshold.astype(np.float64))
        left.append(np.where(leaf, -1, t.children_left + base).astype(np.int32))
        right.append(np.where(leaf, -1, t.children_right + base).astype(np.int32))
        v = t.value[:, 0, :].astype(np.float64)
        v /= np.maximum(v.sum(axis=1, keepdims=True), 1e-12)
        value.append(v.astype(np.float32))
        roots.append(base)
        base += n
    return {"forest.feature": np.concatenate(feats), "forest.threshold": np.concatenate(thr),
            "forest.left": np.concatenate(left), "forest.right": np.concatenate(right),
            "forest.value": np.concatenate(value),
            "forest.roots": np.asarray(roots, dtype=np.int32)}


@_jit
def _predict(x: np.ndarray, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray,
             right: np.ndarray, value: np.ndarray, roots: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    k = value.shape[1]
    out = np.zeros((n, k), dtype=np.float32)
    inv = np.float32(1.0 / roots.shape[0])
    for i in numba.prange(n):
        for r in range(roots.shape[0]):
            node = roots[r]
            while feature[node] >= 0:
                if x[i, feature[node]] <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            for c in range(k):
                out[i, c] += value[node, c]
        for c in range(k):
            out[i, c] *= inv
    return out


def predict_forest(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities (n, K) of feature rows ``x`` (n, D)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _predict(x, *(arrays[k] for k in FOREST_KEYS))
