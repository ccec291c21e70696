"""The base of models with a network (feature-kmeans, STEGO): a ``torch.nn.Module`` that takes
and returns tensors."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from pipeline.models.base import SegmentationModel


class TorchSegmentationModel(torch.nn.Module, SegmentationModel):
    """Maps image tensors (N, 3, H, W) in [0, 1] to probability tensors (N, K, H, W) on the
    model's device; learned state is saved as tensors. ``to`` and ``eval`` are torch's."""

    uses_torch: ClassVar[bool] = True

    def __init__(self, class_names: list[str], colors: list[tuple[int, int, int]]) -> None:
        torch.nn.Module.__init__(self)
        SegmentationModel.__init__(self, class_names, colors)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch; implemented by subclasses."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved in ``model.safetensors``."""
        raise NotImplementedError

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, Any], model_dir: str
    ) -> TorchSegmentationModel:
        """Rebuild from ``model.json`` and ``model.safetensors``."""
        raise NotImplementedError
