"""`stego`: the one command-line entry point; each command triggers a Prefect flow."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from flows import prefect_api, startup_trace
from flows.cli_args import build_parser
from flows.cli_errors import install_signal_handlers, report, report_exception
from flows.cli_folder import segment_folder_command
from flows.cli_run import flow_run, pause_gc
from flows.cli_samples import cmd_sample_points, cmd_suggest, evaluate_samples
from flows.cli_tools import (
    cmd_backbones,
    cmd_demo_scene,
    cmd_import_checkpoint,
    cmd_name_clusters,
    cmd_server,
)
from flows.locations import published, refuse_remote, staging_dir
from pipeline.errors import InputError
from pipeline.io.remote import check_writable, is_remote

startup_trace.mark("cli imported")




# On an existing scheduler these split a scene for its worker threads (tiling.block_size:
# auto) unless the config file or --set pins tiling.block_size.
SPLIT_FOR_THE_CLUSTER = {"segment", "segment-folder"}


def _config(args: argparse.Namespace) -> Any:
    """The config file (or defaults), then --set overrides, then the dedicated flags; with a
    scheduler address, `segment` and `segment-folder` plan ``tiling.block_size: auto``
    unless the block size was set."""
    from pipeline.config import blocks_for_the_cluster, build_config, load_config

    loaded = load_config(args.config, list(args.overrides))
    data = loaded.model_dump(mode="json")
    flags = {
        ("input", "bands"): getattr(args, "bands", None),
        ("model", "device"): getattr(args, "device", None),
        ("model", "crf"): getattr(args, "crf", None),
        ("model", "refine"): getattr(args, "refine", None),
        ("dask", "workers"): getattr(args, "workers", None),
        ("dask", "scheduler_address"): getattr(args, "scheduler_address", None),
        ("stac", "datetime"): getattr(args, "datetime", None),
        **{("fit", k): getattr(args, k, None)
           for k in ("method", "clusters", "backbone", "weights", "gsd")},
    }
    if getattr(args, "command", None) == "pretrain":
        flags.update({("pretrain", "minutes"): args.minutes, ("pretrain", "steps"): args.steps,
                      ("pretrain", "seed"): args.seed,
                      ("pretrain", "backbone"): args.pretrain_backbone,
                      ("pretrain", "overrides"): dict(args.backbone_arg) or None})
        if args.steps is not None:
            data["pretrain"]["minutes"] = None
    for (section, key), value in flags.items():
        if value is not None:
            data[section][key] = value
    if (getattr(args, "command", None) in SPLIT_FOR_THE_CLUSTER  # the flag's address too
            and blocks_for_the_cluster(data["dask"]["scheduler_address"], loaded.tiling)):
        data["tiling"]["block_size"] = "auto"
    try:
        return build_config(data, "command line")
    except InputError as exc:  # a bad flag value is reported under the flag's name
        for (section, key), value in flags.items():
            prefix = f"config key '{section}.{key}': "
            if value is not None and exc.problem.startswith(prefix):
                flag = FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
                raise InputError(flag, f"{exc.problem[len(prefix):]} (got {value!r})") from None
        raise


FLAG_NAMES = {"minutes": "--minutes", "steps": "--steps", "backbone": "--backbone",
              "overrides": "--backbone-arg"}


def cmd_fit(args: argparse.Namespace) -> int:
    """`stego fit`: fit a model on crops of the inputs (no labels)."""
    from pipeline.io.raster import compute_scaling, open_raster_info

    if args.samples and args.method is None:
        args.method = "classifier"
    cfg = _config(args)
    if not 2 <= cfg.fit.clusters <= 254:
        raise InputError("--clusters", "must be between 2 and 254")
    if (cfg.fit.method == "classifier") != bool(args.samples):
        raise InputError("--samples", "--method classifier needs --samples, and --samples "
                         "needs --method classifier (the default with --samples)")
    for path in args.inputs:  # fail fast, before torch and Prefect are even imported
        compute_scaling(open_raster_info(path, cfg.input.bands), cfg.input.percentiles)
    from flows.fit_flow import fit_flow
    if args.labels and cfg.fit.method != "stego":
        raise InputError("--labels", "a linear probe is trained only with --method stego")
    if cfg.fit.method in ("threshold", "region", "edge"):
        from pipeline.fit.classic import check_classic

        infos = [open_raster_info(p, cfg.input.bands) for p in args.inputs]
        t = cfg.threshold
        check_classic(cfg.fit.method, cfg.fit.clusters, infos, t.index, t.nir_band, t.red_band)
    with published(args.out) as out_dir, flow_run():
        result = fit_flow(
            [str(p) for p in args.inputs], str(out_dir), method=cfg.fit.method,
            clusters=cfg.fit.clusters, weights=cfg.fit.weights, backbone=cfg.fit.backbone,
            backbone_overrides=dict(args.backbone_arg), embed_weights=args.embed_weights,
            config=cfg.model_dump(mode="json"),
            labels=[str(p) for p in args.labels] if args.labels else None,
            label_ignore=list(args.label_ignore),
            samples=[str(s) for s in args.samples] if args.samples else None,
            class_field=args.class_field, class_table=args.classes,
        )
    if is_remote(args.out):
        result["model_dir"] = str(args.out)
    print(json.dumps(result, indent=2))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """`stego pretrain`: self-supervised pretraining of a backbone on the inputs."""
    from pipeline.io.files import ensure_output_dir
    from pipeline.io.raster import compute_scaling, open_raster_info

    cfg = _config(args)
    for path in args.inputs:  # fail fast, before torch and Prefect are imported
        compute_scaling(open_raster_info(path, cfg.input.bands), cfg.input.percentiles)
    from flows.pretrain_flow import pretrain_flow

    with published(args.out) as out_dir:
        ensure_output_dir(out_dir)
        with flow_run():
            result = pretrain_flow([str(p) for p in args.inputs], str(out_dir),
                                   config=cfg.model_dump(mode="json"), fresh=args.fresh)
    print(json.dumps(result, indent=2))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """`stego segment`: segment one raster with a fitted model."""
    from pipeline.io.raster import open_raster_info
    from pipeline.models.store import local_model_dir, read_model_json

    cfg = _config(args)
    out = args.out
    if is_remote(out):  # the bucket first; the local staging folder stands in for the checks
        from pipeline.io.remote_lock import check_lease_free

        check_writable(str(out))
        check_lease_free(str(out), args.force_unlock)  # another host's run writing there
        out = staging_dir(str(out))
    open_raster_info(args.input, cfg.input.bands)  # fail fast, before torch and Prefect load
    read_model_json(local_model_dir(args.model))
    startup_trace.mark("raster checked")
    from pipeline.segment.plan import check_segment_inputs

    startup_trace.mark("segment plan imported")
    info, _, _ = check_segment_inputs(args.input, str(args.model), str(out), cfg)  # fail fast
    startup_trace.mark("model and output checked")
    from flows.segment_flow import segment

    if cfg.vectorize.enabled:  # numba and the kernels' cached code (1.5 s here) load now,
        # while a temporary server is still starting, not in the flow (vectorizing runs here)
        from pipeline.vectorize.blocks import warm_up

        warm_up()
    startup_trace.mark("segment flow imported (Prefect, Dask)")
    if info.crs_wkt is None:
        print(f"warning: {args.input}: raster has no CRS; outputs will have none either",
              file=sys.stderr)
    progress = "off" if args.quiet else ("json" if args.json else args.progress)
    with flow_run():
        startup_trace.mark("API ready")
        doc = segment(args.input, args.model, args.out, cfg, fresh=args.fresh,
                      progress=progress, force_unlock=args.force_unlock)
        startup_trace.mark("flow finished")
    if args.json:
        print(json.dumps(doc, default=str))
    else:
        _print_outputs(doc)
    return 0


def _print_outputs(doc: dict[str, Any]) -> None:
    print("outputs:")
    for kind, path in doc["outputs"].items():
        print(f"  {kind:9s} {path}")
    t = doc["timings_s"]
    print(f"total {t.get('total', 0):.1f} s, blocks {doc['counts']['blocks_total']}, "
          f"polygons {doc['polygons'].get('polygons', '-')}")


def cmd_demo(args: argparse.Namespace) -> int:
    """`stego demo`: the whole mission offline on a generated scene, with a table."""
    if args.size < 64:
        raise InputError("--size", "must be at least 64")
    if args.weights not in (None, "auto"):  # a given file or directory must exist
        if not Path(args.weights).exists():
            raise InputError(args.weights, "weights not found")
    from flows.demo import DemoOptions, run_demo, table

    weights = None if args.weights in (None, "auto") else args.weights
    minutes = None if args.pretrain_steps else args.pretrain_minutes
    opts = DemoOptions(args.out, size=args.size, clusters=args.clusters, weights=weights,
                       pretrain_minutes=minutes, pretrain_steps=args.pretrain_steps,
                       stego_steps=args.steps, method=args.method,
                       progress="off" if args.quiet else "auto")
    with flow_run():
        result = run_demo(opts)
    label = "self-pretrained" if weights is None else "given weights"
    print(f"demo scene: {result['scene']} (true labels: {result['labels']})")
    print(f"backbone:   {result['weights']}")
    print(table(result["rows"], label))
    print(f"outputs ({result['chosen']}):")
    for kind, path in result["outputs"].items():
        print(f"  {kind:9s} {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`stego evaluate`: score label rasters against ground truth."""
    refuse_remote(args.out, "--out")
    if args.samples:
        return evaluate_samples(args)
    if len(args.pairs) % 2:
        raise InputError("evaluate", "give PRED GT pairs (an even number of paths)")
    for path in args.pairs:
        if not Path(path).exists() and not path.startswith("/vsi"):
            raise InputError(path, "file not found")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    from pipeline.evaluation.pairs import check_pairs

    check_pairs(pairs, args.mapping, args.class_field, args.image)  # before torch and Prefect
    from flows.evaluate_flow import evaluate_flow

    with flow_run():
        result = evaluate_flow(pairs, str(args.out), mapping=args.mapping, ignore=args.ignore,
                               image=args.image, class_field=args.class_field)
    m = result["metrics"]
    print(f"accuracy {m['accuracy']:.1f} %  mIoU {m['mIoU']:.1f} %  "
          f"(STEGO variant: accuracy {m['stego_variant']['accuracy']:.1f} %)")
    for name, path in result["files"].items():
        print(f"  {name:9s} {path}")
    return 0


