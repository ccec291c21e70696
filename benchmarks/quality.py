"""Segmentation quality on the labelled sets in ../shared/data; prints one table.

    python benchmarks/quality.py [--sets potsdam loveda demo] [--weights random|hub|PATH|DIR ...]
        [--pretrain-minutes 15] [--quick] [--methods pixel-kmeans feature-kmeans stego stego-crf
        threshold region edge pixel-kmeans+regions ...]
        [--backbone PRESET] [--backbone-arg depth=2 ...] [--precision auto fp32 bf16]

With ``--pretrain-minutes M`` it first runs `stego pretrain` for M minutes on the four real
images (the Potsdam crop, LoveDA tiles 0 and 1, the NAIP tile; bands 1-3) and adds the
resulting backbone directory to ``--weights``, so self-pretrained rows sit beside the random
ones. Every backbone method is run once per weights value.

For each set and method it runs `stego fit` on the set's images (clusters = number of classes),
`stego segment` on each image (STEGO twice: --no-crf and --crf), then scores all of the set's
images together with `pipeline.evaluation.evaluate` (one confusion matrix, Hungarian matching).
With several ``--precision`` values each method is segmented once per precision (the precision
that ran, from run.json, is a column) and "agree %" compares its labels with the first one's:

- potsdam: the ISPRS Potsdam 512 px crop, Potsdam-3 (STEGO's merge), value 0 ignored.
- loveda:  LoveDA tiles 0 and 1, the 7 LoveDA classes, value 0 (no-data) ignored.
- demo:    the generated demo scene (1024 px, seed 0; never pretrained on), its 5 classes.

With random backbone weights (the default: the model hub is unreachable offline) the numbers
say how the pipeline behaves, not what STEGO achieves; pass --weights with a DINO checkpoint for
meaningful ones. The sets are tiny, so the numbers are noisy either way.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402
from peers import agreement  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = ROOT.parent / "shared" / "data"
METHODS = {  # name -> (fit method, segment flags)
    "pixel-kmeans": ("pixel-kmeans", []),
    "feature-kmeans": ("feature-kmeans", []),
    "stego": ("stego", ["--no-crf"]),
    "stego-crf": ("stego", ["--crf"]),
    # STEGO's evaluation averages the codes of each image and its mirror (issue 32)
    "stego-flip": ("stego", ["--no-crf", "--set", "model.flip=true"]),
    "stego-crf-flip": ("stego", ["--crf", "--set", "model.flip=true"]),
    # the classic segmenters (issue 15) and the region-based refinement of any method
    "threshold": ("threshold", []),
    "region": ("region", []),
    "edge": ("edge", []),
    "pixel-kmeans+regions": ("pixel-kmeans", ["--refine", "regions"]),
    "threshold+regions": ("threshold", ["--refine", "regions"]),
    "region+regions": ("region", ["--refine", "regions"]),
    "edge+regions": ("edge", ["--refine", "regions"]),
    "feature-kmeans+regions": ("feature-kmeans", ["--refine", "regions"]),
    "stego+regions": ("stego", ["--no-crf", "--refine", "regions"]),
}
NO_BACKBONE = {"pixel-kmeans", "threshold", "region", "edge"}


def sets(work: Path) -> dict[str, dict]:
    """The labelled sets: images, labels, mapping, ignored values, number of classes."""
    from pipeline.demo import write_demo_scene

    demo_image = work / "demo" / "scene.tif"
    if not demo_image.exists():
        demo_image.parent.mkdir(parents=True, exist_ok=True)
        write_demo_scene(demo_image, size=1024, seed=0)
    loveda_map = work / "loveda_mapping.csv"
    with open(DATA / "loveda" / "classes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = ["value,class"] + [
        f"{r['value']},{'ignore' if r['ignore'] == 'yes' else r['name']}" for r in rows]
    loveda_map.write_text("\n".join(lines) + "\n")
    n_loveda = sum(r["ignore"] != "yes" for r in rows)
    pots = DATA / "isprs_potsdam"
    return {
        "potsdam": {"images": [pots / "images" / "2_10_0_0_512_512.png"],
                    "labels": [pots / "labels" / "2_10_0_0_512_512.png"],
                    "mapping": "potsdam3", "ignore": [0], "classes": 3},
        "loveda": {"images": [DATA / "loveda" / "images" / f"{i}.png" for i in (0, 1)],
                   "labels": [DATA / "loveda" / "labels" / f"{i}.png" for i in (0, 1)],
                   "mapping": str(loveda_map), "ignore": [0], "classes": n_loveda},
        "demo": {"images": [demo_image], "labels": [work / "demo" / "scene_labels.tif"],
                 "mapping": None, "ignore": [], "classes": 5},
    }


PRETRAIN_IMAGES = [DATA / "isprs_potsdam" / "images" / "2_10_0_0_512_512.png",
                   DATA / "loveda" / "images" / "0.png", DATA / "loveda" / "images" / "1.png",
                   DATA / "naip_north_dakota" / "m_4709963_se_14_1_20200831.tif"]


def stego_cmd() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "stego"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "flows.cli"]


def run(args: list[str], log: Path) -> float:
    """Run a `stego` command; its output goes to ``log``. Returns the wall time."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(args)}\n"
                         + "\n".join(tail))
    return time.perf_counter() - t0


