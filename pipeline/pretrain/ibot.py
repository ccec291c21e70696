"""The masked patch-token objective of iBOT (Zhou et al., 2022), added to DINO's image-level
loss: the student sees a global view with blocks of patches replaced by a learned mask token and
predicts, at the masked positions, the teacher's (centred, sharpened) prototype distribution of
the same view's unmasked patches. It shapes the patch tokens that k-means and STEGO use, which
DINO's class-token loss reaches only indirectly. Compute only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MaskToken(nn.Module):
    """The learned embedding that replaces a masked patch (iBOT's ``mask_token``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, N, D) with the masked positions (B, N) replaced."""
        return torch.where(mask[..., None], self.token.to(x.dtype), x)


def block_masks(n: int, grid: int, ratio: tuple[float, float], probability: float,
                gen: torch.Generator, min_block: int = 4) -> torch.Tensor:
    """Boolean masks (n, grid * grid): with ``probability`` an image gets rectangles of patches
    (at least ``min_block`` patches, aspect ratio 0.3-3.3) until a share drawn uniformly from
    ``ratio`` is masked; otherwise nothing is masked (iBOT's block-wise masking)."""
    masks = torch.zeros(n, grid, grid, dtype=torch.bool)
    on = torch.rand(n, generator=gen) < probability
    shares = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(n, generator=gen)
    log_ar = math.log(0.3), math.log(1 / 0.3)
    for i in range(n):
        if not on[i]:
            continue
        target = int(shares[i] * grid * grid)
        for _ in range(10 * grid):  # a bounded number of tries, as iBOT's generator
            left = target - int(masks[i].sum())
            if left < min_block:
                break
            u = torch.rand(4, generator=gen)
            area = min_block + float(u[0]) * (left - min_block)
            ar = math.exp(log_ar[0] + float(u[1]) * (log_ar[1] - log_ar[0]))
            h = max(1, min(grid, round(math.sqrt(area * ar))))
            w = max(1, min(grid, round(math.sqrt(area / ar))))
            top = int(float(u[2]) * (grid - h + 1))
            left_col = int(float(u[3]) * (grid - w + 1))
            masks[i, top:top + h, left_col:left_col + w] = True
    return masks.reshape(n, grid * grid)


def vit_tokens(vit: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None,
               mask_token: MaskToken | None = None) -> torch.Tensor:
    """All output tokens (B, prefix + N, D) of a timm ViT, with the masked patch embeddings
    replaced by ``mask_token`` before the position embedding (as iBOT)."""
    x = vit.patch_embed(images)
    if x.ndim == 4:  # dynamic_img_size keeps the (B, H, W, D) grid until the position embedding
        b, h, w, d = x.shape
        if mask is not None and mask_token is not None:
            x = mask_token(x.reshape(b, h * w, d), mask).reshape(b, h, w, d)
    elif mask is not None and mask_token is not None:
        x = mask_token(x, mask)
    x = vit._pos_embed(x)
    x = vit.patch_drop(x)
    x = vit.norm_pre(x)
    x = vit.blocks(x)
    return vit.norm(x)


def patch_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
               mask: torch.Tensor, student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy H(teacher, student) at the masked patches, averaged per image over its
    masked patches, then over the images that have any.

    ``student``/``teacher``: patch logits (B, N, K) of the same view (masked for the student);
    ``mask``: (B, N) booleans; ``center``: (1, 1, K)."""
    t = F.softmax((teacher - center) / teacher_temp, dim=-1).detach()
    s = F.log_softmax(student / student_temp, dim=-1)
    per_patch = -(t * s).sum(-1)  # (B, N)
    m = mask.float()
    counts = m.sum(1)
    has = counts > 0
    if not bool(has.any()):
        return student.sum() * 0.0
    per_image = (per_patch * m).sum(1)[has] / counts[has]
    return per_image.mean()


@torch.no_grad()
def update_patch_center(center: torch.Tensor, teacher: torch.Tensor,
                        momentum: float) -> torch.Tensor:
    """EMA of the teacher's mean patch logits (B, N, K) -> (1, 1, K)."""
    return center * momentum + teacher.mean(dim=(0, 1), keepdim=True) * (1 - momentum)
