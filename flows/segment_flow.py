"""The `segment` flow: validate -> infer blocks -> finalize Zarr -> COG -> polygons -> manifest."""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task

from flows.cli_errors import was_interrupted
from flows.locations import staging_dir
from flows.run_lease import flow_output_lock
from pipeline.config import RunConfig, blocks_follow_the_cluster, build_config
from pipeline.io.cog import cog_plan, write_cog
from pipeline.io.files import write_json_atomic
from pipeline.io.geoparquet import write_geoparquet
from pipeline.io.lock import RunLock, check_held
from pipeline.io.remote import check_writable, is_remote, publish_dir
from pipeline.io.remote_lock import remote_lease
from pipeline.io.zarr_store import finalize_store, open_labels
from pipeline.publish.gis_styles import add_gpkg_layer_style, polygon_qml, write_styles
from pipeline.publish.preview import class_histogram, write_preview
from pipeline.publish.stac import (
    acquisition_datetime,
    build_stac_item,
    stac_item_id,
    write_stac_item,
)
from pipeline.segment.blocks import block_job, infer_and_write_block, prepare_labels_store
from pipeline.segment.executor import (
    dask_client,
    map_unordered,
    task_resources,
    torch_threads_per_worker,
)
from pipeline.segment.plan import (
    OUTPUT_NAMES,
    SegmentPlan,
    min_region_pixels,
    plan_segment,
    simplify_tolerance_crs,
)
from pipeline.segment.progress import Progress
from pipeline.segment.resume import (
    clean_stale_temporaries,
    complete_store_matches,
    output_receipt,
    receipt_holds,
    stage_cache_key,
)
from pipeline.segment.summary import class_summary, manifest, summarize_blocks
from pipeline.segment.vectorize_blocks import VECTORIZE_BLOCK, block_source
from pipeline.vectorize import vectorize_labels


@task(name="validate")
def validate(input_path: str, model_dir: str, out_dir: str, config: RunConfig,
             store_root: str | None = None, resume: bool = True) -> SegmentPlan:
    """Open the input and the model, check outputs can be written, plan blocks (``resume``:
    an unfinished run's block edge is kept, see :func:`plan_segment`)."""
    return plan_segment(input_path, model_dir, out_dir, config, store_root=store_root,
                        resume=resume)


