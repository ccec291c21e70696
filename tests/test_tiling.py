"""Window planning: blocks, the global tile grid and blend weights."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tiling import (
    TileGrid,
    blend_weights_1d,
    block_grid_shape,
    compute_amplification,
    plan_blocks,
    tiles_for_block,
)


@pytest.mark.parametrize("h,w,b", [(1, 1, 4), (100, 37, 32), (512, 512, 512), (513, 1030, 256)])
def test_blocks_cover_the_raster_exactly_once(h, w, b):
    cover = np.zeros((h, w), dtype=int)
    for blk in plan_blocks(h, w, b):
        assert 0 < blk.height <= b and 0 < blk.width <= b
        cover[blk.row_off : blk.row_off + blk.height, blk.col_off : blk.col_off + blk.width] += 1
    assert (cover == 1).all()


@pytest.mark.parametrize("tile,overlap", [(64, 16), (32, 0), (544, 32), (48, 24)])
@pytest.mark.parametrize("start,stop", [(0, 1), (0, 300), (37, 38), (96, 192), (250, 700)])
def test_span_lists_exactly_the_tiles_that_touch_a_range(tile, overlap, start, stop):
    grid = TileGrid(tile, overlap)
    k0, k1 = grid.span(start, stop)
    brute = [k for k in range(-5, 200)
             if grid.tile_origin(k) < stop and grid.tile_origin(k) + tile > start]
    assert list(range(k0, k1)) == brute


def test_the_tile_grid_does_not_depend_on_the_block_size():
    grid = TileGrid(64, 16)
    origins = set()
    for b in (32, 96, 400):
        for blk in plan_blocks(400, 400, b):
            rows, cols = tiles_for_block(grid, blk)
            origins |= set(rows) | set(cols)
    assert all((o - grid.origin) % grid.stride == 0 for o in origins)


def test_blend_weights_never_vanish_and_neighbouring_ramps_sum_to_one():
    tile, overlap = 64, 16
    w = blend_weights_1d(tile, overlap)
    assert w.min() > 0 and w.max() == 1
    # tile k's falling ramp and tile k+1's rising ramp cover the same pixels
    np.testing.assert_allclose(w[tile - overlap :] + w[:overlap], 1.0, atol=1e-12)


def test_aligned_blocks_keep_compute_amplification_low():
    grid = TileGrid(544, 32)  # stride 512
    aligned = compute_amplification(20000, 20000, grid, 4096)  # seams on tile centres
    in_overlap = compute_amplification(20000, 20000, grid, 4352)  # seams where tiles overlap
    assert aligned < in_overlap
    assert aligned < 1.45


@pytest.mark.parametrize("size", [1024, 2048, 4096, 8192, 20000, 50000])
def test_default_tiling_keeps_amplification_within_1_3(size):
    """Issue 5: model pixels per raster pixel <= 1.3 (no 4x overlap schemes)."""
    from pipeline.config import TilingConfig
    from pipeline.tiling import grid_for_raster

    t = TilingConfig()
    grid = grid_for_raster(t.tile_size, t.overlap, size, size, t.block_size)
    assert compute_amplification(size, size, grid, t.block_size) <= 1.3


@pytest.mark.parametrize("offset", [None, -8, -3])
@pytest.mark.parametrize("size", [1, 5, 40, 47, 48, 49, 100, 203])
def test_trimmed_grids_keep_every_pixel_inside_one_kept_tiles_core(offset, size):
    """Leaving out tiles whose core misses the raster never leaves a pixel without a tile."""
    grid = TileGrid(64, 16, offset, (size, size))
    k0, k1 = grid.span(0, size, size)
    c = grid.origin + grid.overlap // 2
    owners = [[k for k in range(k0, k1) if c + k * grid.stride <= p < c + (k + 1) * grid.stride]
              for p in range(size)]
    assert all(len(o) == 1 for o in owners)
    untrimmed = grid.span(0, size)
    assert untrimmed[0] <= k0 and k1 <= untrimmed[1]


def _n_blocks(size: tuple[int, int], edge: int) -> int:
    rows, cols = block_grid_shape(*size, edge)
    return rows * cols


@pytest.mark.parametrize(("size", "chunk", "stride", "threads", "edge"), [
    ((20000, 20000), 512, 512, 1, 10240),  # 4 blocks already: the fixed default
    ((20000, 20000), 512, 512, 16, 2560),  # 8 x 8 = 64 blocks, 4 per thread
    ((20000, 20000), 512, 512, 64, 1024),  # 1536 would make 196 < 256
    ((100000, 100000), 512, 512, 1, 10240),  # never above 10240
    ((2048, 2048), 512, 512, 1, 1536),  # 2 x 2
    ((2048, 2048), 512, 512, 16, 512),  # too small for 64 blocks: one chunk each, never less
    ((300, 200), 512, 512, 4, 512),  # smaller than a chunk: one block
    ((384, 384), 32, 48, 1, 288),  # multiples of the stride preferred (lcm 96)
    ((384, 384), 32, 48, 2, 96),  # 160 would make 9 blocks, but cuts tiles at the seams
    ((20000, 20000), 512, 504, 16, 2560),  # lcm(512, 504) > 10240: multiples of the chunk
    ((20000, 5000), 512, 512, 4, 2560),  # 8 x 2 blocks
    ((20000, 20000), 512, 512, 0, 10240),  # no workers yet: as for one thread
])
def test_auto_block_size_gives_every_worker_thread_four_blocks(size, chunk, stride, threads,
                                                               edge):
    from pipeline.tiling import auto_block_size

    assert auto_block_size(*size, chunk, stride, threads) == edge


def test_auto_block_size_is_the_largest_edge_that_keeps_the_threads_busy():
    from pipeline.tiling import AUTO_BLOCK_MAX, auto_block_size

    rng = np.random.default_rng(0)
    for _ in range(300):
        size = (int(rng.integers(1, 60000)), int(rng.integers(1, 60000)))
        threads = int(rng.integers(1, 200))
        edge = auto_block_size(*size, 512, 512, threads)
        assert edge % 512 == 0 and 512 <= edge <= AUTO_BLOCK_MAX
        enough = [e for e in range(512, AUTO_BLOCK_MAX + 1, 512)
                  if _n_blocks(size, e) >= 4 * threads]
        assert edge == (max(enough) if enough else 512), (size, threads)
