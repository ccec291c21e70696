"""Clustering used to fit the simple unsupervised models.

Both k-means variants take ``n_init``: k-means++ initialisations seeded ``seed``,
``seed + 1``, ..., each refined by Lloyd, keeping the best objective (the first of equals),
as scikit-learn's ``n_init`` does. So ``n_init=1`` is the single run of before, and
``n_init=n`` returns the best of the ``n_init=1`` runs with seeds ``seed .. seed + n - 1``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.vq import kmeans2, vq


def euclidean_inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over points of the squared distance to the nearest centroid (lower is better)."""
    _, dist = vq(x.astype(np.float64), centroids.astype(np.float64), check_finite=False)
    return float((dist**2).sum())


def spherical_objective(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Sum over points of the best cosine to a centroid (higher is better)."""
    xn = torch.nn.functional.normalize(x.float(), dim=1)
    c = torch.nn.functional.normalize(centroids.float().to(xn.device), dim=1)
    return _cosine_objective(xn, c)


def euclidean_kmeans(
    x: np.ndarray, k: int, iterations: int, seed: int, n_init: int = 1
) -> np.ndarray:
    """Lloyd k-means, lowest inertia of ``n_init`` k-means++ inits; (k, D) sorted by norm."""
    _check(len(x), k, n_init)
    x = x.astype(np.float64)
    runs = [kmeans2(x, k, iter=iterations, minit="++", seed=np.random.default_rng(seed + i))[0]
            for i in range(n_init)]
    centroids = runs[0] if n_init == 1 else min(runs, key=lambda c: euclidean_inertia(x, c))
    order = np.argsort(np.linalg.norm(centroids, axis=1), kind="stable")
    return centroids[order]


def spherical_kmeans(
    x: torch.Tensor, k: int, iterations: int, seed: int, init: torch.Tensor | None = None,
    n_init: int = 1,
) -> torch.Tensor:
    """Cosine k-means: unit centroids maximising the mean cosine of hard assignments.

    Keeps the best of ``n_init`` starts: ``init`` (when given) is the first, the others are
    k-means++ on cosine distance seeded ``seed``, ``seed + 1``, ... An empty cluster is
    re-seeded with the point its neighbours fit worst, so no centroid stays dead.
    """
    _check(x.shape[0], k, n_init)
    x = torch.nn.functional.normalize(x.float(), dim=1)
    starts = [] if init is None else [torch.nn.functional.normalize(init.float(), dim=1).clone()]
    starts += [_plus_plus(x, k, torch.Generator().manual_seed(seed + i))
               for i in range(n_init - len(starts))]
    runs = [_lloyd(x, c, iterations) for c in starts]
    return max(runs, key=lambda run: run[1])[0]  # the first of equals


def _check(n: int, k: int, n_init: int) -> None:
    if n < k:
        raise ValueError(f"need at least {k} samples to fit {k} clusters, got {n}")
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")


def _cosine_objective(x: torch.Tensor, c: torch.Tensor) -> float:
    """Sum of best cosines of unit rows ``x`` to unit centroids ``c``, in float64."""
    return float((x @ c.T).max(1).values.double().sum())


def _lloyd(x: torch.Tensor, c: torch.Tensor, iterations: int) -> tuple[torch.Tensor, float]:
    """Cosine Lloyd iterations from unit centroids ``c``; returns them and their objective."""
    k = c.shape[0]
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
            c = new
            break
        c = new
    return c, _cosine_objective(x, c)


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
