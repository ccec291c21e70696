"""The COG's overview levels, computed as GDAL computes them for a paletted uint8 band, but over
any window of a level, so that blocks of a scene can be reduced where they are read.

What GDAL 3.10 does (``gcore/overview.cpp``, checked against ``rasterio``'s
``build_overviews`` in ``tests/io/test_cog_blocks.py``): the power-of-two levels are made in
cascade, each from the level before it (``nearest`` through
``GDALRegenerateOverviewsMultiBand``, ``mode`` through ``GDALRegenerateCascadingOverviews``),
and a level of a level ``n_prev`` pixels wide is ``n = ceil(n_prev / 2)`` wide, so its ratio
``r = n_prev / n`` is exactly 2 for an even ``n_prev`` and a little under 2 for an odd one.

* ``nearest``: output pixel ``i`` is source pixel ``int(0.5 + i * r)``, rows and columns alike
  (``2 i`` when ``r == 2``; ``2 i - 1`` in the far half of an odd level).
* ``mode``: output pixel ``i`` takes the source window ``[int(i r + 1e-8),
  ceil((i + 1) r - 1e-8))`` (at least one pixel, clipped to the level): 2 x 2 pixels when
  ``r == 2``, up to 3 wide (overlapping its neighbours) along an odd level. Its value is the
  most frequent value of the window that is not nodata (255), nodata when there is none; of
  values equally frequent, the one that reached that count first scanning the window row by
  row, left to right. GDAL reads the source of a level in chunks of rows (a few MiB, from the
  tile height and the level's width) and clips a window at a chunk's edges: with an odd level
  height ``mode`` can differ from GDAL's own output on the rows next to such an edge, which
  this module does not reproduce (its windows never depend on how a scene is cut into blocks
  or chunks). ``nearest`` has no such effect.

Every function takes global indices, so a block computes exactly the pixels of the whole
scene's levels that fall in its window, given the source pixels :func:`source_span` names.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.labels import NODATA

Method = Literal["nearest", "mode"]
EPS = 1e-8  # GDAL's epsilon on the window edges (mode)


def level_size(n: int) -> int:
    """Size of the next level along one axis: ``ceil(n / 2)`` (GDAL's ``DIV_ROUND_UP``)."""
    return -(-n // 2)


def size_at(n: int, factor: int) -> int:
    """Size along one axis of the level with ``factor`` (a power of two): ``ceil(n / f)``,
    which equals halving ``log2(f)`` times."""
    return -(-n // factor)


def windows(n_prev: int, lo: int, hi: int, method: Method,
            chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source windows ``[a, b)`` (global indices of the level ``n_prev`` wide) of the output
    pixels ``lo .. hi-1`` of the next level, along one axis; ``mode`` windows clipped to
    GDAL's chunks of ``chunk`` source rows (:func:`mode_chunk_rows`) when given."""
    n = level_size(n_prev)
    r = n_prev / n  # C's double division
    i = np.arange(lo, hi, dtype=np.float64)
    if method == "nearest":
        a = (0.5 + i * r).astype(np.int64)
        return a, a + 1
    a = (i * r + EPS).astype(np.int64)
    b = np.ceil((i + 1) * r - EPS).astype(np.int64)
    b = np.where(b == a, b + 1, b)
    b = np.minimum(b, n_prev)
    if chunk is not None and chunk < n_prev:
        starts = np.arange(0, n_prev, chunk, dtype=np.int64)
        first = (0.5 + starts / r).astype(np.int64)  # the first output row of each chunk
        k = np.searchsorted(first, np.arange(lo, hi), side="right") - 1
        a = np.maximum(a, starts[k])
        b = np.minimum(b, np.minimum(starts[k] + chunk, n_prev))
    return a, b


def source_span(n_prev: int, lo: int, hi: int, method: Method,
                chunk: int | None = None) -> tuple[int, int]:
    """The source pixels ``[a, b)`` that the output pixels ``lo .. hi-1`` read."""
    if hi <= lo:
        return lo * 2, lo * 2
    a, b = windows(n_prev, lo, hi, method, chunk)
    return int(a.min()), int(b.max())


def reduce(src: np.ndarray, origin: tuple[int, int], shape_prev: tuple[int, int],
           out: tuple[int, int, int, int], method: Method,
           chunk_rows: int | None = None) -> np.ndarray:
    """The next level's pixels ``rows out[0]:out[1], cols out[2]:out[3]`` (global indices)
    from ``src``, the pixels of the level ``shape_prev`` whose first one is at global
    ``origin`` (it must hold every pixel :func:`source_span` names); ``mode`` windows clipped
    to GDAL's chunks of ``chunk_rows`` rows (:func:`mode_chunk_rows`) when given."""
    r0, r1, c0, c1 = out
    ya, yb = windows(shape_prev[0], r0, r1, method, chunk_rows)
    xa, xb = windows(shape_prev[1], c0, c1, method)
    ya, yb, xa, xb = ya - origin[0], yb - origin[0], xa - origin[1], xb - origin[1]
    if len(ya) and (ya.min() < 0 or yb.max() > src.shape[0]):
        raise ValueError("the source window does not hold the rows this level reads")
    if len(xa) and (xa.min() < 0 or xb.max() > src.shape[1]):
        raise ValueError("the source window does not hold the columns this level reads")
    if method == "nearest":
        return np.ascontiguousarray(src[ya][:, xa])
    return _mode(src, ya, yb, xa, xb)


def _mode(src: np.ndarray, ya: np.ndarray, yb: np.ndarray, xa: np.ndarray,
          xb: np.ndarray) -> np.ndarray:
    """GDAL's byte ``mode``: per window, the first value (in row-major scan order) to reach
    the highest count, nodata not counted. The window's pixels are visited as GDAL visits
    them; ``c_k`` is the count of the ``k``-th pixel's value among the pixels so far, and a
    pixel becomes the answer when ``c_k`` beats the best count so far."""
    shape = (len(ya), len(xa))
    if not shape[0] or not shape[1]:
        return np.empty(shape, np.uint8)
    ny, nx = int((yb - ya).max()), int((xb - xa).max())
    values, valid = [], []
    for dy in range(ny):
        rows = ya + dy
        row_in = rows < yb
        rows = np.minimum(rows, src.shape[0] - 1)
        for dx in range(nx):
            cols = xa + dx
            col_in = cols < xb
            cols = np.minimum(cols, src.shape[1] - 1)
            v = src[rows][:, cols]
            ok = v != NODATA
            if not row_in.all():
                ok &= row_in[:, None]
            if not col_in.all():
                ok &= col_in[None, :]
            values.append(v)
            valid.append(ok)
    best_count = np.zeros(shape, np.int16)
    best = np.full(shape, NODATA, np.uint8)
    for k, (v, ok) in enumerate(zip(values, valid, strict=True)):
        count = ok.astype(np.int16)
        for j in range(k):
            count += (values[j] == v) & valid[j]
        count *= ok
        better = count > best_count
        best_count = np.where(better, count, best_count)
        best = np.where(better, v, best)
    return best


def mode_chunk_rows(n_prev_cols: int, block_rows: int) -> int:
    """Rows per chunk in which GDAL 3.10 reads a level to make the next one with ``mode``
    (``GDALRegenerateOverviewsEx``): the level's tile height (at least 4), doubled while a
    chunk holds less than 5 MiB, unless it already holds more than 10 MiB."""
    rows = max(block_rows, 4)
    if rows * n_prev_cols > 10 * 1024 * 1024:
        return rows
    while rows * n_prev_cols < 5 * 1024 * 1024:
        rows *= 2
    return rows
