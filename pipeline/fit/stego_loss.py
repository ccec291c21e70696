"""STEGO's correspondence (contrastive correlation) loss.

Mirrors ``ContrastiveCorrelationLoss`` of the official ``src/modules.py``: both maps of a pair are
sampled at ``S x S`` random points, the backbone-feature correlation ``F`` (no gradient) is
compared with the code correlation ``S`` as ``mean(-clamp(S) * (F - b))``, and three pairings are
combined: an image with itself, with its kNN partner and with random other images of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "correlation_term",
    "correspondence_loss",
    "draw_coords",
    "feature_correlation",
    "sample",
    "super_perm",
]


@dataclass(frozen=True)
class LossWeights:
    """Term weights (lambda), shifts (b) and sampling options; defaults: official Potsdam."""

    knn: float = 0.25
    self_: float = 0.67
    rand: float = 0.63
    shift_knn: float = 0.02
    shift_self: float = 0.08
    shift_rand: float = 0.46
    feature_samples: int = 11
    neg_samples: int = 5
    pointwise: bool = True
    zero_clamp: bool = True
    stabilize: bool = False


def _normalize(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=1, eps=1e-10)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) x (N, C, i, j) -> (N, h, w, i, j) inner products."""
    return torch.einsum("nchw,ncij->nhwij", a, b)


def sample(t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``t`` (N, C, H, W) at ``coords`` (N, S1, S2, 2) in [-1, 1].

    Official convention: the grid is ``coords.permute(0, 2, 1, 3)``, so the result is
    (N, C, S2, S1) and ``out[n, :, b, a]`` is ``t`` at ``coords[n, a, b]`` = (x, y), where x
    indexes the width and y the height; ``align_corners=True`` (±1 are the corner pixel centres)
    and ``padding_mode="border"``.
    """
    grid = coords.permute(0, 2, 1, 3).to(device=t.device, dtype=t.dtype)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def feature_correlation(f1: torch.Tensor, f2: torch.Tensor, *,
                        pointwise: bool = True) -> torch.Tensor:
    """F of the loss: correlations (N, h, w, i, j) of the L2-normalised sampled features; with
    ``pointwise`` centred over the partner's locations, then the global mean restored."""
    fd = _correlation(_normalize(f1.detach()), _normalize(f2.detach()))
    if pointwise:
        old_mean = fd.mean()
        fd = fd - fd.mean(dim=(3, 4), keepdim=True)
        fd = fd - fd.mean() + old_mean
    return fd


def correlation_term(
    f1: torch.Tensor,
    f2: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
) -> torch.Tensor:
    """Mean of -clamp(S)·(F - shift) for already-sampled maps.

    ``F`` is the correlation of the L2-normalised features (computed without gradient; with
    ``pointwise`` centred over the partner's locations, then the global mean restored), ``S``
    that of the codes, clamped below at 0 (``zero_clamp``) or -9999, and above at 0.8
    (``stabilize``).
    """
    fd = feature_correlation(f1, f2, pointwise=pointwise)
    cd = _correlation(_normalize(c1), _normalize(c2))
    lo = 0.0 if zero_clamp else -9999.0
    cd = cd.clamp(lo, 0.8) if stabilize else cd.clamp(min=lo)
    return (-cd * (fd - shift)).mean()


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def super_perm(
    n: int, generator: torch.Generator | None = None, *, official: bool = False
) -> torch.Tensor:
    """A uniformly random derangement of ``range(n)`` (no fixed points when n > 1).

    Draws ``torch.randperm(n, generator=generator)`` until one has no fixed point (about e
    draws on average). ``official=True`` instead applies the official one-draw trick
    (``perm[perm == arange] += 1; perm %= n``), which has no fixed points but is NOT always a
    permutation (e.g. [0, 2, 1] -> [1, 2, 1]). For n <= 1 the identity is returned.
    """
    device = _gen_device(generator)
    ar = torch.arange(n, device=device)
    if official:
        perm = torch.randperm(n, generator=generator, device=device)
        perm[perm == ar] += 1
        return perm % max(n, 1)
    if n <= 1:
        return ar
    while True:
        perm = torch.randperm(n, generator=generator, device=device)
        if not bool((perm == ar).any()):
            return perm


def draw_coords(n: int, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform sampling coordinates in [-1, 1): float32 (n, samples, samples, 2)."""
    device = _gen_device(generator)
    return torch.rand((n, samples, samples, 2), generator=generator, device=device) * 2 - 1


def correspondence_loss(
    feats: torch.Tensor,
    codes: torch.Tensor,
    feats_pos: torch.Tensor,
    codes_pos: torch.Tensor,
    w: LossWeights,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and the three term values (for logging): {"self", "knn", "rand", "total"}.

    ``total = w.knn * L_knn + w.self_ * L_self + w.rand * L_rand``. Random draws, all from
    ``generator`` on its own device (CPU when None), in this order:

    1. ``coords1 = draw_coords(N, S, generator)``;
    2. ``coords2 = draw_coords(N, S, generator)``;
    3. ``w.neg_samples`` times ``perm = super_perm(N, generator)``.

    Pairings (as in the official code): self = x with x, both at coords1; kNN = x at coords1
    with (feats_pos, codes_pos) at coords2; random = x at coords1 with ``feats[perm]`` and
    ``codes[perm]`` at coords2. ``L_rand`` is the mean over the ``neg_samples`` terms.
    Gradients reach the codes only.
    """
    if feats.dim() != 4 or codes.dim() != 4:
        raise ValueError("feats and codes must be (N, C, h, w) tensors")
    if feats_pos.shape != feats.shape or codes_pos.shape != codes.shape:
        raise ValueError("positive maps must match the shapes of feats and codes")
    n = feats.shape[0]
    if codes.shape[0] != n:
        raise ValueError("feats and codes must have the same batch size")
    opts = {"pointwise": w.pointwise, "zero_clamp": w.zero_clamp, "stabilize": w.stabilize}

    coords1 = draw_coords(n, w.feature_samples, generator)
    coords2 = draw_coords(n, w.feature_samples, generator)
    with torch.no_grad():
        f1 = sample(feats.detach(), coords1)
        f_pos = sample(feats_pos.detach(), coords2)
    c1 = sample(codes, coords1)
    c_pos = sample(codes_pos, coords2)

    l_self = correlation_term(f1, f1, c1, c1, w.shift_self, **opts)
    l_knn = correlation_term(f1, f_pos, c1, c_pos, w.shift_knn, **opts)

    rand_terms = []
    for _ in range(w.neg_samples):
        perm = super_perm(n, generator).to(feats.device)
        with torch.no_grad():
            f_neg = sample(feats.detach()[perm], coords2)
        c_neg = sample(codes[perm.to(codes.device)], coords2)
        rand_terms.append(correlation_term(f1, f_neg, c1, c_neg, w.shift_rand, **opts))
    l_rand = torch.stack(rand_terms).mean() if rand_terms else l_self.new_zeros(())

    total = w.knn * l_knn + w.self_ * l_self + w.rand * l_rand
    logs = {
        "self": float(l_self.detach()),
        "knn": float(l_knn.detach()),
        "rand": float(l_rand.detach()),
        "total": float(total.detach()),
    }
    return total, logs
