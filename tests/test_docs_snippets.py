"""The code the documentation shows runs: every fenced shell and Python block of README.md and
of docs/usage.md's "Open the outputs" section, on the outputs of a small run.

Each block is preceded by a marker comment that says how it runs:

* ``<!-- test: sh|python|gdal-python [id=NAME] [needs=a,b] -->``: run in the output folder
  (``sh`` with bash, ``python`` with this interpreter, ``gdal-python`` with every Python that has
  GDAL's bindings, here and the system's ``/usr/bin/python3``). ``needs`` lists what the block
  uses beyond the project's dependencies, for a skip with a reason where it is absent: a module
  (python), a command, or ``command:Driver`` (an ``ogrinfo``/``gdalinfo`` with that driver);
* ``<!-- not run: REASON -->``: shown, never run (it needs the internet, hours, or your data).

A block without a marker fails the test, so a new snippet is either run or says why not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import rasterio

from tests.system_gis import SYSTEM_PYTHON

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Open the outputs"
SMALL = """
tiling: {tile_size: 64, overlap: 16, block_size: 96, chunk_size: 32, batch_size: 4}
dask: {workers: 1, processes: false}
"""
MARKER = re.compile(r"<!--\s*(test|not run):\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Snippet:
    doc: str
    line: int
    lang: str  # the fence's language
    code: str
    marker: str  # "test" or "not run"
    how: str  # sh / python / gdal-python, or the reason it is not run
    id: str = ""
    needs: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}" + (f" ({self.id})" if self.id else "")


def _blocks(doc: str, text: str, first_line: int = 1) -> list[Snippet]:
    """The fenced blocks of ``text`` with the marker on the last non-blank line before each."""
    lines, found, i = text.split("\n"), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        m = MARKER.search(before)
        marker, spec = (m.group(1), m.group(2)) if m else ("", "")
        words = spec.split() if marker == "test" else [spec]
        opts = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        found.append(Snippet(doc, first_line + i, fence.group(1), "\n".join(lines[i + 1:end]),
                             marker, words[0] if words else "", opts.get("id", ""),
                             tuple(filter(None, opts.get("needs", "").split(",")))))
        i = end + 1
    return found


def _section(text: str, heading: str) -> tuple[str, int]:
    lines = text.split("\n")
    start = lines.index(heading)
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")),
               len(lines))
    return "\n".join(lines[start:end]), start + 1


def _snippets() -> list[Snippet]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    usage, first = _section((ROOT / "docs" / "usage.md").read_text(encoding="utf-8"), SECTION)
    return _blocks("README.md", readme) + _blocks("docs/usage.md", usage, first)


SNIPPETS = _snippets()
RUNNABLE = [s for s in SNIPPETS if s.marker == "test"]


def test_every_snippet_is_run_or_says_why_not():
    assert len(RUNNABLE) >= 8  # the section's snippets were found at all
    for s in SNIPPETS:
        assert s.marker, f"{s}: a ```{s.lang} block without <!-- test: ... --> or <!-- not run -->"
        if s.marker == "test":
            assert s.how in ("sh", "python", "gdal-python"), f"{s}: unknown runner {s.how!r}"
            assert s.lang == ("bash" if s.how == "sh" else "python"), f"{s}: fence vs runner"
        else:
            assert len(s.how) > 20, f"{s}: say why the block is not run"


def test_the_outputs_table_shows_no_code_the_snippets_do_not_run():
    """Calls and commands in the section's prose and table appear in a run snippet, verbatim."""
    usage, _ = _section((ROOT / "docs" / "usage.md").read_text(encoding="utf-8"), SECTION)
    prose = re.sub(r"```.*?```", "", usage, flags=re.S)
    tools = ("gdal", "ogr", "rasterio", "xarray", "geopandas", "duckdb", "stac-validator",
             "SELECT")
    code = "\n".join(s.code for s in RUNNABLE)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if "(" in span or span.startswith(tools) and " " in span:
            assert span in code, f"docs/usage.md shows `{span}` outside a run snippet"


# ---------------------------------------------------------------------------------------------
# a small run, as a user makes it


