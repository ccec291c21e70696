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


@_jit
def _predict_grid(pixel: np.ndarray, patch: np.ndarray, mask: np.ndarray,
                  y0: np.ndarray, y1: np.ndarray,
                  wy: np.ndarray, x0: np.ndarray, x1: np.ndarray, wx: np.ndarray,
                  feature: np.ndarray, threshold: np.ndarray, left: np.ndarray,
                  right: np.ndarray, value: np.ndarray, roots: np.ndarray) -> np.ndarray:
    h, w, n_pixel = pixel.shape
    k = value.shape[1]
    out = np.zeros((k, h, w), dtype=np.float32)
    inv = np.float32(1.0 / roots.shape[0])
    for r in numba.prange(h):
        acc = np.zeros(k, dtype=np.float32)
        a0, a1 = y0[r], y1[r]
        ly1 = wy[r]
        ly0 = np.float32(1.0) - ly1
        for c in range(w):
            if not mask[r, c]:
                continue
            b0, b1 = x0[c], x1[c]
            lx1 = wx[c]
            lx0 = np.float32(1.0) - lx1
            acc[:] = 0
            for t in range(roots.shape[0]):
                node = roots[t]
                while feature[node] >= 0:
                    f = feature[node]
                    if f < n_pixel:
                        v = pixel[r, c, f]
                    else:
                        g = f - n_pixel
                        v = ly0 * (lx0 * patch[a0, b0, g] + lx1 * patch[a0, b1, g]) \
                            + ly1 * (lx0 * patch[a1, b0, g] + lx1 * patch[a1, b1, g])
                    if v <= threshold[node]:
                        node = left[node]
                    else:
                        node = right[node]
                for j in range(k):
                    acc[j] += value[node, j]
            for j in range(k):
                out[j, r, c] = acc[j] * inv
    return out


def bilinear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along one axis, the two source indices and the second one's weight of bilinear
    upsampling from ``n_in`` to ``n_out`` samples (half-pixel centres, ``align_corners=False``
    as torch computes it, edges clamped)."""
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale
                     - np.float32(0.5), np.float32(0))
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def predict_forest_grid(arrays: dict[str, np.ndarray], pixel: np.ndarray,
                        patch: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities (K, H, W) of an image whose features are ``pixel`` (H, W, P),
    followed by ``patch`` (h, w, C) upsampled bilinearly to (H, W): the same values as
    :func:`predict_forest` on the upsampled features (to float rounding), without building
    them (a tree reads the few features it tests, interpolating the patch ones on the fly).
    With a boolean ``mask`` (H, W), only its pixels are predicted; the others are 0."""
    h, w = pixel.shape[:2]
    ys, xs = bilinear_taps(h, patch.shape[0]), bilinear_taps(w, patch.shape[1])
    m = np.ones((h, w), dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    if m.shape != (h, w):
        raise ValueError(f"mask is {m.shape}, the features {h}x{w}")
    return _predict_grid(np.ascontiguousarray(pixel, dtype=np.float32),
                         np.ascontiguousarray(patch, dtype=np.float32), m, *ys, *xs,
                         *(arrays[k] for k in FOREST_KEYS))
