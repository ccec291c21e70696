"""Few labels: which features and head classify an analyst's few samples best, in-process.

    python benchmarks/few_labels.py --quick                      # smoke check, < 2 min
    python benchmarks/few_labels.py                              # everything, 5 seeds (~80 min)
    # the runs of the reported results, each under 25 min on 2 shared cores:
    python benchmarks/few_labels.py --sets potsdam demo --backbone-dir BACKBONE_DIR  # 21 min
    python benchmarks/few_labels.py --sets loveda \
        --only rgb-rf local default linear superpixels self-training both \
        --designs "5 points" "20 points"                         # 9 min; then the same with
        # --designs "100 points" "3 polygons"                    # 16 min
    python benchmarks/few_labels.py --sets timing                # 1-2 min

Scenes (../shared/data, skipped with a message when absent): the Potsdam 512² crop scored as
Potsdam-3 (value 0 ignored), LoveDA tiles 0 and 1 (each on the classes present in it, 0
ignored), and the 1024² demo scene of `stego demo-scene --size 1024 --seed 0` (255 ignored).
Every pixel's features are computed once per scene, each from the 544² segment tile that owns
it, through fit's own ``sample_features`` (the same numbers `stego fit` gives a labelled
pixel); RGB and RGB + local are the first 3 and 21 columns (radii 2, 4, 8). Then, per sample
design (5, 20, 100 random labelled pixels per class; 3 "polygons" per class: discs of radius
5-15 px around random centres inside the class, the disc's pixels of that class, <= 200 per
disc) and seed, each row fits on the drawn pixels and predicts every pixel; accuracy and mIoU
(%) count every labelled pixel that was not a training pixel. The seeds draw the samples; the
head's own seed stays 0, as in `stego fit`.

Rows: RGB-only random forest (scikit-learn, 100 trees: what SCP / dzetsaka give), RGB + local
statistics (trees), the default (RGB + local + untrained tiny ViT, ExtraTrees 100 via
``train_head`` with ``ClassifierConfig()``), its linear head and 25 / 50 / 200 trees, a
`stego pretrain` backbone directory (``--backbone-dir``), and semi-supervised variants of the
default on the same samples: superpixels (probabilities averaged within SLIC superpixels of
~256 px, ``pipeline.models.refine``, as `--refine regions`; the means over every pixel, or
over every 4th (segment's default) or 2nd pixel of a lattice), self-training (the 2 % most
confident pixels of each predicted class, at most 1000 per class, added as pseudo-labels and
the head refitted once), and both (pseudo-labels from the averaged probabilities, refitted,
averaged again), and propagation (label spreading over the scene's superpixels, each
unlabelled superpixel's spread class distilled into the trees as pseudo-labels, at most 1000
pixels per class; then segment's averaging); and crf (segment's averaging, then the dense
CRF `segment --crf` adds, on the whole scene reduced 4x as segment reduces each tile, or at
full resolution). The second table per scene gives each
semi-supervised row's paired gain over the default (mean over seeds, and on how many seeds
mIoU rose).

"fit s": what `stego fit` would spend, the 544² tiles owning the samples times one tile's
feature time, plus head training (self-training: every tile's features, a prediction and a
second fit on top). "predict s/MP": per megapixel of model input, one tile's feature time plus
the head over its pixels (plus SLIC for superpixels). Both are wall-clock on whatever
else the machine runs: compare them within one run. The timing set runs the real
``fit_classifier`` on a 2048² demo scene with 20 points per class read from a GeoPackage, and
times ``predict`` per 544² tile, float32 on CPU, against feature-kmeans on the same backbone.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _few_labels_data as fd  # noqa: E402
from _table import print_table  # noqa: E402

from pipeline.models.crf_refine import CRF_SCALE  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TILE_PIXELS = fd.TILING["tile_size"] ** 2
SELF_TRAIN_SHARE, SELF_TRAIN_CAP = 0.02, 1000
PROPAGATION_NEIGHBOURS, PROPAGATION_ALPHA, PROPAGATION_CAP = 20, 0.5, 1000


@dataclass(frozen=True)
class Row:
    """One row: a feature set and a head (``rf``, ``trees``, ``linear``) or a variant of the
    default (``superpixels``, ``self-training``, ``both``)."""

    key: str
    label: str
    features: str = "vit"
    head: str = "trees"
    trees: int = 100
    semi: str = ""
    stride: int = 1  # superpixel means from every stride-th pixel (semi "superpixels")


ROWS = [
    Row("rgb-rf", "RGB, random forest 100 (SCP / dzetsaka)", "rgb", "rf"),
    Row("local", "RGB + local, trees 100", "local"),
    Row("default", "RGB + local + tiny ViT, trees 100 (default)"),
    Row("linear", "RGB + local + tiny ViT, linear", head="linear"),
    Row("trees25", "RGB + local + tiny ViT, trees 25", trees=25),
    Row("trees50", "RGB + local + tiny ViT, trees 50", trees=50),
    Row("trees200", "RGB + local + tiny ViT, trees 200", trees=200),
    Row("pretrained", "RGB + local + pretrained ViT (--backbone-dir), trees 100", "dir"),
    Row("stego", "RGB + local + a STEGO model's ViT + its codes (--stego-model), trees 100",
        "stego"),
    Row("superpixels", "default + superpixels", semi="superpixels"),
    Row("sampled", "default + superpixels, means of every 4th pixel (segment default)",
        semi="superpixels", stride=4),
    Row("sampled2", "default + superpixels, means of every 2nd pixel",
        semi="superpixels", stride=2),
    Row("sampled3-50", "trees 50 + superpixels, means of every 3rd pixel",
        trees=50, semi="superpixels", stride=3),
    Row("self-training", "default + self-training", semi="self-training"),
    Row("both", "default + self-training + superpixels", semi="both"),
    Row("propagation", "default + label propagation over superpixels (segment's averaging)",
        semi="propagation", stride=4),
    Row("crf", "default + superpixels (every 4th px) + dense CRF at 1/4 resolution (--crf)",
        semi="crf", stride=4),
    Row("crf-full", "default + superpixels (every 4th px) + dense CRF at full resolution",
        semi="crf-full", stride=4),
]
QUICK_ROWS = ["rgb-rf", "local", "default", "linear", "superpixels", "sampled",
              "self-training"]


def fit_predict(scene: fd.Scene, row: Row, idx: np.ndarray, y: np.ndarray,
                ) -> tuple[np.ndarray, float, float]:
    """Fit ``row``'s head on the pixels ``idx`` (classes ``y``), predict every pixel:
    (probabilities (N, K), seconds to train, seconds to predict)."""
    import torch

    from pipeline.config.classifier import ClassifierConfig
    from pipeline.fit.samples_fit import train_head
    from pipeline.models.classifier import SampleClassifier

    feats = scene.features[row.features]
    k = scene.n_classes
    t0 = time.perf_counter()
    if row.head == "rf":
        from sklearn.ensemble import RandomForestClassifier

        est = RandomForestClassifier(100, n_jobs=-1, random_state=0).fit(feats[idx], y)
        t1 = time.perf_counter()
        probs = np.zeros((len(feats), k), dtype=np.float32)
        probs[:, est.classes_] = est.predict_proba(feats)
        return probs, t1 - t0, time.perf_counter() - t1
    cfg = ClassifierConfig(head=row.head, trees=row.trees)
    head = train_head(feats[idx], y, k, cfg)
    t1 = time.perf_counter()
    model = SampleClassifier(None, None, row.head, head, scene.class_names,
                             [(0, 0, 0)] * k, [])
    probs = model.classify(torch.from_numpy(feats)).numpy()
    return probs, t1 - t0, time.perf_counter() - t1


def smooth(scene: fd.Scene, probs: np.ndarray, stride: int = 1) -> np.ndarray:
    """Probabilities averaged within the scene's superpixels (over a lattice of every
    ``stride``-th pixel and the superpixels it misses, as `segment` samples them)."""
    from pipeline.models.refine import average_within, sample_mask

    h, w = scene.truth.shape
    mask = None if stride == 1 else sample_mask(scene.segments, stride)
    out = average_within(probs.T.reshape(-1, h, w), scene.segments, mask)
    return np.ascontiguousarray(out.reshape(len(out), -1).T)


def crf(scene: fd.Scene, probs: np.ndarray, scale: int) -> np.ndarray:
    """The dense CRF that `segment` adds (``refine_tiles``, STEGO's settings) on the whole
    scene's probabilities and RGB, reduced ``scale`` x (segment refines each 544² tile: the
    Potsdam crop is one)."""
    import torch

    from pipeline.models.crf_refine import refine_tiles

    h, w = scene.truth.shape
    p = torch.from_numpy(np.ascontiguousarray(probs.T.reshape(1, -1, h, w)))
    rgb = torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1)[None],
                                                dtype=np.float32))
    q = refine_tiles(p, rgb.clamp(0, 1), scale)[0]
    return np.ascontiguousarray(q.numpy().reshape(len(q), -1).T)


def pseudo_labels(scene: fd.Scene, probs: np.ndarray, exclude: np.ndarray, seed: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per predicted class, its 2 % most confident valid pixels (ties included), at most
    1000 drawn at random among them; never a training pixel."""
    rng = np.random.default_rng(seed)
    ok = scene.valid.ravel().copy()
    ok[exclude] = False
    pred, conf = probs.argmax(1), probs.max(1)
    idx, cls = [], []
    for k in range(scene.n_classes):
        cand = np.flatnonzero(ok & (pred == k))
        if not len(cand):
            continue
        top = cand[conf[cand] >= np.quantile(conf[cand], 1 - SELF_TRAIN_SHARE)]
        if len(top) > SELF_TRAIN_CAP:
            top = rng.choice(top, SELF_TRAIN_CAP, replace=False)
        idx.append(top)
        cls.append(np.full(len(top), k, dtype=np.int64))
    return np.concatenate(idx), np.concatenate(cls)


