"""The README's and the documentation home page's picture, made by the pipeline itself.

    .venv/bin/python scripts/readme_picture.py      # ~2 min on 2 CPU cores, offline

Runs `stego demo` on a generated 512² scene with the few-labels classifier (20 points per
class drawn from the scene's truth, an untrained tiny ViT) and copies its ``preview.png`` (the
scene beside the labels in the legend's colours) to ``docs/images/demo-preview.png``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "images" / "demo-preview.png"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="stego-readme-") as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run([sys.executable, "-m", "flows.cli", "demo", str(demo), "--size", "512",
                        "--method", "classifier", "--pretrain-steps", "10"], cwd=ROOT,
                       check=True)
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo / "output" / "preview.png", TARGET)
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
