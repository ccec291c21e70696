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
], ids=["segment-missing", "fit-missing", "segment-unreadable"])
def test_a_bad_raster_is_refused_before_torch_and_prefect_load(tmp_path, argv):
    (tmp_path / "not-a-raster.tif").write_text("hello")
    args = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["2", "-"], done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {args[1]}: ")
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()
