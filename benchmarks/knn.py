"""kNN pairs for STEGO at scale: time and peak memory of the chunked top-k; prints one table.

    python benchmarks/knn.py [--crops 10000 100000] [--dim 384] [--chunk 1024] [--k 7]

Random pooled features (time and memory do not depend on their values). Memory is bounded by
``chunk x crops`` similarities at a time, never ``crops x crops`` (100k crops would need 40 GB).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402
from throughput import PeakRSS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=384, help="backbone width (ViT-S: 384)")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--k", type=int, default=7)
    args = ap.parse_args()

    from pipeline.fit.knn import knn_indices

    rows = []
    for n in args.crops:
        pooled = torch.randn(n, args.dim, generator=torch.Generator().manual_seed(0))
        base = psutil.Process().memory_info().rss
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            idx = knn_indices(pooled, args.k, chunk=args.chunk)
            secs = time.perf_counter() - t0
        assert idx.shape == (n, args.k)
        rows.append([str(n), str(args.dim), str(args.chunk), f"{secs:.1f}",
                     f"{(rss.peak - base) / 2**20:.0f}", f"{n * n * 4 / 2**30:.1f}"])
    print(f"\nmachine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    print_table(["crops", "dim", "chunk", "seconds", "peak RSS above start MiB",
                 "full n x n would be GiB"], rows)


if __name__ == "__main__":
    main()
