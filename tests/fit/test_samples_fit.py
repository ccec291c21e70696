"""Fitting the few-labels classifier: the hold-out of whole sample features, texture that the
default features see and the bands alone cannot, and labelled pixels' features taken from the
very tile that `segment` will blend most at that pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pipeline.config.classifier import ClassifierConfig
from pipeline.fit.samples_fit import holdout_mask, sample_features, train_head
from pipeline.io.raster import compute_scaling, open_raster_info, read_window
from pipeline.io.samples import ClassTable, RasterSamples, SampleSet
from pipeline.models.backbone import build_backbone, describe_backbone
from pipeline.models.classifier import SampleClassifier
from pipeline.tiling import blend_weights_1d, grid_for_raster
from tests.conftest import TINY_VIT, write_raster

NAME = "vit_small_patch8_224.dino"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest)."""


@pytest.fixture(scope="module")
def tiny_backbone():
    net, prov = build_backbone(NAME, "random", TINY_VIT, seed=0)
    return net, describe_backbone(NAME, TINY_VIT, prov, net)


# ---- the hold-out


def planted_groups(seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Pixels of sample features (groups): class 0 has 10 groups, class 1 has 4, class 2 has
    one; every group has 20 to 60 pixels, listed in shuffled order."""
    rng = np.random.default_rng(seed)
    n_groups = {0: 10, 1: 4, 2: 1}
    classes, groups, gid = [], [], 0
    for k, n in n_groups.items():
        for _ in range(n):
            size = int(rng.integers(20, 61))
            classes += [k] * size
            groups += [gid] * size
            gid += 1
    order = rng.permutation(len(classes))
    return np.array(classes)[order], np.array(groups)[order], n_groups


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("share", [0.2, 0.5, 0.9])
def test_holdout_takes_whole_groups_per_class_and_never_a_class_only_group(seed, share):
    classes, groups, n_groups = planted_groups(seed)
    held = holdout_mask(classes, groups, share, seed)
    for g in np.unique(groups):  # never a group on both sides
        assert len(np.unique(held[groups == g])) == 1
    for k, n in n_groups.items():
        held_groups = np.unique(groups[held & (classes == k)])
        if n == 1:
            assert len(held_groups) == 0  # the only group of a class is never held out
        else:  # its share of the groups, at least one, never all
            assert len(held_groups) == min(n - 1, max(1, round(share * n)))
        assert (~held & (classes == k)).any()  # every class keeps training pixels
    np.testing.assert_array_equal(holdout_mask(classes, groups, share, seed), held)  # seeded


def test_holdout_share_zero_holds_out_nothing():
    classes, groups, _ = planted_groups()
    assert not holdout_mask(classes, groups, 0.0, 0).any()


def test_holdout_differs_between_seeds():
    classes, groups, _ = planted_groups()
    masks = {holdout_mask(classes, groups, 0.3, s).tobytes() for s in range(6)}
    assert len(masks) > 1


# ---- texture: what the default features add to the bands


def texture_scene(size: int = 128, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Grey image (1, 3, size, size) whose halves share the same distribution of pixel values
    in [0.2, 0.8] (mean 0.5): the left half varies smoothly, the right half in independent
    2 x 2 px blocks. Truth: 0 left, 1 right."""
    rng = np.random.default_rng(seed)
    half = size // 2
    smooth = gaussian_filter(rng.normal(size=(size, half)), 10)
    left = np.empty(smooth.size)
    left[np.argsort(smooth, axis=None)] = np.linspace(0.2, 0.8, smooth.size)
    blocks = rng.permutation(np.linspace(0.2, 0.8, size * half // 4)).reshape(size // 2, half // 2)
    right = np.kron(blocks, np.ones((2, 2)))
    grey = np.concatenate([left.reshape(size, half), right], axis=1).astype(np.float32)
    truth = np.zeros((size, size), dtype=np.int64)
    truth[:, half:] = 1
    return torch.from_numpy(grey).expand(1, 3, size, size).contiguous(), truth


def _accuracy(model: SampleClassifier, image: torch.Tensor, truth: np.ndarray,
              cfg: ClassifierConfig, train: tuple[np.ndarray, np.ndarray]) -> float:
    """Train the head on the features of the ``train`` pixels, then score every pixel at
    least 10 px from the class boundary that was not a training pixel."""
    rows, cols = train
    with torch.no_grad():
        f = model.pixel_features(image)[0].numpy()
    head = train_head(f[:, rows, cols].T, truth[rows, cols], 2, cfg)
    fitted = SampleClassifier(model.backbone, getattr(model, "backbone_info", None), cfg.head,
                              head, ["smooth", "rough"], [(0, 0, 0), (255, 255, 255)],
                              model.local_radii)
    with torch.no_grad():
        pred = fitted.predict(image)[0].argmax(0).numpy()
    size = truth.shape[1]
    far = np.abs(np.arange(size) - size // 2 + 0.5) >= 10
    score = np.broadcast_to(far, truth.shape).copy()
    score[rows, cols] = False
    return float((pred[score] == truth[score]).mean())


def test_same_colour_different_texture_needs_the_default_features(tiny_backbone):
    image, truth = texture_scene()
    rng = np.random.default_rng(1)
    rows = rng.integers(10, 118, 16)
    cols = np.concatenate([rng.integers(8, 50, 8), rng.integers(78, 120, 8)])  # 8 per class
    assert abs(image[0, 0, :, :64].mean() - image[0, 0, :, 64:].mean()) < 1e-3
    net, info = tiny_backbone

    bands = ClassifierConfig(local_radii=[], backbone_features=False)
    only_rgb = SampleClassifier(None, None, "trees", {}, ["a", "b"], [(0, 0, 0)] * 2, [])
    assert only_rgb.feature_dim == 3
    acc_rgb = _accuracy(only_rgb, image, truth, bands, (rows, cols))

    default = ClassifierConfig()
    assert default.backbone_features and default.local_radii
    full = SampleClassifier(net, info, "trees", {}, ["a", "b"], [(0, 0, 0)] * 2,
                            default.local_radii)
    acc_default = _accuracy(full, image, truth, default, (rows, cols))
    assert 0.35 < acc_rgb < 0.65, acc_rgb  # chance: the bands carry no class information
    assert acc_default > 0.9, acc_default


# ---- features of the labelled pixels: from segment's own tiles


def owner_origins(index: int, grid) -> tuple[int, list[int]]:
    """Along one axis, the origin of the tile that weighs most in segment's blend at
    ``index``, and the origins of all tiles covering it."""
    weights = blend_weights_1d(grid.tile, grid.overlap)
    covering = [grid.tile_origin(k) for k in range(-4, 20)
                if 0 <= index - grid.tile_origin(k) < grid.tile]
    best = max(covering, key=lambda o: weights[index - o])
    return best, covering


@pytest.mark.parametrize("block_size", [96, 512], ids=["many blocks", "one block"])
def test_each_labelled_pixel_gets_the_features_of_the_tile_that_owns_it(
        tmp_path, tiny_backbone, block_size):
    data = np.random.default_rng(0).integers(1, 255, (3, 160, 150), dtype=np.uint8)
    info = open_raster_info(write_raster(tmp_path / "r.tif", data))
    scaling = compute_scaling(info)
    net, binfo = tiny_backbone
    model = SampleClassifier(net, binfo, "linear", {}, ["a", "b"], [(0, 0, 0)] * 2, [2, 8])
    picks = [0, 3, 18, 22, 29, 44, 50, 66, 71, 77, 90, 101, 117, 140, 149]
    rows = np.repeat(picks, len(picks))
    cols = np.tile(picks, len(picks))
    keep = (rows < 160) & (cols < 150)
    rows, cols = rows[keep], cols[keep]
    rs = RasterSamples(info.path, rows, cols, (rows > 80).astype(np.int64),
                       np.arange(len(rows), dtype=np.int64))
    samples = SampleSet(ClassTable(["a", "b"], [None, None], ["a", "b"]), [rs], ["s.gpkg"])
    tile, overlap = 64, 16
    got = sample_features(model, [(info, scaling)], samples, tile, overlap, block_size,
                          batch_size=3, log=lambda _: None)
    assert got.shape == (len(rows), model.feature_dim)

    grid = grid_for_raster(tile, overlap, info.height, info.width, block_size)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def tile_features(ro: int, co: int) -> np.ndarray:
        if (ro, co) not in cache:
            img = read_window(info, scaling, ro, co, tile, tile)[0]
            with torch.no_grad():
                cache[ro, co] = model.pixel_features(torch.from_numpy(img)[None])[0].numpy()
        return cache[ro, co]

    in_overlap = 0
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        (ro, row_tiles), (co, col_tiles) = owner_origins(r, grid), owner_origins(c, grid)
        np.testing.assert_allclose(got[i], tile_features(ro, co)[:, r - ro, c - co],
                                   atol=2e-5, err_msg=f"pixel ({r}, {c})")
        for other in row_tiles:  # other tiles see this pixel too, with other features
            if other != ro:
                in_overlap += 1
                assert not np.allclose(got[i], tile_features(other, co)[:, r - other, c - co],
                                       atol=1e-3)
        for other in col_tiles:
            if other != co:
                assert not np.allclose(got[i], tile_features(ro, other)[:, r - ro, c - other],
                                       atol=1e-3)
    assert in_overlap >= 10
