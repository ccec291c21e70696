"""Model files load only what their method needs: reading model.json imports no torch, and the
NumPy methods (pixel-kmeans, threshold, region, edge) fit, load and segment without importing
torch at all (2-3.5 s of a small run's start-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.models.store import METHODS, _model_class, read_model_json, uses_torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_name_loads_its_own_class(method):
    assert _model_class(method).method == method


def test_an_unknown_method_is_refused(tmp_path):
    (tmp_path / "model.json").write_text('{"format_version": 1, "method": "nope"}')
    with pytest.raises(InputError, match="unknown method 'nope'"):
        read_model_json(tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_network_methods_use_torch(method):
    assert uses_torch(method) == (method in ("stego", "feature-kmeans", "classifier"))


def test_a_pixel_kmeans_segment_run_never_imports_torch(pixel_model, demo_scene, tmp_path):
    """The CLI, the segment flow's modules, the plan, loading the model and segmenting a block
    into the store: all without torch (a fresh interpreter, so nothing else imported it)."""
    probe = (
        "import sys\n"
        "import flows.cli, flows.segment_flow\n"
        "from pipeline.config import RunConfig\n"
        "from pipeline.segment import blocks\n"
        "from pipeline.segment.plan import plan_segment\n"
        "cfg = RunConfig.model_validate({'tiling': {'tile_size': 64, 'overlap': 16,"
        " 'block_size': 128, 'chunk_size': 64}, 'model': {'refine': 'regions'}})\n"
        f"plan = plan_segment({str(demo_scene[0])!r}, {str(pixel_model)!r},"
        f" {str(tmp_path / 'out')!r}, cfg)\n"
        "store, todo = blocks.prepare_labels_store(plan)\n"
        "stats = blocks.infer_and_write_block(todo[0], blocks.block_job(plan, store, 1))\n"
        "print(stats['tiles'] > 0, plan.device, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["True", "cpu", "False"], done.stderr


def test_reading_and_loading_a_pixel_model_imports_only_what_it_needs(pixel_model):
    probe = (
        "import sys\n"
        "from pipeline.models.store import load_model, read_model_json\n"
        f"read_model_json({str(pixel_model)!r})\n"
        "after_json = 'torch' in sys.modules\n"
        f"model = load_model({str(pixel_model)!r})\n"
        "print(after_json, type(model).__name__, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["False", "PixelKMeans", "False"], done.stderr