def _stage_key(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect cache key of a stage task: content and settings, not the run id."""
    return stage_cache_key(context.task.name, parameters["plan"])


# Expensive stages are cached by Prefect (JSON results, no pickles) under a key made of the
# input's checksum, the model hash, the config, the block windows and the output directory.
# A cached result is used only while its receipt holds (see run_stage).
CACHED = {"cache_key_fn": _stage_key, "persist_result": True, "result_serializer": "json"}


@task(name="infer-blocks", **CACHED)
def infer_blocks(plan: SegmentPlan, fresh: bool, progress: str) -> dict[str, Any]:
    """Segment every block not already done on Dask workers; each writes its own region."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    if not fresh and complete_store_matches(plan):
        logger.info("labels.zarr is already complete for this input, model and config")
        summary = summarize_blocks(plan, [])
        summary["seconds"] = time.perf_counter() - t0
        summary["receipt"] = output_receipt(plan, "zarr")
        return summary
    store, todo = prepare_labels_store(plan, fresh=fresh)
    if len(todo) < len(plan.blocks):
        logger.info("resuming: %d of %d blocks already done", len(plan.blocks) - len(todo),
                    len(plan.blocks))
    bar = Progress(len(todo), "blocks", mode=progress)

    def report(stats: dict[str, Any]) -> None:
        bar.update(1, stats["valid_pixels"] / 1e6)
        check_held(plan.out_dir)  # another run took the directory over: stop the blocks

    stats: list[dict[str, Any]] = []
    if todo:
        resources = task_resources(plan.config.dask, plan.device)
        with dask_client(plan.config.dask, resources) as client:
            logger.info("Dask dashboard: %s", client.dashboard_link)
            job = block_job(plan, store, torch_threads_per_worker(plan.config.dask))
            stats = map_unordered(client, infer_and_write_block, todo, on_result=report,
                                  resources=resources, job=job)
    summary = summarize_blocks(plan, stats)
    finalize_store(store, plan.zarr_location(),
                   {"model_hash": plan.model_hash, "input": plan.input_path})
    summary["seconds"] = time.perf_counter() - t0
    summary["receipt"] = output_receipt(plan, "zarr")
    return summary


@task(name="write-cog", **CACHED)
def write_labels_cog(plan: SegmentPlan) -> dict[str, Any]:
    """The Zarr labels as a paletted Cloud-Optimized GeoTIFF and its .aux.xml: its blocks are
    read, reduced to overviews and compressed where the vectorize blocks run (a scheduler's
    workers, else here); this process only writes the file from their tiles."""
    t0 = time.perf_counter()
    tile, out_cfg = max(128, plan.config.tiling.chunk_size), plan.config.output
    histogram = np.zeros(256, dtype=np.int64)
    with block_source(plan.config.dask, plan.zarr_location(), plan.info.height,
                      plan.info.width, name="cog-block") as source:  # workers read the store
        out = write_cog(
            source.labels, plan.output("cog"), transform=plan.info.affine,
            crs_wkt=plan.info.crs_wkt, class_names=plan.class_names, colors=plan.colors,
            tile=tile, compress=out_cfg.compress, resampling=out_cfg.overview_resampling,
            map_fn=source.map_fn, histogram=histogram,
        )
    blocks = len(cog_plan(plan.info.height, plan.info.width, tile).blocks)
    return {"path": str(out), "blocks": blocks, **source.report(),
            "histogram": histogram.tolist(),  # for the summary: the labels are not read again
            "seconds": time.perf_counter() - t0,
            "receipt": output_receipt(plan, "cog", "cog_aux")}


@task(name="vectorize", **CACHED)
def vectorize(plan: SegmentPlan) -> dict[str, Any]:
    """Sieve, polygonize block by block, merge across seams, write the GeoPackage."""
    t0 = time.perf_counter()
    from rasterio.crs import CRS

    vec = plan.config.vectorize
    crs = CRS.from_wkt(plan.info.crs_wkt) if plan.info.crs_wkt else None
    final = plan.output("polygons")
    # GeoParquet is converted from a GeoPackage (GDAL here has no Parquet driver)
    direct = final if vec.format != "parquet" else final.with_name(f".{final.stem}.gpkg")
    driver = {"gpkg": "GPKG", "fgb": "FlatGeobuf", "parquet": "GPKG"}[vec.format]

    def embed_style(tmp: Path) -> None:
        add_gpkg_layer_style(tmp, vec.layer, polygon_qml(plan.class_names, plan.colors))
    with block_source(plan.config.dask, plan.zarr_location(), plan.info.height,
                      plan.info.width) as source:  # on a scheduler's workers: they read it
        stats = vectorize_labels(
            source.labels, transform=plan.info.affine, crs=crs,
            class_names=plan.class_names, out_path=direct, driver=driver,
            # vectorize's own 2048² blocks, not the inference blocks (10240²): memory stays
            # flat and the polygons do not depend on the block size
            block_size=VECTORIZE_BLOCK, map_fn=source.map_fn,
            min_region_pixels=min_region_pixels(plan),
            simplify_tolerance=simplify_tolerance_crs(plan), layer=vec.layer,
            # the GeoPackage's own style goes in before the file is renamed into place
            before_commit=embed_style if direct == final and driver == "GPKG" else None,
        )
    if direct != final:
        try:
            write_geoparquet(direct, vec.layer, final)
        finally:
            direct.unlink(missing_ok=True)
    # QGIS styles belong with the polygons (the GeoPackage embeds its own in layer_styles)
    styles = write_styles(Path(plan.out_dir), plan.class_names, plan.colors,
                          vector_name=final.name, layer=vec.layer, embed=False)
    return {"polygons": stats.polygons, "seam_groups_merged": stats.seam_groups_merged,
            "min_region_pixels": min_region_pixels(plan), **source.report(),
            "seconds": time.perf_counter() - t0,
            "styles": {k: str(v) for k, v in styles.items() if k == "vector_qml"},
            "receipt": output_receipt(plan, "polygons")}


@task(name="summarize")
def summarize(plan: SegmentPlan, histogram: list[int] | None) -> dict[str, Any]:
    """Per-class pixels and areas from the COG blocks' histogram of the final labels, and a
    preview map (from the COG's overviews) next to them."""
    t0 = time.perf_counter()
    if histogram is None:  # a write-cog result cached before the blocks counted the pixels
        histogram = class_histogram(open_labels(plan.zarr_location())).tolist()
    summary = class_summary(plan, np.asarray(histogram, dtype=np.int64))
    write_preview(plan.output("cog"), plan.input_path, plan.output("preview"), plan.class_names,
                  plan.colors, bands=plan.info.bands)
    return {**summary, "seconds": time.perf_counter() - t0}


def scene_datetime(plan: SegmentPlan, now: str) -> tuple[str, str]:
    """When the scene was taken and where that came from: ``stac.datetime``, the input's tags,
    or (with a warning in run.json) the processing time."""
    if plan.config.stac.datetime is not None:
        return plan.config.stac.datetime.isoformat(), "stac.datetime"
    found = acquisition_datetime(plan.input_path)
    return found if found else (now, "processing time")


@task(name="styles-and-stac")
def styles_and_stac(plan: SegmentPlan) -> dict[str, Any]:
    """The raster's QGIS style (.qml) and a STAC Item for catalogues."""
    from datetime import UTC, datetime

    now = datetime.now(UTC).isoformat()
    files = write_styles(Path(plan.out_dir), plan.class_names, plan.colors, vector_name=None)
    assets = {"labels": OUTPUT_NAMES["cog"], "labels_aux": OUTPUT_NAMES["cog_aux"],
              "labels_style": "labels.qml", "zarr": OUTPUT_NAMES["zarr"],
              "polygons": plan.output("polygons").name, "polygons_style": "polygons.qml",
              "preview": OUTPUT_NAMES["preview"], "manifest": OUTPUT_NAMES["manifest"]}
    if not plan.config.vectorize.enabled:
        assets = {k: v for k, v in assets.items() if not k.startswith("polygons")}
    when, source = scene_datetime(plan, now)
    item = build_stac_item(
        item_id=stac_item_id(plan.input_path, plan.fingerprint), out_dir=Path(plan.out_dir),
        width=plan.info.width, height=plan.info.height, transform=plan.info.transform,
        crs_wkt=plan.info.crs_wkt, class_names=plan.class_names, colors=plan.colors,
        datetime_utc=when, created_utc=now, assets=assets,
        properties={"stego:model_hash": plan.model_hash,
                    "stego:method": plan.model_meta["method"], "stego:datetime_source": source},
    )
    files["stac_item"] = write_stac_item(item, Path(plan.out_dir) / "item.json")
    return {"files": {k: str(v) for k, v in files.items()}, "datetime_source": source}


def run_stage(stage: Any, plan: SegmentPlan, fresh: bool, cached: list[str],
              *args: Any) -> dict[str, Any]:
    """Run a cached stage task; a cached result counts only while its receipt holds.

    ``--fresh`` refreshes the cache. A hit whose files were deleted or replaced since (another
    config writing into the same directory) runs the stage again. The original stage time of
    a hit is replaced by ~0 and the stage is listed in ``cached``.
    """
    t0 = time.perf_counter()
    state = stage.with_options(refresh_cache=fresh)(plan, *args, return_state=True)
    result = state.result()
    if state.name == "Cached":
        if receipt_holds(result.get("receipt")):
            cached.append(stage.name)
            result["seconds"] = time.perf_counter() - t0
        else:
            result = stage.with_options(refresh_cache=True)(plan, *args)
    result.pop("receipt", None)
    return result


def publish_artifact(doc: dict[str, Any]) -> None:
    """A markdown summary of the run in Prefect (input, model, weights, classes, timings)."""
    from prefect.artifacts import create_markdown_artifact

    weights = doc["model"].get("weights") or {}
    lines = [
        f"# Segmentation of `{Path(doc['input']['path']).name}`",
        f"- input: `{doc['input']['path']}` ({doc['input']['width']} x "
        f"{doc['input']['height']} px, bands {doc['input']['bands']})",
        f"- model: `{doc['model']['dir']}` ({doc['model']['method']}, hash "
        f"`{doc['model']['hash'][:12]}`)",
        f"- backbone weights: {weights.get('source', 'n/a')} {weights.get('path', '')}",
        f"- preview: ![preview]({Path(doc['outputs']['preview']).resolve().as_uri()})",
        "",
        "| class | pixels | share | area m² |",
        "|---|---|---|---|",
    ]
    for name, c in doc["summary"]["classes"].items():
        area = f"{c['area_m2']:.1f}" if c["area_m2"] is not None else "n/a"
        lines.append(f"| {name} | {c['pixels']} | {100 * c['share']:.1f} % | {area} |")
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in doc["timings_s"].items()]
    lines += ["", "Outputs:"] + [f"- {k}: `{v}`" for k, v in doc["outputs"].items()]
    create_markdown_artifact(markdown="\n".join(lines), key="segment-summary",
                             description=f"stego segment {Path(doc['input']['path']).name}")


