"""k-means keeps the best of ``n_init`` seeded k-means++ initialisations (scikit-learn's n_init).

One initialisation can stop in a worse local optimum; the pipeline clusters with
``fit.n_init`` starts (default 10) and keeps the partition with the best objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2

from pipeline.config import FitConfig, StegoConfig, build_config, load_config
from pipeline.errors import InputError
from pipeline.fit.knn import knn_indices
from pipeline.fit.methods import fit_pixel_kmeans
from pipeline.fit.stego_train import train_stego
from pipeline.io.crops import Crop
from pipeline.models.kmeans import (
    euclidean_inertia,
    euclidean_kmeans,
    spherical_kmeans,
    spherical_objective,
)

SEEDS = range(50)  # scanned for a seed whose single initialisation fails
SIZES = [300, 50, 50, 50]  # one cluster six times the size of the others


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest)."""


def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated 2-D Gaussian blobs of unequal sizes, and their labels."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    labels = np.repeat(np.arange(4), SIZES)
    return centres[labels] + rng.normal(0.0, 1.0, (len(labels), 2)), labels


def directions() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors scattered around four well-separated 3-D directions, and their labels."""
    g = torch.Generator().manual_seed(0)
    dirs = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]]), dim=1)
    labels = torch.repeat_interleave(torch.arange(4), torch.tensor(SIZES))
    return F.normalize(dirs[labels] + 0.15 * torch.randn(len(labels), 3, generator=g)), labels


def nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, None] - c[None], axis=2).argmin(1)


def closest_direction(x: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    return (F.normalize(x, dim=1) @ F.normalize(c, dim=1).T).argmax(1).numpy()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings split the points the same way, up to renaming clusters."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_euclidean_one_init_can_fail_where_ten_recover_the_planted_blobs():
    x, planted = blobs()
    single = {s: euclidean_kmeans(x, 4, 50, s) for s in range(60)}
    failed = [s for s in SEEDS if not same_partition(nearest(x, single[s]), planted)]
    assert failed, "no seed in 0..49 makes one init fail: the data no longer test n_init"
    seed = failed[0]
    best = euclidean_kmeans(x, 4, 50, seed, n_init=10)
    assert same_partition(nearest(x, best), planted)
    inertia = euclidean_inertia(x, best)
    assert inertia < euclidean_inertia(x, single[seed])
    assert all(inertia <= euclidean_inertia(x, c) * (1 + 1e-9) for c in single.values())
    # exactly the best of the single runs seeded seed, seed + 1, ..., seed + 9
    candidates = [single[seed + i] for i in range(10)]
    np.testing.assert_array_equal(best, min(candidates, key=lambda c: euclidean_inertia(x, c)))


def test_spherical_one_init_can_fail_where_ten_recover_the_planted_directions():
    x, planted = directions()
    single = {s: spherical_kmeans(x, 4, 50, s) for s in range(60)}
    failed = [s for s in SEEDS
              if not same_partition(closest_direction(x, single[s]), planted.numpy())]
    assert failed, "no seed in 0..49 makes one init fail: the data no longer test n_init"
    seed = failed[0]
    best = spherical_kmeans(x, 4, 50, seed, n_init=10)
    assert same_partition(closest_direction(x, best), planted.numpy())
    objective = spherical_objective(x, best)
    assert objective > spherical_objective(x, single[seed])
    assert all(objective >= spherical_objective(x, c) - 1e-4 for c in single.values())
    # exactly the best of the single runs seeded seed, seed + 1, ..., seed + 9
    candidates = [single[seed + i] for i in range(10)]
    assert torch.equal(best, max(candidates, key=lambda c: spherical_objective(x, c)))


def test_one_euclidean_init_is_the_single_scipy_kmeans_plus_plus_run_of_before():
    x, _ = blobs()
    for seed in (0, 1, 2):
        ref, _ = kmeans2(x, 4, iter=50, minit="++", seed=np.random.default_rng(seed))
        ref = ref[np.argsort(np.linalg.norm(ref, axis=1), kind="stable")]
        np.testing.assert_array_equal(euclidean_kmeans(x, 4, 50, seed), ref)
        np.testing.assert_array_equal(euclidean_kmeans(x, 4, 50, seed, n_init=1), ref)


def test_n_init_is_deterministic_for_a_seed_and_never_worse_than_its_first_init():
    x, _ = blobs()
    v, _ = directions()
    for seed in range(10):
        assert torch.equal(spherical_kmeans(v, 4, 50, seed, n_init=1),
                           spherical_kmeans(v, 4, 50, seed))
        five = euclidean_kmeans(x, 4, 50, seed, n_init=5)
        np.testing.assert_array_equal(five, euclidean_kmeans(x, 4, 50, seed, n_init=5))
        assert euclidean_inertia(x, five) <= euclidean_inertia(x, euclidean_kmeans(x, 4, 50, seed))
        five_v = spherical_kmeans(v, 4, 50, seed, n_init=5)
        assert torch.equal(five_v, spherical_kmeans(v, 4, 50, seed, n_init=5))
        assert spherical_objective(v, five_v) >= spherical_objective(
            v, spherical_kmeans(v, 4, 50, seed))


def test_a_given_init_is_one_candidate_so_more_inits_never_do_worse_than_it():
    x, planted = directions()
    g = torch.Generator().manual_seed(1)
    improved = 0
    for seed in range(10):
        crowded = x[torch.randperm(SIZES[0], generator=g)[:4]]  # all starts in the big cluster
        alone = spherical_kmeans(x, 4, 50, seed, init=crowded)
        assert torch.equal(alone, spherical_kmeans(x, 4, 50, seed + 1, init=crowded))
        best = spherical_kmeans(x, 4, 50, seed, init=crowded, n_init=10)
        assert spherical_objective(x, best) >= spherical_objective(x, alone)
        improved += spherical_objective(x, best) > spherical_objective(x, alone) + 1e-3
        # init, then k-means++ starts seeded seed .. seed + 8: the best of them is kept
        candidates = [alone] + [spherical_kmeans(x, 4, 50, seed + i) for i in range(9)]
        assert torch.equal(best, max(candidates, key=lambda c: spherical_objective(x, c)))
    assert improved > 0  # the k-means++ starts are tried as well
    means = torch.stack([x[planted == j].mean(0) for j in range(4)])
    kept = spherical_kmeans(x, 4, 50, 0, init=means, n_init=10)
    assert same_partition(closest_direction(x, kept), planted.numpy())


def test_n_init_below_one_is_refused():
    x, _ = blobs()
    with pytest.raises(ValueError, match="n_init"):
        euclidean_kmeans(x, 4, 50, 0, n_init=0)
    with pytest.raises(ValueError, match="n_init"):
        spherical_kmeans(torch.from_numpy(x), 4, 50, 0, n_init=0)


def test_fit_n_init_defaults_to_ten_and_must_be_at_least_one():
    assert load_config().fit.n_init == 10 == FitConfig().n_init
    assert "best objective" in (FitConfig.model_fields["n_init"].description or "")
    assert build_config({"fit": {"n_init": 3}}).fit.n_init == 3
    with pytest.raises(InputError, match="fit.n_init"):
        build_config({"fit": {"n_init": 0}})
    with pytest.raises(InputError, match="fit.n_init"):
        load_config(overrides=["fit.n_init=0"])


def test_pixel_kmeans_keeps_the_best_of_n_init_and_reports_its_objective():
    x, planted = blobs()
    colours = np.concatenate([x / 20 + 0.25, np.zeros((len(x), 1))], axis=1).astype(np.float32)
    crop = Crop("planted", 0, 0, colours.T.reshape(3, 15, 30), np.ones((15, 30), bool))
    singles = [fit_pixel_kmeans([crop], 4, 10_000, 50, s)[1]["kmeans_objective"]
               for s in range(10)]
    model, stats = fit_pixel_kmeans([crop], 4, 10_000, 50, 0, n_init=10)
    assert stats["n_init"] == 10
    assert stats["kmeans_objective"] <= min(singles) * (1 + 1e-6)
    assert max(singles) > 1.5 * stats["kmeans_objective"]  # some single init failed
    assert same_partition(nearest(colours, model.centroids), planted)


def test_stego_probe_refinement_never_ends_worse_with_more_inits():
    feats = torch.randn(8, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    knn = knn_indices(feats.mean((2, 3)), 3)
    cfg = StegoConfig(dim=8, steps=4, batch_size=4, feature_samples=4, log_every=2)
    one = train_stego(feats, knn, 4, cfg, seed=0)
    ten = train_stego(feats, knn, 4, cfg, seed=0, n_init=10)
    assert one.kmeans_objective > 0
    assert ten.kmeans_objective >= one.kmeans_objective
