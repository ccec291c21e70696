"""Does labelling `stego suggest`'s points beat labelling random points? A simulated analyst.

    python benchmarks/suggest_rounds.py [--seeds 5] [--rounds 3] [--start 5] [--per-round 10]
        [--sets potsdam loveda demo]
    # ARMS=random,suggest,mixed,suggest-edges,least-confidence,entropy to compare

On each labelled image of ../shared/data (the Potsdam crop as Potsdam-3, LoveDA tiles 0 and 1)
and a 1024² demo scene: start from ``--start`` random labelled pixels per class, then, for
``--rounds`` rounds, fit the default classifier (untrained tiny ViT, ExtraTrees 100), predict
every pixel, and add ``--per-round`` x classes new labelled pixels, either where
`suggest_points` (what `stego suggest` runs) puts them, labelled from the truth (a suggestion
on an ignored pixel stays unlabelled, as an analyst would skip it), or at uniformly random
valid pixels. The map and its confidence are what `segment` makes by default: probabilities
averaged within 256-px SLIC superpixels (``--crf``: then the dense CRF on the image reduced
4x, the margin staying the classifier's own before it, as segment stores it; ``--refine
none``: per pixel). Scored on every
labelled pixel after the last round (accuracy and mIoU, the training pixels included: they
are < 0.1 % of the image). Features are computed once over the
whole image (no tiling); the selection and classifier are the pipeline's own.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _table import print_table  # noqa: E402

from pipeline.config.classifier import ClassifierConfig  # noqa: E402
from pipeline.evaluation.suggest import suggest_points  # noqa: E402
from pipeline.fit.samples_fit import train_head  # noqa: E402
from pipeline.labels import CONFIDENCE_SCALE  # noqa: E402
from pipeline.models.backbone import build_backbone, describe_backbone  # noqa: E402
from pipeline.models.classifier import SampleClassifier  # noqa: E402
from pipeline.models.crf_refine import CRF_SCALE, refine_tiles  # noqa: E402
from pipeline.models.refine import average_within, superpixels  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
POTSDAM3 = {1: 0, 5: 0, 2: 1, 6: 1, 3: 2, 4: 2}
INTERIOR = {"suggest": 3, "suggest-after-crf": 3, "suggest-edges": 0, "mixed": 3,
            "least-confidence": 3, "entropy": 3}
# suggest_points(interior=...). "suggest" ranks as `stego suggest` does, by the margin between
# the two most probable classes (the store's margin: before the dense CRF; "suggest-after-crf"
# after it); "least-confidence" by the winning
# probability (what it did before the store kept the margin), "entropy" by the entropy
ARMS = os.environ.get("ARMS", "suggest,random").split(",")


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image float32 (3, H, W) in [0, 1], truth int64 (H, W), -1 = ignore)."""
    out = {}
    pots = DATA / "isprs_potsdam"
    if pots.is_dir():
        lab = _png(pots / "labels" / "2_10_0_0_512_512.png")
        y = np.full(lab.shape, -1, dtype=np.int64)
        for k, v in POTSDAM3.items():
            y[lab == k] = v
        out["potsdam-3"] = (_png(pots / "images" / "2_10_0_0_512_512.png"), y)
    for i in (0, 1):
        d = DATA / "loveda"
        if (d / "images" / f"{i}.png").is_file():
            lab = _png(d / "labels" / f"{i}.png").astype(np.int64)
            present = [v for v in np.unique(lab) if v != 0 and (lab == v).sum() >= 200]
            y = np.full(lab.shape, -1, dtype=np.int64)
            for j, v in enumerate(present):
                y[lab == v] = j
            out[f"loveda-{i}"] = (_png(d / "images" / f"{i}.png"), y)
    from pipeline.demo import write_demo_scene

    with tempfile.TemporaryDirectory() as tmp:
        import rasterio

        img, lab = write_demo_scene(Path(tmp) / "s.tif", size=1024)
        with rasterio.open(img) as ds:
            rgb = ds.read([1, 2, 3]).transpose(1, 2, 0)
        with rasterio.open(lab) as ds:
            y = ds.read(1).astype(np.int64)
        y[y == 255] = -1
        out["demo"] = (rgb, y)
    return {k: (np.ascontiguousarray(im[..., :3].transpose(2, 0, 1)).astype(np.float32) / 255,
                y) for k, (im, y) in out.items()}


def features(image: np.ndarray) -> np.ndarray:
    """The default classifier's per-pixel features of the whole image, (H*W, D)."""
    overrides = {"depth": 4, "embed_dim": 192, "num_heads": 3}
    net, prov = build_backbone("vit_small_patch8_224", "random", overrides, seed=0)
    info = describe_backbone("vit_small_patch8_224", overrides, prov, net)
    empty = {k: torch.zeros(1) for k in ("linear.mean", "linear.std", "linear.weight",
                                         "linear.bias")}
    model = SampleClassifier(net, info, "linear", empty, ["a", "b"], [(0, 0, 0)] * 2,
                             ClassifierConfig().local_radii)
    h, w = image.shape[1:]
    ph, pw = -h % 8, -w % 8
    x = torch.nn.functional.pad(torch.from_numpy(image)[None], (0, pw, 0, ph), mode="reflect")
    with torch.no_grad():
        f = model.pixel_features(x)[0, :, :h, :w]
    return f.reshape(f.shape[0], -1).T.numpy().copy()


