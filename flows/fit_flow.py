"""The `fit` flow: open inputs -> sample crops -> fit the model -> save it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from pipeline.config import RunConfig, build_config
from pipeline.errors import InputError
from pipeline.fit.classic import check_classic, fit_regions, fit_threshold
from pipeline.fit.methods import fit_feature_kmeans, fit_pixel_kmeans, fit_stego, scale_crop
from pipeline.fit.samples_fit import fit_classifier
from pipeline.fit.stego_train import plot_losses
from pipeline.io.crops import read_crops, sample_crop_windows, sample_crops
from pipeline.io.files import write_json_atomic
from pipeline.io.raster import RasterInfo, Scaling, compute_scaling, open_raster_info
from pipeline.io.samples import SampleSet, parse_sample_spec, read_samples
from pipeline.models import METHODS
from pipeline.models.backbone import DEFAULT_BACKBONE, resolve_backbone
from pipeline.models.device import resolve_device, resolved_precision
from pipeline.models.presets import gsd_input_scale
from pipeline.models.region_segmenters import RegionParams
from pipeline.models.store import save_model


@task(name="open-inputs")
def open_inputs(inputs: list[str], cfg: RunConfig) -> list[tuple[RasterInfo, Scaling]]:
    """Validate every input and compute its scaling once."""
    out = []
    for path in inputs:
        info = open_raster_info(path, cfg.input.bands)
        out.append((info, compute_scaling(info, cfg.input.percentiles)))
    return out


# the classifier's backbone when no --weights is given: an untrained tiny ViT (no download,
# fast), whose features measured best offline (docs/few-labels.md)
CLASSIFIER_BACKBONE = ("vit_small_patch8_224", {"depth": 4, "embed_dim": 192, "num_heads": 3})


def stego_weights(weights: str) -> Any:
    """The STEGO model when ``--weights`` names a STEGO model directory (its backbone and
    codes become the classifier's features), else None."""
    from pipeline.models.store import load_model, local_model_dir, read_model_json

    if weights in ("auto", "hub", "random"):
        return None
    path = local_model_dir(weights)
    if not (path / "model.json").is_file():
        return None
    meta = read_model_json(path)
    if meta["method"] != "stego":
        raise InputError(weights, f"a {meta['method']} model: --weights takes a STEGO model "
                         "directory, a backbone directory or a weights file")
    return load_model(path)


@task(name="read-samples")
def load_samples(samples: list[str], rasters: list[tuple[RasterInfo, Scaling]], cfg: RunConfig,
                 class_field: str | None, class_table: str | None) -> SampleSet:
    """The analyst's samples on every raster's grid (errors name the file and the problem)."""
    c = cfg.classifier
    result = read_samples([parse_sample_spec(s) for s in samples], [i for i, _ in rasters],
                          class_field, class_table=class_table,
                          min_pixels_per_class=c.min_pixels_per_class,
                          max_pixels_per_feature=c.max_pixels_per_feature, seed=c.seed)
    logger = get_run_logger()
    for w in result.warnings:
        logger.warning(w)
    counts = ", ".join(f"{n} {k}" for n, k in zip(result.classes.names,
                                                   result.pixel_counts().tolist(), strict=True))
    logger.info("samples: %s labelled pixels", counts)
    return result


@task(name="fit-classifier")
def train_classifier(rasters: list[tuple[RasterInfo, Scaling]], samples: SampleSet,
                     backbone: str, weights: str, overrides: dict[str, Any] | None,
                     embed: bool, cfg: RunConfig, scale: float,
                     stego: Any = None) -> tuple[Any, dict[str, Any]]:
    """Features of the labelled pixels on segment's tiles, hold-out accuracy, final head."""
    logger = get_run_logger()
    device = resolve_device(cfg.model.device)
    batch = cfg.tiling.batch_size if isinstance(cfg.tiling.batch_size, int) else 4
    tiling = {"tile_size": cfg.tiling.tile_size, "overlap": cfg.tiling.overlap,
              "block_size": cfg.tiling.grid_block_size(), "batch_size": batch}
    return fit_classifier(rasters, samples, backbone, weights, overrides, cfg.fit,
                          cfg.classifier, tiling, device=device,
                          precision=resolved_precision(cfg.model.precision, device),
                          embed_backbone=embed, input_scale=scale, log=logger.info,
                          stego=stego)


@task(name="sample-crops")
def sample(rasters: list[tuple[RasterInfo, Scaling]], cfg: RunConfig, size: int,
           scale: float = 1.0) -> list:
    """Seeded crops across all inputs, mostly-nodata crops skipped; with ``scale`` != 1 each
    is read at its native size and resampled at once (as the model will resample tiles)."""
    f = cfg.fit
    if scale == 1.0:
        return sample_crops(rasters, f.crops, size, f.seed, f.max_nodata_fraction)
    windows = sample_crop_windows(rasters, f.crops, round(size / scale), f.seed,
                                  f.max_nodata_fraction)
    return [scale_crop(crop, scale) for crop in read_crops(rasters, windows)]


@task(name="train-stego")
def train_stego_model(rasters: list[tuple[RasterInfo, Scaling]], clusters: int, backbone: str,
                      weights: str, overrides: dict[str, Any] | None, embed: bool,
                      cfg: RunConfig, out_dir: str, labels: list[str] | None = None,
                      label_ignore: list[int] | None = None) -> tuple[Any, dict[str, Any]]:
    """Cache backbone features of the crops, find kNN pairs, train head and cluster probe."""
    logger = get_run_logger()
    cache = Path(cfg.fit.cache_dir) if cfg.fit.cache_dir else Path(out_dir) / ".cache"
    cache.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.model.device)
    return fit_stego(rasters, clusters, backbone, weights, overrides, cfg.fit, cfg.stego, cache,
                     device=device, embed_backbone=embed, log=logger.info, label_paths=labels,
                     label_ignore=tuple(label_ignore or ()),
                     precision=resolved_precision(cfg.model.precision, device))


