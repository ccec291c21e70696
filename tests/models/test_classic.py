"""The classic segmenters on planted images: threshold splits a bimodal image, region growing
recovers noisy pieces, the edge method closes shapes, refinement removes speckle but keeps small
objects; model files round-trip."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from pipeline.fit.classic import fit_regions, fit_threshold
from pipeline.io.crops import Crop
from pipeline.models.refine import (
    SAMPLE_STRIDE,
    SLIC_STRIPS,
    RegionRefined,
    average_within,
    sample_mask,
    superpixels,
)
from pipeline.models.region_segmenters import RegionParams, edge_regions, grow_regions
from pipeline.models.store import load_model, save_model
from pipeline.models.threshold import pixel_index

COLOURS = np.array([[0.2, 0.5, 0.2], [0.7, 0.7, 0.7], [0.6, 0.3, 0.2]], dtype=np.float32)


def _crops(image: np.ndarray) -> list[Crop]:
    """One crop per image (H, W, 3): the whole image, every pixel valid."""
    return [Crop("planted", 0, 0, np.ascontiguousarray(image.transpose(2, 0, 1)),
                 np.ones(image.shape[:2], dtype=bool))]


def _labels(model, image: np.ndarray) -> np.ndarray:
    return model.predict(np.ascontiguousarray(image.transpose(2, 0, 1))[None])[0].argmax(0)


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of pixels right under the best one-to-one matching of labels to pieces."""
    k = int(max(pred.max(), truth.max())) + 1
    return max(float((np.array(p)[pred] == truth).mean()) for p in permutations(range(k)))


def _pieces(noise: float = 0.04, size: int = 128, seed: int = 0):
    """A piecewise-constant image of three colours (one piece a small island) plus noise."""
    truth = np.zeros((size, size), dtype=np.int64)
    truth[:, 40:90] = 1
    truth[60:, 90:] = 2
    truth[10:30, 5:30] = 2
    rng = np.random.default_rng(seed)
    image = COLOURS[truth] + rng.normal(0, noise, (size, size, 3)).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32), truth


def test_threshold_splits_a_bimodal_image_at_the_valley():
    rng = np.random.default_rng(0)
    truth = (rng.random((96, 96)) < 0.3).astype(np.int64)
    grey = np.where(truth == 1, rng.normal(0.75, 0.05, truth.shape),
                    rng.normal(0.25, 0.05, truth.shape)).clip(0, 1)
    image = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    model, stats = fit_threshold(_crops(image), 2, "brightness", {}, [], 100_000, 0)
    assert 0.4 < stats["thresholds"][0] < 0.6  # the valley between the modes at 0.25, 0.75
    pred = _labels(model, image)
    expected = (grey.astype(np.float32) > stats["thresholds"][0]).astype(np.int64)
    np.testing.assert_array_equal(pred, expected)  # exactly Otsu's `value > t`
    assert (pred == truth).mean() > 0.99
    assert stats["class_shares"][1] == pytest.approx(0.3, abs=0.02)


def test_three_level_otsu_orders_classes_by_the_index():
    grey = np.repeat(np.array([0.1, 0.5, 0.9], dtype=np.float32), 300)
    image = np.repeat(grey.reshape(30, 30)[..., None], 3, axis=2)
    model, stats = fit_threshold(_crops(image), 3, "brightness", {}, [], 10_000, 0)
    assert np.unique(_labels(model, image)[np.isclose(image[..., 0], 0.9)]).tolist() == [2]
    assert np.unique(_labels(model, image)[np.isclose(image[..., 0], 0.1)]).tolist() == [0]


def test_indices_are_ndvi_and_excess_green():
    x = np.array([0.6, 0.2, 0.1], dtype=np.float32).reshape(1, 3, 1, 1)  # NIR, red, green
    ndvi = pixel_index(x, "ndvi", {"nir": 0, "red": 1})
    assert ndvi.item() == pytest.approx((0.6 - 0.2) / 0.8)
    rgb = np.array([0.2, 0.6, 0.2], dtype=np.float32).reshape(1, 3, 1, 1)
    assert pixel_index(rgb, "exg", {}).item() == pytest.approx(2 * 0.6 - 0.4)
    assert pixel_index(rgb, "brightness", {}).item() == pytest.approx(1 / 3)


