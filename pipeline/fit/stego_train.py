"""Training STEGO's head and cluster probe on cached backbone features (no labels)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.config import StegoConfig
from pipeline.fit.feature_cache import feature_rows
from pipeline.fit.stego_loss import LossWeights, correspondence_loss
from pipeline.models.kmeans import spherical_kmeans, spherical_objective
from pipeline.models.stego_head import ClusterProbe, SegmentationHead


def loss_weights(cfg: StegoConfig) -> LossWeights:
    """The loss settings of a STEGO config."""
    return LossWeights(
        knn=cfg.knn_weight, self_=cfg.self_weight, rand=cfg.rand_weight,
        shift_knn=cfg.knn_shift, shift_self=cfg.self_shift, shift_rand=cfg.rand_shift,
        feature_samples=cfg.feature_samples, neg_samples=cfg.neg_samples,
        pointwise=cfg.pointwise, zero_clamp=cfg.zero_clamp, stabilize=cfg.stabilize,
    )


@dataclass
class TrainResult:
    """The trained parts and what happened while training."""

    head: SegmentationHead
    probe: ClusterProbe
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps_per_second: float = 0.0
    linear_probe: torch.nn.Conv2d | None = None
    cluster_shares: list[float] = field(default_factory=list)
    code_coherence: float = 0.0  # mean cosine of codes to their mean direction; ~1 = collapsed
    kmeans_objective: float = 0.0  # sum of the codes' best cosines to the cluster centroids


def train_stego(
    features: Any,
    knn: torch.Tensor,
    n_clusters: int,
    cfg: StegoConfig,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
    labels: torch.Tensor | None = None,
    n_label_classes: int = 0,
    n_init: int = 1,
) -> TrainResult:
    """Adam on the correspondence loss (head) and on spherical k-means (probe, detached codes).

    ``features``: (n, C, h, w) tensor (or a Zarr array read per batch); ``knn``: (n, k)
    neighbour indices. With ``labels`` ((n, h, w) class indices, -1 = ignore) a linear probe
    is trained too, by cross-entropy on detached codes (for evaluation; the head never sees
    labels). The probe is then refined by cosine k-means keeping the best of its own
    centroids and ``n_init - 1`` k-means++ starts. Deterministic for a seed on the CPU.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n, c = features.shape[0], features.shape[1]
    head = SegmentationHead(c, cfg.dim).to(device)
    probe = ClusterProbe(cfg.dim, n_clusters + cfg.extra_clusters).to(device)
    opt_head = torch.optim.Adam(head.parameters(), lr=cfg.lr_head)
    opt_probe = torch.optim.Adam(probe.parameters(), lr=cfg.lr_probe)
    linear: torch.nn.Conv2d | None = None
    if labels is not None:
        n_label = max(n_label_classes, int(labels.max()) + 1)
        linear = torch.nn.Conv2d(cfg.dim, n_label, 1).to(device)
        opt_linear = torch.optim.Adam(linear.parameters(), lr=cfg.lr_probe)
    weights = loss_weights(cfg)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    head.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(n, (cfg.batch_size,), generator=gen)
        pos = knn[idx, torch.randint(knn.shape[1], (cfg.batch_size,), generator=gen)]
        f, fp = feature_rows(features, idx).to(device), feature_rows(features, pos).to(device)
        codes, codes_pos = head(f), head(fp)
        if cfg.feature_dropout:
            f, fp = F.dropout2d(f, 0.1), F.dropout2d(fp, 0.1)
        loss, terms = correspondence_loss(f, codes, fp, codes_pos, weights, generator=gen)
        opt_head.zero_grad(set_to_none=True)
        loss.backward()
        opt_head.step()
        probe_loss = probe.loss(codes.detach())
        opt_probe.zero_grad(set_to_none=True)
        probe_loss.backward()
        opt_probe.step()
        extra: dict[str, float] = {}
        if linear is not None and labels is not None:
            target = labels[idx].long().to(device)
            linear_loss = F.cross_entropy(linear(codes.detach()), target, ignore_index=-1)
            opt_linear.zero_grad(set_to_none=True)
            linear_loss.backward()
            opt_linear.step()
            extra["linear"] = float(linear_loss.detach())
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, **{k: float(v) for k, v in terms.items()},
                   "probe": float(probe_loss.detach()), **extra,
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if progress:
                progress(step, row)
    head.eval()
    shares, coherence, objective = refine_probe(head, probe, features,
                                                cfg.probe_refine_iterations, gen, seed, device,
                                                n_init=n_init)
    seconds = time.perf_counter() - t0
    return TrainResult(head.cpu(), probe.cpu(), history, seconds, cfg.steps / max(seconds, 1e-9),
                       linear.cpu() if linear is not None else None, shares, coherence,
                       objective)


