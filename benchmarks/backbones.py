"""Speed and memory of each backbone preset on this machine; prints one table.

    python benchmarks/backbones.py [--presets dino-s8 dinov2-b14 dinov3-l16-sat ...]
        [--tile 544] [--batch 1] [--precision auto|fp32|bf16] [--rss-size 8192 --rss-presets ...]

Every preset is built at full size with random weights (speed and memory do not depend on the
weights, and nothing is downloaded). Per preset: parameters, the tile the tiler snaps to for
its patch, seconds per tile of the backbone's patch features (median of 3 after a warm-up, in
the precision that ``model.precision`` resolves to here), and the float32 weights' size.
With ``--rss-size N``, the presets in ``--rss-presets`` are
also fitted (feature-kmeans, random weights) and run through the real `stego segment` on a
generated N x N raster in a fresh process, reporting the peak RSS of the whole process tree
(as benchmarks/memory.py does) and the wall time.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402
from memory import peak_rss_of, write_synthetic  # noqa: E402

from pipeline.models.backbone import build_backbone, patch_features  # noqa: E402
from pipeline.models.device import precision_context, resolved_precision  # noqa: E402
from pipeline.models.presets import PRESETS  # noqa: E402
from pipeline.tiling import snap_to_patch  # noqa: E402


def seconds_per_tile(name: str, tile: int, batch: int, precision: str) -> tuple[list[str], int]:
    """One table row for a preset, and the tile it ran at."""
    preset = PRESETS[name]
    t, _ = snap_to_patch(tile, 32, preset.patch)
    net, _ = build_backbone(name, "random")
    params = sum(p.numel() for p in net.parameters())
    ran = resolved_precision(precision, "cpu")
    x = torch.rand(batch, 3, t, t)
    times = []
    with torch.inference_mode(), precision_context(precision, "cpu"):
        patch_features(net, x)  # warm-up
        for _ in range(3):
            t0 = time.perf_counter()
            patch_features(net, x)
            times.append((time.perf_counter() - t0) / batch)
    del net
    gc.collect()
    row = [name, f"{params / 1e6:.0f} M", f"{preset.dim}", f"{preset.patch}", f"{t}", ran,
           f"{statistics.median(times):.2f}", f"{statistics.median(times) / (t * t) * 1e6:.1f}",
           f"{params * 4 / 2**20:.0f}"]
    return row, t


def segment_rss(name: str, size: int, work: Path) -> list[str]:
    """Peak RSS and wall time of `stego segment` with a feature-kmeans model of ``name``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    stego = [sys.executable, "-m", "flows.cli"]
    scene = write_synthetic(work / f"synthetic-{size}.tif", size)
    small = write_synthetic(work / "synthetic-1024.tif", 1024)
    model = work / f"model-{name}"
    if not (model / "model.json").exists():
        subprocess.run([*stego, "fit", str(small), "--method", "feature-kmeans", "--clusters",
                        "5", "--backbone", name, "--gsd", "native", "--weights", "random",
                        "--set", "fit.crops=4", "--out", str(model), "-q"],
                       check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    os.environ.update(env)
    peak, secs, code = peak_rss_of([*stego, "segment", str(scene), "--model", str(model),
                                    "--out", str(work / f"out-{name}-{size}"), "--fresh", "-q",
                                    "--set", "vectorize.enabled=false"])
    return [name, f"{size}²", f"{secs:.0f}", f"{peak / 2**20:.0f}",
            "ok" if code == 0 else f"exit {code}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--tile", type=int, default=544, help="tile before snapping (default 544)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--rss-size", type=int, default=None, help="also run `stego segment` at N²")
    ap.add_argument("--rss-presets", nargs="+", default=["dinov3-l16-sat"],
                    choices=list(PRESETS))
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (kept)")
    args = ap.parse_args()

    rows = [seconds_per_tile(name, args.tile, args.batch, args.precision)[0]
            for name in args.presets]
    print(f"\n{os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, random weights")
    print_table(["preset", "params", "dim", "patch", "tile", "precision", "s / tile",
                 "µs / px", "weights MiB"], rows)
    if args.rss_size:
        work = args.work or Path(tempfile.mkdtemp(prefix="stego-backbones-"))
        work.mkdir(parents=True, exist_ok=True)
        seg = [segment_rss(name, args.rss_size, work) for name in args.rss_presets]
        print("\n`stego segment` (feature-kmeans, polygons off, defaults otherwise):")
        print_table(["preset", "raster", "wall s", "peak RSS MiB", "status"], seg)


if __name__ == "__main__":
    main()
