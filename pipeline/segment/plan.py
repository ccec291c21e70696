"""The stages of a segment run, as plain functions the Prefect flow composes.

validate/plan -> infer blocks (Dask) -> finalize Zarr -> COG -> polygons -> run.json
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affine import Affine

from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.io.files import ensure_output_dir, input_checksum
from pipeline.io.raster import (
    RasterInfo,
    Scaling,
    compute_scaling,
    metres_per_unit,
    open_raster_info,
)
from pipeline.io.zarr_store import unfinished_block_size
from pipeline.models.store import (
    load_model,
    local_model_dir,
    model_hash,
    read_model_json,
    uses_torch,
)
from pipeline.segment.executor import check_scheduler, cluster_threads
from pipeline.tiling import (
    Block,
    TileGrid,
    auto_block_size,
    compute_amplification,
    grid_for_raster,
    plan_blocks,
    snap_to_patch,
)

OUTPUT_NAMES = {"cog": "labels.tif", "zarr": "labels.zarr", "polygons": "polygons.gpkg",
                "preview": "preview.png", "manifest": "run.json",
                "cog_aux": "labels.tif.aux.xml"}  # GDAL's category names and attribute table


@dataclass
class SegmentPlan:
    """A validated run: inputs, model identity, output paths and the block plan."""

    input_path: str
    model_dir: str
    out_dir: str
    config: RunConfig
    info: RasterInfo
    scaling: Scaling
    model_meta: dict[str, Any]
    model_hash: str
    fingerprint: str
    grid: TileGrid
    blocks: list[Block]
    device: str
    precision: str = "fp32"  # as it runs: "bf16" or "fp32" (model.precision resolved)
    input_id: dict[str, Any] = field(default_factory=dict)
    parallelism: dict[str, Any] = field(default_factory=dict)  # run.json's "parallelism"
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # an object-store URL the Zarr store is written to by the workers (``segment --out URL``;
    # the other outputs are made in ``out_dir``, a local staging folder, then published)
    store_root: str | None = None
    # the run's identity with tiling.block_size as asked (``auto`` stays ``auto``): a rerun
    # on a cluster of another size finds its unfinished store by it and keeps that edge
    resume_key: str = ""

    def zarr_location(self) -> Path | str:
        """Where labels.zarr goes: ``out_dir``, or the object-store URL of the run."""
        return zarr_location(self.out_dir, self.store_root)

    def output(self, kind: str) -> Path:
        """Final path of an output (``cog``, ``zarr``, ``polygons``, ``preview``, ``manifest``)."""
        if kind == "polygons":
            return Path(self.out_dir) / f"polygons.{self.config.vectorize.format}"
        return Path(self.out_dir) / OUTPUT_NAMES[kind]

    @property
    def class_names(self) -> list[str]:
        """The model's class names, one per label value."""
        return list(self.model_meta["class_names"])

    @property
    def colors(self) -> list[tuple[int, int, int]]:
        """The model's class colours (RGB), one per label value."""
        return [tuple(c) for c in self.model_meta["colors"]]


def _check_out_dir(out_dir: Path, input_path: str) -> None:
    out = out_dir.resolve()
    if os.path.exists(input_path) and Path(input_path).resolve() in (out, *out.parents):
        raise InputError(out_dir, "output directory must not be the input file or inside it")
    ensure_output_dir(out_dir)
    for name in OUTPUT_NAMES.values():
        if os.path.exists(input_path) and (out / name).resolve() == Path(input_path).resolve():
            raise InputError(input_path, f"input would be overwritten by output {name}")


def check_segment_inputs(
    input_path: str, model_dir: str, out_dir: str, config: RunConfig
) -> tuple[RasterInfo, dict[str, Any], Scaling]:
    """Checks of input, model and output directory, and the scene's scaling (computed once).

    One-line InputError on problems, before any output is touched.
    """
    info = open_raster_info(input_path, config.input.bands)
    scaling = compute_scaling(info, config.input.percentiles)
    local = local_model_dir(model_dir)  # an object-store model is fetched (and checked) once
    meta = read_model_json(local)
    load_model(local)  # fail here, not in every worker, when the files are broken
    if config.model.compile and not meta.get("backbone"):
        raise InputError("model.compile", f"a {meta.get('method')} model has no backbone to "
                         "compile")
    fitted_bands = (meta.get("params") or {}).get("input_bands")
    if fitted_bands and tuple(fitted_bands) != tuple(info.bands):
        raise InputError(input_path, f"the model's index was fitted on bands "
                         f"{','.join(map(str, fitted_bands))}; segment with --bands "
                         f"{','.join(map(str, fitted_bands))}")
    check_scheduler(config.dask)
    _check_out_dir(Path(out_dir), input_path)
    return info, meta, scaling


