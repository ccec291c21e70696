"""STEGO shifts that adapt to the backbone: calibrated from the distribution of its feature
correlations, so that codes do not collapse on backbones other than DINO ViT-S/8."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import StegoConfig
from pipeline.fit import shifts as sh
from pipeline.fit.knn import knn_indices
from pipeline.fit.stego_train import train_stego
from tests.fit.test_stego import hungarian_accuracy, planted_features

ATTRACT = {"self": 0.5, "knn": 0.4, "rand": 0.15}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest)."""


def offset_features():
    """Planted classes under a strong component shared by every patch: all correlations sit
    high (mean cosine ~0.8 for random pairs), as on a backbone unlike DINO."""
    feats, labels, k = planted_features()
    common = F.normalize(torch.randn(feats.shape[1], generator=torch.Generator().manual_seed(5)),
                         dim=0) * 4.0
    return feats + common[None, :, None, None], labels, k


def train_with(shifts: sh.Shifts, feats, knn, k):
    cfg = StegoConfig(dim=16, steps=200, batch_size=16, feature_samples=8, log_every=50,
                      self_shift=shifts.self_, knn_shift=shifts.knn, rand_shift=shifts.rand)
    return train_stego(feats, knn, k, cfg, seed=0, n_init=5)


def test_calibrated_shifts_leave_the_chosen_share_of_pairs_attracting():
    feats, _, _ = offset_features()
    corr = sh.feature_correlations(feats, knn_indices(feats.mean((2, 3)), 7), 8)
    shifts = sh.calibrate(corr, ATTRACT)
    share = sh.attracting_share(corr, shifts)
    assert share == pytest.approx(ATTRACT, abs=0.01)
    assert shifts.source == "calibrated" and shifts.rand < shifts.self_


def test_paper_shifts_collapse_on_high_correlations_and_calibrated_ones_recover_the_classes():
    feats, labels, k = offset_features()
    knn = knn_indices(feats.mean((2, 3)), 7)
    corr = sh.feature_correlations(feats, knn, 8)
    assert sh.summary(corr)["rand"]["mean"] > 0.7
    paper = train_with(sh.Shifts(0.08, 0.02, 0.46, "paper"), feats, knn, k)
    calibrated = train_with(sh.calibrate(corr, ATTRACT), feats, knn, k)

    def accuracy(result) -> float:
        with torch.no_grad():
            pred = result.probe.cosine(result.head(feats)).argmax(1).numpy()
        return hungarian_accuracy(pred, labels.numpy(), k)

    assert paper.code_coherence > 0.98 and accuracy(paper) < 0.5
    assert calibrated.code_coherence < 0.5 and accuracy(calibrated) > 0.95


@pytest.mark.parametrize("name,source,mode,expected", [
    ("vit_small_patch8_224.dino", "file", "auto", "paper"),
    ("vit_small_patch8_224.dino", "hub", "auto", "paper"),
    ("vit_small_patch8_224.dino", "random", "auto", "calibrated"),
    ("vit_small_patch8_224", "directory", "auto", "calibrated"),
    ("vit_base_patch14_dinov2.lvd142m", "file", "auto", "calibrated"),
    ("vit_small_patch8_224", "directory", "paper", "paper"),
    ("vit_small_patch8_224.dino", "file", "calibrated", "calibrated"),
])
def test_auto_keeps_the_paper_shifts_only_for_dino_vit_s8(name, source, mode, expected):
    corr = {t: torch.linspace(0, 1, 101) for t in ("self", "knn", "rand")}
    paper = sh.Shifts(0.08, 0.02, 0.46, "paper")
    calibrated = sh.calibrate(corr, ATTRACT)
    chosen = sh.choose_shifts(mode, paper, calibrated, sh.is_paper_backbone(name, source))
    assert chosen.source == expected
    if expected == "paper":
        assert chosen == paper


def test_collapse_advice_names_the_calibrated_values():
    calibrated = sh.Shifts(0.41, 0.45, 0.69, "calibrated")
    advice = sh.collapse_advice(sh.Shifts(0.08, 0.02, 0.46, "paper"), calibrated)
    assert "stego.shifts=calibrated" in advice and "b_rand 0.69" in advice
    assert "attract_rand" in sh.collapse_advice(calibrated, calibrated)


def test_attract_shares_must_be_fractions():
    from pipeline.config import build_config
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="stego.attract_rand"):
        build_config({"stego": {"attract_rand": 1.5}})
