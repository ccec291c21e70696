"""How a ViT backbone resamples its position embeddings to a patch grid it was not trained at.

timm (``dynamic_img_size``) resamples bicubically to the target size with antialiasing. DINO's
own ViT (facebookresearch/dino ``vision_transformer.py``, ``interpolate_pos_encoding``, which
STEGO's official code uses) interpolates by a scale factor of ``(grid + 0.1) / sqrt(N)``,
bicubic, no antialiasing, and keeps the table as it is at its own square grid. At 320 px the
two differ enough to change ~1 % of an imported STEGO model's clusters, so backbones whose
weights come from DINO use DINO's own interpolation:

* ``dino``: the DINO ViTs (timm tag ``.dino``: imported STEGO checkpoints, original DINO
  files, the hub copies) and the DINOv2 ViTs without registers, whose own code
  (facebookresearch/dinov2, every version) interpolates with the same 0.1 offset, scale factor
  and no antialiasing.
* ``timm``: everything else. The DINOv2 ViTs with registers interpolate to the target size
  with antialiasing (``interpolate_offset=0``, ``interpolate_antialias=True``), which is
  timm's resampling already; DINOv3 uses RoPE (no table); backbones pretrained here
  (``stego pretrain``) were trained with timm's.

The choice is recorded as ``pos_embed`` in a model's backbone description; a model file
without it (written before) keeps timm's, as it was fit with it.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F

TIMM = "timm"
DINO = "dino"
MODES = (TIMM, DINO)
DINO_OFFSET = 0.1  # facebookresearch/dino issue 8: keeps int(grid + 0.1) the output size


def dino_interpolate(pos_embed: torch.Tensor, grid: tuple[int, int],
                     num_prefix_tokens: int = 1) -> torch.Tensor:
    """``pos_embed`` (1, prefix + N, C) for a (rows, cols) patch grid as DINO does it.

    DINO's ``interpolate_pos_encoding`` compares pixel sizes (``w == h``) to keep the table;
    this compares the patch grid, the same for sides that are multiples of the patch."""
    n = pos_embed.shape[1] - num_prefix_tokens
    side = int(math.sqrt(n))
    if side * side != n:
        raise ValueError(f"position embedding of {n} patches is not a square grid")
    rows, cols = int(grid[0]), int(grid[1])
    if rows * cols == n and rows == cols:
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    dtype = patches.dtype
    table = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((rows + DINO_OFFSET) / math.sqrt(n), (cols + DINO_OFFSET) / math.sqrt(n))
    out = F.interpolate(table, scale_factor=scale, mode="bicubic")
    if tuple(out.shape[-2:]) != (rows, cols):
        raise ValueError(f"interpolated grid {tuple(out.shape[-2:])} is not {(rows, cols)}")
    out = out.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(dtype)
    return torch.cat([prefix, out], dim=1)


def _dino_pos_embed(self: Any, x: torch.Tensor) -> torch.Tensor:
    """timm ``VisionTransformer._pos_embed`` with DINO's interpolation (bound per instance)."""
    if x.ndim == 4:  # dynamic_img_size: patch tokens as (B, rows, cols, C)
        b, rows, cols, c = x.shape
        x = x.reshape(b, rows * cols, c)
    else:
        rows, cols = self.patch_embed.grid_size
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(x.shape[0], -1, -1))
    if self.reg_token is not None:
        to_cat.append(self.reg_token.expand(x.shape[0], -1, -1))
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos_embed = dino_interpolate(self.pos_embed, (rows, cols), prefix)
    if self.no_embed_class:
        x = x + pos_embed
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + pos_embed
    return self.pos_drop(x)


def native_interpolation(model: torch.nn.Module) -> str:
    """The interpolation the backbone family's own code uses (see the module docstring), from
    the timm model's pretrained tag and architecture."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or getattr(model, "pos_embed", None) is None:
        return TIMM
    cfg = getattr(model, "pretrained_cfg", None) or {}
    tag, arch = str(cfg.get("tag") or ""), str(cfg.get("architecture") or "")
    if tag == "dino":
        return DINO
    if "dinov2" in arch and model.reg_token is None:
        return DINO
    return TIMM


def set_interpolation(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Make ``model`` resample its position embeddings the ``mode`` way; returns it."""
    if mode not in MODES:
        raise ValueError(f"unknown position-embedding interpolation {mode!r}")
    if mode == DINO:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer) or getattr(model, "pos_embed", None) is None:
            raise ValueError("DINO's interpolation needs a timm ViT with a position embedding")
        model._pos_embed = types.MethodType(_dino_pos_embed, model)
    else:
        model.__dict__.pop("_pos_embed", None)
    model.__dict__["pos_embed_interpolation"] = mode
    return model


def interpolation(model: torch.nn.Module) -> str:
    """How ``model`` resamples its position embeddings: ``dino`` or ``timm``."""
    return str(model.__dict__.get("pos_embed_interpolation", TIMM))
