"""Models: fitting, model files (safetensors + JSON, no pickle), backbone weights loading."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import InputError
from pipeline.models.backbone import build_backbone, patch_features
from pipeline.models.kmeans import spherical_kmeans
from pipeline.models.store import load_model, save_model
from pipeline.models.weights_file import read_weights_file
from tests.conftest import TINY_VIT

NAME = "vit_small_patch8_224.dino"


def _images(n=2, h=48, w=64, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fixture", ["pixel_model", "feature_model"])
def test_save_load_round_trip_gives_identical_scores(request, fixture, tmp_path):
    model = load_model(request.getfixturevalue(fixture))
    again = load_model(save_model(model, tmp_path / "copy", {}))
    x = _images() if model.uses_torch else _images().numpy()  # pixel-kmeans runs on NumPy
    p = np.asarray(model.predict(x))
    np.testing.assert_array_equal(np.asarray(again.predict(x)), p)
    assert p.shape == (2, model.n_classes, 48, 64)
    np.testing.assert_allclose(p.sum(1), np.ones((2, 48, 64)), rtol=1e-5)


def test_model_files_are_json_and_safetensors_only(feature_model):
    files = sorted(p.name for p in feature_model.iterdir())
    assert files == ["model.json", "model.safetensors"]
    meta = json.loads((feature_model / "model.json").read_text())
    assert meta["backbone"]["name"] == NAME
    assert meta["backbone"]["weights"]["source"] == "random"
    assert meta["params"]["backbone_embedded"] is True  # random weights must travel along


def test_patch_features_drop_prefix_tokens_and_keep_stride():
    net, _ = build_backbone(NAME, "random", TINY_VIT)
    f = patch_features(net, _images(h=48, w=64))
    assert f.shape == (2, 64, 6, 8)
    tokens = net.forward_features(_images(h=48, w=64))
    torch.testing.assert_close(f[0, :, 0, 1], tokens[0, net.num_prefix_tokens + 1])


def test_original_dino_checkpoints_load_from_a_local_file(tmp_path):
    ref, _ = build_backbone(NAME, "random", TINY_VIT, seed=3)
    state = {f"module.backbone.{k}": v for k, v in ref.state_dict().items()}
    state["module.head.last_layer.weight"] = torch.zeros(4, 4)  # DINO's projection head
    path = tmp_path / "dino.pth"
    torch.save({"teacher": state, "epoch": 300}, path)
    net, prov = build_backbone(NAME, str(path), TINY_VIT)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)
    assert prov["source"] == "file" and prov["sha256"] == build_backbone(
        NAME, "random", TINY_VIT, seed=3)[1]["sha256"]


def test_a_dino_file_backbone_keeps_dinos_interpolation_after_save_and_reload(tmp_path):
    from pipeline.models.backbone import describe_backbone
    from pipeline.models.feature_kmeans import FeatureKMeans
    from pipeline.models.pos_embed import interpolation

    ref, _ = build_backbone(NAME, "random", TINY_VIT, seed=7)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in ref.state_dict().items()}},
               tmp_path / "dino.pth")
    net, prov = build_backbone(NAME, str(tmp_path / "dino.pth"), TINY_VIT)
    assert interpolation(net) == "dino"
    info = describe_backbone(NAME, TINY_VIT, prov, net)
    model = FeatureKMeans(net, info, torch.randn(3, 64), ["a", "b", "c"], [(0, 0, 0)] * 3)
    mdir = save_model(model, tmp_path / "m", {})  # the backbone is not embedded: read again
    meta = json.loads((mdir / "model.json").read_text())
    assert meta["backbone"]["pos_embed"] == "dino" and not meta["params"]["backbone_embedded"]
    x = _images()  # a 6 x 8 patch grid: DINO's interpolation of the 28 x 28 table
    again = load_model(mdir)
    assert interpolation(again.backbone) == "dino"
    torch.testing.assert_close(again.predict(x), model.predict(x))
    # a model file written before the choice was recorded was fit with timm's resampling
    del meta["backbone"]["pos_embed"]
    (mdir / "model.json").write_text(json.dumps(meta))
    assert interpolation(load_model(mdir).backbone) == "timm"
    meta["backbone"]["pos_embed"] = "nearest"
    (mdir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="nearest"):
        load_model(mdir)


def test_timm_safetensors_weights_load(tmp_path):
    ref, _ = build_backbone(NAME, "random", TINY_VIT, seed=4)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "w.safetensors")
    net, _ = build_backbone(NAME, str(tmp_path / "w.safetensors"), TINY_VIT)
    torch.testing.assert_close(net.pos_embed, ref.pos_embed)


def test_weights_for_another_backbone_are_refused(tmp_path):
    other, _ = build_backbone(NAME, "random", {**TINY_VIT, "embed_dim": 32})
    torch.save(other.state_dict(), tmp_path / "w.pth")
    with pytest.raises(InputError, match="w.pth"):
        build_backbone(NAME, str(tmp_path / "w.pth"), TINY_VIT)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"teacher": _Evil()}))
    with pytest.raises(InputError, match="not a readable weights file"):
        read_weights_file(path)
    assert "pwned" not in capsys.readouterr().out


def test_model_referencing_a_weights_file_checks_its_hash(tmp_path, feature_model):
    ref, _ = build_backbone(NAME, "random", TINY_VIT, seed=5)
    wpath = tmp_path / "w.pth"
    torch.save(ref.state_dict(), wpath)
    from pipeline.models.feature_kmeans import FeatureKMeans

    net, prov = build_backbone(NAME, str(wpath), TINY_VIT)
    info = {"name": NAME, "overrides": TINY_VIT, "weights": prov}
    model = FeatureKMeans(net, info, torch.randn(3, 64), ["a", "b", "c"], [(0, 0, 0)] * 3)
    mdir = save_model(model, tmp_path / "m", {})
    assert "backbone.pos_embed" not in __import__("safetensors.torch").torch.load_file(
        str(mdir / "model.safetensors"))
    x = _images()
    torch.testing.assert_close(load_model(mdir).predict(x), model.predict(x))
    other, _ = build_backbone(NAME, "random", TINY_VIT, seed=6)
    torch.save(other.state_dict(), wpath)  # the file changed under the model
    with pytest.raises(InputError, match="differ"):
        load_model(mdir)


def test_auto_weights_fall_back_to_random_loudly_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        _, prov = build_backbone(NAME, "auto", TINY_VIT)
    assert prov["source"] == "random"


@pytest.mark.parametrize("damage", ["missing_dir", "no_json", "bad_json", "bad_tensors"])
def test_broken_model_directories_give_clear_errors(tmp_path, pixel_model, damage):
    import shutil

    mdir = tmp_path / "m"
    shutil.copytree(pixel_model, mdir)
    if damage == "missing_dir":
        mdir = tmp_path / "nope"
    elif damage == "no_json":
        (mdir / "model.json").unlink()
    elif damage == "bad_json":
        (mdir / "model.json").write_text("{not json")
    else:
        (mdir / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError):
        load_model(mdir)


def test_spherical_kmeans_recovers_planted_directions():
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    labels = torch.randint(0, 4, (800,), generator=g)
    x = centres[labels] + 0.05 * torch.randn(800, 16, generator=g)
    found = spherical_kmeans(x, 4, 50, seed=0)
    match = (found @ centres.T).max(0).values
    assert (match > 0.98).all()
    assign = (torch.nn.functional.normalize(x, dim=1) @ found.T).argmax(1)
    # one cluster per planted direction
    assert len({(int(a), int(b)) for a, b in zip(assign, labels, strict=True)}) == 4
    assert np.unique(assign.numpy()).size == 4


@pytest.mark.parametrize("name,prefix", [
    ("vit_base_patch8_224.dino", 1),
    ("vit_small_patch14_dinov2.lvd142m", 1),
    ("vit_small_patch14_reg4_dinov2.lvd142m", 5),  # CLS + 4 registers are dropped
])
def test_dino_and_dinov2_backbones_give_patch_grids_at_any_multiple_of_the_patch(name, prefix):
    net, _ = build_backbone(name, "random", TINY_VIT)
    p = net.patch_embed.patch_size[0]
    x = torch.rand(1, 3, 4 * p, 3 * p)
    assert net.num_prefix_tokens == prefix
    f = patch_features(net, x)
    assert f.shape == (1, 64, 4, 3)
    torch.testing.assert_close(f[0, :, 3, 2], net.forward_features(x)[0, -1])
