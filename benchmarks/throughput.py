"""End-to-end throughput of `stego segment` on generated demo scenes and on real imagery (a
mosaic of the NAIP tile in ../shared/data); prints one table.

    python benchmarks/throughput.py [--sizes 1024 2048] [--methods pixel-kmeans feature-kmeans]
        [--backbone vit_small_patch8_224.dino] [--workers 1] [--refine none regions]
        [--naip-sizes 2048]

Scenes: the generated demo scene at each ``--sizes`` and the NAIP mosaic at each
``--naip-sizes`` (benchmarks/_naip_mosaic.py builds it at run time; skipped with a note when
../shared is absent). Each scene kind gets its own model per method, fitted on that scene.

Methods: pixel-kmeans, feature-kmeans, and the backbone-free threshold, region, edge; each
is segmented once per ``--refine`` value (regions: superpixel refinement, issue 15).

Stage times come from run.json; "model s" is the time spent inside the model's forward pass
(summed over blocks), so "infer / model" is the overhead of reading, blending and writing.
Peak RSS is that of the whole process tree (this process + Dask workers), sampled.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _naip_mosaic import naip_available, write_naip_mosaic  # noqa: E402
from _table import print_table  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stego CLI sets it (flows/cli.py)


class PeakRSS:
    """Samples the RSS of this process and its children every 50 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me, *me.children(recursive=True)]
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--methods", nargs="+", default=["pixel-kmeans", "feature-kmeans"])
    ap.add_argument("--backbone", default="vit_small_patch8_224.dino")
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="Dask worker counts to compare (scaling)")
    ap.add_argument("--block-size", type=int, default=None,
                    help="tiling.block_size (small blocks give several workers work)")
    ap.add_argument("--refine", nargs="+", default=["none"], choices=["none", "regions"],
                    help="model.refine values, one row each")
    ap.add_argument("--naip-sizes", type=int, nargs="*", default=[2048],
                    help="sizes of the real-imagery NAIP mosaic (none: generated scenes only)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory")
    args = ap.parse_args()

    from flows.fit_flow import fit_flow
    from flows.segment_flow import segment
    from pipeline.config import RunConfig
    from pipeline.demo import write_demo_scene

    work = args.work or Path(tempfile.mkdtemp(prefix="stego-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    scenes = [("demo", size, write_demo_scene(work / f"scene{size}.tif", size=size)[0])
              for size in args.sizes]
    if args.naip_sizes and not naip_available():
        print("note: ../shared/data is not here: the NAIP mosaic rows are skipped")
    elif args.naip_sizes:
        scenes += [("NAIP", size, write_naip_mosaic(work / f"naip{size}.tif", size))
                   for size in args.naip_sizes]
    rows = []
    for kind, size, scene in scenes:
        for method, workers, refine in ((m, w, r) for m in args.methods for w in args.workers
                                        for r in args.refine):
            tiling = {"block_size": args.block_size} if args.block_size else {}
            cfg = RunConfig.model_validate({"dask": {"workers": workers}, "tiling": tiling,
                                            "model": {"refine": refine}})
            mdir = work / f"model-{method}-{kind}"
            if not (mdir / "model.json").exists():
                fit_flow([str(scene)], str(mdir), method=method, clusters=5, weights="random",
                         backbone=args.backbone, config=cfg.model_dump(mode="json"))
            out = work / f"out-{method}-{kind}-{size}-{workers}-{refine}"
            with PeakRSS() as rss:
                t0 = time.perf_counter()
                doc = segment(scene, mdir, out, cfg, fresh=True, progress=False)
                wall = time.perf_counter() - t0
            t, c = doc["timings_s"], doc["counts"]
            mpx = size * size / 1e6
            polygons = doc["polygons"].get("polygons", "-")
            rows.append([kind, method, refine, str(workers), f"{size}²", f"{wall:.1f}",
                         f"{t['infer']:.1f}",
                         f"{c['model_seconds']:.1f}", f"{t['cog']:.2f}", f"{t['vectorize']:.2f}",
                         f"{mpx / t['infer']:.2f}", f"{mpx / max(c['model_seconds'], 1e-9):.2f}",
                         f"{c['compute_amplification']:.2f}", str(polygons),
                         f"{rss.peak / 2**20:.0f}"])
    head = ["scene", "method", "refine", "workers", "raster", "wall s", "infer s", "model s",
            "cog s", "vector s",
            "infer Mpx/s", "model-only Mpx/s", "amplif.", "polygons", "peak RSS MiB"]
    print(f"\nmachine: {os.cpu_count()} CPU cores, block_size={args.block_size or 'default'}, "
          f"backbone={args.backbone} (random weights)")
    print_table(head, rows)


if __name__ == "__main__":
    main()
