"""The `stego` commands that run no flow: `server` (the long-lived local Prefect server),
`backbones`, `demo-scene`, `import-checkpoint` and `name-clusters`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flows.locations import published, refuse_remote
from pipeline.errors import InputError


def cmd_demo_scene(args: argparse.Namespace) -> int:
    """`stego demo-scene`: write the synthetic scene and its true labels."""
    from pipeline.demo import write_demo_scene

    if args.size < 64:
        raise InputError("--size", "must be at least 64")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image, labels = write_demo_scene(args.out, size=args.size, seed=args.seed)
    print(f"image  {image}\nlabels {labels}")
    return 0


def cmd_import_checkpoint(args: argparse.Namespace) -> int:
    """`stego import-checkpoint`: an official STEGO checkpoint as a model directory."""
    if not args.checkpoint.is_file():  # before torch and timm load
        raise InputError(args.checkpoint, "checkpoint file not found")
    from pipeline.models.stego import stego_model_from_import
    from pipeline.models.stego_checkpoint import import_stego_checkpoint
    from pipeline.models.store import save_model

    imported = import_stego_checkpoint(args.checkpoint)
    model = stego_model_from_import(imported, str(args.checkpoint), dict(args.backbone_arg),
                                    input_scale=args.input_scale, crf=args.crf)
    with published(args.out) as out_dir:
        save_model(model, out_dir, {"imported_from": {
            "path": str(args.checkpoint.resolve()),
            "hyperparameters": imported.hyperparameters}})
    print(f"model {args.out}: {imported.backbone_name}, dim {imported.dim}, "
          f"{imported.n_clusters} clusters")
    return 0


def is_samples(source: Path, class_field: str | None) -> bool:
    """Whether `name-clusters --from` names samples (a vector layer, a label raster, or any
    file with --class-field) rather than a metrics.json or a YAML/CSV names file."""
    from pipeline.evaluation.ground_truth import VECTOR_SUFFIXES

    suffix = source.suffix.lower()
    return class_field is not None or suffix in VECTOR_SUFFIXES - {".json"} or \
        suffix in (".tif", ".tiff", ".vrt", ".img", ".png")


def cmd_name_clusters(args: argparse.Namespace) -> int:
    """`stego name-clusters`: give a model's clusters names and colours."""
    from pipeline.models.store import read_model_json

    refuse_remote(args.model, "MODEL")  # it rewrites the model in place

    n = len(read_model_json(args.model)["class_names"])
    from pipeline.evaluation import (
        cluster_names_from_file,
        cluster_names_from_metrics,
        rename_model_classes,
    )

    colors = None
    if is_samples(args.source, args.class_field):
        from pipeline.evaluation.naming import names_from_votes
        from pipeline.segment.at_samples import cluster_votes

        votes, sset = cluster_votes(args.model, [str(args.source)], args.class_field,
                                    images=[str(p) for p in args.image] or None)
        names, notes = names_from_votes(votes, sset.classes.names)
        for note in [*sset.warnings, *notes]:
            print(f"note: {note}", file=sys.stderr)
    elif args.source.suffix == ".json":
        names = cluster_names_from_metrics(args.source, n)
    else:
        names, colors = cluster_names_from_file(args.source, n)
    rename_model_classes(args.model, names, colors)
    for i, name in enumerate(names):
        print(f"  {i}: {name}")
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


def cmd_server(args: argparse.Namespace) -> int:
    """`stego server start|stop|status`: a long-lived local Prefect server for later runs."""
    from flows.local_server import read_state, start_server, stop_server

    if args.port is not None and not 1 <= args.port <= 65535:
        raise InputError("--port", f"must be between 1 and 65535 (got {args.port})")
    if args.action == "start":
        state = start_server(args.home, port=args.port, ui=args.ui, timeout=args.timeout)
    elif args.action == "stop":
        state = stop_server(args.home)
    else:
        state = read_state(args.home)
    if args.json:
        print(json.dumps(state.describe()))
    elif args.action == "stop":
        print(f"stopped the stego server (pid {state.record['pid']})"
              if state.status in ("running", "not answering") else
              f"no stego server was running ({state.status})")
    elif state.status == "running":
        ui = f", UI {state.record['ui_url']}" if state.record.get("ui_url") else ""
        print(f"stego server running: API {state.api_url} (pid {state.record['pid']}, home "
              f"{state.home}{ui}, log {state.record['log']})\nstego runs on this machine use "
              "it unless PREFECT_API_URL is set")
    else:
        print(f"stego server {state.status} (home {state.home})")
    return 0 if args.action != "status" or state.status == "running" else 3
