"""The documentation's evaluation pictures, made by `stego evaluate` itself.

    .venv/bin/python scripts/evaluation_picture.py   # ~1 min on 2 CPU cores, offline

Writes a generated 512² demo scene and its true labels (`stego demo-scene`), fits pixel-kmeans
with 5 clusters on it, segments it, and scores the map against the true labels with `stego
evaluate ... --mapping classes.csv --image scene.tif` (``classes.csv``: the label values and
their names, ``value,class``, from ``pipeline.demo.classes``). Its ``confusion.png`` (the
row-normalised confusion matrix, the Hungarian matching outlined, the per-class IoU) and
``preview.png`` (image | prediction | ground truth, in matched colours) are copied to
``docs/images/evaluation-confusion.png`` and ``docs/images/evaluation-preview.png``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.demo.classes import DEMO_CLASSES

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
TARGETS = {"confusion.png": IMAGES / "evaluation-confusion.png",
           "preview.png": IMAGES / "evaluation-preview.png"}


def stego(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, check=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="stego-eval-") as tmp:
        d = Path(tmp)
        scene, truth = d / "scene.tif", d / "scene_labels.tif"
        stego("demo-scene", str(scene), "--size", "512")
        stego("fit", str(scene), "--method", "pixel-kmeans", "--clusters", "5", "--out",
              str(d / "model"), "-q")
        stego("segment", str(scene), "--model", str(d / "model"), "--out", str(d / "out"),
              "-q")
        mapping = d / "classes.csv"
        mapping.write_text("value,class\n" + "".join(f"{v},{name}\n"
                                                     for v, name in enumerate(DEMO_CLASSES)))
        stego("evaluate", str(d / "out" / "labels.tif"), str(truth), "--mapping",
              str(mapping), "--image", str(scene), "--out", str(d / "eval"))
        IMAGES.mkdir(parents=True, exist_ok=True)
        for name, target in TARGETS.items():
            shutil.copyfile(d / "eval" / name, target)
            print(f"wrote {target.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
