"""Compiled (numba) inner loops of vectorizing, each a linear pass over a block: labelling the
4-connected regions, the sieve's neighbour counts and majority rounds, and tracing region
boundaries into rings of pixel-corner vertices. Compiled on first use and cached on disk
(``cache=True``), so only the first run on a machine pays for compiling."""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["label_regions", "resolve_rounds", "small_region_neighbours", "trace_rings"]

_jit = numba.njit(cache=True, nogil=True)

@_jit
def _root(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@_jit
def label_regions(labels: np.ndarray, nodata: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected regions of equal value: (labels int32 with a border of -1 around them, the
    value and the pixel count of each label).

    Label 0 is every nodata pixel, regions are 1..n in raster order of their first pixel.
    Two passes with union-find; the border lets the other loops look at any 4- or
    8-neighbour of a pixel without bounds checks.
    """
    height, width = labels.shape
    stride = width + 2
    out = np.full((height + 2) * stride, -1, dtype=np.int32)
    parent = np.empty(height * width + 1, dtype=np.int32)
    parent[0] = 0
    n = 0
    for i in range(height):
        base = (i + 1) * stride + 1
        for j in range(width):
            v = labels[i, j]
            p = base + j
            if v == nodata:
                out[p] = 0
                continue
            left = out[p - 1] if j > 0 and labels[i, j - 1] == v else 0
            up = out[p - stride] if i > 0 and labels[i - 1, j] == v else 0
            if left == 0 and up == 0:
                n += 1
                parent[n] = n
                out[p] = n
            elif up == 0 or up == left:
                out[p] = left
            elif left == 0:
                out[p] = up
            else:
                a, b = _root(parent, left), _root(parent, up)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
                out[p] = min(a, b)
    final = np.empty(n + 1, dtype=np.int32)
    final[0] = 0
    count = 0
    for k in range(1, n + 1):  # parent[k] <= k, so parents are final before their children
        if parent[k] == k:
            count += 1
            final[k] = count
        else:
            final[k] = final[parent[k]]
    value = np.full(count + 1, nodata, dtype=np.uint8)
    size = np.zeros(count + 1, dtype=np.int64)
    for i in range(height):
        base = (i + 1) * stride + 1
        for j in range(width):
            r = final[out[base + j]]
            out[base + j] = r
            value[r] = labels[i, j]
            size[r] += 1
    return out.reshape(height + 2, stride), value, size


@_jit
def resolve_rounds(
    src: np.ndarray, dst: np.ndarray, weight: np.ndarray, region_value: np.ndarray,
    pending: np.ndarray, donor: np.ndarray,
) -> np.ndarray:
    """Synchronous majority rounds of the sieve; returns the new value of every region.

    ``src`` is grouped by region (as :func:`small_region_neighbours` makes it). In each round
    every pending region with neighbours among the donors takes the value owning most of its
    neighbour pixels in donor regions (ties: smallest value); those regions then are donors.
    """
    value = region_value.astype(np.int64)
    pending = pending.copy()
    donor = donor.copy()
    bounds = np.empty(src.size + 1, dtype=np.int64)
    n_groups = 0
    for t in range(src.size):
        if t == 0 or src[t] != src[t - 1]:
            bounds[n_groups] = t
            n_groups += 1
    bounds[n_groups] = src.size
    active = np.arange(n_groups)
    total = np.zeros(256, dtype=np.int64)
    won_region = np.empty(n_groups, dtype=np.int64)
    won_value = np.empty(n_groups, dtype=np.int64)
    while active.size:
        n_won = 0
        for g in active:
            best, best_total = -1, 0
            for t in range(bounds[g], bounds[g + 1]):
                if donor[dst[t]]:
                    total[value[dst[t]]] += weight[t]
            for t in range(bounds[g], bounds[g + 1]):
                if donor[dst[t]]:
                    v = value[dst[t]]
                    if total[v] > best_total or (total[v] == best_total and v < best):
                        best, best_total = v, total[v]
            for t in range(bounds[g], bounds[g + 1]):
                total[value[dst[t]]] = 0
            if best >= 0:
                won_region[n_won] = src[bounds[g]]
                won_value[n_won] = best
                n_won += 1
        if n_won == 0:
            break
        for k in range(n_won):
            r = won_region[k]
            value[r] = won_value[k]
            pending[r] = False
            donor[r] = True
        keep = np.empty(active.size, dtype=np.bool_)
        for k in range(active.size):
            keep[k] = pending[src[bounds[active[k]]]]
        active = active[keep]
    return value


@_jit
def small_region_neighbours(
    regions: np.ndarray, pending: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(small region, neighbour region, distinct neighbour pixels) for every pending region.

    ``regions`` is from :func:`label_regions`. A neighbour pixel is a 4-neighbour of the small
    region's pixels in another region with a label > 0 (not nodata); each is counted once
    however many sides of the region it touches.
    """
    stride = regions.shape[1]
    flat = regions.ravel()
    count = pending.size
    start = np.zeros(count + 1, dtype=np.int64)
    for r in range(count):
        start[r + 1] = start[r] + (size[r] if pending[r] else 0)
    fill = start[:-1].copy()
    pixels = np.empty(start[count], dtype=np.int64)
    for p in range(flat.size):
        r = flat[p]
        if r > 0 and pending[r]:
            pixels[fill[r]] = p
            fill[r] += 1
    src = np.empty(4 * start[count], dtype=np.int64)
    dst = np.empty_like(src)
    weight = np.empty_like(src)
    seen = np.zeros(flat.size, dtype=np.int32)  # last small region that counted the pixel
    k = 0
    for r in range(count):
        if not pending[r]:
            continue
        first = k
        for p in pixels[start[r] : start[r + 1]]:
            for n in (p - stride, p - 1, p + 1, p + stride):
                q = flat[n]
                if q <= 0 or q == r or seen[n] == r:
                    continue
                seen[n] = r
                t = first
                while t < k and dst[t] != q:
                    t += 1
                if t == k:
                    src[k], dst[k], weight[k] = r, q, 0
                    k += 1
                weight[t] += 1
    return src[:k], dst[:k], weight[:k]


@_jit
def _grow(array: np.ndarray, needed: int) -> np.ndarray:
    out = np.empty((max(needed, 2 * array.shape[0]),) + array.shape[1:], dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


@_jit
def _walk(
    flat: np.ndarray, stride: int, point: int, d: int, top_done: np.ndarray,
    bottom_done: np.ndarray, xy: np.ndarray, n_xy: int,
) -> tuple[np.ndarray, int]:
    """Walk one ring from grid point ``point`` in direction ``d`` (0-3: E, S, W, N), region
    ``flat[point + stride + 1]`` or ``flat[point]`` on the right; append its turns to xy."""
    # A grid point (row gr, col gc) has index gr * stride + gc; its pixels NW, NE, SW, SE are
    # point + 0, + 1, + stride, + stride + 1.
    reg = flat[point + stride + 1] if d == 0 else flat[point]
    step = (1, stride, -1, -stride)
    ahead_left = (1, stride + 1, stride, 0)
    ahead_right = (stride + 1, stride, 0, 1)
    start_point, start_d, first = point, d, n_xy
    steps, limit = 0, 2 * flat.size + 4
    while True:
        if d == 0:
            top_done[point + stride + 1] = True
        elif d == 2:
            bottom_done[point] = True
        point += step[d]
        # turn left (3) into the region ahead-left, else straight (0) along the region
        # ahead-right, else right (1)
        turn = 3 if flat[point + ahead_left[d]] == reg else (
            0 if flat[point + ahead_right[d]] == reg else 1)
        if turn:
            if n_xy + 2 > xy.shape[0]:
                xy = _grow(xy, n_xy + 2)
            xy[n_xy] = point
            n_xy += 1
            d = (d + turn) & 3
        if point == start_point and d == start_d:
            break
        steps += 1
        if steps > limit:
            raise RuntimeError("ring tracing did not close")
    xy[n_xy] = xy[first]
    return xy, n_xy + 1


@_jit
def trace_rings(regions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ring of every region (label > 0) of :func:`label_regions`: (vertices as grid point
    indices ``row * (width + 2) + col`` of pixel corners, ring offsets, region of each ring).

    Rings follow pixel edges with the region on the right (rows down), with a vertex at each
    turn only, closed (last vertex = first). Rings are found in raster order, so the first
    ring of a region is its exterior and the later ones its holes. Where a region touches
    itself at a corner, the ring passes straight through that corner, so an exterior never
    touches itself: the enclosed part becomes a hole meeting it at that point (valid OGC).
    """
    height, width = regions.shape[0] - 2, regions.shape[1] - 2
    stride = width + 2
    flat = regions.ravel()
    top_done = np.zeros(flat.size, dtype=np.bool_)  # pixel's top edge traced (region below)
    bottom_done = np.zeros(flat.size, dtype=np.bool_)  # bottom edge traced (region above)
    xy = np.empty(4 * (height + width) + 64, dtype=np.int64)  # grid point index per vertex
    offsets = np.zeros(1024, dtype=np.int64)
    ring_region = np.empty(1024, dtype=np.int64)
    n_xy = 0
    n_rings = 0
    for pix in range(stride + 1, (height + 1) * stride - 1):
        reg = flat[pix]
        if reg <= 0:
            continue
        top = flat[pix - stride] != reg and not top_done[pix]
        bottom = flat[pix + stride] != reg and not bottom_done[pix]
        if not (top or bottom):
            continue
        for side in range(2):
            if side == 0 and top:  # top edge, walked east from the pixel's top-left corner
                xy, n_xy = _walk(flat, stride, pix - stride - 1, 0, top_done, bottom_done,
                                 xy, n_xy)
            elif side == 1 and bottom and not bottom_done[pix]:
                # bottom edge, walked west from the pixel's bottom-right corner
                xy, n_xy = _walk(flat, stride, pix, 2, top_done, bottom_done, xy, n_xy)
            else:
                continue
            if n_rings + 2 > offsets.shape[0]:
                offsets = _grow(offsets, n_rings + 2)
                ring_region = _grow(ring_region, n_rings + 2)
            ring_region[n_rings] = reg
            n_rings += 1
            offsets[n_rings] = n_xy
    return xy[:n_xy], offsets[: n_rings + 1], ring_region[:n_rings]