def label_agreement(a: list[Path], b: list[Path]) -> float:
    """% of the pixels labelled in ``a`` (not nodata) that carry the same label in ``b``."""
    pairs = [agreement(pa, pb) for pa, pb in zip(a, b, strict=True)]
    return sum(pct * n for pct, n in pairs) / max(sum(n for _, n in pairs), 1)


def weights_used(model_dir: Path) -> str:
    meta = json.loads((model_dir / "model.json").read_text())
    info = (meta.get("backbone") or {}).get("weights")
    if not info:
        return "-"
    if info["source"] == "directory":
        return f"self-pretrained ({info.get('steps')} steps)"
    return info["source"] if info["source"] != "file" else f"file {Path(info['path']).name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["potsdam", "loveda", "demo"],
                    choices=["potsdam", "loveda", "demo"])
    ap.add_argument("--methods", nargs="+", default=["pixel-kmeans", "feature-kmeans", "stego",
                    "stego-crf"], choices=list(METHODS), help="NAME+regions: segmented with "
                    "--refine regions")
    ap.add_argument("--weights", nargs="+", default=["random"], help="backbone weights for "
                    "fit, one set of rows each: random (default), hub, auto, a checkpoint path "
                    "or a backbone directory")
    ap.add_argument("--pretrain-minutes", type=float, default=None,
                    help="first pretrain a backbone for this long on the four real images")
    ap.add_argument("--backbone", default=None,
                    help="preset or timm name for the backbone methods, e.g. dinov2-b14 with "
                    "--weights dinov2_vitb14_pretrain.pth (see `stego backbones`)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for `stego fit`, e.g. stego.input_scale=0.5")
    ap.add_argument("--backbone-arg", action="append", default=[], metavar="K=V",
                    help="passed to `stego fit` (e.g. depth=2 for a quick smoke run)")
    ap.add_argument("--crops", type=int, default=64, help="fit.crops (default 64)")
    ap.add_argument("--steps", type=int, default=500, help="stego.steps (default 500)")
    ap.add_argument("--quick", action="store_true", help="16 crops and 100 STEGO steps")
    ap.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"],
                    help="model.precision for segment, one row each (default auto)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (kept)")
    args = ap.parse_args()
    if args.quick:
        args.crops, args.steps = min(args.crops, 16), min(args.steps, 100)
    missing = [p for p in (DATA / "isprs_potsdam", DATA / "loveda") if not p.exists()]
    if missing:
        raise SystemExit(f"shared data not found: {', '.join(map(str, missing))}")

    from pipeline.evaluation import EvalPair, evaluate

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    print(f"work directory: {work} (command output in {log.name})", file=sys.stderr)
    stego = stego_cmd()
    common = ["--set", "dask.processes=false", "--set", "dask.workers=1"]
    weights_list = list(args.weights)
    pretrain_s = None
    if args.pretrain_minutes:
        backbone = work / "backbone"
        print(f"pretrain {args.pretrain_minutes:g} min ...", file=sys.stderr)
        pretrain_s = run([*stego, "pretrain", *map(str, PRETRAIN_IMAGES), "--bands", "1,2,3",
                          "--minutes", str(args.pretrain_minutes), "--out", str(backbone)], log)
        weights_list.append(str(backbone))
    rows = []
    jobs = [(name, w) for name in args.methods
            for w in (["-"] if METHODS[name][0] in NO_BACKBONE else weights_list)]
    for set_name in args.sets:
        spec = sets(work)[set_name]
        fitted: dict[tuple[str, str], tuple[Path, float]] = {}
        for name, weights in jobs:
            method, seg_flags = METHODS[name]
            tag = "" if weights == "-" else f"-w{weights_list.index(weights)}"
            model = work / set_name / f"model-{method}{tag}"
            if (method, weights) not in fitted:
                cmd = [*stego, "fit", *map(str, spec["images"]), "--method", method,
                       "--clusters", str(spec["classes"]), "--out", str(model),
                       "--set", f"fit.crops={args.crops}", "--set", f"stego.steps={args.steps}",
                       *common]
                if method not in NO_BACKBONE:
                    cmd += ["--weights", weights]
                    if args.backbone:
                        cmd += ["--backbone", args.backbone]
                for kv in args.set:
                    cmd += ["--set", kv]
                    for kv in args.backbone_arg:
                        cmd += ["--backbone-arg", kv]
                print(f"[{set_name}] fit {method} ({weights}) ...", file=sys.stderr)
                fitted[(method, weights)] = (model, run(cmd, log))
            model, fit_s = fitted[(method, weights)]
            first: list[Path] | None = None
            ran: set[str] = set()
            for prec in args.precision:
                pairs, seg_s = [], 0.0
                for image, label in zip(spec["images"], spec["labels"], strict=True):
                    out = work / set_name / f"{name}{tag}" / prec / image.stem
                    print(f"[{set_name}] segment {name} {image.name} ({prec}) ...",
                          file=sys.stderr)
                    seg_s += run([*stego, "segment", str(image), "--model", str(model),
                                  "--out", str(out), "--fresh", "-q", *seg_flags, *common,
                                  "--set", f"model.precision={prec}"], log)
                    pairs.append(EvalPair(str(out / "labels.tif"), str(label), str(image)))
                used = json.loads((out / "run.json").read_text())["precision"]
                if used in ran:  # e.g. auto = fp32 here, or no backbone (pixel-kmeans)
                    continue
                ran.add(used)
                preds = [Path(p.pred) for p in pairs]
                agree = 100.0 if first is None else label_agreement(first, preds)
                first = first or preds
                m = evaluate(pairs, mapping=spec["mapping"], ignore=spec["ignore"])
                (out.parent / "metrics.json").write_text(json.dumps(m, indent=2))
                rows.append([set_name, name, used, f"{m['accuracy']:.1f}", f"{m['mIoU']:.1f}",
                             f"{agree:.2f}",
                             weights_used(model) if method not in NO_BACKBONE else "-",
                             f"{fit_s:.0f}", f"{seg_s:.0f}"])
    head = ["set", "method", "precision", "accuracy %", "mIoU %", "agree %", "weights", "fit s",
            "segment s"]
    pretrained = (f", pretraining {args.pretrain_minutes:g} min ({pretrain_s:.0f} s with "
                  "start-up)" if pretrain_s else "")
    print(f"\ncrops={args.crops}, stego steps={args.steps}, weights={weights_list}, "
          f"backbone={args.backbone or 'default'}, backbone args={args.backbone_arg or '-'}"
          f"{pretrained}, {os.cpu_count()} CPU cores")
    print_table(head, rows)


if __name__ == "__main__":
    main()
