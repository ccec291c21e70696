"""Fitting the classic segmenters: multi-level Otsu thresholds on an index, and the region
classifier (k-means on region statistics) of the region-growing and edge methods."""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.filters import threshold_multiotsu

from pipeline.errors import InputError
from pipeline.io.crops import Crop
from pipeline.io.raster import RasterInfo
from pipeline.models.base import SegmentationModel, default_class_names, default_colors
from pipeline.models.kmeans import euclidean_inertia, euclidean_kmeans
from pipeline.models.region_segmenters import RegionParams, region_features
from pipeline.models.regions import EdgeRegionModel, RegionGrowingModel, RegionModel
from pipeline.models.threshold import INDICES, ThresholdModel, pixel_index

MAX_THRESHOLD_CLASSES = 8  # multi-level Otsu searches all threshold combinations
SOFTNESS = 0.02  # score scale, as a share of the index's 1-99 % range


def index_channels(index: str, infos: list[RasterInfo], nir_band: int | None,
                   red_band: int | None) -> dict[str, int]:
    """Positions of the bands an index needs among the bands fed to the model (one-line
    InputError when the raster lacks a band or it is not selected)."""
    if index not in INDICES:
        raise InputError("threshold.index", f"unknown index '{index}' (choose from "
                         f"{', '.join(INDICES)})")
    if index != "ndvi":
        return {}
    if nir_band is None:
        raise InputError("threshold.nir_band", "the ndvi index needs the near-infrared band: "
                         "--set threshold.nir_band=N (1-based)")
    if red_band is None:  # the first selected band that is not the NIR one
        red_band = next((b for b in infos[0].bands if b != nir_band), nir_band)
    if red_band == nir_band:
        raise InputError("threshold.red_band", f"red and NIR are both band {nir_band}; set "
                         "threshold.red_band")
    bands = {"nir": nir_band, "red": red_band}
    channels = {}
    for name, band in bands.items():
        for info in infos:
            if not 1 <= band <= info.count:
                raise InputError(info.path, f"threshold.{name}_band={band}: the raster has "
                                 f"{info.count} band(s)")
            if band not in info.bands:
                chosen = ",".join(map(str, info.bands))
                raise InputError(info.path, f"threshold.{name}_band={band} is not among the "
                                 f"bands fed to the model ({chosen}); select it with --bands")
        channels[name] = infos[0].bands.index(band)
    return channels


def check_classic(method: str, k: int, infos: list[RasterInfo], index: str,
                  nir_band: int | None, red_band: int | None) -> dict[str, int]:
    """The parameters of a classic method, checked before any work (one-line InputError);
    returns the index's band positions for threshold."""
    if method == "threshold":
        if not 2 <= k <= MAX_THRESHOLD_CLASSES:
            raise InputError("--clusters", f"threshold fits 2 to {MAX_THRESHOLD_CLASSES} "
                             f"classes (multi-level Otsu searches every combination), got {k}")
        return index_channels(index, infos, nir_band, red_band)
    return {}


def fit_threshold(
    crops: list[Crop], k: int, index: str, channels: dict[str, int], bands: list[int],
    sample_pixels: int, seed: int,
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Multi-level Otsu: K-1 thresholds maximising the between-class variance of the index
    over a seeded sample of valid crop pixels."""
    if not 2 <= k <= MAX_THRESHOLD_CLASSES:
        raise ValueError(f"threshold fits 2 to {MAX_THRESHOLD_CLASSES} classes, got {k}")
    values = np.concatenate([
        pixel_index(c.image[None], index, channels)[0][c.valid]
        for c in crops])
    rng = np.random.default_rng(seed)
    if len(values) > sample_pixels:
        values = values[rng.choice(len(values), sample_pixels, replace=False)]
    if len(np.unique(values)) < k:
        raise InputError("--clusters", f"the index takes fewer than {k} distinct values on the "
                         "sampled pixels; choose fewer classes or another index")
    nbins = 256 if k <= 4 else 64
    thresholds = threshold_multiotsu(values, classes=k, nbins=nbins)
    lo, hi = np.percentile(values, [1, 99])
    softness = float(max(hi - lo, 1e-3) * SOFTNESS)
    model = ThresholdModel(np.asarray(thresholds, dtype=np.float32), index,
                           channels, bands, softness, default_class_names(k), default_colors(k))
    shares = np.bincount(np.digitize(values, thresholds, right=True), minlength=k) / len(values)
    return model, {"pixels_used": int(len(values)), "index": index,
                   "thresholds": [float(t) for t in thresholds],
                   "class_shares": [float(s) for s in shares]}


def region_samples(crops: list[Crop], model_cls: type[RegionModel], params: RegionParams
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Statistics (n, 8) and areas of the regions of every crop (mostly-valid regions only)."""
    feats, areas = [], []
    for c in crops:
        hwc = np.ascontiguousarray(c.image.transpose(1, 2, 0))
        regions = model_cls.segmenter(hwc, params)
        f, area = region_features(hwc, regions)
        valid = np.bincount(regions.ravel(), c.valid.ravel(), minlength=len(area))
        keep = valid >= 0.5 * area
        feats.append(f[keep])
        areas.append(area[keep])
    return np.concatenate(feats), np.concatenate(areas)


def fit_regions(
    crops: list[Crop], k: int, method: str, params: RegionParams, iterations: int, seed: int,
    n_init: int = 1, sample_regions: int = 20_000,
) -> tuple[SegmentationModel, dict[str, Any]]:
    """Regions of the crops, then area-weighted k-means on their standardised statistics:
    the centroids classify every region of every scene the same way."""
    cls = {"region": RegionGrowingModel, "edge": EdgeRegionModel}[method]
    feats, areas = region_samples(crops, cls, params)
    if len(feats) < k:
        raise InputError("--clusters", f"the crops gave {len(feats)} regions, fewer than "
                         f"{k} classes; sample more crops (fit.crops) or lower the tolerance")
    mean = feats.mean(0)
    scale = np.maximum(feats.std(0), 1e-6)
    probe = cls(params, np.zeros((k, feats.shape[1])), mean, scale, 1.0,
                default_class_names(k), default_colors(k))
    z = probe.standardise(feats)
    rng = np.random.default_rng(seed)
    # regions drawn by area: the classes describe what covers the scene, not noise specks
    picks = rng.choice(len(z), sample_regions, p=areas / areas.sum())
    centroids = euclidean_kmeans(z[picks], k, iterations, seed, n_init=n_init)
    d2 = ((z[picks, None, :] - centroids[None]) ** 2).sum(-1).min(1)
    sigma2 = float(max(d2.mean() / z.shape[1], 1e-6))
    model = cls(params, centroids, mean, scale, sigma2, default_class_names(k),
                default_colors(k))
    return model, {"regions_found": int(len(feats)), "regions_sampled": sample_regions,
                   "mean_region_pixels": float(areas.mean()), "sigma2": sigma2,
                   "n_init": n_init, "kmeans_objective": euclidean_inertia(z[picks], centroids)}
