"""`stego pretrain`: DINO self-supervised pretraining on the user's rasters, its checkpoints and
resume, the backbone directory it writes, and using that directory as weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import main
from pipeline.config import PretrainConfig
from pipeline.errors import InputError
from pipeline.io.crops import read_crop, sample_crop_windows
from pipeline.io.raster import compute_scaling, open_raster_info
from pipeline.pretrain.augment import ViewSpec, make_views
from pipeline.pretrain.loop import CropPool, pretrain, read_pool
from tests.conftest import TINY_VIT, write_raster

TINY_ARGS = [a for k, v in TINY_VIT.items() for a in ("--backbone-arg", f"{k}={v}")]
SMALL_RECIPE = ["--set", "pretrain.batch_size=4", "--set", "pretrain.pool_crops=8",
                "--set", "pretrain.source_size=64", "--set", "pretrain.global_size=32",
                "--set", "pretrain.local_size=16", "--set", "pretrain.out_dim=64",
                "--set", "pretrain.log_every=1"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (see conftest)."""


def textures(n: int = 16, size: int = 64) -> CropPool:
    """Two planted textures (fine stripes, coarse checkers) in random colours."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = ((yy // 4) % 2).float()
    checkers = (((yy // 8) + (xx // 8)) % 2).float()
    imgs = [torch.rand(3, 1, 1, generator=g) * 0.5 + 0.5 * (stripes if i % 2 else checkers)
            for i in range(n)]
    return CropPool(torch.stack(imgs), (0.5,) * 3, (0.25,) * 3)


def tiny_recipe(**kw) -> PretrainConfig:
    base = {"overrides": TINY_VIT, "steps": 6, "batch_size": 4, "pool_crops": 16,
            "source_size": 64, "global_size": 32, "local_size": 16, "local_views": 2,
            "out_dim": 64, "checkpoint_every": 1, "log_every": 1}
    return PretrainConfig(**{**base, **kw})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_pool_is_normalised_by_its_valid_pixels_and_holes_hold_their_mean(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 160, 160), dtype=np.uint8)
    data[:, :40, :] = 255  # a nodata band across the top: bright, so it would bias the mean
    path = write_raster(tmp_path / "holes.tif", data, nodata=255)
    rasters = [(info, compute_scaling(info)) for info in [open_raster_info(str(path), None)]]
    cfg = PretrainConfig(pool_crops=12, source_size=64, global_size=32, local_size=16,
                         max_nodata_fraction=0.9)
    pool = read_pool(rasters, cfg)
    crops = [read_crop(rasters, w) for w in sample_crop_windows(rasters, 12, 64, cfg.seed, 0.9)]
    images = np.stack([c.image for c in crops]).transpose(1, 0, 2, 3)  # (band, crop, y, x)
    valid = np.stack([c.valid for c in crops])
    assert (~valid).any() and valid.any()
    pixels = images[:, valid].astype(np.float64)
    assert pool.mean == pytest.approx(tuple(pixels.mean(1)), abs=1e-4)
    assert pool.std == pytest.approx(tuple(pixels.std(1)), abs=1e-4)
    holes = pool.images.numpy().transpose(1, 0, 2, 3)[:, ~valid]
    assert np.allclose(holes, np.asarray(pool.mean)[:, None], atol=1e-4)
    kept = pool.images.numpy().transpose(1, 0, 2, 3)[:, valid]
    assert np.array_equal(kept, images[:, valid])


def _pixel_stats(pool: CropPool, shared: bool) -> tuple[np.ndarray, np.ndarray]:
    pixels = pool.images.numpy().transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    if shared:
        return np.full(3, pixels.mean()), np.full(3, pixels.std())
    return pixels.mean(1), pixels.std(1)


@pytest.mark.parametrize("recipe,expected", [
    ({"normalisation": "imagenet"}, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    ({"normalisation": {"mean": (0.25, 0.3, 0.35), "std": (0.1, 0.2, 0.3)}},
     ((0.25, 0.3, 0.35), (0.1, 0.2, 0.3))),
    ({"normalisation": "pool-shared"}, "shared"),  # one mean and std over all bands
    ({"normalisation_offset": 0.5}, "offset"),  # mean - 0.5 std: inputs sit 0.5 std above 0
])
def test_the_recipe_can_fix_the_normalisation_instead_of_the_pools_own(tmp_path, recipe,
                                                                       expected):
    data = np.random.default_rng(0).integers(0, 200, (3, 128, 128), dtype=np.uint8)
    path = write_raster(tmp_path / "scene.tif", data)
    rasters = [(info, compute_scaling(info)) for info in [open_raster_info(str(path), None)]]
    small = {"pool_crops": 4, "source_size": 64, "global_size": 32, "local_size": 16}
    own = read_pool(rasters, PretrainConfig(**small))
    fixed = read_pool(rasters, PretrainConfig(**recipe, **small))
    if isinstance(expected, str):
        mean, std = _pixel_stats(own, shared=expected == "shared")
        expected = (tuple(mean - 0.5 * std if expected == "offset" else mean), tuple(std))
    assert fixed.mean + fixed.std == pytest.approx(expected[0] + expected[1], abs=2e-4)
    assert (fixed.mean, fixed.std) != (own.mean, own.std)
    assert torch.equal(fixed.images, own.images)  # the crops themselves do not change


def test_views_are_seeded_augmented_crops_in_the_unit_range():
    imgs = textures(4).images
    spec = ViewSpec(32, (0.2, 1.0), blur_p=0.5)
    a = make_views(imgs, spec, torch.Generator().manual_seed(1))
    b = make_views(imgs, spec, torch.Generator().manual_seed(1))
    c = make_views(imgs, spec, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_the_student_learns_to_match_a_fixed_teacher():
    # teacher frozen (momentum 1) and no centring: plain distillation, so the loss must fall
    cfg = tiny_recipe(steps=40, batch_size=16, momentum=1.0, center_momentum=1.0,
                      teacher_temp=(0.04, 0.04), checkpoint_every=100)
    _, progress = _run(cfg, textures(32))
    losses = [h["loss"] for h in progress.history]
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.1


def _run(cfg: PretrainConfig, pool: CropPool, work: Path | None = None, **kw):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return pretrain(pool, cfg, work or Path(tmp), "key", log=lambda s: None, **kw)


def test_a_seed_gives_the_same_backbone_and_another_seed_another():
    a, _ = _run(tiny_recipe(steps=3), textures())
    b, _ = _run(tiny_recipe(steps=3), textures())
    c, _ = _run(tiny_recipe(steps=3, seed=1), textures())
    assert same_weights(a.teacher, b.teacher) and not same_weights(a.teacher, c.teacher)


def _interrupt_at_step_4(cfg: PretrainConfig, work_dir: Path) -> None:
    """Run ``cfg`` into ``work_dir`` and stop it (an exception) when step 4 is done."""

    class Killed(Exception):
        pass

    def kill_at_4(step: int) -> None:
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        pretrain(textures(), cfg, work_dir, "key", log=lambda s: None, on_step=kill_at_4)


@pytest.mark.parametrize("objective", ["dino", "ibot"])
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(tmp_path, objective):
    cfg = tiny_recipe(steps=6, objective=objective)
    straight, _ = _run(cfg, textures())
    _interrupt_at_step_4(cfg, tmp_path)
    lines: list[str] = []
    resumed, progress = pretrain(textures(), cfg, tmp_path, "key", log=lines.append)
    assert "resuming at step 4/6" in lines[0] and progress.step == 6
    assert same_weights(straight.teacher, resumed.teacher)
    assert same_weights(straight.student, resumed.student)
    assert torch.equal(straight.center, resumed.center)
    if objective == "ibot":
        assert same_weights(straight.teacher_patch_head, resumed.teacher_patch_head)
        assert same_weights(straight.mask_token, resumed.mask_token)
        assert torch.equal(straight.patch_center, resumed.patch_center)


def test_a_checkpoint_of_another_recipe_is_not_resumed(tmp_path):
    pretrain(textures(), tiny_recipe(steps=2), tmp_path, "recipe-a", log=lambda s: None)
    lines: list[str] = []
    _, progress = pretrain(textures(), tiny_recipe(steps=2), tmp_path, "recipe-b",
                           log=lines.append)
    assert "starting over" in lines[0] and progress.step == 2


def test_a_minutes_budget_plans_the_steps_from_the_measured_speed():
    _, progress = _run(tiny_recipe(steps=None, minutes=0.02), textures())
    assert progress.step == progress.total >= 1
    assert progress.seconds <= 0.02 * 60 * 1.25 + 5


@pytest.fixture(scope="module")
def pretrained_dir(prefect_harness, demo_scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backbone")
    code = main(["pretrain", str(demo_scene[0]), "--out", str(out), "--steps", "3",
                 *TINY_ARGS, *SMALL_RECIPE, "-q"])
    assert code == 0
    return out


def test_pretrain_writes_safetensors_and_a_description(pretrained_dir, demo_scene):
    meta = json.loads((pretrained_dir / "backbone.json").read_text())
    assert (pretrained_dir / "backbone.safetensors").stat().st_size > 0
    assert not list(pretrained_dir.glob("*.pth")) and not list(pretrained_dir.glob("*.pt"))
    assert meta["timm_name"] == "vit_small_patch8_224" and meta["overrides"] == TINY_VIT
    assert meta["patch_size"] == 8 and meta["feature_dim"] == 64 and meta["steps"] == 3
    assert meta["inputs"][0]["identity"]["kind"] == "sha256"
    assert meta["inputs"][0]["path"] == str(Path(demo_scene[0]).resolve())
    assert len(meta["normalisation"]["mean"]) == 3 and min(meta["normalisation"]["std"]) > 0
    assert [h["step"] for h in meta["losses"]] == [1, 2, 3]
    assert {"loss", "teacher_entropy", "teacher_batch_entropy"} <= set(meta["losses"][0])
    assert meta["recipe"]["objective"] == "dino"  # the default: no patch head, no patch entropy
    assert "patch_entropy" not in meta["losses"][0]
    assert meta["recipe"]["batch_size"] == 4 and meta["precision"] == "fp32"


def test_a_pretrained_directory_is_used_as_weights_by_fit_and_segment(
        pretrained_dir, demo_scene, tmp_path):
    from tests.flows.test_end_to_end import SMALL

    model = tmp_path / "m"
    code = main(["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--clusters", "3",
                 "--weights", str(pretrained_dir), "--out", str(model),
                 "--set", "fit.crops=4", "--set", "fit.crop_size=64", "-q"])
    assert code == 0
    meta = json.loads((model / "model.json").read_text())
    backbone = meta["backbone"]
    described = json.loads((pretrained_dir / "backbone.json").read_text())
    assert backbone["name"] == "vit_small_patch8_224" and backbone["overrides"] == TINY_VIT
    assert backbone["weights"]["source"] == "directory"
    assert backbone["weights"]["sha256"] == described["weights_sha256"]
    assert backbone["weights"]["normalisation"]["mean"] == described["normalisation"]["mean"]
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    assert main(["segment", str(demo_scene[0]), "--model", str(model), "--out",
                 str(tmp_path / "o"), "--config", str(cfg), "-q"]) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["model"]["weights"]["source"] == "directory"
    assert run["model"]["weights"]["path"] == str(pretrained_dir.resolve())


def test_the_backbone_keeps_the_directorys_own_normalisation(pretrained_dir):
    from pipeline.models.backbone import build_backbone, normalisation

    net, provenance = build_backbone("ignored-name", str(pretrained_dir))
    described = json.loads((pretrained_dir / "backbone.json").read_text())
    assert normalisation(net) == (tuple(described["normalisation"]["mean"]),
                                  tuple(described["normalisation"]["std"]))
    assert provenance["steps"] == 3 and provenance["method"] == "dino"


def test_bad_backbone_directories_are_one_line_errors(pretrained_dir, tmp_path):
    import shutil

    from pipeline.models.backbone import build_backbone

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a backbone directory"):
        build_backbone("x", str(empty))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(pretrained_dir, corrupt)
    (corrupt / "backbone.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt backbone.json"):
        build_backbone("x", str(corrupt))
    wrong = tmp_path / "wrong"
    shutil.copytree(pretrained_dir, wrong)
    meta = json.loads((wrong / "backbone.json").read_text())
    meta["overrides"] = {**TINY_VIT, "depth": 3}
    (wrong / "backbone.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="backbone weights do not fit"):
        build_backbone("x", str(wrong))
    cut = tmp_path / "cut"
    shutil.copytree(pretrained_dir, cut)
    (cut / "backbone.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match="corrupt backbone weights"):
        build_backbone("x", str(cut))


@pytest.mark.parametrize("argv,expected", [
    (["pretrain", "MISSING", "--out", "o", "--steps", "1"], "file not found"),
    (["pretrain", "SCENE", "--out", "o", "--steps", "0"], "steps must be >= 1"),
    (["pretrain", "SCENE", "--out", "o", "--minutes", "-1"], "minutes must be > 0"),
    (["pretrain", "SCENE", "--out", "o", "--set", "pretrain.global_size=500"],
     "local_size <= global_size <= source_size"),
    (["pretrain", "SCENE", "--out", "o", "--set", "pretrain.normalisation.mean=[0.3,0.3,0.3]",
      "--set", "pretrain.normalisation.std=[0.1,0,0.1]"],
     "config key 'pretrain.normalisation.std': every std must be > 0"),
    (["pretrain", "SCENE", "--out", "o", "--set", "pretrain.normalisation=median"],
     "config key 'pretrain.normalisation': Input should be 'pool', 'pool-shared' or "
     "'imagenet'; or a valid dictionary"),
])
def test_bad_pretrain_input_is_one_line_with_exit_code_2(demo_scene, tmp_path, capsys, argv,
                                                         expected):
    argv = [str(demo_scene[0]) if a == "SCENE" else str(tmp_path / a)
            if a in ("MISSING", "o") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "o" / "backbone.json").exists()


def test_a_pretraining_killed_with_sigkill_resumes_to_the_uninterrupted_backbone(
        prefect_harness, demo_scene, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    args = [str(demo_scene[0]), "--steps", "8", *TINY_ARGS, *SMALL_RECIPE,
            "--set", "pretrain.checkpoint_every=1", "-q"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["pretrain", *args, "--out", str(straight)]) == 0
    # one torch thread, as in this process (float sums depend on the thread count)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "pretrain", *args, "--out",
                             str(killed)], cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    state = killed / ".pretrain" / "checkpoint.json"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if json.loads(state.read_text())["step"] >= 3:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "backbone.safetensors").exists()  # nothing half-written at the end
    assert main(["pretrain", *args, "--out", str(killed)]) == 0
    a = json.loads((straight / "backbone.json").read_text())
    b = json.loads((killed / "backbone.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"] and b["steps"] == 8
    assert (straight / "backbone.safetensors").read_bytes() == \
        (killed / "backbone.safetensors").read_bytes()


def test_a_kill_between_the_tensors_and_the_json_of_a_checkpoint_resumes_exactly(tmp_path):
    """A checkpoint's tensors get a file of their own, named by checkpoint.json: a run killed
    after writing newer tensors but before their JSON resumes from the JSON's (older) step
    with that step's tensors, to the uninterrupted weights."""
    from safetensors.torch import load_file, save_file

    cfg = tiny_recipe(steps=6)
    straight, _ = _run(cfg, textures())
    _interrupt_at_step_4(cfg, tmp_path)
    doc = json.loads((tmp_path / "checkpoint.json").read_text())
    assert doc["step"] == 4 and (tmp_path / doc["tensors"]).is_file()
    # what a kill inside the next save leaves: step 5's tensors renamed into place, no JSON
    newer = {k: v + 1 if v.is_floating_point() else v
             for k, v in load_file(str(tmp_path / doc["tensors"])).items()}
    save_file(newer, str(tmp_path / "checkpoint-00000005.safetensors"))
    resumed, progress = pretrain(textures(), cfg, tmp_path, "key", log=lambda s: None)
    assert progress.step == 6 and same_weights(straight.teacher, resumed.teacher)
    assert [p.name for p in tmp_path.glob("checkpoint-*.safetensors")] == [
        "checkpoint-00000006.safetensors"]
