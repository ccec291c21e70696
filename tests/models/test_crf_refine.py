"""The dense CRF as post-processing of models without their own (few-labels classifier,
classic methods): `stego segment --crf` (pipeline.models.crf_refine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.base import SegmentationModel
from pipeline.models.crf import dense_crf
from pipeline.models.crf_refine import CRFRefined, post_processed
from pipeline.models.refine import RegionRefined
from tests.models.test_crf import scene


class Planted(SegmentationModel):
    """A NumPy model that returns the planted probabilities for any batch."""

    method = "planted"

    def __init__(self, probs: np.ndarray) -> None:
        super().__init__(["a", "b", "c"], [(0, 0, 0)] * 3)
        self.probs = probs.astype(np.float32)

    def predict(self, images):
        return np.repeat(self.probs[None], len(images), axis=0)

    def state_tensors(self):
        return {}


@pytest.mark.parametrize(("scale", "size"), [(1, 48), (4, 96), (4, 90)])
def test_the_crf_mends_noisy_probabilities_along_the_colour_regions(scale, size):
    """At full resolution it is STEGO's dense CRF itself; on tiles reduced 4x (segment's
    default for models without their own CRF, any tile size) it mends them as well."""
    probs, image, truth = scene(0, size=size)
    images = image.numpy()[None].astype(np.float32) / 255
    refined = CRFRefined(Planted(probs.numpy()), scale=scale).predict(images)
    assert refined.shape == (1, 3, size, size)
    before = (probs.argmax(0) == truth).float().mean().item()
    after = (torch.from_numpy(refined[0]).argmax(0) == truth).float().mean().item()
    assert before < 0.8 and after > (0.97 if scale == 1 else 0.95)
    if scale == 1:
        np.testing.assert_allclose(refined[0], dense_crf(probs.float(), image).numpy(),
                                   atol=1e-5)


def test_a_single_band_is_taken_as_grey():
    probs, image, truth = scene(1)
    grey = image.float().mean(0, keepdim=True).numpy()[None] / 255
    refined = CRFRefined(Planted(probs.numpy()), scale=1).predict(grey)
    assert refined.shape == (1, 3, *truth.shape)
    np.testing.assert_allclose(refined.sum(1), 1, atol=1e-4)


def test_segment_applies_the_crf_after_the_refinement_only_when_asked():
    model = Planted(np.full((3, 8, 8), 1 / 3))
    assert post_processed(model, "none", 64, None) is model
    assert post_processed(model, "none", 64, False) is model
    both = post_processed(model, "regions", 64, True)
    assert isinstance(both, CRFRefined) and isinstance(both.inner, RegionRefined)
    assert both.inner.inner is model and both.class_names == model.class_names


def test_a_model_with_its_own_crf_is_switched_in_place():
    model = Planted(np.full((3, 8, 8), 1 / 3))
    model.crf = False
    assert post_processed(model, "none", 64, True) is model and model.crf is True
    assert post_processed(model, "none", 64, None) is model and model.crf is True
    assert isinstance(post_processed(model, "regions", 64, False), RegionRefined)
    assert model.crf is False
