"""Frozen self-supervised ViT backbones from timm, and where their weights come from.

Weights sources: ``hub`` (timm / Hugging Face cache), a local ``PATH`` (timm state dict as
.safetensors/.pth, or an original DINO checkpoint with a ``teacher`` key), a backbone directory
from `stego pretrain` (architecture and normalisation from its ``backbone.json``), ``random``, or
``auto`` (hub when reachable, else random with a loud warning). What was used is recorded as a
provenance dict that travels into ``model.json`` and ``run.json``, with the way the position
embeddings are resampled to other tile sizes (DINO's own for DINO weights, see
:mod:`pipeline.models.pos_embed`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import timm
import torch

from pipeline.errors import InputError
from pipeline.models import pos_embed
from pipeline.models.backbone_dir import is_backbone_dir, read_backbone_json, read_backbone_weights
from pipeline.models.presets import preset_for_timm, timm_name_of
from pipeline.models.weights_file import fit_state_to_model, read_weights_file

DEFAULT_BACKBONE = "vit_small_patch8_224.dino"
_HUB_HOST = ("huggingface.co", 443)


def tensor_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted names and raw tensor bytes (stable identity of weights)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connection quickly."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(_HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def create_vit(name: str, overrides: dict[str, Any], pretrained: bool = False) -> torch.nn.Module:
    """A timm ViT without classifier, any input size (``dynamic_img_size``), frozen, eval mode.

    ``name`` is a timm name or a preset name (``stego backbones``)."""
    try:
        model = timm.create_model(timm_name_of(name), pretrained=pretrained, num_classes=0,
                                  dynamic_img_size=True, **overrides)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise InputError(name, "unknown timm backbone name") from None
        raise
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def resolve_backbone(name: str, weights: str,
                     overrides: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The timm name and overrides to build: those in ``backbone.json`` when ``weights`` is a
    backbone directory (from `stego pretrain`), else the ones given."""
    if weights not in ("auto", "hub", "random") and is_backbone_dir(weights):
        meta = read_backbone_json(weights)
        return meta["timm_name"], dict(meta["overrides"])
    return timm_name_of(name), dict(overrides or {})


