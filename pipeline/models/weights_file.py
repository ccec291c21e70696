"""Backbone weights files in every native layout, loaded without executing code: timm
safetensors/state dicts, original DINO checkpoints (``teacher``, ``module.``/``backbone.``),
original DINOv2 hub files (``mask_token``, ``register_tokens``) and original DINOv3 files
(``storage_tokens``, ``ls1.gamma``, ``rope_embed.periods``), converted by timm's own
``checkpoint_filter_fn`` for the model's family and then checked key by key."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import InputError

_WRAPPERS = ("teacher", "student", "model", "state_dict", "model_ema")
_PREFIXES = ("module.", "backbone.")


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path``: safetensors, or torch's weights-only loader.

    Training wrappers (``teacher``/``student``/``model``/``state_dict``) are unwrapped,
    ``module.``/``backbone.`` prefixes removed and a DINO projection head (``head.*``) dropped.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "weights file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is bad input
        raise InputError(p, f"not a readable weights file ({type(exc).__name__})") from None
    for key in _WRAPPERS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(p, "does not hold a state dict of tensors")
    cleaned: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith("head."):
            continue
        cleaned[k] = v
    return cleaned


def checkpoint_layout(state: dict[str, torch.Tensor]) -> str:
    """Which native layout a state dict is in: ``dinov3``, ``dinov2``, or ``timm`` (timm and
    original DINO files share one layout)."""
    if "storage_tokens" in state or any(k.endswith("rope_embed.periods") for k in state):
        return "dinov3"
    if "mask_token" in state or "register_tokens" in state:
        return "dinov2"
    return "timm"


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _check_registers(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                     where: str, name: str) -> None:
    """Register tokens must agree in number before timm converts an original file (a DINOv2
    file with registers would otherwise fail deep inside the position-embedding resampling)."""
    if checkpoint_layout(state) == "timm":
        return
    key = "storage_tokens" if "storage_tokens" in state else "register_tokens"
    in_file = state[key].shape[1] if key in state else 0
    in_model = target["reg_token"].shape[1] if "reg_token" in target else 0
    if in_file != in_model:
        raise InputError(where, f"weights do not fit backbone {name}: {key} holds {in_file} "
                         f"register tokens in the file, the model has {in_model}")


def _check_dropped_biases(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                          where: str, name: str) -> None:
    """timm drops DINOv3 qkv biases for models without them (the distilled ViTs have all-zero
    biases); refuse when a dropped bias is not zero, as the features would silently differ."""
    if checkpoint_layout(state) != "dinov3" or any(k.endswith("attn.q_bias") for k in target):
        return
    for key, value in state.items():
        if key.endswith("attn.qkv.bias") and bool(value.abs().max() > 0):
            raise InputError(where, f"weights do not fit backbone {name}: {key} is not zero, "
                             "so the model needs q/v biases (use the timm '_qkvb' variant)")


def fit_state_to_model(state: dict[str, torch.Tensor], model: torch.nn.Module, where: str,
                       name: str) -> dict[str, torch.Tensor]:
    """``state`` converted to ``model``'s keys by timm's filter for its family, or a one-line
    InputError naming the first key that does not fit (missing, unexpected or mis-shaped)."""
    target = model.state_dict()
    kernel = state.get("patch_embed.proj.weight")
    want = target.get("patch_embed.proj.weight")
    if kernel is not None and want is not None and kernel.shape[-2:] != want.shape[-2:]:
        # timm would resample the patch embedding silently: a different patch size is another
        # architecture, not a conversion
        raise InputError(where, f"weights do not fit backbone {name}: patch_embed.proj.weight "
                         f"is {_shape(kernel)} in the file, {_shape(want)} in the model")
    _check_registers(state, target, where, name)
    _check_dropped_biases(state, target, where, name)
    module = importlib.import_module(type(model).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # timm prints while converting DINOv3
            converted = convert(dict(state), model) if convert else dict(state)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[-1].strip() if str(exc) else type(exc).__name__
        raise InputError(where, f"weights do not fit backbone {name}: {first}") from None
    for key, value in converted.items():
        if key not in target:
            raise InputError(where, f"weights do not fit backbone {name}: unexpected key {key} "
                             f"({checkpoint_layout(state)} layout)")
        if tuple(value.shape) != tuple(target[key].shape):
            raise InputError(where, f"weights do not fit backbone {name}: {key} is "
                             f"{_shape(value)} in the file, {_shape(target[key])} in the model")
    missing = [k for k in target if k not in converted]
    if missing:
        raise InputError(where, f"weights do not fit backbone {name}: missing key {missing[0]} "
                         f"({checkpoint_layout(state)} layout)")
    return converted
