"""Nearest neighbours of training crops in global-average-pooled backbone feature space."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_indices(pooled: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Top-``k`` cosine neighbours of every row, self excluded, computed ``chunk`` rows at a time.

    Memory is ``chunk x n`` similarities, never ``n x n``; returns int64 (n, k).
    """
    n = pooled.shape[0]
    if n < 2:
        raise ValueError("need at least two crops to find neighbours")
    k = min(k, n - 1)
    x = F.normalize(pooled.float(), dim=1)
    out = torch.empty(n, k, dtype=torch.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sim = x[start:stop] @ x.T
        sim[torch.arange(stop - start), torch.arange(start, stop)] = -float("inf")
        out[start:stop] = sim.topk(k, dim=1).indices
    return out
