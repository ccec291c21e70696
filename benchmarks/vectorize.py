"""Vectorizing throughput (sieve + polygonize + seam merge + GeoPackage write) on one core.

    OMP_NUM_THREADS=1 python benchmarks/vectorize.py [--size 4096] [--block-size 2048]
        [--min-pixels 16] [--cases naip-kmeans demo-truth demo-kmeans blocky noisy-5 noisy-10]
        [--repeat 1] [--labels LABELS.tif] [--cache-dir DIR]

Cases:
- ``naip-kmeans`` (real imagery): the labels that ``stego segment`` writes for the NAIP mosaic
  (``benchmarks/_naip_mosaic.py``, built from ``../shared/data`` at run time) with a
  pixel-kmeans model of 6 clusters fitted on it (``stego fit --method pixel-kmeans
  --clusters 6``; polygons off, the labels are read from ``labels.tif``). Skipped with a
  message when ``../shared`` is absent. ``--labels`` adds a case for any label raster.
- ``demo-truth``: the demo scene's true labels (``pipeline.demo``), with its nodata collar.
- ``demo-kmeans``: the demo image quantized to the nearest of the 5 class colours, per pixel,
  a cheap stand-in for pixel-kmeans output with its per-pixel fragmentation.
- ``blocky``: 5 classes drawn per 64² cell; ``noisy-N``: the same with N % of the pixels
  replaced by a random class (salt and pepper).

Each case runs ``pipeline.vectorize.vectorize_labels`` single-process (``map_fn=map``), after
one small warm-up run (GDAL/PROJ start-up). "s" is wall time, "CPU s" the process's CPU time
(more stable than wall time on a shared machine); Mpx/s are given for both. The
stage split comes from ``VectorizeStats.timings`` (summed over blocks; "features" is splitting
seam pieces, pixel -> CRS transform and area/perimeter/WKB). The "shapes alone" row is a
reference: ``rasterio.features.shapes`` (GDALPolygonize) on the whole raster, already sieved,
consuming the GeoJSON-like output and nothing else.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

CASES = ["naip-kmeans", "demo-truth", "demo-kmeans", "blocky", "noisy-5", "noisy-10"]
NAMES = ["road", "building", "tree", "grass", "car"]


def demo_arrays(size: int, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb (3, n, n), true labels, valid mask) of the demo scene, written once to cache."""
    import rasterio

    from pipeline.demo import write_demo_scene

    image = cache / f"scene-{size}.tif"
    labels = cache / f"scene-{size}_labels.tif"
    if not (image.exists() and labels.exists()):
        image, labels = write_demo_scene(image, size=size)
    with rasterio.open(image) as src:
        rgb = src.read()
        valid = src.read_masks(1) > 0
    with rasterio.open(labels) as src:
        truth = src.read(1)
    return rgb, truth, valid


