"""Our `segment` flow against the loops a user would write, same model, same raster; one table.

    python benchmarks/peers.py [--method pixel-kmeans|feature-kmeans] [--size 2048]
        [--backbone vit_small_patch8_224.dino] [--tile 544] [--stride 512] [--batch 4]
        [--threads N] [--loader-workers 0] [--skip-torchgeo] [--work DIR]
        [--precision auto fp32] [--peer-precision fp32 bf16]

Contenders, each writing a uint8 label GeoTIFF of the whole raster:

* ours (labels): ``segment`` with ``vectorize.enabled=False`` (Zarr + COG, preview, STAC);
* ours (default): ``segment`` with the defaults (also sieved, merged polygons);
* TorchGeo: ``RasterDataset`` + ``GridGeoSampler`` + ``DataLoader(collate_fn=stack_samples)``,
  argmax pasted into a whole-raster array (last writer wins), one GeoTIFF written at the end;
* rasterio: a ``Window`` loop, edge tiles reflect-padded, batched predict, each tile's centre
  region written window by window into a GeoTIFF opened in ``'w'`` mode.

Precision: ours runs ``model.precision`` (``--precision``, default ``auto``: what a user gets,
bf16 autocast for the backbone on CUDA and on CPUs with native bf16); the peers run as written,
in float32, unless ``--peer-precision bf16`` adds rows with the loop wrapped in
``torch.autocast(dtype=torch.bfloat16)``, which shows how much of a gap is precision alone.

Every contender uses the same fitted model, tile, stride and batch size and the same number of
torch threads (ours: Dask worker(s) with ``cpu_count // workers`` threads). "model s" is the time
inside ``model.predict``; "amplif." is model pixels / raster pixels; "agree %" is the share of
the pixels that ours labels (not nodata) where the contender gives the same label. Peers do no
nodata handling (as written by a user); nodata pixels are left out of the agreement.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import print_table  # noqa: E402
from throughput import PeakRSS  # noqa: E402

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the stego CLI sets it (flows/cli.py)

TORCHGEO_INSTALL = ".venv/bin/pip install -c constraints.txt torchgeo"


def _label_profile(src: Any, tile: int = 512) -> dict[str, Any]:
    return {
        "driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
        "dtype": "uint8", "crs": src.crs, "transform": src.transform, "tiled": True,
        "blockxsize": tile, "blockysize": tile, "compress": "deflate",
    }


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: 0, stride, ... until the raster is covered."""
    n = max(1, math.ceil((length - tile) / stride) + 1)
    return [i * stride for i in range(n)]


def _autocast(precision: str) -> Any:
    """What a user would wrap a loop in for bf16: ``torch.autocast`` on the CPU (or nothing)."""
    import contextlib

    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_ours(scene: Path, mdir: Path, out: Path, workers: int, vectorize: bool,
             tile: int, stride: int, batch: int, precision: str = "auto") -> dict[str, Any]:
    from flows.segment_flow import segment
    from pipeline.config import RunConfig

    cfg = RunConfig.model_validate({
        "model": {"precision": precision},
        "dask": {"workers": workers},
        "tiling": {"tile_size": tile, "overlap": tile - stride, "batch_size": batch},
        "vectorize": {"enabled": vectorize},
    })
    t0 = time.perf_counter()
    doc = segment(scene, mdir, out, cfg, fresh=True, progress=False)
    wall = time.perf_counter() - t0
    c = doc["counts"]
    return {"wall": wall, "model_s": c["model_seconds"], "model_px": c["model_pixels"],
            "path": Path(doc["outputs"]["cog"]), "timings": doc["timings_s"], "counts": c,
            "precision": doc["precision"],
            "stitch": f"cosine-blended overlap {tile - stride}, global tile grid"}


