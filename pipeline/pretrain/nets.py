"""What a pretraining run trains and where it stands: the student and EMA teacher with their
DINO heads, optimizer and centre, and the progress every checkpoint records."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from pipeline.config import PretrainConfig
from pipeline.models.backbone import create_vit
from pipeline.pretrain import dino, ibot


@dataclass
class Nets:
    """Student and EMA teacher (backbone + DINO head each), optimizer and centre; with the
    ibot objective also a patch head each, the student's mask token and the patch centre."""

    student: torch.nn.Module
    student_head: torch.nn.Module
    teacher: torch.nn.Module
    teacher_head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    center: torch.Tensor
    patch_head: torch.nn.Module | None = None
    teacher_patch_head: torch.nn.Module | None = None
    mask_token: ibot.MaskToken | None = None
    patch_center: torch.Tensor | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        """The trained modules by checkpoint prefix."""
        out = {"student": self.student, "student_head": self.student_head,
               "teacher": self.teacher, "teacher_head": self.teacher_head}
        if self.patch_head is not None:
            assert self.teacher_patch_head is not None and self.mask_token is not None
            out.update(patch_head=self.patch_head, teacher_patch_head=self.teacher_patch_head,
                       mask_token=self.mask_token)
        return out


def build_nets(cfg: PretrainConfig, seed: int, device: str) -> Nets:
    """Fresh student (seeded), teacher = copy of the student, AdamW with no decay on biases
    and norms (as DINO and iBOT)."""
    torch.manual_seed(seed)
    student = create_vit(cfg.backbone, dict(cfg.overrides)).train().requires_grad_(True)
    head = dino.DinoHead(student.num_features, cfg.out_dim)
    trained: list[torch.nn.Module] = [student, head]
    patch_head = mask_token = None
    if cfg.objective == "ibot":
        # a lighter head for the patch tokens (there are ~150x more of them than images)
        patch_head = dino.DinoHead(student.num_features, cfg.patch_out_dim, hidden=384,
                                   bottleneck=128)
        mask_token = ibot.MaskToken(student.num_features)
        trained += [patch_head, mask_token]
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    teacher_head = copy.deepcopy(head).requires_grad_(False)
    params = [p for m in trained for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr)
    nets = Nets(student.to(device), head.to(device), teacher.to(device),
                teacher_head.to(device), opt, torch.zeros(1, cfg.out_dim, device=device))
    if patch_head is not None and mask_token is not None:
        nets.patch_head = patch_head.to(device)
        nets.teacher_patch_head = copy.deepcopy(patch_head).requires_grad_(False).to(device)
        nets.mask_token = mask_token.to(device)
        nets.patch_center = torch.zeros(1, 1, cfg.patch_out_dim, device=device)
    return nets


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    total: int | None = None
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