def fit_classic(method: str, crops: list, clusters: int,
                rasters: list[tuple[RasterInfo, Scaling]], cfg: RunConfig
                ) -> tuple[Any, dict[str, Any]]:
    """threshold (multi-level Otsu on an index), or region / edge (regions classified)."""
    f = cfg.fit
    if method == "threshold":
        t = cfg.threshold
        infos = [info for info, _ in rasters]
        channels = check_classic(method, clusters, infos, t.index, t.nir_band, t.red_band)
        bands = list(infos[0].bands) if t.index != "brightness" else []
        return fit_threshold(crops, clusters, t.index, channels, bands, f.sample_pixels,
                             f.seed)
    params = RegionParams(**cfg.regions.model_dump())
    return fit_regions(crops, clusters, method, params, f.iterations, f.seed, n_init=f.n_init)


@flow(name="fit")
def fit_flow(
    inputs: list[str],
    out_dir: str,
    method: str = "stego",
    clusters: int = 5,
    weights: str = "auto",
    backbone: str = DEFAULT_BACKBONE,
    backbone_overrides: dict[str, Any] | None = None,
    embed_weights: bool = False,
    config: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    label_ignore: list[int] | None = None,
    samples: list[str] | None = None,
    class_field: str | None = None,
    class_table: str | None = None,
) -> dict[str, Any]:
    """Fit a model on the inputs and write MODEL_DIR/model.{json,safetensors}: unsupervised,
    or (``samples``, method ``classifier``) a classifier in the analyst's classes."""
    logger = get_run_logger()
    cfg = build_config(config or {})
    if method not in METHODS:
        choices = ", ".join(METHODS)
        raise InputError("--method", f"unknown method '{method}' (choose from {choices})")
    if clusters < 2 or clusters > 254:
        raise InputError("--clusters", "must be between 2 and 254")
    if (method == "classifier") != bool(samples):
        raise InputError("--samples", "the classifier needs --samples, and --samples needs "
                         "--method classifier (the default with --samples)")
    t0 = time.perf_counter()
    rasters = open_inputs(inputs, cfg)
    sample_set = (load_samples(samples, rasters, cfg, class_field, class_table)
                  if samples else None)
    stego = stego_weights(weights) if method == "classifier" else None
    if method == "classifier" and weights == "auto" and backbone == DEFAULT_BACKBONE \
            and not backbone_overrides:
        backbone, backbone_overrides = CLASSIFIER_BACKBONE[0], dict(CLASSIFIER_BACKBONE[1])
        weights = "random"
    scale, gsd = (gsd_input_scale(backbone, cfg.fit.gsd, [info for info, _ in rasters])
                  if method in ("stego", "feature-kmeans", "classifier") else (None, None))
    if scale is not None:
        cfg.stego.input_scale = scale
        logger.info("ground sampling distance: %s", gsd)
    if stego is None:
        backbone, backbone_overrides = resolve_backbone(backbone, weights, backbone_overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if method == "stego":
        model, stats = train_stego_model(rasters, clusters, backbone, weights,
                                         backbone_overrides, embed_weights, cfg, out_dir,
                                         labels, label_ignore)
        history = stats.pop("history")
        files["loss_curve"] = str(plot_losses(history, out / "loss.png"))
        files["training_log"] = str(write_json_atomic(out / "training.json",
                                                      {"history": history, **stats}))
    elif method == "classifier":
        model, stats = train_classifier(rasters, sample_set, backbone, weights,
                                        backbone_overrides, embed_weights, cfg, scale or 1.0,
                                        stego=stego)
    else:
        crops = sample(rasters, cfg, cfg.fit.crop_size,
                       scale if method == "feature-kmeans" and scale else 1.0)
        logger.info("sampled %d crops from %d raster(s)", len(crops), len(inputs))
        if method == "pixel-kmeans":
            model, stats = fit_pixel_kmeans(crops, clusters, cfg.fit.sample_pixels,
                                            cfg.fit.iterations, cfg.fit.seed,
                                            n_init=cfg.fit.n_init)
        elif method in ("threshold", "region", "edge"):
            model, stats = fit_classic(method, crops, clusters, rasters, cfg)
        else:
            device = resolve_device(cfg.model.device)
            model, stats = fit_feature_kmeans(
                crops, clusters, backbone, weights, backbone_overrides, cfg.fit.iterations,
                cfg.fit.seed, device=device, embed_backbone=embed_weights,
                precision=resolved_precision(cfg.model.precision, device),
                n_init=cfg.fit.n_init, input_scale=scale or 1.0,
            )
        stats["crops_used"] = len(crops)
    extra = {
        "fit": {
            "inputs": [str(Path(p).resolve()) if Path(p).exists() else p for p in inputs],
            "bands": list(rasters[0][0].bands),
            "config": cfg.fit.model_dump(mode="json"),
            "stego": cfg.stego.model_dump(mode="json") if method == "stego" else None,
            "gsd": gsd,
            "threshold": cfg.threshold.model_dump(mode="json") if method == "threshold"
            else None,
            "regions": cfg.regions.model_dump(mode="json") if method in ("region", "edge")
            else None,
            "classifier": cfg.classifier.model_dump(mode="json") if method == "classifier"
            else None,
            # the tiles the labelled pixels' features came from: segment with the same ones
            "tiling": cfg.tiling.model_dump(mode="json") if method == "classifier" else None,
            "seconds": time.perf_counter() - t0,
            **stats,
        }
    }
    if method == "classifier":
        extra["accuracy"] = extra["fit"].pop("accuracy")
    path = save_model(model, out, extra)
    logger.info("model written to %s", path)
    return {"model_dir": str(path), "method": method, "clusters": model.n_classes,
            "weights": (getattr(model, "backbone_info", {}) or {}).get("weights"),
            **files, **stats}
