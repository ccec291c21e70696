"""Pretraining recipes, STEGO shifts and feature variants on Potsdam-3, in-process.

    python benchmarks/pretrain_sweep.py recipes [--steps 100]
    python benchmarks/pretrain_sweep.py shifts --weights BACKBONE_DIR [--steps 500]
    python benchmarks/pretrain_sweep.py features --weights BACKBONE_DIR [BACKBONE_DIR ...]

``recipes`` pretrains a backbone per recipe variant on the four real images in ../shared/data
(the Potsdam crop, LoveDA tiles 0 and 1, the NAIP tile; bands 1-3) for ``--steps`` steps and
scores feature-kmeans (64 crops, n_init 10) on Potsdam-3. ``shifts`` fits STEGO on Potsdam with
each shift setting on one backbone. ``features`` scores feature-kmeans on each backbone with
other features than the last block's (centred, test-time augmented, two blocks, other input
scales, colour appended) and, given several backbones, on their concatenated features.
Scoring runs the model on the whole 512² crop in one pass (no tiling), Hungarian accuracy /
mIoU, value 0 ignored, and prints each run's confusion matrix. Use several ``--seeds``: on
one crop with three clusters the seed alone moves a recipe by up to 20 points (which minor
mode takes a cluster). These are the sweeps behind the README's "How the defaults were
chosen" and "DINO or ibot, 5 or 15 minutes".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
DATA = ROOT.parent / "shared" / "data"
POTSDAM = (DATA / "isprs_potsdam" / "images" / "2_10_0_0_512_512.png",
           DATA / "isprs_potsdam" / "labels" / "2_10_0_0_512_512.png")
POTSDAM3 = {1: 0, 5: 0, 2: 1, 6: 1, 3: 2, 4: 2}
IMAGES = [POTSDAM[0], DATA / "loveda" / "images" / "0.png", DATA / "loveda" / "images" / "1.png",
          DATA / "naip_north_dakota" / "m_4709963_se_14_1_20200831.tif"]
RECIPES = {  # every row names its objective; the default is dino
    "first try (160 px, 4096 protos, teacher 0.04->0.07)": {
        "objective": "dino", "source_size": 160, "global_scale": (0.4, 1.0), "out_dim": 4096,
        "teacher_temp": (0.04, 0.07)},
    "teacher 0.04, 1024 protos (160 px)": {
        "objective": "dino", "source_size": 160, "global_scale": (0.4, 1.0)},
    "default: dino (256 px, global 25-100 %)": {"objective": "dino"},
    "dino, 384 px pool crops": {"objective": "dino", "source_size": 384},
    "dino, lr 2e-3": {"objective": "dino", "lr": 2e-3},
    "ibot (dino + masked patch distillation)": {"objective": "ibot"},
    "ibot, no grayscale views": {"objective": "ibot", "grayscale_p": 0.0},
    "dino, no colour jitter or grayscale views": {
        "objective": "dino", "jitter_p": 0.0, "grayscale_p": 0.0},
    "ibot, patch weight 2": {"objective": "ibot", "patch_weight": 2.0},
    # input normalisation (the pool's own mean/std is "default"): fixed values instead
    "ibot, normalisation imagenet": {"objective": "ibot", "normalisation": "imagenet"},
    "ibot, normalisation pool-shared (one mean/std for all bands)": {
        "objective": "ibot", "normalisation": "pool-shared"},
    "ibot, normalisation = the old drifted float32 pool mean/std": {
        "objective": "ibot", "normalisation": {
            "mean": (0.2577, 0.2647, 0.2569), "std": (0.1178, 0.1181, 0.0934)}},
    "ibot, normalisation pool, offset 0.5 std": {"objective": "ibot", "normalisation_offset": 0.5},
    "ibot, normalisation none (mean 0, std 1)": {"objective": "ibot", "normalisation": {
        "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}},
    # view scale: the default views are 1.3-2.7x (global) and 1.2-3.4x (local) smaller than
    # the native pixels the backbone later runs at; these see the imagery near native scale
    "ibot, views near native scale (128 px pool crops, global 50-100 %, local 10-40 %)": {
        "objective": "ibot", "source_size": 128, "global_scale": (0.5, 1.0),
        "local_scale": (0.1, 0.4)},
}
SHIFTS = {
    "paper": {"shifts": "paper"},
    "calibrated 0.5/0.4/0.15": {"shifts": "calibrated", "attract_rand": 0.15},
    "calibrated 0.5/0.4/0.3 (default)": {"shifts": "calibrated"},
    "calibrated 0.5/0.4/0.05": {"shifts": "calibrated", "attract_rand": 0.05},
    "calibrated 0.7/0.6/0.15": {"shifts": "calibrated", "attract_self": 0.7,
                                "attract_knn": 0.6, "attract_rand": 0.15},
    "calibrated 0.5/0.4/0.45": {"shifts": "calibrated", "attract_rand": 0.45},
    "calibrated 0.4/0.3/0.2": {"shifts": "calibrated", "attract_self": 0.4,
                               "attract_knn": 0.3, "attract_rand": 0.2},
    "calibrated 0.6/0.5/0.3": {"shifts": "calibrated", "attract_self": 0.6,
                               "attract_knn": 0.5, "attract_rand": 0.3},
    # the head, not the shifts: longer training and a wider code (default shifts)
    "default shifts, head 2000 steps": {"shifts": "calibrated", "steps": 2000},
    "default shifts, code dim 128": {"shifts": "calibrated", "dim": 128},
    # more kNN partners: 256 crops of the image instead of 64 (a `fit` key)
    "default shifts, 256 crops": {"shifts": "calibrated", "fit": {"crops": 256}},
}


def rasters(paths: list[Path]) -> list:
    from pipeline.io.raster import compute_scaling, open_raster_info

    return [(info, compute_scaling(info)) for info in
            (open_raster_info(str(p), [1, 2, 3]) for p in paths)]


def _potsdam() -> tuple:
    """The whole Potsdam crop as a (1, 3, H, W) tensor in [0, 1], and its raw label values."""
    import rasterio
    import torch

    from pipeline.io.raster import read_window

    info, scaling = rasters([POTSDAM[0]])[0]
    image, _ = read_window(info, scaling, 0, 0, info.height, info.width)
    with rasterio.open(POTSDAM[1]) as ds:
        return torch.from_numpy(image)[None], ds.read(1)


def potsdam3(model) -> tuple[float, float]:
    """Hungarian accuracy and mIoU % of ``model`` on the Potsdam crop, one pass."""
    import torch

    image, raw = _potsdam()
    with torch.no_grad():
        pred = model.eval().predict(image).argmax(1)[0].numpy()
    return _score(pred, raw)


def _score(pred, raw) -> tuple[float, float]:
    """Hungarian accuracy and mIoU % of a 3-cluster map against Potsdam's raw labels."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    truth = np.full(raw.shape, -1)
    for value, cls in POTSDAM3.items():
        truth[raw == value] = cls
    keep = truth >= 0
    conf = np.zeros((3, 3), np.int64)
    np.add.at(conf, (pred[keep], truth[keep]), 1)
    print(f"confusion (clusters x road/car, building/clutter, vegetation): {conf.tolist()}",
          file=sys.stderr, flush=True)
    rows, cols = linear_sum_assignment(-conf)
    ious = [conf[r, c] / (conf[r].sum() + conf[:, c].sum() - conf[r, c])
            for r, c in zip(rows, cols, strict=True)]
    return 100 * conf[rows, cols].sum() / conf.sum(), 100 * float(np.mean(ious))


