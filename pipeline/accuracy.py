"""Accuracy of a map from validation samples, and the stratified area estimates of Olofsson et
al. 2014 ("Good practices for estimating area and assessing accuracy of land change", Remote
Sensing of Environment 148): pure NumPy arithmetic on an error matrix of sample counts.

Notation (that paper's): map classes i = 1..q are the strata; ``counts[i, j]`` = n_ij sample
units mapped as i whose reference class is j; n_i. its row sum; W_i the share of the mapped area
in class i; A the total mapped area.

- p̂_ij = W_i n_ij / n_i. (the error matrix in estimated area proportions)
- overall Ô = Σ_j p̂_jj, user's Û_i = n_ii / n_i., producer's P̂_j = p̂_jj / p̂_.j,
  area proportion p̂_.k = Σ_i W_i n_ik / n_i., area Â_k = A p̂_.k
- V(p̂_.k) = Σ_i W_i² (n_ik/n_i.)(1 − n_ik/n_i.) / (n_i. − 1)
- V(Ô) = Σ_i W_i² Û_i (1 − Û_i) / (n_i. − 1), V(Û_i) = Û_i (1 − Û_i) / (n_i. − 1)
- V(P̂_j) = [N_j.² (1 − P̂_j)² Û_j (1 − Û_j) / (n_j. − 1)
           + P̂_j² Σ_{i≠j} N_i.² (n_ij/n_i.)(1 − n_ij/n_i.) / (n_i. − 1)] / N̂_.j²
- 95 % interval: estimate ± 1.96 S

Undefined values (0/0, a variance of a stratum with fewer than 2 units) are None in the output,
never NaN, so the result goes straight into JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DESIGNS = ("none", "simple", "stratified")
Z95 = 1.96  # two-sided 95 % normal quantile, as in the paper

_NOT_RANDOM = ("the samples were not drawn at random (design 'none'): these are plain sample "
               "counts; area estimates and their confidence intervals do not apply")


def _check_counts(counts: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The error matrix as int64, or ValueError."""
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"counts must be a square q x q matrix, got shape {c.shape}")
    if c.shape[0] == 0:
        raise ValueError("counts must hold at least one class")
    if not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
        raise ValueError(f"counts must be numbers, got dtype {c.dtype}")
    if not np.all(np.isfinite(c)):
        raise ValueError("counts must be finite")
    if np.any(c < 0):
        raise ValueError("counts must not be negative")
    if np.any(c != np.round(c)):
        raise ValueError("counts must be whole numbers of sample units")
    names = list(class_names)
    if len(names) != c.shape[0]:
        raise ValueError(f"class_names has {len(names)} entries but counts is "
                         f"{c.shape[0]} x {c.shape[0]}")
    if not all(isinstance(n, str) for n in names):
        raise ValueError("class_names must be strings")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return c.astype(np.int64)


def _check_mapped(mapped_pixels: np.ndarray | None, counts: np.ndarray,
                  names: Sequence[str]) -> np.ndarray | None:
    """The mapped pixels per class as float64 (None when not given), or ValueError."""
    if mapped_pixels is None:
        return None
    m = np.asarray(mapped_pixels, dtype=np.float64)
    q = counts.shape[0]
    if m.shape != (q,):
        raise ValueError(f"mapped_pixels must have one entry per class ({q}), got shape {m.shape}")
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("mapped_pixels must be finite and not negative")
    if m.sum() <= 0:
        raise ValueError("mapped_pixels must not all be 0")
    empty = [names[i] for i in range(q) if m[i] == 0 and counts[i].sum() > 0]
    if empty:
        raise ValueError(f"stratum {empty[0]!r} has sample units but 0 mapped pixels")
    return m


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den elementwise, NaN where den is 0 (no division by zero, no warning)."""
    num_a = np.asarray(num, dtype=np.float64)
    den_a = np.asarray(den, dtype=np.float64)
    num_a, den_a = np.broadcast_arrays(num_a, den_a)
    out = np.full(num_a.shape, np.nan)
    np.divide(num_a, den_a, out=out, where=den_a != 0)
    return out


def _num(x: Any) -> float | None:
    """A plain float, or None for an undefined (non-finite) value."""
    v = float(x)
    return v if math.isfinite(v) else None


def _interval(estimate: Any, variance: Any, scale: float = 1.0) -> dict[str, Any]:
    """{estimate, se, margin95, ci95: [low, high]} of an estimate times `scale`."""
    est = _num(estimate * scale)
    var = float(variance)
    se = _num(math.sqrt(max(var, 0.0)) * scale) if math.isfinite(var) else None
    if est is None or se is None:
        return {"estimate": est, "se": se, "margin95": None, "ci95": None}
    margin = Z95 * se
    return {"estimate": est, "se": se, "margin95": margin, "ci95": [est - margin, est + margin]}


def _plain(c: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Overall, user's and producer's accuracy and F1 straight from the sample counts."""
    rows, cols, diag = c.sum(axis=1), c.sum(axis=0), np.diag(c)
    users = _div(diag, rows)
    producers = _div(diag, cols)
    f1 = _div(2 * diag, rows + cols)  # = 2UP / (U + P), and 0 when U or P is 0
    n = int(c.sum())
    return {
        "confusion": c.tolist(),
        "n": n,
        "overall_accuracy": _num(_div(np.trace(c), n)),
        "classes": [{"name": names[k], "users_accuracy": _num(users[k]),
                     "producers_accuracy": _num(producers[k]), "f1": _num(f1[k]),
                     "map_samples": int(rows[k]), "reference_samples": int(cols[k])}
                    for k in range(len(names))],
    }


