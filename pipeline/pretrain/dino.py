"""The DINO objective (Caron et al., 2021): a projection head, the cross-entropy between a
sharpened, centred teacher and the student over all view pairs, the EMA teacher update and the
cosine schedules. Compute only; the loop lives in :mod:`pipeline.pretrain.loop`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DinoHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck), L2-normalised, then a weight-normalised
    linear layer to ``out_dim`` prototypes (DINO's head, sized for small ViTs)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 1024,
                 bottleneck: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype logits (N, out_dim) from backbone embeddings (N, in_dim)."""
        return self.last(F.normalize(self.mlp(x), dim=-1))


def cosine_schedule(start: float, end: float, step: int, total: int, warmup: int = 0,
                    warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``start`` over ``warmup`` steps, then a
    half-cosine from ``start`` to ``end`` at ``total``."""
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              n_global: int, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Mean cross-entropy H(teacher_i, student_j) over every pair of distinct views.

    ``student``: logits of all views stacked view-major ((n_views * B), D), the first
    ``n_global`` being the global views; ``teacher``: logits of the global views
    ((n_global * B), D), centred by ``center`` and sharpened by ``teacher_temp``.
    """
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach().chunk(n_global)
    s = F.log_softmax(student / student_temp, dim=-1).chunk(student.shape[0] // t[0].shape[0])
    total, pairs = student.new_zeros(()), 0
    for i, ti in enumerate(t):
        for j, sj in enumerate(s):
            if i == j:
                continue
            total = total + (-ti * sj).sum(-1).mean()
            pairs += 1
    return total / pairs


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the teacher's mean logits (the centring that prevents one-dimension collapse)."""
    return center * momentum + teacher.mean(0, keepdim=True) * (1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


@torch.no_grad()
def teacher_entropy(teacher: torch.Tensor, center: torch.Tensor,
                    temp: float) -> tuple[float, float]:
    """Mean entropy of the teacher's per-view distributions, and entropy of their batch mean
    (nats). Both near 0: collapse to one prototype; both near log(D): uniform collapse."""
    p = F.softmax((teacher - center) / temp, dim=-1)
    per_view = float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean())
    m = p.mean(0)
    return per_view, float(-(m * torch.log(m.clamp_min(1e-12))).sum())
