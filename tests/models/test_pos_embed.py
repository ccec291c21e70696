"""Position embeddings at tile sizes other than the trained one: DINO's own interpolation for
DINO (and DINOv2 without registers) backbones, checked against DINO's ViT written out again in
``tests/models/dino_reference.py``; timm's resampling elsewhere."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from pipeline.models import pos_embed
from pipeline.models.backbone import build_backbone, describe_backbone
from tests.conftest import TINY_VIT
from tests.models.dino_reference import DinoViT, dino_interpolate_pos_encoding

NAME = "vit_small_patch8_224.dino"  # DINO's ViT-S/8 layout, here 64 wide, 2 blocks, 2 heads
SIZES = [(320, 320), (160, 240), (544, 544), (96, 200), (240, 160), (72, 56)]


def _dino_backbone(seed: int = 0) -> tuple[torch.nn.Module, DinoViT]:
    """A tiny DINO-layout timm backbone (28 x 28 position table: 224 px at patch 8) and DINO's
    own ViT with the same weights; the table is made rough so interpolations differ."""
    net, _ = build_backbone(NAME, "random", TINY_VIT, seed=seed)
    with torch.no_grad():
        net.pos_embed.normal_(generator=torch.Generator().manual_seed(seed))
        net.cls_token.normal_(generator=torch.Generator().manual_seed(seed + 1))
    ref = DinoViT(8, TINY_VIT["embed_dim"], TINY_VIT["depth"], TINY_VIT["num_heads"]).eval()
    ref.load_state_dict(net.state_dict(), strict=True)
    return net, ref


def _added_pos_embed(net: torch.nn.Module, rows: int, cols: int) -> torch.Tensor:
    """What the timm model adds to (prefix tokens, zero patch tokens) for a rows x cols grid."""
    dim = net.embed_dim
    prefix = [t for t in (net.cls_token, net.reg_token) if t is not None]
    with torch.no_grad():
        out = net._pos_embed(torch.zeros(1, rows, cols, dim))
    return out - torch.cat([*prefix, torch.zeros(1, rows * cols, dim)], dim=1)


def test_dino_backbones_resample_their_position_table_as_dinos_vit(one_torch_thread):
    net, ref = _dino_backbone()
    assert pos_embed.interpolation(net) == "dino" and net.pos_embed.shape == (1, 785, 64)
    for h, w in SIZES:
        tokens = torch.zeros(1, 1 + (h // 8) * (w // 8), 64)
        expected = dino_interpolate_pos_encoding(ref.pos_embed, 8, tokens, h, w)
        got = _added_pos_embed(net, h // 8, w // 8)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(pos_embed.dino_interpolate(net.pos_embed, (h // 8, w // 8)),
                                   expected, rtol=0, atol=1e-6)
        # timm's own resampling (antialiased, to a size) is what this replaces: far off
        timm_way = resample_abs_pos_embed(net.pos_embed, (h // 8, w // 8), (28, 28))
        assert (timm_way - expected).abs().max() > 1e-2


def test_dino_backbones_give_dinos_features_at_any_tile_size(one_torch_thread):
    net, ref = _dino_backbone(1)
    for h, w in [(224, 224), *SIZES[:4]]:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.no_grad():
            torch.testing.assert_close(net.forward_features(x), ref.forward_tokens(x),
                                       rtol=0, atol=2e-5)


def test_the_trained_grid_is_unchanged(one_torch_thread):
    net, _ = _dino_backbone(2)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dino = net.forward_features(x)
        assert pos_embed.dino_interpolate(net.pos_embed, (28, 28)) is net.pos_embed
        pos_embed.set_interpolation(net, "timm")
        assert pos_embed.interpolation(net) == "timm"
        assert torch.equal(net.forward_features(x), dino)
        assert not torch.equal(net.forward_features(x[..., :160]),
                               pos_embed.set_interpolation(net, "dino").forward_features(
                                   x[..., :160]))


def _dinov2_interpolate(pos_embed_: torch.Tensor, w0: int, h0: int, offset: float,
                        antialias: bool) -> torch.Tensor:
    """facebookresearch/dinov2 ``interpolate_pos_encoding`` (current version) on the table of
    the patches only, for a grid of w0 x h0 patches."""
    N = pos_embed_.shape[1]
    M = int(math.sqrt(N))
    kwargs: dict = {}
    if offset:
        kwargs["scale_factor"] = (float(w0 + offset) / M, float(h0 + offset) / M)
    else:
        kwargs["size"] = (w0, h0)
    out = F.interpolate(pos_embed_.float().reshape(1, M, M, -1).permute(0, 3, 1, 2),
                        mode="bicubic", antialias=antialias, **kwargs)
    assert (w0, h0) == out.shape[-2:]
    return out.permute(0, 2, 3, 1).reshape(1, w0 * h0, -1)


@pytest.mark.parametrize("name,mode,offset,antialias", [
    ("vit_small_patch14_dinov2.lvd142m", "dino", 0.1, False),  # DINOv2's hub defaults
    ("vit_small_patch14_reg4_dinov2.lvd142m", "timm", 0.0, True),  # ... with registers
])
def test_dinov2_backbones_resample_as_dinov2s_own_code(name, mode, offset, antialias):
    net, _ = build_backbone(name, "random", TINY_VIT)
    with torch.no_grad():
        net.pos_embed.normal_(generator=torch.Generator().manual_seed(0))
    assert pos_embed.interpolation(net) == mode
    table = net.pos_embed[:, 0 if net.no_embed_class else 1:]
    assert table.shape[1] == 37 * 37  # 518 px at patch 14
    for rows, cols in [(23, 23), (16, 40), (38, 12)]:
        got = _added_pos_embed(net, rows, cols)[:, net.num_prefix_tokens:]
        want = _dinov2_interpolate(table, rows, cols, offset, antialias)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,mode", [
    ("vit_small_patch8_224.dino", "dino"), ("dino-b8", "dino"),
    ("vit_small_patch8_224", "dino"),  # timm's only weights for it are DINO's
    ("vit_small_patch16_224", "timm"), ("vit_small_patch16_224.augreg_in1k", "timm"),
    ("dinov2-s14", "dino"), ("dinov2-b14-reg", "timm"), ("dinov3-s16", "timm"),
])
def test_each_family_gets_its_own_codes_interpolation_and_records_it(name, mode):
    net, prov = build_backbone(name, "random", TINY_VIT)
    assert pos_embed.interpolation(net) == mode
    assert describe_backbone(name, TINY_VIT, prov, net)["pos_embed"] == mode


def test_a_pretrained_backbone_directory_keeps_timms(tmp_path):
    from pipeline.models.backbone_dir import write_backbone_dir

    net, _ = build_backbone(NAME, "random", TINY_VIT)
    write_backbone_dir(tmp_path / "bb", net.state_dict(), {
        "timm_name": NAME, "overrides": TINY_VIT,
        "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    again, prov = build_backbone(NAME, str(tmp_path / "bb"))
    assert prov["source"] == "directory" and pos_embed.interpolation(again) == "timm"


def test_unknown_modes_and_models_without_a_table_are_refused():
    net, _ = build_backbone("dinov3-s16", "random", TINY_VIT)
    with pytest.raises(ValueError, match="position embedding"):
        pos_embed.set_interpolation(net, "dino")
    with pytest.raises(ValueError, match="unknown"):
        pos_embed.set_interpolation(net, "nearest")
