"""few_labels.py's timing: `stego fit --samples` (pipeline.fit.samples_fit.fit_classifier) on a
generated demo scene with 20 points per class in a GeoPackage, and segment throughput of the
classifier against feature-kmeans on the same tiny backbone (544² tiles, float32, CPU)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

TILE = 544


def write_points(path: Path, labels: np.ndarray, transform, crs: str, names: list[str],
                 per_class: int, seed: int) -> int:
    """A GeoPackage of ``per_class`` random points per class (pixel centres), field ``class``."""
    import pyogrio
    import shapely

    rng = np.random.default_rng(seed)
    pts, cls = [], []
    for k, name in enumerate(names):
        rows, cols = np.nonzero(labels == k)
        if not len(rows):
            continue
        for i in rng.choice(len(rows), min(per_class, len(rows)), replace=False):
            x, y = transform * (cols[i] + 0.5, rows[i] + 0.5)
            pts.append(shapely.Point(x, y))
            cls.append(name)
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.array(pts, dtype=object)),
                      field_data=[np.array(cls, dtype=object)], fields=["class"],
                      geometry_type="Point", crs=crs)
    return len(pts)


def _fit(rasters, samples, backbone_features: bool, log: list[str]):
    from flows.fit_flow import CLASSIFIER_BACKBONE
    from pipeline.config import RunConfig
    from pipeline.config.classifier import ClassifierConfig
    from pipeline.fit.samples_fit import fit_classifier

    cfg = RunConfig()
    tiling = {"tile_size": cfg.tiling.tile_size, "overlap": cfg.tiling.overlap,
              "block_size": cfg.tiling.block_size,
              "batch_size": cfg.tiling.batch_size if isinstance(cfg.tiling.batch_size, int)
              else 4}
    t0 = time.perf_counter()
    model, stats = fit_classifier(
        rasters, samples, CLASSIFIER_BACKBONE[0], "random", dict(CLASSIFIER_BACKBONE[1]),
        cfg.fit, ClassifierConfig(backbone_features=backbone_features), tiling,
        device="cpu", precision="fp32", log=log.append)
    return model, stats, time.perf_counter() - t0


def fit_rows(work: Path, size: int, per_class: int = 20, seed: int = 0):
    """Fit the default classifier (and one without backbone) on a ``size``² demo scene;
    returns the table rows and the fitted default model and a few 544² tiles."""
    import rasterio

    from pipeline.demo import DEMO_CLASSES, DEMO_CRS, write_demo_scene
    from pipeline.io.raster import compute_scaling, open_raster_info, read_window
    from pipeline.io.samples import parse_sample_spec, read_samples

    t0 = time.perf_counter()
    image, labels_path = write_demo_scene(work / f"fit_{size}.tif", size=size, seed=seed)
    with rasterio.open(labels_path) as ds:
        labels, transform = ds.read(1), ds.transform
    gpkg = work / f"points_{size}.gpkg"
    n = write_points(gpkg, labels, transform, DEMO_CRS, list(DEMO_CLASSES), per_class, seed)
    print(f"  timing: {size}² demo scene and {n} points written in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    info = open_raster_info(str(image))
    rasters = [(info, compute_scaling(info))]
    t1 = time.perf_counter()
    samples = read_samples([parse_sample_spec(str(gpkg))], [info], "class", seed=0,
                           max_pixels_per_feature=200)
    t_read = time.perf_counter() - t1
    rows, models = [], {}
    for label, with_backbone in (("default classifier (RGB + local + tiny ViT, trees 100)",
                                  True), ("RGB + local only, trees 100", False)):
        log: list[str] = []
        model, stats, wall = _fit(rasters, samples, with_backbone, log)
        models[with_backbone] = model
        t = stats["timings_s"]
        tiles = next((m.split(" from ")[1].split()[0] for m in log if " from " in m), "?")
        acc = stats["accuracy"]["overall_accuracy"] if stats["accuracy"] else float("nan")
        rows.append([f"fit: {label}", f"{size}²", str(n), tiles, f"{t_read:.2f}",
                     f"{t['features']:.1f}", f"{t['train']:.2f}", f"{wall:.1f}",
                     f"{100 * acc:.1f}"])
        print(f"  timing: {rows[-1]}", flush=True)
    scaling = rasters[0][1]
    offsets = [(0, 0), (size // 2, size // 2), (size - TILE, 0)]
    tiles = [read_window(info, scaling, r, c, TILE, TILE)[0] for r, c in offsets]
    return rows, models, tiles


def throughput_rows(models: dict, tiles: list[np.ndarray], repeats: int = 1) -> list[list[str]]:
    """Seconds per 544² tile and per megapixel of model input for each model, CPU, one tile
    per call (the best of ``repeats`` passes over the tiles, after a warm-up), with the
    backbone in float32 and in bf16 autocast (what `segment`'s precision auto picks on a CPU
    with native bf16)."""
    import torch

    from pipeline.config.classifier import ClassifierConfig
    from pipeline.fit.samples_fit import train_head
    from pipeline.models.classifier import SampleClassifier
    from pipeline.models.crf_refine import CRFRefined
    from pipeline.models.device import cpu_has_native_bf16, precision_context
    from pipeline.models.feature_kmeans import FeatureKMeans
    from pipeline.models.refine import RegionRefined

    default, local = models[True], models[False]
    k = len(default.class_names)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, default.feature_dim)).astype(np.float32)  # speed only
    linear = SampleClassifier(default.backbone, default.backbone_info, "linear",
                              train_head(x, np.arange(200) % k, k,
                                         ClassifierConfig(head="linear")),
                              default.class_names, default.colors, default.local_radii)
    torch.manual_seed(0)
    kmeans = FeatureKMeans(default.backbone, default.backbone_info,
                           torch.randn(k, int(default.backbone.num_features)),
                           default.class_names, default.colors)
    cands = [("classifier as segment runs it (superpixels 256 px, means of every 4th px)",
              RegionRefined(default, 256)),
             ("the same, --crf (the dense CRF at 1/4)", CRFRefined(RegionRefined(default, 256))),
             ("the same, the CRF at full resolution",
              CRFRefined(RegionRefined(default, 256), 1)),
             ("classifier, superpixel means of every pixel",
              RegionRefined(default, 256, sample_stride=1)),
             ("classifier, --refine none", default),
             ("classifier, head linear, --refine none", linear),
             ("classifier, RGB + local only, --refine none", local),
             ("feature-kmeans (same tiny ViT, random centroids)", kmeans)]
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    rows = []
    batch = [torch.from_numpy(t)[None] for t in tiles]
    for label, model in cands:
        if hasattr(model, "eval"):
            model.eval()
        row = [label]
        for precision in precisions:
            with torch.no_grad(), precision_context(precision, "cpu"):
                model.predict(batch[0])
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    for b in batch:
                        model.predict(b)
                    best = min(best, (time.perf_counter() - t0) / len(batch))
            row += [f"{best:.2f}", f"{best / (TILE * TILE) * 1e6:.2f}"]
        rows.append(row)
        print(f"  timing: {rows[-1]}", flush=True)
    return rows, precisions


def segment_rows(work: Path, size: int, model: object, repeats: int = 3) -> list[list[str]]:
    """`stego segment` end to end (Prefect, tiling, Zarr, COG, polygons; precision auto) on the
    ``size``² demo scene: the fitted default classifier against feature-kmeans fitted by
    `stego fit --method feature-kmeans` on the same tiny ViT architecture, random weights;
    ``repeats`` runs of each, alternating, afresh each time; the median and every run."""
    import subprocess
    import sys

    from flows.fit_flow import CLASSIFIER_BACKBONE
    from pipeline.models.store import save_model

    image = work / f"fit_{size}.tif"
    cls_dir = save_model(model, work / "model_classifier", {"accuracy": None})
    km_dir = work / "model_kmeans"
    args = [a for k, v in CLASSIFIER_BACKBONE[1].items() for a in ("--backbone-arg", f"{k}={v}")]
    stego = [sys.executable, "-m", "flows.cli"]
    subprocess.run(stego + ["fit", str(image), "--method", "feature-kmeans", "--weights",
                            "random", "--backbone", CLASSIFIER_BACKBONE[0], *args,
                            "--embed-weights", "--clusters", str(len(model.class_names)),
                            "--out", str(km_dir)], check=True, capture_output=True)
    models = (("classifier (default: superpixels)", cls_dir, []),
              ("classifier, --crf", cls_dir, ["--crf"]), ("feature-kmeans", km_dir, []))
    walls: dict[str, list[float]] = {label: [] for label, _, _ in models}
    for _ in range(repeats):  # alternating, so a slow spell of the machine hits both
        for label, model_dir, extra in models:
            out = work / f"seg_{model_dir.name}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run(stego + ["segment", str(image), "--model", str(model_dir), "--out",
                                    str(out), *extra], check=True, capture_output=True)
            walls[label].append(time.perf_counter() - t0)
            print(f"  timing: {label} {walls[label][-1]:.1f} s", flush=True)
    rows = []
    for label, _, _ in models:
        wall = float(np.median(walls[label]))
        rows.append([label, f"{size}²", f"{wall:.1f}", " / ".join(f"{w:.1f}" for w in
                                                              walls[label]),
                     f"{wall / (size * size) * 1e6:.2f}"])
    return rows
