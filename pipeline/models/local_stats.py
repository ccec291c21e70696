"""The classifier's per-pixel band features: the bands, then the mean and standard deviation
of each band in (2r+1)² windows per radius, from summed-area tables in float64, at every pixel
or only at the pixels of a mask (what `segment` asks the trees for), with the same numbers."""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, parallel=True)


def _tables(image: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed-area tables (C, H+2r+1, W+2r+1) of the bands and their squares, padded by r
    (reflected; replicated when the window is wider than the image), a zero first row and
    column."""
    c, h, w = image.shape
    mode = "reflect" if r < min(h, w) else "edge"
    pad = np.pad(image.astype(np.float64), ((0, 0), (r, r), (r, r)), mode=mode)
    s = np.zeros((c, h + 2 * r + 1, w + 2 * r + 1))
    s2 = np.zeros_like(s)
    np.cumsum(np.cumsum(pad, 1), 2, out=s[:, 1:, 1:])
    np.cumsum(np.cumsum(pad * pad, 1), 2, out=s2[:, 1:, 1:])
    return s, s2


@_jit
def _fill(s: np.ndarray, s2: np.ndarray, pad: int, r: int, mask: np.ndarray, out: np.ndarray,
          offset: int) -> None:
    """Window means and deviations of radius ``r`` from tables padded by ``pad`` >= r."""
    c_n = s.shape[0]
    h, w = out.shape[0], out.shape[1]
    k = 2 * r + 1
    o = pad - r
    inv = 1.0 / (k * k)
    for y in numba.prange(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            y0, x0, y1, x1 = y + o, x + o, y + o + k, x + o + k
            for c in range(c_n):
                t = s[c, y1, x1] - s[c, y0, x1] - s[c, y1, x0] + s[c, y0, x0]
                t2 = s2[c, y1, x1] - s2[c, y0, x1] - s2[c, y1, x0] + s2[c, y0, x0]
                m = t * inv
                v = t2 * inv - m * m
                out[y, x, offset + c] = m
                out[y, x, offset + c_n + c] = np.sqrt(v) if v > 0 else 0.0


def band_features(image: np.ndarray, radii: list[int],
                  mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, C + 2·C·len(radii)) float32 features of an image (C, H, W): the bands, then per
    radius the C window means and the C window standard deviations. With a boolean ``mask``
    (H, W), the statistics are computed at its pixels only (the same values as without a
    mask) and are 0 elsewhere."""
    img = np.asarray(image, dtype=np.float32)
    c, h, w = img.shape
    m = np.ones((h, w), dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
    if m.shape != (h, w):
        raise ValueError(f"mask is {m.shape}, the image {h}x{w}")
    out = np.zeros((h, w, c * (1 + 2 * len(radii))), dtype=np.float32)
    out[..., :c] = img.transpose(1, 2, 0)
    if any(r < 0 for r in radii):
        raise ValueError(f"local statistics radii {radii}: a radius is negative")
    # one table padded by the largest radius serves every radius whose reflection fits (a
    # reflected pixel is the same however wide the padding); wider windows replicate instead
    fits = [int(r) for r in radii if r < min(h, w)]
    pad = max(fits, default=0)
    shared = _tables(img, pad) if fits else None
    for i, r in enumerate(int(r) for r in radii):
        if shared is not None and r < min(h, w):
            _fill(*shared, pad, r, m, out, c * (1 + 2 * i))
        else:
            _fill(*_tables(img, r), r, r, m, out, c * (1 + 2 * i))
    return out
