"""The GPU path, exercised on the CPU: precision, batch sizing, pinned copies, Dask GPU
resources, SDPA attention and torch.compile. Timings on a real GPU belong to benchmarks/."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.io.raster import compute_scaling, open_raster_info
from pipeline.models.backbone import patch_features
from pipeline.models.device import (
    autocast_dtype,
    cpu_has_native_bf16,
    precision_context,
    resolved_precision,
)
from pipeline.models.store import load_model, model_hash
from pipeline.segment.executor import cached_model, map_unordered, task_resources
from pipeline.segment.inference import auto_batch_size, choose_batch_size, segment_block
from pipeline.tiling import Block, TileGrid
from tests.conftest import TINY_VIT


def test_bf16_autocast_is_the_default_on_cuda_and_on_cpus_with_native_bf16(monkeypatch):
    import pipeline.models.device as device

    assert autocast_dtype("auto", "cuda") is torch.bfloat16
    assert autocast_dtype("auto", "cuda:1") is torch.bfloat16
    assert autocast_dtype("fp32", "cuda") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)  # AVX512-BF16 / AMX
    assert autocast_dtype("auto", "cpu") is torch.bfloat16
    assert resolved_precision("auto", "cpu") == "bf16"
    assert resolved_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)  # bf16 emulated: slow
    assert autocast_dtype("auto", "cpu") is None
    assert resolved_precision("auto", "cpu") == "fp32"
    assert resolved_precision("auto", "cuda") == "bf16"


def test_the_cpu_bf16_probe_reads_the_cpu_flags():
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    assert cpu_has_native_bf16() == ("avx512_bf16" in flags)


def _tiny_stego():
    from pipeline.models.backbone import build_backbone
    from pipeline.models.stego import StegoModel
    from pipeline.models.stego_head import ClusterProbe, SegmentationHead

    torch.manual_seed(0)
    backbone, weights = build_backbone("vit_small_patch8_224.dino", "random", TINY_VIT)
    return StegoModel(backbone, {"weights": weights}, SegmentationHead(64, 8), ClusterProbe(8, 3),
                      ["a", "b", "c"], [(0, 0, 0)] * 3).eval()


def test_only_the_backbone_runs_in_bf16_labels_are_decided_in_float32(feature_model):
    x = torch.rand(2, 3, 64, 64)
    fk = load_model(feature_model)
    with torch.inference_mode(), precision_context("bf16", "cpu"):
        feats = fk.features(x)
        probs = fk.predict(x)
    assert feats.dtype == probs.dtype == torch.float32
    with torch.inference_mode():  # the same backbone features, scored without autocast
        f = torch.nn.functional.normalize(feats, dim=1)
        cos = torch.einsum("nchw,kc->nkhw", f, fk.centroids)
        cos = torch.nn.functional.interpolate(cos, size=(64, 64), mode="bilinear")
        expected = torch.softmax(fk.alpha * cos, dim=1)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)

    st = _tiny_stego()
    with torch.inference_mode(), precision_context("bf16", "cpu"):
        feats = patch_features(st.backbone, (x - st.mean) / st.std)
        codes = st.codes(x)
    assert codes.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(codes, st.head(feats), rtol=0, atol=1e-6)


def test_the_precision_that_ran_is_in_the_fingerprint_and_run_json(demo_scene, feature_model,
                                                                    pixel_model, tmp_path):
    from pipeline.config import RunConfig
    from pipeline.segment.plan import plan_segment
    from pipeline.segment.summary import manifest

    def plan(model, precision):
        cfg = RunConfig.model_validate({"model": {"precision": precision}})
        return plan_segment(str(demo_scene[0]), str(model), str(tmp_path / "o"), cfg)

    fp32, bf16 = plan(feature_model, "fp32"), plan(feature_model, "bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert fp32.fingerprint != bf16.fingerprint  # a resume never mixes the two
    assert manifest(bf16, "running", {})["precision"] == "bf16"
    assert plan(feature_model, "auto").precision == resolved_precision("auto", "cpu")
    # no backbone, nothing to autocast
    assert plan(pixel_model, "bf16").precision == "fp32"
    assert plan(pixel_model, "bf16").fingerprint == plan(pixel_model, "fp32").fingerprint


def test_bf16_inference_runs_and_agrees_with_float32(demo_scene, feature_model):
    info = open_raster_info(demo_scene[0])
    model = load_model(feature_model)
    blk = Block(0, 0, 0, 0, 0, 128, 128)
    args = (model, info, compute_scaling(info), TileGrid(64, 16), blk, 4, "cpu")
    fp32 = segment_block(*args, precision="fp32").labels
    bf16 = segment_block(*args, precision="bf16").labels
    assert (fp32 == bf16).mean() > 0.9


def test_batch_size_fills_a_share_of_free_memory():
    gib = 2**30
    assert choose_batch_size(40 * gib, gib) == 24  # 60 % of 40 GiB at 1 GiB per tile
    assert choose_batch_size(40 * gib, gib // 100) == 64  # capped
    assert choose_batch_size(gib, 2 * gib) == 1  # never zero


def test_auto_batch_size_on_cpu_is_the_cpu_default(pixel_model):
    assert auto_batch_size(load_model(pixel_model), 64, "cpu") == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_measures_the_gpu(feature_model):
    model = load_model(feature_model).to("cuda")
    assert 1 <= auto_batch_size(model, 64, "cuda") <= 64


def test_block_tasks_ask_for_a_gpu_when_the_model_runs_on_cuda():
    from pipeline.config import DaskConfig

    assert task_resources(DaskConfig(), "cuda") == {"GPU": 1}
    assert task_resources(DaskConfig(), "cpu") is None
    assert task_resources(DaskConfig(resources={"GPU": 2}), "cpu") == {"GPU": 2}
    assert task_resources(DaskConfig(resources={}), "cuda") is None


def _gpus_left(_: int) -> float:
    from distributed import get_worker

    return get_worker().state.available_resources["GPU"]


def test_a_task_annotated_with_a_gpu_holds_its_workers_gpu_while_it_runs():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      resources={"GPU": 1}, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        held = map_unordered(client, _gpus_left, [1, 2, 3], resources={"GPU": 1})
        free = map_unordered(client, _gpus_left, [1])
    assert held == [0, 0, 0]  # one GPU per worker: annotated blocks run one at a time
    assert free == [1]


def test_attention_uses_pytorch_sdpa():
    from pipeline.models.backbone import build_backbone, uses_fused_attention

    model, _ = build_backbone("vit_small_patch8_224.dino", "random", TINY_VIT)
    assert uses_fused_attention(model)


def test_compile_wraps_the_backbone_feature_pass(feature_model):
    model = cached_model(str(feature_model), model_hash(feature_model), "cpu", compile=True)
    assert hasattr(model.backbone.forward_features, "_torchdynamo_orig_callable")
    plain = cached_model(str(feature_model), model_hash(feature_model), "cpu")
    assert not hasattr(plain.backbone.forward_features, "_torchdynamo_orig_callable")


def test_compile_of_a_model_without_a_backbone_is_a_clear_error(demo_scene, pixel_model,
                                                                 tmp_path):
    from pipeline.config import RunConfig
    from pipeline.errors import InputError
    from pipeline.segment.plan import plan_segment

    cfg = RunConfig.model_validate({"model": {"compile": True}})
    with pytest.raises(InputError, match="no backbone to compile"):
        plan_segment(str(demo_scene[0]), str(pixel_model), str(tmp_path / "o"), cfg)



def test_fit_extracts_features_in_the_run_precision_and_caches_them_apart(demo_scene,
                                                                         feature_model):
    from pipeline.fit.feature_cache import cache_key
    from pipeline.fit.methods import extract_features
    from pipeline.io.crops import sample_crops

    info = open_raster_info(demo_scene[0])
    crops = sample_crops([(info, compute_scaling(info))], 2, 64, seed=0)
    model = load_model(feature_model)
    fp32 = extract_features(model, crops, precision="fp32")
    bf16 = extract_features(model, crops, precision="bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and fp32.shape == bf16.shape
    assert not torch.equal(fp32, bf16)  # the backbone really ran in bf16
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=1).min() > 0.99
    ids = [("scene.tif", 0, 0)]
    assert cache_key(ids, 64, 1.0, "w", "fp32") != cache_key(ids, 64, 1.0, "w", "bf16")


def test_on_the_cpu_bands_are_read_in_the_calling_thread_not_ahead(demo_scene, pixel_model,
                                                                   monkeypatch):
    # torch already uses every core there; a read-ahead thread would only slow the model
    import threading

    import pipeline.segment.inference as inference

    readers = []
    real = inference.read_window

    def spy(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "read_window", spy)
    info = open_raster_info(demo_scene[0])
    blk = Block(0, 0, 0, 0, 0, 256, 256)
    segment_block(load_model(pixel_model), info, compute_scaling(info), TileGrid(64, 16), blk,
                  4, "cpu")
    assert len(readers) > 1 and set(readers) == {threading.current_thread().name}