def feature_kmeans_score(backbone_dir: Path) -> tuple[float, float]:
    from pipeline.fit.methods import fit_feature_kmeans
    from pipeline.io.crops import sample_crops
    from pipeline.models.backbone import resolve_backbone

    name, overrides = resolve_backbone("", str(backbone_dir), None)
    crops = sample_crops(rasters([POTSDAM[0]]), 64, 224, seed=0)
    model, _ = fit_feature_kmeans(crops, 3, name, str(backbone_dir), overrides, 50, 0, n_init=10)
    return potsdam3(model)


def sweep_recipes(steps: int, work: Path, only: list[str], seeds: list[int]) -> None:
    from pipeline.config import PretrainConfig
    from pipeline.models.backbone_dir import write_backbone_dir
    from pipeline.pretrain.loop import backbone_description, pretrain, read_pool

    inputs = rasters(IMAGES)
    rows = []
    chosen = [(k, v) for k, v in RECIPES.items() if not only or any(o in k for o in only)]
    for label, change in chosen:
        for seed in seeds:
            cfg = PretrainConfig(minutes=None, steps=steps, seed=seed, **change)
            pool = read_pool(inputs, cfg)
            out = work / f"recipe{len(rows)}"
            nets, progress = pretrain(pool, cfg, out / ".pretrain", "sweep", log=lambda s: None)
            write_backbone_dir(out, nets.teacher.state_dict(),
                               backbone_description(nets, pool, cfg, progress, [], "cpu"))
            last = progress.history[-1]
            acc, miou = feature_kmeans_score(out)
            patch = f"{last['patch_entropy']:.2f} / {last['patch_batch_entropy']:.2f}" \
                if "patch_entropy" in last else "-"
            rows.append([label, str(seed), str(steps), f"{last['teacher_entropy']:.2f}", patch,
                         f"{acc:.1f}", f"{miou:.1f}", f"{progress.seconds:.0f}"])
            print(f"{label} seed {seed}: {acc:.1f} / {miou:.1f} ({out})", file=sys.stderr,
                  flush=True)
    print_table(["recipe", "seed", "steps", "teacher entropy", "patch entropy / of the mean",
                 "accuracy %", "mIoU %",
                 "train s"], rows)


