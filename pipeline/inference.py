"""Chunked inference: one block = read with halo, batched tiles, blended scores, argmax."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.models.base import SegmentationModel
from pipeline.raster_io import RasterInfo, Scaling, read_window
from pipeline.tiling import Block, TileGrid, blend_weights_2d, tiles_for_block

NODATA = 255


@dataclass
class BlockOutput:
    """Labels and confidence for a block core, plus small statistics."""

    block: Block
    labels: np.ndarray  # uint8 (h, w), 255 = nodata
    confidence: np.ndarray  # uint8 (h, w), max probability * 255
    stats: dict = field(default_factory=dict)


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when available."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    return requested


@torch.inference_mode()
def segment_block(
    model: SegmentationModel,
    info: RasterInfo,
    scaling: Scaling,
    grid: TileGrid,
    block: Block,
    batch_size: int = 8,
    device: str = "cpu",
) -> BlockOutput:
    """Segment one block core exactly as a whole-raster run would (global tile grid)."""
    t0 = time.perf_counter()
    rows, cols = tiles_for_block(grid, block)
    t = grid.tile
    r0, c0 = rows[0], cols[0]
    img, valid = read_window(info, scaling, r0, c0, rows[-1] + t - r0, cols[-1] + t - c0)
    t_read = time.perf_counter() - t0

    weights = torch.from_numpy(blend_weights_2d(t, grid.overlap))
    k = model.n_classes
    acc = np.zeros((k, block.height, block.width), dtype=np.float32)
    wsum = np.zeros((block.height, block.width), dtype=np.float32)

    todo: list[tuple[int, int]] = []
    for tr in rows:
        for tc in cols:
            if valid[tr - r0 : tr - r0 + t, tc - c0 : tc - c0 + t].any():
                todo.append((tr, tc))

    t_model = 0.0
    for i in range(0, len(todo), batch_size):
        batch = todo[i : i + batch_size]
        x = np.stack([img[:, tr - r0 : tr - r0 + t, tc - c0 : tc - c0 + t] for tr, tc in batch])
        tm = time.perf_counter()
        probs = model.predict(torch.from_numpy(x).to(device)).float().cpu()
        t_model += time.perf_counter() - tm
        probs = (probs * weights).numpy()
        for (tr, tc), p in zip(batch, probs, strict=True):
            # intersection of the tile with the block core, in core coordinates
            y0, y1 = max(tr, block.row_off), min(tr + t, block.row_off + block.height)
            x0, x1 = max(tc, block.col_off), min(tc + t, block.col_off + block.width)
            if y1 <= y0 or x1 <= x0:
                continue
            src = (slice(y0 - tr, y1 - tr), slice(x0 - tc, x1 - tc))
            dst = (slice(y0 - block.row_off, y1 - block.row_off),
                   slice(x0 - block.col_off, x1 - block.col_off))
            acc[(slice(None), *dst)] += p[(slice(None), *src)]
            wsum[dst] += weights.numpy()[src]

    core_valid = valid[block.row_off - r0 : block.row_off - r0 + block.height,
                       block.col_off - c0 : block.col_off - c0 + block.width]
    labels = np.full((block.height, block.width), NODATA, dtype=np.uint8)
    confidence = np.zeros((block.height, block.width), dtype=np.uint8)
    if core_valid.any():
        best = acc.argmax(axis=0).astype(np.uint8)
        top = np.take_along_axis(acc, best[None].astype(np.int64), axis=0)[0]
        conf = np.where(wsum > 0, top / np.maximum(wsum, 1e-12), 0.0)
        labels[core_valid] = best[core_valid]
        confidence[core_valid] = np.clip(np.rint(conf[core_valid] * 255), 0, 255).astype(np.uint8)
    counts = np.bincount(labels[core_valid], minlength=k)[:k]
    stats = {
        "key": block.key,
        "tiles": len(todo),
        "model_pixels": len(todo) * t * t,
        "valid_pixels": int(core_valid.sum()),
        "class_counts": counts.tolist(),
        "seconds": time.perf_counter() - t0,
        "read_seconds": t_read,
        "model_seconds": t_model,
    }
    return BlockOutput(block, labels, confidence, stats)
