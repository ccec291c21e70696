"""Overhead around the model: `stego segment` end to end against the model's forward pass alone
over the same number of tiles, same device, same process; prints one table.

    python benchmarks/overhead.py [--size 1024] [--method feature-kmeans]
        [--backbone vit_small_patch8_224.dino] [--device auto]

"model only" runs ``model.predict`` on as many tiles as the run pushed through the model, in the
run's batch size and torch thread count, on tensors already in memory: no reading, scaling,
blending, writing or scheduling. Targets (issue 5): labels stage (infer + COG) <= 1.10x model
only; whole run (also polygons, preview, STAC, Dask start) <= 1.25x.
"""

from __future__ import annotations

import argparse
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


def model_only_seconds(model_dir: Path, tiles: int, tile: int, batch: int, device: str,
                       precision: str, threads: int) -> float:
    """Seconds of ``predict`` alone over ``tiles`` tiles (after one warm-up batch)."""
    import torch

    from pipeline.models.base import as_array
    from pipeline.models.device import precision_context
    from pipeline.models.store import load_model

    torch.set_num_threads(threads)
    model = load_model(model_dir).to(device)
    x = torch.rand(batch, 3, tile, tile, device=device)
    if not model.uses_torch:  # pixel-kmeans and the classic methods take NumPy arrays
        x = x.cpu().numpy()

    def step(n: int) -> None:
        with torch.inference_mode(), precision_context(precision, device):
            as_array(model.predict(x[:n]))

    step(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < tiles:
        n = min(batch, tiles - done)
        step(n)
        done += n
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--method", default="feature-kmeans")
    ap.add_argument("--backbone", default="vit_small_patch8_224.dino")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="model.precision (auto: bf16 on CUDA and on CPUs with native bf16)")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    from flows.fit_flow import fit_flow
    from flows.segment_flow import segment
    from pipeline.config import RunConfig
    from pipeline.demo import write_demo_scene
    from pipeline.models.device import resolve_device
    from pipeline.segment.executor import torch_threads_per_worker

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-overhead-"))
    scene, _ = write_demo_scene(work / f"scene{args.size}.tif", size=args.size)
    cfg = RunConfig.model_validate({"model": {"device": args.device,
                                              "precision": args.precision}})
    mdir = work / f"model-{args.method}"
    if not (mdir / "model.json").exists():
        fit_flow([str(scene)], str(mdir), method=args.method, clusters=5, weights="random",
                 backbone=args.backbone, config=cfg.model_dump(mode="json"))
    warm, _ = write_demo_scene(work / "warm.tif", size=256)
    segment(warm, mdir, work / "warm", cfg, fresh=True, progress=False)  # Prefect, imports
    t0 = time.perf_counter()
    doc = segment(scene, mdir, work / "out", cfg, fresh=True, progress=False)
    wall = time.perf_counter() - t0
    t, c = doc["timings_s"], doc["counts"]
    device = resolve_device(args.device)
    batch = cfg.tiling.batch_size if cfg.tiling.batch_size != "auto" else 4
    alone = model_only_seconds(mdir, c["tiles"], cfg.tiling.tile_size, batch, device,
                               doc["precision"], torch_threads_per_worker(cfg.dask))
    labels = t["infer"] + t["cog"]
    rows = [
        ["model only (same tiles)", f"{alone:.1f}", "1.00"],
        ["model inside the run", f"{c['model_seconds']:.1f}", f"{c['model_seconds'] / alone:.2f}"],
        ["labels stage (infer + COG)", f"{labels:.1f}", f"{labels / alone:.2f}"],
        ["whole run (wall)", f"{wall:.1f}", f"{wall / alone:.2f}"],
    ]
    print(f"\nmachine: {os.cpu_count()} CPU cores, device={device}, method={args.method}, "
          f"{args.size}² demo scene, {c['tiles']} tiles of {cfg.tiling.tile_size}², "
          f"amplification {c['compute_amplification']:.2f}, precision {doc['precision']}")
    print("stages s: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    print_table(["what", "seconds", "x model only"], rows)


if __name__ == "__main__":
    main()
