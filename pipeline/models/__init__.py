"""Segmentation models behind one interface: image batch -> per-pixel class probabilities."""

from pipeline.models.base import SegmentationModel
from pipeline.models.store import load_model, model_hash, save_model

METHODS = ("stego", "pixel-kmeans", "feature-kmeans", "threshold", "region", "edge")

__all__ = ["METHODS", "SegmentationModel", "load_model", "model_hash", "save_model"]
