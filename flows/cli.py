"""`stego`: the one command-line entry point; each command triggers a Prefect flow."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from flows.cli_args import build_parser
from flows.cli_errors import install_signal_handlers, report, report_exception
from pipeline.errors import InputError


def _config(args: argparse.Namespace) -> Any:
    """The config file (or defaults), then --set overrides, then the dedicated flags."""
    from pipeline.config import build_config, load_config

    data = load_config(args.config, list(args.overrides)).model_dump(mode="json")
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

    cfg = _config(args)
    if not 2 <= cfg.fit.clusters <= 254:
        raise InputError("--clusters", "must be between 2 and 254")
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
    result = fit_flow(
        [str(p) for p in args.inputs], str(args.out), method=cfg.fit.method,
        clusters=cfg.fit.clusters, weights=cfg.fit.weights, backbone=cfg.fit.backbone,
        backbone_overrides=dict(args.backbone_arg), embed_weights=args.embed_weights,
        config=cfg.model_dump(mode="json"),
        labels=[str(p) for p in args.labels] if args.labels else None,
        label_ignore=list(args.label_ignore),
    )
    print(json.dumps(result, indent=2))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """`stego pretrain`: self-supervised pretraining of a backbone on the inputs."""
    from flows.pretrain_flow import pretrain_flow
    from pipeline.io.files import ensure_output_dir
    from pipeline.io.raster import compute_scaling, open_raster_info

    cfg = _config(args)
    for path in args.inputs:  # fail fast, before any flow starts
        compute_scaling(open_raster_info(path, cfg.input.bands), cfg.input.percentiles)
    ensure_output_dir(args.out)
    result = pretrain_flow([str(p) for p in args.inputs], str(args.out),
                           config=cfg.model_dump(mode="json"), fresh=args.fresh)
    print(json.dumps(result, indent=2))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    """`stego segment`: segment one raster with a fitted model."""
    from pipeline.io.raster import open_raster_info

    cfg = _config(args)
    open_raster_info(args.input, cfg.input.bands)  # fail fast, before torch and Prefect load
    from flows.segment_flow import segment
    from pipeline.segment.plan import check_segment_inputs

    info, _, _ = check_segment_inputs(args.input, str(args.model), str(args.out), cfg)  # fail fast
    if info.crs_wkt is None:
        print(f"warning: {args.input}: raster has no CRS; outputs will have none either",
              file=sys.stderr)
    progress = "off" if args.quiet else ("json" if args.json else args.progress)
    doc = segment(args.input, args.model, args.out, cfg, fresh=args.fresh, progress=progress)
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


def cmd_demo_scene(args: argparse.Namespace) -> int:
    """`stego demo-scene`: write the synthetic scene and its true labels."""
    from pipeline.demo import write_demo_scene

    if args.size < 64:
        raise InputError("--size", "must be at least 64")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image, labels = write_demo_scene(args.out, size=args.size, seed=args.seed)
    print(f"image  {image}\nlabels {labels}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`stego demo`: the whole mission offline on a generated scene, with a table."""
    from flows.demo import DemoOptions, run_demo, table

    if args.size < 64:
        raise InputError("--size", "must be at least 64")
    if args.weights not in (None, "auto"):  # a given file or directory must exist
        if not Path(args.weights).exists():
            raise InputError(args.weights, "weights not found")
    weights = None if args.weights in (None, "auto") else args.weights
    minutes = None if args.pretrain_steps else args.pretrain_minutes
    opts = DemoOptions(args.out, size=args.size, clusters=args.clusters, weights=weights,
                       pretrain_minutes=minutes, pretrain_steps=args.pretrain_steps,
                       stego_steps=args.steps, method=args.method,
                       progress="off" if args.quiet else "auto")
    result = run_demo(opts)
    label = "self-pretrained" if weights is None else "given weights"
    print(f"demo scene: {result['scene']} (true labels: {result['labels']})")
    print(f"backbone:   {result['weights']}")
    print(table(result["rows"], label))
    print(f"outputs ({result['chosen']}):")
    for kind, path in result["outputs"].items():
        print(f"  {kind:9s} {path}")
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """`stego import-checkpoint`: an official STEGO checkpoint as a model directory."""
    from pipeline.models.stego import stego_model_from_import
    from pipeline.models.stego_checkpoint import import_stego_checkpoint
    from pipeline.models.store import save_model

    imported = import_stego_checkpoint(args.checkpoint)
    model = stego_model_from_import(imported, str(args.checkpoint), dict(args.backbone_arg),
                                    input_scale=args.input_scale, crf=args.crf)
    save_model(model, args.out, {"imported_from": {
        "path": str(args.checkpoint.resolve()), "hyperparameters": imported.hyperparameters}})
    print(f"model {args.out}: {imported.backbone_name}, dim {imported.dim}, "
          f"{imported.n_clusters} clusters")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`stego evaluate`: score label rasters against ground truth."""
    from flows.evaluate_flow import evaluate_flow

    if len(args.pairs) % 2:
        raise InputError("evaluate", "give PRED GT pairs (an even number of paths)")
    for path in args.pairs:
        if not Path(path).exists() and not path.startswith("/vsi"):
            raise InputError(path, "file not found")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    result = evaluate_flow(pairs, str(args.out), mapping=args.mapping, ignore=args.ignore,
                           image=args.image, class_field=args.class_field)
    m = result["metrics"]
    print(f"accuracy {m['accuracy']:.1f} %  mIoU {m['mIoU']:.1f} %  "
          f"(STEGO variant: accuracy {m['stego_variant']['accuracy']:.1f} %)")
    for name, path in result["files"].items():
        print(f"  {name:9s} {path}")
    return 0


def cmd_name_clusters(args: argparse.Namespace) -> int:
    """`stego name-clusters`: give a model's clusters names and colours."""
    from pipeline.evaluation import (
        cluster_names_from_file,
        cluster_names_from_metrics,
        rename_model_classes,
    )
    from pipeline.models.store import read_model_json

    n = len(read_model_json(args.model)["class_names"])
    colors = None
    if args.source.suffix == ".json":
        names = cluster_names_from_metrics(args.source, n)
    else:
        names, colors = cluster_names_from_file(args.source, n)
    rename_model_classes(args.model, names, colors)
    for i, name in enumerate(names):
        print(f"  {i}: {name}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """`stego deploy`: serve a scheduled deployment that segments a folder."""
    from flows.deploy import serve_folder
    from pipeline.config import load_config

    cfg = load_config(args.config, list(args.overrides)).model_dump(mode="json",
                                                                   exclude_unset=True)
    serve_folder(args.name, args.cron, args.input_glob, str(args.model), str(args.out_root),
                 cfg or None, timezone=args.timezone)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    """`stego backbones`: the presets, and where this machine has their weights."""
    from pipeline.models.presets import PRESETS, find_local

    search = [*args.search, Path.cwd()]
    if os.environ.get("STEGO_WEIGHTS_DIR"):
        search.append(Path(os.environ["STEGO_WEIGHTS_DIR"]))
    rows = [{**p.describe(), "here": find_local(p, search)} for p in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<15} {'timm name':<37} {'patch':>5} {'dim':>5} {'prefix':>6} "
          f"{'gsd m':>5}  {'mean / std':<38} licence")
    for r in rows:
        norm = "/".join(",".join(f"{v:.3f}" for v in r[k]) for k in ("mean", "std"))
        print(f"{r['name']:<15} {r['timm_name']:<37} {r['patch']:>5} {r['dim']:>5} "
              f"{r['prefix_tokens']:>6} {r['gsd']:>5g}  {norm:<38} {r['licence']}")
    print("\nweights (--weights FILE takes the original file; --weights hub the timm copy):")
    for r in rows:
        print(f"  {r['name']:<15} {r['file']}\n  {'':<15} from {r['source']}\n"
              f"  {'':<15} or {r['hub_repo']} on the Hugging Face hub\n"
              f"  {'':<15} here: {r['here'] or 'no'}")
    return 0


def cmd_run_deployment(args: argparse.Namespace) -> int:
    """`stego run-deployment`: trigger a deployment's run (optionally wait)."""
    from flows.deploy import parse_params, trigger

    timeout = args.timeout if args.watch else 0
    run = trigger(args.name, parse_params(args.param), timeout=timeout)
    print(json.dumps(run, default=str))
    return 0 if not args.watch or run["state"] == "Completed" else 1


COMMANDS = {"fit": cmd_fit, "pretrain": cmd_pretrain, "segment": cmd_segment,
            "demo-scene": cmd_demo_scene, "backbones": cmd_backbones,
            "demo": cmd_demo, "import-checkpoint": cmd_import_checkpoint,
            "evaluate": cmd_evaluate, "name-clusters": cmd_name_clusters,
            "deploy": cmd_deploy, "run-deployment": cmd_run_deployment}


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

    Called with ``argv=None`` (the console script) it also stops Prefect's temporary server
    before printing an error, so that the ``error:`` line is the last line on stderr.
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


if __name__ == "__main__":
    sys.exit(main())
