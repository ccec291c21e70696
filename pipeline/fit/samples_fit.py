"""Fitting the few-labels classifier: features of the labelled pixels computed on the very
tiles `segment` will run (no train/inference mismatch), a hold-out of whole sample features,
and the classifier head."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from pipeline.accuracy import sample_accuracy
from pipeline.config.classifier import ClassifierConfig
from pipeline.config.training import FitConfig
from pipeline.errors import InputError
from pipeline.io.raster import RasterInfo, Scaling
from pipeline.io.samples import RasterSamples, SampleSet
from pipeline.models.at_pixels import values_at_pixels
from pipeline.models.backbone import build_backbone, describe_backbone
from pipeline.models.base import default_colors
from pipeline.models.classifier import SampleClassifier, forest_tensors
from pipeline.models.forest import forest_arrays


@torch.no_grad()
def sample_features(
    model: SampleClassifier, rasters: list[tuple[RasterInfo, Scaling]], samples: SampleSet,
    tile: int, overlap: int, block_size: int, batch_size: int = 4, device: str = "cpu",
    precision: str = "fp32", log: Callable[[str], Any] = print,
) -> np.ndarray:
    """Features (n, D) of every labelled pixel, in ``samples.per_raster`` order, each from
    the segment tile that owns it (same grid, padding and precision as `segment`)."""
    t0 = time.perf_counter()
    x, n_tiles = values_at_pixels(model.pixel_features, model.feature_dim, model.patch_size,
                                  rasters, [(rs.rows, rs.cols) for rs in samples.per_raster],
                                  tile, overlap, block_size, batch_size, device, precision)
    log(f"features of {len(x)} labelled pixels from {n_tiles} tiles "
        f"({time.perf_counter() - t0:.1f} s)")
    return x


def cap_pixels(samples: SampleSet, max_pixels: int, seed: int) -> SampleSet:
    """At most ``max_pixels`` labelled pixels over all rasters: a seeded uniform subset,
    every class keeping at least one pixel of each of its groups where it can."""
    total = sum(len(rs.rows) for rs in samples.per_raster)
    if total <= max_pixels:
        return samples
    rng = np.random.default_rng(seed)
    groups = np.concatenate([rs.groups for rs in samples.per_raster])
    keys = rng.random(total)
    _, first = np.unique(groups[np.argsort(keys)], return_index=True)
    keys[np.argsort(keys)[first]] = -1.0  # one pixel of every group first
    keep = np.zeros(total, dtype=bool)
    keep[np.argsort(keys)[:max_pixels]] = True
    per_raster, start = [], 0
    for rs in samples.per_raster:
        k = keep[start:start + len(rs.rows)]
        start += len(rs.rows)
        per_raster.append(RasterSamples(rs.raster, rs.rows[k], rs.cols[k], rs.classes[k],
                                        rs.groups[k]))
    warnings = [*samples.warnings, f"{total} labelled pixels; a seeded {max_pixels} of them "
                "used (classifier.max_pixels)"]
    return replace(samples, per_raster=per_raster, warnings=warnings)


def holdout_mask(classes: np.ndarray, groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Pixels held out for accuracy: per class, a seeded ``share`` of its groups (whole
    polygons or points; never a group on both sides), at least one group when a class has
    two or more and ``share`` > 0, never a class's only group."""
    held = np.zeros(len(classes), dtype=bool)
    if share <= 0:
        return held
    rng = np.random.default_rng(seed)
    for k in np.unique(classes):
        gs = np.unique(groups[classes == k])
        if len(gs) < 2:
            continue
        n = min(len(gs) - 1, max(1, int(round(share * len(gs)))))
        held |= np.isin(groups, rng.choice(gs, n, replace=False)) & (classes == k)
    return held


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: ClassifierConfig,
               ) -> dict[str, torch.Tensor]:
    """The classifier head's tensors, fitted on features ``x`` and classes ``y``."""
    if cfg.head == "trees":
        from sklearn.ensemble import ExtraTreesClassifier

        est = ExtraTreesClassifier(cfg.trees, max_depth=cfg.max_depth, n_jobs=-1,
                                   random_state=cfg.seed).fit(x, y)
        arrays = forest_arrays(est.estimators_)
        if list(est.classes_) != list(range(n_classes)):  # a class absent from this fit
            value = np.zeros((len(arrays["forest.value"]), n_classes), dtype=np.float32)
            value[:, est.classes_] = arrays["forest.value"]
            arrays["forest.value"] = value
        return forest_tensors(arrays)
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    std = x.std(0) + 1e-6
    est = LogisticRegression(C=cfg.linear_c, max_iter=5000).fit((x - mean) / std, y)
    weight = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(n_classes, -1e4, dtype=np.float32)
    coef, icpt = est.coef_, est.intercept_
    if len(est.classes_) == 2:  # scikit-learn's binary form: one row for class 1
        coef, icpt = np.concatenate([-coef / 2, coef / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    weight[est.classes_], bias[est.classes_] = coef, icpt
    return {"linear.mean": torch.from_numpy(mean.astype(np.float32)),
            "linear.std": torch.from_numpy(std.astype(np.float32)),
            "linear.weight": torch.from_numpy(weight), "linear.bias": torch.from_numpy(bias)}


def fit_classifier(
    rasters: list[tuple[RasterInfo, Scaling]], samples: SampleSet, backbone: str,
    weights: str, overrides: dict[str, Any] | None, fit_cfg: FitConfig,
    cfg: ClassifierConfig, tiling: dict[str, int], device: str = "cpu",
    precision: str = "fp32", embed_backbone: bool = False, input_scale: float = 1.0,
    log: Callable[[str], Any] = print, stego: Any = None,
) -> tuple[SampleClassifier, dict[str, Any]]:
    """Features of the labelled pixels, the hold-out accuracy, then the final head on all.

    ``stego``: a fitted STEGO model whose backbone (and input scale) the classifier uses, with
    its codes as features beside the backbone's (its weights are stored in the classifier)."""
    t0 = time.perf_counter()
    samples = cap_pixels(samples, cfg.max_pixels, cfg.seed)
    names = samples.classes.names
    colors = [c if c is not None else d for c, d in
              zip(samples.classes.colors, default_colors(len(names)), strict=True)]
    net, info, codes_head = None, None, None
    if stego is not None:
        net, info, codes_head = stego.backbone, stego.backbone_info, stego.head
        input_scale, embed_backbone = stego.input_scale, True
    elif cfg.backbone_features:
        net, prov = build_backbone(backbone, weights, overrides, seed=fit_cfg.seed)
        info = describe_backbone(backbone, overrides, prov, net)
    empty = {k: torch.zeros(1) for k in ("linear.mean", "linear.std", "linear.weight",
                                         "linear.bias")}
    model = SampleClassifier(net, info, "linear", empty, names, colors, cfg.local_radii,
                             input_scale=input_scale, embed_backbone=embed_backbone,
                             codes_head=codes_head).to(device)
    y = np.concatenate([rs.classes for rs in samples.per_raster])
    groups = np.concatenate([rs.groups for rs in samples.per_raster])
    x = sample_features(model, rasters, samples, tiling["tile_size"], tiling["overlap"],
                        tiling["block_size"], tiling["batch_size"], device, precision, log)
    t_feat = time.perf_counter() - t0
    if not np.isfinite(x).all():
        raise InputError(samples.sources[0], "non-finite features at labelled pixels")
    held = holdout_mask(y, groups, cfg.holdout, cfg.seed)
    stats: dict[str, Any] = {"samples": {
        "sources": samples.sources, "class_fields": samples.class_fields,
        "pixels": int(len(y)), "features": int(len(np.unique(groups))),
        "pixels_per_class": dict(zip(names, np.bincount(y, minlength=len(names)).tolist(),
                                     strict=True)),
        "warnings": list(samples.warnings)}}
    if held.any():
        head = train_head(x[~held], y[~held], len(names), cfg)
        probe = SampleClassifier(None, None, cfg.head, head, names, colors, [])
        pred = probe.classify(torch.from_numpy(x[held])).argmax(1).numpy()
        counts = np.zeros((len(names), len(names)), dtype=np.int64)
        np.add.at(counts, (pred, y[held]), 1)
        acc = sample_accuracy(counts, names, design="none")
        acc.update(held_out_pixels=int(held.sum()),
                   held_out_features=int(len(np.unique(groups[held]))))
        stats["accuracy"] = acc
        log(f"held-out accuracy {100 * acc['overall_accuracy']:.1f} % on {int(held.sum())} "
            f"pixels of {acc['held_out_features']} sample features")
    else:
        stats["accuracy"] = None
        log("no hold-out (too few sample features per class): accuracy not measured")
    t1 = time.perf_counter()
    head = train_head(x, y, len(names), cfg)
    final = SampleClassifier(net, info, cfg.head, head, names, colors, cfg.local_radii,
                             input_scale=input_scale, embed_backbone=embed_backbone,
                             codes_head=codes_head)
    stats["timings_s"] = {"features": t_feat, "train": time.perf_counter() - t1,
                          "total": time.perf_counter() - t0}
    return final, stats
