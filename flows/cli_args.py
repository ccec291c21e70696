"""The `stego` command line's arguments: subcommands, flags, help texts and examples."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flows.locations import location
from pipeline.errors import InputError

EXAMPLES = {
    "fit": """examples:
  stego fit tiles/*.tif --weights dino_deitsmall8_300ep_pretrain.pth --clusters 5 --out models/s
  stego fit top_potsdam_*.tif --config configs/potsdam.yaml --weights dino.pth --out models/p
  stego fit scene.tif --labels scene_labels.tif --label-ignore 0 --out models/eval
  stego fit scene.tif --method pixel-kmeans --clusters 5 --out models/px
  stego fit scene.tif --method threshold --clusters 3 --out models/otsu     # brightness
  stego fit naip.tif --bands 4,1,2 --method threshold --set threshold.index=ndvi \\
      --set threshold.nir_band=4 --clusters 3 --out models/ndvi
  stego fit scene.tif --method region --clusters 5 --out models/srg   # or --method edge
  stego fit a.tif b.tif --method feature-kmeans --weights dino_deitsmall8_pretrain.pth \\
      --clusters 6 --out models/dino
  stego fit naip.tif --bands 1,2,3 --method feature-kmeans --weights random --out models/r
  stego fit scene.tif --samples clicks.gpkg --class-field class --out models/mine  # few labels
  stego fit a.tif b.tif --samples rois.shp footprints.gpkg=building --out models/mine
  stego fit scene.tif --samples truth.tif --classes classes.csv --out models/mine""",
    "pretrain": """examples:
  stego pretrain scene.tif --out backbones/scene            # 5 minutes (the default budget)
  stego pretrain a.tif b.tif --minutes 60 --out backbones/site
  stego pretrain naip.tif --bands 1,2,3 --steps 400 --seed 1 --out backbones/naip
  stego fit scene.tif --weights backbones/scene --out models/scene   # then use it
  (a killed run resumes from its last checkpoint when started again with the same recipe)""",
    "backbones": """examples:
  stego backbones                          # presets, and whether this machine has their files
  stego backbones --search /data/weights   # also look for downloaded checkpoints there
  stego fit scene.tif --backbone dinov2-b14 --weights dinov2_vitb14_pretrain.pth --out m/v2""",
    "segment": """examples:
  stego segment scene.tif --model models/px --out out/scene
  stego segment scene.tif --model models/px --out out/clean --refine regions
  stego segment big.tif --model models/dino --out out/big --workers 2 --set tiling.batch_size=16
  stego segment big.tif --model models/dino --out out/big --scheduler-address tcp://host:8786""",
    "segment-folder": """examples:
  stego segment-folder 'scenes/*.tif' --model models/px --out-root out/
  stego segment-folder 's3://scenes/2024/**/*.tif' --model s3://models/px \\
      --out-root s3://results/2024 --scheduler-address tcp://host:8786
  (a scene already done with the same model and config is skipped; in a bucket, only one
  whose MANIFEST.json is there: an unfinished upload is done again)""",
    "demo-scene": """examples:
  stego demo-scene demo/scene.tif            # also writes demo/scene_labels.tif
  stego demo-scene small.tif --size 512 --seed 3""",
    "import-checkpoint": """examples:
  stego import-checkpoint potsdam_test.ckpt --out models/potsdam --input-scale 0.5 --crf
  (the file is read with a restricted unpickler: only tensors and plain containers)""",
    "evaluate": """examples:
  stego evaluate out/labels.tif potsdam_label.tif --mapping potsdam3 --ignore 0 --out eval/
  stego evaluate a/labels.tif a_gt.tif b/labels.zarr b_gt.tif --out eval/   # one matrix
  stego evaluate out/labels.tif buildings.gpkg --out eval/   # vector ground truth
  # accuracy.json/.md: error matrix, user's/producer's accuracy, class areas ± 95 %:
  stego evaluate out/ --samples validation.gpkg --class-field class --design stratified \\
      --out eval/""",
    "sample-points": """examples:
  stego sample-points out/ --per-class 50 --out validation.gpkg
  stego evaluate out/ --samples validation.gpkg --design stratified --out eval/""",
    "suggest": """examples:
  stego suggest out/ --n 30 --out next.gpkg    # fill in 'class' in QGIS, then:
  stego fit scene.tif --samples clicks.gpkg next.gpkg --class-field class --out models/v2""",
    "name-clusters": """examples:
  stego name-clusters models/potsdam --from eval/metrics.json
  stego name-clusters models/potsdam --from names.yaml   # {0: roads, 1: [roofs, "#c83c28"]}
  stego name-clusters models/potsdam --from clicks.gpkg --class-field class""",
    "deploy": """examples:
  stego server start       # or: export PREFECT_API_URL=http://HOST:4200/api
  stego deploy --name nightly --cron "0 2 * * *" --input-glob 'scenes/*.tif' \\
      --model models/potsdam --out-root out/
  (serves until stopped; scenes already done with the same model and config are skipped)""",
    "run-deployment": """examples:
  stego run-deployment nightly
  stego run-deployment nightly --param input_glob='new/*.tif' --watch""",
    "server": """examples:
  stego server start            # a Prefect server in the background (~/.stego/server)
  stego segment scene.tif --model models/px --out out/scene   # uses it: no start-up wait
  stego server status           # running, its API URL, UI, pid and log; exit 3 when not
  stego server stop
  stego server start --port 4300 --no-ui --home /srv/stego-prefect
  (runs find it through HOME/server.json; PREFECT_API_URL, when set, always wins)""",
    "demo": """examples:
  stego demo demo/                       # scene -> pretrain -> fit x3 -> segment -> evaluate
  stego demo demo/ --pretrain-minutes 10 # a longer pretraining
  stego demo demo/ --weights dino_deitsmall8_pretrain.pth   # a pretrained DINO file instead""",
}


