"""Exact merging of the seam pieces held back by the blocks: pieces of one class sharing a seam
boundary of positive length are unioned into one polygon."""

from __future__ import annotations

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["merge_seam_pieces"]


def merge_seam_pieces(
    geoms: np.ndarray, classes: np.ndarray, segments: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Union same-class pieces that share a seam boundary of positive length.

    ``segments`` rows are (piece, axis, line, lo, hi) as made by the block workers. Returns
    (polygons, their classes, number of groups with more than one piece).
    """
    geoms = np.asarray(geoms, dtype=object)
    classes = np.asarray(classes, dtype=np.uint8)
    if geoms.size == 0:
        return geoms, classes, 0
    segments = np.asarray(segments, dtype=np.int64).reshape(-1, 5)
    i, j = _shared_edges(segments, classes)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(geoms.size,) * 2)
    group = connected_components(graph, directed=False)[1]
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    members = np.split(order, starts[1:])
    out = geoms[order[starts]]
    multi = np.flatnonzero(np.diff(np.r_[starts, order.size]) > 1)
    if multi.size:
        out[multi] = _union_groups(geoms, [members[k] for k in multi], segments)
    return out, classes[order[starts]], int(multi.size)


def _shared_edges(segments: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of pieces whose seam segments on the same line, same class, overlap (length > 0).

    Exact sweep: within one (axis, line, class) group sorted by ``lo``, segments of one side
    are disjoint, so a segment overlapping any earlier one overlaps the earlier segment that
    reaches furthest; linking to that one yields the same connected components.
    """
    piece, axis, line, lo, hi = segments.T
    cls = classes[piece].astype(np.int64)
    order = np.lexsort((lo, cls, line, axis))
    piece, lo, hi = piece[order], lo[order], hi[order]
    keys = np.column_stack([axis, line, cls])[order]
    group = np.cumsum(np.r_[False, np.any(keys[1:] != keys[:-1], axis=1)])
    span = int(hi.max(initial=0)) + 1
    reach = group * span + hi  # increases from group to group: one running max for all
    best = np.maximum.accumulate(reach)
    arg = np.maximum.accumulate(np.where(reach == best, np.arange(reach.size), 0))
    overlap = group[1:] * span + lo[1:] < best[:-1]
    return piece[1:][overlap], piece[arg[:-1][overlap]]


def _union_groups(
    geoms: np.ndarray, groups: list[np.ndarray], segments: np.ndarray
) -> np.ndarray:
    """Union of each group of edge-connected pieces (all of one region), exactly.

    The pieces' shells are made to share vertices along the seams (every seam-segment end
    point lying inside another piece's seam segment on the same line is inserted there), so
    they form a proper polygon coverage and GEOS's coverage union dissolves the shared edges
    in linear time. The collinear vertices left on the seams are then dropped, and the pieces'
    holes, which never reach a block edge, are added back as holes of the union.
    """
    pieces = np.concatenate(groups)
    sizes = np.array([g.size for g in groups])
    ends = np.cumsum(sizes)
    used = np.isin(segments[:, 0], pieces)
    shells = _insert_seam_points(shapely.get_exterior_ring(geoms[pieces]), segments[used])
    unions = np.array(
        [shapely.coverage_union_all(shells[e - n : e]) for n, e in zip(sizes, ends, strict=True)],
        dtype=object,
    )
    out = np.empty(len(groups), dtype=object)
    polygon = shapely.get_type_id(unions) == shapely.GeometryType.POLYGON
    for k in np.flatnonzero(~polygon):  # not expected for pixel geometry; exact fallback
        out[k] = shapely.union_all(geoms[groups[k]])
    ok = np.flatnonzero(polygon)
    if ok.size == 0:
        return out
    # rings of the unions (shell first), then the holes of their pieces, grouped by union
    union_rings, union_of = shapely.get_rings(unions[ok], return_index=True)
    union_rings = _drop_collinear(union_rings)
    ok_pieces = np.concatenate([groups[k] for k in ok])
    piece_rings, piece_of = shapely.get_rings(geoms[ok_pieces], return_index=True)
    is_hole = np.r_[False, piece_of[1:] == piece_of[:-1]]
    owner = np.repeat(np.arange(ok.size), sizes[ok])[piece_of[is_hole]]
    rings = np.concatenate([union_rings, piece_rings[is_hole]])
    index = np.concatenate([union_of, owner])
    order = np.argsort(index, kind="stable")
    out[ok] = shapely.polygons(rings[order], indices=index[order])
    return out


def _insert_seam_points(rings: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Polygons from rings, with the end points of ``segments`` (rows piece, axis, line, lo,
    hi) inserted into every ring segment that runs along the same line past them."""
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    xy = np.rint(coords).astype(np.int64)
    span = int(max(xy.max(initial=0), segments[:, 2:].max(initial=0))) + 2
    _, axis, line, lo, hi = segments.T
    on_line = (axis * span + line) * span
    points = np.sort(np.concatenate([on_line + lo, on_line + hi]))  # keys (axis, line, pos)
    distinct = np.ones(points.size, dtype=bool)
    distinct[1:] = points[1:] != points[:-1]
    points = points[distinct]
    start, end = xy[:-1], xy[1:]
    along = np.where(start[:, 0] == end[:, 0], 0, 1)  # vertical segments lie on x = line
    seg_line = np.where(along == 0, start[:, 0], start[:, 1])
    a = np.where(along == 0, start[:, 1], start[:, 0])
    b = np.where(along == 0, end[:, 1], end[:, 0])
    base = (along * span + seg_line) * span
    first = np.searchsorted(points, base + np.minimum(a, b), side="right")
    count = np.searchsorted(points, base + np.maximum(a, b), side="left") - first
    count = np.maximum(count, 0)  # (a zero-length segment has nothing inside)
    count[ring[:-1] != ring[1:]] = 0  # from the last vertex of a ring to the next ring
    count = np.append(count, 0)
    out_len = 1 + count
    total = int(out_len.sum())
    head = np.cumsum(out_len) - out_len  # output position of every original vertex
    new = np.empty((total, 2), dtype=np.float64)
    new[head] = coords
    has = np.flatnonzero(count)
    if has.size:
        n = count[has]
        k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # 0.. within a segment
        seg = np.repeat(has, n)
        ascending = np.repeat(a[has] < b[has], n)
        pick = np.where(ascending, first[seg] + k, first[seg] + count[seg] - 1 - k)
        pos = (points[pick] % span).astype(np.float64)
        fixed = seg_line[seg].astype(np.float64)
        vertical = along[seg] == 0
        new[head[seg] + 1 + k] = np.column_stack(
            [np.where(vertical, fixed, pos), np.where(vertical, pos, fixed)]
        )
    return shapely.polygons(shapely.linearrings(new, indices=np.repeat(ring, out_len)))


def _drop_collinear(rings: np.ndarray) -> np.ndarray:
    """The rings without the vertices lying on a straight (axis-parallel) line between their
    neighbours; every ring of pixel geometry keeps at least its four corners."""
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring[1:] != ring[:-1], True]
    coords, ring = coords[~closing], ring[~closing]
    first = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    last = np.r_[first[1:], ring.size] - 1
    prev = np.arange(ring.size) - 1
    prev[first] = last
    nxt = np.arange(ring.size) + 1
    nxt[last] = first
    x, y = coords.T
    straight = ((x[prev] == x) & (x == x[nxt])) | ((y[prev] == y) & (y == y[nxt]))
    return shapely.linearrings(coords[~straight], indices=ring[~straight])
