"""The model interface the tiler, blender and writers rely on (no torch: the NumPy methods
run without it)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

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


class SegmentationModel:
    """Maps images (N, 3, H, W) in [0, 1] to class probabilities (N, K, H, W).

    ``H`` and ``W`` must be multiples of ``patch_size``. This base is for models computed with
    NumPy on the CPU (``uses_torch`` False): ``predict`` takes and returns float32 arrays, and
    state is saved as arrays. Models with a network subclass
    :class:`pipeline.models.torch_model.TorchSegmentationModel` (tensors in and out), so a run
    of a NumPy method never imports torch. Everything else goes in ``metadata()`` (JSON).
    """

    method: ClassVar[str] = ""
    uses_torch: ClassVar[bool] = False
    patch_size: int = 1

    def __init__(self, class_names: list[str], colors: list[tuple[int, int, int]]) -> None:
        if len(class_names) != len(colors):
            raise ValueError("one colour per class is required")
        self.class_names = list(class_names)
        self.colors = [tuple(int(v) for v in c) for c in colors]

    @property
    def n_classes(self) -> int:
        """Number of output classes (clusters)."""
        return len(self.class_names)

    def predict(self, images: Any) -> Any:
        """Class probabilities for a batch; implemented by subclasses."""
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Any]:
        """Arrays (tensors for torch models) saved in ``model.safetensors``."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """Method-specific JSON metadata saved in ``model.json``."""
        return {}

    def to(self, device: str) -> SegmentationModel:
        """NumPy models run on the CPU whatever ``model.device`` says: a no-op."""
        return self

    def eval(self) -> SegmentationModel:
        """NumPy models have no training mode: a no-op."""
        return self

    @classmethod
    def from_saved(
        cls, meta: dict[str, Any], tensors: dict[str, Any], model_dir: str
    ) -> SegmentationModel:
        """Rebuild from ``model.json`` and ``model.safetensors``."""
        raise NotImplementedError


def softmax_neg(d: np.ndarray, scale: float, axis: int) -> np.ndarray:
    """``softmax(-d / scale)`` along ``axis``, float32, stable (the minimum subtracted first):
    class probabilities from distances."""
    logits = (d.min(axis=axis, keepdims=True) - d) / np.float32(scale)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=axis, keepdims=True)
    return logits.astype(np.float32, copy=False)


def as_array(x: Any) -> np.ndarray:
    """A float32 host array of a NumPy array or a (device) tensor of probabilities."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False)
    return x.detach().float().cpu().numpy()
