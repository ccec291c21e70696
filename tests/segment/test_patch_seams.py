"""Backbones with patch 14 (DINOv2) and 16 (DINOv3): tiles and overlaps snapped to the patch,
blocks still seamless, a preset's ground sampling distance applied identically at fit and
segment, and what ran recorded in model.json and run.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flows.cli import main
from pipeline.fit.methods import fit_feature_kmeans
from pipeline.io.crops import sample_crops
from pipeline.io.raster import compute_scaling, open_raster_info
from pipeline.models.store import load_model, save_model
from pipeline.tiling import TileGrid, plan_blocks, snap_to_patch
from tests.conftest import write_raster
from tests.segment.test_inference import _segment

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--backbone-arg", f"{k}={v}")]


def test_tiles_and_overlaps_snap_to_the_patch():
    assert snap_to_patch(544, 32, 8) == (544, 32)  # the defaults already fit DINO's patch 8
    assert snap_to_patch(544, 32, 16) == (544, 32)
    assert snap_to_patch(544, 32, 14) == (532, 28)
    assert snap_to_patch(64, 16, 28) == (56, 28)  # overlap at most half the tile
    assert snap_to_patch(20, 8, 14) == (14, 0)
    for tile, lap, p in [(544, 32, 14), (300, 40, 16), (97, 13, 28)]:
        t, o = snap_to_patch(tile, lap, p)
        assert t % p == 0 and o % p == 0 and (t - o) % p == 0 and 0 <= o <= t // 2


@pytest.mark.parametrize("backbone, grid", [
    ("vit_small_patch14_reg4_dinov2.lvd142m", TileGrid(56, 14)),
    ("vit_small_patch16_dinov3.lvd1689m", TileGrid(64, 16)),
], ids=["patch14", "patch16"])
def test_block_seams_leave_no_trace_with_patch_14_and_16(demo_scene, tmp_path, backbone, grid):
    info = open_raster_info(demo_scene[0])
    size = grid.tile
    crops = sample_crops([(info, compute_scaling(info))], 6, size, seed=0)
    model, _ = fit_feature_kmeans(crops, 4, backbone, "random", TINY, iterations=5, seed=0)
    model = load_model(save_model(model, tmp_path / "m", {}))
    assert model.patch_size == size // 4
    grid = TileGrid(grid.tile, grid.overlap, shape=(info.height, info.width))
    one, conf_one = _segment(model, info, grid, 512)
    many, conf_many = _segment(model, info, grid, 2 * grid.stride)
    odd, _ = _segment(model, info, grid, 80)  # not aligned with the tile grid
    assert len(plan_blocks(info.height, info.width, 2 * grid.stride)) > 9
    np.testing.assert_array_equal(many, one)
    np.testing.assert_array_equal(odd, one)
    assert np.abs(conf_many.astype(int) - conf_one).max() <= 1


def test_a_presets_gsd_runs_the_backbone_at_it_in_fit_and_segment(
        prefect_harness, demo_scene, tmp_path):
    model_dir = tmp_path / "m"
    assert main(["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--clusters", "3",
                 "--backbone", "dinov2-s14", "--weights", "random", *TINY_ARGS,
                 "--set", "fit.crops=4", "--set", "fit.crop_size=112",
                 "--out", str(model_dir)]) == 0
    meta = json.loads((model_dir / "model.json").read_text())
    # the demo scene is 5 cm; the DINOv2 preset runs at 10 cm: tiles resampled by 0.5
    assert meta["fit"]["gsd"] == {"target": 0.1, "raster": 0.05, "input_scale": 0.5,
                                  "from": "preset dinov2-s14"}
    assert meta["params"]["input_scale"] == 0.5 and meta["patch_size"] == 28
    backbone = meta["backbone"]
    assert backbone["name"] == "vit_small_patch14_dinov2.lvd142m"
    assert backbone["preset"] == "dinov2-s14" and backbone["prefix_tokens"] == 1
    assert backbone["normalisation"] == {"mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225]}
    out = tmp_path / "o"
    assert main(["segment", str(demo_scene[0]), "--model", str(model_dir), "--out", str(out),
                 "--set", "vectorize.enabled=false"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["tiling"]["tile_size"] == 532 and run["config"]["tiling"]["overlap"] == 28
    assert any("snapped to 532 / 28" in w for w in run["warnings"])
    assert run["model"]["backbone"]["normalisation"] == backbone["normalisation"]


def test_gsd_native_keeps_the_rasters_own_resolution(prefect_harness, demo_scene, tmp_path):
    model_dir = tmp_path / "m"
    assert main(["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--clusters", "3",
                 "--backbone", "dinov3-s16", "--weights", "random", *TINY_ARGS, "--gsd", "native",
                 "--set", "fit.crops=4", "--set", "fit.crop_size=64",
                 "--out", str(model_dir)]) == 0
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["fit"]["gsd"] is None and "input_scale" not in meta["params"]
    assert meta["patch_size"] == 16 and meta["backbone"]["prefix_tokens"] == 5


def test_a_gsd_for_a_raster_without_crs_is_a_one_line_error(tmp_path, capsys):
    path = write_raster(tmp_path / "nocrs.tif",
                        np.random.default_rng(0).integers(0, 255, (3, 96, 96), dtype=np.uint8),
                        crs=None)
    code = main(["fit", str(path), "--method", "feature-kmeans", "--weights", "random",
                 *TINY_ARGS, "--gsd", "0.6", "--out", str(tmp_path / "m")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {path}: has no CRS, so --gsd 0.6 cannot be applied "
                       "(set stego.input_scale instead)")
    assert not (tmp_path / "m" / "model.json").exists()


def test_stego_trains_and_segments_on_a_dinov3_backbone(prefect_harness, demo_scene, tmp_path):
    model_dir = tmp_path / "m"
    assert main(["fit", str(demo_scene[0]), "--method", "stego", "--clusters", "3",
                 "--backbone", "dinov3-s16", "--weights", "random", *TINY_ARGS,
                 "--backbone-arg", "embed_dim=48", "--gsd", "native",
                 "--set", "fit.crops=8", "--set", "fit.crop_size=64", "--set", "stego.steps=4",
                 "--set", "stego.batch_size=4", "--out", str(model_dir)]) == 0
    model = load_model(model_dir)
    assert model.backbone.num_features == 48 and model.head.in_dim == 48  # sized from the dim
    assert model.backbone.num_prefix_tokens == 5 and model.patch_size == 16
    out = tmp_path / "o"
    assert main(["segment", str(demo_scene[0]), "--model", str(model_dir), "--out", str(out),
                 "--set", "vectorize.enabled=false"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["backbone"]["preset"] == "dinov3-s16"
    assert run["model"]["backbone"]["feature_dim"] == 48