@flow(name="segment", log_prints=False)
def segment_flow(
    input_path: str,
    model_dir: str,
    out_dir: str,
    config: dict[str, Any] | None = None,
    fresh: bool = False,
    progress: str = "auto",
    force_unlock: bool = False,
) -> dict[str, Any]:
    """Segment one raster with a fitted model into labels.tif, labels.zarr, polygons.gpkg.

    ``force_unlock`` removes another run's output lock whatever its state (``--force-unlock``).
    """
    cfg = blocks_follow_the_cluster(build_config(config or {}))
    t0 = time.perf_counter()
    store_root = None
    if is_remote(out_dir):  # the workers write the Zarr there; the rest is staged, published
        check_writable(out_dir)
        store_root, out_dir = out_dir.rstrip("/"), str(staging_dir(out_dir))
    plan = validate(input_path, model_dir, out_dir, cfg, store_root, resume=not fresh)
    # an output in a bucket: one run at a time there too, whichever host it runs on
    lease = (remote_lease(store_root, cfg.recovery.lock_lease, force_unlock) if store_root
             else nullcontext())
    with lease as remote, \
            flow_output_lock(Path(out_dir), cfg.recovery.lock_lease, force_unlock) as lock:
        clean_stale_temporaries(Path(out_dir))
        doc = _run_stages(plan, cfg, fresh, progress, t0, lock)
        if store_root:
            remote.check()  # never publish over the outputs of a run that took the URL over
            doc = publish_run(plan, doc)
    if store_root:
        shutil.rmtree(out_dir, ignore_errors=True)
    return doc


