"""The GIS clients of the machine itself, when installed: the GDAL command-line tools, the GDAL
Python bindings and QGIS of the system Python (Debian 12: GDAL 3.6.2, QGIS 3.22; ``apt-get
install gdal-bin python3-gdal python3-qgis``). They are older than the GDAL in the wheels, so
tests that use them check the outputs in the clients analysts actually run; each skips with a
reason where the client is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3")  # the distribution's Python, not the venv's
INSTALL = "apt-get install gdal-bin python3-gdal python3-qgis"


def system_tool(name: str) -> str:
    """Path of a GDAL command-line tool (``gdalinfo``, ``gdallocationinfo``...), or skip."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian/Ubuntu: {INSTALL})")
    return path


@cache
def tool_version(tool: str) -> str:
    """``GDAL 3.6.2, released 2023/01/02`` for a GDAL tool."""
    return subprocess.run([tool, "--version"], capture_output=True, text=True,
                          timeout=60).stdout.strip()


@cache
def _system_python_has(module: str) -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    proc = subprocess.run([str(SYSTEM_PYTHON), "-c", f"import {module}"], capture_output=True,
                          timeout=120, env=qgis_env())
    return proc.returncode == 0


def system_python_with(module: str) -> str:
    """The system Python if it imports ``module`` (``osgeo.gdal``, ``qgis.core``), or skip."""
    if not _system_python_has(module):
        pytest.skip(f"{SYSTEM_PYTHON} cannot import {module} (Debian/Ubuntu: {INSTALL})")
    return str(SYSTEM_PYTHON)


def qgis_env() -> dict[str, str]:
    """Environment for a headless QGIS (no display)."""
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen"}


QGIS_LEGEND = """
import json, os, sys
from qgis.core import Qgis, QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "labels", "gdal")
renderer = layer.renderer()
print(json.dumps({
    "qgis": Qgis.QGIS_VERSION, "valid": layer.isValid(), "crs": layer.crs().authid(),
    "renderer": renderer.type(),
    "legend": [label for label, _ in renderer.legendSymbologyItems()],
}))
sys.stdout.flush()
os._exit(0)  # QGIS 3.22 may crash while tearing down; the answer is out
"""


def qgis_legend(source: str) -> dict[str, Any]:
    """What QGIS shows for a raster layer opened as a user adds it (default style included):
    its version, validity, CRS, renderer type and legend labels. Skips without QGIS."""
    python = system_python_with("qgis.core")
    proc = subprocess.run([python, "-c", QGIS_LEGEND, source], capture_output=True, text=True,
                          timeout=300, env=qgis_env())
    if proc.returncode:
        raise RuntimeError(f"QGIS failed on {source}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
