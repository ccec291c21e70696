"""Chunked inference: one block = read with halo, batched tiles, blended scores, argmax.

torch is imported only for torch models: a NumPy model's run never loads it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from pipeline.io.raster import RasterInfo, Scaling, read_window
from pipeline.labels import CONFIDENCE_SCALE, NODATA, BlockOutput
from pipeline.models.base import SegmentationModel, as_array
from pipeline.tiling import Block, TileGrid, blend_weights_2d, tiles_for_block


@dataclass
class Slab:
    """Finished rows ``[row, row + height)`` of a block core (core coordinates)."""

    row: int
    labels: np.ndarray  # uint8 (h, w)
    confidence: np.ndarray  # uint8 (h, w)
    valid: np.ndarray  # bool (h, w)
    margin: np.ndarray  # uint8 (h, w): top-two probability difference x 254


@dataclass
class BlockStats:
    """Counters one block accumulates while its slabs stream out."""

    tiles: int = 0
    read_seconds: float = 0.0
    model_seconds: float = 0.0
    valid_pixels: int = 0
    class_counts: np.ndarray | None = None  # pixels per class over the slabs yielded


def choose_batch_size(free_bytes: int, per_tile_bytes: int, fraction: float = 0.6,
                      cap: int = 64) -> int:
    """Tiles per batch that fit in ``fraction`` of the free device memory (1..cap)."""
    if per_tile_bytes <= 0:
        return cap
    return int(max(1, min(cap, (fraction * free_bytes) // per_tile_bytes)))


def auto_batch_size(model: SegmentationModel, tile: int, device: str,
                    precision: str = "auto", cpu_default: int = 4) -> int:
    """``tiling.batch_size: auto``: measure one small batch's peak memory on the GPU and fill
    60 % of the free memory; on CPU, ``cpu_default``."""
    if not device.startswith("cuda") or not model.uses_torch:
        return cpu_default
    import torch

    from pipeline.models.device import precision_context

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode(), precision_context(precision, device):
        model.predict(torch.zeros(2, 3, tile, tile, device=device))
    per_tile = (torch.cuda.max_memory_allocated(device) - base) // 2
    free, _ = torch.cuda.mem_get_info(device)
    return choose_batch_size(free, per_tile)


Pair = tuple[np.ndarray, np.ndarray | None]  # probabilities, and those the margin comes from


def _call(model: SegmentationModel, x: object) -> Pair:
    """A model's probabilities, and with a model that post-processes them (the dense CRF:
    ``predict_with_prior``), the probabilities before that, which the margin is taken from."""
    pair = getattr(model, "predict_with_prior", None)
    if pair is None:
        return as_array(model.predict(x)), None
    probs, prior = pair(x)
    return as_array(probs), as_array(prior)


def _predictor(model: SegmentationModel, device: str, precision: str
               ) -> Callable[[np.ndarray], Pair]:
    """Host batch -> host float32 probabilities (and the margin's, see :func:`_call`). A torch
    model runs under inference mode and its precision, its batch copied to the device through
    pinned memory (asynchronously) on CUDA; a NumPy model is called as it is."""
    if not model.uses_torch:
        return lambda x: _call(model, x)
    import torch

    from pipeline.models.device import precision_context

    def predict(x: np.ndarray) -> Pair:
        t = torch.from_numpy(x)
        if device.startswith("cuda"):
            t = t.pin_memory().to(device, non_blocking=True)
        with torch.inference_mode(), precision_context(precision, device):
            return _call(model, t)

    return predict


def iter_block_slabs(
    model: SegmentationModel,
    info: RasterInfo,
    scaling: Scaling,
    grid: TileGrid,
    block: Block,
    batch_size: int = 8,
    device: str = "cpu",
    precision: str = "fp32",
    stats: BlockStats | None = None,
) -> Iterator[Slab]:
    """Segment one block core, one row of tiles at a time, yielding finished rows in order.

    Tiles come from the global grid, so the result is exactly that of a whole-raster run.
    Memory is one band of tiles (classes x tile x block width), not the whole block: after tile
    row ``i`` no later tile touches the rows above tile row ``i + 1``, so they are final. On
    CUDA the next band is read on a thread while the model runs on the current one.
    """
    stats = stats if stats is not None else BlockStats()
    if stats.class_counts is None:
        stats.class_counts = np.zeros(model.n_classes, dtype=np.int64)
    rows, cols = tiles_for_block(grid, block)
    t, s = grid.tile, grid.stride
    c0 = cols[0]
    read_w = cols[-1] + t - c0
    R0, R1 = block.row_off, block.row_off + block.height
    C0, C1 = block.col_off, block.col_off + block.width
    k = model.n_classes
    weights_np = blend_weights_2d(t, grid.overlap)
    predict = _predictor(model, device, precision)
    acc = np.zeros((k, t, block.width), dtype=np.float32)  # rows [base, base + t)
    prior_acc: np.ndarray | None = None  # the margin's probabilities, where they differ
    wsum = np.zeros((t, block.width), dtype=np.float32)

    def read(y: int) -> tuple[np.ndarray, np.ndarray, float]:
        tr = time.perf_counter()
        img, valid = read_window(info, scaling, y, c0, t, read_w)
        return img, valid, time.perf_counter() - tr

    # read-ahead only where the model does not run on the CPU: there torch already uses every
    # core, and a reading thread slows the forward pass more than it hides the read
    # (benchmarks/overhead.py: the model took 1.07-1.18x as long with it on 2 cores)
    ahead = device.startswith("cuda")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stego-read") as pool:
        pending = pool.submit(read, rows[0]) if ahead else None
        for i, base in enumerate(rows):
            img, valid, t_read = pending.result() if pending else read(base)
            stats.read_seconds += t_read
            if ahead and i + 1 < len(rows):
                pending = pool.submit(read, rows[i + 1])
            todo = [tc for tc in cols if valid[:, tc - c0 : tc - c0 + t].any()]
            stats.tiles += len(todo)
            for j in range(0, len(todo), batch_size):
                batch = todo[j : j + batch_size]
                x = np.stack([img[:, :, tc - c0 : tc - c0 + t] for tc in batch])
                tm = time.perf_counter()
                probs, prior = predict(x)
                stats.model_seconds += time.perf_counter() - tm
                probs *= weights_np
                if prior is not None:
                    prior *= weights_np
                    if prior_acc is None:
                        prior_acc = np.zeros_like(acc)
                for n, (tc, p) in enumerate(zip(batch, probs, strict=True)):
                    x0, x1 = max(tc, C0), min(tc + t, C1)
                    if x1 <= x0:
                        continue
                    src = slice(x0 - tc, x1 - tc)
                    dst = slice(x0 - C0, x1 - C0)
                    acc[:, :, dst] += p[:, :, src]
                    if prior is not None:
                        prior_acc[:, :, dst] += prior[n][:, :, src]
                    wsum[:, dst] += weights_np[:, src]
            last = i + 1 == len(rows)
            done_to = base + (t if last else s)  # rows [base, done_to) are final
            y0, y1 = max(base, R0), min(done_to, R1)
            if y1 > y0:
                band = slice(y0 - base, y1 - base)
                core_valid = valid[band, C0 - c0 : C1 - c0]
                slab = _finish(acc[:, band], wsum[band], core_valid, y0 - R0,
                               None if prior_acc is None else prior_acc[:, band])
                stats.valid_pixels += int(slab.valid.sum())
                stats.class_counts += np.bincount(slab.labels[slab.valid], minlength=k)[:k]
                yield slab
            if not last:
                for a in (acc,) if prior_acc is None else (acc, prior_acc):
                    a[:, : t - s] = a[:, s:]
                    a[:, t - s :] = 0
                wsum[: t - s] = wsum[s:]
                wsum[t - s :] = 0


def _finish(acc: np.ndarray, wsum: np.ndarray, valid: np.ndarray, row: int,
            prior: np.ndarray | None = None) -> Slab:
    """Argmax of blended scores, confidence (the winning probability) and margin (winning
    minus runner-up probability; of the blended ``prior`` probabilities when given: the
    model's before its dense CRF), both x 254, for finished rows; nodata stays 255."""
    labels = np.full(valid.shape, NODATA, dtype=np.uint8)
    confidence = np.full(valid.shape, NODATA, dtype=np.uint8)
    margin = np.full(valid.shape, NODATA, dtype=np.uint8)
    if valid.any():
        best = acc.argmax(axis=0).astype(np.uint8)
        top = np.take_along_axis(acc, best[None].astype(np.int64), axis=0)[0]
        norm = np.maximum(wsum, 1e-12)
        conf = np.where(wsum > 0, top / norm, 0.0)
        ranked = acc if prior is None else prior
        top2 = (np.partition(ranked, -2, axis=0)[-2:] if len(ranked) > 1
                else np.stack([np.zeros_like(top), ranked[0]]))
        gap = np.where(wsum > 0, (top2[1] - top2[0]) / norm, 0.0)
        labels[valid] = best[valid]
        for out, value in ((confidence, conf), (margin, gap)):
            out[valid] = np.clip(np.rint(value[valid] * CONFIDENCE_SCALE), 0,
                                 CONFIDENCE_SCALE).astype(np.uint8)
    return Slab(row, labels, confidence, valid.copy(), margin)


def block_stats(block: Block, grid: TileGrid, stats: BlockStats, seconds: float) -> dict:
    """The per-block statistics a run summarises (small and JSON-friendly)."""
    return {
        "key": block.key,
        "tiles": stats.tiles,
        "model_pixels": stats.tiles * grid.tile * grid.tile,
        "valid_pixels": stats.valid_pixels,
        "class_counts": [] if stats.class_counts is None else stats.class_counts.tolist(),
        "seconds": seconds,
        "read_seconds": stats.read_seconds,
        "model_seconds": stats.model_seconds,
    }


def segment_block(
    model: SegmentationModel,
    info: RasterInfo,
    scaling: Scaling,
    grid: TileGrid,
    block: Block,
    batch_size: int = 8,
    device: str = "cpu",
    precision: str = "fp32",
) -> BlockOutput:
    """Segment one block core exactly as a whole-raster run would (global tile grid)."""
    t0 = time.perf_counter()
    stats = BlockStats()
    labels = np.full((block.height, block.width), NODATA, dtype=np.uint8)
    confidence = np.full((block.height, block.width), NODATA, dtype=np.uint8)
    margin = np.full((block.height, block.width), NODATA, dtype=np.uint8)
    for slab in iter_block_slabs(model, info, scaling, grid, block, batch_size, device,
                                 precision, stats):
        rows = slice(slab.row, slab.row + slab.labels.shape[0])
        labels[rows], confidence[rows], margin[rows] = slab.labels, slab.confidence, slab.margin
    out_stats = block_stats(block, grid, stats, time.perf_counter() - t0)
    return BlockOutput(block, labels, confidence, out_stats, margin)