def propagated_labels(scene: fd.Scene, idx: np.ndarray, y: np.ndarray, seed: int,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Label spreading (Zhou et al. 2004; scikit-learn's ``LabelSpreading``, 20-NN graph,
    alpha 0.5) over the scene's superpixels, each a node with its mean standardized features
    and seeded by its samples' majority class; then, per class, at most 1000 pixels drawn
    from the unlabelled superpixels it spread to, as pseudo-labels."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.semi_supervised import LabelSpreading

    seg = scene.segments.ravel()
    n_nodes, k = int(seg.max()) + 1, scene.n_classes
    feats = StandardScaler().fit_transform(scene.features["vit"])
    size = np.bincount(seg, minlength=n_nodes)[:, None]
    nodes = np.stack([np.bincount(seg, feats[:, j], minlength=n_nodes)
                      for j in range(feats.shape[1])], 1) / np.maximum(size, 1)
    votes = np.zeros((n_nodes, k))
    np.add.at(votes, (seg[idx], y), 1)
    seeded = votes.sum(1) > 0
    node_labels = np.where(seeded, votes.argmax(1), -1)
    spread = LabelSpreading(kernel="knn", n_neighbors=PROPAGATION_NEIGHBOURS,
                            alpha=PROPAGATION_ALPHA, max_iter=100).fit(nodes, node_labels)
    spread_to = spread.label_distributions_.argmax(1)
    rng = np.random.default_rng(seed)
    pidx, py = [], []
    for c in range(k):
        pix = np.flatnonzero(np.isin(seg, np.flatnonzero((spread_to == c) & ~seeded)))
        pix = rng.choice(pix, min(len(pix), PROPAGATION_CAP), replace=False)
        pidx.append(pix)
        py.append(np.full(len(pix), c, dtype=np.int64))
    return np.concatenate(pidx), np.concatenate(py)


def trial(scene: fd.Scene, rows: list[Row], design: str, seed: int, all_tiles: int,
          ) -> dict[str, tuple[float, float, float, float]]:
    """Every row on one draw of samples: key -> (acc, mIoU, fit s, predict s/MP)."""
    idx, y = fd.draw(scene, design, seed)
    n = scene.truth.size
    tiles = fd.owner_tile_count(scene, idx)
    default_row = next(r for r in ROWS if r.key == "default")
    cache: dict[int, tuple] = {}

    def default(trees: int = default_row.trees) -> tuple:
        if trees not in cache:
            cache[trees] = fit_predict(scene, Row("default", "", trees=trees), idx, y)
        return cache[trees]

    def feature_cost(fs: str) -> tuple[float, float]:  # (fit s of features, predict s per px)
        t = scene.tile_seconds[fs]
        return tiles * t, t / TILE_PIXELS

    out = {}
    for row in rows:
        if not row.semi:
            probs, train_s, pred_s = default() if row == default_row else \
                fit_predict(scene, row, idx, y)
            feat_fit, feat_px = feature_cost(row.features)
            fit_s, px_s = feat_fit + train_s, feat_px + pred_s / n
        else:
            p0, train0, pred0 = default(row.trees)
            feat_fit, feat_px = feature_cost("vit")
            slic_px = scene.slic_seconds / n
            if row.semi in ("superpixels", "crf", "crf-full"):
                probs = smooth(scene, p0, row.stride)
                fit_s, px_s = feat_fit + train0, feat_px + pred0 / n + slic_px
                if row.semi.startswith("crf"):
                    t0 = time.perf_counter()
                    probs = crf(scene, probs, 1 if row.semi == "crf-full" else CRF_SCALE)
                    px_s += (time.perf_counter() - t0) / n
            elif row.semi == "propagation":
                t0 = time.perf_counter()
                pidx, py = propagated_labels(scene, idx, y, seed)
                select_s = time.perf_counter() - t0 + scene.slic_seconds
                probs, train1, pred1 = fit_predict(scene, default_row,
                                                   np.concatenate([idx, pidx]),
                                                   np.concatenate([y, py]))
                probs = smooth(scene, probs, row.stride)
                fit_s = all_tiles * scene.tile_seconds["vit"] + select_s + train1
                px_s = feat_px + pred1 / n + slic_px
            else:
                both = row.semi == "both"
                t0 = time.perf_counter()
                base = smooth(scene, p0) if both else p0
                pidx, py = pseudo_labels(scene, base, idx, seed)
                select_s = time.perf_counter() - t0 + (scene.slic_seconds if both else 0.0)
                probs, train1, pred1 = fit_predict(scene, default_row,
                                                   np.concatenate([idx, pidx]),
                                                   np.concatenate([y, py]))
                if both:
                    probs = smooth(scene, probs)
                fit_s = (all_tiles * scene.tile_seconds["vit"] + train0 + pred0 + select_s
                         + train1)
                px_s = feat_px + pred1 / n + (slic_px if both else 0.0)
        acc, miou = fd.score(scene, probs, idx)
        out[row.key] = (acc, miou, fit_s, px_s * 1e6)
    return out


def run_scene(scene: fd.Scene, rows: list[Row], designs: list[str], seeds: list[int],
              nets: dict) -> dict:
    """Features once, then every design x seed x row: key -> design -> list of results."""
    radii = [2, 4, 8]
    print(f"{scene.name}: {scene.truth.shape[0]}x{scene.truth.shape[1]}, classes "
          f"{scene.class_names}", flush=True)
    fd.compute_features(scene, "vit", fd.classifier_model(*nets["vit"], radii))
    fd.derive_features(scene, "local", "vit", 3 + 6 * len(radii),
                       fd.classifier_model(None, None, radii))
    fd.derive_features(scene, "rgb", "vit", 3, None)
    if any(r.features == "dir" for r in rows):
        fd.compute_features(scene, "dir", fd.classifier_model(*nets["dir"], radii))
    if any(r.features == "stego" for r in rows):
        stego = nets["stego"]
        fd.compute_features(scene, "stego", fd.classifier_model(
            stego.backbone, stego.backbone_info, radii, codes_head=stego.head,
            input_scale=stego.input_scale))
    if any(r.semi for r in rows):
        fd.add_superpixels(scene, iterations=nets.get("slic_iterations"))
        print(f"  {scene.name}: {int(scene.segments.max()) + 1} superpixels in "
              f"{scene.slic_seconds:.1f} s", flush=True)
    all_tiles = fd.owner_tile_count(scene, np.arange(scene.truth.size))
    res: dict = {r.key: {d: [] for d in designs} for r in rows}
    t0 = time.perf_counter()
    for design in designs:
        for seed in seeds:
            t1 = time.perf_counter()
            out = trial(scene, rows, design, seed, all_tiles)
            for key, v in out.items():
                res[key][design].append(v)
            best = max(out, key=lambda k: out[k][1])
            print(f"  {scene.name} | {design} | seed {seed}: {time.perf_counter() - t1:.0f} s"
                  f" (total {time.perf_counter() - t0:.0f} s); best mIoU {best} "
                  f"{out[best][1]:.1f}" + (f", default {out['default'][1]:.1f}"
                                            if "default" in out else ""), flush=True)
    scene.features.clear()
    return res


def print_scene(title: str, res: dict, rows: list[Row], designs: list[str]) -> None:
    """The accuracy / mIoU table, and the semi-supervised rows' paired gains."""
    print(f"\n### {title}: accuracy / mIoU % (mean over seeds)\n", flush=True)
    body = []
    for r in rows:
        vals = [np.array(res[r.key][d]) for d in designs]
        cells = [f"{v[:, 0].mean():.1f} / {v[:, 1].mean():.1f}" for v in vals]
        every = np.concatenate(vals)
        body.append([r.label, *cells, f"{every[:, 2].mean():.2f}", f"{every[:, 3].mean():.1f}"])
    print_table(["row", *designs, "fit s", "predict s/MP"], body)
    semi = [r for r in rows if r.semi]
    if not semi or "default" not in res:
        return
    print(f"\n{title}: gain over the default on the same samples, accuracy / mIoU points "
          "(seeds where mIoU rose)\n", flush=True)
    body = []
    for r in semi:
        cells = []
        for d in designs:
            diff = np.array(res[r.key][d])[:, :2] - np.array(res["default"][d])[:, :2]
            cells.append(f"{diff[:, 0].mean():+.1f} / {diff[:, 1].mean():+.1f} "
                         f"({int((diff[:, 1] > 0).sum())}/{len(diff)})")
        body.append([r.label, *cells])
    print_table(["row", *designs], body)


def merge(results: list[dict]) -> dict:
    """Results of several scenes as one (lists concatenated)."""
    return {k: {d: [v for r in results for v in r[k][d]] for d in results[0][k]}
            for k in results[0]}


def pick_rows(args: argparse.Namespace) -> list[Row]:
    """The rows asked for (``--only`` keys or label substrings; ``--quick``'s short list)."""
    rows = [r for r in ROWS if (r.key != "pretrained" or args.backbone_dir)
            and (r.key != "stego" or args.stego_model)]
    if args.quick and not args.only:
        rows = [r for r in rows if r.key in QUICK_ROWS or r.key in ("pretrained", "stego")]
    if args.only:  # a token that is a row key names that row only
        keys = {r.key for r in ROWS}
        rows = [r for r in rows if any(o == r.key or (o not in keys
                                                      and o.lower() in r.label.lower())
                                       for o in args.only)]
    if any(r.semi for r in rows) and not any(r.key == "default" for r in rows):
        rows.insert(0, next(r for r in ROWS if r.key == "default"))
    if not rows:
        raise SystemExit(f"--only matched no row; rows: {', '.join(r.key for r in ROWS)}")
    return rows


def build_nets(backbone_dir: Path | None, stego_model: Path | None = None) -> dict:
    """The default's untrained tiny ViT, the backbone directory's ViT and the STEGO model
    when given."""
    from flows.fit_flow import CLASSIFIER_BACKBONE
    from pipeline.models.backbone import build_backbone, describe_backbone, resolve_backbone

    name, overrides = CLASSIFIER_BACKBONE[0], dict(CLASSIFIER_BACKBONE[1])
    net, prov = build_backbone(name, "random", overrides, seed=0)
    nets = {"vit": (net, describe_backbone(name, overrides, prov, net))}
    if backbone_dir:
        timm_name, ov = resolve_backbone(name, str(backbone_dir), None)
        net, prov = build_backbone(timm_name, str(backbone_dir), ov)
        nets["dir"] = (net, describe_backbone(timm_name, ov, prov, net))
    if stego_model:
        from pipeline.models.store import load_model

        nets["stego"] = load_model(stego_model)
    return nets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=None,
                    choices=["potsdam", "loveda", "demo", "timing"],
                    help="default: all four (--quick: potsdam loveda demo)")
    ap.add_argument("--seeds", type=int, default=5, help="sample draws per design")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: 1 seed, fewer rows, the 20-point and polygon designs, "
                    "LoveDA and demo cropped to 512², timing (only when asked) on 1024²")
    ap.add_argument("--backbone-dir", type=Path, default=None,
                    help="a `stego pretrain` directory: adds its row")
    ap.add_argument("--stego-model", type=Path, default=None,
                    help="a STEGO model directory (`stego fit --method stego`): adds its row "
                    "(its backbone and codes, as `fit --samples --weights MODEL` uses them)")
    ap.add_argument("--only", nargs="+", default=[],
                    help=f"row keys ({', '.join(r.key for r in ROWS)}) or label substrings")
    ap.add_argument("--designs", nargs="+", default=None, choices=fd.ALL_DESIGNS,
                    help="sample designs (default: the first four; --quick: 20 points, 3 polygons)")
    ap.add_argument("--slic-iterations", type=int, default=None,
                    help="SLIC iterations of the superpixel rows (default: segment's own)")
    ap.add_argument("--timing-size", type=int, default=None, help="timing scene edge (2048)")
    args = ap.parse_args()
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    if args.backbone_dir and not (args.backbone_dir / "backbone.json").is_file():
        raise SystemExit(f"--backbone-dir {args.backbone_dir}: no backbone.json there")
    seeds = list(range(1 if args.quick else args.seeds))
    designs = args.designs or (["20 points", "3 polygons"] if args.quick else fd.DESIGNS)
    rows = pick_rows(args)
    sets = []
    for s in args.sets or (["potsdam", "loveda", "demo"] if args.quick
                           else ["potsdam", "loveda", "demo", "timing"]):
        missing = fd.missing_files([s])
        if missing:
            print(f"skipped {s}: shared data not found: {', '.join(map(str, missing))}",
                  flush=True)
        else:
            sets.append(s)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="stego-few-labels-"))
    scene_sets = [s for s in sets if s != "timing"]
    nets = build_nets(args.backbone_dir, args.stego_model) if scene_sets else {}
    nets["slic_iterations"] = args.slic_iterations
    print(f"rows: {', '.join(r.key for r in rows)}; designs: {designs}; seeds: {seeds}",
          flush=True)
    crop = 512 if args.quick else None
    loaders = {"potsdam": fd.potsdam, "loveda": lambda: fd.loveda(crop),
               "demo": lambda: fd.demo(1024, 0, work, crop)}
    for s in scene_sets:
        results = []
        for scene in loaders[s]():
            res = run_scene(scene, rows, designs, seeds, nets)
            print_scene(scene.name, res, rows, designs)
            results.append(res)
        if len(results) > 1:
            print_scene(f"{s} (mean of its {len(results)} tiles)", merge(results), rows,
                        designs)
    if "timing" in sets:
        import _few_labels_timing as ft

        size = args.timing_size or (1024 if args.quick else 2048)
        fit_rows, models, tiles = ft.fit_rows(work, size)
        print("\n### fit time: 20 points per class, demo scene, CPU float32\n")
        print_table(["fit", "scene", "points", "tiles", "read samples s", "features s",
                     "train s", "wall s", "held-out acc %"], fit_rows)
        thr, precisions = ft.throughput_rows(models, tiles[:1] if args.quick else tiles,
                                             repeats=1 if args.quick else 2)
        print("\n### segment throughput: predict per 544² tile, CPU, backbone in "
              f"{' / '.join(precisions)}\n")
        print_table(["model"] + [f"{h} {p}" for p in precisions for h in ("s per tile", "s/MP")],
                    thr)
        seg = ft.segment_rows(work, size, models[True])
        print("\n### `stego segment` end to end (precision auto)\n")
        print_table(["model", "scene", "median wall s", "each run s", "s/MP"], seg)
    print(f"\nwall time {time.perf_counter() - t_start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
