"""Dense-CRF refinement of any model's tile probabilities (STEGO's post-processing, for the
models that have no CRF of their own: the few-labels classifier, the classic methods)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.models.base import SegmentationModel, as_array


class CRFRefined(SegmentationModel):
    """Wraps a model: its probabilities on each tile refined by a dense CRF (STEGO's settings,
    :class:`pipeline.models.crf.CRFParams`) on the tile's first three bands as RGB (a single
    band as grey). Each tile is refined alone and tiles lie on the global grid, so the result
    is seamless whatever the blocks, as with STEGO's own CRF. Returns NumPy probabilities."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__(model.class_names, model.colors)
        self.inner = model
        self.uses_torch = model.uses_torch  # type: ignore[misc]  # what the input must be
        self.method = model.method  # type: ignore[misc]
        self.patch_size = model.patch_size

    def predict(self, images: Any) -> np.ndarray:
        """The inner model's probabilities, each tile's refined by the dense CRF (in float32,
        on the images' device)."""
        import torch

        from pipeline.models.crf import dense_crf

        device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        probs = torch.from_numpy(np.ascontiguousarray(as_array(self.inner.predict(images)),
                                                      dtype=np.float32)).to(device)
        x = np.clip(as_array(images), 0, 1)
        rgb = x[:, :3] if x.shape[1] >= 3 else np.repeat(x[:, :1], 3, axis=1)
        rgb = torch.from_numpy(np.rint(rgb * 255).astype(np.uint8)).to(device)
        with torch.autocast(device.type, enabled=False):  # segment's bf16 autocast
            return np.stack([dense_crf(p, im).cpu().numpy()
                             for p, im in zip(probs, rgb, strict=True)])

    def state_tensors(self) -> dict[str, Any]:
        return self.inner.state_tensors()

    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata()


def post_processed(model: SegmentationModel, refine: str, pixels: int, crf: bool | None,
                   ) -> SegmentationModel:
    """``model`` with segment's post-processing: the superpixel refinement ``refine``
    (:func:`~pipeline.models.refine.with_refinement`), and the dense CRF switched as ``crf``
    asks (``None``: the model's own). A model with its own CRF (STEGO) is switched in place
    and keeps it where it was, on its probabilities before the refinement; any other model
    gets the CRF on the refined probabilities (where it measured better, few-labels.md)."""
    from pipeline.models.refine import with_refinement

    if hasattr(model, "crf"):
        if crf is not None:
            model.crf = crf
        return with_refinement(model, refine, pixels)
    refined = with_refinement(model, refine, pixels)
    return CRFRefined(refined) if crf else refined
