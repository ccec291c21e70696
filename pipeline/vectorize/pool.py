"""Seam pieces waiting for the blocks across their seams: :class:`SeamPool` holds them and hands
out, merged, every group whose pieces can have no more partners, so it holds about the seam
pieces of the blocks still in flight rather than all of them."""

from __future__ import annotations

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.vectorize.blocks import BlockResult, _finish
from pipeline.vectorize.measure import Features, make_features
from pipeline.vectorize.seams import _shared_edges, merge_seam_pieces

__all__ = ["SeamPool"]


class SeamPool:
    """Seam pieces of finished blocks until every block their group touches is finished.

    A group (pieces of one class linked by shared seam segments) is complete when, for each of
    its pieces, the blocks across all of that piece's seam segments are finished: any piece
    it could still join would come from one of those blocks and is already in the pool.
    """

    def __init__(
        self, grid: tuple[int, int], block_size: int, transform: tuple[float, ...],
        simplify_tolerance: float, crs_wkt: str | None,
    ) -> None:
        self.done = np.zeros(grid, dtype=bool)
        self.block_size = block_size
        self.transform = transform
        self.tolerance = simplify_tolerance
        self.crs_wkt = crs_wkt
        self.groups_merged = 0
        self.peak_pieces = 0
        self._geoms = np.empty(0, dtype=object)
        self._classes = np.empty(0, dtype=np.uint8)
        self._block = np.empty((0, 2), dtype=np.int64)  # (block row, block col) per piece
        self._segments = np.empty((0, 5), dtype=np.int64)  # piece, axis, line, lo, hi
        self._new: list[tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray]] = []

    def __len__(self) -> int:
        return self._geoms.size + sum(geoms.size for geoms, *_ in self._new)

    def add(self, result: BlockResult) -> None:
        """Take a finished block's seam pieces and mark the block finished."""
        block = (result.origin[0] // self.block_size, result.origin[1] // self.block_size)
        self.done[block] = True
        if len(result.seam_wkb):
            geoms = shapely.from_wkb(np.array(result.seam_wkb, dtype=object))
            segments = np.asarray(result.seam_segments, dtype=np.int64).reshape(-1, 5)
            self._new.append((geoms, np.asarray(result.seam_class, np.uint8), block, segments))
        self.peak_pieces = max(self.peak_pieces, len(self))

    def take_complete(self, everything: bool = False) -> Features:
        """Merge and return the complete groups (all groups when ``everything``)."""
        self._gather()
        if self._geoms.size == 0:
            return make_features(np.empty(0, object), np.empty(0, np.uint8), self.crs_wkt)
        take = np.ones(self._geoms.size, dtype=bool)
        if not everything:
            take = self._complete()
        segments = self._segments[take[self._segments[:, 0]]]
        index = np.cumsum(take) - 1
        segments[:, 0] = index[segments[:, 0]]
        merged, classes, n_groups = merge_seam_pieces(
            self._geoms[take], self._classes[take], segments
        )
        self.groups_merged += n_groups
        keep = ~take
        kept_segments = self._segments[keep[self._segments[:, 0]]]
        kept_segments[:, 0] = (np.cumsum(keep) - 1)[kept_segments[:, 0]]
        self._geoms, self._classes = self._geoms[keep], self._classes[keep]
        self._block, self._segments = self._block[keep], kept_segments
        finished = _finish(merged, self.transform, self.tolerance)
        return make_features(finished, classes, self.crs_wkt)

    def _gather(self) -> None:
        """Append the pieces added since the last call to the pool's arrays."""
        if not self._new:
            return
        geoms, classes, blocks, segments = [self._geoms], [self._classes], [self._block], [
            self._segments
        ]
        count = self._geoms.size
        for piece_geoms, piece_classes, block, piece_segments in self._new:
            shifted = piece_segments.copy()
            shifted[:, 0] += count
            count += piece_geoms.size
            geoms.append(piece_geoms)
            classes.append(piece_classes)
            blocks.append(np.tile(np.asarray(block, np.int64), (piece_geoms.size, 1)))
            segments.append(shifted)
        self._geoms, self._classes = np.concatenate(geoms), np.concatenate(classes)
        self._block, self._segments = np.concatenate(blocks), np.concatenate(segments)
        self._new = []

    def _complete(self) -> np.ndarray:
        """Boolean per piece: its group can have no more partners."""
        piece, axis = self._segments[:, 0], self._segments[:, 1]
        line = self._segments[:, 2] // self.block_size  # the block on the far side of the line
        own = self._block[piece]
        across = own.copy()
        vertical = axis == 0  # a vertical seam x = line: the block to the left or right
        across[vertical, 1] = np.where(line[vertical] == own[vertical, 1], own[vertical, 1] - 1,
                                       own[vertical, 1] + 1)
        across[~vertical, 0] = np.where(line[~vertical] == own[~vertical, 0],
                                        own[~vertical, 0] - 1, own[~vertical, 0] + 1)
        waiting = ~self.done[across[:, 0], across[:, 1]]
        n = self._geoms.size
        i, j = _shared_edges(self._segments, self._classes)
        graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n))
        group = connected_components(graph, directed=False)[1]
        open_groups = np.zeros(group.max() + 1, dtype=bool)
        open_groups[group[piece[waiting]]] = True
        return ~open_groups[group]