def cmd_segment_folder(args: argparse.Namespace) -> int:
    """`stego segment-folder`: every scene of a glob (local or in a bucket), finished ones
    skipped."""
    return segment_folder_command(args, _config(args))


def cmd_deploy(args: argparse.Namespace) -> int:
    """`stego deploy`: serve a scheduled deployment that segments a folder."""
    from flows.deploy import serve_folder
    from pipeline.config import load_config

    cfg = load_config(args.config, list(args.overrides)).model_dump(mode="json",
                                                                   exclude_unset=True)
    with flow_run():
        serve_folder(args.name, args.cron, args.input_glob, str(args.model),
                     str(args.out_root), cfg or None, timezone=args.timezone)
    return 0


def cmd_run_deployment(args: argparse.Namespace) -> int:
    """`stego run-deployment`: trigger a deployment's run (optionally wait)."""
    from flows.deploy import parse_params, trigger

    timeout = args.timeout if args.watch else 0
    params = parse_params(args.param)
    with flow_run():
        run = trigger(args.name, params, timeout=timeout)
    print(json.dumps(run, default=str))
    return 0 if not args.watch or run["state"] == "Completed" else 1


TEMPORARY_SERVER_COMMANDS = {"fit", "pretrain", "segment", "segment-folder", "evaluate", "demo",
                             "suggest"}
