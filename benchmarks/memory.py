"""Peak memory of `stego segment` against raster size; prints one table.

    python benchmarks/memory.py [--sizes 4096 8192 20000] [--scenes naip generated]
        [--method pixel-kmeans] [--work DIR] [--set KEY=VALUE]

Two kinds of scene, each at every size, all 3-band uint8 GeoTIFFs written window by window
(no whole-raster array):
- ``naip``: real imagery, the NAIP tile of ../shared/data mirrored into a mosaic
  (``_naip_mosaic.py``: 512² tiles, DEFLATE, a few empty nodata blocks); pixel-kmeans with
  6 clusters fitted on the smallest size. Its many small regions make many polygons. Skipped
  with a message when ../shared is absent.
- ``generated``: smooth synthetic "fields" with texture (5 clusters).

Each run is the real command line in a fresh process (`stego segment ... --fresh`, the
defaults otherwise: COG, polygons, preview, STAC); peak RSS is that of the whole process tree
(the CLI, the Prefect server, the Dask worker), sampled every 50 ms; the polygon count is read
from run.json. Target (issue 17): per scene, the 20 000² peak <= 1.3x the 4096² peak and
<= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _naip_mosaic import naip_available, write_naip_mosaic  # noqa: E402
from _table import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_synthetic(path: Path, size: int, window: int = 2048) -> Path:
    """A 3-band uint8 scene of smooth 'fields' and texture, written one window at a time."""
    import rasterio
    from affine import Affine

    if path.exists():
        return path
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:25833", "transform": Affine(0.1, 0, 368000, 0, -0.1, 5810000),
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"}
    palette = np.array([[60, 110, 50], [190, 180, 150], [90, 90, 95], [30, 60, 120],
                        [150, 120, 80]], dtype=np.float32)
    tmp = path.with_name(f".{path.name}.tmp")
    rng = np.random.default_rng(0)
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, window):
            for c0 in range(0, size, window):
                h, w = min(window, size - r0), min(window, size - c0)
                yy, xx = np.mgrid[r0 : r0 + h, c0 : c0 + w].astype(np.float32)
                field = (np.sin(yy / 173.0) + np.cos(xx / 131.0) + np.sin((xx + yy) / 411.0))
                cls = np.clip(((field + 3) / 6 * 5).astype(int), 0, 4)
                img = palette[cls] + rng.normal(0, 8, size=(h, w, 3)).astype(np.float32)
                block = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
                dst.write(block, window=((r0, r0 + h), (c0, c0 + w)))
    os.replace(tmp, path)
    return path


def peak_rss_of(cmd: list[str]) -> tuple[int, float, int]:
    """Run ``cmd``; return (peak RSS of its process tree in bytes, seconds, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.05)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        print(err, file=sys.stderr)
    return peak, time.perf_counter() - t0, proc.returncode


def scene_path(kind: str, size: int, work: Path) -> Path:
    """The scene of one kind and size, written once into ``work``."""
    if kind == "naip":
        return write_naip_mosaic(work / f"naip-{size}.tif", size)
    return write_synthetic(work / f"synthetic-{size}.tif", size)


def polygon_count(out: Path) -> str:
    """Polygons written by a finished run (from its run.json), or "-"."""
    try:
        doc = json.loads((out / "run.json").read_text())
        return f"{doc['polygons']['polygons']:,}"
    except (OSError, KeyError, TypeError, ValueError):
        return "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 20000])
    ap.add_argument("--scenes", nargs="+", default=["naip", "generated"],
                    choices=["naip", "generated"])
    ap.add_argument("--method", default="pixel-kmeans")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (kept)")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    os.environ.update(env)
    stego = [sys.executable, "-m", "flows.cli"]
    scenes = [k for k in args.scenes if k != "naip" or naip_available()]
    if "naip" in args.scenes and "naip" not in scenes:
        print("naip: skipped, ../shared/data is absent (a clone without the shared data)",
              file=sys.stderr)
    sizes = sorted(args.sizes)
    extra = [x for kv in args.set for x in ("--set", kv)]
    rows, ratios = [], []
    for kind in scenes:
        clusters = "6" if kind == "naip" else "5"
        model = work / f"model-{kind}-{args.method}-{clusters}"
        if not (model / "model.json").exists():
            subprocess.run([*stego, "fit", str(scene_path(kind, sizes[0], work)), "--method",
                            args.method, "--clusters", clusters, "--weights", "random", "--out",
                            str(model), "-q"], check=True, env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL)
        peaks = {}
        for size in sizes:
            out = work / f"out-{kind}-{size}"
            cmd = [*stego, "segment", str(scene_path(kind, size, work)), "--model", str(model),
                   "--out", str(out), "--fresh", "-q", *extra]
            peak, secs, code = peak_rss_of(cmd)
            peaks[size] = peak
            rows.append([kind, f"{size}²", f"{size * size / 1e6:.1f}", f"{secs:.0f}",
                         f"{peak / 2**20:.0f}", polygon_count(out) if code == 0 else "-",
                         "ok" if code == 0 else f"exit {code}"])
            print(f"done {kind} {size}²", file=sys.stderr, flush=True)
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            ratios.append(f"{kind}: peak {large}² / peak {small}² = "
                          f"{peaks[large] / peaks[small]:.2f}")
    print(f"\nmachine: {os.cpu_count()} CPU cores, method={args.method}, defaults otherwise")
    print_table(["scene", "raster", "Mpx", "wall s", "peak RSS MiB", "polygons", "status"], rows)
    print()
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
