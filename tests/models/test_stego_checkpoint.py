"""Importing official STEGO Lightning checkpoints safely (pipeline.models.stego_checkpoint)."""

from __future__ import annotations

import builtins
import collections
import functools
import json
import os
import pickle
import subprocess
import typing
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from pipeline.errors import InputError
from pipeline.io.safe_checkpoint import UnsafeCheckpointError, safe_load_checkpoint
from pipeline.models.pos_embed import interpolation
from pipeline.models.stego import stego_model_from_import
from pipeline.models.stego_checkpoint import (
    CheckpointFormatError,
    convert_stego_checkpoint,
    import_stego_checkpoint,
)
from pipeline.models.stego_head import SegmentationHead
from pipeline.models.store import load_model, save_model
from tests.models.dino_reference import DinoViT

WIDTH, DIM, N_CLASSES, EXTRA = 64, 16, 3, 2

# Every time one of the stand-in classes below is constructed or given state, it is recorded
# here; loading a checkpoint must never do either.
CALLS: list[str] = []


class FakeNode:
    """Stands in for an OmegaConf value node (pickled state holds ``_val``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> FakeNode:
        CALLS.append("FakeNode.__new__")
        return super().__new__(cls)

    def __init__(self, val: Any, parent: Any = None) -> None:
        self._val, self._parent, self._metadata = val, parent, {"ref_type": typing.Any}

    def __setstate__(self, state: dict[str, Any]) -> None:
        CALLS.append("FakeNode.__setstate__")
        self.__dict__.update(state)


class FakeDictConfig:
    """Stands in for omegaconf.DictConfig (pickled state holds ``_content`` of nodes)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> FakeDictConfig:
        CALLS.append("FakeDictConfig.__new__")
        return super().__new__(cls)

    def __init__(self, content: dict[str, Any]) -> None:
        self._parent = None
        self._metadata = {"object_type": dict, "key_type": typing.Any}
        self._content = {k: FakeNode(v, parent=self) for k, v in content.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        CALLS.append("FakeDictConfig.__setstate__")
        self.__dict__.update(state)


class FakeAttributeDict(dict):
    """Stands in for Lightning's AttributeDict (a dict subclass)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        CALLS.append("FakeAttributeDict.__setitem__")
        super().__setitem__(key, value)


class FakeModelCheckpoint:
    """Old Lightning used the callback class itself as a key of ``callbacks``."""


class Evil:
    """A pickle payload: unpickling it calls ``func(*args)``."""

    def __init__(self, func: Any, args: tuple[Any, ...]) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _tiny_vit() -> torch.nn.Module:
    return timm.create_model(
        "vit_small_patch8_224.dino", pretrained=False, num_classes=0, depth=2, embed_dim=WIDTH,
        num_heads=2,
    ).eval()  # fmt: skip


def _official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the official LitUnsupervisedSegmenter key layout."""
    torch.manual_seed(seed)
    dino = _tiny_vit().state_dict()
    sd: dict[str, torch.Tensor] = collections.OrderedDict()
    for k, v in dino.items():
        sd[f"net.model.{k}"] = v.clone()
    sd["net.cluster1.0.weight"] = torch.randn(DIM, WIDTH, 1, 1)
    sd["net.cluster1.0.bias"] = torch.randn(DIM)
    sd["net.cluster2.0.weight"] = torch.randn(WIDTH, WIDTH, 1, 1)
    sd["net.cluster2.0.bias"] = torch.randn(WIDTH)
    sd["net.cluster2.2.weight"] = torch.randn(DIM, WIDTH, 1, 1)
    sd["net.cluster2.2.bias"] = torch.randn(DIM)
    sd["train_cluster_probe.clusters"] = torch.randn(N_CLASSES, DIM)
    sd["cluster_probe.clusters"] = torch.randn(N_CLASSES + EXTRA, DIM)
    sd["linear_probe.weight"] = torch.randn(N_CLASSES, DIM, 1, 1)
    sd["linear_probe.bias"] = torch.randn(N_CLASSES)
    sd["decoder.weight"] = torch.randn(WIDTH, DIM, 1, 1)
    sd["decoder.bias"] = torch.randn(WIDTH)
    return sd


def _lightning_ckpt(state: dict[str, torch.Tensor], hparams: Any) -> dict[str, Any]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=5e-3)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.4.9",
        "state_dict": state,
        "hyper_parameters": hparams,
        "hparams_name": "kwargs",
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "callbacks": {FakeModelCheckpoint: {"best_model_score": torch.tensor(46.5)}},
    }