API_COMMANDS = TEMPORARY_SERVER_COMMANDS | {"deploy", "run-deployment"}  # these two: a server
COMMANDS = {"fit": cmd_fit, "pretrain": cmd_pretrain, "segment": cmd_segment,
            "segment-folder": cmd_segment_folder,
            "demo-scene": cmd_demo_scene, "backbones": cmd_backbones,
            "demo": cmd_demo, "import-checkpoint": cmd_import_checkpoint,
            "evaluate": cmd_evaluate, "name-clusters": cmd_name_clusters,
            "suggest": cmd_suggest, "sample-points": cmd_sample_points,
            "deploy": cmd_deploy, "run-deployment": cmd_run_deployment, "server": cmd_server}


def _prefect_defaults() -> None:
    # no telemetry from offline machines; the embedded server unless PREFECT_API_URL is set
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _gdal_defaults() -> None:
    # GDAL's block cache defaults to 5 % of RAM and fills up on big rasters; blocks are read
    # and written band by band, so a small cache costs nothing and keeps memory flat
    os.environ.setdefault("GDAL_CACHEMAX", "256")


def _openmp_defaults() -> None:
    # the in-process Dask worker runs torch on its own thread while OpenMP threads of the main
    # thread spin-wait for work; on few cores that spinning took 20-30 % of the model's time
    # (benchmarks/overhead.py). OpenMP reads this once, when torch loads: set it before that.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _quiet_logging() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logging.getLogger("distributed").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `stego` console script; returns the exit code.

    Called with ``argv=None`` (the console script) it also chooses the Prefect API before
    Prefect loads (`stego server`, or a temporary server started early; see
    flows/prefect_api.py), stops that temporary server before printing an error, so that the
    ``error:`` line is the last line on stderr, and skips the final garbage collection.
    """
    parser = build_parser()
    release = argv is None
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    args = None
    previous = install_signal_handlers()
    try:
        args = parser.parse_args(argv)
        _prefect_defaults()
        _gdal_defaults()
        _openmp_defaults()
        if release and args.command in API_COMMANDS:
            pause_gc()
            # before Prefect loads: a running `stego server`, else a temporary server that
            # starts now and comes up while the inputs are checked and torch/Prefect import
            prefect_api.begin(temporary=args.command in TEMPORARY_SERVER_COMMANDS)
            startup_trace.mark(f"api chosen ({prefect_api.RUN_API.mode})")
        if getattr(args, "quiet", False):
            _quiet_logging()
            warnings.simplefilter("ignore")
        return COMMANDS[args.command](args)
    except InputError as exc:
        return report(args, f"{exc.path}: {exc.problem}", "failed", 2, release)
    except BaseException as exc:  # noqa: BLE001 - the CLI reports, --debug shows the traceback
        return report_exception(exc, args, debug, release)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if release:
            _exit_quickly()


def _exit_quickly() -> None:
    """No waiting on the way out: the temporary server gets SIGTERM and finishes on its own,
    and the interpreter skips the last full garbage collection over everything torch, Prefect
    and Dask allocated (3 s on a 256² run here, for memory the OS frees anyway)."""
    prefect_api.close()
    startup_trace.mark("main returned")
    startup_trace.report()
    gc.disable()
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
