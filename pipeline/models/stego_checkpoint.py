"""Import an official STEGO PyTorch Lightning checkpoint without executing code from it.

Layout of the official checkpoint (``mhamilton723/STEGO``, ``LitUnsupervisedSegmenter``):

* ``state_dict``: ``net.model.*`` (DINO ViT), ``net.cluster1.0.*`` (Conv1x1 C->dim),
  ``net.cluster2.{0,2}.*`` (Conv1x1 C->C, ReLU, Conv1x1 C->dim; absent when
  ``projection_type`` is linear), ``cluster_probe.clusters`` (n_classes + extra_clusters, dim),
  ``linear_probe.{weight,bias}`` (Conv1x1 dim->n_classes), plus ``train_cluster_probe.*`` and
  ``decoder.*`` which are not needed for inference.
* ``hyper_parameters``: ``save_hyperparameters()`` of ``__init__(n_classes, cfg)``, i.e.
  ``{"n_classes": int, "cfg": omegaconf.DictConfig}`` with flat cfg keys such as ``model_type``,
  ``dino_patch_size``, ``dim``, ``extra_clusters``, ``projection_type``, ``continuous``.

Loading uses ``torch.load`` with a restricted unpickler (:mod:`pipeline.io.safe_checkpoint`).
Tensor shapes are the source of truth; hyperparameters are only used where shapes cannot tell
(the backbone family of a non-standard width).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import InputError
from pipeline.io.safe_checkpoint import (
    CheckpointFormatError,
    Inert,
    UnsafeCheckpointError,
    safe_load_checkpoint,
)

__all__ = [
    "CheckpointFormatError",
    "ImportedStego",
    "convert_stego_checkpoint",
    "import_stego_checkpoint",
]


@dataclass
class ImportedStego:
    """Tensors of an official STEGO checkpoint, renamed for our model."""

    backbone_name: str
    backbone_state: dict[str, torch.Tensor]
    head_state: dict[str, torch.Tensor]
    clusters: torch.Tensor
    linear_probe: dict[str, torch.Tensor] | None
    dim: int
    n_clusters: int
    patch_size: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Hyperparameters: whatever is plain
# --------------------------------------------------------------------------------------------

_DROP = object()
_SCALARS = (bool, int, float, str, type(None))


def _plain(obj: Any, depth: int = 0) -> Any:
    """Plain-value copy of ``obj`` (dict/list/scalars); unreadable parts become ``_DROP``."""
    if depth > 40:
        return _DROP
    if isinstance(obj, _SCALARS) and type(obj) in _SCALARS:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 and not obj.is_complex() else _DROP
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            if type(k) not in _SCALARS:
                continue
            pv = _plain(v, depth + 1)
            if pv is not _DROP:
                out[k] = pv
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, depth + 1) for v in obj]
        return [v for v in items if v is not _DROP]
    if isinstance(obj, Inert):
        state = obj._inert_state
        # OmegaConf containers keep their values under _content, value nodes under _val.
        if isinstance(state, dict) and "_content" in state:
            return _plain(state["_content"], depth + 1)
        if isinstance(state, dict) and "_val" in state:
            return _plain(state["_val"], depth + 1)
        if obj._inert_items:  # dict subclass (e.g. Lightning's AttributeDict)
            return _plain(obj._inert_items, depth + 1)
        if obj._inert_list:
            return _plain(obj._inert_list, depth + 1)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]} if isinstance(state[0], dict) else state[1]
        if isinstance(state, dict):
            public = {k: v for k, v in state.items() if isinstance(k, str) and k[:1] != "_"}
            return _plain(public, depth + 1) if public else _DROP
        return _DROP
    return _DROP


def _find_hparam(hp: Any, key: str) -> Any:
    """First value under ``key`` in ``hp`` or its nested dicts (breadth first)."""
    queue = [hp]
    while queue:
        d = queue.pop(0)
        if isinstance(d, dict):
            if key in d:
                return d[key]
            queue.extend(v for v in d.values() if isinstance(v, dict))
    return None


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------

_MODEL_FOR_WIDTH = {384: "vit_small", 768: "vit_base"}
_BLOCK_KEYS = tuple(
    f"{m}.{p}"
    for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for p in ("weight", "bias")
)
_TOP_KEYS = (
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
)


def _state_dict_of(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    sd = ckpt.get("state_dict", ckpt)
    if isinstance(sd, Inert):
        sd = sd._inert_items
    if not isinstance(sd, dict):
        raise CheckpointFormatError("'state_dict' is not a dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if isinstance(k, str) and isinstance(v, torch.Tensor):
            out[k] = v.detach()
    return out


def _require(sd: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise CheckpointFormatError(f"missing key {key!r} in state_dict")
    t = sd[key]
    if t.ndim != ndim or not t.is_floating_point():
        raise CheckpointFormatError(f"{key!r} has shape {tuple(t.shape)} / {t.dtype}")
    return t


def _conv(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    """Weight and bias of a 1x1 conv stored under the first present prefix."""
    for p in prefixes:
        if f"{p}.weight" in sd:
            w = _require(sd, f"{p}.weight", 4)
            b = _require(sd, f"{p}.bias", 1)
            if w.shape[2:] != (1, 1) or b.shape[0] != w.shape[0]:
                raise CheckpointFormatError(f"{p!r} is not a 1x1 convolution")
            return w, b
    raise CheckpointFormatError(f"missing key {prefixes[0] + '.weight'!r} in state_dict")


def _backbone(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int, int]:
    """DINO ``net.model.*`` -> timm VisionTransformer names; returns (state, width, patch)."""
    prefix = "net.model."
    raw = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    raw = {k: v for k, v in raw.items() if not k.startswith("head.")}
    if not raw:
        raise CheckpointFormatError(f"missing key {prefix + 'cls_token'!r} in state_dict")
    depth = 1 + max((int(k.split(".")[1]) for k in raw if k.startswith("blocks.")), default=-1)
    expected = list(_TOP_KEYS) + [f"blocks.{i}.{k}" for i in range(depth) for k in _BLOCK_KEYS]
    for k in expected:
        if k not in raw:
            raise CheckpointFormatError(f"missing key {prefix + k!r} in state_dict")
    extra = sorted(set(raw) - set(expected))
    if extra:
        raise CheckpointFormatError(f"unexpected backbone key {prefix + extra[0]!r}")
    proj = raw["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise CheckpointFormatError(f"patch embedding has shape {tuple(proj.shape)}")
    width, patch = int(proj.shape[0]), int(proj.shape[2])
    tokens = raw["pos_embed"].shape[1] - 1
    grid = 224 // patch
    if raw["pos_embed"].shape != (1, 1 + grid * grid, width):
        raise CheckpointFormatError(
            f"pos_embed has {tokens} patch tokens; expected {grid * grid} "
            f"(224 px input, patch {patch}, width {width})"
        )
    return {k: raw[k] for k in expected}, width, patch


def convert_stego_checkpoint(ckpt: dict[str, Any]) -> ImportedStego:
    """Rename the tensors of a loaded STEGO checkpoint for our backbone, head and probes.

    Accepts the Lightning wrapper (``state_dict`` + ``hyper_parameters``) or a bare state dict.
    A checkpoint trained with ``projection_type: linear`` (no ``net.cluster2``) gets an all-zero
    nonlinear branch, which contributes exactly nothing. Raises CheckpointFormatError.
    """
    if not isinstance(ckpt, dict):
        raise CheckpointFormatError("checkpoint is not a dict")
    sd = _state_dict_of(ckpt)
    hp_raw = ckpt.get("hyper_parameters", ckpt.get("hparams"))
    hp = _plain(hp_raw) if hp_raw is not None else {}
    if not isinstance(hp, dict):
        hp = {}

    backbone_state, width, patch = _backbone(sd)

    w1, b1 = _conv(sd, ("net.cluster1.0", "net.cluster1"))
    dim = int(w1.shape[0])
    if w1.shape[1] != width:
        raise CheckpointFormatError(f"net.cluster1 expects {w1.shape[1]} channels, not {width}")
    if "net.cluster2.0.weight" in sd or "net.cluster2.2.weight" in sd:
        w20, b20 = _conv(sd, ("net.cluster2.0",))
        w22, b22 = _conv(sd, ("net.cluster2.2",))
        if w20.shape[:2] != (width, width) or w22.shape[:2] != (dim, width):
            raise CheckpointFormatError("net.cluster2 shapes do not match net.cluster1")
    else:
        w20, b20 = w1.new_zeros(width, width, 1, 1), b1.new_zeros(width)
        w22, b22 = w1.new_zeros(dim, width, 1, 1), b1.new_zeros(dim)
    head_state = {
        "linear.weight": w1,
        "linear.bias": b1,
        "nonlinear.0.weight": w20,
        "nonlinear.0.bias": b20,
        "nonlinear.2.weight": w22,
        "nonlinear.2.bias": b22,
    }

    clusters = _require(sd, "cluster_probe.clusters", 2)
    if clusters.shape[1] != dim:
        raise CheckpointFormatError(
            f"cluster_probe.clusters has dim {clusters.shape[1]}, not {dim}"
        )

    linear_probe = None
    if "linear_probe.weight" in sd:
        lw, lb = _conv(sd, ("linear_probe",))
        if lw.shape[1] != dim:
            raise CheckpointFormatError(f"linear_probe has dim {lw.shape[1]}, not {dim}")
        linear_probe = {"weight": lw, "bias": lb}

    model_type = _find_hparam(hp, "model_type")
    if width in _MODEL_FOR_WIDTH:
        family = _MODEL_FOR_WIDTH[width]
        if isinstance(model_type, str) and model_type != family:
            raise CheckpointFormatError(
                f"hyperparameter model_type {model_type!r} contradicts backbone width {width}"
            )
    elif model_type in _MODEL_FOR_WIDTH.values():
        family = model_type
    else:
        raise CheckpointFormatError(f"no DINO ViT has width {width} (model_type {model_type!r})")
    if patch not in (8, 16):
        raise CheckpointFormatError(f"no DINO ViT has patch size {patch}")

    return ImportedStego(
        backbone_name=f"{family}_patch{patch}_224.dino",
        backbone_state=backbone_state,
        head_state=head_state,
        clusters=clusters,
        linear_probe=linear_probe,
        dim=dim,
        n_clusters=int(clusters.shape[0]),
        patch_size=patch,
        hyperparameters=hp,
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


def import_stego_checkpoint(path: str | Path) -> ImportedStego:
    """safe_load + convert, with one-line InputError for unreadable/unsafe/incomplete files."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "checkpoint file not found")
    try:
        ckpt = safe_load_checkpoint(p)
    except UnsafeCheckpointError as exc:
        raise InputError(p, f"unsafe checkpoint: {exc}") from None
    except CheckpointFormatError as exc:
        raise InputError(p, f"not a usable checkpoint: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure is bad input
        raise InputError(p, f"not a readable checkpoint ({_one_line(exc)})") from None
    try:
        return convert_stego_checkpoint(ckpt)
    except CheckpointFormatError as exc:
        raise InputError(p, f"not a STEGO checkpoint: {exc}") from None
