"""Data-driven STEGO shifts: b_self, b_knn and b_rand set from the distribution of the
backbone's own feature correlations on the training crops.

In the correspondence loss a pair of points attracts (its code correlation is pushed up) when
its feature correlation F exceeds the shift b, and is pushed apart otherwise. The paper tuned
b for DINO ViT-S/8, whose correlations sit low; on a backbone whose correlations sit higher
the same b make nearly every pair attract and the codes collapse. Calibrating b as the
quantile of F that leaves a chosen share of pairs attracting makes that share, not the
backbone's offset, the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipeline.fit.feature_cache import feature_rows
from pipeline.fit.stego_loss import draw_coords, feature_correlation, sample, super_perm


@dataclass(frozen=True)
class Shifts:
    """The three shifts and where they came from."""

    self_: float
    knn: float
    rand: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the fit statistics."""
        return {"self": self.self_, "knn": self.knn, "rand": self.rand, "source": self.source}


@torch.no_grad()
def feature_correlations(features: Any, knn: torch.Tensor, samples: int = 11,
                         batches: int = 8, batch_size: int = 16,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """Samples of F for self, kNN and random pairs, drawn as the loss draws them."""
    gen = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    out: dict[str, list[torch.Tensor]] = {"self": [], "knn": [], "rand": []}
    for _ in range(batches):
        idx = torch.randint(n, (min(batch_size, n),), generator=gen)
        pos = knn[idx, torch.randint(knn.shape[1], (len(idx),), generator=gen)]
        f = feature_rows(features, idx)
        fp = feature_rows(features, pos)
        c1 = sample(f, draw_coords(len(idx), samples, gen))
        c2 = draw_coords(len(idx), samples, gen)
        out["self"].append(_flat(c1, c1))
        out["knn"].append(_flat(c1, sample(fp, c2)))
        perm = super_perm(len(idx), gen)
        out["rand"].append(_flat(c1, sample(f[perm], c2)))
    return {k: torch.cat(v) for k, v in out.items()}


def _flat(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    return feature_correlation(f1, f2, pointwise=True).flatten()


def calibrate(correlations: dict[str, torch.Tensor],
              attract: dict[str, float]) -> Shifts:
    """Shifts that leave ``attract[term]`` of each term's pairs above b (attracting)."""
    values = {}
    for term in ("self", "knn", "rand"):
        share = attract[term]
        if not 0.0 < share < 1.0:
            raise ValueError(f"attract share for {term} must be in (0, 1), got {share}")
        values[term] = round(float(torch.quantile(correlations[term].float(), 1.0 - share)), 4)
    return Shifts(values["self"], values["knn"], values["rand"], "calibrated")


def attracting_share(correlations: dict[str, torch.Tensor], shifts: Shifts) -> dict[str, float]:
    """Share of each term's pairs whose F exceeds its shift (pairs that attract)."""
    b = {"self": shifts.self_, "knn": shifts.knn, "rand": shifts.rand}
    return {k: round(float((v > b[k]).float().mean()), 4) for k, v in correlations.items()}


def summary(correlations: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Mean and quartiles of each term's F (for training.json and warnings)."""
    out = {}
    for k, v in correlations.items():
        q = torch.quantile(v.float(), torch.tensor([0.1, 0.5, 0.9]))
        out[k] = {"mean": round(float(v.mean()), 4), "q10": round(float(q[0]), 4),
                  "median": round(float(q[1]), 4), "q90": round(float(q[2]), 4)}
    return out


def is_paper_backbone(name: str, weights_source: str) -> bool:
    """Whether the backbone is the one the paper's shifts were tuned for: DINO ViT-S/8 with
    real (hub or file) weights."""
    return name.startswith("vit_small_patch8_224") and weights_source in ("hub", "file")


def choose_shifts(mode: str, paper: Shifts, calibrated: Shifts, paper_backbone: bool) -> Shifts:
    """``paper`` keeps the configured shifts, ``calibrated`` the ones from the backbone's
    correlations (:func:`calibrate`), ``auto`` is paper on DINO ViT-S/8, else calibrated."""
    if mode == "paper" or (mode == "auto" and paper_backbone):
        return paper
    return calibrated


def collapse_advice(shifts: Shifts, calibrated: Shifts) -> str:
    """What to do when the codes collapsed, with the numbers for this backbone."""
    if shifts.source == "calibrated":
        return ("lower stego.attract_rand / attract_knn (fewer pairs attract), or pretrain the "
                "backbone longer (`stego pretrain --minutes ...`)")
    return (f"these shifts ({shifts.source}) make most pairs attract on this backbone; rerun "
            f"with --set stego.shifts=calibrated (here: b_self {calibrated.self_}, b_knn "
            f"{calibrated.knn}, b_rand {calibrated.rand}), or use DINO weights (--weights PATH)")
