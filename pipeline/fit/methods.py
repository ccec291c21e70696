"""Fitting the unsupervised models on crops sampled from the user's rasters (no labels)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.io.crops import Crop, CropWindow, read_crops, sample_crop_windows
from pipeline.io.raster import RasterInfo, Scaling
from pipeline.models.backbone import build_backbone, describe_backbone, resample
from pipeline.models.backbone import normalisation as normalisation_of
from pipeline.models.backbone import patch_size as patch_size_of
from pipeline.models.base import SegmentationModel, default_class_names, default_colors
from pipeline.models.device import precision_context
from pipeline.models.feature_kmeans import FeatureKMeans
from pipeline.models.kmeans import euclidean_kmeans, spherical_kmeans, spherical_objective
from pipeline.models.pixel_kmeans import PixelKMeans

COLLAPSE_COHERENCE = 0.8  # codes this aligned (mean cosine to their mean) carry little meaning


def fit_pixel_kmeans(
    crops: list[Crop], k: int, sample_pixels: int, iterations: int, seed: int, n_init: int = 1
) -> tuple[SegmentationModel, dict[str, Any]]:
    """k-means on valid pixel colours (best of ``n_init`` inits); sigma^2 = mean
    within-cluster variance per channel."""
    pixels = np.concatenate([c.image[:, c.valid].T for c in crops], axis=0)
    rng = np.random.default_rng(seed)
    if len(pixels) > sample_pixels:
        pixels = pixels[rng.choice(len(pixels), sample_pixels, replace=False)]
    centroids = euclidean_kmeans(pixels, k, iterations, seed, n_init=n_init)
    d2 = ((pixels[:, None, :] - centroids[None]) ** 2).sum(-1)
    sigma2 = float(max(d2.min(1).mean() / 3.0, 1e-6))
    inertia = float(d2.min(1).astype(np.float64).sum())
    model = PixelKMeans(
        centroids.astype(np.float32), sigma2, default_class_names(k), default_colors(k)
    )
    return model, {"pixels_used": int(len(pixels)), "sigma2": sigma2, "n_init": n_init,
                   "kmeans_objective": inertia}


def scale_crop(crop: Crop, scale: float) -> Crop:
    """A crop resampled by ``scale`` exactly as a model resamples its tiles (a pixel stays
    valid where most of what it averages is)."""
    img = resample(torch.from_numpy(crop.image)[None], scale)[0]
    valid = resample(torch.from_numpy(crop.valid.astype(np.float32))[None, None], scale)
    return Crop(crop.source, crop.row_off, crop.col_off, img.numpy(), valid[0, 0].numpy() >= 0.5)


@torch.no_grad()
def extract_features(
    model: FeatureKMeans, crops: list[Crop], batch_size: int = 8, device: str = "cpu",
    precision: str = "fp32", prescaled: bool = False,
) -> torch.Tensor:
    """Patch features of valid patches (a patch is valid when most of its pixels are); the
    backbone runs in ``precision`` (``"bf16"`` or ``"fp32"``), as it will at inference.
    ``prescaled``: the crops are already resampled by the model's ``input_scale``."""
    p = patch_size_of(model.backbone) if prescaled else model.patch_size
    feats = []
    for i in range(0, len(crops), batch_size):
        batch = crops[i : i + batch_size]
        imgs = torch.from_numpy(np.stack([c.image for c in batch])).to(device)
        valid = torch.from_numpy(np.stack([c.valid for c in batch])).float()[:, None]
        with precision_context(precision, device):
            f = (model.scaled_features(imgs) if prescaled else model.features(imgs)).cpu()
        v = F.avg_pool2d(valid, p)[:, 0] >= 0.5
        feats.append(f.permute(0, 2, 3, 1)[v])
    return torch.cat(feats)


