"""Peak memory of `stego segment` against raster size; prints one table.

    python benchmarks/memory.py [--sizes 2048 8192 20000] [--method pixel-kmeans] [--work DIR]

Each size is a generated 3-band uint8 GeoTIFF (tiled, DEFLATE, written window by window, so
generating it needs no whole-raster array). Each run is the real command line in a fresh
process (`stego segment ... --fresh`, the defaults otherwise: COG, polygons, preview, STAC);
peak RSS is that of the whole process tree (the CLI, the Prefect server, the Dask worker),
sampled every 50 ms. Target (issue 5): the 20 000² peak <= 1.3x the 8192² peak and <= 4 GB.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20000])
    ap.add_argument("--method", default="pixel-kmeans")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (kept)")
    ap.add_argument("--set", action="append", default=[], help="extra config override")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    stego = [sys.executable, "-m", "flows.cli"]
    scenes = {s: write_synthetic(work / f"synthetic-{s}.tif", s) for s in args.sizes}
    model = work / f"model-{args.method}"
    if not (model / "model.json").exists():
        subprocess.run([*stego, "fit", str(scenes[min(args.sizes)]), "--method", args.method,
                        "--clusters", "5", "--weights", "random", "--out", str(model), "-q"],
                       check=True, env=env, cwd=ROOT)
    rows, peaks = [], {}
    for size in args.sizes:
        extra = [x for kv in args.set for x in ("--set", kv)]
        cmd = [*stego, "segment", str(scenes[size]), "--model", str(model), "--out",
               str(work / f"out-{size}"), "--fresh", "-q", *extra]
        os.environ.update(env)
        peak, secs, code = peak_rss_of(cmd)
        peaks[size] = peak
        rows.append([f"{size}²", f"{size * size / 1e6:.0f}", f"{secs:.0f}",
                     f"{peak / 2**20:.0f}", "ok" if code == 0 else f"exit {code}"])
    print(f"\nmachine: {os.cpu_count()} CPU cores, method={args.method}, defaults otherwise")
    print_table(["raster", "Mpx", "wall s", "peak RSS MiB", "status"], rows)
    sizes = sorted(peaks)
    if len(sizes) >= 2:
        a, b = peaks[sizes[-2]], peaks[sizes[-1]]
        print(f"\npeak {sizes[-1]}² / peak {sizes[-2]}² = {b / a:.2f}")


if __name__ == "__main__":
    main()