def publish_run(plan: SegmentPlan, doc: dict[str, Any]) -> dict[str, Any]:
    """``segment --out URL``: the staged outputs uploaded next to the Zarr store the workers
    wrote, run.json after them, and MANIFEST.json last (object stores have no rename: a reader
    takes the run for finished only when the manifest is there). Paths in run.json and the
    STAC item name the URL."""
    import json

    staged, url = str(Path(plan.out_dir)), str(plan.store_root)
    for name in (OUTPUT_NAMES["manifest"], "item.json"):
        path = Path(plan.out_dir) / name
        if path.is_file():
            text = path.read_text().replace(staged, url)
            write_json_atomic(path, json.loads(text))
    doc = json.loads(json.dumps(doc, default=str).replace(staged, url))
    publish_dir(Path(plan.out_dir), url, prune=False, last=(OUTPUT_NAMES["manifest"],))
    return doc


def _run_stages(plan: SegmentPlan, cfg: RunConfig, fresh: bool, progress: str,
                t0: float, lock: RunLock) -> dict[str, Any]:
    run_json = plan.output("manifest")
    write_json_atomic(run_json, manifest(plan, "running", {}))
    try:
        cached: list[str] = []
        counts = run_stage(infer_blocks, plan, fresh, cached, fresh, progress)
        plan.timings["infer"] = counts.pop("seconds")
        if "infer-blocks" in cached:  # this run computed nothing
            counts = summarize_blocks(plan, [])
        lock.check()  # before each stage: a run whose lock was taken over stops writing
        cog = run_stage(write_labels_cog, plan, fresh, cached)
        plan.timings["cog"] = cog.pop("seconds")
        cog.pop("path", None)  # in outputs.cog
        histogram = cog.pop("histogram", None)
        polygons: dict[str, Any] = {"skipped": True}
        vector_styles: dict[str, str] = {}
        if cfg.vectorize.enabled:
            lock.check()
            polygons = run_stage(vectorize, plan, fresh, cached)
            plan.timings["vectorize"] = polygons.pop("seconds")
            vector_styles = polygons.pop("styles")
        lock.check()
        summary = summarize(plan, histogram)
        plan.timings["summary"] = summary.pop("seconds")
        stac = styles_and_stac(plan)
        if stac["datetime_source"] == "processing time":
            plan.warnings.append("item.json: the input has no acquisition time (TIFF tags); "
                                 "datetime is the processing time; set --datetime")
        plan.timings["total"] = time.perf_counter() - t0
        doc = manifest(plan, "complete", {"counts": counts, "cog": cog, "polygons": polygons,
                                          "summary": summary, "cached_stages": cached})
        if not cfg.vectorize.enabled:
            doc["outputs"].pop("polygons")
        doc["outputs"].update(stac["files"])
        doc["outputs"].update(vector_styles)
        lock.check()
        write_json_atomic(run_json, doc)
        publish_artifact(doc)
        return doc
    except BaseException as exc:
        # SIGTERM/SIGINT (the CLI's KeyboardInterrupt, Prefect's TerminationSignal): resumable
        status = "interrupted" if was_interrupted(exc) else "failed"
        if lock.lost.is_set():  # run.json belongs to the run that took over now
            raise
        try:
            write_json_atomic(run_json, manifest(plan, status, {"error": f"{exc}" or status}))
        except OSError as write_error:  # e.g. the disk that failed the run is still full
            get_run_logger().warning("could not record the failure in %s (%s); it still says "
                                     "'running'", run_json, write_error.strerror)
        raise


def segment(input_path: str | Path, model_dir: str | Path, out_dir: str | Path,
            config: RunConfig | None = None, fresh: bool = False,
            progress: bool | str = "auto", force_unlock: bool = False) -> dict[str, Any]:
    """Run the flow with a typed config (the CLI and tests call this).

    ``progress``: "auto", "bar", "lines", "json", or "off" (False).
    """
    cfg = config or RunConfig()
    progress = {True: "auto", False: "off"}.get(progress, progress)  # type: ignore[arg-type]
    return segment_flow(str(input_path), str(model_dir), str(out_dir),
                        cfg.model_dump(mode="json"), fresh, progress, force_unlock)
