"""Model files load only what their method needs: reading model.json imports no torch, and a
pixel-kmeans model loads without timm/torchvision (2 s of a small run's start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.models.store import METHODS, _model_class, read_model_json

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_name_loads_its_own_class(method):
    assert _model_class(method).method == method


def test_an_unknown_method_is_refused(tmp_path):
    (tmp_path / "model.json").write_text('{"format_version": 1, "method": "nope"}')
    with pytest.raises(InputError, match="unknown method 'nope'"):
        read_model_json(tmp_path)


def test_reading_and_loading_a_pixel_model_imports_only_what_it_needs(pixel_model):
    probe = (
        "import sys\n"
        "from pipeline.models.store import load_model, read_model_json\n"
        f"read_model_json({str(pixel_model)!r})\n"
        "after_json = 'torch' in sys.modules\n"
        f"model = load_model({str(pixel_model)!r})\n"
        "print(after_json, type(model).__name__, 'timm' in sys.modules,"
        " 'torchvision' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["False", "PixelKMeans", "False", "False"], done.stderr
