"""The `segment-folder` flow: segment every scene matching a glob, skipping finished ones.

Each scene goes to ``OUT_ROOT/<scene stem>/`` through the `segment` flow (a subflow). The glob
and OUT_ROOT may be on object storage (``s3://bucket/scenes/*.tif``, ``gs://``, ``az://``, or
GDAL's ``/vsis3/`` form for the glob): scenes are listed there, and each output is published
as `segment --out URL` publishes it (MANIFEST.json last). A scene is skipped when its
``run.json`` (in a bucket: a published one, its MANIFEST.json there and matching) says
``complete`` for the fingerprint the run would have now
(same input file, model and tiling/input config) and the same output-affecting config; with
``tiling.block_size: auto``, whatever edge the finished run resolved to (the labels do not
depend on it), so a cluster of another size skips it too. A
failing scene does not stop the others; the flow ends Failed after all scenes were tried.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import flow, get_run_logger

from flows.locations import find_scenes, staging_dir
from flows.segment_flow import segment_flow
from pipeline.config import RunConfig, blocks_follow_the_cluster, build_config
from pipeline.errors import InputError
from pipeline.io.remote import (
    check_writable,
    is_remote,
    join,
    parent_and_name,
    read_published,
)
from pipeline.segment.plan import OUTPUT_NAMES, plan_segment
from pipeline.tiling import grid_for_raster

# config sections that change what a segment run writes (dask/fit/stego do not)
OUTPUT_SECTIONS = ("input", "tiling", "vectorize", "output", "model")


class BatchFailed(RuntimeError):
    """Some scenes of a folder run failed; ``summary`` holds the whole result."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        failed = summary["failed"]
        first = next(iter(failed.items()))
        super().__init__(f"{len(failed)} of {summary['total']} scene(s) failed; first: "
                         f"{first[0]}: {first[1]}")


def scene_out_dir(out_root: str | Path, scene: str) -> str | Path:
    """``OUT_ROOT/<stem of the scene file>`` (a URL stays text)."""
    return join(out_root, PurePosixPath(scene).stem)