def _segment(tmp_path_factory, demo_scene, *extra: str) -> Path:
    from flows.cli import main

    base = tmp_path_factory.mktemp("docs")
    (base / "small.yaml").write_text(SMALL)
    model, out = base / "model", base / "out"
    assert main(["fit", str(demo_scene[0]), "--method", "pixel-kmeans", "--clusters", "3",
                 "--out", str(model), "--set", "fit.crops=8", "--set", "fit.crop_size=64",
                 "-q"]) == 0
    assert main(["segment", str(demo_scene[0]), "--model", str(model), "--out", str(out),
                 "--config", str(base / "small.yaml"), "-q", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def run_gpkg(prefect_harness, demo_scene, tmp_path_factory) -> Path:
    return _segment(tmp_path_factory, demo_scene)


@pytest.fixture(scope="module")
def run_parquet(prefect_harness, demo_scene, tmp_path_factory) -> Path:
    return _segment(tmp_path_factory, demo_scene, "--set", "vectorize.format=parquet")


def _has_driver(tool: str, driver: str) -> bool:
    path = shutil.which(tool)
    if path is None:
        return False
    formats = subprocess.run([path, "--formats"], capture_output=True, text=True, timeout=60)
    return re.search(rf"^\s*{re.escape(driver)}\s", formats.stdout, re.M | re.I) is not None


def _check_needs(s: Snippet) -> None:
    for need in s.needs:
        if ":" in need:
            tool, driver = need.split(":", 1)
            if not _has_driver(tool, driver):
                pytest.skip(f"{s}: needs {tool} with the {driver} driver")
        elif s.how == "sh":
            if shutil.which(need) is None:
                pytest.skip(f"{s}: needs {need} (Debian/Ubuntu: apt-get install gdal-bin)")
        else:
            pytest.importorskip(need, reason=f"{s}: needs the Python module {need}")


def _gdal_pythons() -> list[str]:
    """Every Python here with GDAL's bindings: this one, and the system's (python3-gdal)."""
    found = []
    for python in (sys.executable, str(SYSTEM_PYTHON)):
        if Path(python).exists() and python not in found and subprocess.run(
                [python, "-c", "from osgeo import gdal"], capture_output=True,
                timeout=120).returncode == 0:
            found.append(python)
    return found


def _run(cmd: list[str], cwd: Path, s: Snippet) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"{s} failed with {cmd[0]} (exit {proc.returncode}):\n"
                                  f"{s.code}\n--- stderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _class_names(out: Path) -> list[str]:
    with rasterio.open(out / "labels.tif") as ds:
        tags = ds.tags(1)
    return [tags[f"class_{i}"] for i in range(len([k for k in tags if k.startswith("class_")]))]


@pytest.mark.parametrize("s", RUNNABLE, ids=str)
def test_snippet_runs_on_a_small_runs_outputs(s: Snippet, request):
    _check_needs(s)
    if s.how == "gdal-python":
        pythons = _gdal_pythons()
        if not pythons:
            pytest.skip(f"{s}: no Python with GDAL's bindings (apt-get install python3-gdal)")
    parquet = "polygons.parquet" in s.code
    out = request.getfixturevalue("run_parquet" if parquet else "run_gpkg")
    if s.how == "sh":
        outputs = [_run(["bash", "-euo", "pipefail", "-c", s.code], out, s)]
    elif s.how == "python":
        outputs = [_run([sys.executable, "-c", s.code], out, s)]
    else:
        outputs = [_run([python, "-c", s.code], out, s) for python in pythons]
    assert all(o.strip() for o in outputs), f"{s} printed nothing"
    if s.id == "gdal-names":  # the class names, on the first call and from the table
        names = _class_names(out)
        for o in outputs:
            assert o.strip().splitlines() == [repr(names)] * 2, o
    if s.id == "gdalinfo":  # the Zarr lands where the COG is (GDAL 3.6 put it at 58 E 2.4 N)
        corners = [ln for ln in outputs[0].splitlines()
                   if ln.startswith(("Upper Left", "Lower Right"))]
        assert len(corners) == 4 and corners[:2] == corners[2:], corners


def test_the_readme_commands_that_are_not_run_exist():
    """The README's commands take minutes or need your data; their make targets and stego
    subcommands (with every flag they use) exist."""
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    helps: dict[str, str] = {}
    for s in SNIPPETS:
        if s.doc != "README.md":
            continue
        for line in s.code.splitlines():
            words = line.split("#")[0].split()
            if words[:1] == ["make"]:
                assert re.search(rf"^{words[1]}:", make, re.M), f"README.md: no make {words[1]}"
            elif words[:1] == ["stego"]:
                if words[1] not in helps:
                    proc = subprocess.run([str(Path(sys.executable).parent / "stego"), words[1],
                                           "--help"], capture_output=True, text=True,
                                          timeout=300)
                    assert proc.returncode == 0, f"README.md: {line.strip()}: {proc.stderr}"
                    helps[words[1]] = proc.stdout
                for flag in (w for w in words if w.startswith("--")):
                    assert flag in helps[words[1]], f"README.md: {line.strip()}: {flag}?"