def fit_feature_kmeans(
    crops: list[Crop],
    k: int,
    backbone_name: str,
    weights: str,
    overrides: dict[str, Any] | None,
    iterations: int,
    seed: int,
    device: str = "cpu",
    alpha: float = 2.0,
    embed_backbone: bool = False,
    precision: str = "fp32",
    n_init: int = 1,
    input_scale: float = 1.0,
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Spherical k-means (best of ``n_init`` inits) on frozen backbone patch features
    (backbone in ``precision``). With ``input_scale`` != 1 the crops come already resampled
    (:func:`scale_crop`) and the model resamples its tiles the same way at segment."""
    net, provenance = build_backbone(backbone_name, weights, overrides, seed=seed)
    info = describe_backbone(backbone_name, overrides, provenance, net)
    dim = net.num_features
    placeholder = torch.zeros(k, dim)
    model = FeatureKMeans(net, info, placeholder, default_class_names(k), default_colors(k),
                          alpha=alpha, embed_backbone=embed_backbone,
                          input_scale=input_scale).to(device)
    size = crops[0].image.shape[-1]
    prescaled = input_scale != 1.0
    p = patch_size_of(net) if prescaled else model.patch_size
    if size % p:
        raise InputError("fit.crop_size", f"{size} is not a multiple of patch {p}")
    feats = extract_features(model, crops, device=device, precision=precision,
                             prescaled=prescaled)
    centroids = spherical_kmeans(feats, k, iterations, seed, n_init=n_init)
    model.centroids.copy_(centroids.to(model.centroids.device))
    return model.cpu(), {"patches_used": int(feats.shape[0]), "feature_dim": int(dim),
                         "precision": precision, "n_init": n_init,
                         "kmeans_objective": spherical_objective(feats, centroids)}


def fit_stego(
    rasters: list[tuple[RasterInfo, Scaling]],
    k: int,
    backbone_name: str,
    weights: str,
    overrides: dict[str, Any] | None,
    fit_cfg: Any,
    stego_cfg: Any,
    cache_dir: Path,
    device: str = "cpu",
    embed_backbone: bool = False,
    log: Callable[[str], None] = print,
    label_paths: list[str] | None = None,
    label_ignore: tuple[int, ...] = (),
    precision: str = "fp32",
) -> tuple[SegmentationModel, dict[str, Any]]:
    """STEGO: crops -> cached backbone features -> kNN pairs -> head + cluster probe.

    The backbone extracts features in ``precision`` (``"bf16"`` or ``"fp32"``, part of the
    feature cache's key); kNN and head training run in float32.

    ``label_paths`` (one label raster per input, same grid) adds a linear probe trained on
    the codes for evaluation; the head and cluster probe never see labels.
    """
    from pipeline.fit import shifts as sh
    from pipeline.fit.feature_cache import build_feature_cache, cache_key, load_cache
    from pipeline.fit.knn import knn_indices
    from pipeline.fit.stego_train import train_stego
    from pipeline.models.backbone import patch_features, tensor_hash
    from pipeline.models.stego import StegoModel
    from pipeline.models.stego_head import ClusterProbe

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    net, provenance = build_backbone(backbone_name, weights, overrides, seed=fit_cfg.seed)
    net = net.to(device)
    info = describe_backbone(backbone_name, overrides, provenance, net)
    size = fit_cfg.crop_size
    p = patch_size_of(net)
    if size % p:
        raise InputError("fit.crop_size", f"{size} is not a multiple of patch {p}")
    native = max(1, round(size / stego_cfg.input_scale))
    windows = sample_crop_windows(rasters, fit_cfg.crops, native, fit_cfg.seed,
                                  fit_cfg.max_nodata_fraction)
    times["sample"] = time.perf_counter() - t0
    mean, std = normalisation_of(net)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std).view(1, 3, 1, 1).to(device)

    @torch.no_grad()
    def compute(i0: int, i1: int) -> torch.Tensor:
        imgs = torch.from_numpy(np.stack([c.image for c in read_crops(rasters, windows[i0:i1])]))
        imgs = imgs.to(device)
        if native != size:
            imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True)
        with precision_context(precision, device):
            return patch_features(net, (imgs - mean_t) / std_t)

    t1 = time.perf_counter()
    ids = [(rasters[w.raster][0].path, w.row_off, w.col_off) for w in windows]
    backbone_id = tensor_hash(net.state_dict())
    if info["pos_embed"] != "timm":  # the same weights give other features off their grid
        backbone_id += f"+pos_embed={info['pos_embed']}"
    key = cache_key(ids, size, stego_cfg.input_scale, backbone_id, precision)
    shape = (net.num_features, size // p, size // p)

    def report(done: int, total: int) -> None:
        log(f"features {done}/{total} crops")

    group = build_feature_cache(cache_dir / "features.zarr", key, len(windows), shape, compute,
                                batch_size=16, progress=report)
    cache = load_cache(group)
    times["features"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    knn = knn_indices(cache["pooled"], stego_cfg.neighbors)
    times["knn"] = time.perf_counter() - t2
    corr = sh.feature_correlations(cache["features"], knn, stego_cfg.feature_samples,
                                   seed=fit_cfg.seed)
    attract = {"self": stego_cfg.attract_self, "knn": stego_cfg.attract_knn,
               "rand": stego_cfg.attract_rand}
    paper = sh.Shifts(stego_cfg.self_shift, stego_cfg.knn_shift, stego_cfg.rand_shift, "paper")
    calibrated = sh.calibrate(corr, attract)
    shifts = sh.choose_shifts(stego_cfg.shifts, paper, calibrated,
                              sh.is_paper_backbone(backbone_name, provenance["source"]))
    stego_cfg = stego_cfg.model_copy(update={"self_shift": shifts.self_,
                                             "knn_shift": shifts.knn, "rand_shift": shifts.rand})
    attracting = sh.attracting_share(corr, shifts)
    log(f"shifts ({shifts.source}): b_self {shifts.self_} b_knn {shifts.knn} b_rand "
        f"{shifts.rand}; pairs attracting {attracting}")

    def on_step(step: int, row: dict[str, float]) -> None:
        rate = step / max(row["seconds"], 1e-9)
        eta = (stego_cfg.steps - step) / max(rate, 1e-9)
        log(f"step {step}/{stego_cfg.steps} loss {row['total']:.4f} (self {row['self']:.4f} "
            f"knn {row['knn']:.4f} rand {row['rand']:.4f}) probe {row['probe']:.4f} "
            f"{rate:.1f} steps/s ETA {eta:.0f}s")

    labels, n_label_classes = None, 0
    if label_paths:
        labels, n_label_classes = read_label_crops(label_paths, rasters, windows, shape[1:],
                                                   label_ignore)
    result = train_stego(cache["features"], knn, k, stego_cfg, seed=fit_cfg.seed, device=device,
                         progress=on_step, labels=labels, n_label_classes=n_label_classes,
                         n_init=fit_cfg.n_init)
    times["train"] = result.seconds
    pooled = torch.nn.functional.normalize(cache["pooled"][:512].float(), dim=1)
    mean_cos = float((pooled @ pooled.T).mean())
    if result.code_coherence > COLLAPSE_COHERENCE:
        log(f"WARNING: the head's codes collapsed (mean cosine to their mean direction "
            f"{result.code_coherence:.3f}), so the clusters carry little meaning (mean cosine "
            f"of crop features {mean_cos:.2f}). What to do: "
            f"{sh.collapse_advice(shifts, calibrated)}.")
    n_out = k + stego_cfg.extra_clusters
    probe: ClusterProbe = result.probe
    model = StegoModel(net.cpu(), info, result.head, probe, default_class_names(n_out),
                       default_colors(n_out), alpha=stego_cfg.alpha,
                       input_scale=stego_cfg.input_scale, crf=stego_cfg.crf,
                       embed_backbone=embed_backbone, linear_probe=result.linear_probe)
    stats = {
        "crops_used": len(windows), "knn_neighbors": int(knn.shape[1]),
        "steps": stego_cfg.steps, "steps_per_second": result.steps_per_second,
        "cluster_shares": result.cluster_shares, "code_coherence": result.code_coherence,
        "mean_feature_cosine": mean_cos, "precision": precision,
        "shifts": shifts.to_dict(), "attracting_share": attracting,
        "feature_correlation": sh.summary(corr),
        "n_init": fit_cfg.n_init, "kmeans_objective": result.kmeans_objective,
        "stage_seconds": times, "history": result.history,
    }
    return model, stats


def read_label_crops(
    label_paths: list[str],
    rasters: list[tuple[RasterInfo, Scaling]],
    windows: list[CropWindow],
    grid: tuple[int, int],
    ignore: tuple[int, ...] = (),
) -> tuple[torch.Tensor, int]:
    """Class indices of each crop at the feature grid (nearest), -1 where ignored or outside,
    and the number of classes in the label rasters."""
    import rasterio
    from rasterio.windows import Window

    if len(label_paths) != len(rasters):
        raise InputError("--labels", f"give one label raster per input ({len(rasters)})")
    out = torch.full((len(windows), *grid), -1, dtype=torch.int64)
    out_classes = 0
    for path in label_paths:  # the class count comes from the whole rasters, not the crops
        with rasterio.open(path) as ds:
            for r0 in range(0, ds.height, 1024):
                rows = ds.read(1, window=Window(0, r0, ds.width, min(1024, ds.height - r0)))
                keep = rows[~np.isin(rows, list(ignore) + [255])]
                if keep.size:
                    out_classes = max(out_classes, int(keep.max()) + 1)
    for i, w in enumerate(windows):
        info = rasters[w.raster][0]
        with rasterio.open(label_paths[w.raster]) as ds:
            if (ds.width, ds.height) != (info.width, info.height):
                raise InputError(label_paths[w.raster], f"labels are {ds.width}x{ds.height}, "
                                 f"the image is {info.width}x{info.height}")
            lab = ds.read(1, window=Window(w.col_off, w.row_off, w.size, w.size),
                          boundless=True, fill_value=255).astype(np.int64)
        lab[np.isin(lab, list(ignore) + [255])] = -1
        t = torch.from_numpy(lab)[None, None].float()
        out[i] = F.interpolate(t, size=grid, mode="nearest")[0, 0].long()
    return out, out_classes
