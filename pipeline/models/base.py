"""The model interface the tiler, blender and writers rely on."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

# A qualitative palette (colour-blind aware first entries) for clusters without names.
PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]


def default_class_names(n: int) -> list[str]:
    """``cluster 0`` .. ``cluster n-1``."""
    return [f"cluster {i}" for i in range(n)]


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """A distinct colour per class (cycling the palette beyond 20)."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


class SegmentationModel(torch.nn.Module):
    """Maps images (N, 3, H, W) in [0, 1] to class probabilities (N, K, H, W).

    ``H`` and ``W`` must be multiples of ``patch_size``. Subclasses store their learned state as
    tensors (for safetensors) and everything else in ``metadata()`` (for JSON).
    """

    method: ClassVar[str] = ""
    patch_size: int = 1

    def __init__(self, class_names: list[str], colors: list[tuple[int, int, int]]) -> None:
        super().__init__()
        if len(class_names) != len(colors):
            raise ValueError("one colour per class is required")
        self.class_names = list(class_names)
        self.colors = [tuple(int(v) for v in c) for c in colors]

    @property
    def n_classes(self) -> int:
        """Number of output classes (clusters)."""
        return len(self.class_names)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch; implemented by subclasses."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved in ``model.safetensors``."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Method-specific JSON metadata saved in ``model.json``."""
        return {}

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], model_dir: str
    ) -> SegmentationModel:
        """Rebuild from ``model.json`` and ``model.safetensors``."""
        raise NotImplementedError
