"""The documentation site (mkdocs.yml, docs/): every CLI flag and config key has a description
for the generated reference pages, the nav and the pages agree, and the output-file reference
names every key a real run writes. None of this needs MkDocs or a browser; `make docs` builds
the site itself with warnings as errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from flows.cli_args import build_parser
from pipeline.config import RunConfig
from scripts import docs_reference as ref

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_every_cli_command_and_flag_has_a_help_text():
    assert ref.undocumented_flags(build_parser()) == []


def test_every_config_key_has_a_description():
    assert ref.undocumented_keys(RunConfig) == []


def test_the_cli_reference_lists_every_command_and_flag():
    parser = build_parser()
    page = ref.cli_markdown(parser)
    for name, _, sub in ref.subcommands(parser):
        assert f"## `stego {name}`" in page
        for action in ref.arguments(sub):
            for flag in action.option_strings:
                assert f"`{flag}`" in page, (name, flag)
    assert "`--set`" in page and "`--debug`" in page


def test_the_config_reference_lists_every_key_with_its_default():
    page = ref.config_markdown(RunConfig)
    for key, _ in ref.config_fields(RunConfig):
        assert f"| `{key}` |" in page, key
    assert "| `tiling.tile_size` | `int` | `544` |" in page
    assert "| `dask.workers` | `int` (≥ 1) | `1` |" in page
    assert "| `pretrain.normalisation.mean` | `tuple[float, float, float]` | required |" in page


def test_the_api_reference_has_a_page_per_unit_of_the_library():
    pages = ref.api_pages()
    units = ref.api_units()
    assert {"pipeline", "pipeline.io", "pipeline.segment", "pipeline.config"} <= set(units)
    for unit, modules in units.items():
        page = pages[f"reference/api/{unit.replace('.', '-')}.md"]
        assert all(f"::: {m}\n" in page for m in modules)
    assert sum(len(m) for m in units.values()) == len(list((ROOT / "pipeline").rglob("*.py")))


def _nav_files(items) -> list[str]:
    found = []
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        found += _nav_files(value) if isinstance(value, list) else [value]
    return found


def test_the_nav_lists_every_page_and_each_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    generated = {p for p in ref.pages() if not p.startswith("reference/api/")} \
        | {"reference/api/index.md"}  # the hook adds the unit pages under this entry
    written = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} - {"README.md"}
    assert len(nav) == len(set(nav))
    assert set(nav) == written | generated
    assert not written & generated  # a generated page never sits in docs/ as well


def test_the_site_fetches_nothing_from_the_network():
    """No Google Fonts, and the offline search's iframe-worker shim from the site itself
    (Material's offline plugin would link it from unpkg.com)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False
    assert "offline" in [p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]]
    shims = config["extra"]["polyfills"]
    assert shims and all((DOCS / s).is_file() and "iframe-worker" in s for s in shims)


def test_the_docs_readme_says_how_to_build_and_screenshot_the_site():
    text = (DOCS / "README.md").read_text()
    assert "make docs" in text and "chromium --headless" in text


MARKER = re.compile(r"<!--\s*(test|not run):\s*(.*?)\s*-->\s*$")


def test_every_code_block_of_the_site_is_run_or_says_why_not():
    """The convention of tests/test_docs_snippets.py (which runs the `test` blocks of every
    page): `<!-- not run: REASON -->` (or `<!-- test: ... -->`) on the line before each fenced
    block, on every page, indented blocks in list items included."""
    checked = 0
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text().split("\n")
        inside = False
        for i, line in enumerate(lines):
            if not line.strip().startswith("```"):
                continue
            inside = not inside
            if not inside:
                continue
            before = next((x for x in reversed(lines[:i]) if x.strip()), "")
            m = MARKER.search(before)
            assert m, f"{path.relative_to(ROOT)}:{i + 1}: a code block without a marker"
            assert m.group(1) == "test" or len(m.group(2)) > 20, \
                f"{path.relative_to(ROOT)}:{i + 1}: say why the block is not run"
            checked += 1
    assert checked >= 50


