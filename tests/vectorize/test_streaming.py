"""Vectorizing streams: final polygons are written while blocks are still coming, seam pieces
are merged as soon as the blocks around them are done, in any block order, and an error from
the blocks surfaces as it is with nothing left behind."""

from __future__ import annotations

import numpy as np
import pyogrio
import pyogrio.raw
import pytest

from pipeline.errors import InputError
from pipeline.vectorize import writer as vectorize_writer
from tests.vectorize.test_vectorize import (
    NORTH_UP,
    blobby,
    count_regions,
    rasterize_back,
    run,
)


@pytest.fixture(scope="module")
def noisy() -> np.ndarray:
    """320² fine-grained classes: many regions cross the seams of 32² blocks."""
    labels = blobby(320, 320, classes=4, seed=2, sigma=2.0)
    labels[100:140, 60:200] = 255
    return labels


def test_final_polygons_are_written_while_blocks_are_still_coming(noisy, tmp_path, monkeypatch):
    monkeypatch.setattr(vectorize_writer, "FLUSH_FEATURES", 1)
    batches: list[int] = []
    make_batch = vectorize_writer._LayerWriter._batch

    def counting_batch(self, parts):
        batches.append(sum(len(p) for p in parts))
        return make_batch(self, parts)

    monkeypatch.setattr(vectorize_writer._LayerWriter, "_batch", counting_batch)
    written_before_block: list[int] = []

    def spying_map(fn, blocks):
        for block in blocks:
            written_before_block.append(sum(batches))
            yield fn(block)

    out, stats = run(noisy, tmp_path, block_size=64, map_fn=spying_map)

    assert stats.blocks == 25 == len(written_before_block)
    assert written_before_block[1] > 0  # the first block's polygons went out before the second
    assert written_before_block[-1] > stats.polygons / 2
    assert sum(batches) == stats.polygons == pyogrio.read_info(out)["features"]


def _counting_seam_pieces():
    """A serial map_fn that records the number of seam pieces of every block."""
    pieces: list[int] = []

    def counting_map(fn, blocks):
        for block in blocks:
            result = fn(block)
            pieces.append(len(result.seam_wkb))
            yield result

    return counting_map, pieces


def test_seam_pieces_are_merged_as_soon_as_their_blocks_are_done(noisy, tmp_path):
    counting_map, pieces = _counting_seam_pieces()
    out, stats = run(noisy, tmp_path, block_size=32, map_fn=counting_map, min_region_pixels=3)

    assert stats.blocks == 100 and sum(pieces) > 1000
    # held at most: about two rows of blocks' pieces, not all of them
    assert stats.peak_seam_pieces < sum(pieces) / 3
    assert stats.seam_groups_merged > 100
    reference, _ = run(noisy, tmp_path, "one-block.gpkg", block_size=320, min_region_pixels=3)
    assert pyogrio.read_info(out)["features"] == pyogrio.read_info(reference)["features"]
    assert np.array_equal(rasterize_back(out, noisy.shape, NORTH_UP),
                          rasterize_back(reference, noisy.shape, NORTH_UP))


@pytest.mark.parametrize("order", ["reversed", "shuffled", "columns first"])
def test_blocks_in_any_order_give_one_exact_polygon_per_region(noisy, tmp_path, order):
    def unordered_map(fn, blocks):
        blocks = list(blocks)
        if order == "reversed":
            blocks.reverse()
        elif order == "shuffled":
            np.random.default_rng(5).shuffle(blocks)
        else:
            blocks.sort(key=lambda b: (b.col0, b.row0))
        return (fn(block) for block in blocks)

    out, stats = run(noisy, tmp_path, block_size=40, map_fn=unordered_map)

    assert pyogrio.read_info(out)["features"] == stats.polygons == count_regions(noisy)
    assert np.array_equal(rasterize_back(out, noisy.shape, NORTH_UP), noisy)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), InputError("labels.zarr", "unreadable")])
def test_an_error_from_the_blocks_surfaces_as_it_is_and_leaves_nothing(noisy, tmp_path, error):
    def failing_map(fn, blocks):
        for i, block in enumerate(blocks):
            if i == 5:
                raise error
            yield fn(block)

    with pytest.raises(type(error)) as raised:
        run(noisy, tmp_path, block_size=64, map_fn=failing_map)

    assert raised.value is error  # not GDAL's "error while accessing batch from stream"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "driver"), [("out.gpkg", "GPKG"), ("out.fgb", "FlatGeobuf")])
def test_the_layer_has_a_spatial_index(noisy, tmp_path, name, driver):
    out, stats = run(noisy, tmp_path, name, driver=driver, block_size=64)

    info = pyogrio.read_info(out)
    assert info["features"] == stats.polygons
    assert info["capabilities"]["fast_spatial_filter"]
    box = (NORTH_UP.c, NORTH_UP.f - 100, NORTH_UP.c + 100, NORTH_UP.f)
    near_corner = len(pyogrio.raw.read(out, bbox=box, read_geometry=False)[3][0])
    assert 0 < near_corner < stats.polygons
