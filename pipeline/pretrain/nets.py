"""What a pretraining run trains and where it stands: the student and EMA teacher with their
DINO heads, optimizer and centre, and the progress every checkpoint records."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from pipeline.config import PretrainConfig
from pipeline.models.backbone import create_vit
from pipeline.pretrain import dino


@dataclass
class Nets:
    """Student and EMA teacher (backbone + DINO head each), optimizer and centre."""

    student: torch.nn.Module
    student_head: torch.nn.Module
    teacher: torch.nn.Module
    teacher_head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    center: torch.Tensor

    def modules(self) -> dict[str, torch.nn.Module]:
        """The four trained modules by checkpoint prefix."""
        return {"student": self.student, "student_head": self.student_head,
                "teacher": self.teacher, "teacher_head": self.teacher_head}


def build_nets(cfg: PretrainConfig, seed: int, device: str) -> Nets:
    """Fresh student (seeded), teacher = copy of the student, AdamW with no decay on biases
    and norms (as DINO)."""
    torch.manual_seed(seed)
    student = create_vit(cfg.backbone, dict(cfg.overrides)).train().requires_grad_(True)
    head = dino.DinoHead(student.num_features, cfg.out_dim)
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    teacher_head = copy.deepcopy(head).requires_grad_(False)
    params = [p for m in (student, head) for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr)
    nets = Nets(student.to(device), head.to(device), teacher.to(device),
                teacher_head.to(device), opt, torch.zeros(1, cfg.out_dim, device=device))
    return nets


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    total: int | None = None
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