def test_region_growing_recovers_noisy_pieces():
    image, truth = _pieces()
    regions = grow_regions(image, RegionParams())
    # every region lies inside one piece (the island included), up to a corner pixel the
    # 3x3 median rounds off
    majority = sum(np.bincount(truth[regions == r]).max() for r in np.unique(regions))
    assert majority / truth.size > 0.998
    model, _ = fit_regions(_crops(image), 3, "region", RegionParams(), 50, 0, n_init=3)
    assert _accuracy(_labels(model, image), truth) > 0.995
    # the same classifier labels another noisy draw of the scene just as well
    other, truth2 = _pieces(seed=5)
    assert _accuracy(_labels(model, other), truth2) > 0.995


def test_region_growing_tolerance_separates_a_seedless_small_object():
    image, truth = _pieces(noise=0.01)
    image[70:76, 20:26] = COLOURS[1]  # 6x6 object inside one seed cell of the green piece
    regions = grow_regions(image, RegionParams(seed_spacing=32))
    own = regions == regions[72, 22]
    assert own[70:76, 20:26].sum() >= 32  # all of it but corners the median rounds off
    assert own.sum() == own[70:76, 20:26].sum()  # and nothing else
    coarse = grow_regions(image, RegionParams(seed_spacing=32, tolerance=2.0))
    assert (coarse == coarse[72, 22]).sum() > 100  # the control: no tolerance, no region


def _shapes(size: int = 128):
    """Sharp-edged shapes (a square, a disk, a bar) on a background, little noise."""
    truth = np.zeros((size, size), dtype=np.int64)
    truth[15:50, 15:50] = 1
    yy, xx = np.mgrid[:size, :size]
    truth[(yy - 85) ** 2 + (xx - 80) ** 2 < 22**2] = 2
    truth[100:115, 10:60] = 1
    rng = np.random.default_rng(1)
    image = COLOURS[[1, 2, 0]][truth] + rng.normal(0, 0.01, (size, size, 3))
    return np.clip(image, 0, 1).astype(np.float32), truth


def test_edge_method_closes_the_boundaries_of_shapes():
    from skimage.measure import label

    image, truth = _shapes()
    regions = edge_regions(image, RegionParams())
    for piece in np.unique(label(truth + 1, connectivity=1, background=0))[1:]:
        mask = label(truth + 1, connectivity=1, background=0) == piece
        ids, counts = np.unique(regions[mask], return_counts=True)
        assert counts.max() / mask.sum() > 0.98  # each shape is (almost all) one region
        assert (regions == ids[counts.argmax()]).sum() <= mask.sum() * 1.02  # no leak out
    model, _ = fit_regions(_crops(image), 3, "edge", RegionParams(), 50, 0, n_init=3)
    assert _accuracy(_labels(model, image), truth) > 0.99


@pytest.mark.parametrize("method", ["threshold", "region", "edge"])
def test_model_files_round_trip(tmp_path, method):
    image, _ = _pieces()
    if method == "threshold":
        model, _ = fit_threshold(_crops(image), 3, "exg", {}, [1, 2, 3], 10_000, 0)
    else:
        model, _ = fit_regions(_crops(image), 3, method, RegionParams(tolerance=0.2), 20, 0)
    loaded = load_model(save_model(model, tmp_path / "m", {}))
    assert type(loaded) is type(model) and loaded.method == method
    x = np.ascontiguousarray(image.transpose(2, 0, 1))[None]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.metadata() == model.metadata()


def test_refinement_averages_within_segments():
    probs = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]], dtype=np.float32)
    seg = np.array([[0, 0], [1, 1]])
    out = average_within(probs, seg)
    np.testing.assert_allclose(out[:, 0, 0], [0.5, 0.5])
    np.testing.assert_allclose(out[:, 1, 1], [0.0, 1.0])


def test_refinement_removes_speckle_and_keeps_small_objects():
    """A per-pixel threshold on a noisy two-tone image speckles; averaging within superpixels
    removes most of it, and a 6x6 object (above the sieve's 16 px) keeps its label."""
    rng = np.random.default_rng(0)
    truth = np.zeros((96, 96), dtype=np.int64)
    truth[:, 48:] = 1
    truth[20:26, 20:26] = 1  # the small object
    grey = np.where(truth == 1, 0.62, 0.38) + rng.normal(0, 0.1, truth.shape)
    image = np.repeat(grey.clip(0, 1)[..., None], 3, axis=2).astype(np.float32)
    model, _ = fit_threshold(_crops(image), 2, "brightness", {}, [], 100_000, 0)
    plain = _labels(model, image)
    refined = _labels(RegionRefined(model, pixels=64), image)
    err_plain, err_refined = (plain != truth).mean(), (refined != truth).mean()
    assert err_plain > 0.1  # the speckle is there
    assert err_refined < err_plain / 3
    assert (refined[20:26, 20:26] == 1).mean() > 0.8