def plan_segment(
    input_path: str, model_dir: str, out_dir: str, config: RunConfig,
    count_threads: bool = True, store_root: str | None = None, resume: bool = True,
) -> SegmentPlan:
    """Validate inputs and model, compute scaling once, and plan blocks.

    ``tiling.block_size: auto`` is resolved here, from the cluster's worker threads (a short
    connection to ``dask.scheduler_address``), and the plan's config holds the edge it chose:
    the fingerprint, the store and run.json all see that number. With ``resume`` (no
    ``--fresh``), an unfinished store of the same run planned with ``auto`` on a cluster of
    another size keeps its edge, so the rerun resumes it (a note says so; the labels do not
    depend on the edge). ``store_root``: the object-store URL the Zarr store goes to, when it
    is not ``out_dir``. ``count_threads=False`` skips counting a pinned block size's threads
    (run.json's ``parallelism`` then has none).
    """
    t0 = time.perf_counter()
    info, meta, scaling = check_segment_inputs(input_path, model_dir, out_dir, config)
    notes = []
    if info.crs_wkt is None:
        msg = f"{input_path}: raster has no CRS; outputs will have none either"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    mhash = model_hash(local_model_dir(model_dir))
    patch = int(meta.get("patch_size", 1))
    tile, overlap = snap_to_patch(config.tiling.tile_size, config.tiling.overlap, patch)
    if (tile, overlap) != (config.tiling.tile_size, config.tiling.overlap):
        notes.append(f"tiling: tile {config.tiling.tile_size} / overlap {config.tiling.overlap} "
                     f"snapped to {tile} / {overlap}, multiples of the model's patch {patch}")
        config = config.model_copy(deep=True)
        config.tiling.tile_size, config.tiling.overlap = tile, overlap
    if None in (config.model.refine, config.model.refine_pixels, config.model.crf):
        params = meta.get("params") or {}  # null: the model's own post-processing
        config = config.model_copy(deep=True)
        if config.model.refine is None:
            config.model.refine = params.get("refine", "none")
        if config.model.refine_pixels is None:
            config.model.refine_pixels = int(params.get("refine_pixels", 64))
        if config.model.crf is None:
            config.model.crf = bool(params.get("crf", False))
    input_id = input_checksum(input_path)
    device, precision = _device_and_precision(meta, config, notes)
    resume_key = _identity_hash(input_id, info, scaling, mhash, config, precision)
    config, parallelism = _block_size(config, info, notes, count_threads)
    if resume and parallelism["block_size_requested"] == "auto":
        kept = unfinished_block_size(zarr_location(out_dir, store_root), resume_key)
        if kept is not None and kept != config.tiling.block_size:
            notes.append(f"tiling.block_size auto: {kept}, the edge of the unfinished run this "
                         f"one resumes (this cluster alone would make "
                         f"{config.tiling.block_size}; --fresh starts over with it)")
            config.tiling.block_size = parallelism["block_size"] = kept
    tiling = config.tiling
    grid = grid_for_raster(tiling.tile_size, tiling.overlap, info.height, info.width,
                           tiling.block_size)
    blocks = plan_blocks(info.height, info.width, tiling.block_size)
    parallelism["blocks"] = len(blocks)
    threads = parallelism["worker_threads"]
    parallelism["blocks_per_thread"] = round(len(blocks) / threads, 3) if threads else None
    parallelism["compute_amplification"] = compute_amplification(
        info.height, info.width, grid, tiling.block_size)
    if parallelism["block_size_requested"] != "auto" and threads and len(blocks) < threads:
        notes.append(f"tiling.block_size {tiling.block_size} makes {len(blocks)} block(s) for "
                     f"{threads} worker threads: {threads - len(blocks)} idle; "
                     "tiling.block_size: auto splits the scene for the cluster")
    fingerprint = _identity_hash(input_id, info, scaling, mhash, config, precision)
    plan = SegmentPlan(
        input_path=input_path, model_dir=str(model_dir), out_dir=str(out_dir), config=config,
        info=info, scaling=scaling, model_meta=meta, model_hash=mhash, fingerprint=fingerprint,
        grid=grid, blocks=blocks, device=device, precision=precision, warnings=notes,
        input_id=input_id, parallelism=parallelism, store_root=store_root,
        resume_key=resume_key,
    )
    plan.timings["validate"] = time.perf_counter() - t0
    return plan


