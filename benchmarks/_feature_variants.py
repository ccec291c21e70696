"""Feature-side variants of feature-kmeans, for ``pretrain_sweep.py features``.

Each variant turns a backbone and images in [0, 1] into patch features (N, C, H/p, W/p); the
sweep clusters the 64 crops' features with spherical k-means (n_init 10) and labels the whole
Potsdam crop in one pass by the nearest centroid, upsampled bilinearly, exactly as
feature-kmeans does, so only the features differ from the default row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.models.backbone import patch_features, resample

Features = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def _plain(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The default: last block after the final norm."""
    return patch_features(model.backbone, (images - model.mean) / model.std)


def _at_scale(scale: float) -> Features:
    """The backbone run on images resampled by ``scale``, features resized to the default grid."""
    def run(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        p = model.patch_size
        h, w = images.shape[-2:]
        small = resample(images, scale)
        small = small[..., : small.shape[-2] // p * p, : small.shape[-1] // p * p]
        f = _plain(model, small)
        return F.interpolate(f, size=(h // p, w // p), mode="bilinear", align_corners=False)
    return run


def _last_blocks(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last two blocks' tokens, each after the final norm, concatenated."""
    net = model.backbone
    x = net._pos_embed(net.patch_embed((images - model.mean) / model.std))
    outs = []
    for i, block in enumerate(net.blocks):
        x = block(x)
        if i >= len(net.blocks) - 2:
            outs.append(net.norm(x)[:, net.num_prefix_tokens:])
    n, _, h, w = images.shape
    p = model.patch_size
    return torch.cat(outs, -1).reshape(n, h // p, w // p, -1).permute(0, 3, 1, 2)


def _d4_mean(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Features averaged over the 8 flips and 90° rotations (test-time augmentation)."""
    total = 0
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(images, k, (2, 3))
            x = torch.flip(x, (3,)) if flip else x
            f = _plain(model, x)
            f = torch.flip(f, (3,)) if flip else f
            total = total + torch.rot90(f, -k, (2, 3))
    return total / 8


def _with_colour(weight: float) -> Features:
    """Unit-length features with the patch's mean normalised colour appended at ``weight``."""
    def run(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        colour = F.avg_pool2d((images - model.mean) / model.std, model.patch_size) / 3 ** 0.5
        return torch.cat([F.normalize(_plain(model, images), dim=1), weight * colour], 1)
    return run


VARIANTS: dict[str, tuple[Features, bool]] = {
    # label: (features, subtract the crops' mean feature before the cosine k-means)
    "default: last block": (_plain, False),
    "centred (mean feature subtracted)": (_plain, True),
    "D4 test-time augmentation": (_d4_mean, False),
    "last two blocks concatenated": (_last_blocks, False),
    "input at 0.5x": (_at_scale(0.5), False),
    "input at 0.75x": (_at_scale(0.75), False),
    "input at 1.5x": (_at_scale(1.5), False),
    "colour appended, weight 0.3": (_with_colour(0.3), False),
    "colour appended, weight 0.6": (_with_colour(0.6), False),
    "colour appended, weight 1.0": (_with_colour(1.0), False),
}


def ensemble(models: list[torch.nn.Module]) -> Features:
    """Unit-length default features of several backbones, concatenated."""
    def run(_: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(_plain(m, images), dim=1) for m in models], 1)
    return run
