"""The few-labels commands around `fit --samples`: `evaluate RUN --samples` (an accuracy
assessment) and `suggest` (where to label next)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli_run import flow_run
from flows.locations import refuse_remote
from pipeline.errors import InputError


def evaluate_samples(args: argparse.Namespace) -> int:
    """`stego evaluate RUN --samples V`: a remote-sensing accuracy assessment."""
    if len(args.pairs) != 1:
        raise InputError("evaluate", "with --samples give one segment output (directory or "
                         "labels.tif)")
    from pipeline.evaluation.sample_eval import resolve_map

    resolve_map(args.pairs[0])
    for path in args.samples:
        if "=" not in path and not Path(path).exists() and not path.startswith("/vsi"):
            raise InputError(path, "file not found")
    from flows.samples_flows import evaluate_samples_flow

    with flow_run():
        result = evaluate_samples_flow(args.pairs[0], [str(s) for s in args.samples],
                                       str(args.out), class_field=args.class_field,
                                       class_table=args.classes, design=args.design)
    r = result["report"]
    line = f"overall accuracy {100 * r['overall_accuracy']:.1f} % on {r['n']} sample pixels"
    aw = r.get("area_weighted")
    if aw and aw["overall_accuracy"]["estimate"] is not None:
        oa = aw["overall_accuracy"]
        margin = "" if oa["margin95"] is None else f" ± {100 * oa['margin95']:.1f}"
        line += f"; area-weighted {100 * oa['estimate']:.1f}{margin} % (95 %)"
    print(line)
    for c in r["classes"]:
        ua, pa = c["users_accuracy"], c["producers_accuracy"]
        print(f"  {c['name']:20s} user's {'-' if ua is None else f'{100 * ua:5.1f}'}  "
              f"producer's {'-' if pa is None else f'{100 * pa:5.1f}'}")
    for w in r["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    for name, path in result["files"].items():
        print(f"  {name:9s} {path}")
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    """`stego suggest`: where to label next."""
    refuse_remote(args.out, "--out")
    if args.n < 1:
        raise InputError("--n", "must be at least 1")
    if args.interior < 0:
        raise InputError("--interior", "must be 0 or more pixels")
    from pipeline.evaluation.suggest import read_run_blocks

    read_run_blocks(args.run)  # fail fast with a clear error, before Prefect
    from flows.samples_flows import suggest_flow

    with flow_run():
        result = suggest_flow(str(args.run), str(args.out), n=args.n, seed=args.seed,
                              class_field=args.class_field, interior=args.interior)
    print(f"{result['points']} points to label in {result['path']} (fill in "
          f"'{args.class_field}', then pass it to `stego fit --samples`)")
    for name, k in result["per_predicted_class"].items():
        print(f"  {k:4d} where the map says {name}")
    return 0


def cmd_sample_points(args: argparse.Namespace) -> int:
    """`stego sample-points`: a stratified random validation sample of a map."""
    refuse_remote(args.out, "--out")
    if args.per_class < 2:
        raise InputError("--per-class", "must be at least 2 (variances need two per stratum)")
    import numpy as np
    import rasterio

    from pipeline.evaluation.sample_eval import resolve_map
    from pipeline.io.sample_points import stratified_points, write_points

    path, _ = resolve_map(args.run)
    if path.suffix == ".zarr":
        raise InputError(path, "give the run directory or its labels.tif")
    rows, cols, values = stratified_points(path, args.per_class, args.seed)
    with rasterio.open(path) as ds:
        transform, crs = tuple(ds.transform)[:6], ds.crs.to_wkt() if ds.crs else None
    order = np.random.default_rng(args.seed).permutation(len(rows))  # ids do not reveal strata
    rows, cols = rows[order], cols[order]
    fields = {"id": np.arange(1, len(rows) + 1, dtype=np.int32),
              args.class_field: np.array([None] * len(rows), dtype=object)}
    out = write_points(args.out, rows, cols, transform, crs, fields, layer="validation")
    counts = np.bincount(values)
    print(f"{len(rows)} points in {out} ({', '.join(str(c) for c in counts[counts > 0])} per "
          f"map class): fill in '{args.class_field}' without looking at the map, then\n"
          f"  stego evaluate {args.run} --samples {out} --class-field {args.class_field} "
          "--design stratified --out eval/")
    return 0
