"""Pure window arithmetic: blocks (Dask tasks), the global tile grid, and blend weights.

The tile grid is global: tile ``k`` along an axis starts at ``k * stride - tile // 2``, so raster
pixel 0 sits at the centre of tile 0, whatever the block size. Every block computes exactly the
tiles that touch its core, so each core pixel receives the same tiles, with the same weights,
as in a one-block run: block seams leave no trace. When ``block_size`` is a multiple of the
stride, block edges fall on tile centres and only one tile per seam is computed twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    """A block core in raster pixel coordinates, with its grid index."""

    index: int
    row: int
    col: int
    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def key(self) -> str:
        """Stable name used in manifests and caches."""
        return f"r{self.row}c{self.col}"


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid of a raster."""

    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        """Distance between tile origins."""
        return self.tile - self.overlap

    @property
    def origin(self) -> int:
        """Offset of tile 0 (negative: the first tile is centred on pixel 0)."""
        return -(self.tile // 2)

    def span(self, start: int, stop: int) -> tuple[int, int]:
        """Indices ``[k0, k1)`` of tiles overlapping pixels ``[start, stop)`` along one axis."""
        s, o, t = self.stride, self.origin, self.tile
        k0 = -((-(start - o - t + 1)) // s)  # ceil((start - o - t + 1) / s)
        k1 = (stop - 1 - o) // s + 1
        return k0, k1

    def tile_origin(self, k: int) -> int:
        """Pixel offset of tile ``k`` along an axis."""
        return self.origin + k * self.stride


def plan_blocks(height: int, width: int, block_size: int) -> list[Block]:
    """Blocks of ``block_size`` anchored at (0, 0), the last row/column clipped."""
    blocks = []
    n_rows = -(-height // block_size)
    n_cols = -(-width // block_size)
    for r in range(n_rows):
        for c in range(n_cols):
            r0, c0 = r * block_size, c * block_size
            blocks.append(
                Block(
                    index=r * n_cols + c,
                    row=r,
                    col=c,
                    row_off=r0,
                    col_off=c0,
                    height=min(block_size, height - r0),
                    width=min(block_size, width - c0),
                )
            )
    return blocks


def block_grid_shape(height: int, width: int, block_size: int) -> tuple[int, int]:
    """Number of block rows and columns."""
    return -(-height // block_size), -(-width // block_size)


def blend_weights_1d(tile: int, overlap: int) -> np.ndarray:
    """Cosine-tapered (Tukey) weights: 1 in the middle, sin^2 ramps over ``overlap`` at each end.

    Never zero (half-sample offset), and two neighbouring ramps sum to one.
    """
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        i = np.arange(overlap, dtype=np.float64)
        ramp = np.sin(0.5 * np.pi * (i + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[tile - overlap :] = ramp[::-1]
    return w


def blend_weights_2d(tile: int, overlap: int) -> np.ndarray:
    """Separable 2-D blend window (float32, shape (tile, tile))."""
    w = blend_weights_1d(tile, overlap)
    return np.outer(w, w).astype(np.float32)


def tiles_for_block(grid: TileGrid, block: Block) -> tuple[list[int], list[int]]:
    """Row and column origins of the tiles touching a block's core."""
    kr0, kr1 = grid.span(block.row_off, block.row_off + block.height)
    kc0, kc1 = grid.span(block.col_off, block.col_off + block.width)
    rows = [grid.tile_origin(k) for k in range(kr0, kr1)]
    cols = [grid.tile_origin(k) for k in range(kc0, kc1)]
    return rows, cols


def compute_amplification(height: int, width: int, grid: TileGrid, block_size: int) -> float:
    """Model pixels per raster pixel for a whole run (issue target: <= 1.3)."""
    total = 0
    for block in plan_blocks(height, width, block_size):
        rows, cols = tiles_for_block(grid, block)
        total += len(rows) * len(cols)
    return total * grid.tile * grid.tile / float(height * width)
