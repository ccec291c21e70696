"""The code the documentation shows runs: every fenced block of README.md and of the pages
in docs/ that is marked to run is run, on the outputs of a small run.

Each block is preceded by a marker comment that says how it runs:

* ``<!-- test: sh|python|gdal-python [id=NAME] [needs=a,b] [dir=scene] -->``: run in the output
  folder (``sh`` with bash, ``python`` with this interpreter, ``gdal-python`` with every Python
  that has GDAL's bindings, here and the system's ``/usr/bin/python3``). ``needs`` lists what
  the block uses beyond the project's dependencies, for a skip with a reason where it is
  absent: a module (python), a command, or ``command:Driver`` (an ``ogrinfo``/``gdalinfo``
  with that driver). ``dir=scene`` runs it one folder up instead, beside the run's input
  (``scene.tif``, its true labels ``scene_labels.tif``), its ``model/`` and its output
  ``out/``; ``stego`` and ``python`` there are this environment's;
* ``<!-- not run: REASON -->``: shown, never run (it needs the internet, hours, or your data).
  The ``stego`` commands of shell blocks that are not run are still checked: the subcommand
  and every flag they use exist.

A block without a marker fails the test, so a new snippet is either run or says why not.
"""

from __future__ import annotations

import json
import os
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
OUTPUTS_PAGE = "docs/how-to/open-outputs.md"  # the page whose prose the outputs test reads
SMALL = """
tiling: {tile_size: 64, overlap: 16, block_size: 96, chunk_size: 32, batch_size: 4}
dask: {workers: 1, processes: false}
"""
MARKER = re.compile(r"<!--\s*(test|not run):\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")  # indented inside list items too


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
    dir: str = ""  # "" (the output folder) or "scene" (beside input, model and output)

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
        indent = len(fence.group(1))
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        m = MARKER.search(before)
        marker, spec = (m.group(1), m.group(2)) if m else ("", "")
        words = spec.split() if marker == "test" else [spec]
        opts = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        code = "\n".join(line[indent:] for line in lines[i + 1:end])
        found.append(Snippet(doc, first_line + i, fence.group(2), code,
                             marker, words[0] if words else "", opts.get("id", ""),
                             tuple(filter(None, opts.get("needs", "").split(","))),
                             opts.get("dir", "")))
        i = end + 1
    return found


def _pages() -> list[Path]:
    """README.md and every page in docs/ (the site's and docs/README.md)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _snippets() -> list[Snippet]:
    return [s for page in _pages()
            for s in _blocks(str(page.relative_to(ROOT)), page.read_text(encoding="utf-8"))]


SNIPPETS = _snippets()
RUNNABLE = [s for s in SNIPPETS if s.marker == "test"]


def test_every_snippet_is_run_or_says_why_not():
    assert len(RUNNABLE) >= 10  # the snippets were found at all
    docs = {s.doc for s in SNIPPETS}
    assert {"README.md", OUTPUTS_PAGE, "docs/usage.md", "docs/execution.md"} <= docs
    for s in SNIPPETS:
        assert s.marker, f"{s}: a ```{s.lang} block without <!-- test: ... --> or <!-- not run -->"
        if s.marker == "test":
            assert s.how in ("sh", "python", "gdal-python"), f"{s}: unknown runner {s.how!r}"
            assert s.lang == ("bash" if s.how == "sh" else "python"), f"{s}: fence vs runner"
            assert s.dir in ("", "scene"), f"{s}: unknown dir={s.dir}"
        else:
            assert len(s.how) > 20, f"{s}: say why the block is not run"


def test_the_outputs_table_shows_no_code_the_snippets_do_not_run():
    """Calls and commands in the page's prose and table appear in a run snippet, verbatim."""
    page = (ROOT / OUTPUTS_PAGE).read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", page, flags=re.S)
    tools = ("gdal", "ogr", "rasterio", "xarray", "geopandas", "duckdb", "stac-validator",
             "SELECT")
    code = "\n".join(s.code for s in RUNNABLE)
    for span in re.findall(r"`([^`\n]+)`", prose):
        if "(" in span or span.startswith(tools) and " " in span:
            assert span in code, f"{OUTPUTS_PAGE} shows `{span}` outside a run snippet"


# ---------------------------------------------------------------------------------------------
# a small run, as a user makes it


def _segment(tmp_path_factory, demo_scene, *extra: str) -> Path:
    from flows.cli import main

    base = tmp_path_factory.mktemp("docs")
    (base / "small.yaml").write_text(SMALL)
    for path in demo_scene:  # scene.tif and scene_labels.tif, for the dir=scene snippets
        (base / path.name).symlink_to(path)
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


