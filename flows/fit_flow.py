"""The `fit` flow: open inputs -> sample crops -> fit the model -> save it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from pipeline.config import RunConfig, build_config
from pipeline.errors import InputError
from pipeline.fitting import Crop, fit_feature_kmeans, fit_pixel_kmeans, sample_crops
from pipeline.inference import resolve_device
from pipeline.models import METHODS
from pipeline.models.backbone import DEFAULT_BACKBONE
from pipeline.models.store import save_model
from pipeline.raster_io import RasterInfo, Scaling, compute_scaling, open_raster_info


@task(name="open-inputs")
def open_inputs(inputs: list[str], cfg: RunConfig) -> list[tuple[RasterInfo, Scaling]]:
    """Validate every input and compute its scaling once."""
    out = []
    for path in inputs:
        info = open_raster_info(path, cfg.input.bands)
        out.append((info, compute_scaling(info, cfg.input.percentiles)))
    return out


@task(name="sample-crops")
def sample(rasters: list[tuple[RasterInfo, Scaling]], cfg: RunConfig, size: int) -> list[Crop]:
    """Seeded crops across all inputs, mostly-nodata crops skipped."""
    f = cfg.fit
    return sample_crops(rasters, f.crops, size, f.seed, f.max_nodata_fraction)


@flow(name="fit")
def fit_flow(
    inputs: list[str],
    out_dir: str,
    method: str = "pixel-kmeans",
    clusters: int = 5,
    weights: str = "auto",
    backbone: str = DEFAULT_BACKBONE,
    backbone_overrides: dict[str, Any] | None = None,
    embed_weights: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit an unsupervised model on the inputs and write MODEL_DIR/model.{json,safetensors}."""
    logger = get_run_logger()
    cfg = build_config(config or {})
    if method not in METHODS:
        choices = ", ".join(METHODS)
        raise InputError("--method", f"unknown method '{method}' (choose from {choices})")
    if clusters < 2 or clusters > 254:
        raise InputError("--clusters", "must be between 2 and 254")
    t0 = time.perf_counter()
    rasters = open_inputs(inputs, cfg)
    crop_size = cfg.fit.crop_size
    crops = sample(rasters, cfg, crop_size)
    logger.info("sampled %d crops of %d px from %d raster(s)", len(crops), crop_size, len(inputs))
    t_sample = time.perf_counter() - t0
    if method == "pixel-kmeans":
        model, stats = fit_pixel_kmeans(crops, clusters, cfg.fit.sample_pixels,
                                        cfg.fit.iterations, cfg.fit.seed)
    else:
        model, stats = fit_feature_kmeans(
            crops, clusters, backbone, weights, backbone_overrides, cfg.fit.iterations,
            cfg.fit.seed, device=resolve_device(cfg.model.device), embed_backbone=embed_weights,
        )
    extra = {
        "fit": {
            "inputs": [str(Path(p).resolve()) if Path(p).exists() else p for p in inputs],
            "bands": list(rasters[0][0].bands),
            "crops": len(crops), "crop_size": crop_size, "seed": cfg.fit.seed,
            "config": cfg.fit.model_dump(mode="json"), **stats,
            "seconds": {"sample": t_sample, "total": time.perf_counter() - t0},
        }
    }
    path = save_model(model, Path(out_dir), extra)
    logger.info("model written to %s", path)
    return {"model_dir": str(path), "method": method, "clusters": clusters,
            "weights": (getattr(model, "backbone_info", {}) or {}).get("weights"), **stats}
