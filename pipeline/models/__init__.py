"""Segmentation models behind one interface: image batch -> per-pixel class probabilities."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.models.store import METHODS, load_model, model_hash, save_model

__all__ = ["METHODS", "SegmentationModel", "load_model", "model_hash", "save_model"]

if TYPE_CHECKING:
    from pipeline.models.base import SegmentationModel


def __getattr__(name: str) -> Any:
    """``SegmentationModel`` on first use: reading a model.json (the CLI's early checks) does
    not import torch."""
    if name == "SegmentationModel":
        from pipeline.models.base import SegmentationModel

        return SegmentationModel
    raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