def run_arm(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], k: int, start: np.ndarray,
            rounds: int, per_round: int, arm: str, seed: int, nodata: np.ndarray,
            segments: np.ndarray | None = None, image: np.ndarray | None = None,
            ) -> tuple[float, float, int]:
    """Accuracy, mIoU and labelled pixels after the rounds of one arm. With ``segments``,
    the map and its confidence are the probabilities averaged within those superpixels, and
    with ``image`` (3, H, W) then refined by the dense CRF, as `segment` post-processes the
    classifier by default."""

    def predict(probe: SampleClassifier) -> tuple[np.ndarray, np.ndarray]:
        """The map's probabilities (N, K), and those before the CRF (the store's margin)."""
        probs = probe.classify(torch.from_numpy(x)).numpy()
        if segments is None:
            return probs, probs
        avg = average_within(probs.T.reshape(k, *shape), segments)
        before = np.ascontiguousarray(avg.reshape(k, -1).T)
        if image is None:
            return before, before
        # segment's dense CRF, on the whole image reduced as a tile is
        crf = refine_tiles(torch.from_numpy(avg)[None], torch.from_numpy(image)[None],
                           CRF_SCALE)[0].numpy()
        return np.ascontiguousarray(crf.reshape(k, -1).T), before

    cfg = ClassifierConfig()
    rng = np.random.default_rng(1000 + seed)
    labelled = list(start)
    valid = np.flatnonzero(y >= 0)
    probe = None
    for r in range(rounds + 1):
        idx = np.array(labelled)
        head = train_head(x[idx], y[idx], k, cfg)
        probe = SampleClassifier(None, None, "trees", head, [str(i) for i in range(k)],
                                 [(0, 0, 0)] * k, [])
        if r == rounds:
            break
        probs, before_crf = predict(probe)
        if arm == "random":
            new = rng.choice(valid, per_round, replace=False)
        else:
            labels = probs.argmax(1).astype(np.uint8)
            labels[nodata] = 255  # the map's nodata: never suggested
            labels = labels.reshape(shape)
            # the store's margin is the classifier's before the CRF (segment's predict_with_prior)
            ranked = probs if arm.endswith("after-crf") else before_crf
            top2 = np.sort(ranked, 1)[:, -2:]
            certainty = top2[:, 1] - top2[:, 0]  # the margin
            if arm == "least-confidence":
                certainty = probs.max(1)
            elif arm == "entropy":
                p = np.clip(probs, 1e-9, 1)
                certainty = 1 + (p * np.log(p)).sum(1) / np.log(k)
            conf = np.rint(certainty * CONFIDENCE_SCALE).astype(np.uint8).reshape(shape)
            have = [(int(i) // shape[1], int(i) % shape[1]) for i in labelled]
            n_s = per_round // 2 if arm.startswith("mixed") else per_round
            pts = suggest_points([(0, 0, labels, conf)], shape[0], shape[1], k, n_s,
                                 seed=seed, exclude=have, interior=INTERIOR.get(arm, 0))
            new = pts.rows * shape[1] + pts.cols
            new = new[y[new] >= 0]  # the analyst skips what has no class in the truth
            if arm.startswith("mixed"):
                new = np.concatenate([new, rng.choice(valid, per_round - n_s, replace=False)])
        labelled += [int(i) for i in new if int(i) not in set(labelled)]
    pred = predict(probe)[0].argmax(1)
    ok = y >= 0
    acc = float((pred[ok] == y[ok]).mean())
    ious = [((pred == c) & (y == c)).sum() / max(((pred == c) | (y == c))[ok].sum(), 1)
            for c in range(k)]
    return acc, float(np.mean(ious)), len(labelled)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--start", type=int, default=5, help="random points per class to start")
    ap.add_argument("--per-round", type=int, default=10, help="points per class per round")
    ap.add_argument("--sets", nargs="+", help="only these sets: potsdam loveda demo")
    ap.add_argument("--refine", choices=["regions", "none"], default="regions",
                    help="the map as segment makes it: probabilities averaged within 256-px "
                         "SLIC superpixels (the classifier's default), or per pixel")
    ap.add_argument("--crf", action="store_true",
                    help="the maps of `segment --crf`: the dense CRF after the averaging")
    args = ap.parse_args()
    rows = []
    for name, (image, y) in datasets().items():
        if args.sets and not any(name.startswith(p) for p in args.sets):
            continue
        t0 = time.perf_counter()
        x = features(image)
        segments = (superpixels(image.transpose(1, 2, 0), 256) if args.refine == "regions"
                    else None)
        yf = y.reshape(-1)
        # the demo's unlabelled pixels are its nodata collar (no map there); elsewhere they
        # are real pixels without a class (Potsdam's eroded borders, LoveDA's no-data)
        nodata = yf < 0 if name == "demo" else np.zeros(len(yf), dtype=bool)
        k = int(yf.max()) + 1
        res: dict[str, list[tuple[float, float, int]]] = {a: [] for a in ARMS}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            start = np.concatenate([rng.choice(np.flatnonzero(yf == c), args.start,
                                               replace=False) for c in range(k)])
            for arm in res:
                res[arm].append(run_arm(x, yf, y.shape, k, start, args.rounds,
                                        args.per_round * k, arm, seed, nodata, segments,
                                        image if args.crf and segments is not None else None))
        r = np.array(res["random"])
        for arm in ARMS:
            s = np.array(res[arm])
            rows.append([name, arm, str(k), f"{int(s[:, 2].mean())}",
                         f"{100 * s[:, 0].mean():.1f} / {100 * s[:, 1].mean():.1f}",
                         f"{100 * (s[:, 0] - r[:, 0]).mean():+.1f}",
                         f"{time.perf_counter() - t0:.0f}"])
        print(f"{name}: done", flush=True)
    print(f"\n{args.start} random points per class, then {args.rounds} rounds of "
          f"{args.per_round} points per class; mean of {args.seeds} seeds\n")
    print_table(["set", "points", "classes", "labelled", "accuracy / mIoU %",
                 "accuracy vs random", "seconds"], rows)


if __name__ == "__main__":
    main()
