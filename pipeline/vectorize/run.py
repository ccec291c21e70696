"""The driver: :func:`vectorize_labels` maps the blocks and streams their final polygons to the
writer as they come, with each group of seam pieces merged and written as soon as the blocks
around it are done."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rasterio.crs import CRS
from rasterio.transform import Affine

from pipeline.vectorize.blocks import BlockResult, _Clock, block_tasks, process_block
from pipeline.vectorize.measure import Features
from pipeline.vectorize.pool import SeamPool
from pipeline.vectorize.writer import _commit, _discard, _LayerWriter, _temp_path

__all__ = ["VectorizeStats", "vectorize_labels"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VectorizeStats:
    """Summary of one :func:`vectorize_labels` run."""

    polygons: int  # features written
    blocks: int
    seam_groups_merged: int  # groups of >1 seam pieces unioned
    pixels: int  # raster pixels covered (width*height)
    seconds: float
    # seconds per stage: read, sieve, polygonize, features (seam split, CRS transform, measures,
    # WKB), merge (seam pieces, incl. their features), write; block stages summed over blocks
    # (CPU time, not wall)
    timings: dict[str, float] = field(default_factory=dict)
    peak_seam_pieces: int = 0  # most seam pieces held at once, waiting for their neighbours


def vectorize_labels(
    labels: Any,
    *,
    transform: Affine,
    crs: CRS | None,
    class_names: Sequence[str],
    out_path: Path,
    block_size: int = 2048,
    min_region_pixels: int = 0,
    simplify_tolerance: float = 0.0,
    layer: str = "polygons",
    driver: str = "GPKG",
    map_fn: Callable[..., Iterable[BlockResult]] = map,
    before_commit: Callable[[Path], Any] | None = None,
) -> VectorizeStats:
    """Vectorize a (possibly huge) uint8 label raster into one polygon layer at out_path.

    ``labels`` is any 2-D array-like sliceable as ``labels[r0:r1, c0:c1]`` (numpy, zarr); it is
    read one block (plus halo) at a time. Blocks are processed by
    ``map_fn(functools.partial(process_block, labels), tasks)``, which must return an iterable of
    :class:`BlockResult` in any order (e.g. for Dask: ``lambda fn, xs: (f.result() for f in
    as_completed(client.map(fn, xs)))``). Every 4-connected region becomes exactly one polygon.
    ``simplify_tolerance`` is in CRS units. The file appears atomically at out_path (written to
    a hidden temporary sibling first); on failure nothing is left behind. ``before_commit``
    is called with the complete temporary file just before it is renamed into place (e.g. to
    embed a style: a kill then never leaves the final file mid-transaction).
    """
    start = time.perf_counter()
    height, width = _shape(labels)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if simplify_tolerance < 0:
        raise ValueError(f"simplify_tolerance must be >= 0, got {simplify_tolerance}")
    crs_wkt = CRS.from_user_input(crs).to_wkt() if crs is not None else None
    tasks = block_tasks(
        height, width, block_size=block_size, min_pixels=min_region_pixels,
        transform=transform, simplify_tolerance=simplify_tolerance, crs_wkt=crs_wkt,
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(out_path)
    _discard(tmp)
    writer = _LayerWriter(tmp, layer=layer, driver=driver, crs_wkt=crs_wkt, class_names=class_names)
    grid = (-(-height // block_size), -(-width // block_size))
    pool = SeamPool(grid, block_size, tuple(transform)[:6], simplify_tolerance, crs_wkt)
    timings: dict[str, float] = {}
    try:
        results = map_fn(partial(process_block, labels), tasks)
        clock = _Clock()
        writer.write(_stream(results, pool, grid[1], timings))
        clock.lap("write")
        if before_commit is not None:
            before_commit(tmp)
        _commit(tmp, out_path)
    except BaseException:
        _discard(tmp)
        raise
    # the stream's own time (doing or waiting for blocks, merging) was spent inside the write
    timings["write"] = max(clock.seconds["write"] - timings.pop("produce", 0.0), 0.0)
    stats = VectorizeStats(
        polygons=writer.written, blocks=len(tasks), seam_groups_merged=pool.groups_merged,
        pixels=height * width, seconds=time.perf_counter() - start, timings=timings,
        peak_seam_pieces=pool.peak_pieces,
    )
    log.info("vectorized %s: %s", out_path, stats)
    return stats


def _shape(labels: Any) -> tuple[int, int]:
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(f"labels must be 2-D (height, width), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _stream(
    results: Iterable[BlockResult], pool: SeamPool, blocks_per_row: int,
    timings: dict[str, float],
) -> Iterator[Features]:
    """The features to write, as they become final: each block's own polygons as the block
    arrives, then the seam groups completed by it (checked once per row of blocks' worth of
    results), and the remaining groups at the end.

    Adds the blocks' stage times and the merging time to ``timings``, and under "produce" the
    wall time spent in here (between the writer's requests), the rest of the writer's time
    being GDAL's.
    """
    arrived = 0
    since = time.perf_counter()

    def produced() -> None:
        timings["produce"] = timings.get("produce", 0.0) + time.perf_counter() - since

    for result in results:
        for name, seconds in result.timings.items():
            timings[name] = timings.get(name, 0.0) + seconds
        produced()
        yield result.final
        since = time.perf_counter()
        pool.add(result)
        arrived += 1
        if arrived % blocks_per_row == 0:
            features = _merged(pool, False, timings)
            produced()
            yield features
            since = time.perf_counter()
    features = _merged(pool, True, timings)
    produced()
    yield features


def _merged(pool: SeamPool, everything: bool, timings: dict[str, float]) -> Features:
    clock = _Clock()
    features = pool.take_complete(everything)
    clock.lap("merge")
    timings["merge"] = timings.get("merge", 0.0) + clock.seconds["merge"]
    return features