def _stratum_warnings(rows: np.ndarray, weights: np.ndarray, names: Sequence[str]) -> list[str]:
    """One line per stratum whose sample is too small for the estimates or their variances."""
    out = []
    for i, name in enumerate(names):
        if weights[i] <= 0:
            continue
        if rows[i] == 0:
            out.append(f"stratum {name!r} covers part of the map but has no sample units: the "
                       "area-weighted estimates that need it (overall accuracy, area proportions, "
                       "producer's accuracies, its user's accuracy) are undefined (None)")
        elif rows[i] == 1:
            out.append(f"stratum {name!r} has 1 sample unit: a variance needs at least 2, so "
                       "the standard errors and confidence intervals that depend on it are None")
    return out


def _area_weighted(c: np.ndarray, names: Sequence[str], weights: np.ndarray,
                   total_pixels: float | None, pixel_area: float | None) -> dict[str, Any]:
    """The stratified estimators of Olofsson et al. 2014 with stratum weights `weights`."""
    q = c.shape[0]
    rows = c.sum(axis=1).astype(np.float64)
    used = weights > 0  # strata that cover part of the map; the others add nothing
    share = _div(c, rows[:, None])  # n_ij / n_i. (NaN rows for unsampled strata)
    share[~used] = 0.0
    p = weights[:, None] * share  # p̂_ij
    users = _div(np.diag(c), rows)  # Û_i = n_ii / n_i.
    col = p.sum(axis=0)  # p̂_.k
    diag = np.diag(p)
    overall = diag.sum()  # Ô
    producers = _div(diag, col)  # P̂_j
    inv = _div(1.0, rows - 1.0)  # 1 / (n_i. − 1), NaN when n_i. = 1
    inv[rows == 0] = np.nan

    def _strata_sum(terms: np.ndarray) -> np.ndarray:
        """Σ_i over the strata in use; NaN if any used stratum's term is undefined."""
        t = np.where(used[:, None] if terms.ndim == 2 else used, terms, 0.0)
        return t.sum(axis=0)

    w2 = weights**2
    cell_var = share * (1.0 - share) * inv[:, None]  # (n_ik/n_i.)(1 − n_ik/n_i.) / (n_i. − 1)
    var_col = _strata_sum(w2[:, None] * cell_var)  # V(p̂_.k)
    var_users = users * (1.0 - users) * inv  # V(Û_i)
    var_overall = _strata_sum(w2 * var_users)  # V(Ô)
    # V(P̂_j) with W_i in place of N_i. and p̂_.j in place of N̂_.j: the common factor A²
    # cancels (N_i. = A W_i, N̂_.j = A p̂_.j), so the simple design can use the same code.
    var_producers = np.full(q, np.nan)
    for j in range(q):
        others = np.arange(q) != j
        own = w2[j] * (1.0 - producers[j]) ** 2 * var_users[j] if used[j] else 0.0
        rest = _strata_sum(np.where(others, w2 * cell_var[:, j], 0.0))
        var_producers[j] = _div(own + producers[j] ** 2 * rest, col[j] ** 2)
    matrix = [[_num(p[i, j]) for j in range(q)] for i in range(q)]
    classes = []
    for k in range(q):
        entry: dict[str, Any] = {
            "name": names[k],
            "map_proportion": _num(weights[k]),
            "users_accuracy": _interval(users[k], var_users[k]),
            "producers_accuracy": _interval(producers[k], var_producers[k]),
            "area_proportion": _interval(col[k], var_col[k]),
        }
        if total_pixels is not None:
            entry["area_pixels"] = _interval(col[k], var_col[k], total_pixels)
            if pixel_area is not None:
                entry["area"] = _interval(col[k], var_col[k], total_pixels * pixel_area)
        classes.append(entry)
    return {
        "error_matrix": matrix,
        "overall_accuracy": _interval(overall, var_overall),
        "total_pixels": _num(total_pixels) if total_pixels is not None else None,
        "pixel_area": pixel_area,
        "classes": classes,
    }