def _read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    try:
        if is_remote(out_dir):  # only a finished publish: MANIFEST.json there, run.json in it
            raw = read_published(str(out_dir), OUTPUT_NAMES["manifest"])
            if raw is None:
                return None
            doc = json.loads(raw)
        else:
            doc = json.loads((Path(out_dir) / OUTPUT_NAMES["manifest"]).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _output_config(config: dict[str, Any], drop: tuple[str, ...] = (),
                   auto_blocks: bool = False) -> dict[str, Any]:
    out = {k: config.get(k) for k in OUTPUT_SECTIONS}
    if drop and isinstance(out.get("model"), dict):
        # model.refine / refine_pixels / crf null mean "the model's own": run.json holds the
        # resolved value, which the fingerprint compared below covers
        out["model"] = {k: v for k, v in out["model"].items() if k not in drop}
    if auto_blocks and isinstance(out.get("tiling"), dict):
        # block_size auto: run.json holds the edge it resolved to (checked in is_done)
        out["tiling"] = {k: v for k, v in out["tiling"].items() if k != "block_size"}
    return out


def _with_block_size_of(doc: dict[str, Any], cfg: RunConfig) -> RunConfig | None:
    """``cfg`` with ``tiling.block_size: auto`` pinned to the edge the finished run resolved
    (None when run.json has no valid one). Labels do not depend on the edge, so a scene done
    on a cluster of another size is still done; the fingerprint then checks everything else.
    """
    size = ((doc.get("config") or {}).get("tiling") or {}).get("block_size")
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    pinned = cfg.model_copy(deep=True)
    try:
        pinned.tiling.block_size = size
    except ValueError:  # pydantic's ValidationError: not a multiple of chunk_size
        return None
    return pinned


def is_done(scene: str, model_dir: str, out_dir: str | Path, cfg: RunConfig) -> bool:
    """True when ``out_dir/run.json`` is complete for the run this scene would get now.

    Only a complete run.json is checked further (cheap otherwise); then the scene is planned
    (validation, decimated scaling read, model hash) to compare the fingerprint. For a URL,
    only a published run.json counts (MANIFEST.json there, every file it lists there, run.json
    matching its sha256): a partial upload is not done. Raises InputError when the scene or
    model is bad.
    """
    doc = _read_manifest(out_dir)
    if doc is None or doc.get("status") != "complete":
        return False
    if not is_remote(out_dir):
        return _fingerprint_matches(doc, scene, model_dir, str(out_dir), cfg)
    stage = staging_dir(str(out_dir))  # what `segment --out URL` plans against
    existed = stage.exists()
    try:
        return _fingerprint_matches(doc, scene, model_dir, str(stage), cfg)
    finally:
        if not existed:  # planning created it; a staged run's folder is left alone
            with contextlib.suppress(OSError):
                stage.rmdir()


def _fingerprint_matches(doc: dict[str, Any], scene: str, model_dir: str, out_dir: str,
                         cfg: RunConfig) -> bool:
    drop = tuple(k for k in ("refine", "refine_pixels", "crf") if getattr(cfg.model, k) is None)
    auto = cfg.tiling.block_size == "auto"
    if _output_config(doc.get("config") or {}, drop, auto) != \
            _output_config(cfg.model_dump(mode="json"), drop, auto):
        return False
    if auto:
        pinned = _with_block_size_of(doc, cfg)
        if pinned is None:
            return False
        plan = plan_segment(scene, model_dir, out_dir, pinned, count_threads=False)
        t = plan.config.tiling  # auto makes one block only of a scene within one chunk
        if plan.grid != grid_for_raster(t.tile_size, t.overlap, plan.info.height,
                                        plan.info.width, t.chunk_size):
            return False
    else:
        plan = plan_segment(scene, model_dir, out_dir, cfg, count_threads=False)
    return doc.get("fingerprint") == plan.fingerprint


def _scene_context() -> contextvars.Context:
    """A copy of this context for one scene's thread: the Prefect settings a caller set
    through context (the CLI's temporary server) reach its flow run, but not this flow run's
    own context (its subflows would then run one at a time: measured), so each scene is a
    flow run of its own, named after the scene."""
    from prefect.context import FlowRunContext, TaskRunContext

    ctx = contextvars.copy_context()
    ctx.run(FlowRunContext.__var__.set, None)
    ctx.run(TaskRunContext.__var__.set, None)
    return ctx


def scenes_at_once(cfg: RunConfig) -> int:
    """How many scenes segment-folder runs at the same time (``dask.scenes_at_once``)."""
    n = cfg.dask.scenes_at_once
    if n == "auto":
        return 4 if cfg.dask.scheduler_address else 1
    return int(n)


def _error_text(exc: Exception, scene: str) -> str:
    """The error of a scene, without repeating the scene's path."""
    if isinstance(exc, InputError) and exc.path == scene:
        return exc.problem
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _publish_summary(summary: dict[str, Any], input_glob: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    lines = [f"# segment-folder `{input_glob}`", "",
             f"- processed: {len(summary['processed'])}",
             f"- skipped (already done): {len(summary['skipped'])}",
             f"- failed: {len(summary['failed'])}", ""]
    if summary["failed"]:
        lines += ["| failed scene | error |", "|---|---|"]
        lines += [f"| `{s}` | {e.replace('|', '/')} |" for s, e in summary["failed"].items()]
    create_markdown_artifact(markdown="\n".join(lines), key="segment-folder-summary",
                             description=f"stego segment-folder {input_glob}")


@flow(name="segment-folder", log_prints=False)
def segment_folder(
    input_glob: str,
    model_dir: str,
    out_root: str,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment every scene matching ``input_glob`` into ``out_root/<stem>/``, skipping done ones.

    Returns ``{processed: [...], skipped: [...], failed: {scene: error}, total: n}``; raises
    BatchFailed after trying every scene when any failed.
    """
    logger = get_run_logger()
    cfg = blocks_follow_the_cluster(build_config(config or {}))
    cfg_json = cfg.model_dump(mode="json")
    scenes = find_scenes(input_glob)
    if not scenes:
        raise InputError(input_glob, "no files match this pattern")
    if is_remote(out_root):  # before any scene: a bucket that cannot be reached is one line
        check_writable(str(out_root))
    summary: dict[str, Any] = {"processed": [], "skipped": [], "failed": {},
                               "total": len(scenes), "out_root": str(out_root)}
    owners: dict[str, str] = {}
    todo: list[tuple[str, str | Path]] = []
    for scene in scenes:
        out_dir = scene_out_dir(out_root, scene)
        name = parent_and_name(out_dir)[1]
        if name in owners:
            summary["failed"][scene] = (f"output folder {out_dir} is already used by "
                                        f"{owners[name]} (same file name)")
            logger.error("%s: %s", scene, summary["failed"][scene])
            continue
        owners[name] = scene
        todo.append((scene, out_dir))

    def one(scene: str, out_dir: str | Path) -> tuple[str, str | None]:
        """'skipped', 'processed' or 'failed' with the error text."""
        try:
            if is_done(scene, model_dir, out_dir, cfg):
                logger.info("%s: already done in %s, skipped", scene, out_dir)
                return "skipped", None
            name = parent_and_name(out_dir)[1]
            label = name.replace("{", "{{").replace("}", "}}")  # a name template
            run = segment_flow.with_options(flow_run_name=f"segment-{label}")
            run(scene, model_dir, str(out_dir), cfg_json, False, "off")
        except Exception as exc:  # noqa: BLE001 - one bad scene must not stop the others
            msg = _error_text(exc, scene)
            logger.error("%s: failed: %s", scene, msg)
            return "failed", msg
        logger.info("%s: done -> %s", scene, out_dir)
        return "processed", None

    at_once = scenes_at_once(cfg)
    if at_once > 1:
        logger.info("segment-folder: %d scenes, up to %d at once", len(todo), at_once)
    if at_once == 1:  # in this flow run: each scene a subflow of it
        results = [one(scene, out_dir) for scene, out_dir in todo]
    else:
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="stego-scene") as pool:
            futures = [pool.submit(_scene_context().run, one, scene, out_dir)
                       for scene, out_dir in todo]
            results = [f.result() for f in futures]  # in the scenes' order
    for (scene, _), (outcome, msg) in zip(todo, results, strict=True):
        if outcome == "failed":
            summary["failed"][scene] = msg
        else:
            summary[outcome].append(scene)
    logger.info("segment-folder: %d processed, %d skipped, %d failed",
                len(summary["processed"]), len(summary["skipped"]), len(summary["failed"]))
    _publish_summary(summary, input_glob)
    if summary["failed"]:
        raise BatchFailed(summary)
    return summary
