"""The stages of a segment run, as plain functions the Prefect flow composes.

validate/plan -> infer blocks (Dask) -> finalize Zarr -> COG -> polygons -> run.json
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.errors import InputError
from pipeline.io.files import ensure_output_dir, input_checksum
from pipeline.io.raster import RasterInfo, Scaling, compute_scaling, open_raster_info
from pipeline.io.zarr_store import BlockWriter, block_rows_done, done_blocks, prepare_store
from pipeline.models.device import resolve_device, resolved_precision
from pipeline.models.store import load_model, model_hash, read_model_json
from pipeline.segment.inference import BlockStats, auto_batch_size, block_stats, iter_block_slabs
from pipeline.tiling import Block, TileGrid, compute_amplification, grid_for_raster, plan_blocks

OUTPUT_NAMES = {"cog": "labels.tif", "zarr": "labels.zarr", "polygons": "polygons.gpkg",
                "preview": "preview.png", "manifest": "run.json"}


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
    linear_probe: bool = False
    io_retries: int = 3
    retry_delay: float = 1.0
    precision: str = "fp32"
    compile: bool = False
    chunk: int = 512


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
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def output(self, kind: str) -> Path:
        """Final path of an output (``cog``, ``zarr``, ``polygons``, ``preview``, ``manifest``)."""
        if kind == "polygons":
            return Path(self.out_dir) / f"polygons.{self.config.vectorize.format}"
        return Path(self.out_dir) / OUTPUT_NAMES[kind]

    @property
    def class_names(self) -> list[str]:
        return list(self.model_meta["class_names"])

    @property
    def colors(self) -> list[tuple[int, int, int]]:
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
    meta = read_model_json(Path(model_dir))
    load_model(Path(model_dir))  # fail here, not in every worker, when the files are broken
    patch = int(meta.get("patch_size", 1))
    tile = config.tiling.tile_size
    if tile % patch:
        raise InputError("tiling.tile_size", f"{tile} is not a multiple of the model's patch "
                         f"size {patch}")
    if config.model.compile and meta.get("method") == "pixel-kmeans":
        raise InputError("model.compile", "a pixel-kmeans model has no backbone to compile")
    _check_out_dir(Path(out_dir), input_path)
    return info, meta, scaling


def plan_segment(
    input_path: str, model_dir: str, out_dir: str, config: RunConfig
) -> SegmentPlan:
    """Validate inputs and model, compute scaling once, and plan blocks."""
    t0 = time.perf_counter()
    info, meta, scaling = check_segment_inputs(input_path, model_dir, out_dir, config)
    notes = []
    if info.crs_wkt is None:
        msg = f"{input_path}: raster has no CRS; outputs will have none either"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    mhash = model_hash(Path(model_dir))
    tiling = config.tiling
    grid = grid_for_raster(tiling.tile_size, tiling.overlap, info.height, info.width,
                           tiling.block_size)
    blocks = plan_blocks(info.height, info.width, tiling.block_size)
    input_id = input_checksum(input_path)
    device = resolve_device(config.model.device)
    # only a backbone runs under autocast; "auto" resolves per machine, so the store records
    # what ran and a resume elsewhere never mixes bf16 and float32 blocks
    precision = (resolved_precision(config.model.precision, device)
                 if meta.get("backbone") else "fp32")
    ident = {
        "version": __version__,
        "input": input_id,
        "bands": info.bands,
        "scaling": scaling.to_dict(),
        "model": mhash,
        "config": config.input.model_dump(mode="json") | config.tiling.model_dump(mode="json")
        | {"confidence": config.output.confidence, "crf": config.model.crf,
           "probe": config.model.probe, "precision": precision},
    }
    fingerprint = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    plan = SegmentPlan(
        input_path=input_path, model_dir=str(model_dir), out_dir=str(out_dir), config=config,
        info=info, scaling=scaling, model_meta=meta, model_hash=mhash, fingerprint=fingerprint,
        grid=grid, blocks=blocks, device=device, precision=precision, warnings=notes,
        input_id=input_id,
    )
    plan.timings["validate"] = time.perf_counter() - t0
    return plan


def infer_and_write_block(block: Block, job: BlockJob) -> dict[str, Any]:
    """Worker task: segment one block from the file itself and write it to the store.

    Rows are written in whole chunk rows as they finish; an interrupted block (killed worker,
    retried I/O error) restarts from its first unwritten chunk row. Because the tile grid is
    global, the rest of a block segments exactly as the whole block would.
    """
    import torch

    from pipeline.segment.executor import cached_model

    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    model = cached_model(job.model_dir, job.model_hash, job.device, compile=job.compile)
    if job.crf is not None and hasattr(model, "crf"):
        model.crf = job.crf
    if hasattr(model, "use_linear_probe"):
        model.use_linear_probe = job.linear_probe
    batch = job.batch_size or auto_batch_size(model, job.grid.tile, job.device, job.precision)

    def attempt() -> dict[str, Any]:
        t0 = time.perf_counter()
        start = block_rows_done(Path(job.store), block)
        rest = replace(block, row_off=block.row_off + start, height=block.height - start)
        writer = BlockWriter(Path(job.store), block, start, job.chunk, job.confidence)
        stats = BlockStats(class_counts=np.zeros(model.n_classes, dtype=np.int64))
        if rest.height > 0:
            for slab in iter_block_slabs(model, job.info, job.scaling, job.grid, rest, batch,
                                         job.device, job.precision, stats):
                writer.add(slab.labels, slab.confidence)
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


def complete_store_matches(plan: SegmentPlan) -> bool:
    """Whether labels.zarr is already complete for exactly this run (killed after it)."""
    return receipt_holds({"stores": {str(plan.output("zarr")): plan.fingerprint}})


_STAGE_SECTIONS = {"write-cog": ("output",), "vectorize": ("vectorize",)}


def stage_cache_key(stage: str, plan: SegmentPlan) -> str:
    """Cache key of a stage: what its output depends on, never the run id.

    Input content (checksum), model hash and the output-relevant config (the run fingerprint),
    the block windows, the output directory and the stage's own settings.
    """
    cfg = plan.config.model_dump(mode="json")
    ident = {
        "stage": stage,
        "fingerprint": plan.fingerprint,
        "out_dir": str(Path(plan.out_dir).resolve()),
        "blocks": [(b.row_off, b.col_off, b.height, b.width) for b in plan.blocks],
        **{k: cfg[k] for k in _STAGE_SECTIONS.get(stage, ())},
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def output_receipt(plan: SegmentPlan, *kinds: str) -> dict[str, Any]:
    """What a stage left on disk: size and mtime of its files, the fingerprint of the store.

    A cached stage result is trusted only while its receipt still holds (the files were not
    deleted or replaced by another run since).
    """
    files: dict[str, list[int]] = {}
    stores: dict[str, str] = {}
    for kind in kinds:
        path = plan.output(kind)
        if kind == "zarr":
            stores[str(path)] = plan.fingerprint
        else:
            st = path.stat()
            files[str(path)] = [st.st_size, st.st_mtime_ns]
    return {"files": files, "stores": stores}


def receipt_holds(receipt: dict[str, Any] | None) -> bool:
    """Whether every file and store named in a receipt is still exactly as recorded."""
    import zarr

    if not receipt:
        return False
    for path, (size, mtime) in receipt.get("files", {}).items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            return False
    for path, fingerprint in receipt.get("stores", {}).items():
        try:
            attrs = zarr.open_group(path, mode="r").attrs
        except Exception:  # noqa: BLE001 - missing or unreadable: the receipt fails
            return False
        if attrs.get("status") != "complete" or attrs.get("fingerprint") != fingerprint:
            return False
    return True


def clean_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove temporary files left by a killed run (call while holding the output lock).

    The partial Zarr store is kept: it is what a resumed run continues from.
    """
    removed = []
    for p in Path(out_dir).glob(".*"):
        name = p.name
        if p.is_file() and (".tmp-" in name or name.endswith((".build.tif", ".cog.tif"))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def prepare_labels_store(plan: SegmentPlan, fresh: bool = False) -> tuple[Path, list[Block]]:
    """Create or reopen the partial store; return it and the blocks still to do."""
    store, resumed = prepare_store(
        plan.output("zarr"), height=plan.info.height, width=plan.info.width,
        chunk=plan.config.tiling.chunk_size, block_size=plan.config.tiling.block_size,
        transform=plan.info.affine, crs_wkt=plan.info.crs_wkt, class_names=plan.class_names,
        colors=plan.colors, fingerprint=plan.fingerprint, fresh=fresh,
    )
    done = done_blocks(store) if resumed else set()
    todo = [b for b in plan.blocks if (b.row, b.col) not in done]
    return store, todo


def block_job(plan: SegmentPlan, store: Path, torch_threads: int) -> BlockJob:
    """The per-block job description shipped to workers (no pixels, no model)."""
    return BlockJob(
        info=plan.info, scaling=plan.scaling, grid=plan.grid,
        model_dir=str(Path(plan.model_dir).resolve()), model_hash=plan.model_hash,
        device=plan.device, store=str(store),
        batch_size=0 if plan.config.tiling.batch_size == "auto" else plan.config.tiling.batch_size,
        confidence=plan.config.output.confidence, torch_threads=torch_threads,
        crf=plan.config.model.crf, linear_probe=plan.config.model.probe == "linear",
        io_retries=plan.config.dask.io_retries, retry_delay=plan.config.dask.retry_delay,
        precision=plan.precision, compile=plan.config.model.compile,
        chunk=plan.config.tiling.chunk_size,
    )


def metres_per_unit(info: RasterInfo) -> float | None:
    """Metres per CRS unit (per degree at the raster's centre latitude); None without CRS."""
    if info.crs_wkt is None:
        return None
    from pyproj import CRS

    crs = CRS.from_wkt(info.crs_wkt)
    if crs.is_geographic:
        lat = math.radians(info.affine.f + info.affine.e * info.height / 2)
        return 111_320.0 * max(math.cos(lat), 1e-6)
    return crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0


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


def class_summary(plan: SegmentPlan, hist: Any) -> dict[str, Any]:
    """Pixels, share of valid pixels and area per class, from the final labels' histogram."""
    valid = int(hist[: len(plan.class_names)].sum())
    px_area = pixel_area_m2(plan.info)
    classes = {}
    for i, name in enumerate(plan.class_names):
        n = int(hist[i])
        classes[name] = {"class_id": i, "pixels": n,
                         "share": n / valid if valid else 0.0,
                         "area_m2": n * px_area if px_area is not None else None}
    return {"valid_pixels": valid, "nodata_pixels": int(hist[255]), "classes": classes}


def summarize_blocks(plan: SegmentPlan, stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over the blocks computed in this run."""
    k = len(plan.class_names)
    counts = [0] * k
    for s in stats:
        counts = [a + b for a, b in zip(counts, s["class_counts"], strict=True)]
    return {
        "blocks_total": len(plan.blocks),
        "blocks_computed": len(stats),
        "blocks_resumed": len(plan.blocks) - len(stats),
        "tiles": sum(s["tiles"] for s in stats),
        "model_pixels": sum(s["model_pixels"] for s in stats),
        "valid_pixels_computed": sum(s["valid_pixels"] for s in stats),
        "class_pixels_computed": dict(zip(plan.class_names, counts, strict=True)),
        "model_seconds": sum(s["model_seconds"] for s in stats),
        "read_seconds": sum(s["read_seconds"] for s in stats),
        "compute_amplification": compute_amplification(
            plan.info.height, plan.info.width, plan.grid, plan.config.tiling.block_size
        ),
    }


def manifest(plan: SegmentPlan, status: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The run.json document."""
    meta = plan.model_meta
    return {
        "status": status,
        "pipeline_version": __version__,
        "input": {
            "path": plan.input_path, "width": plan.info.width, "height": plan.info.height,
            "bands": list(plan.info.bands), "dtype": plan.info.dtype, "crs": plan.info.crs_wkt,
            "transform": list(plan.info.transform), "identity": plan.input_id,
        },
        "scaling": plan.scaling.to_dict(),
        "model": {
            "dir": str(Path(plan.model_dir).resolve()), "hash": plan.model_hash,
            "method": meta["method"], "class_names": meta["class_names"],
            "colors": meta["colors"], "backbone": meta.get("backbone"),
            "weights": (meta.get("backbone") or {}).get("weights"),
        },
        "device": plan.device,
        "precision": plan.precision,
        "config": plan.config.model_dump(mode="json"),
        "fingerprint": plan.fingerprint,
        "outputs": {k: str(plan.output(k)) for k in OUTPUT_NAMES},
        "timings_s": plan.timings,
        "warnings": plan.warnings,
        "blocks": [asdict(b) for b in plan.blocks] if len(plan.blocks) <= 64 else len(plan.blocks),
        **extra,
    }
