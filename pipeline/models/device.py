"""Where and in which precision models run: the device, and bf16 autocast where it is
faster than float32."""

from __future__ import annotations

import torch


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when available."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    return requested


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, which AMX CPUs also have).

    Measured on ViT-S/8 at 544² (``benchmarks/precision.py``): bf16 autocast runs 3.0x as fast
    as float32 with AMX, 1.4x with AVX512-BF16 alone, and 0.7x (AVX-512) to 0.3x (AVX2)
    without bf16 instructions, where oneDNN emulates it.
    """
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``model.precision`` on ``device`` (None = full float32).

    ``auto`` is bf16 on CUDA and on CPUs with native bf16 (:func:`cpu_has_native_bf16`), and
    float32 on other CPUs, where bf16 is slower.
    """
    if precision == "fp32":
        return None
    if precision == "auto" and not device.startswith("cuda") and not cpu_has_native_bf16():
        return None
    return torch.bfloat16


def resolved_precision(precision: str, device: str) -> str:
    """``model.precision`` as it runs on ``device``: ``"bf16"`` or ``"fp32"`` (never auto)."""
    return "fp32" if autocast_dtype(precision, device) is None else "bf16"


def precision_context(precision: str, device: str) -> torch.autocast:
    """``torch.autocast`` for ``model.precision`` on ``device`` (disabled for float32).

    Models run only their backbone under it: heads, cluster scores and the CRF leave autocast
    (:func:`pipeline.models.backbone.full_precision`), so bf16 never decides a label on its own.
    """
    amp = autocast_dtype(precision, device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    return torch.autocast(dev_type, dtype=amp or torch.float32, enabled=amp is not None)
