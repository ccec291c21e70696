"""DINO, DINOv2 and DINOv3 backbones: presets that agree with timm, every native checkpoint
layout loaded without executing code (written here in the exact key layouts of the public
files), one-line errors naming the first key that does not fit, and correct patch features
(prefix tokens dropped, any tile size)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from flows.cli import main
from pipeline.errors import InputError
from pipeline.models.backbone import build_backbone, normalisation, patch_features, patch_size
from pipeline.models.presets import PRESETS, get_preset, timm_name_of
from pipeline.models.weights_file import checkpoint_layout

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
DINOV2 = "vit_small_patch14_dinov2.lvd142m"
DINOV2_REG = "vit_small_patch14_reg4_dinov2.lvd142m"
DINOV3 = "vit_small_patch16_dinov3.lvd1689m"
DINOV3_QKVB = "vit_small_patch16_dinov3_qkvb.lvd1689m"


def _reference(name: str, seed: int) -> torch.nn.Module:
    """A tiny model of the family with random weights (and non-trivial layer scales)."""
    net, _ = build_backbone(name, "random", TINY, seed=seed)
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if k.endswith(("gamma", "gamma_1", "gamma_2", "q_bias", "v_bias")):
                v.normal_()
    return net


def _images(size: int) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _same_features(net: torch.nn.Module, ref: torch.nn.Module, size: int) -> None:
    x = _images(size)
    torch.testing.assert_close(patch_features(net, x), patch_features(ref, x))


# ---- the key layouts of the public files ----------------------------------------------------

def dinov2_original(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``dinov2_vit*14[_reg4]_pretrain.pth``: cls and registers apart, pos_embed over
    cls + patches, a mask token (facebookresearch/dinov2 ``DinoVisionTransformer``)."""
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    dim = sd["cls_token"].shape[-1]
    if "reg_token" in sd:  # timm folds the class position into cls_token (no_embed_class)
        pos0 = torch.randn(1, 1, dim)
        sd["register_tokens"] = sd.pop("reg_token")
        sd["cls_token"] = sd["cls_token"] - pos0
        sd["pos_embed"] = torch.cat([pos0, sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, dim)
    return sd


def dinov3_original(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``dinov3_vit*16_pretrain_*.pth``: storage tokens, ls1/ls2 gammas, a fused qkv bias with
    its mask, RoPE periods (facebookresearch/dinov3 ``DinoVisionTransformer``)."""
    out: dict[str, torch.Tensor] = {}
    sd = ref.state_dict()
    dim = sd["cls_token"].shape[-1]
    for k, v in sd.items():
        if k.endswith(("attn.q_bias", "attn.v_bias")):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        out[k.replace("gamma_2", "ls2.gamma")] = v.clone()
    for i in range(len(ref.blocks)):
        q = sd.get(f"blocks.{i}.attn.q_bias", torch.zeros(dim))
        v = sd.get(f"blocks.{i}.attn.v_bias", torch.zeros(dim))
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, torch.zeros(dim), v])
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim),
                                                           torch.ones(dim)])
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.arange(1, dim // 2 // 4 + 1, dtype=torch.float32)
    return out


# ---- presets ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_matches_the_timm_model_it_names(name):
    p = PRESETS[name]
    with torch.device("meta"):  # full size, no memory, no download
        net = timm.create_model(p.timm_name, pretrained=False, num_classes=0)
    assert net.num_features == p.dim
    assert net.num_prefix_tokens == p.prefix_tokens
    assert net.patch_embed.patch_size[0] == p.patch
    assert tuple(net.pretrained_cfg["mean"]) == p.mean and tuple(net.pretrained_cfg["std"]) == p.std
    assert net.pretrained_cfg["hf_hub_id"] == p.hub_repo


def test_presets_are_accepted_wherever_a_timm_name_is():
    assert timm_name_of("dinov3-l16-sat") == "vit_large_patch16_dinov3.sat493m"
    assert timm_name_of("vit_base_patch8_224.dino") == "vit_base_patch8_224.dino"
    net, _ = build_backbone("dinov3-l16-sat", "random", TINY)
    assert normalisation(net) == (get_preset("dinov3-l16-sat").mean,
                                  get_preset("dinov3-l16-sat").std)


def test_backbones_command_lists_presets_and_finds_local_files(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth").write_bytes(b"x")
    hub = tmp_path / "hub" / "models--timm--vit_base_patch14_dinov2.lvd142m" / "snapshots" / "a"
    hub.mkdir(parents=True)
    (hub / "model.safetensors").write_bytes(b"x")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert main(["backbones", "--search", str(weights), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(PRESETS)
    assert rows["dinov3-l16-sat"]["here"].endswith("sat493m-eadcf0ff.pth")
    assert rows["dinov2-b14"]["here"].startswith("hub cache")
    assert rows["dino-s8"]["here"] is None
    assert rows["dinov3-l16-sat"]["dim"] == 1024 and rows["dinov3-l16-sat"]["gsd"] == 0.6
    assert main(["backbones"]) == 0
    text = capsys.readouterr().out
    assert "dinov2-b14-reg" in text and "DINOv3 License" in text and "here: no" in text


# ---- native layouts -----------------------------------------------------------------------

def test_original_dino_training_checkpoint_with_prefixes_loads(tmp_path):
    ref = _reference("dino-s8", 1)
    student = {f"module.backbone.{k}": v for k, v in ref.state_dict().items()}
    student["module.head.mlp.0.weight"] = torch.zeros(8, 32)
    torch.save({"student": student, "epoch": 100}, tmp_path / "checkpoint.pth")
    net, prov = build_backbone("dino-s8", str(tmp_path / "checkpoint.pth"), TINY)
    _same_features(net, ref, 32)
    assert prov["source"] == "file"


@pytest.mark.parametrize("name", [DINOV2, DINOV2_REG], ids=["dinov2", "dinov2-reg4"])
def test_original_dinov2_hub_files_load(tmp_path, name):
    ref = _reference(name, 2)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    original = dinov2_original(ref)
    torch.save(original, path)
    assert checkpoint_layout(original) == "dinov2"
    net, _ = build_backbone(name, str(path), TINY)
    _same_features(net, ref, 56)


@pytest.mark.parametrize("name", [DINOV3, DINOV3_QKVB], ids=["dinov3", "dinov3-qkvb"])
def test_original_dinov3_files_load_through_timms_eva_conversion(tmp_path, name):
    ref = _reference(name, 3)
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    original = dinov3_original(ref)
    assert {"storage_tokens", "rope_embed.periods", "blocks.0.ls1.gamma"} <= set(original)
    torch.save(original, path)
    net, _ = build_backbone(name, str(path), TINY)
    _same_features(net, ref, 48)


def test_timm_safetensors_of_a_dinov3_model_load(tmp_path):
    ref = _reference(DINOV3, 4)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "m.safetensors")
    net, _ = build_backbone(DINOV3, str(tmp_path / "m.safetensors"), TINY)
    _same_features(net, ref, 64)


@pytest.mark.parametrize("make, model, overrides, expected", [
    (lambda: dinov2_original(_reference(DINOV2, 5)), DINOV2, {**TINY, "embed_dim": 48},
     r"cls_token is 1x1x32 in the file, 1x1x48 in the model"),
    (lambda: dinov3_original(_reference(DINOV3, 5)), DINOV2, TINY, r"patch_embed.proj.weight"),
    (lambda: dinov2_original(_reference(DINOV2, 5)), DINOV3, TINY, r"patch_embed.proj.weight"),
    (lambda: dinov3_original(_reference(DINOV3_QKVB, 5)), DINOV3, TINY,
     r"blocks.0.attn.qkv.bias is not zero"),
    (lambda: dinov2_original(_reference(DINOV2_REG, 5)), DINOV2, TINY,
     r"register_tokens holds 4 register tokens in the file, the model has 0"),
], ids=["width", "v3-into-v2", "v2-into-v3", "dropped-bias", "registers"])
def test_a_file_of_another_architecture_names_the_first_key_that_does_not_fit(
        tmp_path, make, model, overrides, expected):
    path = tmp_path / "w.pth"
    torch.save(make(), path)
    with pytest.raises(InputError, match=expected) as err:
        build_backbone(model, str(path), overrides)
    assert "\n" not in str(err.value.problem)


def test_the_cli_reports_a_mismatched_file_in_one_line(tmp_path, demo_scene, capsys):
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(dinov2_original(_reference(DINOV2, 6)), path)
    args = ["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--backbone", "dinov3-s16",
            "--weights", str(path), "--out", str(tmp_path / "m")]
    for k, v in TINY.items():
        args += ["--backbone-arg", f"{k}={v}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {path}: weights do not fit backbone "
                              "vit_small_patch16_dinov3.lvd1689m: patch_embed.proj.weight")


# ---- features -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, sizes", [
    ("dino-s8", (32, 48)), (DINOV2, (56, 98)), (DINOV2_REG, (42, 70)), (DINOV3, (48, 80)),
])
def test_patch_features_drop_every_prefix_token_at_any_tile_size(name, sizes):
    net = _reference(name, 7)
    p = patch_size(net)
    for size in sizes:
        feats = patch_features(net, _images(size))
        assert feats.shape == (2, 32, size // p, size // p)
        tokens = net.forward_features(_images(size))
        assert tokens.shape[1] == (size // p) ** 2 + net.num_prefix_tokens
        torch.testing.assert_close(feats.flatten(2).transpose(1, 2),
                                   tokens[:, net.num_prefix_tokens:])
