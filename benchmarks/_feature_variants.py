"""Feature-side variants of feature-kmeans, for ``pretrain_sweep.py features``.

Each variant turns a backbone (a timm ViT from :func:`build_backbone`) and images in [0, 1]
into patch features (N, C, H/p, W/p); the sweep clusters the 64 crops' features with
spherical k-means (n_init 10) and labels the whole Potsdam crop in one pass by the nearest
centroid, upsampled bilinearly, exactly as feature-kmeans does, so only the features differ
from the default row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.models.backbone import normalisation, patch_features, patch_size, resample

Features = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def _normalised(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in normalisation(net))
    return (images - mean) / std


def _plain(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The default: last block after the final norm."""
    return patch_features(net, _normalised(net, images))


def _at_scale(scale: float) -> Features:
    """The backbone run on images resampled by ``scale``, features resized to the default grid."""
    def run(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        p = patch_size(net)
        h, w = images.shape[-2:]
        small = resample(images, scale)
        small = small[..., : small.shape[-2] // p * p, : small.shape[-1] // p * p]
        f = _plain(net, small)
        return F.interpolate(f, size=(h // p, w // p), mode="bilinear", align_corners=False)
    return run


def _last_blocks(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last two blocks' tokens, each after the final norm, concatenated."""
    blocks = net.forward_intermediates(_normalised(net, images), indices=2, norm=True,
                                       output_fmt="NCHW", intermediates_only=True)
    return torch.cat(blocks, 1)


def _d4_mean(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Features averaged over the 8 flips and 90° rotations (test-time augmentation)."""
    total = 0
    for k in range(4):
        for flip in (False, True):
            x = torch.rot90(images, k, (2, 3))
            x = torch.flip(x, (3,)) if flip else x
            f = _plain(net, x)
            f = torch.flip(f, (3,)) if flip else f
            total = total + torch.rot90(f, -k, (2, 3))
    return total / 8


def _with_colour(weight: float) -> Features:
    """Unit-length features with the patch's mean normalised colour appended at ``weight``."""
    def run(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        colour = F.avg_pool2d(_normalised(net, images), patch_size(net)) / 3 ** 0.5
        return torch.cat([F.normalize(_plain(net, images), dim=1), weight * colour], 1)
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


def ensemble(nets: list[torch.nn.Module]) -> Features:
    """Unit-length default features of several backbones, concatenated."""
    def run(_: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(_plain(n, images), dim=1) for n in nets], 1)
    return run