def _from_backbone_dir(path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A backbone directory's ViT, with its own normalisation, and its provenance."""
    meta = read_backbone_json(path)
    model = create_vit(meta["timm_name"], dict(meta["overrides"]))
    state = read_backbone_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise InputError(path, f"backbone weights do not fit {meta['timm_name']}: {first}") \
            from None
    norm = meta["normalisation"]
    set_normalisation(model, norm)
    return model, {
        "source": "directory",
        "path": str(Path(path).resolve()),
        "file_sha256": file_sha256(Path(path) / "backbone.safetensors"),
        "sha256": tensor_hash(model.state_dict()),
        "method": meta.get("method"),
        "steps": meta.get("steps"),
        "normalisation": {"mean": list(norm["mean"]), "std": list(norm["std"])},
    }


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str = "auto",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Create a frozen timm ViT in eval mode and return it with its weights provenance.

    ``weights``: ``auto``, ``hub``, ``random``, a weights file, or a backbone directory
    (whose ``backbone.json`` then decides the architecture, see :func:`resolve_backbone`).
    The position embeddings are resampled as the family's own code does
    (:func:`pos_embed.native_interpolation`), except for a backbone directory (pretrained
    here with timm's resampling).
    """
    model, provenance = _build(name, weights, dict(overrides or {}), seed)
    if provenance["source"] != "directory":
        pos_embed.set_interpolation(model, pos_embed.native_interpolation(model))
    return model, provenance


def _build(name: str, weights: str, overrides: dict[str, Any],
           seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """:func:`build_backbone` with timm's position-embedding resampling."""
    if weights not in ("auto", "hub", "random") and Path(weights).is_dir():
        return _from_backbone_dir(weights)
    if weights == "auto":
        if hub_reachable():
            weights = "hub"
        else:
            warnings.warn(
                f"WEIGHTS: the model hub is unreachable, so {name} gets RANDOM weights. "
                "Features will be far worse than pretrained DINO; pass --weights PATH with a "
                "local checkpoint, or pretrain one offline on your rasters with `stego "
                "pretrain IN.tif --out BACKBONE_DIR` and pass --weights BACKBONE_DIR.",
                stacklevel=3,
            )
            weights = "random"
    if weights == "hub":
        try:
            model = create_vit(name, overrides, pretrained=True)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - network/cache failures
            raise InputError(
                "--weights hub",
                f"could not load pretrained {name} from the hub or its cache "
                f"({type(exc).__name__}); use --weights PATH or --weights random",
            ) from None
        return model, {"source": "hub", "name": name, "sha256": tensor_hash(model.state_dict())}
    if weights == "random":
        torch.manual_seed(seed)
        model = create_vit(name, overrides, pretrained=False)
        return model, {"source": "random", "seed": seed, "sha256": tensor_hash(model.state_dict())}
    model = create_vit(name, overrides, pretrained=False)
    state = fit_state_to_model(read_weights_file(weights), model, weights, name)
    model.load_state_dict(state, strict=True)
    return model, {
        "source": "file",
        "path": str(Path(weights).resolve()),
        "file_sha256": file_sha256(weights),
        "sha256": tensor_hash(model.state_dict()),
    }


def describe_backbone(name: str, overrides: dict[str, Any] | None, provenance: dict[str, Any],
                      net: torch.nn.Module) -> dict[str, Any]:
    """What a model records about its backbone (``model.json``, then ``run.json``): the timm
    name and overrides, the weights' provenance, the preset it matches, and the features it
    gives (patch, feature size, prefix tokens dropped, normalisation, position-embedding
    resampling: ``dino`` or ``timm``)."""
    preset = preset_for_timm(name)
    mean, std = normalisation(net)
    return {"name": name, "overrides": dict(overrides or {}), "weights": provenance,
            "preset": preset.name if preset else None, "patch_size": patch_size(net),
            "feature_dim": int(net.num_features),
            "prefix_tokens": int(getattr(net, "num_prefix_tokens", 1)),
            "normalisation": {"mean": list(mean), "std": list(std)},
            "pos_embed": pos_embed.interpolation(net)}


def patch_size(model: torch.nn.Module) -> int:
    """The ViT's patch size (stride of its feature map)."""
    ps = model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def patch_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last-block features after the final norm, prefix tokens dropped: (N, C, H/p, W/p).

    ``images`` are already normalised with the backbone's mean/std.
    Under the caller's autocast (``model.precision``) the ViT runs in bf16; the features come
    back as float32 so that what follows can leave autocast (:func:`full_precision`).
    """
    n, _, h, w = images.shape
    p = patch_size(model)
    tokens = model.forward_features(images)
    tokens = tokens[:, model.num_prefix_tokens :].float()
    return tokens.reshape(n, h // p, w // p, -1).permute(0, 3, 1, 2)


def resample(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Images resampled by ``scale`` (bilinear, antialiased) to run a backbone at another
    ground sampling distance; unchanged at scale 1."""
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (round(h * scale), round(w * scale))
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear",
                                           align_corners=False, antialias=True)


def model_patch(net: torch.nn.Module, scale: float) -> int:
    """Native pixels per backbone patch at input ``scale`` (tiles must hold whole patches)."""
    p = patch_size(net)
    return int(round(p / scale)) if scale < 1 else p


def full_precision(like: torch.Tensor) -> torch.autocast:
    """Leave any autocast for the rest of a model after the backbone (heads, cluster scores,
    CRF): they are cheap, and in float32 bf16 rounding cannot flip a near-tie label."""
    return torch.autocast(like.device.type, enabled=False)


def compile_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` the feature pass the pipeline calls (``forward_features``), in place.

    Compilation happens lazily on the first batch (seconds to minutes); shapes are static per
    run (one tile size), so ``dynamic=False``.
    """
    if not hasattr(model.forward_features, "_torchdynamo_orig_callable"):
        model.forward_features = torch.compile(model.forward_features, dynamic=False)
    return model


def uses_fused_attention(model: torch.nn.Module) -> bool:
    """Whether every attention layer uses PyTorch SDPA (``F.scaled_dot_product_attention``)."""
    flags = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    return bool(flags) and all(flags)


def set_normalisation(model: torch.nn.Module, norm: dict[str, Any]) -> None:
    """Make ``norm`` ({"mean", "std"}) the mean/std :func:`normalisation` reports."""
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                            "mean": tuple(norm["mean"]), "std": tuple(norm["std"])}


def normalisation(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the backbone was trained with."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(
        cfg.get("std", (0.229, 0.224, 0.225))
    )


def embedded_tensors(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights under ``backbone.``, to store inside a model file (read back
    with :func:`prefixed`)."""
    return {f"backbone.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_backbone(info: dict[str, Any], tensors: dict[str, torch.Tensor], embedded: bool,
                  model_dir: str) -> torch.nn.Module:
    """Rebuild a model's backbone from embedded tensors, its weights file or the hub; verify.

    The position embeddings are resampled as when the model was fit: ``info["pos_embed"]``,
    timm's for model files written before it was recorded."""
    mode = info.get("pos_embed", pos_embed.TIMM)
    if mode not in pos_embed.MODES:
        raise InputError(model_dir, f"unknown position-embedding interpolation {mode!r}")
    if embedded:
        net, _ = build_backbone(info["name"], "random", info.get("overrides"), seed=0)
        net.load_state_dict(prefixed(tensors, "backbone."), strict=True)
    else:
        source = info["weights"]["source"]
        where = info["weights"].get("path") if source in ("file", "directory") else "hub"
        net, _ = build_backbone(info["name"], where, info.get("overrides"))
    if info["weights"].get("normalisation"):  # a pretrained directory's own mean/std
        set_normalisation(net, info["weights"]["normalisation"])
    if tensor_hash(net.state_dict()) != info["weights"]["sha256"]:
        raise InputError(model_dir, "backbone weights differ from those the model was fit on")
    return pos_embed.set_interpolation(net, mode)