def sweep_shifts(weights: Path, steps: int, work: Path, only: list[str]) -> None:
    from pipeline.config import RunConfig
    from pipeline.fit.methods import fit_stego
    from pipeline.models.backbone import resolve_backbone

    name, overrides = resolve_backbone("", str(weights), None)
    rows = []
    for label, change in SHIFTS.items():
        if only and not any(o in label for o in only):
            continue
        stego = {k: v for k, v in change.items() if k != "fit"}
        cfg = RunConfig.model_validate({"stego": {"steps": steps, **stego},
                                        "fit": change.get("fit", {})})
        model, stats = fit_stego(rasters([POTSDAM[0]]), 3, name, str(weights), overrides,
                                 cfg.fit, cfg.stego, work / "cache", log=lambda s: None)
        acc, miou = potsdam3(model)
        share = stats["attracting_share"]
        rows.append([label, f"{share['self']:.2f} / {share['knn']:.2f} / {share['rand']:.2f}",
                     f"{stats['code_coherence']:.2f}", f"{acc:.1f}", f"{miou:.1f}"])
        print(f"{label}: {acc:.1f} / {miou:.1f}", file=sys.stderr, flush=True)
    print_table(["shifts", "pairs attracting (self / kNN / random)", "code coherence",
                 "accuracy %", "mIoU %"], rows)


def sweep_features(weights: list[Path], only: list[str]) -> None:
    import numpy as np
    import torch
    from _feature_variants import VARIANTS, ensemble

    from pipeline.io.crops import sample_crops
    from pipeline.models.backbone import build_backbone

    crops = sample_crops(rasters([POTSDAM[0]]), 64, 224, seed=0)
    crops = torch.from_numpy(np.stack([c.image for c in crops]))
    image, raw = _potsdam()
    nets = [build_backbone("", str(w))[0] for w in weights]
    runs = [(str(w), label, *VARIANTS[label], net) for w, net in zip(weights, nets, strict=True)
            for label in VARIANTS if not only or any(o in label for o in only)]
    if len(nets) > 1:
        runs.append((f"all {len(nets)}", "concatenated (ensemble)", ensemble(nets), False, None))
    rows = []
    for source, label, features, centred, net in runs:
        acc, miou = _variant_score(net, features, centred, crops, image, raw)
        rows.append([source, label, f"{acc:.1f}", f"{miou:.1f}"])
        print(f"{source} {label}: {acc:.1f} / {miou:.1f}", file=sys.stderr, flush=True)
    print_table(["backbone", "features", "accuracy %", "mIoU %"], rows)


def _variant_score(net, features, centred: bool, crops, image, raw) -> tuple[float, float]:
    """Feature-kmeans with other features: fit on the crops, label the image, score."""
    import torch
    import torch.nn.functional as F

    from pipeline.models.kmeans import spherical_kmeans

    with torch.no_grad():
        f = torch.cat([features(net, crops[i:i + 8]) for i in range(0, len(crops), 8)])
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        mean = flat.mean(0) if centred else torch.zeros(flat.shape[1])
        centroids = spherical_kmeans(flat - mean, 3, 50, 0, n_init=10)
        g = F.normalize(features(net, image) - mean.view(1, -1, 1, 1), dim=1)
        cos = torch.einsum("nchw,kc->nkhw", g, centroids)
        cos = F.interpolate(cos, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return _score(cos.argmax(1)[0].numpy(), raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["recipes", "shifts", "features"])
    ap.add_argument("--steps", type=int, help="pretraining (100) or STEGO (500) steps")
    ap.add_argument("--weights", type=Path, nargs="+", default=[],
                    help="shifts: the backbone directory to use; features: one or more")
    ap.add_argument("--only", nargs="*", default=[],
                    help="run only the recipes, shifts or features whose label contains one of "
                    "these")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0], help="recipes: seeds")
    args = ap.parse_args()
    missing = [p for p in IMAGES if not p.exists()]
    if missing:
        raise SystemExit(f"shared data not found: {', '.join(map(str, missing))}")
    work = Path(tempfile.mkdtemp(prefix="stego-sweep-"))
    if args.what == "recipes":
        sweep_recipes(args.steps or 100, work, args.only, args.seeds)
    elif args.what == "features":
        if not args.weights:
            raise SystemExit("features needs --weights BACKBONE_DIR [BACKBONE_DIR ...]")
        sweep_features(args.weights, args.only)
    else:
        if len(args.weights) != 1:
            raise SystemExit("shifts needs --weights BACKBONE_DIR (one)")
        sweep_shifts(args.weights[0], args.steps or 500, work, args.only)


if __name__ == "__main__":
    main()
