"""The typed run configuration: YAML files, overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import RunConfig, load_config
from pipeline.errors import InputError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_defaults_need_no_file():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.tiling.block_size % cfg.tiling.chunk_size == 0


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_default_yaml_lists_the_defaults():
    default = [p for p in CONFIGS if p.name == "default.yaml"][0]
    assert load_config(default) == RunConfig()


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  tile_sise: 256\n")
    with pytest.raises(InputError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg and "tiling.tile_sise" in msg and "tile_size" in msg
    assert "block_size" in msg and "\n" not in msg


def test_unknown_sections_are_named_with_the_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tilling: {}\n")
    with pytest.raises(InputError, match="valid keys: classifier, dask, fit, input, model, output"):
        load_config(path)


def test_wrong_types_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  batch_size: many\n")
    with pytest.raises(InputError, match="tiling.batch_size"):
        load_config(path)


def test_inconsistent_tiling_is_refused():
    with pytest.raises(InputError, match="multiple of chunk_size"):
        load_config(overrides=["tiling.block_size=1000"])


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tiling:\n  tile_size: 256\n  overlap: 32\n")
    cfg = load_config(path, ["tiling.overlap=16", "input.bands=[4,1,2]", "dask.workers=2"])
    assert (cfg.tiling.tile_size, cfg.tiling.overlap) == (256, 16)
    assert cfg.input.bands == [4, 1, 2] and cfg.dask.workers == 2


def test_config_values_are_data_never_code(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("vectorize:\n  layer: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(path)


def test_block_size_may_be_auto_and_nothing_else_but_a_multiple_of_the_chunk():
    cfg = load_config(overrides=["tiling.block_size=auto"])
    assert cfg.tiling.block_size == "auto"
    assert cfg.tiling.grid_block_size() == cfg.tiling.chunk_size  # fit's grid: as segment's
    assert load_config(overrides=["tiling.block_size=2048"]).tiling.grid_block_size() == 2048
    assert RunConfig().tiling.block_size == 10240  # the default stays fixed (resume anywhere)
    for bad in ("big", "Auto", "1000"):
        with pytest.raises(InputError) as exc:
            load_config(overrides=[f"tiling.block_size={bad}"])
        msg = str(exc.value)
        assert "tiling" in msg and "'auto'" in msg and "\n" not in msg
