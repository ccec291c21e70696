"""Active-learning suggestions: which pixels are picked (uncertain, spread over the scene and
the classes), reading a finished segment run, and the GeoPackage the analyst labels in QGIS."""

from __future__ import annotations

import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio.crs
from affine import Affine

from pipeline.errors import InputError
from pipeline.evaluation.suggest import read_run_blocks, suggest_points
from pipeline.labels import CONFIDENCE_SCALE, NODATA
from pipeline.publish.suggestions import write_suggestions

CRS_WKT = rasterio.crs.CRS.from_epsg(32633).to_wkt()
TRANSFORM = Affine(0.5, 0, 500_000, 0, -0.5, 4_000_000)


def suggest(labels, conf, n, n_classes=3, **kw):
    """Suggestions from a map given as one block."""
    h, w = labels.shape
    return suggest_points([(0, 0, labels, conf)], h, w, n_classes, n, **kw)


def cut(labels, conf, bh, bw, order_seed=0):
    """The map as (row_off, col_off, labels, confidence) blocks, in shuffled order."""
    h, w = labels.shape
    blocks = [(r, c, labels[r:r + bh, c:c + bw], conf[r:r + bh, c:c + bw])
              for r in range(0, h, bh) for c in range(0, w, bw)]
    order = np.random.default_rng(order_seed).permutation(len(blocks))
    return [blocks[i] for i in order]


def noisy_map(shape=(64, 64), n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, shape).astype(np.uint8)
    conf = rng.integers(150, CONFIDENCE_SCALE + 1, shape).astype(np.uint8)
    return labels, conf


