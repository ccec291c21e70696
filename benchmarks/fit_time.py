"""How long `stego fit` takes: feature extraction, kNN and head training; prints one table.

    python benchmarks/fit_time.py [--crops 1000] [--steps 5000] [--backbone NAME]

Runs the fit flow on a generated 4096² demo scene with random backbone weights (the model
hub is unreachable here; speed does not depend on the weights). A second run reuses the
feature cache, showing that head training never re-runs the backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stego CLI sets it (flows/cli.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--backbone", default="vit_small_patch8_224.dino")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=2, help="1: skip the run on cached features")
    args = ap.parse_args()

    import torch

    from flows.fit_flow import fit_flow
    from pipeline.config import RunConfig
    from pipeline.demo import write_demo_scene

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-fit-"))
    scene, _ = write_demo_scene(work / "scene.tif", size=args.size)
    cfg = RunConfig.model_validate({
        "fit": {"crops": args.crops, "crop_size": 224},
        "stego": {"steps": args.steps, "log_every": max(1, args.steps // 10)},
    })
    rows = []
    for run in ("first", "cached")[: args.runs]:
        t0 = time.perf_counter()
        res = fit_flow([str(scene)], str(work / "model"), method="stego", clusters=5,
                       weights="random", backbone=args.backbone,
                       config=cfg.model_dump(mode="json"))
        wall = time.perf_counter() - t0
        st = res["stage_seconds"]
        rows.append([run, str(res["crops_used"]), f"{st['features']:.1f}", f"{st['knn']:.2f}",
                     f"{st['train']:.1f}", f"{res['steps_per_second']:.2f}", f"{wall:.1f}"])
    head = ["run", "crops", "features s", "kNN s", "train s", "steps/s", "fit wall s"]
    print(f"\nmachine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"backbone {args.backbone} (random weights), {args.steps} steps, batch 16")
    print_table(head, rows)
    print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
