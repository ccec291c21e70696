"""STEGO's segmentation head and cluster probe (layout of the official ``src/modules.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    """``code = linear(drop(f)) + nonlinear(drop(f))`` with 1x1 convolutions.

    ``linear`` = Conv(C -> dim); ``nonlinear`` = Conv(C -> C), ReLU, Conv(C -> dim);
    ``Dropout2d(0.1)`` on the features (active only in training mode).
    """

    def __init__(self, in_dim: int, dim: int = 70, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.dropout = nn.Dropout2d(p=dropout)
        self.linear = nn.Conv2d(in_dim, dim, 1)
        self.nonlinear = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, dim, 1)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Codes (N, dim, h, w) from backbone features (N, C, h, w).

        As in the official code, each branch gets its own dropout draw in training mode.
        """
        return self.linear(self.dropout(feats)) + self.nonlinear(self.dropout(feats))


class ClusterProbe(nn.Module):
    """Spherical k-means as a module: unit centroids, hard assignment, loss -mean max cosine."""

    def __init__(self, dim: int, n_clusters: int) -> None:
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_clusters, dim))

    def cosine(self, codes: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every code to every centroid: (N, K, h, w)."""
        c = F.normalize(self.clusters, dim=1)
        x = F.normalize(codes, dim=1)
        return torch.einsum("nchw,kc->nkhw", x, c)

    def loss(self, codes: torch.Tensor) -> torch.Tensor:
        """-mean over pixels of the cosine to the assigned (nearest) centroid."""
        cos = self.cosine(codes)
        onehot = F.one_hot(cos.argmax(1), cos.shape[1]).permute(0, 3, 1, 2).to(cos.dtype)
        return -(cos * onehot).sum(1).mean()

    def probs(self, codes: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
        """softmax(alpha * cos): the class scores used at inference."""
        return torch.softmax(alpha * self.cosine(codes), dim=1)
