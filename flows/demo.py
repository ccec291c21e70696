"""`stego demo`: the whole mission offline on a generated scene. Scene -> `pretrain` (unless
weights are given) -> `fit` (pixel-kmeans, feature-kmeans, STEGO; and the few-labels
classifier from 20 points per class drawn from the scene's truth) -> `segment` -> `evaluate`
against the scene's true labels, and one table comparing the methods."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.evaluate_flow import evaluate_flow
from flows.fit_flow import fit_flow
from flows.pretrain_flow import pretrain_flow
from flows.segment_flow import segment
from pipeline.config import RunConfig
from pipeline.demo import write_demo_scene
from pipeline.demo.write import write_truth_points

METHODS = ("pixel-kmeans", "feature-kmeans", "stego", "classifier")
POINTS_PER_CLASS = 20  # the simulated analyst's clicks for the few-labels row


@dataclass
class DemoOptions:
    """What `stego demo` was asked for."""

    out: Path
    size: int = 2560
    clusters: int = 5
    weights: str | None = None  # a DINO file or backbone directory; None: pretrain one
    pretrain_minutes: float | None = 3.0
    pretrain_steps: int | None = None
    stego_steps: int = 300  # 500 and 2000 head steps scored the same on Potsdam-3 (README)
    method: str = "auto"  # which method's outputs go to OUT/output; auto: the best measured
    progress: str = "auto"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _config(opts: DemoOptions, backbone_dir: str | None) -> RunConfig:
    pretrain: dict[str, Any] = {"minutes": opts.pretrain_minutes, "steps": opts.pretrain_steps}
    return RunConfig.model_validate({
        "fit": {"clusters": opts.clusters, "crops": 64, "crop_size": 224,
                "weights": backbone_dir or "random"},
        # the dense CRF helped STEGO on LoveDA and the demo scene (README, Quality)
        "stego": {"steps": opts.stego_steps, "log_every": max(1, opts.stego_steps // 10),
                  "crf": True},
        "pretrain": pretrain,
        "vectorize": {"enabled": True},
    })


def _timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    _say(f"demo: {label} ...")
    result = fn()
    _say(f"demo: {label} done in {time.perf_counter() - t0:.0f} s")
    return result


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run the demo; returns the table rows and where everything is."""
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    image, labels = _timed("demo scene", lambda: write_demo_scene(out / "scene.tif",
                                                                  size=opts.size))
    weights = opts.weights
    if weights is None:
        cfg = _config(opts, None)
        budget = (f"{opts.pretrain_steps} steps" if opts.pretrain_steps
                  else f"{opts.pretrain_minutes:g} minutes")
        _timed(f"self-supervised pretraining on the scene ({budget})",
               lambda: pretrain_flow([str(image)], str(out / "backbone"),
                                     config=cfg.model_dump(mode="json")))
        weights = str(out / "backbone")
    cfg = _config(opts, weights)
    rows = []
    clicks = write_truth_points(labels, out / "clicks.gpkg", POINTS_PER_CLASS)
    for method in METHODS:
        model_dir = out / "models" / method
        few = method == "classifier"  # its default backbone: the untrained tiny ViT
        _timed(f"fit {method}", lambda m=method, d=model_dir, f=few: fit_flow(
            [str(image)], str(d), method=m, clusters=opts.clusters,
            weights="auto" if f else weights,
            config=cfg.model_dump(mode="json"), samples=[str(clicks)] if f else None,
            class_field="class" if f else None))
        seg_dir = out / "compare" / method
        seg_cfg = cfg.model_copy(deep=True)
        seg_cfg.vectorize.enabled = False
        _timed(f"segment with {method}", lambda d=model_dir, s=seg_dir, c=seg_cfg: segment(
            image, d, s, c, progress="off"))
        result = evaluate_flow([(str(seg_dir / "labels.tif"), str(labels))],
                               str(seg_dir / "evaluation"), image=str(image))
        m = result["metrics"]
        rows.append({"method": method, "accuracy": m["accuracy"], "mIoU": m["mIoU"],
                     "model": str(model_dir)})
    best = max(rows, key=lambda r: (r["mIoU"], r["accuracy"]))
    chosen = best["method"] if opts.method == "auto" else opts.method
    doc = _timed(f"full outputs with {chosen}", lambda: segment(
        image, out / "models" / chosen, out / "output", cfg, progress=opts.progress))
    return {"rows": rows, "chosen": chosen, "weights": weights, "outputs": doc["outputs"],
            "scene": str(image), "labels": str(labels)}


def table(rows: list[dict[str, Any]], weights_label: str) -> str:
    """The comparison as a Markdown table."""
    names = {"pixel-kmeans": "pixel-kmeans",
             "feature-kmeans": f"feature-kmeans ({weights_label})",
             "stego": f"STEGO + CRF ({weights_label})",
             "classifier": f"few labels: {POINTS_PER_CLASS} points per class, classifier "
                           "(untrained tiny ViT)"}
    lines = ["| method | accuracy % | mIoU % |", "|---|---|---|"]
    lines += [f"| {names[r['method']]} | {r['accuracy']:.1f} | {r['mIoU']:.1f} |" for r in rows]
    return "\n".join(lines)