def test_refinement_from_a_sample_of_pixels_weighs_only_the_sample():
    probs = np.array([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]], dtype=np.float32)  # (2, 1, 3)
    seg = np.zeros((1, 3), dtype=np.int64)
    mask = np.array([[True, False, True]])
    np.testing.assert_allclose(average_within(probs, seg, mask)[:, 0, 1], [1.0, 0.0])


def test_superpixels_in_strips_are_each_strips_own_superpixels():
    """A tile's superpixels come from its horizontal strips, each on its own (in threads):
    exactly what SLIC gives each strip alone, numbered on, and none crosses a strip's edge."""
    rng = np.random.default_rng(0)
    image = rng.random((60, 50, 3)).astype(np.float32)
    image[20:45, 10:30] = 0.9  # an object across the strips' edge at row 30
    seg = superpixels(image, 64, strips=2)
    top, bottom = superpixels(image[:30], 64), superpixels(image[30:], 64)
    np.testing.assert_array_equal(seg[:30], top)
    np.testing.assert_array_equal(seg[30:], bottom + top.max() + 1)
    assert not set(np.unique(seg[:30])) & set(np.unique(seg[30:]))
    np.testing.assert_array_equal(superpixels(image, 64, strips=2), seg)  # deterministic
    np.testing.assert_array_equal(superpixels(image, 64, strips=1), superpixels(image, 64))
    assert SLIC_STRIPS == 2


def test_the_sample_lattice_covers_every_superpixel():
    seg = np.zeros((9, 9), dtype=np.int64)
    seg[1, 1] = 1  # one pixel, off the stride-2 lattice
    seg[5:7, 5:7] = 2  # 2x2: holds the lattice pixel (6, 6)
    mask = sample_mask(seg, 2)
    assert mask[::2, ::2].all()
    assert mask[1, 1]  # the superpixel the lattice misses is taken whole
    assert mask[6, 6] and not mask[5, 5] and not mask[5, 6]
    assert mask.sum() == 25 + 1


def test_refined_classifier_from_a_pixel_lattice_keeps_the_full_refinement(one_torch_thread):
    """The classifier's superpixel means from the default lattice (every 4th pixel): the
    labels of the means over every pixel, but for a few pixels where two classes are close."""
    import torch

    from pipeline.config.classifier import ClassifierConfig
    from pipeline.fit.samples_fit import train_head
    from pipeline.models.classifier import SampleClassifier

    rng = np.random.default_rng(0)
    truth = np.zeros((64, 64), dtype=np.int64)
    truth[:, 32:] = 1
    truth[10:30, 8:24] = 2
    colours = np.array([[0.3, 0.5, 0.3], [0.6, 0.6, 0.6], [0.7, 0.3, 0.2]])
    image = (colours[truth] + rng.normal(0, 0.08, (64, 64, 3))).clip(0, 1).astype(np.float32)
    names = ["grass", "road", "roof"]
    probe = SampleClassifier(None, None, "linear", {}, names, [(0, 0, 0)] * 3, [2])
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    f = probe.pixel_features(x)[0].reshape(probe.feature_dim, -1).T.numpy()
    pick = rng.choice(f.shape[0], 300, replace=False)
    model = SampleClassifier(None, None, "trees",
                             train_head(f[pick], truth.ravel()[pick], 3, ClassifierConfig()),
                             names, [(0, 0, 0)] * 3, [2])
    with torch.no_grad():
        full = RegionRefined(model, 128, sample_stride=1).predict(x)[0]
        sampled = RegionRefined(model, 128).predict(x)[0]
        probs = model.predict(x)[0].numpy()
    seg = superpixels(image, 128, strips=SLIC_STRIPS)  # as RegionRefined cuts a tile
    # the means are those of the lattice's pixels, not of every pixel
    mask = sample_mask(seg, SAMPLE_STRIDE)
    assert SAMPLE_STRIDE == 4 and mask.mean() < 0.1
    np.testing.assert_allclose(sampled, average_within(probs, seg, mask), atol=1e-6)
    assert (full.argmax(0) == truth).mean() > 0.95
    assert (sampled.argmax(0) == full.argmax(0)).mean() > 0.99