def _hparams() -> FakeAttributeDict:
    cfg = FakeDictConfig(
        {"model_type": "vit_small", "dino_patch_size": 8, "dim": DIM, "extra_clusters": EXTRA}
    )
    return FakeAttributeDict(n_classes=N_CLASSES, cfg=cfg, plain={"lr": 5e-4, "res": 224})


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An official-layout Lightning checkpoint on disk and its state dict."""
    state = _official_state()
    path = tmp_path_factory.mktemp("ckpt") / "potsdam_tiny.ckpt"
    torch.save(_lightning_ckpt(state, _hparams()), path)
    return path, state


def _one_line_input_error(path: Path) -> InputError:
    with pytest.raises(InputError) as info:
        import_stego_checkpoint(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)
    return info.value


def test_import_renames_tensors_exactly(official: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = official
    CALLS.clear()
    imp = import_stego_checkpoint(path)
    assert CALLS == []  # no stand-in class was constructed or given state
    assert imp.backbone_name == "vit_small_patch8_224.dino"
    assert (imp.dim, imp.n_clusters, imp.patch_size) == (DIM, N_CLASSES + EXTRA, 8)
    assert set(imp.backbone_state) == set(_tiny_vit().state_dict())
    for k, v in imp.backbone_state.items():
        assert torch.equal(v, state[f"net.model.{k}"]), k
    pairs = {
        "linear.weight": "net.cluster1.0.weight",
        "linear.bias": "net.cluster1.0.bias",
        "nonlinear.0.weight": "net.cluster2.0.weight",
        "nonlinear.0.bias": "net.cluster2.0.bias",
        "nonlinear.2.weight": "net.cluster2.2.weight",
        "nonlinear.2.bias": "net.cluster2.2.bias",
    }
    assert set(imp.head_state) == set(pairs)
    for ours, theirs in pairs.items():
        assert torch.equal(imp.head_state[ours], state[theirs]), ours
    assert torch.equal(imp.clusters, state["cluster_probe.clusters"])
    assert imp.linear_probe is not None
    assert torch.equal(imp.linear_probe["weight"], state["linear_probe.weight"])
    assert torch.equal(imp.linear_probe["bias"], state["linear_probe.bias"])


def test_hyperparameters_read_as_plain_values(
    official: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    CALLS.clear()
    hp = import_stego_checkpoint(official[0]).hyperparameters
    assert CALLS == []
    assert hp["n_classes"] == N_CLASSES
    assert hp["plain"] == {"lr": 5e-4, "res": 224}
    assert hp["cfg"] == {
        "model_type": "vit_small", "dino_patch_size": 8, "dim": DIM, "extra_clusters": EXTRA,
    }  # fmt: skip


def test_raw_load_keeps_lightning_fields(official: tuple[Path, dict[str, torch.Tensor]]) -> None:
    ckpt = safe_load_checkpoint(official[0])
    assert ckpt["epoch"] == 3 and ckpt["global_step"] == 1200
    assert isinstance(ckpt["optimizer_states"][0]["state"][0]["exp_avg"], torch.Tensor)
    assert not isinstance(ckpt["hyper_parameters"], FakeAttributeDict)


def test_head_and_backbone_load_strict_and_match(
    official: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = official
    imp = import_stego_checkpoint(path)
    head = SegmentationHead(WIDTH, DIM).eval()
    head.load_state_dict(imp.head_state, strict=True)
    ref_head = SegmentationHead(WIDTH, DIM).eval()
    ref_head.linear.load_state_dict(
        {"weight": state["net.cluster1.0.weight"], "bias": state["net.cluster1.0.bias"]}
    )
    ref_head.nonlinear.load_state_dict(
        {k[len("net.cluster2.") :]: v for k, v in state.items() if k.startswith("net.cluster2.")}
    )

    vit = _tiny_vit()
    vit.load_state_dict(imp.backbone_state, strict=True)
    ref_vit = _tiny_vit()
    dino = {k[len("net.model.") :]: v for k, v in state.items() if k.startswith("net.model.")}
    ref_vit.load_state_dict(dino, strict=True)

    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens, ref_tokens = vit.forward_features(x), ref_vit.forward_features(x)
        feats = tokens[:, 1:].reshape(1, 28, 28, WIDTH).permute(0, 3, 1, 2)
        code, ref_code = head(feats), ref_head(feats)
    assert torch.equal(tokens, ref_tokens)
    assert torch.equal(code, ref_code)
    assert code.shape == (1, DIM, 28, 28)


def test_an_imported_model_runs_dinos_vit_at_any_tile_size_after_save_and_reload(
    official: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path,
) -> None:
    path, state = official
    tiny = {"depth": 2, "embed_dim": WIDTH, "num_heads": 2}
    model = stego_model_from_import(import_stego_checkpoint(path), str(path), tiny)
    saved = save_model(model, tmp_path / "m", {})
    assert json.loads((saved / "model.json").read_text())["backbone"]["pos_embed"] == "dino"
    again = load_model(saved)
    assert interpolation(model.backbone) == interpolation(again.backbone) == "dino"
    ref = DinoViT(8, WIDTH, 2, 2).eval()  # DINO's own ViT, as STEGO's code runs it
    ref.load_state_dict({k[len("net.model."):]: v for k, v in state.items()
                         if k.startswith("net.model.")}, strict=True)
    for h, w in [(224, 224), (320, 320), (160, 240)]:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        with torch.no_grad():
            tokens = ref.forward_tokens((x - again.mean) / again.std)
            feats = tokens[:, 1:].reshape(1, h // 8, w // 8, WIDTH).permute(0, 3, 1, 2)
            torch.testing.assert_close(again.codes(x), again.head(feats), rtol=1e-5, atol=1e-4)


def test_legacy_non_zip_format_imports(tmp_path: Path) -> None:
    state = _official_state(seed=3)
    path = tmp_path / "legacy.ckpt"
    torch.save(_lightning_ckpt(state, _hparams()), path, _use_new_zipfile_serialization=False)
    imp = import_stego_checkpoint(path)
    assert torch.equal(imp.clusters, state["cluster_probe.clusters"])


def _payloads(target: Path) -> list[tuple[str, Any]]:
    cmd = f"touch {target}"
    return [
        ("system", Evil(os.system, (cmd,))),
        ("eval", Evil(builtins.eval, (f"__import__('os').system({cmd!r})",))),
        ("call", Evil(subprocess.call, (["touch", str(target)],))),
        ("partial", Evil(functools.partial(os.system, cmd), ())),
        ("getattr", Evil(getattr, ("harmless", "upper"))),
    ]


@pytest.mark.parametrize("index", range(5))
def test_malicious_hyperparameters_are_refused(tmp_path: Path, index: int) -> None:
    target = tmp_path / "pwned"
    name, payload = _payloads(target)[index]
    ckpt = _lightning_ckpt(_official_state(), {"n_classes": 3, "cfg": payload})
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load_checkpoint(path)
    assert name in str(info.value)
    err = _one_line_input_error(path)
    assert name in str(err) and "unsafe" in str(err)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_plain_pickle_is_refused(tmp_path: Path, protocol: int) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps(Evil(os.system, (f"touch {target}",)), protocol=protocol))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        safe_load_checkpoint(path)
    assert "system" in str(_one_line_input_error(path))
    assert not target.exists()


def test_malicious_legacy_torch_format_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil_legacy.ckpt"
    ckpt = {
        "state_dict": {"x": torch.ones(1)},
        "hyper_parameters": Evil(os.system, (f"touch {target}",)),
    }
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    assert "system" in str(_one_line_input_error(path))
    assert not target.exists()


def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.ckpt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        safe_load_checkpoint(path)


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "text"])
def test_unreadable_files_give_one_line_input_error(
    tmp_path: Path, kind: str, official: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    path = tmp_path / f"{kind}.ckpt"
    data = official[0].read_bytes()
    contents = {
        "empty": b"",
        "random": bytes(
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()
        ),
        "truncated": data[: len(data) // 2],
        "text": b"model:\n  dim: 70\n",
    }
    path.write_bytes(contents[kind])
    err = _one_line_input_error(path)
    assert "checkpoint" in err.problem


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    assert "not found" in _one_line_input_error(tmp_path / "nope.ckpt").problem


def test_missing_cluster_probe_names_the_key(tmp_path: Path) -> None:
    state = _official_state()
    del state["cluster_probe.clusters"]
    path = tmp_path / "incomplete.ckpt"
    torch.save(_lightning_ckpt(state, _hparams()), path)
    assert "cluster_probe.clusters" in str(_one_line_input_error(path))


def test_missing_backbone_block_key_is_named() -> None:
    state = _official_state()
    del state["net.model.blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointFormatError, match=r"net\.model\.blocks\.1\.mlp\.fc2\.bias"):
        convert_stego_checkpoint({"state_dict": state})


def _standard_width_state(width: int, patch: int) -> dict[str, torch.Tensor]:
    """A one-block backbone of a real DINO width (only shapes matter), linear projection."""
    vit = timm.create_model(
        f"vit_small_patch{patch}_224", pretrained=False, num_classes=0, depth=1, embed_dim=width,
        num_heads=2,
    )  # fmt: skip
    sd = {f"net.model.{k}": v for k, v in vit.state_dict().items()}
    sd["net.cluster1.0.weight"] = torch.randn(70, width, 1, 1)
    sd["net.cluster1.0.bias"] = torch.randn(70)
    sd["cluster_probe.clusters"] = torch.randn(3, 70)
    return sd


def test_shapes_decide_without_hyperparameters() -> None:
    imp = convert_stego_checkpoint({"state_dict": _standard_width_state(384, 16)})
    assert imp.backbone_name == "vit_small_patch16_224.dino"
    assert (imp.dim, imp.n_clusters, imp.patch_size) == (70, 3, 16)
    assert imp.hyperparameters == {} and imp.linear_probe is None
    # projection_type "linear": the nonlinear branch is all zeros, so it adds nothing.
    head = SegmentationHead(384, 70).eval()
    head.load_state_dict(imp.head_state, strict=True)
    x = torch.randn(1, 384, 2, 2)
    with torch.no_grad():
        assert torch.equal(head(x), head.linear(x) + 0.0)
    base = convert_stego_checkpoint({"state_dict": _standard_width_state(768, 8)})
    assert base.backbone_name == "vit_base_patch8_224.dino"


def test_contradicting_or_unknown_backbone_is_refused() -> None:
    sd = _standard_width_state(384, 16)
    with pytest.raises(CheckpointFormatError, match="contradicts"):
        convert_stego_checkpoint({"state_dict": sd, "hyper_parameters": {"model_type": "vit_base"}})
    tiny = _official_state()
    with pytest.raises(CheckpointFormatError, match="width 64"):
        convert_stego_checkpoint({"state_dict": tiny, "hyper_parameters": {"n_classes": 3}})
