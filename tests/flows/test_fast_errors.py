"""Bad input is answered before the heavy libraries load: a missing or unreadable raster gets
its error line without importing torch or Prefect (0.3 s instead of seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from flows.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "prefect", "distributed") if m in sys.modules)
print(rc, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv", [
    ["segment", "{tmp}/missing.tif", "--model", "{tmp}/m", "--out", "{tmp}/o"],
    ["fit", "{tmp}/missing.tif", "--out", "{tmp}/m"],
    ["segment", "{tmp}/not-a-raster.tif", "--model", "{tmp}/m", "--out", "{tmp}/o"],
    ["pretrain", "{tmp}/missing.tif", "--steps", "5", "--out", "{tmp}/b"],
    ["evaluate", "{tmp}/missing.tif", "{tmp}/missing.tif", "--out", "{tmp}/e"],
    ["evaluate", "{tmp}/not-a-raster.tif", "{tmp}/not-a-raster.tif", "--out", "{tmp}/e"],
    ["import-checkpoint", "{tmp}/missing.ckpt", "--out", "{tmp}/m"],
], ids=["segment-missing", "fit-missing", "segment-unreadable", "pretrain-missing",
        "evaluate-missing", "evaluate-unreadable", "import-checkpoint-missing"])
def test_a_bad_raster_is_refused_before_torch_and_prefect_load(tmp_path, argv):
    (tmp_path / "not-a-raster.tif").write_text("hello")
    args = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["2", "-"], done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {args[1]}: ")
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv, where", [
    (["segment", "{scene}", "--model", "{tmp}/no-model", "--out", "{tmp}/o"], "{tmp}/no-model"),
    (["evaluate", "{scene}", "{scene}", "--mapping", "nosuch", "--out", "{tmp}/e"], "nosuch"),
    (["name-clusters", "{tmp}/no-model", "--from", "{tmp}/names.yaml"], "{tmp}/no-model"),
    (["demo", "{tmp}/d", "--weights", "{tmp}/no-weights.pth"], "{tmp}/no-weights.pth"),
    (["deploy", "--name", "n", "--input-glob", "{tmp}/nowhere/*.tif", "--model", "{tmp}/m",
      "--out-root", "{tmp}/r"], "{tmp}/nowhere/*.tif"),
    (["run-deployment", "n", "--param", "no-equals-sign"], "--param"),
    (["server", "start", "--port", "70000"], "--port"),
], ids=["segment-no-model", "evaluate-bad-mapping", "name-clusters-no-model", "demo-weights",
        "deploy-no-folder", "run-deployment-param", "server-port"])
def test_every_subcommand_refuses_bad_input_before_torch_and_prefect_load(tmp_path, demo_scene,
                                                                          argv, where):
    """Each subcommand that takes paths answers bad input within its cheap checks (README,
    Performance: 0.1-0.8 s each), never after importing torch or Prefect (1-3 s)."""
    args = [a.format(tmp=tmp_path, scene=demo_scene[0]) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["2", "-"], done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {where.format(tmp=tmp_path)}: "), last
