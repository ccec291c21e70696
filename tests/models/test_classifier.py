"""The few-labels classifier model: tree ensembles as plain arrays that predict exactly as
scikit-learn does, the linear head, its model files (weights travel embedded) and the
per-pixel features it classifies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config.classifier import ClassifierConfig
from pipeline.errors import InputError
from pipeline.fit.samples_fit import train_head
from pipeline.models.backbone import build_backbone, describe_backbone
from pipeline.models.classifier import SampleClassifier, local_statistics
from pipeline.models.forest import forest_arrays, predict_forest
from pipeline.models.local_stats import band_features
from pipeline.models.store import load_model, save_model
from tests.conftest import TINY_VIT

NAME = "vit_small_patch8_224.dino"
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random features whose classes overlap (so the trees' leaves are not all pure)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(0, 1, (n, d)) + y[:, None] * 0.7
    return x.astype(np.float32), y


def _images(n=2, h=32, w=40, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_backbone():
    net, prov = build_backbone(NAME, "random", TINY_VIT, seed=0)
    return net, describe_backbone(NAME, TINY_VIT, prov, net)


# ---- the trees as arrays


@pytest.mark.parametrize("max_depth", [None, 4])
def test_forest_arrays_predict_what_scikit_learn_predicts(max_depth):
    from sklearn.ensemble import ExtraTreesClassifier

    x, y = _blobs(400, 6, 4, seed=0)
    est = ExtraTreesClassifier(15, max_depth=max_depth, random_state=0, n_jobs=1).fit(x, y)
    test = np.random.default_rng(1).normal(0.5, 1.5, (3000, 6)).astype(np.float32)
    arrays = forest_arrays(est.estimators_)
    got = predict_forest(arrays, test)
    assert got.shape == (3000, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, est.predict_proba(test), atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-6)
    assert arrays["forest.roots"].shape == (15,)  # one root per tree
    leaves = arrays["forest.feature"] < 0
    assert (arrays["forest.left"][leaves] == -1).all()
    assert (arrays["forest.left"][~leaves] > 0).all()  # absolute node indices


def test_a_class_absent_from_a_fit_keeps_its_column_with_zero_probability():
    """The hold-out fit may lack a class: its column stays in place, zero everywhere, and the
    other columns are scikit-learn's probabilities."""
    from sklearn.ensemble import ExtraTreesClassifier

    x, y = _blobs(300, 5, 3, seed=2)
    y[y == 1] = 2  # classes 0 and 2 only, of 3
    cfg = ClassifierConfig(trees=12, seed=3)
    head = train_head(x, y, 3, cfg)
    assert tuple(head["forest.value"].shape[1:]) == (3,)
    model = SampleClassifier(None, None, "trees", head, ["a", "b", "c"], COLORS, [])
    test = np.random.default_rng(4).normal(0.7, 1.5, (500, 5)).astype(np.float32)
    p = model.classify(torch.from_numpy(test)).numpy()
    ref = ExtraTreesClassifier(12, random_state=3, n_jobs=1).fit(x, y).predict_proba(test)
    assert (p[:, 1] == 0).all()
    np.testing.assert_allclose(p[:, [0, 2]], ref, atol=1e-6)


@pytest.mark.parametrize("classes", [[0, 1, 2], [0, 1], [0, 2]],
                         ids=["three classes", "binary", "a class absent"])
def test_linear_head_gives_scikit_learns_logistic_probabilities(classes):
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(300, 5, 3, seed=5)
    keep = np.isin(y, classes)
    x, y = x[keep], y[keep]
    cfg = ClassifierConfig(head="linear", linear_c=0.5)
    head = train_head(x, y, 3, cfg)
    model = SampleClassifier(None, None, "linear", head, ["a", "b", "c"], COLORS, [])
    test = np.random.default_rng(6).normal(0.7, 1.5, (400, 5)).astype(np.float32)
    p = model.classify(torch.from_numpy(test)).numpy()
    mean, std = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=0.5, max_iter=5000).fit((x - mean) / std, y)
    np.testing.assert_allclose(p[:, classes], ref.predict_proba((test - mean) / std), atol=1e-4)
    absent = [k for k in range(3) if k not in classes]
    assert (p[:, absent] < 1e-6).all()


# ---- model files