METHOD_CHOICES = ("stego", "pixel-kmeans", "feature-kmeans", "threshold", "region", "edge",
                  "classifier")
# what `stego demo` fits
DEMO_METHOD_CHOICES = ("stego", "pixel-kmeans", "feature-kmeans", "classifier")


class _Parser(argparse.ArgumentParser):
    """argparse with single-line `error: usage: ...` messages and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(self.prog, message)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated integers, got '{text}'"
        raise argparse.ArgumentTypeError(msg) from None


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got '{text}'")
    import yaml

    k, v = text.split("=", 1)
    return k, yaml.safe_load(v)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SEC.KEY=V",
                   help="override one config value, e.g. --set tiling.block_size=1024")
    p.add_argument("--bands", type=_int_list, help="1-based bands to use, e.g. 1,2,3 or 1,1,1")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")


def _gsd(text: str) -> float | str:
    if text == "native":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not metres per pixel or 'native'") \
            from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `stego` argument parser."""
    parser = _Parser(prog="stego", description="Unsupervised semantic maps from large "
                     "GeoTIFFs (STEGO); each command triggers a Prefect flow.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    fit = add("fit", "Fit a segmentation model on one or more rasters: unsupervised, or in "
              "your classes from a few samples (--samples).")
    fit.add_argument("inputs", nargs="+", help="rasters GDAL can open")
    fit.add_argument("--method", choices=METHOD_CHOICES,
                     help="stego (default), or a baseline: pixel-kmeans, feature-kmeans, "
                     "threshold (multi-level Otsu on an index), region (seeded region "
                     "growing), edge (Canny edges closed into regions), classifier (your "
                     "classes from --samples; the default with --samples)")
    fit.add_argument("--clusters", type=int, help="number of classes (default 5)")
    fit.add_argument("--weights", help="backbone weights: auto (default), hub, random or a "
                     "local file (stego, feature-kmeans)")
    fit.add_argument("--backbone", help="a preset (see `stego backbones`, e.g. dinov2-b14) or "
                     "a timm model name (default vit_small_patch8_224.dino = dino-s8)")
    fit.add_argument("--gsd", type=_gsd, metavar="METRES|native",
                     help="ground sampling distance to run the backbone at (stego, "
                     "feature-kmeans); default: a preset's own (see `stego backbones`)")
    fit.add_argument("--backbone-arg", type=_kv, action="append", default=[], metavar="K=V",
                     help="timm create_model override, e.g. depth=2 (tests, experiments)")
    fit.add_argument("--embed-weights", action="store_true",
                     help="store backbone weights inside the model directory")
    fit.add_argument("--out", required=True, type=location,
                     help="model directory to write (or an s3://, gs://, az:// URL)")
    fit.add_argument("--labels", nargs="+", metavar="LABELS.tif",
                     help="STEGO only, for evaluation: label rasters (one per input, class "
                     "indices) to train a linear probe on the codes; the head never sees them")
    fit.add_argument("--label-ignore", type=_int_list, default=[],
                     help="label values to ignore, e.g. 0")
    fit.add_argument("--samples", nargs="+", metavar="SAMPLES",
                     help="training samples in your classes (method classifier): points or "
                     "polygons in any vector GDAL reads, or a label raster (nodata = "
                     "unlabelled); FILE=NAME gives every feature of FILE the class NAME")
    fit.add_argument("--class-field", help="--samples: the class attribute (integer or text; "
                     "default: a common name such as class, Classname, C_ID)")
    fit.add_argument("--classes", metavar="TABLE",
                     help="--samples: CSV or YAML class table: value,name[,color]")
    _add_config_args(fit)

    pre = add("pretrain", "Self-supervised DINO pretraining of a ViT backbone on your rasters.")
    pre.add_argument("inputs", nargs="+", help="rasters GDAL can open")
    pre.add_argument("--out", required=True, type=location,
                     help="backbone directory to write (or an s3://, gs://, az:// URL)")
    budget = pre.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="wall-clock budget (default 5)")
    budget.add_argument("--steps", type=int, help="step budget (exact, reproducible)")
    pre.add_argument("--seed", type=int, help="random seed (default 0)")
    pre.add_argument("--backbone", dest="pretrain_backbone",
                     help="timm ViT to pretrain (default vit_small_patch8_224, 4 blocks, 192)")
    pre.add_argument("--backbone-arg", type=_kv, action="append", default=[], metavar="K=V",
                     help="timm create_model overrides replacing the default ones, e.g. depth=6")
    pre.add_argument("--fresh", action="store_true", help="ignore an earlier run's checkpoint")
    _add_config_args(pre)

    seg = add("segment", "Segment a raster into labels.tif, labels.zarr and polygons.gpkg.")
    seg.add_argument("input", help="raster GDAL can open (GeoTIFF, VRT, PNG, /vsi... path)")
    seg.add_argument("--model", required=True, type=location,
                     help="model directory from `fit` (or its s3://, gs://, az:// URL)")
    seg.add_argument("--out", required=True, type=location, help="output directory")
    seg.add_argument("--workers", type=int, help="Dask LocalCluster workers")
    seg.add_argument("--scheduler-address", help="existing Dask scheduler, e.g. tcp://h:8786")
    seg.add_argument("--fresh", action="store_true", help="ignore blocks done by an earlier run")
    seg.add_argument("--force-unlock", action="store_true",
                     help="remove another run's lock on --out whatever its state (a run known "
                     "to be dead whose lease has not lapsed yet); a warning names it")
    seg.add_argument("--progress", choices=["auto", "bar", "lines", "json", "off"],
                     default="auto", help="progress on stderr (auto: a bar on a terminal)")
    seg.add_argument("--json", action="store_true",
                     help="print run.json's content on stdout (for scripts and cron)")
    seg.add_argument("--crf", action=argparse.BooleanOptionalAction, default=None,
                     help="dense CRF post-processing of each tile, any model (the few-labels "
                     "classifier: 1-8 points more accuracy; default: the model's own, "
                     "STEGO as fitted, else off)")
    seg.add_argument("--datetime", metavar="ISO",
                     help="acquisition time for item.json, e.g. 2024-05-17T10:30:00Z "
                     "(default: the input's TIFF date tag, else the processing time)")
    seg.add_argument("--refine", choices=["none", "regions"],
                     help="regions: average class probabilities within superpixels before "
                     "blending (any method; default: model.refine, else the model's own: "
                     "regions for the few-labels classifier, none for the others)")
    _add_config_args(seg)

    sf = add("segment-folder", "Segment every scene a glob matches (local, or in a bucket: "
             "s3://, gs://, az://) into OUT_ROOT/<scene stem>/, skipping finished ones.")
    sf.add_argument("input_glob", metavar="GLOB",
                    help="scenes, e.g. 'in/*.tif', 'in/**/*.tif' or 's3://bucket/in/*.tif' "
                    "(quote it)")
    sf.add_argument("--model", required=True, type=location,
                    help="model directory from `fit` (or its s3://, gs://, az:// URL)")
    sf.add_argument("--out-root", required=True, type=location,
                    help="OUT_ROOT/<scene stem>/ per scene (a folder, or an s3://, gs://, "
                    "az:// URL: each scene published as `segment --out URL` does)")
    sf.add_argument("--workers", type=int, help="Dask LocalCluster workers")
    sf.add_argument("--scheduler-address", help="existing Dask scheduler, e.g. tcp://h:8786")
    sf.add_argument("--json", action="store_true",
                    help="print the summary (processed, skipped, failed) as JSON on stdout")
    _add_config_args(sf)

    bbs = add("backbones", "List the backbone presets (--backbone NAME): timm name, patch, "
              "feature size, normalisation, licence, the file to download and whether it is here.")
    bbs.add_argument("--search", action="append", type=Path, default=[], metavar="DIR",
                     help="folder to look for downloaded checkpoints (repeatable; always: the "
                     "current folder and $STEGO_WEIGHTS_DIR)")
    bbs.add_argument("--json", action="store_true", help="print the presets as JSON")

    scene = add("demo-scene", "Write a synthetic aerial GeoTIFF and its true labels.")
    scene.add_argument("out", type=Path, help="image path; labels go to <stem>_labels.tif")
    scene.add_argument("--size", type=int, default=2560, help="pixels per side (default 2560)")
    scene.add_argument("--seed", type=int, default=0, help="random seed of the scene (default 0)")

    imp = add("import-checkpoint", "Convert an official STEGO checkpoint into a model directory.")
    imp.add_argument("checkpoint", type=Path, help="STEGO Lightning .ckpt")
    imp.add_argument("--out", required=True, type=location,
                     help="model directory to write (or an s3://, gs://, az:// URL)")
    imp.add_argument("--backbone-arg", type=_kv, action="append", default=[], metavar="K=V",
                     help="timm create_model override for non-standard backbone sizes")
    imp.add_argument("--input-scale", type=float, default=1.0,
                     help="resample input before the backbone (0.5: 5 cm imagery at 10 cm)")
    imp.add_argument("--crf", action="store_true", help="dense CRF on each tile at inference")
    imp.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")

    ev = add("evaluate", "Hungarian-matched accuracy and mIoU against ground truth.")
    ev.add_argument("pairs", nargs="+", metavar="PRED GT",
                    help="labels.tif/labels.zarr and its ground truth (raster or vector), "
                    "repeated for several pairs")
    ev.add_argument("--mapping", help="potsdam3, potsdam6, or a CSV/YAML value -> class file")
    ev.add_argument("--ignore", type=int, nargs="+", default=[], metavar="V",
                    help="ground-truth values to leave out (e.g. 0)")
    ev.add_argument("--class-field", help="vector ground truth: the class attribute")
    ev.add_argument("--image", help="the input image, shown in preview.png")
    ev.add_argument("--samples", nargs="+", metavar="SAMPLES",
                    help="validation samples (points/polygons or a label raster, as `fit "
                    "--samples` reads them); then PRED is one segment output directory or "
                    "labels.tif, and the report is a remote-sensing accuracy assessment")
    ev.add_argument("--design", choices=["none", "simple", "stratified"], default="none",
                    help="--samples: how they were drawn; stratified (by map class) or simple "
                    "random adds area-weighted accuracy and class areas with 95 %% intervals "
                    "(Olofsson et al. 2014); none (e.g. hand-drawn): plain counts")
    ev.add_argument("--classes", metavar="TABLE", help="--samples: value,name[,color] table")
    ev.add_argument("--out", required=True, type=location, help="report directory")
    ev.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")

    sg = add("suggest", "Points where a run's model is least certain, spread over the scene "
             "and its classes: a layer to label in QGIS and pass back to `fit --samples`.")
    sg.add_argument("run", type=Path, help="a `stego segment` output directory")
    sg.add_argument("--n", type=int, default=30, help="points to suggest (default 30)")
    sg.add_argument("--out", required=True, type=location, help="GeoPackage to write")
    sg.add_argument("--seed", type=int, default=0, help="breaks ties (default 0)")
    sg.add_argument("--interior", type=int, default=3, metavar="PX",
                    help="only points PX pixels or more inside one predicted class, ranked "
                    "by the mean confidence around them: uncertain areas, not class edges "
                    "(default 3; 0: any pixel)")
    sg.add_argument("--class-field", default="class",
                    help="name of the empty field to fill in (default class)")
    sg.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")

    sp = add("sample-points", "A stratified random validation sample of a map (strata: its "
             "classes), to label blind and score with `evaluate --samples --design stratified`.")
    sp.add_argument("run", type=Path, help="a `stego segment` output directory or labels.tif")
    sp.add_argument("--per-class", type=int, default=50,
                    help="points per map class (default 50; Olofsson et al. advise 50-100)")
    sp.add_argument("--out", required=True, type=location, help="GeoPackage to write")
    sp.add_argument("--seed", type=int, default=0, help="random seed of the draw (default 0)")
    sp.add_argument("--class-field", default="class", help="the empty field to fill in")

    nc = add("name-clusters", "Give a model's clusters class names (and colours).")
    nc.add_argument("model", type=location, help="model directory")
    nc.add_argument("--from", dest="source", required=True, type=Path,
                    help="metrics.json from `stego evaluate`, a YAML/CSV cluster -> name file, "
                    "or samples (points/polygons/label raster): each cluster takes the class "
                    "most of its samples have")
    nc.add_argument("--class-field", help="samples: the class attribute")
    nc.add_argument("--image", nargs="+", type=Path, default=[], metavar="IN.tif",
                    help="samples: rasters they lie on (default: those the model was fit on)")
    nc.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")

    dep = add("deploy", "Serve a scheduled deployment that segments every new scene in a folder.")
    dep.add_argument("--name", required=True, help="deployment name")
    dep.add_argument("--cron", help='schedule, e.g. "0 2 * * *" (needs a Prefect server)')
    dep.add_argument("--timezone", help="for the cron schedule, e.g. Europe/Berlin")
    dep.add_argument("--input-glob", required=True, help="scenes to process, e.g. 'in/*.tif'")
    dep.add_argument("--model", required=True, type=location,
                     help="model directory (or its s3://, gs://, az:// URL)")
    dep.add_argument("--out-root", required=True, type=location, help="OUT_ROOT/<scene stem>/")
    dep.add_argument("--config", type=Path, help="YAML run config")
    dep.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="SEC.KEY=V", help="override one config value")

    rd = add("run-deployment", "Trigger a run of a served or deployed segment-folder flow.")
    rd.add_argument("name", help="deployment name (or FLOW/DEPLOYMENT)")
    rd.add_argument("--param", action="append", default=[], metavar="K=V",
                    help="flow parameter override (YAML-typed)")
    rd.add_argument("--watch", action="store_true", help="wait for the run to finish")
    rd.add_argument("--timeout", type=float, help="seconds to wait with --watch")

    srv = add("server", "A long-lived local Prefect server in the background that later stego "
              "runs use (no temporary server to start per run).")
    srv.add_argument("action", choices=["start", "stop", "status"],
                     help="start it in the background, stop it, or print its state")
    srv.add_argument("--home", type=Path, help="its directory: state file, log, SQLite "
                     "database (default $STEGO_SERVER_HOME, else ~/.stego/server)")
    srv.add_argument("--port", type=int, help="start: port on 127.0.0.1 (default: a free one)")
    srv.add_argument("--ui", action=argparse.BooleanOptionalAction, default=True,
                     help="start: serve Prefect's web UI too (default on)")
    srv.add_argument("--timeout", type=float, default=120.0,
                     help="start: seconds to wait for it to answer (default 120)")
    srv.add_argument("--json", action="store_true", help="print the state as JSON")

    demo = add("demo", "The whole mission offline: a demo scene, self-supervised pretraining "
               "on it, pixel-kmeans / feature-kmeans / STEGO fitted, and a classifier from 20 "
               "points per class, segmented and scored.")
    demo.add_argument("out", type=Path, help="demo directory")
    demo.add_argument("--size", type=int, default=2560, help="scene pixels per side")
    demo.add_argument("--weights", help="a DINO weights file or a backbone directory to use "
                      "instead of pretraining one on the scene")
    budget = demo.add_mutually_exclusive_group()
    budget.add_argument("--pretrain-minutes", type=float, default=3.0,
                        help="pretraining budget (default 3 minutes)")
    budget.add_argument("--pretrain-steps", type=int, help="pretraining budget in steps")
    demo.add_argument("--method", default="auto", choices=["auto", *DEMO_METHOD_CHOICES],
                      help="whose full outputs go to DIR/output (auto: the best measured)")
    demo.add_argument("--clusters", type=int, default=5,
                      help="clusters of the unsupervised methods (default 5)")
    demo.add_argument("--steps", type=int, default=300,
                      help="STEGO head training steps (default 300)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser
