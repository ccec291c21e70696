"""Backbone throughput and its share of the device's measured matmul rate; prints one table.

    python benchmarks/gpu.py [--device auto] [--backbones vit_small_patch8_224.dino
        vit_base_patch8_224.dino] [--tile 544] [--batch 8] [--iters 10] [--compile]

The peak is measured, not taken from a datasheet: a large square matmul in the run's
precision (``model.precision: auto``: bf16 on CUDA and on CPUs with native bf16). The
backbone's FLOPs per batch are counted with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and SDPA), and its achieved rate is
FLOPs / time under the same autocast the pipeline uses. Issue 5 target: >= 40 % on ViT-B/8.
Random weights (speed does not depend on them); runs on CPU too, only slowly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int, iters: int) -> float:
    """Measured FLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbones", nargs="+",
                    default=["vit_small_patch8_224.dino", "vit_base_patch8_224.dino"])
    ap.add_argument("--tile", type=int, default=544)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--matmul-n", type=int, default=None, help="default 8192 CUDA, 2048 CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile forward_features")
    args = ap.parse_args()

    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.models.backbone import build_backbone, compile_backbone, uses_fused_attention
    from pipeline.models.device import autocast_dtype, precision_context, resolve_device

    device = resolve_device(args.device)
    amp = autocast_dtype("auto", device)
    dtype = amp or torch.float32
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    n = args.matmul_n or (8192 if dev_type == "cuda" else 2048)
    peak = matmul_peak(device, dtype, n, max(3, args.iters))
    rows = []
    for name in args.backbones:
        model, _ = build_backbone(name, "random")
        model = model.to(device).eval()
        if args.compile:
            compile_backbone(model)
        x = torch.rand(args.batch, 3, args.tile, args.tile, device=device)

        def forward(model: torch.nn.Module = model, x: torch.Tensor = x) -> None:
            with torch.inference_mode(), precision_context("auto", device):
                model.forward_features(x)

        with FlopCounterMode(display=False) as counter:
            forward()
        flops = counter.get_total_flops()
        forward()  # warm-up (and compilation)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            forward()
        _sync(device)
        secs = (time.perf_counter() - t0) / args.iters
        rate = flops / secs
        rows.append([name, str(args.batch), f"{args.tile}²", f"{secs * 1000:.0f}",
                     f"{args.batch * args.tile**2 / secs / 1e6:.2f}", f"{rate / 1e12:.2f}",
                     f"{100 * rate / peak:.0f} %", str(uses_fused_attention(model))])
    gpu = torch.cuda.get_device_name(device) if dev_type == "cuda" else f"{os.cpu_count()} CPU"
    print(f"\ndevice: {gpu}; precision {str(dtype).removeprefix('torch.')}; measured matmul "
          f"peak {peak / 1e12:.2f} TFLOP/s (n={n}); compile={args.compile}")
    print_table(["backbone", "batch", "tile", "ms/batch", "Mpx/s", "TFLOP/s", "of peak",
                 "SDPA"], rows)


if __name__ == "__main__":
    main()
