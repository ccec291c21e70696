"""The base of models with a network (feature-kmeans, STEGO): a ``torch.nn.Module`` that takes
and returns tensors."""

from __future__ import annotations

from typing import ClassVar

import torch

from pipeline.models.base import SegmentationModel


class TorchSegmentationModel(torch.nn.Module, SegmentationModel):
    """Maps image tensors (N, 3, H, W) in [0, 1] to probability tensors (N, K, H, W) on the
    model's device; ``state_tensors`` and ``from_saved`` deal in tensors; ``to`` and ``eval``
    are torch's."""

    uses_torch: ClassVar[bool] = True

    def __init__(self, class_names: list[str], colors: list[tuple[int, int, int]]) -> None:
        torch.nn.Module.__init__(self)
        SegmentationModel.__init__(self, class_names, colors)
