"""Backbone speed in float32 and bf16 autocast on this CPU, by oneDNN instruction set; one table.

    python benchmarks/precision.py [--backbones vit_small_patch8_224.dino ...] [--tile 544]
        [--batch 4] [--iters 2] [--isa native AVX512_CORE_BF16 AVX512_CORE AVX2]

``model.precision: auto`` runs the backbone under bf16 autocast on CPUs with native bf16
(``pipeline.models.device.cpu_has_native_bf16``: AVX512-BF16, which AMX CPUs also have) and in
float32 elsewhere. This measures why: each row runs the backbone's ``forward_features`` (random
weights; speed does not depend on them) in a fresh process with ``ONEDNN_MAX_CPU_ISA`` capping
the instructions oneDNN may use, so one machine with AMX also shows what CPUs without AMX, or
without any bf16 instructions, would get. "cos min" is the smallest cosine between a patch's
float32 and bf16 features.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(backbone: str, tile: int, batch: int, iters: int) -> dict[str, float]:
    """Seconds per tile in float32 and in bf16 autocast, and the features' agreement."""
    import torch

    from pipeline.models.backbone import build_backbone
    from pipeline.models.device import precision_context

    model, _ = build_backbone(backbone, "random", {})
    x = torch.rand(batch, 3, tile, tile, generator=torch.Generator().manual_seed(0))
    out: dict[str, float] = {}
    feats = {}
    for prec in ("fp32", "bf16"):
        with torch.inference_mode(), precision_context(prec, "cpu"):
            model.forward_features(x)  # warm-up: kernel selection, allocations
            t0 = time.perf_counter()
            for _ in range(iters):
                y = model.forward_features(x)
            out[prec] = (time.perf_counter() - t0) / (iters * batch)
            feats[prec] = y.float()
    cos = torch.nn.functional.cosine_similarity(feats["fp32"], feats["bf16"], dim=-1)
    out["cos_min"] = float(cos.min())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["vit_small_patch8_224.dino"])
    ap.add_argument("--tile", type=int, default=544)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--isa", nargs="+",
                    default=["native", "AVX512_CORE_BF16", "AVX512_CORE", "AVX2"],
                    help="ONEDNN_MAX_CPU_ISA values (native: no cap)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(args.backbones[0], args.tile, args.batch, args.iters)))
        return

    import torch

    from pipeline.models.device import cpu_has_native_bf16, resolved_precision

    rows = []
    for backbone in args.backbones:
        for isa in args.isa:
            env = dict(os.environ)
            env.pop("ONEDNN_MAX_CPU_ISA", None)
            if isa != "native":
                env["ONEDNN_MAX_CPU_ISA"] = isa
            cmd = [sys.executable, __file__, "--worker", "--backbones", backbone, "--tile",
                   str(args.tile), "--batch", str(args.batch), "--iters", str(args.iters)]
            print(f"{backbone}, oneDNN ISA {isa} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{backbone} ({isa}) failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            mpx = args.tile * args.tile / 1e6
            rows.append([backbone, isa, f"{r['fp32']:.2f}", f"{r['bf16']:.2f}",
                         f"{r['fp32'] / r['bf16']:.2f}", f"{mpx / r['fp32']:.3f}",
                         f"{mpx / r['bf16']:.3f}", f"{r['cos_min']:.5f}"])
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    flags = [f for f in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if caps.get(f)]
    print(f"\nmachine: {os.cpu_count()} CPU cores ({caps.get('cpu_name', '?')}; "
          f"{', '.join(flags) or 'flags unknown'}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; tile {args.tile}², batch {args.batch}, mean of "
          f"{args.iters} after a warm-up; native bf16 on this CPU: {cpu_has_native_bf16()}, so "
          f"model.precision auto runs {resolved_precision('auto', 'cpu')} here")
    print_table(["backbone", "oneDNN ISA cap", "fp32 s/tile", "bf16 s/tile", "bf16 speed-up",
                 "fp32 Mpx/s", "bf16 Mpx/s", "cos min"], rows)


if __name__ == "__main__":
    main()