def _fitted(head: str, backbone=None, radii=(2, 4)) -> SampleClassifier:
    """A classifier with a head trained on its own features of random images."""
    net, info = backbone if backbone is not None else (None, None)
    names = ["roof", "road", "tree"]
    probe = SampleClassifier(net, info, "linear", {}, names, COLORS, list(radii))
    f = probe.pixel_features(_images(1, 32, 32, seed=9))[0]
    x = f.reshape(f.shape[0], -1).T.numpy()
    y = np.repeat(np.arange(3), -(-len(x) // 3))[: len(x)]
    cfg = ClassifierConfig(head=head, trees=8)
    return SampleClassifier(net, info, head, train_head(x, y, 3, cfg), names, COLORS,
                            list(radii))


@pytest.mark.parametrize("head", ["trees", "linear"])
@pytest.mark.parametrize("with_backbone", [True, False], ids=["backbone", "no backbone"])
def test_save_load_round_trip_gives_identical_probabilities(head, with_backbone, tiny_backbone,
                                                            tmp_path, one_torch_thread):
    model = _fitted(head, tiny_backbone if with_backbone else None)
    path = save_model(model, tmp_path / "m", {"accuracy": None})
    again = load_model(path)
    assert isinstance(again, SampleClassifier) and again.head == head
    assert again.class_names == ["roof", "road", "tree"] and again.colors == COLORS
    x = _images(2, 40, 48, seed=1)
    with torch.no_grad():
        p = model.predict(x)
        np.testing.assert_array_equal(again.predict(x).numpy(), p.numpy())
    assert p.shape == (2, 3, 40, 48)
    meta = json.loads((path / "model.json").read_text())
    assert meta["method"] == "classifier"
    assert meta["params"]["head"] == head and meta["params"]["local_radii"] == [2, 4]
    assert meta["params"]["feature_dim"] == model.feature_dim
    tensors = load_file(path / "model.safetensors")
    embedded = [k for k in tensors if k.startswith("backbone.")]
    if with_backbone:  # random weights can be rebuilt nowhere else: they travel embedded
        assert meta["params"]["backbone_embedded"] is True and embedded
        assert meta["backbone"]["weights"]["source"] == "random"
    else:
        assert meta["params"]["backbone_features"] is False and not embedded
        assert "backbone" not in meta


def test_trees_that_do_not_match_the_class_names_are_refused(tmp_path):
    path = save_model(_fitted("trees"), tmp_path / "m", {})
    meta = json.loads((path / "model.json").read_text())
    meta["class_names"].append("extra")
    meta["colors"].append([1, 2, 3])
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not fit its description.*classes differ") as e:
        load_model(path)
    assert e.value.path == str(path)


# ---- per-pixel features


@pytest.mark.parametrize("radii", [[], [1, 3]])
def test_pixel_features_are_bands_local_statistics_and_backbone_features(radii, tiny_backbone,
                                                                         one_torch_thread):
    net, info = tiny_backbone
    x = _images(2, 32, 40)
    with torch.no_grad():
        plain = SampleClassifier(None, None, "linear", {}, ["a", "b"], COLORS[:2], radii)
        full = SampleClassifier(net, info, "linear", {}, ["a", "b"], COLORS[:2], radii)
        fp, ff = plain.pixel_features(x), full.pixel_features(x)
    assert plain.feature_dim == 3 + 6 * len(radii)
    assert full.feature_dim == plain.feature_dim + 64  # the tiny ViT's embed_dim
    assert fp.shape == (2, plain.feature_dim, 32, 40) and fp.dtype == torch.float32
    assert ff.shape == (2, full.feature_dim, 32, 40)
    torch.testing.assert_close(fp[:, :3], x)  # the bands come first, as they are
    torch.testing.assert_close(ff[:, :plain.feature_dim], fp)
    norms = ff[:, plain.feature_dim:].norm(dim=1)  # unit patch features, interpolated
    assert (norms <= 1 + 1e-5).all() and (norms > 0.3).all()


@pytest.mark.parametrize("head", ["trees", "linear"])
def test_probabilities_sum_to_one_at_every_pixel(head, tiny_backbone, one_torch_thread):
    model = _fitted(head, tiny_backbone)
    with torch.no_grad():
        p = model.predict(_images(2, 24, 40, seed=3))
    assert p.shape == (2, 3, 24, 40)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(1), torch.ones(2, 24, 40))


def test_local_statistics_of_a_constant_image_are_its_value_and_zero():
    img = torch.full((1, 3, 12, 10), 0.25)
    img[:, 1] = 0.5
    img[:, 2] = 1.0
    radii = [1, 4, 20]  # 20: the window is wider than the image (edges replicated)
    stats = local_statistics(img, radii)
    assert stats.shape == (1, 2 * 3 * len(radii), 12, 10)
    for i in range(len(radii)):
        mean, std = stats[:, 6 * i:6 * i + 3], stats[:, 6 * i + 3:6 * i + 6]
        torch.testing.assert_close(mean, img)
        torch.testing.assert_close(std, torch.zeros_like(img), atol=1e-3, rtol=0)
    assert local_statistics(img, []).shape == (1, 0, 12, 10)


def test_local_statistics_measure_the_texture_inside_the_window():
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2  # 0/1 checkerboard
    img = checker.float().expand(1, 3, 8, 8).contiguous()
    stats = local_statistics(img, [1])
    centre = stats[0, :, 2:6, 2:6]  # a 3x3 window holds 5 of one colour, 4 of the other
    mean = torch.where(checker[2:6, 2:6] == 1, 5 / 9, 4 / 9).float()
    torch.testing.assert_close(centre[0], mean)
    torch.testing.assert_close(centre[3], torch.full((4, 4), (20 / 81) ** 0.5), atol=1e-4,
                               rtol=0)


def test_local_statistics_are_the_window_means_and_deviations_of_the_reflected_image():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.random((2, 3, 20, 17), dtype=np.float32))
    radii = [1, 2, 8]
    stats = local_statistics(img, radii)
    for i, r in enumerate(radii):  # the definition, the slow way: windows of the padded image
        pad = torch.nn.functional.pad(img.double(), (r, r, r, r), mode="reflect")
        win = pad.unfold(2, 2 * r + 1, 1).unfold(3, 2 * r + 1, 1)  # (N, C, H, W, k, k)
        torch.testing.assert_close(stats[:, 6 * i:6 * i + 3], win.mean((-2, -1)).float())
        torch.testing.assert_close(stats[:, 6 * i + 3:6 * i + 6],
                                   win.std((-2, -1), unbiased=False).float(), atol=1e-5,
                                   rtol=1e-4)


