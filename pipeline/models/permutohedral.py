"""The permutohedral lattice (Adams et al. 2010) as densecrf 2.2 implements it: approximate
Gaussian filtering in a d-dimensional feature space in O(N d^2), for the dense CRF's
bilateral term."""

from __future__ import annotations

import math
import warnings

import torch


def _csr(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Sparse CSR matrix from (row, col, value) triplets without duplicates."""
    order = torch.argsort(rows * shape[1] + cols)
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return _sparse_csr(crow, cols[order], vals[order], shape)


def _sparse_csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                shape: tuple[int, int]) -> torch.Tensor:
    """Sparse CSR matrix from its row pointers, column indices and values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, vals, shape)


class PermutohedralLattice:
    """Torch port of densecrf 2.2's ``Permutohedral`` (``init`` and ``seqCompute``).

    Approximates ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for features f (N, d) in O(N d^2).
    Vectorised over points: the hash table becomes ``torch.unique`` / ``searchsorted`` on integer
    lattice-key codes, and splat, blur (one matrix per lattice axis: ``I + (P + P^T) / 2``) and
    slice (times densecrf's ``alpha``) are sparse CSR products.
    """

    def __init__(self, features: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        n, d = features.shape
        dev = features.device
        f = features.to(torch.float64)
        d1 = d + 1

        # Elevate onto the hyperplane (p.5 of Adams et al. 2010), as in Permutohedral::init.
        inv_std_dev = math.sqrt(2.0 / 3.0) * d1
        i = torch.arange(d, device=dev, dtype=torch.float64)
        cf = f * (inv_std_dev / torch.sqrt((i + 2) * (i + 1)))
        suffix = torch.cat([cf.flip(1).cumsum(1).flip(1), cf.new_zeros(n, 1)], dim=1)
        elevated = torch.cat([suffix[:, :1], suffix[:, 1:] - (i + 1) * cf], dim=1)  # (N, d+1)

        # Closest 0-coloured lattice point (ties round down, like the non-SSE code).
        v = elevated / d1
        up, down = torch.ceil(v) * d1, torch.floor(v) * d1
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = torch.round(rem0.sum(1) / d1).long()

        # rank = position in a stable descending sort of (elevated - rem0).
        diff = elevated - rem0
        gt = diff[:, None, :] > diff[:, :, None]  # [n, x, y]: diff_y > diff_x
        eq = diff[:, None, :] == diff[:, :, None]
        earlier = torch.ones(d1, d1, device=dev, dtype=torch.bool).tril(-1)  # y < x
        rank = (gt | (eq & earlier)).sum(-1) + total[:, None]
        low, high = rank < 0, rank > d
        rank = rank + d1 * low.long() - d1 * high.long()
        rem0 = rem0 + d1 * low.double() - d1 * high.double()

        # Barycentric coordinates (p.10).
        bw = (elevated - rem0) / d1
        bary = torch.zeros(n, d + 2, device=dev, dtype=torch.float64)
        bary.scatter_add_(1, d - rank, bw)
        bary.scatter_add_(1, d - rank + 1, -bw)
        bary[:, 0] += 1.0 + bary[:, d1]

        # Keys of the d+1 enclosing simplex vertices: rem0 + canonical[remainder][rank].
        r = torch.arange(d1, device=dev)
        canonical = torch.where(r[None, :] <= d - r[:, None], r[:, None], r[:, None] - d1)
        keys = torch.round(rem0).long()[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)

        # Integer codes (digits in [1, base-1] even after the +-d steps of a blur neighbour).
        shift = int(keys.min()) - d - 1
        base = int(keys.max()) - shift + d + 2
        if d * math.log2(base) >= 62:
            raise ValueError("lattice keys out of range for int64 hashing; features too large")
        codes = torch.zeros(n * d1, device=dev, dtype=torch.long)
        flat_keys = keys.reshape(-1, d)
        for c in range(d):
            codes = codes * base + (flat_keys[:, c] - shift)
        uniq, inverse = torch.unique(codes, sorted=True, return_inverse=True)
        m = uniq.numel()
        self.n, self.m, self.d, self.dtype = n, m, d, dtype

        # Splat (M x N) and slice (N x M) matrices; alpha folded into the slice weights.
        alpha = 1.0 / (1.0 + 2.0 ** (-d))
        pts = torch.arange(n, device=dev).repeat_interleave(d1)
        w = bary[:, :d1].reshape(-1).to(dtype)
        self.splat = _csr(inverse, pts, w, (m, n))
        # the slice's rows are the points, already in order: d+1 entries each, no sort
        crow = torch.arange(0, n * d1 + 1, d1, device=dev)
        self.slice = _sparse_csr(crow, inverse, w * alpha, (n, m))

        # Blur along each lattice axis j: neighbour n1 = key - 1 (+d+1 on axis j), n2 = key + 1
        # (-d-1 on axis j) -- as codes, a constant shift; n2(n1(x)) = x, so one lookup per axis.
        powers = [base ** (d - 1 - c) for c in range(d)]
        self.blurs: list[torch.Tensor] = []
        diag = torch.arange(m, device=dev)
        half = torch.tensor([1.0, 0.5, 0.5], device=dev, dtype=dtype).expand(m, 3)
        for axis in range(d1):
            delta = -sum(powers) + (d1 * powers[axis] if axis < d else 0)
            target = uniq + delta
            idx = torch.searchsorted(uniq, target).clamp(max=m - 1)
            found = uniq[idx] == target
            # each point: itself, its neighbour n1 (if in the lattice) and the point whose n1
            # it is (its n2): built row by row, so no sort is needed
            n1 = torch.where(found, idx, -1)
            n2 = torch.full((m,), -1, device=dev, dtype=torch.long)
            n2[idx[found]] = diag[found]
            cols = torch.stack([diag, n1, n2], dim=1)
            keep = cols >= 0
            crow = torch.cat([diag.new_zeros(1), keep.sum(1).cumsum(0)])
            self.blurs.append(_sparse_csr(crow, cols[keep], half[keep], (m, m)))

    def compute(self, values: torch.Tensor) -> torch.Tensor:
        """Filter values (N, C) -> (N, C): splat, blur along the d+1 axes, slice."""
        grid = self.splat @ values.to(self.dtype).contiguous()
        for blur in self.blurs:
            grid = blur @ grid
        return self.slice @ grid
