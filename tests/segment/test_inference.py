"""Seamless block inference: a raster cut into many blocks segments as if it were one block."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.raster import compute_scaling, open_raster_info
from pipeline.labels import NODATA
from pipeline.models.store import load_model, save_model
from pipeline.segment.inference import segment_block
from pipeline.tiling import Block, TileGrid, plan_blocks
from tests.conftest import write_raster


def _segment(model, info, grid, block_size, batch_size=3):
    scaling = compute_scaling(info)
    labels = np.full((info.height, info.width), 7, dtype=np.uint8)
    conf = np.zeros_like(labels)
    for blk in plan_blocks(info.height, info.width, block_size):
        out = segment_block(model, info, scaling, grid, blk, batch_size)
        sl = (slice(blk.row_off, blk.row_off + blk.height),
              slice(blk.col_off, blk.col_off + blk.width))
        labels[sl], conf[sl] = out.labels, out.confidence
    return labels, conf


@pytest.fixture(scope="module")
def classic_models(tmp_path_factory, demo_scene) -> dict:
    """threshold, region and edge models fitted on the demo scene (issue 15)."""
    from pipeline.fit.classic import fit_regions, fit_threshold
    from pipeline.io.crops import sample_crops
    from pipeline.models.region_segmenters import RegionParams

    info = open_raster_info(demo_scene[0])
    crops = sample_crops([(info, compute_scaling(info))], 8, 64, seed=0)
    fitted = {"threshold": fit_threshold(crops, 3, "exg", {}, [1, 2, 3], 20_000, 0)[0]}
    for method in ("region", "edge"):
        fitted[method] = fit_regions(crops, 4, method, RegionParams(), 20, 0)[0]
    return {m: save_model(model, tmp_path_factory.mktemp(m), {}) for m, model in fitted.items()}


def _model(request, name: str):
    """A fitted model by name; ``+regions`` wraps it in the region-based refinement, ``+crf``
    in the dense CRF (after it), as segment post-processes."""
    from pipeline.models.crf_refine import post_processed

    base, *post = name.split("+")
    if base in ("threshold", "region", "edge"):
        path = request.getfixturevalue("classic_models")[base]
    else:
        path = request.getfixturevalue(base)
    refine = "regions" if "regions" in post else "none"
    return post_processed(load_model(path), refine, 48, "crf" in post)


@pytest.mark.parametrize(("model_fixture", "trimmed"), [
    *[(m, t) for m in ("pixel_model", "feature_model") for t in (False, True)],
    # the classic methods and the region-based refinement (issue 15), on the centred grid
    *[(m, False) for m in ("threshold", "region", "edge", "pixel_model+regions",
                           "edge+regions", "pixel_model+regions+crf")]])
def test_block_seams_leave_no_trace(request, demo_scene, model_fixture, trimmed):
    model = _model(request, model_fixture)
    info = open_raster_info(demo_scene[0])
    grid = TileGrid(64, 16, -8, (info.height, info.width)) if trimmed else TileGrid(64, 16)
    one, conf_one = _segment(model, info, grid, 512)
    many, conf_many = _segment(model, info, grid, 48)  # 48 = multiple of stride: 8x8 blocks
    odd, _ = _segment(model, info, grid, 80)  # not aligned with the tile grid
    assert len(plan_blocks(info.height, info.width, 48)) == 64
    np.testing.assert_array_equal(many, one)
    np.testing.assert_array_equal(odd, one)
    assert np.abs(conf_many.astype(int) - conf_one).max() <= 1


def test_every_valid_pixel_is_labelled_and_nodata_is_255(demo_scene, pixel_model):
    import rasterio

    model = load_model(pixel_model)
    info = open_raster_info(demo_scene[0])
    labels, conf = _segment(model, info, TileGrid(64, 16), 96)
    with rasterio.open(demo_scene[0]) as ds:
        valid = ds.read_masks(1) > 0
    assert (~valid).sum() > 0
    assert (labels[~valid] == NODATA).all()
    assert (labels[valid] < model.n_classes).all()
    # confidence shares the labels' nodata: 0..254 where valid, 255 outside
    assert (conf[valid] > 0).all() and (conf[valid] <= 254).all()
    assert (conf[~valid] == NODATA).all()


@pytest.mark.parametrize("shape", [(1, 1), (5, 70), (33, 17), (130, 97)])
def test_rasters_smaller_than_a_tile_or_of_odd_size_work(tmp_path, pixel_model, shape):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, *shape), dtype=np.uint8)
    info = open_raster_info(write_raster(tmp_path / "s.tif", data))
    model = load_model(pixel_model)
    labels, _ = _segment(model, info, TileGrid(64, 16), 48)
    assert labels.shape == shape
    assert (labels < model.n_classes).all()


def test_pixel_model_matches_direct_nearest_centroid(tmp_path, pixel_model):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, size=(3, 40, 50), dtype=np.uint8)
    info = open_raster_info(write_raster(tmp_path / "s.tif", data))
    model = load_model(pixel_model)
    labels, _ = _segment(model, info, TileGrid(32, 8), 64)
    px = data.reshape(3, -1).T / 255.0
    c = model.centroids
    expected = ((px[:, None] - c[None]) ** 2).sum(-1).argmin(1).reshape(40, 50)
    np.testing.assert_array_equal(labels, expected)


def test_fully_nodata_tiles_are_not_sent_to_the_model(tmp_path, pixel_model):
    data = np.full((3, 64, 256), 100, dtype=np.uint8)
    mask = np.zeros((64, 256), dtype=bool)
    mask[:, :40] = True
    info = open_raster_info(write_raster(tmp_path / "m.tif", data, mask=mask))
    blk = Block(0, 0, 0, 0, 0, 64, 256)
    out = segment_block(load_model(pixel_model), info, compute_scaling(info), TileGrid(64, 16),
                        blk, 4)
    assert out.stats["tiles"] < 10  # 10 tiles cover the block, most of them only nodata
    assert (out.labels[:, 40:] == NODATA).all() and (out.labels[:, :40] != NODATA).all()


def test_a_block_holds_one_band_of_tiles_in_memory_not_the_whole_block(tmp_path, pixel_model):
    """Scores are accumulated for one row of tiles at a time: memory does not grow with the
    block's height (or the raster's), only with its width."""
    import tracemalloc

    from pipeline.segment.inference import iter_block_slabs

    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(3, 2048, 96), dtype=np.uint8)
    info = open_raster_info(write_raster(tmp_path / "tall.tif", data))
    model = load_model(pixel_model)

    def peak_bytes(height: int) -> int:
        blk = Block(0, 0, 0, 0, 0, height, 96)
        tracemalloc.start()  # one tile a batch: the NumPy model's own arrays count here too
        rows = sum(s.labels.shape[0] for s in iter_block_slabs(
            model, info, compute_scaling(info), TileGrid(64, 16), blk, 1))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert rows == height
        return peak

    short, tall = peak_bytes(256), peak_bytes(2048)
    assert tall < 1.3 * short
    assert tall < model.n_classes * 2048 * 96 * 4 / 3  # a whole-block score accumulator


def test_slabs_stream_out_in_order_and_cover_the_block(demo_scene, pixel_model):
    from pipeline.segment.inference import iter_block_slabs

    info = open_raster_info(demo_scene[0])
    model = load_model(pixel_model)
    blk = Block(0, 0, 0, 50, 30, 200, 150)
    slabs = list(iter_block_slabs(model, info, compute_scaling(info), TileGrid(64, 16), blk, 3))
    starts = [s.row for s in slabs]
    assert starts[0] == 0 and starts == sorted(starts) and len(slabs) > 3
    assert sum(s.labels.shape[0] for s in slabs) == 200
    whole = segment_block(model, info, compute_scaling(info), TileGrid(64, 16), blk, 3)
    np.testing.assert_array_equal(np.concatenate([s.labels for s in slabs]), whole.labels)


def test_the_margin_is_the_winning_minus_the_runner_up_probability():
    from pipeline.segment.inference import _finish

    # three classes at two pixels, blended from two tiles (weights sum 2)
    acc = np.array([[[1.0, 0.2]], [[0.6, 1.0]], [[0.4, 0.8]]])  # (classes, rows, cols)
    wsum = np.full((1, 2), 2.0)
    slab = _finish(acc, wsum, np.ones((1, 2), dtype=bool), 0)
    assert slab.labels.tolist() == [[0, 1]]
    assert slab.confidence.tolist() == [[round(0.5 * 254), round(0.5 * 254)]]
    assert slab.margin.tolist() == [[round(0.2 * 254), round(0.1 * 254)]]


def test_after_a_dense_crf_the_margin_is_the_models_own_before_it():
    """The CRF's mean field makes confident what it smooths over, right or wrong: the margin
    (what `suggest` ranks) is taken from the probabilities before it, blended alike."""
    from pipeline.segment.inference import _finish

    acc = np.array([[[1.9, 0.1]], [[0.1, 1.9]]])  # the CRF's: sure at both pixels
    prior = np.array([[[1.1, 0.2]], [[0.9, 1.8]]])  # before it: pixel 0 nearly a tie
    slab = _finish(acc, np.full((1, 2), 2.0), np.ones((1, 2), dtype=bool), 0, prior)
    assert slab.labels.tolist() == [[0, 1]]
    assert slab.confidence.tolist() == [[round(0.95 * 254)] * 2]
    assert slab.margin.tolist() == [[round(0.1 * 254), round(0.8 * 254)]]


def test_segment_takes_the_margin_of_a_crf_refined_model_before_its_crf(demo_scene,
                                                                       pixel_model):
    from pipeline.models.crf_refine import CRFRefined

    model = load_model(pixel_model)
    info = open_raster_info(demo_scene[0])
    grid = TileGrid(64, 16)
    plain = segment_block(model, info, compute_scaling(info), grid,
                          plan_blocks(info.height, info.width, 96)[0], 3)
    refined = segment_block(CRFRefined(model), info, compute_scaling(info), grid,
                            plan_blocks(info.height, info.width, 96)[0], 3)
    np.testing.assert_array_equal(refined.margin, plain.margin)
    assert (refined.confidence != plain.confidence).mean() > 0.1