# --------------------------------------------------------------------------------------------
# the output-file reference against a real (tiny) pretrain -> fit -> segment


@pytest.fixture(scope="module")
def run_files(prefect_harness, demo_scene, tmp_path_factory) -> Path:
    from flows.cli import main
    from tests.conftest import TINY_VIT
    from tests.flows.test_end_to_end import SMALL

    d = tmp_path_factory.mktemp("docs_run")
    tiny = [a for k, v in TINY_VIT.items() for a in ("--backbone-arg", f"{k}={v}")]
    recipe = [a for kv in ("batch_size=4", "pool_crops=8", "source_size=64", "global_size=32",
                           "local_size=16", "out_dim=64") for a in ("--set", f"pretrain.{kv}")]
    assert main(["pretrain", str(demo_scene[0]), "--out", str(d / "bb"), "--steps", "1",
                 *tiny, *recipe, "-q"]) == 0
    assert main(["fit", str(demo_scene[0]), "--method", "feature-kmeans", "--clusters", "3",
                 "--weights", str(d / "bb"), "--out", str(d / "m"), "--set", "fit.crops=4",
                 "--set", "fit.crop_size=64", "-q"]) == 0
    (d / "small.yaml").write_text(SMALL)
    assert main(["segment", str(demo_scene[0]), "--model", str(d / "m"), "--out",
                 str(d / "out"), "--config", str(d / "small.yaml"), "-q"]) == 0
    return d


def _unnamed(keys, page: str) -> list[str]:
    """Keys the page does not name as `key` (or `parent.key`)."""
    return [k for k in keys if not re.search(r"[`.]" + re.escape(k) + "`", page)]


def test_the_output_reference_names_every_key_a_run_writes(run_files):
    import zarr

    page = (DOCS / "reference" / "outputs.md").read_text()
    run = json.loads((run_files / "out" / "run.json").read_text())
    keys = set(run)
    for part in ("input", "model", "counts", "polygons", "outputs", "timings_s", "summary",
                 "scaling"):
        keys |= set(run[part])
    model = json.loads((run_files / "m" / "model.json").read_text())
    keys |= set(model) | set(model["fit"]) | set(model["backbone"]) \
        | set(model["backbone"]["weights"])
    keys |= set(json.loads((run_files / "bb" / "backbone.json").read_text()))
    group = zarr.open_group(str(run_files / "out" / "labels.zarr"), mode="r")
    keys |= set(group.attrs) | set(group["labels"].attrs) | set(group["confidence"].attrs)
    item = json.loads((run_files / "out" / "item.json").read_text())
    keys |= set(item) | set(item["properties"]) | set(item["assets"])
    for asset in item["assets"].values():
        keys |= set(asset)
    missing = _unnamed(sorted(keys), page)
    assert not missing, f"docs/reference/outputs.md does not name {missing}"


def test_every_picture_in_the_readme_and_the_docs_exists_and_a_script_makes_it():
    """Pictures are produced by scripts in the repository (named in one), never pasted; they
    live in docs/images/, and every picture there is shown somewhere. The issue's three:
    the demo's preview (README, home page), a loss curve (pretraining how-to) and an
    evaluation plot (evaluating how-to)."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    scripts = {p.name: p.read_text() for p in (ROOT / "scripts").glob("*.py")}
    shown: dict[str, set[str]] = {}
    for page in pages:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.relative_to(ROOT)}: {target} is missing"
            assert path.parent == DOCS / "images", f"{target}: pictures live in docs/images/"
            assert any(path.name in text for text in scripts.values()), \
                f"no script in scripts/ makes {target}"
            shown.setdefault(path.name, set()).add(str(page.relative_to(ROOT)))
    assert {p.name for p in (DOCS / "images").glob("*.png")} == set(shown), "unused pictures"
    assert {"README.md", "docs/index.md"} <= shown["demo-preview.png"]
    assert "docs/how-to/pretrain.md" in shown["loss-curves.png"]
    assert "docs/how-to/evaluate.md" in shown["evaluation-confusion.png"]
