"""Fitting the unsupervised models on crops sampled from the user's rasters (no labels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import InputError
from pipeline.models.backbone import build_backbone
from pipeline.models.base import SegmentationModel, default_class_names, default_colors
from pipeline.models.feature_kmeans import FeatureKMeans
from pipeline.models.kmeans import euclidean_kmeans, spherical_kmeans
from pipeline.models.pixel_kmeans import PixelKMeans
from pipeline.raster_io import RasterInfo, Scaling, read_window


@dataclass
class Crop:
    """A training crop: image in [0, 1] and its validity mask."""

    source: str
    row_off: int
    col_off: int
    image: np.ndarray  # float32 (3, s, s)
    valid: np.ndarray  # bool (s, s)


def sample_crops(
    rasters: list[tuple[RasterInfo, Scaling]],
    n: int,
    size: int,
    seed: int,
    max_nodata_fraction: float = 0.5,
) -> list[Crop]:
    """Draw ``n`` crops across all rasters (by area), skipping mostly-nodata ones; seeded."""
    rng = np.random.default_rng(seed)
    areas = np.array([info.width * info.height for info, _ in rasters], dtype=np.float64)
    weights = areas / areas.sum()
    crops: list[Crop] = []
    attempts = 0
    while len(crops) < n and attempts < 20 * n + 20:
        attempts += 1
        i = int(rng.choice(len(rasters), p=weights))
        info, scaling = rasters[i]
        r = int(rng.integers(0, max(1, info.height - size + 1)))
        c = int(rng.integers(0, max(1, info.width - size + 1)))
        img, valid = read_window(info, scaling, r, c, size, size)
        inside = np.zeros_like(valid)
        inside[: min(size, info.height - r), : min(size, info.width - c)] = True
        if 1.0 - valid[inside].mean() > max_nodata_fraction:
            continue
        crops.append(Crop(info.path, r, c, img, valid))
    if not crops:
        paths = ", ".join(info.path for info, _ in rasters)
        raise InputError(paths, "no crop with enough valid pixels to fit on (all nodata?)")
    return crops


def fit_pixel_kmeans(
    crops: list[Crop], k: int, sample_pixels: int, iterations: int, seed: int
) -> tuple[SegmentationModel, dict[str, Any]]:
    """k-means on valid pixel colours; sigma^2 = mean within-cluster variance per channel."""
    pixels = np.concatenate([c.image[:, c.valid].T for c in crops], axis=0)
    rng = np.random.default_rng(seed)
    if len(pixels) > sample_pixels:
        pixels = pixels[rng.choice(len(pixels), sample_pixels, replace=False)]
    centroids = euclidean_kmeans(pixels, k, iterations, seed)
    d2 = ((pixels[:, None, :] - centroids[None]) ** 2).sum(-1)
    sigma2 = float(max(d2.min(1).mean() / 3.0, 1e-6))
    model = PixelKMeans(
        torch.from_numpy(centroids).float(), sigma2, default_class_names(k), default_colors(k)
    )
    return model, {"pixels_used": int(len(pixels)), "sigma2": sigma2}


@torch.no_grad()
def extract_features(
    model: FeatureKMeans, crops: list[Crop], batch_size: int = 8, device: str = "cpu"
) -> torch.Tensor:
    """Patch features of valid patches (a patch is valid when most of its pixels are)."""
    p = model.patch_size
    feats = []
    for i in range(0, len(crops), batch_size):
        batch = crops[i : i + batch_size]
        imgs = torch.from_numpy(np.stack([c.image for c in batch])).to(device)
        valid = torch.from_numpy(np.stack([c.valid for c in batch])).float()[:, None]
        f = model.features(imgs).cpu()  # N,C,h,w
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
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Spherical k-means on frozen backbone patch features."""
    net, provenance = build_backbone(backbone_name, weights, overrides, seed=seed)
    info = {"name": backbone_name, "overrides": dict(overrides or {}), "weights": provenance}
    dim = net.num_features
    placeholder = torch.zeros(k, dim)
    model = FeatureKMeans(net, info, placeholder, default_class_names(k), default_colors(k),
                          alpha=alpha, embed_backbone=embed_backbone).to(device)
    size = crops[0].image.shape[-1]
    if size % model.patch_size:
        raise InputError("fit.crop_size", f"{size} is not a multiple of patch {model.patch_size}")
    feats = extract_features(model, crops, device=device)
    centroids = spherical_kmeans(feats, k, iterations, seed)
    model.centroids.copy_(centroids.to(model.centroids.device))
    return model.cpu(), {"patches_used": int(feats.shape[0]), "feature_dim": int(dim)}
