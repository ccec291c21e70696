"""Pretraining checkpoints: every tensor of the run (student, teacher, heads, AdamW moments,
centre, random-generator state) in safetensors, the rest in JSON; written atomically, so a kill
at any moment leaves the previous checkpoint intact. Never a pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.io.files import write_text_atomic
from pipeline.pretrain.nets import Nets, Progress

TENSORS = "checkpoint.safetensors"  # the name before checkpoints named their step
STATE = "checkpoint.json"


def _tensors_name(step: int) -> str:
    """Each checkpoint's tensors get their own file, named in checkpoint.json: a kill between
    writing the tensors and the JSON leaves the JSON naming the previous, intact tensors."""
    return f"checkpoint-{step:08d}.safetensors"


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            out[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def save_state(work_dir: Path, key: str, nets: Nets, gen: torch.Generator,
               progress: Progress) -> None:
    """Write the checkpoint (tensors, then JSON naming them), each under a temporary name."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous()
               for prefix, module in nets.modules().items()
               for k, v in module.state_dict().items()}
    tensors.update(_optimizer_tensors(nets.optimizer))
    tensors["center"] = nets.center.detach().cpu().contiguous()
    if nets.patch_center is not None:
        tensors["patch_center"] = nets.patch_center.detach().cpu().contiguous()
    tensors["generator"] = gen.get_state()
    name = _tensors_name(progress.step)
    doc = {"key": key, "step": progress.step, "total": progress.total,
           "seconds": progress.seconds, "history": progress.history, "tensors": name}
    pid = os.getpid()
    tmp_t, tmp_j = work_dir / f".{name}.tmp-{pid}", work_dir / f".{STATE}.tmp-{pid}"
    try:
        save_file(tensors, str(tmp_t))
        tmp_j.write_text(json.dumps(doc))
        os.replace(tmp_t, work_dir / name)
        # the JSON is renamed last and names its own tensors: checkpoint.json always
        # describes a complete set, whenever the run is killed
        os.replace(tmp_j, work_dir / STATE)
    finally:
        for t in (tmp_t, tmp_j):
            t.unlink(missing_ok=True)
    for old in [work_dir / TENSORS, *work_dir.glob("checkpoint-*.safetensors")]:
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(work_dir: Path, key: str, nets: Nets, gen: torch.Generator) -> Progress | None:
    """Restore a checkpoint with the same ``key`` into ``nets`` and ``gen``; None when there is
    none, it is unreadable or it belongs to another recipe or inputs."""
    try:
        doc = json.loads((work_dir / STATE).read_text())
        tensors = load_file(str(work_dir / doc.get("tensors", TENSORS)))
    except (OSError, json.JSONDecodeError, SafetensorError):
        return None
    if doc.get("key") != key:
        return None
    device = nets.center.device
    for prefix, module in nets.modules().items():
        sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")
               and not k.startswith(prefix + "_head.")}
        module.load_state_dict(sub, strict=True)
    opt_state = nets.optimizer.state_dict()
    restored: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, idx, field = name.split(".", 2)
            restored.setdefault(int(idx), {})[field] = value if field == "step" else \
                value.to(device)
    opt_state["state"] = restored
    nets.optimizer.load_state_dict(opt_state)
    nets.center = tensors["center"].to(device)
    if nets.patch_center is not None:
        nets.patch_center = tensors["patch_center"].to(device)
    gen.set_state(tensors["generator"])
    return Progress(doc["step"], doc["total"], doc["seconds"], doc["history"])


def mark_interrupted(work_dir: Path, at_step: int) -> dict | None:
    """Record in ``checkpoint.json`` that the run was interrupted at ``at_step`` (a re-run
    resumes from the checkpoint's own step); None when there is no checkpoint yet."""
    path = work_dir / STATE
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    doc.update(status="interrupted", interrupted_at_step=at_step)
    write_text_atomic(path, json.dumps(doc))
    return doc
