"""Dense-CRF refinement of any model's tile probabilities (STEGO's post-processing, for the
models that have no CRF of their own: the few-labels classifier, the classic methods)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.models.base import SegmentationModel, as_array

CRF_SCALE = 4  # the CRF runs on tiles reduced 4x: 1/16 of the work, within 0.2 point of full
# resolution on Potsdam-3 and the demo scene for the classifier (docs/few-labels.md)


class CRFRefined(SegmentationModel):
    """Wraps a model: its probabilities on each tile refined by a dense CRF with STEGO's
    settings (:class:`pipeline.models.crf.CRFParams`) on the tile's first three bands as RGB
    (a single band as grey). With ``scale`` > 1 the probabilities and the image are
    area-averaged by that factor first, the CRF's spatial widths divided by it, and the
    result upsampled bilinearly. Each tile is refined alone and tiles lie on the global grid,
    so the result is seamless whatever the blocks, as with STEGO's own CRF. Returns NumPy
    probabilities."""

    def __init__(self, model: SegmentationModel, scale: int = CRF_SCALE) -> None:
        super().__init__(model.class_names, model.colors)
        if scale < 1:
            raise ValueError(f"CRF scale must be >= 1, got {scale}")
        self.inner = model
        self.scale = int(scale)
        self.uses_torch = model.uses_torch  # type: ignore[misc]  # what the input must be
        self.method = model.method  # type: ignore[misc]
        self.patch_size = model.patch_size

    def predict(self, images: Any) -> np.ndarray:
        """The inner model's probabilities, each tile's refined by the dense CRF."""
        return self.predict_with_prior(images)[0]

    def predict_with_prior(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """The refined probabilities (the CRF in float32, on the images' device), and the
        inner model's before the CRF: segment takes the margin from those, since the CRF's
        mean field makes confident what it smooths over, right or wrong, and `suggest`
        needs the classifier's own doubt (few-labels.md)."""
        import torch

        device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        prior = np.ascontiguousarray(as_array(self.inner.predict(images)), dtype=np.float32)
        x = torch.from_numpy(np.clip(as_array(images), 0, 1)).to(device)
        rgb = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        with torch.autocast(device.type, enabled=False):  # segment's bf16 autocast
            refined = refine_tiles(torch.from_numpy(prior).to(device), rgb, self.scale)
        return refined.cpu().numpy(), prior  # refined is new memory: prior is not aliased

    def state_tensors(self) -> dict[str, Any]:
        return self.inner.state_tensors()

    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata()


def refine_tiles(probs: Any, rgb: Any, scale: int = 1) -> Any:
    """Dense CRF of each tile: ``probs`` (N, K, H, W) float32 and ``rgb`` (N, 3, H, W) in
    [0, 1] -> refined (N, K, H, W); at ``1/scale`` resolution when ``scale`` > 1."""
    import torch
    import torch.nn.functional as F

    from pipeline.models.crf import CRFParams, dense_crf_batch

    params = CRFParams()
    h, w = probs.shape[-2:]
    if scale > 1:
        pad = (0, -w % scale, 0, -h % scale)
        probs = F.avg_pool2d(F.pad(probs, pad, mode="replicate"), scale)
        rgb = F.avg_pool2d(F.pad(rgb, pad, mode="replicate"), scale)
        params = replace(params, bilateral_sxy=params.bilateral_sxy / scale,
                         gaussian_sxy=max(params.gaussian_sxy / scale, 0.5))
    image = torch.round(rgb * 255).to(torch.uint8)
    out = dense_crf_batch(probs, image, params)
    if scale > 1:
        out = F.interpolate(out, scale_factor=scale, mode="bilinear",
                            align_corners=False)[..., :h, :w]
    return out


def post_processed(model: SegmentationModel, refine: str, pixels: int, crf: bool | None,
                   ) -> SegmentationModel:
    """``model`` with segment's post-processing: the superpixel refinement ``refine``
    (:func:`~pipeline.models.refine.with_refinement`), and the dense CRF switched as ``crf``
    asks (``None``: the model's own). A model with its own CRF (STEGO) is switched in place
    and keeps it where it was, on its probabilities before the refinement; any other model
    gets the CRF on the refined probabilities, at 1/:data:`CRF_SCALE` resolution (where it
    measured better, few-labels.md)."""
    from pipeline.models.refine import with_refinement

    own = hasattr(model, "crf")
    if own and crf is not None:
        model.crf = crf
    refined = with_refinement(model, refine, pixels)
    return CRFRefined(refined) if crf and not own else refined