def _env(base: Path) -> dict[str, str]:
    """This environment's `stego` and `python` first on PATH; the tests' Prefect API and a
    Prefect home of the run's own (a snippet's `stego` never starts or finds other servers)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                  os.environ.get("PATH", "")]),
           "PREFECT_HOME": str(base / "prefect-home"),
           "STEGO_SERVER_HOME": str(base / "stego-server")}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return env


def _run(cmd: list[str], cwd: Path, s: Snippet) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=_env(cwd if s.dir else cwd.parent))
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
    cwd = out.parent if s.dir == "scene" else out
    if s.how == "sh":
        outputs = [_run(["bash", "-euo", "pipefail", "-c", s.code], cwd, s)]
    elif s.how == "python":
        outputs = [_run([sys.executable, "-c", s.code], cwd, s)]
    else:
        outputs = [_run([python, "-c", s.code], cwd, s) for python in pythons]
    assert all(o.strip() for o in outputs), f"{s} printed nothing"
    if s.id == "evaluate":  # the report and its pictures; the matched names in the model
        metrics = json.loads((cwd / "eval" / "metrics.json").read_text())
        classes = ["road", "building", "tree", "grass", "car"]
        assert metrics["classes"] == classes and "accuracy" in outputs[0]
        assert (cwd / "eval" / "confusion.png").is_file()
        assert (cwd / "eval" / "preview.png").is_file()
        names = json.loads((cwd / "model" / "model.json").read_text())["class_names"]
        assert set(metrics["matching"].values()) == set(names) <= set(classes)
    if s.id == "gdal-names":  # the class names, on the first call and from the table
        names = _class_names(out)
        for o in outputs:
            assert o.strip().splitlines() == [repr(names)] * 2, o
    if s.id == "gdalinfo":  # the Zarr lands where the COG is (GDAL 3.6 put it at 58 E 2.4 N)
        corners = [ln for ln in outputs[0].splitlines()
                   if ln.startswith(("Upper Left", "Lower Right"))]
        assert len(corners) == 4 and corners[:2] == corners[2:], corners


def _commands(code: str) -> list[str]:
    """The `stego ...` and `make ...` commands of a shell block, each on one line: lines
    continued with a backslash are joined, and so are the indented continuation lines of a
    synopsis; comments and leading VAR=value assignments are dropped."""
    found: list[str] = []
    current: str | None = None
    for raw in code.splitlines():
        line = raw.split(" #")[0].rstrip()
        if current is not None and raw[:1].isspace() and line.strip():
            current += " " + line.strip()
        else:
            if current is not None:
                found.append(current)
            words = line.split()
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words.pop(0)
            current = " ".join(words) if words[:1] in (["stego"], ["make"]) else None
        if current is not None and current.endswith("\\"):
            current = current[:-1].rstrip()
    if current is not None:
        found.append(current)
    return found


def _flags_of() -> dict[str, set[str]]:
    """Every subcommand's option strings, and the top-level ones under ""."""
    from flows.cli_args import build_parser
    from scripts.docs_reference import arguments, subcommands

    parser = build_parser()
    flags = {"": {f for a in arguments(parser) for f in a.option_strings} | {"-h", "--help"}}
    for name, _, sub in subcommands(parser):
        flags[name] = {f for a in sub._actions for f in a.option_strings} | flags[""]
    return flags


def test_the_commands_that_are_not_run_exist():
    """Commands the docs show but do not run (they take minutes, or need your data, a cluster,
    a server): their make targets exist, and so do their stego subcommands with every flag
    they use (in synopses too, `[--crf|--no-crf]`)."""
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    flags = _flags_of()
    checked = 0
    for s in SNIPPETS:
        if s.lang not in ("bash", "sh"):
            continue
        for command in _commands(s.code):
            words = command.split()
            if words[0] == "make":
                target = words[1] if len(words) > 1 else "all"
                assert re.search(rf"^{re.escape(target)}:", make, re.M), f"{s}: no make {target}"
                continue
            assert len(words) > 1 and words[1] in flags, f"{s}: {command}: no such subcommand"
            for flag in re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", " ".join(words[2:])):
                assert flag in flags[words[1]], f"{s}: {command}: stego {words[1]} has no {flag}"
            checked += 1
    assert checked >= 40


def test_the_stego_console_script_runs():
    """`stego` as a user types it (the README's commands start with it)."""
    proc = subprocess.run([str(Path(sys.executable).parent / "stego"), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "segment" in proc.stdout, proc.stderr
