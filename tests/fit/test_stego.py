"""STEGO: the head learns, kNN pairs, the feature cache, model files, import, seamless use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from pipeline.config import FitConfig, StegoConfig
from pipeline.fit.feature_cache import build_feature_cache, load_cache
from pipeline.fit.knn import knn_indices
from pipeline.fit.stego_train import train_stego
from pipeline.models.kmeans import spherical_kmeans
from pipeline.models.pos_embed import interpolation
from pipeline.models.store import load_model, save_model
from tests.conftest import TINY_VIT


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest)."""


def hungarian_accuracy(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Best one-to-one matching of clusters to classes (as STEGO evaluates)."""
    cm = np.zeros((k, k))
    np.add.at(cm, (pred.ravel(), truth.ravel()), 1)
    rows, cols = linear_sum_assignment(cm, maximize=True)
    return cm[rows, cols].sum() / cm.sum()


def planted_features(n=96, c=32, h=12, k=3, style=2.0, seed=0):
    """Patches carry a class vector (unit norm) buried under a stronger per-image style vector.

    Styles come from k discrete directions, so k-means on raw features finds the styles, not
    the classes. Each image holds two classes split by a straight boundary.
    """
    g = torch.Generator().manual_seed(seed)
    classes = F.normalize(torch.randn(k, c, generator=g), dim=1)
    labels = torch.zeros(n, h, h, dtype=torch.long)
    for i in range(n):
        a, b = torch.randperm(k, generator=g)[:2]
        cut = int(torch.randint(3, h - 3, (1,), generator=g))
        labels[i] = a
        if i % 2:
            labels[i, :, cut:] = b
        else:
            labels[i, cut:, :] = b
    styles = F.normalize(torch.randn(k, c, generator=g), dim=1) * style
    per_image = styles[torch.randint(k, (n,), generator=g)]
    noise = torch.randn(n, c, h, h, generator=g) * 0.1
    feats = classes[labels].permute(0, 3, 1, 2) + per_image[:, :, None, None] + noise
    return feats, labels, k


def test_the_head_learns_planted_classes_that_kmeans_on_raw_features_misses():
    feats, labels, k = planted_features()
    x = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    centroids = spherical_kmeans(x, k, 50, seed=0)
    raw = (F.normalize(x, dim=1) @ centroids.T).argmax(1).numpy()
    raw_acc = hungarian_accuracy(raw, labels.numpy(), k)
    # only the random-pair term, its shift set between the synthetic data's same-class and
    # different-class correlations (STEGO's shifts are per-dataset hyperparameters)
    cfg = StegoConfig(dim=16, steps=200, batch_size=16, feature_samples=8, self_weight=0.0,
                      knn_weight=0.0, rand_weight=1.0, rand_shift=0.35, log_every=50)
    result = train_stego(feats, knn_indices(feats.mean((2, 3)), 7), k, cfg, seed=0)
    with torch.no_grad():
        pred = result.probe.cosine(result.head(feats)).argmax(1).numpy()
    stego_acc = hungarian_accuracy(pred, labels.numpy(), k)
    assert raw_acc < 0.5
    assert stego_acc > 0.9
    assert [r["step"] for r in result.history] == [50, 100, 150, 200]


def test_training_is_reproducible_for_a_seed():
    feats, _, k = planted_features(n=32)
    knn = knn_indices(feats.mean((2, 3)), 3)
    cfg = StegoConfig(dim=8, steps=5, batch_size=4, log_every=5)
    a = train_stego(feats, knn, k, cfg, seed=3)
    b = train_stego(feats, knn, k, cfg, seed=3)
    torch.testing.assert_close(a.head.linear.weight, b.head.linear.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.probe.clusters, b.probe.clusters, rtol=0, atol=0)


def test_knn_is_exact_top_k_cosine_without_self_in_bounded_chunks():
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(300, 16, generator=g)
    got = knn_indices(pooled, 5, chunk=7)
    x = F.normalize(pooled, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-2)
    expected = sim.topk(5, dim=1).indices
    assert torch.equal(got, expected)
    assert not (got == torch.arange(300)[:, None]).any()


def test_the_feature_cache_runs_the_backbone_once_and_resumes(tmp_path):
    calls: list[tuple[int, int]] = []

    def compute(i0, i1):
        calls.append((i0, i1))
        return torch.arange(i0, i1, dtype=torch.float32)[:, None, None, None].expand(-1, 4, 2, 2)

    path = tmp_path / "features.zarr"
    g = build_feature_cache(path, "key-a", 10, (4, 2, 2), compute, batch_size=4)
    assert calls == [(0, 4), (4, 8), (8, 10)]
    cache = load_cache(g)
    assert cache["features"].dtype == torch.float16 and cache["features"][9, 0, 0, 0] == 9
    torch.testing.assert_close(cache["pooled"][:, 0], torch.arange(10.0))
    calls.clear()
    build_feature_cache(path, "key-a", 10, (4, 2, 2), compute, batch_size=4)
    assert calls == []  # complete cache with the same key: nothing recomputed
    g.attrs["done"] = 4  # as if killed after the first batch
    build_feature_cache(path, "key-a", 10, (4, 2, 2), compute, batch_size=4)
    assert calls == [(4, 8), (8, 10)]
    calls.clear()
    build_feature_cache(path, "key-b", 10, (4, 2, 2), compute, batch_size=4)
    assert calls == [(0, 4), (4, 8), (8, 10)]  # another backbone or crops: rebuilt


@pytest.fixture(scope="module")
def stego_model(demo_scene, tmp_path_factory):
    from pipeline.fit.methods import fit_stego
    from pipeline.io.raster import compute_scaling, open_raster_info

    info = open_raster_info(demo_scene[0])
    rasters = [(info, compute_scaling(info))]
    fit_cfg = FitConfig(crops=12, crop_size=64, seed=0)
    cfg = StegoConfig(dim=8, steps=10, batch_size=4, log_every=5, input_scale=0.5)
    cache = tmp_path_factory.mktemp("cache")
    model, stats = fit_stego(rasters, 3, "vit_small_patch8_224.dino", "random", TINY_VIT,
                             fit_cfg, cfg, cache, log=lambda _: None)
    assert stats["crops_used"] == 12 and stats["stage_seconds"]["train"] > 0
    return save_model(model, tmp_path_factory.mktemp("stego"), {})


def test_fit_save_load_gives_identical_scores(stego_model, tmp_path):
    model = load_model(stego_model)
    assert model.method == "stego" and model.patch_size == 16  # patch 8 at input scale 0.5
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    p = model.predict(x)
    assert p.shape == (2, 3, 64, 48)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 64, 48))
    again = load_model(save_model(model, tmp_path / "copy", {}))
    torch.testing.assert_close(again.predict(x), p, rtol=0, atol=0)


def test_stego_blocks_are_seamless(stego_model, demo_scene):
    from pipeline.io.raster import open_raster_info
    from pipeline.tiling import TileGrid
    from tests.segment.test_inference import _segment

    model = load_model(stego_model)
    info = open_raster_info(demo_scene[0])
    one, _ = _segment(model, info, TileGrid(64, 16), 512)
    many, _ = _segment(model, info, TileGrid(64, 16), 96)
    np.testing.assert_array_equal(many, one)


def test_an_official_checkpoint_imports_from_the_cli(tmp_path, capsys):
    from flows.cli import main
    from tests.models.test_stego_checkpoint import _hparams, _lightning_ckpt, _official_state

    state = _official_state()
    ckpt = tmp_path / "potsdam.ckpt"
    torch.save(_lightning_ckpt(state, _hparams()), ckpt)
    code = main(["import-checkpoint", str(ckpt), "--out", str(tmp_path / "m"),
                 "--backbone-arg", "depth=2", "--backbone-arg", "embed_dim=64",
                 "--backbone-arg", "num_heads=2", "--input-scale", "0.5"])
    assert code == 0, capsys.readouterr().err
    model = load_model(tmp_path / "m")
    torch.testing.assert_close(model.probe.clusters, state["cluster_probe.clusters"])
    torch.testing.assert_close(model.head.linear.weight, state["net.cluster1.0.weight"])
    torch.testing.assert_close(model.backbone.pos_embed, state["net.model.pos_embed"])
    assert model.linear_probe is not None and model.input_scale == 0.5
    # DINO's position-embedding interpolation, as STEGO's code, also after reloading
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["backbone"]["pos_embed"] == "dino"
    assert interpolation(model.backbone) == "dino"
    x = torch.rand(1, 3, 64, 64)
    assert model.predict(x).shape == (1, state["cluster_probe.clusters"].shape[0], 64, 64)


def test_a_malicious_checkpoint_is_refused_from_the_cli(tmp_path, capsys):
    import pickle

    from flows.cli import main

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": {}, "hyper_parameters": Evil()}))
    assert main(["import-checkpoint", str(ckpt), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ckpt}: unsafe checkpoint") and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "m").exists()


def test_labels_train_a_linear_probe_for_evaluation_only(demo_scene, tmp_path):
    from pipeline.fit.methods import fit_stego
    from pipeline.io.raster import compute_scaling, open_raster_info

    info = open_raster_info(demo_scene[0])
    rasters = [(info, compute_scaling(info))]
    cfg = StegoConfig(dim=8, steps=40, batch_size=4, log_every=20)
    model, stats = fit_stego(rasters, 3, "vit_small_patch8_224.dino", "random", TINY_VIT,
                             FitConfig(crops=8, crop_size=64), cfg, tmp_path,
                             log=lambda _: None, label_paths=[str(demo_scene[1])])
    assert model.linear_probe is not None and model.linear_probe.out_channels == 5  # 5 classes
    history = stats["history"]
    assert history[-1]["linear"] < history[0]["linear"] + 1e-6
    model.use_linear_probe = True
    probs = model.predict(torch.rand(1, 3, 64, 64))
    assert probs.shape == (1, 5, 64, 64)
    model.use_linear_probe = False
    assert model.predict(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_crf_on_each_tile_keeps_blocks_seamless_and_changes_labels(stego_model, demo_scene):
    from pipeline.io.raster import open_raster_info
    from pipeline.tiling import TileGrid
    from tests.segment.test_inference import _segment

    model = load_model(stego_model)
    info = open_raster_info(demo_scene[0])
    grid = TileGrid(64, 16)
    plain, _ = _segment(model, info, grid, 512)
    model.crf = True
    one, _ = _segment(model, info, grid, 512)
    many, _ = _segment(model, info, grid, 96)
    np.testing.assert_array_equal(many, one)
    assert (one != plain).any()


def test_code_coherence_reveals_collapsed_codes():
    feats, _, k = planted_features(n=32)
    knn = knn_indices(feats.mean((2, 3)), 3)
    cfg = StegoConfig(dim=8, steps=20, batch_size=8, log_every=10, self_weight=0.0,
                      knn_weight=0.0, rand_weight=1.0, rand_shift=0.35)
    healthy = train_stego(feats, knn, k, cfg, seed=0)
    assert sum(healthy.cluster_shares) == pytest.approx(1.0) and healthy.code_coherence < 0.9
    same = torch.ones(32, 32, 12, 12) + 1e-4 * torch.randn(32, 32, 12, 12)  # features all alike
    collapsed = train_stego(same, knn, k, StegoConfig(dim=8, steps=20, batch_size=8,
                                                      log_every=10), seed=0)
    assert collapsed.code_coherence > 0.98


def test_flip_averaging_makes_the_prediction_mirror_symmetric_and_survives_a_reload(
        stego_model, demo_scene, tmp_path):
    """STEGO's evaluation averages the codes of an image and its mirror: the probabilities
    of a mirrored tile are then exactly the mirrored probabilities (a random-weight ViT is
    not mirror-symmetric by itself)."""
    from pipeline.io.raster import compute_scaling, open_raster_info, read_window
    from pipeline.models.store import save_model

    model = load_model(stego_model)
    info = open_raster_info(demo_scene[0])
    x = torch.from_numpy(read_window(info, compute_scaling(info), 0, 0, 64, 96)[0])[None]
    with torch.no_grad():
        plain = model.predict(x)
        assert not torch.allclose(model.predict(x.flip(-1)).flip(-1), plain, atol=1e-4)
        model.flip = True
        both = model.predict(x)
        torch.testing.assert_close(model.predict(x.flip(-1)).flip(-1), both, atol=1e-5,
                                   rtol=0)
    again = load_model(save_model(model, tmp_path / "flipped", {}))
    assert again.flip is True and load_model(stego_model).flip is False


def test_model_flip_from_the_command_line_reaches_the_blocks(stego_model, demo_scene,
                                                              prefect_harness, tmp_path):
    from flows.cli import main

    cfg = tmp_path / "small.yaml"
    cfg.write_text("tiling: {tile_size: 64, overlap: 16, block_size: 192, chunk_size: 64, "
                   "batch_size: 2}\n"
                   "dask: {workers: 1, processes: false}\nvectorize: {enabled: false}\n")
    labels = {}
    for flip in ("false", "true"):
        out = tmp_path / flip
        assert main(["segment", str(demo_scene[0]), "--model", str(stego_model), "--out",
                     str(out), "--config", str(cfg), "--set", f"model.flip={flip}", "-q"]) == 0
        with rasterio.open(out / "labels.tif") as ds:
            labels[flip] = ds.read(1)
        assert json.loads((out / "run.json").read_text())["config"]["model"]["flip"] is \
            (flip == "true")
    assert (labels["true"] != labels["false"]).any()
