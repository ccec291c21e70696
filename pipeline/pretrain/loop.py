"""The pretraining loop: a pool of crops from the user's rasters, DINO steps within a budget
(steps or minutes), progress, and checkpoints a killed run resumes from exactly."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import PretrainConfig
from pipeline.io.crops import read_crops, sample_crop_windows
from pipeline.io.raster import RasterInfo, Scaling
from pipeline.models.backbone import patch_size, tensor_hash
from pipeline.models.presets import IMAGENET
from pipeline.pretrain import dino, ibot
from pipeline.pretrain.augment import ViewSpec, make_views
from pipeline.pretrain.checkpoint import load_state, mark_interrupted, save_state
from pipeline.pretrain.nets import Nets, Progress, build_nets

Log = Callable[[str], None]
Triple = tuple[float, float, float]
POOL_SOURCE = "the pretraining crops' valid pixels"


@dataclass
class CropPool:
    """Crops read once from the rasters (N, 3, S, S) in [0, 1], and their channel statistics."""

    images: torch.Tensor
    mean: Triple
    std: Triple
    source: str = POOL_SOURCE


def _triple(values: np.ndarray) -> Triple:
    r, g, b = (round(float(v), 4) for v in np.broadcast_to(values, 3))
    return r, g, b


def chosen_normalisation(cfg: PretrainConfig, pool_mean: np.ndarray, pool_std: np.ndarray
                         ) -> tuple[Triple, Triple, str]:
    """The mean, std and their source that ``cfg.normalisation`` asks for."""
    shift = cfg.normalisation_offset
    note = f", offset {shift:g} std" if shift else ""
    if cfg.normalisation == "pool":
        return (_triple(pool_mean - shift * pool_std), _triple(pool_std),
                f"{POOL_SOURCE}{note}")
    if cfg.normalisation == "pool-shared":  # one mean and std for all bands
        mean = pool_mean.mean()
        std = np.sqrt(np.mean(pool_std**2 + (pool_mean - mean) ** 2))
        return (_triple(mean - shift * std), _triple(std),
                f"{POOL_SOURCE}, all bands together{note}")
    if cfg.normalisation == "imagenet":
        return IMAGENET[0], IMAGENET[1], "ImageNet (DINO's own)"
    return cfg.normalisation.mean, cfg.normalisation.std, "fixed in the recipe"


def read_pool(rasters: list[tuple[RasterInfo, Scaling]], cfg: PretrainConfig) -> CropPool:
    """Seeded crops across all rasters (by area), mostly-nodata crops skipped; nodata pixels
    hold the valid mean so they carry no texture. Mean and std: ``cfg.normalisation``."""
    windows = sample_crop_windows(rasters, cfg.pool_crops, cfg.source_size, cfg.seed,
                                  cfg.max_nodata_fraction)
    size = cfg.source_size
    images = torch.empty((len(windows), 3, size, size))
    pool = images.numpy()  # filled in place: one copy of the pool, no stacked temporaries
    sums, squares, count, holes = np.zeros(3), np.zeros(3), 0, []
    for i, crop in enumerate(read_crops(rasters, windows)):
        pool[i] = crop.image
        pixels = crop.image[:, crop.valid].astype(np.float64)  # float64: no drift over 10^7
        sums += pixels.sum(1)
        squares += np.square(pixels).sum(1)
        count += pixels.shape[1]
        holes.append(~crop.valid)
    mean = sums / count
    std = np.maximum(np.sqrt(np.maximum(squares / count - mean**2, 0.0)), 1e-3)
    for i, hole in enumerate(holes):
        if hole.any():
            pool[i][:, hole] = mean[:, None].astype(np.float32)
    norm_mean, norm_std, source = chosen_normalisation(cfg, mean, std)
    return CropPool(images, norm_mean, norm_std, source)


def recipe_key(cfg: PretrainConfig, inputs: list[dict[str, Any]], device: str) -> str:
    """Identity of a run: recipe, inputs (content and scaling) and device kind; a checkpoint
    with another key is not resumed."""
    recipe = cfg.model_dump(mode="json")
    recipe.pop("minutes", None)  # the budget may be extended on resume
    recipe.pop("steps", None)
    doc = {"recipe": recipe, "inputs": inputs, "device": device.split(":")[0]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _views(pool: torch.Tensor, idx: torch.Tensor, cfg: PretrainConfig,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """2 global views (second with less blur, as DINO) and ``local_views`` local views."""
    src = pool[idx]
    colour = {"jitter_p": cfg.jitter_p, "gray_p": cfg.grayscale_p}
    g1 = make_views(src, ViewSpec(cfg.global_size, cfg.global_scale, 1.0, **colour), gen)
    g2 = make_views(src, ViewSpec(cfg.global_size, cfg.global_scale, 0.1, **colour), gen)
    spec = ViewSpec(cfg.local_size, cfg.local_scale, 0.5, **colour)
    loc = [make_views(src, spec, gen) for _ in range(cfg.local_views)]
    return torch.cat([g1, g2]), torch.cat(loc) if loc else src.new_zeros(0, 3, 1, 1)


def train_step(nets: Nets, pool: CropPool, cfg: PretrainConfig, step: int, total: int,
               gen: torch.Generator, device: str) -> dict[str, float]:
    """One DINO step: schedules, views, loss, clipped AdamW update, centre and EMA teacher."""
    warmup = int(cfg.warmup_fraction * total)
    lr = dino.cosine_schedule(cfg.lr, cfg.min_lr, step, total, warmup)
    wd = dino.cosine_schedule(cfg.weight_decay[0], cfg.weight_decay[1], step, total)
    momentum = dino.cosine_schedule(cfg.momentum, 1.0, step, total)
    t_temp = dino.cosine_schedule(cfg.teacher_temp[1], cfg.teacher_temp[1], step, total,
                                  warmup=max(warmup, 1), warmup_start=cfg.teacher_temp[0])
    for i, group in enumerate(nets.optimizer.param_groups):
        group["lr"] = lr
        if i == 0:
            group["weight_decay"] = wd
    idx = torch.randint(pool.images.shape[0], (cfg.batch_size,), generator=gen)
    glob, loc = _views(pool.images, idx, cfg, gen)
    mean = torch.tensor(pool.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pool.std, device=device).view(1, 3, 1, 1)
    glob = (glob.to(device) - mean) / std
    masks = None
    if cfg.objective == "ibot":
        grid = cfg.global_size // patch_size(nets.student)
        masks = ibot.block_masks(glob.shape[0], grid, cfg.mask_ratio, cfg.mask_probability,
                                 gen).to(device)
    amp = device.startswith("cuda")  # bf16 on GPUs; CPUs train in float32 (bf16 backward is slow)
    with torch.autocast("cuda" if amp else "cpu", dtype=torch.bfloat16, enabled=amp):
        if masks is None:
            with torch.no_grad():
                t_out = nets.teacher_head(nets.teacher(glob)).float()
            s_out = [nets.student_head(nets.student(glob))]
        else:
            t_patch, t_out, s_patch, s_glob = _ibot_forward(nets, glob, masks)
            s_out = [s_glob]
        if loc.shape[0]:
            s_out.append(nets.student_head(nets.student((loc.to(device) - mean) / std)))
        s_all = torch.cat(s_out).float()
    loss = dino.dino_loss(s_all, t_out, nets.center, 2, cfg.student_temp, t_temp)
    row: dict[str, float] = {}
    if masks is not None:
        assert nets.patch_center is not None
        p_loss = ibot.patch_loss(s_patch.float(), t_patch.float(), nets.patch_center, masks,
                                 cfg.student_temp, t_temp)
        row["image_loss"], row["patch_loss"] = float(loss.detach()), float(p_loss.detach())
        loss = loss + cfg.patch_weight * p_loss
    nets.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for m in nets.modules().values() for p in m.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    nets.optimizer.step()
    entropy, batch_entropy = dino.teacher_entropy(t_out, nets.center, t_temp)
    nets.center = dino.update_center(nets.center, t_out, cfg.center_momentum)
    dino.ema_update(nets.teacher, nets.student, momentum)
    dino.ema_update(nets.teacher_head, nets.student_head, momentum)
    if masks is not None:
        assert nets.teacher_patch_head is not None and nets.patch_head is not None
        k = t_patch.shape[-1]
        row["patch_entropy"], row["patch_batch_entropy"] = dino.teacher_entropy(
            t_patch.float().reshape(-1, k), nets.patch_center.reshape(1, k), t_temp)
        nets.patch_center = ibot.update_patch_center(nets.patch_center, t_patch.float(),
                                                     cfg.center_momentum)
        dino.ema_update(nets.teacher_patch_head, nets.patch_head, momentum)
    return {"loss": float(loss.detach()), "teacher_entropy": entropy,
            "teacher_batch_entropy": batch_entropy, "lr": lr, **row}


def _ibot_forward(nets: Nets, glob: torch.Tensor, masks: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher patch and image logits of the global views, and the student's of the masked
    global views (patch, image)."""
    assert nets.patch_head is not None and nets.teacher_patch_head is not None
    prefix = int(nets.teacher.num_prefix_tokens)
    with torch.no_grad():
        t_tok = ibot.vit_tokens(nets.teacher, glob)
        t_out = nets.teacher_head(nets.teacher.forward_head(t_tok)).float()
        t_patch = nets.teacher_patch_head(t_tok[:, prefix:])
    s_tok = ibot.vit_tokens(nets.student, glob, masks, nets.mask_token)
    s_glob = nets.student_head(nets.student.forward_head(s_tok))
    return t_patch, t_out, nets.patch_head(s_tok[:, prefix:]), s_glob