def kmeans_like(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Nearest of the 5 demo class colours per pixel (255 where invalid)."""
    from pipeline.demo import DEMO_COLORS

    centres = np.asarray(DEMO_COLORS, dtype=np.float32)
    best = np.zeros(rgb.shape[1:], dtype=np.uint8)
    best_d = np.full(rgb.shape[1:], np.inf, dtype=np.float32)
    pix = rgb.astype(np.float32)
    for k, c in enumerate(centres):
        d = sum((pix[i] - c[i]) ** 2 for i in range(3))
        closer = d < best_d
        best[closer] = k
        best_d[closer] = d[closer]
    best[~valid] = 255
    return best


def blocky(size: int, noise: float, seed: int = 0, cell: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 5, size=(-(-size // cell),) * 2, dtype=np.uint8)
    labels = np.kron(cells, np.ones((cell, cell), dtype=np.uint8))[:size, :size].copy()
    if noise > 0:
        hit = rng.random(labels.shape) < noise
        labels[hit] = rng.integers(0, 5, size=int(hit.sum()), dtype=np.uint8)
    return labels


def naip_kmeans(size: int, cache: Path) -> Path | None:
    """labels.tif of ``stego segment`` (pixel-kmeans, 6 clusters, polygons off) on the NAIP
    mosaic of ``size``², made once in ``cache``; None when ../shared is absent."""
    from _naip_mosaic import naip_available, write_naip_mosaic

    if not naip_available():
        print("naip-kmeans: skipped, ../shared/data is absent", file=sys.stderr)
        return None
    labels = cache / f"naip-{size}-out" / "labels.tif"
    if labels.exists():
        return labels
    mosaic = write_naip_mosaic(cache / f"naip-{size}.tif", size)
    model = cache / "naip-pixel-kmeans-6"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    stego = [sys.executable, "-m", "flows.cli"]
    root = Path(__file__).resolve().parents[1]
    if not (model / "model.json").exists():
        subprocess.run([*stego, "fit", str(mosaic), "--method", "pixel-kmeans", "--clusters", "6",
                        "--out", str(model), "-q"], check=True, env=env, cwd=root,
                       stdout=subprocess.DEVNULL)
    subprocess.run([*stego, "segment", str(mosaic), "--model", str(model), "--out",
                    str(labels.parent), "--set", "vectorize.enabled=false", "-q"], check=True,
                   env=env, cwd=root, stdout=subprocess.DEVNULL)
    return labels


def read_labels(path: Path) -> tuple[np.ndarray, object, object]:
    """(labels, transform, crs) of a label raster."""
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1), src.transform, src.crs


def make_case(name: str, size: int, cache: Path) -> np.ndarray:
    if name.startswith("demo-"):
        rgb, truth, valid = demo_arrays(size, cache)
        return truth if name == "demo-truth" else kmeans_like(rgb, valid)
    if name == "blocky":
        return blocky(size, 0.0)
    if name.startswith("noisy-"):
        return blocky(size, float(name.split("-")[1]) / 100)
    raise ValueError(f"unknown case {name}")


def shapes_alone(labels: np.ndarray, min_pixels: int) -> tuple[float, float, int]:
    """Wall and CPU seconds and polygon count of rasterio.features.shapes on the whole,
    pre-sieved raster."""
    import rasterio.features

    from pipeline.vectorize import NODATA, sieve

    sieved = sieve(labels, min_pixels) if min_pixels > 1 else labels
    mask = sieved != NODATA
    t0, c0 = time.perf_counter(), time.process_time()
    n = sum(1 for _ in rasterio.features.shapes(sieved, mask=mask, connectivity=4))
    return time.perf_counter() - t0, time.process_time() - c0, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--min-pixels", type=int, default=16)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--labels", type=Path, action="append", default=[],
                        help="also run on this label raster (e.g. a `stego segment` labels.tif)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest counts")
    parser.add_argument("--no-reference", action="store_true", help="skip the shapes-alone rows")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the demo scene here")
    args = parser.parse_args()

    from rasterio.transform import Affine

    from pipeline.demo import DEMO_CRS, DEMO_ORIGIN, DEMO_PIXEL_SIZE
    from pipeline.vectorize import vectorize_labels

    demo_transform = Affine(DEMO_PIXEL_SIZE, 0, DEMO_ORIGIN[0], 0, -DEMO_PIXEL_SIZE,
                            DEMO_ORIGIN[1])
    head = ["case", "Mpx", "s", "Mpx/s", "CPU s", "Mpx/CPU s", "polygons", "seam merges",
            "sieve s", "polygonize s", "features s", "merge s", "write s"]
    rows = []

    def run(labels: np.ndarray, out: Path, transform=demo_transform, crs=DEMO_CRS):
        gc.collect()
        c0 = time.process_time()
        stats = vectorize_labels(
            labels, transform=transform, crs=crs, class_names=NAMES, out_path=out,
            block_size=args.block_size, min_region_pixels=args.min_pixels,
        )
        return stats, time.process_time() - c0

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        run(blocky(256, 0.05), Path(tmp) / "warm-up.gpkg")
        cases: list[tuple[str, Path | None]] = [(name, None) for name in args.cases]
        cases += [(f"labels {path.name}", path) for path in args.labels]
        for name, path in cases:
            georef = {}
            if name == "naip-kmeans":
                path = naip_kmeans(args.size, cache)
                if path is None:
                    continue
            if path is not None:
                labels, transform, crs = read_labels(path)
                georef = {"transform": transform, "crs": crs}
            else:
                labels = make_case(name, args.size, cache)
            mpx = labels.size / 1e6
            best = best_cpu = None
            for k in range(args.repeat):
                stats, cpu = run(labels, Path(tmp) / f"case-{k}.gpkg", **georef)
                if best is None or stats.seconds < best.seconds:
                    best = stats
                best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
            timings = getattr(best, "timings", None) or {}
            split = [
                f"{timings[key]:.2f}" if key in timings else "-"
                for key in ("sieve", "polygonize", "features", "merge", "write")
            ]
            rows.append([
                name, f"{mpx:.1f}", f"{best.seconds:.2f}", f"{mpx / best.seconds:.1f}",
                f"{best_cpu:.2f}", f"{mpx / best_cpu:.1f}", str(best.polygons),
                str(best.seam_groups_merged), *split,
            ])
            if not args.no_reference:
                seconds, cpu, count = shapes_alone(labels, args.min_pixels)
                rows.append([
                    f"{name}: shapes alone", f"{mpx:.1f}", f"{seconds:.2f}",
                    f"{mpx / seconds:.1f}", f"{cpu:.2f}", f"{mpx / cpu:.1f}", str(count), "-",
                    "-", f"{seconds:.2f}", "-", "-", "-",
                ])
            print(f"done {name}", file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit("no case ran")
    print(f"size {args.size}², blocks {args.block_size}², sieve {args.min_pixels} px, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, one process")
    print()
    print_table(head, rows)


if __name__ == "__main__":
    main()