def cells_of(points, cell):
    return list(zip((points.rows // cell).tolist(), (points.cols // cell).tolist(), strict=True))


# --------------------------------------------------------------------------------------------
# selection


@pytest.mark.parametrize("c0", [8, 24])  # one class / across the border of two classes
def test_points_land_in_a_planted_low_confidence_region(c0):
    labels, conf = noisy_map(n_classes=1)
    if c0 == 24:
        labels[:, 32:] = 1
    conf[40:56, c0:c0 + 16] = np.random.default_rng(1).integers(10, 40, (16, 16))
    p = suggest(labels, conf, 4, n_classes=2, cell=8)  # the region is exactly 2 x 2 cells
    assert len(p) == 4
    assert np.all((p.rows >= 40) & (p.rows < 56) & (p.cols >= c0) & (p.cols < c0 + 16))
    assert np.all(p.confidence < 40 / CONFIDENCE_SCALE)
    # each is the least-confident pixel of its cell, and the reported confidence is its own
    for r, c, v in zip(p.rows, p.cols, p.confidence, strict=True):
        r0, c0 = r // 8 * 8, c // 8 * 8
        assert conf[r, c] == conf[r0:r0 + 8, c0:c0 + 8].min()
        assert v == pytest.approx(conf[r, c] / CONFIDENCE_SCALE)
    assert all("in its 8x8 px cell" in text for text in p.reason)


def test_interior_points_go_to_uncertain_areas_not_to_class_edges():
    """Class edges are always uncertain (and unlabelled in many truths): with ``interior``,
    the points go to a planted area the model is unsure of, not to the edge pixels."""
    labels = np.zeros((96, 96), dtype=np.uint8)
    labels[:, 48:] = 1
    conf = np.full((96, 96), 240, dtype=np.uint8)
    conf[:, 47:49] = 10  # the edge between the two classes: least confident pixels
    conf[10:30, 10:30] = 120  # an area the model is unsure of
    conf[60:80, 60:80] = 120
    edge = suggest_points([(0, 0, labels, conf)], 96, 96, 2, 4, cell=8)
    assert set(edge.cols.tolist()) <= {47, 48}
    inner = suggest_points([(0, 0, labels, conf)], 96, 96, 2, 4, cell=8, interior=3)
    for r, c in zip(inner.rows.tolist(), inner.cols.tolist(), strict=True):
        assert (10 <= r < 30 and 10 <= c < 30) or (60 <= r < 80 and 60 <= c < 80), (r, c)
    assert set(inner.predicted.tolist()) == {0, 1}


def test_points_are_spread_one_per_cell_and_over_every_quadrant():
    labels = np.zeros((64, 64), np.uint8)
    conf = np.full((64, 64), 100, np.uint8)  # uniform: nothing but the spreading decides
    p = suggest(labels, conf, 16, n_classes=1)
    assert p.cell == 8 and p.candidates == 64  # several times n cells
    assert len(set(cells_of(p, p.cell))) == 16
    quadrants = np.bincount((p.rows // 32) * 2 + p.cols // 32, minlength=4)
    assert quadrants.tolist() == [4, 4, 4, 4]
    # the first four picks already cover the four quadrants
    assert len(set(((p.rows[:4] // 32) * 2 + p.cols[:4] // 32).tolist())) == 4


def test_min_spacing_keeps_points_apart():
    labels, conf = noisy_map()
    p = suggest(labels, conf, 20, cell=4, min_spacing=12)
    assert len(p) == 20
    d = np.hypot(p.rows[:, None] - p.rows[None], p.cols[:, None] - p.cols[None])
    assert d[np.triu_indices(len(p), 1)].min() >= 12


def test_a_rare_confident_class_still_gets_points():
    labels = np.zeros((64, 64), np.uint8)
    conf = np.full((64, 64), 60, np.uint8)
    labels[8:14, 50:56] = 2  # a small patch the model is sure about
    conf[8:14, 50:56] = 250
    p = suggest(labels, conf, 6, cell=8, class_names=["field", "water", "road"])
    assert 2 in p.predicted.tolist()
    assert labels[p.rows, p.cols].tolist() == p.predicted.tolist()
    assert p.predicted.tolist().count(0) == 5  # when "road" runs out, "field" fills in
    rare = p.reason[p.predicted.tolist().index(2)]
    assert "pick 1 for 'road' (predicted in 1 cells)" in rare


def test_nodata_pixels_are_never_chosen():
    labels, conf = noisy_map()
    labels[:, :32] = NODATA  # the least confident half is nodata
    conf[:, :32] = 0
    conf[10:20, 40:50] = NODATA  # confidence nodata under valid labels
    p = suggest(labels, conf, 500, cell=4)
    # the 16 x 8 cells of the valid half but the 2 x 2 whose confidence is all nodata
    assert len(p) == p.candidates == 128 - 4
    assert np.all(labels[p.rows, p.cols] != NODATA)
    assert np.all(conf[p.rows, p.cols] != NODATA)
    assert np.all(p.cols >= 32)


def test_the_result_depends_only_on_the_seed():
    labels = np.zeros((64, 64), np.uint8)
    conf = np.full((64, 64), 100, np.uint8)
    a, b = suggest(labels, conf, 10, seed=7), suggest(labels, conf, 10, seed=7)
    other = suggest(labels, conf, 10, seed=8)
    assert a.rows.tolist() == b.rows.tolist() and a.cols.tolist() == b.cols.tolist()
    assert a.reason == b.reason
    assert (a.rows.tolist(), a.cols.tolist()) != (other.rows.tolist(), other.cols.tolist())


def test_cells_with_already_labelled_pixels_are_skipped():
    labels, conf = noisy_map(n_classes=1)
    conf[40:56, 8:24] = 20
    done = [(41, 9), (50, 20)]  # two of the four low-confidence cells
    p = suggest(labels, conf, 4, n_classes=1, cell=8, exclude=done + [(999, 999)])
    taken = set(cells_of(p, 8))
    assert not taken & {(41 // 8, 9 // 8), (50 // 8, 20 // 8)}
    assert {(5, 2), (6, 1)} <= taken  # the other two planted cells still come first


def test_asking_for_more_points_than_candidates_returns_them_all():
    labels, conf = noisy_map((16, 16))
    p = suggest(labels, conf, 10, cell=8)
    assert len(p) == p.candidates == 4
    assert len(set(cells_of(p, 8))) == 4
    assert len(suggest(labels, conf, 0)) == 0


def test_streaming_blocks_gives_the_one_block_result():
    labels, conf = noisy_map((90, 75), n_classes=4, seed=3)
    conf = (conf // 16 * 16).astype(np.uint8)  # many ties inside and across cells
    labels[70:, :20] = NODATA
    whole = suggest(labels, conf, 25, n_classes=4, cell=6, seed=5)
    streamed = suggest_points(cut(labels, conf, 13, 17, order_seed=2), 90, 75, 4, 25,
                              cell=6, seed=5)
    for name in ("rows", "cols", "predicted", "confidence"):
        assert getattr(streamed, name).tolist() == getattr(whole, name).tolist()
    assert streamed.reason == whole.reason
    assert len(set(cells_of(whole, 6))) == len(whole) == 25  # one point per cell, any class


def test_bad_blocks_are_refused():
    labels, conf = noisy_map((8, 8))
    with pytest.raises(ValueError, match="outside"):
        suggest_points([(4, 0, labels, conf)], 8, 8, 3, 2)
    with pytest.raises(ValueError, match="equal 2-D shapes"):
        suggest_points([(0, 0, labels, conf[:4])], 8, 8, 3, 2)


# --------------------------------------------------------------------------------------------
# a segment run and the GeoPackage


def make_run(out: Path, labels: np.ndarray, conf: np.ndarray, status: str = "complete",
             margin: np.ndarray | None = None) -> Path:
    """A segment output directory: a finished labels.zarr (16 px chunks) and run.json; the
    store's margin is ``conf`` unless given (a two-class map: margin = 2 x conf - 1, ranked
    alike)."""
    import zarr

    from pipeline.io.zarr_store import finalize_store, prepare_store

    out.mkdir(parents=True, exist_ok=True)
    names, colors = ["field", "water", "road"], [(230, 200, 50), (30, 90, 220), (90, 90, 90)]
    tmp, _ = prepare_store(out / "labels.zarr", height=labels.shape[0], width=labels.shape[1],
                           chunk=16, block_size=32, transform=TRANSFORM, crs_wkt=CRS_WKT,
                           class_names=names, colors=colors, fingerprint="t")
    group = zarr.open_group(str(tmp), mode="r+")
    group["labels"][:] = labels
    group["confidence"][:] = conf
    group["margin"][:] = conf if margin is None else margin
    finalize_store(tmp, out / "labels.zarr", {})
    doc = {"status": status, "input": {"crs": CRS_WKT, "transform": list(TRANSFORM)},
           "model": {"class_names": names, "colors": [list(c) for c in colors]},
           "config": {"output": {"confidence": True}}}
    (out / "run.json").write_text(json.dumps(doc))
    return out


def test_a_run_is_read_in_chunk_aligned_blocks(tmp_path, monkeypatch):
    import pipeline.evaluation.suggest as suggest_module

    monkeypatch.setattr(suggest_module, "READ_TARGET", 32)
    labels, conf = noisy_map((40, 70))
    run = read_run_blocks(make_run(tmp_path / "out", labels, conf))
    assert (run.height, run.width, run.chunks) == (40, 70, (16, 16))
    assert run.class_names == ["field", "water", "road"] and run.colors[1] == (30, 90, 220)
    assert run.transform == TRANSFORM and "32633" in run.crs_wkt
    got_l, got_c = np.full_like(labels, 99), np.full_like(conf, 99)
    for r0, c0, lab, con in run.blocks():
        assert r0 % 16 == 0 and c0 % 16 == 0 and lab.shape == con.shape
        assert lab.shape[0] <= 32 and lab.shape[1] <= 32
        got_l[r0:r0 + lab.shape[0], c0:c0 + lab.shape[1]] = lab
        got_c[r0:r0 + con.shape[0], c0:c0 + con.shape[1]] = con
    assert np.array_equal(got_l, labels) and np.array_equal(got_c, conf)
    assert run.measure == "margin"  # what the blocks carry: the store's margin


def test_suggestions_go_where_the_two_best_classes_are_closest_not_the_winner_weakest(
        tmp_path):
    """Two pixels: one whose winner is weak but far ahead of the rest (0.40 / 0.15 / ...),
    one whose winner is stronger but tied with the runner-up (0.48 / 0.47): the tie is
    suggested first, and the layer reports the winning probability."""
    labels = np.zeros((32, 32), dtype=np.uint8)
    conf = np.full((32, 32), 240, dtype=np.uint8)
    margin = np.full((32, 32), 230, dtype=np.uint8)
    conf[5, 5], margin[5, 5] = round(0.40 * 254), round(0.25 * 254)  # weak, clear winner
    conf[20, 20], margin[20, 20] = round(0.48 * 254), round(0.01 * 254)  # a tie
    run = read_run_blocks(make_run(tmp_path / "out", labels, conf, margin=margin))
    pts = suggest_points(run.blocks(), run.height, run.width, 3, 1, cell=32,
                         class_names=run.class_names, measure=run.measure)
    assert (int(pts.rows[0]), int(pts.cols[0])) == (20, 20)
    assert pts.reason[0].startswith("margin 0.01")
    assert run.confidence_at(pts.rows, pts.cols)[0] == pytest.approx(0.48, abs=0.005)


def test_a_store_without_a_margin_is_ranked_by_confidence(tmp_path):
    import shutil

    labels, conf = noisy_map((32, 32))
    out = make_run(tmp_path / "out", labels, conf)
    shutil.rmtree(out / "labels.zarr" / "margin")  # written before stores kept the margin
    run = read_run_blocks(out)
    assert run.measure == "confidence"
    assert all(np.array_equal(c, conf[r:r + c.shape[0], k:k + c.shape[1]])
               for r, k, _, c in run.blocks())


def test_only_a_finished_run_with_confidence_is_accepted(tmp_path):
    labels, conf = noisy_map((16, 16))
    with pytest.raises(InputError, match="not found"):
        read_run_blocks(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no run.json"):
        read_run_blocks(tmp_path / "empty")
    with pytest.raises(InputError, match="not finished"):
        read_run_blocks(make_run(tmp_path / "running", labels, conf, status="running"))
    out = make_run(tmp_path / "nozarr", labels, conf)
    shutil.rmtree(out / "labels.zarr")
    with pytest.raises(InputError, match="no Zarr label store"):
        read_run_blocks(out)
    out = make_run(tmp_path / "noconf", labels, conf)
    shutil.rmtree(out / "labels.zarr" / "confidence")
    (out / "labels.zarr" / ".zmetadata").unlink()
    with pytest.raises(InputError, match="no confidence array"):
        read_run_blocks(out)


def test_suggestions_are_written_as_a_styled_geopackage(tmp_path):
    labels, conf = noisy_map((48, 48))
    run = read_run_blocks(make_run(tmp_path / "out", labels, conf))
    points = suggest_points(run.blocks(), run.height, run.width, len(run.class_names), 5,
                            class_names=run.class_names)
    gpkg = tmp_path / "out" / "suggestions.gpkg"
    assert write_suggestions(gpkg, points, run.class_names, run.colors, run.crs_wkt,
                             run.transform, class_field="label") == gpkg

    info = pyogrio.read_info(gpkg, layer="suggestions")
    assert info["crs"] == "EPSG:32633" and info["geometry_type"] == "Point"
    assert info["features"] == 5
    assert {"id", "label", "predicted", "confidence", "reason", "x", "y"} <= set(info["fields"])
    _, table = pyogrio.read_arrow(gpkg, layer="suggestions")
    cols = table.to_pydict()
    assert cols["label"] == [None] * 5 and cols["id"] == [1, 2, 3, 4, 5]
    assert cols["predicted"] == [run.class_names[c] for c in points.predicted]
    assert cols["confidence"] == pytest.approx(points.confidence.tolist())
    x = 500_000 + 0.5 * (points.cols + 0.5)
    y = 4_000_000 - 0.5 * (points.rows + 0.5)
    assert cols["x"] == pytest.approx(list(x)) and cols["y"] == pytest.approx(list(y))
    bounds = info["total_bounds"]
    assert bounds[0] == pytest.approx(min(x)) and bounds[3] == pytest.approx(max(y))

    with sqlite3.connect(gpkg) as con:
        (qml, default), = con.execute(
            "SELECT styleQML, useAsDefault FROM layer_styles WHERE f_table_name = 'suggestions'")
    assert default == 1
    root = ET.fromstring(qml.split("\n", 1)[1])
    widget = root.find("fieldConfiguration/field[@name='label']/editWidget")
    assert widget.get("type") == "ValueMap"
    options = [o.get("value") for o in widget.iterfind("config/Option/Option[@name='map']/"
                                                       "Option/Option")]
    assert options == ["field", "water", "road"]
    assert root.find("labeling/settings/text-style").get("fieldName") == "id"
    assert root.find("renderer-v2").get("attr") == "label"
    assert (tmp_path / "out" / "suggestions.qml").read_text() == qml
    left = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("."))
    assert left == []  # no temporary GeoPackage or journal left behind


def test_a_failed_write_leaves_no_file(tmp_path):
    labels, conf = noisy_map((16, 16))
    points = suggest(labels, conf, 3)
    gpkg = tmp_path / "s.gpkg"
    with pytest.raises(ValueError, match="predicted classes"):
        write_suggestions(gpkg, points, ["only"], [(1, 2, 3)], CRS_WKT, TRANSFORM)
    assert list(tmp_path.iterdir()) == []