def _plan_total(cfg: PretrainConfig, progress: Progress, step_seconds: float) -> int:
    """Steps that fit the budget: exact with ``steps``, else from the measured step time."""
    if cfg.steps is not None:
        return cfg.steps
    assert cfg.minutes is not None
    left = cfg.minutes * 60 - progress.seconds
    return max(progress.step + 1, progress.step + int(left / max(step_seconds, 1e-6)))


def _replan(cfg: PretrainConfig, progress: Progress) -> bool:
    """With a minutes budget the step count is planned after the first step, then re-planned
    from the mean step time at every log point during the first half of the budget (the speed
    of a shared machine varies); with a steps budget it never changes."""
    if progress.total is None:
        return True
    if cfg.steps is not None or cfg.minutes is None:
        return False
    early = progress.seconds < 0.5 * cfg.minutes * 60
    return early and progress.step >= 3 and progress.step % cfg.log_every == 0


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def pretrain(pool: CropPool, cfg: PretrainConfig, work_dir: Path, key: str, device: str = "cpu",
             log: Log = print, fresh: bool = False,
             on_step: Callable[[int], None] | None = None) -> tuple[Nets, Progress]:
    """Train within the budget, checkpointing to ``work_dir`` every ``checkpoint_every`` steps
    and at the end; resumes from a checkpoint with the same ``key`` (unless ``fresh``).

    With ``steps`` the result is the same for a seed whether or not the run was interrupted;
    with ``minutes`` the step count is planned from the measured speed of the first steps.
    """
    nets = build_nets(cfg, cfg.seed, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    progress = Progress()
    state_path = work_dir / "checkpoint.json"
    if not fresh and state_path.is_file():
        resumed = load_state(work_dir, key, nets, gen)
        if resumed is None:
            log(f"pretrain: {work_dir} holds a checkpoint of another recipe or inputs; "
                "starting over")
        else:
            progress = resumed
            if cfg.steps is not None:
                progress.total = cfg.steps
            log(f"pretrain: resuming at step {progress.step}/{progress.total}")
    try:
        _train_loop(nets, pool, cfg, work_dir, key, gen, progress, device, log, on_step)
    except BaseException as exc:
        if not isinstance(exc, Exception):  # SIGTERM/SIGINT/Ctrl-C: say where it resumes
            doc = mark_interrupted(work_dir, progress.step)
            start = doc["step"] if doc else 0
            log(f"pretrain: interrupted at step {progress.step}; a re-run resumes at {start}")
        raise
    return nets, progress


def _train_loop(nets: Nets, pool: CropPool, cfg: PretrainConfig, work_dir: Path, key: str,
                gen: torch.Generator, progress: Progress, device: str, log: Log,
                on_step: Callable[[int], None] | None) -> None:
    last_save = progress.step
    while progress.total is None or progress.step < progress.total:
        t0 = time.perf_counter()
        row = train_step(nets, pool, cfg, progress.step, progress.total or cfg.steps or 1000,
                         gen, device)
        dt = time.perf_counter() - t0
        progress.seconds += dt
        progress.step += 1
        if _replan(cfg, progress):
            progress.total = _plan_total(cfg, progress, progress.seconds / progress.step)
        if cfg.minutes is not None and cfg.steps is None and \
                progress.seconds > cfg.minutes * 60 * 1.25:
            log(f"pretrain: over budget at step {progress.step}/{progress.total}; stopping")
            progress.total = progress.step
        if progress.step % cfg.log_every == 0 or progress.step == progress.total:
            rate = progress.step / max(progress.seconds, 1e-9)
            eta = (progress.total - progress.step) / max(rate, 1e-9)
            progress.history.append({"step": progress.step, **row,
                                     "seconds": round(progress.seconds, 2)})
            patches = (f" patch {row['patch_entropy']:.2f} (batch {row['patch_batch_entropy']:.2f})"
                       if "patch_entropy" in row else "")
            log(f"step {progress.step}/{progress.total} loss {row['loss']:.4f} teacher entropy "
                f"{row['teacher_entropy']:.2f} (batch {row['teacher_batch_entropy']:.2f}){patches} "
                f"{rate:.2f} steps/s ETA {_fmt_eta(eta)}")
        if progress.step - last_save >= cfg.checkpoint_every or progress.step == progress.total:
            save_state(work_dir, key, nets, gen, progress)
            last_save = progress.step
        if on_step is not None:
            on_step(progress.step)


def backbone_description(nets: Nets, pool: CropPool, cfg: PretrainConfig, progress: Progress,
                         inputs: list[dict[str, Any]], device: str) -> dict[str, Any]:
    """What ``backbone.json`` records: how to build the ViT and how it was trained."""
    teacher = nets.teacher
    return {
        "timm_name": cfg.backbone,
        "overrides": dict(cfg.overrides),
        "normalisation": {"mean": list(pool.mean), "std": list(pool.std), "source": pool.source},
        "patch_size": patch_size(teacher),
        "feature_dim": int(teacher.num_features),
        "num_prefix_tokens": int(teacher.num_prefix_tokens),
        "weights_sha256": tensor_hash(teacher.state_dict()),
        "method": "dino",
        "inputs": inputs,
        "recipe": cfg.model_dump(mode="json"),
        "steps": progress.step,
        "seconds": round(progress.seconds, 1),
        "device": device,
        "precision": "bf16" if device.startswith("cuda") else "fp32",
        "losses": progress.history,
    }
