"""The driver: :func:`vectorize_labels` maps the blocks, writes their final polygons as they
come, then merges the seam pieces and writes them last."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine

from pipeline.vectorize.blocks import BlockResult, _Clock, _finish, block_tasks, process_block
from pipeline.vectorize.measure import make_features
from pipeline.vectorize.seams import merge_seam_pieces
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
    # WKB), merge (seam pieces), write; block stages summed over blocks (CPU time, not wall)
    timings: dict[str, float] = field(default_factory=dict)


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
) -> VectorizeStats:
    """Vectorize a (possibly huge) uint8 label raster into one polygon layer at out_path.

    ``labels`` is any 2-D array-like sliceable as ``labels[r0:r1, c0:c1]`` (numpy, zarr); it is
    read one block (plus halo) at a time. Blocks are processed by
    ``map_fn(functools.partial(process_block, labels), tasks)``, which must return an iterable of
    :class:`BlockResult` in any order (e.g. for Dask: ``lambda fn, xs: (f.result() for f in
    as_completed(client.map(fn, xs)))``). Every 4-connected region becomes exactly one polygon.
    ``simplify_tolerance`` is in CRS units. The file appears atomically at out_path (written to
    a hidden temporary sibling first); on failure nothing is left behind.
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
    timings: dict[str, float] = {}
    try:
        results = map_fn(partial(process_block, labels), tasks)
        seam_geoms, seam_classes, segments = _write_finals(writer, results, timings)
        clock = _Clock()
        merged, merged_classes, n_groups = merge_seam_pieces(seam_geoms, seam_classes, segments)
        clock.lap("merge")
        finished = _finish(merged, tuple(transform)[:6], simplify_tolerance)
        features = make_features(finished, merged_classes, crs_wkt)
        clock.lap("features")
        writer.add(features)
        writer.flush()
        _commit(tmp, out_path)
        clock.lap("write")
        for name, seconds in clock.seconds.items():
            timings[name] = timings.get(name, 0.0) + seconds
    except BaseException:
        _discard(tmp)
        raise
    stats = VectorizeStats(
        polygons=writer.written, blocks=len(tasks), seam_groups_merged=n_groups,
        pixels=height * width, seconds=time.perf_counter() - start, timings=timings,
    )
    log.info("vectorized %s: %s", out_path, stats)
    return stats


def _shape(labels: Any) -> tuple[int, int]:
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(f"labels must be 2-D (height, width), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _write_finals(
    writer: _LayerWriter, results: Iterable[BlockResult], timings: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write every block's final polygons; collect the seam pieces and their seam segments.

    Adds the blocks' stage times and the time spent writing to ``timings``.
    """
    seam_wkb: list[bytes] = []
    seam_classes: list[np.ndarray] = [np.empty(0, np.uint8)]
    segments: list[np.ndarray] = [np.empty((0, 5), np.int64)]
    for result in results:
        for name, seconds in getattr(result, "timings", {}).items():
            timings[name] = timings.get(name, 0.0) + seconds
        clock = _Clock()
        writer.add(result.final)
        clock.lap("write")
        timings["write"] = timings.get("write", 0.0) + clock.seconds["write"]
        seg = np.array(result.seam_segments, dtype=np.int64).reshape(-1, 5)
        seg[:, 0] += len(seam_wkb)
        segments.append(seg)
        seam_wkb.extend(result.seam_wkb)
        seam_classes.append(np.asarray(result.seam_class, dtype=np.uint8))
    geoms = shapely.from_wkb(np.array(seam_wkb, dtype=object)) if seam_wkb else np.empty(0, object)
    return geoms, np.concatenate(seam_classes), np.concatenate(segments)