def sample_accuracy(counts: np.ndarray, class_names: Sequence[str],
                    mapped_pixels: np.ndarray | None = None, pixel_area: float | None = None,
                    design: str = "none") -> dict[str, Any]:
    """Accuracy of a map from validation samples.

    ``counts[i, j]`` is the number of sample units mapped as class i whose reference class is j
    (q x q, one class order for map and reference, ``class_names`` in that order). Always
    returned, JSON-ready (plain floats and ints, None for undefined values such as 0/0):
    ``confusion``, ``n``, ``overall_accuracy``, ``classes`` (name, users_accuracy,
    producers_accuracy, f1, map_samples = row sum, reference_samples = column sum), ``design``
    and ``warnings`` (a list of lines, maybe empty).

    ``design``:

    - ``"stratified"``: a stratified random sample with the map classes as strata. Needs
      ``mapped_pixels`` (pixels mapped as each class over the whole map), which gives
      W_i = N_i. / Σ N_i. and A = Σ N_i.. Adds ``area_weighted``: the error matrix in estimated
      area proportions p̂_ij, overall accuracy, per class user's and producer's accuracy and
      area proportion p̂_.k, each as {estimate, se, margin95 = 1.96 se, ci95 = [low, high]},
      the area in pixels (``area_pixels``) and, with ``pixel_area`` (map units² per pixel), in
      map units² (``area``) with the same fields. Intervals are not clipped to [0, 1].
    - ``"simple"``: a simple random sample. The same estimators with W_i = n_i. / n, the
      sample's own row shares (so the point estimates are the plain sample proportions);
      ``mapped_pixels`` is optional and only gives A for the areas (``pixel_area`` needs it).
    - ``"none"``: samples not drawn at random (e.g. an analyst's training polygons): plain
      counts only and a ``note`` that area estimates do not apply; ``mapped_pixels`` and
      ``pixel_area`` are checked but not used.

    A stratum with fewer than 2 sample units makes the variances that involve it undefined:
    their se, margin95 and ci95 are None and ``warnings`` says why. Bad input (a non-square
    or negative matrix, mismatched lengths, stratified without ``mapped_pixels``, a stratum
    with samples but 0 mapped pixels, an unknown design) raises ValueError.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    names = list(class_names)
    c = _check_counts(counts, names)
    mapped = _check_mapped(mapped_pixels, c, names)
    if pixel_area is not None:
        if isinstance(pixel_area, bool) or not isinstance(pixel_area, int | float | np.number):
            raise ValueError(f"pixel_area must be a number, got {pixel_area!r}")
        if not math.isfinite(pixel_area) or pixel_area <= 0:
            raise ValueError(f"pixel_area must be a positive number, got {pixel_area}")
        pixel_area = float(pixel_area)
    if design == "stratified" and mapped is None:
        raise ValueError("design 'stratified' needs mapped_pixels (pixels mapped as each class)")
    if design == "simple" and pixel_area is not None and mapped is None:
        raise ValueError("pixel_area needs mapped_pixels for the total mapped area")

    out = _plain(c, names)
    out["design"] = design
    out["warnings"] = []
    if design == "none":
        out["note"] = _NOT_RANDOM
        return out
    rows = c.sum(axis=1)
    if design == "stratified":
        assert mapped is not None
        weights = mapped / mapped.sum()
    else:
        if rows.sum() == 0:
            raise ValueError("design 'simple' needs at least one sample unit")
        weights = rows / rows.sum()
    total = float(mapped.sum()) if mapped is not None else None
    out["warnings"] = _stratum_warnings(rows, weights, names)
    out["area_weighted"] = _area_weighted(c, names, weights, total, pixel_area)
    return out
