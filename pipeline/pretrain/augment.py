"""Multi-crop views for DINO on nadir imagery: random resized crops, flips, 90-degree
rotations, colour jitter, grayscale and blur. Pure tensor arithmetic, all randomness drawn from
one ``torch.Generator`` so a run is reproducible (and resumable) for a seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view: output size, crop-area range and augmentation probabilities."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    jitter_p: float = 0.8
    gray_p: float = 0.2


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def crop_boxes(n: int, source: int, scale: tuple[float, float], gen: torch.Generator,
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized-crop boxes (x0, y0, x1, y1) inside a ``source``-pixel square: area
    fraction in ``scale``, aspect ratio log-uniform in ``ratio``."""
    area = _uniform(n, *scale, gen) * source * source
    log_r = _uniform(n, torch.log(torch.tensor(ratio[0])).item(),
                     torch.log(torch.tensor(ratio[1])).item(), gen)
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(4, source)
    h = torch.sqrt(area / r).clamp(4, source)
    x0 = torch.rand(n, generator=gen) * (source - w)
    y0 = torch.rand(n, generator=gen) * (source - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _flip_rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-sample horizontal flip and rotation by a multiple of 90 degrees (nadir views have
    no 'up')."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    turns = torch.randint(4, (x.shape[0],), generator=gen)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    out = x.clone()
    for k in (1, 2, 3):
        sel = turns == k
        if sel.any():
            out[sel] = torch.rot90(x[sel], k, dims=(-2, -1))
    return out


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _jitter(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness 0.4, contrast 0.4, saturation 0.2 (DINO's strengths), each sample with
    probability ``p``."""
    n = x.shape[0]
    on = (torch.rand(n, generator=gen) < p).float()[:, None, None, None]
    b = 1 + on * _uniform(n, -0.4, 0.4, gen)[:, None, None, None]
    c = 1 + on * _uniform(n, -0.4, 0.4, gen)[:, None, None, None]
    s = 1 + on * _uniform(n, -0.2, 0.2, gen)[:, None, None, None]
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    g = _gray(x)
    return ((x - g) * s + g).clamp(0, 1)


def _grayscale(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    on = torch.rand(x.shape[0], generator=gen) < p
    return torch.where(on[:, None, None, None], _gray(x).expand_as(x), x)


def _blur(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur, sigma uniform in [0.1, 2.0] * size / 224, with probability ``p``."""
    n, c, h, _ = x.shape
    on = torch.rand(n, generator=gen) < p
    sigma = _uniform(n, 0.1, 2.0, gen) * h / 224
    if not on.any():
        return x
    radius = max(1, int(torch.ceil(3 * sigma.max()).item()))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # (n, 2r+1)
    y = x.reshape(1, n * c, h, -1)
    kh = k.repeat_interleave(c, 0)[:, None, :, None]
    kw = k.repeat_interleave(c, 0)[:, None, None, :]
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kh, groups=n * c)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kw, groups=n * c)
    return torch.where(on[:, None, None, None], y.reshape_as(x), x)


def make_views(images: torch.Tensor, spec: ViewSpec, gen: torch.Generator) -> torch.Tensor:
    """A batch of augmented views (N, 3, size, size) of ``images`` (N, 3, S, S) in [0, 1]."""
    n, _, s, _ = images.shape
    boxes = crop_boxes(n, s, spec.scale, gen)
    rois = torch.cat([torch.arange(n, dtype=images.dtype)[:, None], boxes], dim=1)
    x = roi_align(images, rois, output_size=spec.size, spatial_scale=1.0, sampling_ratio=2,
                  aligned=True)
    x = _flip_rotate(x, gen)
    x = _jitter(x, spec.jitter_p, gen)
    x = _grayscale(x, spec.gray_p, gen)
    return _blur(x, spec.blur_p, gen)