def run_torchgeo(scene: Path, mdir: Path, out_path: Path, tile: int, stride: int, batch: int,
                 loader_workers: int, precision: str = "fp32") -> dict[str, Any]:
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from pipeline.models.base import as_array
    from pipeline.models.store import load_model

    t0 = time.perf_counter()
    model = load_model(mdir)
    with rasterio.open(scene) as src:
        count, profile = src.count, _label_profile(src)
        left, top = src.transform.c, src.transform.f
        xres, yres = src.res
        width, height = src.width, src.height

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True
        all_bands = tuple(f"B{i}" for i in range(1, count + 1))
        rgb_bands = all_bands[:3]

    ds = Scene(paths=[str(scene)], bands=Scene.rgb_bands)
    sampler = GridGeoSampler(ds, size=tile, stride=stride)
    if len(sampler) == 0:
        raise SystemExit(f"TorchGeo: GridGeoSampler yields no chips ({width}x{height} raster is "
                         f"smaller than the {tile}px chip); use a larger --size")
    loader = DataLoader(ds, sampler=sampler, batch_size=batch, collate_fn=stack_samples,
                        num_workers=loader_workers)
    labels = np.zeros((height, width), dtype=np.uint8)
    t_model, tiles, clipped = 0.0, 0, 0
    with torch.inference_mode(), _autocast(precision):
        for b in loader:
            x = b["image"] / 255.0  # RasterDataset casts to float32; uint8 input
            tm = time.perf_counter()
            probs = as_array(model.predict(x if model.uses_torch else x.numpy()))
            t_model += time.perf_counter() - tm
            best = probs.argmax(1).astype(np.uint8)
            for bounds, lab in zip(b["bounds"], best, strict=True):
                xs, ys = bounds[0], bounds[1]
                c0 = round((xs.start - left) / xres)
                r0 = round((top - ys.stop) / yres)  # chip row 0 is its northern edge
                r1, c1 = min(r0 + lab.shape[0], height), min(c0 + lab.shape[1], width)
                rr0, cc0 = max(r0, 0), max(c0, 0)
                if (rr0, cc0, r1, c1) != (r0, c0, r0 + lab.shape[0], c0 + lab.shape[1]):
                    clipped += 1
                labels[rr0:r1, cc0:c1] = lab[rr0 - r0 : r1 - r0, cc0 - c0 : c1 - c0]
                tiles += 1
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(labels, 1)
    wall = time.perf_counter() - t0
    return {"wall": wall, "model_s": t_model, "model_px": tiles * tile * tile, "path": out_path,
            "stitch": "overwrite (last writer wins), no blending", "precision": precision,
            "note": f"{tiles} chips, {clipped} past the raster edge (zero-filled by "
                    f"rasterio.merge, grid anchored at the bottom-left corner)"}


def run_rasterio(scene: Path, mdir: Path, out_path: Path, tile: int, stride: int,
                 batch: int, precision: str = "fp32") -> dict[str, Any]:
    import rasterio
    import torch
    from rasterio.windows import Window

    from pipeline.models.base import as_array
    from pipeline.models.store import load_model

    t0 = time.perf_counter()
    model = load_model(mdir)
    half = (tile - stride) // 2
    t_model, tiles = 0.0, 0
    with rasterio.open(scene) as src, \
            rasterio.open(out_path, "w", **_label_profile(src)) as dst:
        W, H = src.width, src.height
        rows, cols = _starts(H, tile, stride), _starts(W, tile, stride)
        windows = [Window(c, r, min(tile, W - c), min(tile, H - r)) for r in rows for c in cols]

        def flush(pending: list[tuple[Window, np.ndarray]]) -> None:
            nonlocal t_model
            x = torch.from_numpy(np.stack([img for _, img in pending]))
            tm = time.perf_counter()
            with torch.inference_mode(), _autocast(precision):
                probs = as_array(model.predict(x if model.uses_torch else x.numpy()))
            t_model += time.perf_counter() - tm
            best = probs.argmax(1).astype(np.uint8)
            for (w, _), lab in zip(pending, best, strict=True):
                # centre region: drop half the overlap on every side that has a neighbour
                y0 = 0 if w.row_off == 0 else half
                x0 = 0 if w.col_off == 0 else half
                y1 = w.height if w.row_off + w.height >= H else w.height - half
                x1 = w.width if w.col_off + w.width >= W else w.width - half
                dst.write(lab[y0:y1, x0:x1], 1,
                          window=Window(w.col_off + x0, w.row_off + y0, x1 - x0, y1 - y0))

        pending: list[tuple[Window, np.ndarray]] = []
        for w in windows:
            img = src.read([1, 2, 3], window=w).astype(np.float32) / 255.0
            pad = ((0, 0), (0, tile - w.height), (0, tile - w.width))
            if pad[1][1] or pad[2][1]:
                img = np.pad(img, pad, mode="reflect")
            pending.append((w, img))
            tiles += 1
            if len(pending) == batch:
                flush(pending)
                pending = []
        if pending:
            flush(pending)
    wall = time.perf_counter() - t0
    return {"wall": wall, "model_s": t_model, "model_px": tiles * tile * tile, "path": out_path,
            "stitch": "centre crop (half overlap per side), no blending", "precision": precision,
            "note": f"{tiles} tiles, edge tiles reflect-padded"}


