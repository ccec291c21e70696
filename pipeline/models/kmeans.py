"""Clustering used to fit the simple unsupervised models."""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.vq import kmeans2


def euclidean_kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Lloyd k-means with k-means++ init (scipy); returns centroids (k, D) sorted by norm."""
    if len(x) < k:
        raise ValueError(f"need at least {k} samples to fit {k} clusters, got {len(x)}")
    rng = np.random.default_rng(seed)
    centroids, _ = kmeans2(x.astype(np.float64), k, iter=iterations, minit="++", seed=rng)
    order = np.argsort(np.linalg.norm(centroids, axis=1), kind="stable")
    return centroids[order]


def spherical_kmeans(
    x: torch.Tensor, k: int, iterations: int, seed: int, init: torch.Tensor | None = None
) -> torch.Tensor:
    """Cosine k-means: unit centroids maximising the mean cosine of hard assignments.

    Seeds with k-means++ on cosine distance unless ``init`` is given; an empty cluster is
    re-seeded with the point its neighbours fit worst, so no centroid stays dead.
    """
    if x.shape[0] < k:
        raise ValueError(f"need at least {k} samples to fit {k} clusters, got {x.shape[0]}")
    x = torch.nn.functional.normalize(x.float(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    if init is not None:
        c = torch.nn.functional.normalize(init.float(), dim=1).clone()
    else:
        c = _plus_plus(x, k, gen)
    for _ in range(iterations):
        sim = x @ c.T
        assign = sim.argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        worst = sim.max(1).values.argsort()
        for j, i in zip(torch.nonzero(counts == 0).flatten().tolist(), worst.tolist(),
                        strict=False):
            new[j] = x[i]
        new = torch.nn.functional.normalize(new, dim=1)
        if torch.allclose(new, c):
            return new
        c = new
    return c


def _plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on cosine distance."""
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centroids = [x[first]]
    dist = 1 - x @ centroids[0]
    for _ in range(1, k):
        probs = dist.clamp_min(0) ** 2
        if float(probs.sum()) <= 0:
            probs = torch.ones_like(probs)
        idx = int(torch.multinomial(probs, 1, generator=gen))
        centroids.append(x[idx])
        dist = torch.minimum(dist, 1 - x @ x[idx])
    return torch.stack(centroids)
