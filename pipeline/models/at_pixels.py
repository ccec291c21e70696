"""A model's per-pixel output (features or class probabilities) at scattered pixels, each
taken from the `segment` tile that owns the pixel: the same grid, padding, scaling and
precision as a segment run, but only the tiles that hold a wanted pixel are computed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pipeline.io.raster import RasterInfo, Scaling, read_window
from pipeline.models.device import precision_context
from pipeline.tiling import grid_for_raster, snap_to_patch


def owner_tiles(index: np.ndarray, origin: int, stride: int, overlap: int) -> np.ndarray:
    """Along one axis, the tile whose core (the tile less half the overlap each side) holds
    each pixel: the tile that weighs most in the blend at that pixel."""
    core0 = origin + overlap // 2
    return (index - core0) // stride


@torch.no_grad()
def values_at_pixels(
    fn: Callable[[torch.Tensor], torch.Tensor], dim: int, patch: int,
    rasters: Sequence[tuple[RasterInfo, Scaling]],
    pixels: Sequence[tuple[np.ndarray, np.ndarray]], tile: int, overlap: int,
    block_size: int, batch_size: int = 4, device: str = "cpu", precision: str = "fp32",
) -> tuple[np.ndarray, int]:
    """``fn`` (images (N, 3, t, t) -> (N, dim, t, t)) at every (rows, cols) of each raster,
    concatenated in raster order, float32 (n, dim); and the number of tiles computed."""
    tile, overlap = snap_to_patch(tile, overlap, patch)
    chunks, n_tiles = [], 0
    for (info, scaling), (rows, cols) in zip(rasters, pixels, strict=True):
        out = np.zeros((len(rows), dim), dtype=np.float32)
        grid = grid_for_raster(tile, overlap, info.height, info.width, block_size)
        kr = owner_tiles(np.asarray(rows), grid.origin, grid.stride, overlap)
        kc = owner_tiles(np.asarray(cols), grid.origin, grid.stride, overlap)
        if len(rows):
            keys, inverse = np.unique(np.stack([kr, kc], 1), axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
        else:
            keys, inverse = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
        for j in range(0, len(keys), batch_size):
            batch = keys[j:j + batch_size]
            origins = [(grid.tile_origin(int(a)), grid.tile_origin(int(b))) for a, b in batch]
            imgs = [read_window(info, scaling, r0, c0, tile, tile)[0] for r0, c0 in origins]
            x = torch.from_numpy(np.stack(imgs)).to(device)
            with precision_context(precision, device):
                f = fn(x).float().cpu().numpy()
            for i, (r0, c0) in enumerate(origins):
                sel = np.flatnonzero(inverse == j + i)
                out[sel] = f[i][:, rows[sel] - r0, cols[sel] - c0].T
        n_tiles += len(keys)
        chunks.append(out)
    return (np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)), n_tiles