def agreement(ref: Path, other: Path) -> tuple[float, int]:
    """% of ref's labelled (non-255) pixels where other has the same label; pixel count."""
    import rasterio

    with rasterio.open(ref) as a, rasterio.open(other) as b:
        la, lb = a.read(1), b.read(1)
    valid = la != 255
    return 100.0 * float((la[valid] == lb[valid]).mean()), int(valid.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=["pixel-kmeans", "feature-kmeans"],
                    default="pixel-kmeans")
    ap.add_argument("--backbone", default="vit_small_patch8_224.dino")
    ap.add_argument("--size", type=int, default=2048, help="demo scene edge in pixels")
    ap.add_argument("--tile", type=int, default=544)
    ap.add_argument("--stride", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1, help="Dask workers for ours")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the peers (default: cpu_count // workers, as ours)")
    ap.add_argument("--loader-workers", type=int, default=0,
                    help="DataLoader num_workers for the TorchGeo peer")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each contender N times and report the fastest")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed run of ours on a 256² scene (starts Prefect's "
                         "ephemeral server, which the first flow run would otherwise pay for)")
    ap.add_argument("--skip-default", action="store_true",
                    help="skip the ours run with polygons (labels-only run only)")
    ap.add_argument("--skip-torchgeo", action="store_true",
                    help="run without the TorchGeo peer (it is reported as skipped)")
    ap.add_argument("--precision", nargs="+", choices=["auto", "fp32", "bf16"],
                    default=["auto"], help="model.precision for ours, one row each")
    ap.add_argument("--peer-precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                    help="peers' precision, one row each (fp32: the loop as a user writes it)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (reused)")
    args = ap.parse_args()
    if not 0 < args.stride <= args.tile or (args.tile - args.stride) % 2:
        ap.error("need 0 < stride <= tile with an even overlap (tile - stride)")

    if not args.skip_torchgeo:
        try:
            import torchgeo  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"TorchGeo is not installed ({exc}); install it with\n    "
                             f"{TORCHGEO_INSTALL}\nor pass --skip-torchgeo") from None

    import torch

    from flows.fit_flow import fit_flow
    from pipeline.config import RunConfig
    from pipeline.demo import write_demo_scene

    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    work = args.work or Path(tempfile.mkdtemp(prefix="stego-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = work / f"scene{args.size}.tif"
    if not scene.exists():
        write_demo_scene(scene, size=args.size)
    mdir = work / f"model-{args.method}-{args.backbone.replace('/', '_')}"
    fitted_now = not (mdir / "model.json").exists()
    if fitted_now:
        cfg = RunConfig.model_validate({"dask": {"workers": args.workers}})
        t0 = time.perf_counter()
        fit_flow([str(scene)], str(mdir), method=args.method, clusters=5, weights="random",
                 backbone=args.backbone, config=cfg.model_dump(mode="json"))
        print(f"fitted {args.method} in {time.perf_counter() - t0:.1f} s -> {mdir}")

    from pipeline.models.store import load_model

    patch = load_model(mdir).patch_size
    if args.tile % patch:
        raise SystemExit(f"--tile {args.tile} is not a multiple of the model patch {patch}")

    if not args.no_warmup and not fitted_now:  # fitting already started Prefect
        tiny = work / "warmup256.tif"
        if not tiny.exists():
            write_demo_scene(tiny, size=256)
        print("warm-up: ours on a 256² scene (untimed) ...", flush=True)
        run_ours(tiny, mdir, work / "out-warmup", args.workers, False, args.tile, args.stride,
                 args.batch)

    import psutil

    base_rss = psutil.Process().memory_info().rss
    results: list[tuple[str, dict[str, Any], float]] = []
    skipped: list[str] = []
    common = (args.tile, args.stride, args.batch)
    runs: list[tuple[str, Any]] = []
    for prec in args.precision:
        runs.append(("ours (labels)", lambda p=prec: run_ours(
            scene, mdir, work / f"out-ours-labels-{p}", args.workers, False, *common, p)))
        if not args.skip_default:
            runs.append(("ours (default)", lambda p=prec: run_ours(
                scene, mdir, work / f"out-ours-default-{p}", args.workers, True, *common, p)))
    if args.skip_torchgeo:
        skipped.append("TorchGeo: SKIPPED (--skip-torchgeo); install with " + TORCHGEO_INSTALL)
    for prec in args.peer_precision:
        if not args.skip_torchgeo:
            runs.append(("TorchGeo", lambda p=prec: run_torchgeo(
                scene, mdir, work / f"torchgeo-labels-{p}.tif", *common, args.loader_workers,
                p)))
        runs.append(("rasterio loop", lambda p=prec: run_rasterio(
            scene, mdir, work / f"rasterio-labels-{p}.tif", *common, p)))

    for name, fn in runs:
        best: dict[str, Any] | None = None
        peak = 0
        for i in range(args.repeat):
            torch.set_num_threads(threads)
            print(f"running {name} ({i + 1}/{args.repeat}) ...", flush=True)
            with PeakRSS() as rss:
                res = fn()
            peak = max(peak, rss.peak)
            if best is None or res["wall"] < best["wall"]:
                best = res
        assert best is not None
        results.append((f"{name}, {best['precision']}", best, peak))

    ref = results[0][1]["path"]
    raster_px = args.size * args.size
    mpx = raster_px / 1e6
    rows, notes = [], []
    for name, r, peak in results:
        agree, n_valid = agreement(ref, r["path"])
        rows.append([name, f"{r['wall']:.1f}", f"{r['model_s']:.1f}",
                     f"{r['wall'] - r['model_s']:.1f}", f"{mpx / r['wall']:.3f}",
                     f"{r['model_px'] / raster_px:.2f}", f"{agree:.2f}",
                     f"{peak / 2**20:.0f}", r["stitch"]])
        if "note" in r:
            notes.append(f"{name}: {r['note']}")
        if "timings" in r:
            t, c = r["timings"], r["counts"]
            notes.append(f"{name}: timings_s " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
                         + f"; tiles {c['tiles']}, planned compute_amplification "
                         f"{c['compute_amplification']:.2f}")
    head = ["contender", "wall s", "model s", "wall - model s", "Mpx/s", "amplif.",
            "agree %", "peak RSS MiB", "stitching"]
    print(f"\nmachine: {os.cpu_count()} CPU cores, torch threads {threads}, Dask workers "
          f"{args.workers}; {args.method} (backbone {args.backbone}, random weights) on a "
          f"{args.size}² demo scene; tile {args.tile}, stride {args.stride}, batch "
          f"{args.batch}; best of {args.repeat}; agreement over {n_valid} labelled pixels vs "
          f"{results[0][0]} (the first row); peak RSS is the whole process tree, including "
          f"this process's "
          f"{base_rss / 2**20:.0f} MiB before the first timed run (imports, warm-up)")
    print_table(head, rows)
    for line in notes + skipped:
        print(f"- {line}")
    if skipped:
        print("\n!!! " + "\n!!! ".join(skipped), file=sys.stderr)


if __name__ == "__main__":
    main()