@torch.no_grad()
def refine_probe(head: SegmentationHead, probe: ClusterProbe, features: Any, iterations: int,
                 gen: torch.Generator, seed: int, device: str,
                 max_crops: int = 256, n_init: int = 1) -> tuple[list[float], float, float]:
    """Cosine k-means on head codes of up to ``max_crops`` crops, keeping the best of the
    probe's centroids and ``n_init - 1`` k-means++ starts (none when ``iterations`` is 0).

    Returns the share of those codes in each cluster, their coherence (mean cosine to their
    mean direction), so that a collapse of the codes can be reported, and the k-means
    objective (sum of best cosines) of the final centroids.
    """
    n = features.shape[0]
    idx = torch.randperm(n, generator=gen)[: min(n, max_crops)].sort().values
    codes = torch.cat([head(feature_rows(features, idx[i : i + 16]).to(device)).cpu()
                       for i in range(0, len(idx), 16)])
    x = codes.permute(0, 2, 3, 1).reshape(-1, codes.shape[1])
    if iterations > 0:
        probe.clusters.data.copy_(
            spherical_kmeans(x, probe.clusters.shape[0], iterations, seed,
                             init=probe.clusters.detach().cpu(), n_init=n_init
                             ).to(probe.clusters.device)
        )
    c = F.normalize(probe.clusters.detach().cpu(), dim=1)
    assign = (F.normalize(x, dim=1) @ c.T).argmax(1)
    counts = torch.bincount(assign, minlength=c.shape[0]).float()
    xn = F.normalize(x, dim=1)
    coherence = float((xn @ F.normalize(xn.mean(0), dim=0)).mean())
    return (counts / counts.sum()).tolist(), coherence, spherical_objective(x, c)


def plot_losses(history: list[dict[str, float]], path: Path) -> Path:
    """A small PNG of the loss terms over steps (Pillow only)."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 360, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    keys = [("total", (0, 0, 0)), ("self", (31, 119, 180)), ("knn", (44, 160, 44)),
            ("rand", (214, 39, 40)), ("probe", (148, 103, 189))]
    if history:
        steps = [r["step"] for r in history]
        vals = [r[k] for r in history for k, _ in keys if k in r]
        lo, hi = min(vals), max(vals)
        hi = hi if hi > lo else lo + 1
        x0, x1 = min(steps), max(max(steps), min(steps) + 1)

        def xy(s: float, v: float) -> tuple[float, float]:
            return (m + (s - x0) / (x1 - x0) * (w - 2 * m), h - m - (v - lo) / (hi - lo) *
                    (h - 2 * m))

        for i, (k, color) in enumerate(keys):
            pts = [xy(r["step"], r[k]) for r in history if k in r]
            if len(pts) > 1:
                draw.line(pts, fill=color, width=2)
            draw.text((m + 90 * i, 8), k, fill=color)
        draw.text((4, m - 12), f"{hi:.3f}", fill="black")
        draw.text((4, h - m), f"{lo:.3f}", fill="black")
        draw.text((w - m - 60, h - m + 12), f"step {x1}", fill="black")
    draw.rectangle([m, m, w - m, h - m], outline=(160, 160, 160))
    img.save(path)
    return path
