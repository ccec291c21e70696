"""Model files: ``model.safetensors`` (tensors) + ``model.json`` (everything else). No pickle."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError

if TYPE_CHECKING:  # torch loads only for a torch model, never to read model.json
    from pipeline.models.base import SegmentationModel

FORMAT_VERSION = 1
METHODS = ("stego", "pixel-kmeans", "feature-kmeans", "threshold", "region", "edge", "classifier")


def _model_class(method: str) -> type[SegmentationModel]:
    """The class of one method, importing only its module: a pixel-kmeans run does not load
    timm and torchvision (2 s) for the backbone models it does not use."""
    if method == "pixel-kmeans":
        from pipeline.models.pixel_kmeans import PixelKMeans
        return PixelKMeans
    if method == "feature-kmeans":
        from pipeline.models.feature_kmeans import FeatureKMeans
        return FeatureKMeans
    if method == "stego":
        from pipeline.models.stego import StegoModel
        return StegoModel
    if method == "classifier":
        from pipeline.models.classifier import SampleClassifier
        return SampleClassifier
    if method == "threshold":
        from pipeline.models.threshold import ThresholdModel
        return ThresholdModel
    from pipeline.models.regions import EdgeRegionModel, RegionGrowingModel

    return {"region": RegionGrowingModel, "edge": EdgeRegionModel}[method]


def uses_torch(method: str) -> bool:
    """Whether a method's model runs on torch (feature-kmeans, STEGO) or on NumPy alone."""
    return _model_class(method).uses_torch


def save_model(model: SegmentationModel, model_dir: Path, extra: dict[str, Any]) -> Path:
    """Write the model atomically (temp names, then rename); returns the directory."""
    if model.uses_torch:
        from safetensors.torch import save_file
    else:  # the same file format, written from NumPy arrays without importing torch
        from safetensors.numpy import save_file

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "method": model.method,
        "class_names": model.class_names,
        "colors": [list(c) for c in model.colors],
        "patch_size": model.patch_size,
        "params": model.metadata(),
        **extra,
    }
    if getattr(model, "backbone_info", None):
        meta["backbone"] = dict(model.backbone_info)
        if getattr(model, "backbone", None) is not None:  # what the backbone does, as it runs
            from pipeline.models.pos_embed import interpolation

            meta["backbone"]["pos_embed"] = interpolation(model.backbone)
    tmp_t = model_dir / f".model.safetensors.tmp-{os.getpid()}"
    tmp_j = model_dir / f".model.json.tmp-{os.getpid()}"
    try:
        save_file(model.state_tensors(), str(tmp_t))
        tmp_j.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp_t, model_dir / "model.safetensors")
        os.replace(tmp_j, model_dir / "model.json")
    finally:
        for t in (tmp_t, tmp_j):
            t.unlink(missing_ok=True)
    return model_dir


def local_model_dir(model_dir: str | Path) -> Path:
    """The model directory to read: ``model_dir`` itself, or for an object-store URL
    (``s3://…``) its published copy fetched into the local cache (checked against its
    manifest; :mod:`pipeline.io.remote`)."""
    from pipeline.io.remote import fetch_dir, is_remote

    return fetch_dir(str(model_dir)) if is_remote(model_dir) else Path(model_dir)



def read_model_json(model_dir: Path) -> dict[str, Any]:
    """The model's JSON metadata, checked."""
    path = Path(model_dir) / "model.json"
    if not Path(model_dir).is_dir():
        raise InputError(model_dir, "model directory not found")
    if not path.is_file():
        raise InputError(path, "model.json missing (is this a model directory from `stego fit`?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"corrupt model.json ({exc.msg})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(path, f"unsupported model format {meta.get('format_version')!r}")
    if meta.get("method") not in METHODS:
        raise InputError(path, f"unknown method {meta.get('method')!r}")
    return meta


def model_hash(model_dir: Path) -> str:
    """sha256 over model.json and model.safetensors: the model's identity for caches."""
    h = hashlib.sha256()
    for name in ("model.json", "model.safetensors"):
        with open(Path(model_dir) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_model(model_dir: Path) -> SegmentationModel:
    """Rebuild a model from its directory (safetensors + JSON only: nothing is unpickled).

    NumPy methods (pixel-kmeans, threshold, region, edge) load as arrays, without torch."""
    from safetensors import SafetensorError

    meta = read_model_json(model_dir)
    tpath = Path(model_dir) / "model.safetensors"
    if not tpath.is_file():
        raise InputError(tpath, "model.safetensors missing")
    cls = _model_class(meta["method"])
    if cls.uses_torch:
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    try:
        tensors = load_file(str(tpath))
    except (SafetensorError, OSError) as exc:
        raise InputError(tpath, f"corrupt model weights ({exc})") from None
    try:
        model = cls.from_saved(meta, tensors, str(model_dir))
    except KeyError as exc:
        raise InputError(tpath, f"model file lacks {exc}") from None
    except (RuntimeError, ValueError) as exc:
        last = str(exc).strip().splitlines()[-1].strip() if str(exc) else type(exc).__name__
        raise InputError(model_dir, f"model weights do not fit its description ({last})") from None
    return model.eval()
