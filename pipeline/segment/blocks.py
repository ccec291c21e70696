"""One block of a segment run on a Dask worker: the job it is given, the store prepared for
it, inference streamed into the Zarr store chunk row by chunk row, and retries of transient
I/O errors."""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo, Scaling
from pipeline.io.remote import absolute
from pipeline.io.zarr_store import prepare_store
from pipeline.io.zarr_writes import BlockWriter, block_rows_done, done_blocks, store_token
from pipeline.models.crf_refine import post_processed
from pipeline.segment.inference import BlockStats, auto_batch_size, block_stats, iter_block_slabs
from pipeline.segment.plan import SegmentPlan
from pipeline.tiling import Block, TileGrid


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to segment and write one block (small, picklable)."""

    info: RasterInfo
    scaling: Scaling
    grid: TileGrid
    model_dir: str
    model_hash: str
    device: str
    batch_size: int
    store: str
    confidence: bool
    torch_threads: int
    crf: bool | None = None
    refine: str = "none"
    refine_pixels: int = 64
    linear_probe: bool = False
    flip: bool | None = None  # STEGO: mirror averaging (None: the model's own)
    io_retries: int = 3
    retry_delay: float = 1.0
    precision: str = "fp32"
    compile: bool = False
    chunk: int = 512
    run_token: str | None = None  # the store's run when the job was made (stale-write fence)


def infer_and_write_block(block: Block, job: BlockJob) -> dict[str, Any]:
    """Worker task: segment one block from the file itself and write it to the store.

    Rows are written in whole chunk rows as they finish; an interrupted block (killed worker,
    retried I/O error) restarts from its first unwritten chunk row. Because the tile grid is
    global, the rest of a block segments exactly as the whole block would.
    """
    from pipeline.segment.executor import cached_model

    model = cached_model(job.model_dir, job.model_hash, job.device, compile=job.compile)
    if job.torch_threads and model.uses_torch:  # a NumPy model's run never imports torch
        import torch

        torch.set_num_threads(job.torch_threads)
    if job.flip is not None and hasattr(model, "flip"):
        model.flip = job.flip
    if hasattr(model, "use_linear_probe"):
        model.use_linear_probe = job.linear_probe
    model = post_processed(model, job.refine, job.refine_pixels, job.crf)
    batch = job.batch_size or auto_batch_size(model, job.grid.tile, job.device, job.precision)

    def attempt() -> dict[str, Any]:
        t0 = time.perf_counter()
        start = block_rows_done(job.store, block)
        rest = replace(block, row_off=block.row_off + start, height=block.height - start)
        writer = BlockWriter(job.store, block, start, job.chunk, job.confidence,
                             token=job.run_token)
        stats = BlockStats(class_counts=np.zeros(model.n_classes, dtype=np.int64))
        if rest.height > 0:
            for slab in iter_block_slabs(model, job.info, job.scaling, job.grid, rest, batch,
                                         job.device, job.precision, stats):
                writer.add(slab.labels, slab.confidence, slab.margin)
        writer.finish()
        out = block_stats(rest, job.grid, stats, time.perf_counter() - t0)
        return {**out, "key": block.key, "resumed_rows": start}

    return retry_transient(attempt, job.io_retries, job.retry_delay)


_PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def retry_transient(fn: Any, retries: int, delay: float) -> Any:
    """Call ``fn``; retry I/O errors (OSError) with exponential backoff.

    Bad input and a full disk (ENOSPC, EDQUOT) are not transient: they are raised at once.
    """
    for n in range(retries + 1):
        try:
            result = fn()
            if n:
                result = {**result, "io_retries": n}
            return result
        except InputError:
            raise
        except OSError as exc:
            if n == retries or exc.errno in _PERMANENT_ERRNOS:
                raise
            time.sleep(delay * 2**n)
    raise AssertionError("unreachable")


def prepare_labels_store(plan: SegmentPlan, fresh: bool = False) -> tuple[Path, list[Block]]:
    """Create or reopen the partial store; return it and the blocks still to do."""
    store, resumed = prepare_store(
        plan.zarr_location(), height=plan.info.height, width=plan.info.width,
        chunk=plan.config.tiling.chunk_size, block_size=plan.config.tiling.block_size,
        transform=plan.info.affine, crs_wkt=plan.info.crs_wkt, class_names=plan.class_names,
        colors=plan.colors, fingerprint=plan.fingerprint, resume_key=plan.resume_key,
        fresh=fresh,
        zarr_format=plan.config.output.zarr_format,
    )
    done = done_blocks(store) if resumed else set()
    todo = [b for b in plan.blocks if (b.row, b.col) not in done]
    return store, todo


def block_job(plan: SegmentPlan, store: Path | str, torch_threads: int) -> BlockJob:
    """The per-block job description shipped to workers (no pixels, no model); local paths
    (input, model, store) are absolute."""
    return BlockJob(
        info=replace(plan.info, path=absolute(plan.info.path)), scaling=plan.scaling,
        grid=plan.grid, model_dir=absolute(plan.model_dir), model_hash=plan.model_hash,
        device=plan.device, store=absolute(store),
        batch_size=0 if plan.config.tiling.batch_size == "auto" else plan.config.tiling.batch_size,
        confidence=plan.config.output.confidence, torch_threads=torch_threads,
        crf=plan.config.model.crf, linear_probe=plan.config.model.probe == "linear",
        flip=plan.config.model.flip,
        refine=plan.config.model.refine, refine_pixels=plan.config.model.refine_pixels,
        io_retries=plan.config.dask.io_retries, retry_delay=plan.config.dask.retry_delay,
        precision=plan.precision, compile=plan.config.model.compile,
        chunk=plan.config.tiling.chunk_size, run_token=store_token(store),
    )