def test_band_features_at_a_mask_are_exactly_those_of_the_whole_image():
    """What segment computes at the sampled pixels is what fit computes everywhere."""
    rng = np.random.default_rng(1)
    img = rng.random((3, 30, 41), dtype=np.float32)
    mask = rng.random((30, 41)) < 0.1
    full = band_features(img, [2, 4, 8])
    at = band_features(img, [2, 4, 8], mask)
    assert full.shape == (30, 41, 3 + 18) and full.dtype == np.float32
    np.testing.assert_array_equal(at[mask], full[mask])
    assert not at[~mask][:, 3:].any()  # the statistics only where asked
    np.testing.assert_array_equal(full[..., :3], img.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="mask"):
        band_features(img, [2], mask[:10])


# ---- segment's prediction: the trees read the features they test, never the whole stack


@pytest.mark.parametrize("with_backbone", [True, False], ids=["backbone", "no backbone"])
def test_trees_on_the_feature_grid_predict_what_they_predict_on_the_feature_stack(
        with_backbone, tiny_backbone, one_torch_thread):
    model = _fitted("trees", tiny_backbone if with_backbone else None)
    x = _images(2, 40, 56, seed=4)
    with torch.no_grad():
        grid = model.predict(x).numpy()
        f = model.pixel_features(x)
        stack = np.stack([model.classify(fi.reshape(fi.shape[0], -1).T).T.reshape(-1, 40, 56)
                          .numpy() for fi in f])
    # the patch features are interpolated in another order of float operations: a pixel
    # whose feature lies within rounding of a threshold may take the other branch of a tree
    differs = np.abs(grid - stack).max(1) > 1e-5
    assert differs.mean() < 0.005
    assert (grid.argmax(1) == stack.argmax(1)).mean() > 0.995


def test_sampled_prediction_is_the_full_prediction_inside_the_mask_and_zero_outside(
        tiny_backbone, one_torch_thread):
    model = _fitted("trees", tiny_backbone)
    x = _images(1, 32, 40, seed=5)
    mask = np.zeros((32, 40), dtype=bool)
    mask[::2, ::3] = True
    mask[10:14, 20:30] = True
    with torch.no_grad():
        full, part = model.predict(x)[0].numpy(), model.predict_sampled(x, [mask])[0].numpy()
    np.testing.assert_array_equal(part[:, mask], full[:, mask])
    assert (part[:, ~mask] == 0).all()
