"""Random fields for the demo scene: smooth Gaussian-correlated noise for textures and the
wobbly nodata collar mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Zero-mean, about unit-std Gaussian-correlated noise (n, n) float32; sigma in px."""
    if sigma <= 3.0:
        a = rng.standard_normal((n, n), dtype=np.float32)
        radius = int(4.0 * sigma + 0.5)  # scipy's default truncation
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        k /= k.sum()
        a = ndimage.gaussian_filter(a, sigma, mode="reflect", output=np.float32)
        a *= np.float32(1.0 / float((k * k).sum()))  # white noise std after the 2-D filter
        return a
    # Large sigma: filter a coarse grid, normalise it there (cheap), upsample bilinearly.
    f = max(1, int(sigma // 2))
    m = n // f + 2
    a = ndimage.gaussian_filter(rng.standard_normal((m, m)), sigma / f, mode="wrap")
    a = ((a - a.mean()) / max(float(a.std()), 1e-9)).astype(np.float32)
    return np.ascontiguousarray(ndimage.zoom(a, f, order=1, mode="nearest")[:n, :n])


def collar(rng: np.random.Generator, n: int) -> np.ndarray:
    """Valid-data mask: False in a corner triangle and a strip along one side (wobbly edges)."""
    idx = np.arange(n, dtype=np.float32)
    # Triangle in the top-left corner, then rotated to a random corner.
    leg = rng.uniform(0.22, 0.3) * n
    wob = _wobble(rng, 2 * n, n)
    rows = min(n, int(np.ceil(leg + np.abs(wob).max())) + 2)
    yy = np.arange(rows, dtype=np.int32)[:, None]
    xx = np.arange(n, dtype=np.int32)[None, :]
    tri = np.zeros((n, n), bool)
    tri[:rows] = (xx + yy) < leg + wob[np.clip(xx - yy + n, 0, 2 * n - 1)]
    tri = np.rot90(tri, int(rng.integers(4)))
    # Strip along the left side, then rotated to a random side.
    width = rng.uniform(0.02, 0.045) * n
    strip = idx[None, :] < width + _wobble(rng, n, n)[:, None]
    strip = np.rot90(strip, int(rng.integers(4)))
    return np.ascontiguousarray(~(tri | strip))


def _wobble(rng: np.random.Generator, length: int, n: int) -> np.ndarray:
    """Smooth 1-D offsets (px) for the collar edge, amplitude ~0.6 % of the scene."""
    w = ndimage.gaussian_filter1d(rng.standard_normal(length), max(length / 40.0, 1.0))
    w /= max(float(np.abs(w).max()), 1e-6)
    steps = rng.integers(-1, 2, length).cumsum()  # a little stair-step jaggedness
    jag = min(3, max(1, n // 800))
    return (w * 0.006 * n + np.clip(steps, -jag, jag)).astype(np.float32)
