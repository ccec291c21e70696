"""The documentation's loss curves: a tiny offline `stego pretrain`, then STEGO's head on it.

    .venv/bin/python scripts/loss_curve_picture.py   # ~1.5 min on 2 CPU cores, offline
                                                      # (needs matplotlib: pip install -e '.[docs]')

Writes a generated 512² demo scene, pretrains a tiny ViT (2 blocks, width 64, random start)
on it with `stego pretrain --steps 300`, fits STEGO's head on that backbone with `stego fit`
(300 steps), and plots what the two commands record, one value per step: the DINO loss and
the teacher's entropies from ``BACKBONE_DIR/backbone.json`` (``losses``), and STEGO's loss
terms from ``MODEL_DIR/training.json`` (``history``). The picture goes to
``docs/images/loss-curves.png``. The runs are far too short and small for a useful backbone:
the picture shows how to read the curves, not what a real run reaches.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "images" / "loss-curves.png"
STEPS = 300
TINY = ["--backbone-arg", "depth=2", "--backbone-arg", "embed_dim=64",
        "--backbone-arg", "num_heads=2"]
PRETRAIN = {"batch_size": 8, "pool_crops": 32, "source_size": 96, "global_size": 48,
            "local_size": 24, "out_dim": 256, "log_every": 1}
STEGO = {"steps": STEPS, "batch_size": 8, "log_every": 1}
FIT = {"crops": 48, "crop_size": 96}


def _sets(section: str, values: dict[str, object]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{section}.{k}={v}")]


def stego(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, check=True)


def smooth(values: list[float], window: int = 15) -> list[float]:
    """Trailing running mean (the per-step values are one batch each, so noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot(backbone: dict, training: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    rows = backbone["losses"]
    steps = [r["step"] for r in rows]
    prototypes = backbone["recipe"]["out_dim"]
    left.plot(steps, [r["loss"] for r in rows], color="0.75", lw=0.8)
    left.plot(steps, smooth([r["loss"] for r in rows]), color="black", label="DINO loss")
    left.plot(steps, smooth([r["teacher_entropy"] for r in rows]), color="tab:blue",
              label="teacher entropy per view")
    left.plot(steps, smooth([r["teacher_batch_entropy"] for r in rows]), color="tab:orange",
              label="teacher entropy of the batch mean")
    left.axhline(math.log(prototypes), color="tab:red", ls="--", lw=1,
                 label=f"log(prototypes) = {math.log(prototypes):.2f}: uniform")
    left.set(title=f"stego pretrain: backbone.json 'losses' ({backbone['steps']} steps)",
             xlabel="step", ylabel="nats")
    left.legend(fontsize=8, loc="lower right")

    hist = training["history"]
    steps = [r["step"] for r in hist]
    colours = {"total": "black", "self": "tab:blue", "knn": "tab:green", "rand": "tab:red"}
    for key, colour in colours.items():
        values = [r[key] for r in hist]
        right.plot(steps, values, color=colour, lw=0.6, alpha=0.3)
        right.plot(steps, smooth(values), color=colour, label=key)
    right.axhline(0, color="0.6", lw=0.8)
    probe = right.twinx()
    probe.plot(steps, smooth([r["probe"] for r in hist]), color="tab:purple", ls=":",
               label="cluster probe (right axis)")
    probe.set_ylabel("probe loss")
    right.set(title=f"stego fit --method stego: training.json 'history' ({training['steps']} "
              "steps)", xlabel="step", ylabel="correspondence loss")
    handles = right.get_legend_handles_labels()
    extra = probe.get_legend_handles_labels()
    right.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="upper right")
    fig.suptitle("Loss curves of a tiny offline run (thin: each step; thick: running mean of "
                 "15 steps)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="stego-loss-") as tmp:
        d = Path(tmp)
        stego("demo-scene", str(d / "scene.tif"), "--size", "512")
        stego("pretrain", str(d / "scene.tif"), "--out", str(d / "backbone"), "--steps",
              str(STEPS), *TINY, *_sets("pretrain", PRETRAIN), "-q")
        stego("fit", str(d / "scene.tif"), "--weights", str(d / "backbone"), "--out",
              str(d / "model"), *_sets("fit", FIT), *_sets("stego", STEGO), "-q")
        backbone = json.loads((d / "backbone" / "backbone.json").read_text())
        training = json.loads((d / "model" / "training.json").read_text())
        plot(backbone, training, TARGET)
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
