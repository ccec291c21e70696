"""The ibot objective: block-wise masks, a masked ViT forward, and a patch loss that trains the
student's patch tokens to predict the teacher's at the masked positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.backbone import create_vit
from pipeline.pretrain import ibot
from tests.conftest import TINY_VIT
from tests.pretrain.test_pretrain import _run, textures, tiny_recipe


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest)."""


def test_block_masks_cover_the_drawn_share_of_the_masked_views_only():
    gen = torch.Generator().manual_seed(0)
    masks = ibot.block_masks(200, 12, (0.2, 0.4), 0.5, gen)
    share = masks.float().mean(1)
    on = share > 0
    assert masks.shape == (200, 144) and 70 < int(on.sum()) < 130  # about half are masked
    assert float(share[on].min()) >= 0.1 and float(share[on].max()) <= 0.45
    again = ibot.block_masks(200, 12, (0.2, 0.4), 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)


def test_masked_patches_are_replaced_by_the_mask_token_and_the_rest_is_the_vit():
    vit = create_vit("vit_small_patch8_224", TINY_VIT)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ibot.vit_tokens(vit, x), vit.forward_features(x), atol=1e-6)
    token = ibot.MaskToken(vit.num_features)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :5] = True
    masked = ibot.vit_tokens(vit, x, mask, token)
    assert torch.allclose(masked[1], vit.forward_features(x)[1], atol=1e-6)
    assert not torch.allclose(masked[0], vit.forward_features(x)[0], atol=1e-4)


def test_the_patch_loss_counts_masked_patches_only():
    student = torch.randn(2, 4, 8)
    teacher = torch.randn(2, 4, 8)
    mask = torch.tensor([[True, False, False, False], [False, False, False, False]])
    loss = ibot.patch_loss(student, teacher, torch.zeros(1, 1, 8), mask, 0.1, 0.04)
    t = torch.softmax(teacher[0, 0] / 0.04, -1)
    expected = -(t * torch.log_softmax(student[0, 0] / 0.1, -1)).sum()
    assert torch.allclose(loss, expected)
    changed = student.clone()
    changed[0, 1:] += 5.0  # unmasked patches do not matter
    changed[1] += 5.0
    assert torch.allclose(ibot.patch_loss(changed, teacher, torch.zeros(1, 1, 8), mask, 0.1,
                                          0.04), expected)


def test_with_a_fixed_teacher_the_patch_loss_falls():
    # teacher frozen (momentum 1) and no centring: the masked patch predictions must improve
    cfg = tiny_recipe(steps=40, batch_size=16, momentum=1.0, center_momentum=1.0,
                      checkpoint_every=100, objective="ibot", mask_probability=1.0,
                      patch_out_dim=64)
    nets, progress = _run(cfg, textures(32))
    losses = [h["patch_loss"] for h in progress.history]
    assert {"patch_entropy", "patch_batch_entropy"} <= set(progress.history[-1])
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.1
    assert nets.mask_token is not None and float(nets.mask_token.token.detach().abs().sum()) > 0


def test_the_dino_objective_has_no_patch_modules():
    nets, progress = _run(tiny_recipe(steps=2, objective="dino"), textures())
    assert nets.patch_head is None and "patch_loss" not in progress.history[-1]
    assert set(nets.modules()) == {"student", "student_head", "teacher", "teacher_head"}