def zarr_location(out_dir: str, store_root: str | None) -> Path | str:
    """Where a run's labels.zarr goes: in ``out_dir``, or under ``store_root``, the
    object-store URL the workers write it to."""
    if store_root:
        return f"{store_root.rstrip('/')}/{OUTPUT_NAMES['zarr']}"
    return Path(out_dir) / OUTPUT_NAMES["zarr"]


def _identity_hash(input_id: dict[str, Any], info: RasterInfo, scaling: Scaling, mhash: str,
                   config: RunConfig, precision: str) -> str:
    """What the labels of a run depend on, hashed: the resume fingerprint (with the resolved
    block edge), or the resume key (with ``tiling.block_size`` as asked)."""
    ident = {
        "version": __version__,
        "input": input_id,
        "bands": info.bands,
        "scaling": scaling.to_dict(),
        "model": mhash,
        "config": config.input.model_dump(mode="json") | config.tiling.model_dump(mode="json")
        | {"confidence": config.output.confidence, "zarr_format": config.output.zarr_format,
           "crf": config.model.crf, "flip": config.model.flip, "refine": config.model.refine,
           "refine_pixels": config.model.refine_pixels,
           "probe": config.model.probe, "precision": precision},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _block_size(config: RunConfig, info: RasterInfo, notes: list[str], count_threads: bool
                ) -> tuple[RunConfig, dict[str, Any]]:
    """The config with ``tiling.block_size`` resolved (``auto``: from the cluster's threads)
    and the start of run.json's ``parallelism``: the edge, as asked and as resolved, and the
    worker threads it was planned for."""
    requested = config.tiling.block_size
    auto = requested == "auto"
    threads = cluster_threads(config.dask) if auto or count_threads else None
    if auto:
        t = config.tiling
        size = auto_block_size(info.height, info.width, t.chunk_size, t.tile_size - t.overlap,
                               threads or 1)
        if threads == 0:
            notes.append(f"tiling.block_size auto: the scheduler had no workers when the run "
                         f"was planned; {size} as for one thread (pin tiling.block_size for "
                         "adaptive clusters)")
        config = config.model_copy(deep=True)
        config.tiling.block_size = size
    return config, {
        "block_size": config.tiling.block_size, "block_size_requested": requested,
        "worker_threads": threads,
        "threads_of": None if threads is None else
        ("scheduler" if config.dask.scheduler_address else "local cluster"),
    }


def _device_and_precision(meta: dict[str, Any], config: RunConfig, notes: list[str]
                          ) -> tuple[str, str]:
    """Where the model runs and in which precision. NumPy methods run on the CPU in float32
    without importing torch (a note says so when ``model.device`` asked for CUDA). Only a
    backbone runs under autocast; "auto" resolves per machine, so the store records what ran
    and a resume elsewhere never mixes bf16 and float32 blocks."""
    if not uses_torch(meta["method"]):
        if config.model.device.startswith("cuda"):
            notes.append(f"model.device {config.model.device}: a {meta['method']} model runs "
                         "on the CPU (NumPy)")
        return "cpu", "fp32"
    from pipeline.models.device import resolve_device, resolved_precision

    device = resolve_device(config.model.device)
    precision = (resolved_precision(config.model.precision, device)
                 if meta.get("backbone") else "fp32")
    return device, precision


def pixel_area_m2(info: RasterInfo) -> float | None:
    """Ground area of one pixel in m² (at the centre for geographic CRSs); None without CRS."""
    unit = metres_per_unit(info)
    if unit is None:
        return None
    t: Affine = info.affine
    return abs(t.a * t.e - t.b * t.d) * unit * unit


def simplify_tolerance_crs(plan: SegmentPlan) -> float:
    """``vectorize.simplify_tolerance`` (metres) in CRS units: degrees for geographic CRSs."""
    tol = plan.config.vectorize.simplify_tolerance
    unit = metres_per_unit(plan.info)
    return tol / unit if tol and unit else tol


def min_region_pixels(plan: SegmentPlan) -> int:
    """Sieve threshold in pixels (from ``min_area_m2`` when set and the CRS is metric)."""
    vec = plan.config.vectorize
    if vec.min_area_m2 is None:
        return vec.min_pixels
    px_area = pixel_area_m2(plan.info)
    if px_area is None:
        raise InputError("vectorize.min_area_m2", "raster has no CRS; use vectorize.min_pixels")
    return max(0, math.ceil(vec.min_area_m2 / px_area))


