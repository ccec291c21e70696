"""`stego evaluate`: STEGO's unsupervised metrics, alignment, streaming, outputs, cluster names."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from pipeline.errors import InputError
from pipeline.evaluation import (
    EvalPair,
    cluster_names_from_file,
    cluster_names_from_metrics,
    evaluate,
    hungarian_metrics,
    load_mapping,
    rename_model_classes,
    write_evaluation,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T = Affine(1.0, 0, 500000, 0, -1.0, 5800000)  # an invented 1 m grid, EPSG:32633


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def write_labels(path: Path, data: np.ndarray, *, transform: Affine | None = T,
                 crs: str | None = "EPSG:32633", nodata: int | None = 255,
                 names: list[str] | None = None) -> str:
    """A single-band label raster (no transform and no CRS: not georeferenced)."""
    profile = {"driver": "GTiff", "width": data.shape[1], "height": data.shape[0], "count": 1,
               "dtype": data.dtype.name, "nodata": nodata}
    if transform is not None:
        profile["transform"] = transform
    if crs is not None:
        profile["crs"] = crs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dst = rasterio.open(path, "w", **profile)
    with dst:
        dst.write(data, 1)
        if names:
            dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(names)})
    return str(path)


def names(k: int) -> list[str]:
    return [f"cluster {i}" for i in range(k)]


# --- metrics on matrices ---------------------------------------------------------------------


def reference(m: np.ndarray) -> tuple[float, float]:
    """Brute force: the best injective matching by matched pixels; then accuracy and mIoU (%)."""
    k, c = m.shape
    best, best_match = -1, None
    if k >= c:  # every class gets a distinct cluster
        for clusters in itertools.permutations(range(k), c):
            s = sum(m[clusters[j], j] for j in range(c))
            if s > best:
                best, best_match = s, {clusters[j]: j for j in range(c)}
    else:  # every cluster gets a distinct class
        for classes in itertools.permutations(range(c), k):
            s = sum(m[i, classes[i]] for i in range(k))
            if s > best:
                best, best_match = s, {i: classes[i] for i in range(k)}
    ious = []
    for j in range(c):
        gt = m[:, j].sum()
        owner = [i for i, cl in best_match.items() if cl == j]
        tp = m[owner[0], j] if owner else 0
        pred = m[owner[0]].sum() if owner else 0
        union = gt + pred - tp
        if union:
            ious.append(tp / union)
    return 100 * best / m.sum(), 100 * float(np.mean(ious))


def test_a_permuted_perfect_prediction_scores_100():
    m = np.zeros((3, 3), dtype=np.int64)
    m[2, 0], m[0, 1], m[1, 2] = 50, 30, 20  # cluster 2 = class 0, ...
    r = hungarian_metrics(m, ["a", "b", "c"], names(3))
    assert r["accuracy"] == 100 and r["mIoU"] == 100
    assert r["matching"] == {"0": "b", "1": "c", "2": "a"}
    assert r["unmatched_clusters"] == [] and r["unmatched_classes"] == []


def test_a_constant_prediction_scores_the_majority_share():
    m = np.array([[60, 30, 10], [0, 0, 0], [0, 0, 0]])  # everything predicted as cluster 0
    r = hungarian_metrics(m, ["a", "b", "c"], names(3))
    assert r["accuracy"] == pytest.approx(60.0)
    assert r["per_class_iou"]["a"] == pytest.approx(60.0)  # 60 / (100 + 60 - 60)
    assert r["per_class_iou"]["b"] == 0 and r["per_class_iou"]["c"] == 0
    assert r["mIoU"] == pytest.approx(20.0)


@pytest.mark.parametrize("shape", [(3, 3), (4, 3), (3, 4), (5, 3)])
def test_agrees_with_a_brute_force_reference(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        m = rng.integers(0, 1000, size=shape)
        r = hungarian_metrics(m, [f"c{j}" for j in range(shape[1])], names(shape[0]))
        acc, miou = reference(m)
        assert r["accuracy"] == pytest.approx(acc, abs=1e-3)
        assert r["mIoU"] == pytest.approx(miou, abs=1e-3)


def test_more_clusters_than_classes_by_hand():
    m = np.array([[50, 5], [3, 30], [10, 2], [1, 9]])  # 4 clusters x 2 classes, 110 px
    r = hungarian_metrics(m, ["x", "y"], names(4))
    assert r["matching"] == {"0": "x", "1": "y"} and r["unmatched_clusters"] == [2, 3]
    # main variant: the 22 px of clusters 2 and 3 are errors
    assert r["accuracy"] == pytest.approx(100 * 80 / 110, abs=1e-3)
    assert r["per_class_iou"]["x"] == pytest.approx(100 * 50 / (55 + 64 - 50), abs=1e-3)
    assert r["per_class_iou"]["y"] == pytest.approx(100 * 30 / (33 + 46 - 30), abs=1e-3)
    # STEGO variant: they are dropped
    s = r["stego_variant"]
    assert s["dropped_pixels"] == 22
    assert s["accuracy"] == pytest.approx(100 * 80 / 88, abs=1e-3)
    assert s["mIoU"] == pytest.approx(100 * (50 / 58 + 30 / 38) / 2, abs=1e-3)


class OfficialUnsupervisedMetrics:
    """STEGO's ``UnsupervisedMetrics`` (mhamilton723/STEGO, src/utils.py) written out again in
    torch, as the official code runs it, to check ``stego_variant`` against."""

    def __init__(self, n_classes: int, extra_clusters: int) -> None:
        self.n_classes, self.extra_clusters = n_classes, extra_clusters
        self.stats = torch.zeros(n_classes + extra_clusters, n_classes, dtype=torch.int64)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        actual, preds = target.reshape(-1), preds.reshape(-1)
        mask = (actual >= 0) & (actual < self.n_classes) & (preds >= 0) & (preds < self.n_classes)
        actual, preds = actual[mask], preds[mask]
        k = self.n_classes + self.extra_clusters
        self.stats += torch.bincount(k * actual + preds, minlength=self.n_classes * k) \
            .reshape(self.n_classes, k).t()

    def compute(self) -> dict[str, float]:
        from scipy.optimize import linear_sum_assignment

        assignments = linear_sum_assignment(self.stats.detach().cpu(), maximize=True)
        if self.extra_clusters == 0:
            histogram = self.stats[np.argsort(assignments[1]), :]
        else:
            assignments_t = linear_sum_assignment(self.stats.detach().cpu().t(), maximize=True)
            histogram = self.stats[assignments_t[1], :]
            missing = list(set(range(self.n_classes + self.extra_clusters)) - set(assignments[0]))
            new_row = self.stats[missing, :].sum(0, keepdim=True)
            histogram = torch.cat([histogram, new_row], axis=0)
            new_col = torch.zeros(self.n_classes + 1, 1, dtype=histogram.dtype)
            histogram = torch.cat([histogram, new_col], axis=1)
        histogram = histogram.double()
        tp = torch.diag(histogram)
        fp = torch.sum(histogram, dim=0) - tp
        fn = torch.sum(histogram, dim=1) - tp
        iou = tp / (tp + fp + fn)
        opc = torch.sum(tp) / torch.sum(histogram)
        return {"mIoU": 100 * iou[~torch.isnan(iou)].mean().item(), "Accuracy": 100 * opc.item()}


def _confusion(pred: np.ndarray, truth: np.ndarray, k: int, c: int) -> np.ndarray:
    """(k clusters x c classes) pixel counts of the pixels with a truth in 0..c-1."""
    keep = (truth >= 0) & (truth < c)
    return np.bincount(pred[keep] * c + truth[keep], minlength=k * c).reshape(k, c)


def test_stego_variant_is_stegos_metric_in_the_issues_smallest_case(tmp_path):
    # 2 classes, 3 clusters: STEGO drops the 10 pixels of cluster 2 although it is the best
    # match for class 0 (the main variant matches it)
    pred = np.array([2] * 10 + [0] * 5 + [1] * 10)
    truth = np.array([0] * 12 + [1] * 13)
    r = hungarian_metrics(_confusion(pred, truth, 3, 2), ["a", "b"], names(3))
    s = r["stego_variant"]
    assert round(s["accuracy"], 2) == 80.0 and round(s["mIoU"], 2) == 58.46
    assert s["dropped_pixels"] == 10 and s["matching"] == {"0": "a", "1": "b"}
    assert r["matching"] == {"1": "b", "2": "a"}  # the main variant's, on every pixel
    official = OfficialUnsupervisedMetrics(2, 1)
    official.update(torch.from_numpy(pred), torch.from_numpy(truth))
    assert official.compute() == pytest.approx({"Accuracy": 80.0, "mIoU": 58.4615}, abs=1e-4)
    # the same through `evaluate`: the confusion rows are the PRED's cluster ids
    pp = write_labels(tmp_path / "p.tif", pred.astype(np.uint8).reshape(5, 5))
    gp = write_labels(tmp_path / "g.tif", (truth + 1).astype(np.uint8).reshape(5, 5))
    e = evaluate([EvalPair(pp, gp)], ignore=[0])
    assert (e["stego_variant"]["accuracy"], round(e["stego_variant"]["mIoU"], 2)) == (80.0, 58.46)


@pytest.mark.parametrize("k,c", [(3, 3), (5, 3), (4, 2), (6, 4), (2, 3)])
def test_stego_variant_agrees_with_the_official_code_on_random_pixels(k, c):
    rng = np.random.default_rng(10 * k + c)
    for n in (8, 40, 3000):  # few pixels make empty classes and ties
        for _ in range(10):
            pred = rng.integers(0, k, n)
            truth = rng.integers(-1, c, n)  # -1: ignored, as in STEGO's masks
            r = hungarian_metrics(_confusion(pred, truth, k, c), [f"c{j}" for j in range(c)],
                                  names(k))
            # fewer clusters than classes: STEGO's probe with c clusters, some never predicted
            official = OfficialUnsupervisedMetrics(c, max(0, k - c))
            official.update(torch.from_numpy(pred), torch.from_numpy(truth))
            expected = official.compute()
            s = r["stego_variant"]
            for ours, theirs in ((s["accuracy"], expected["Accuracy"]),
                                 (s["mIoU"], expected["mIoU"])):
                if math.isnan(theirs):
                    assert ours is None
                else:
                    assert ours == pytest.approx(theirs, abs=1e-3)
            assert s["dropped_pixels"] == int(((pred >= c) & (truth >= 0)).sum())


def test_fewer_clusters_than_classes_gives_unmatched_classes_iou_zero():
    m = np.array([[40, 10, 5], [0, 30, 15]])  # 2 clusters x 3 classes
    r = hungarian_metrics(m, ["a", "b", "c"], names(2))
    assert r["unmatched_classes"] == ["c"] and r["per_class_iou"]["c"] == 0
    assert r["accuracy"] == pytest.approx(70.0)
    iou_a, iou_b = 40 / (55 + 40 - 40), 30 / (45 + 40 - 30)
    assert r["mIoU"] == pytest.approx(100 * (iou_a + iou_b + 0) / 3, abs=1e-3)


# --- evaluation of rasters -------------------------------------------------------------------


def test_ignore_values_and_pred_nodata_are_excluded_and_pairs_accumulate(tmp_path):
    gt1 = np.array([[1, 1, 2, 2], [0, 1, 2, 0]], dtype=np.uint8)
    pr1 = np.array([[5, 5, 3, 255], [5, 3, 3, 3]], dtype=np.uint8)
    gt2 = np.array([[2, 2, 2], [1, 0, 1]], dtype=np.uint8)
    pr2 = np.array([[3, 3, 5], [5, 5, 255]], dtype=np.uint8)
    pairs = []
    for i, (g, p) in enumerate([(gt1, pr1), (gt2, pr2)]):
        pairs.append(EvalPair(write_labels(tmp_path / f"p{i}.tif", p, transform=None, crs=None),
                              write_labels(tmp_path / f"g{i}.tif", g, transform=None, crs=None,
                                           nodata=None)))
    r = evaluate(pairs, ignore=[0])
    assert r["classes"] == ["class 1", "class 2"]
    assert len(r["clusters"]) == 6  # cluster ids 0..5 seen
    conf = np.array(r["confusion"]["matrix"])
    # by hand: class 1 -> cluster 5: (0,0),(0,1) + (1,0) in pair 2 = 3; cluster 3: (1,1) = 1
    #          class 2 -> cluster 3: (0,2),(1,2) + (0,0),(0,1) = 4; cluster 5: (0,2) pair 2 = 1
    expected = np.zeros((6, 2), dtype=int)
    expected[5, 0], expected[3, 0], expected[3, 1], expected[5, 1] = 3, 1, 4, 1
    np.testing.assert_array_equal(conf, expected)
    assert r["pixels"]["nodata"] == 2 and r["pixels"]["ignored"] == 3
    assert r["pixels"]["evaluated"] == 9 and r["pixels"]["total"] == 14
    assert r["accuracy"] == pytest.approx(100 * 7 / 9, abs=1e-3)
    alone = evaluate(pairs[:1], ignore=[0])
    assert alone["pixels"]["evaluated"] == 5


def test_a_gt_nodata_value_is_ignored(tmp_path):
    g = np.array([[1, 2, 9]], dtype=np.uint8)
    p = np.array([[0, 1, 0]], dtype=np.uint8)
    r = evaluate([EvalPair(write_labels(tmp_path / "p.tif", p),
                           write_labels(tmp_path / "g.tif", g, nodata=9))])
    assert r["classes"] == ["class 1", "class 2"] and r["accuracy"] == 100
    assert r["pixels"]["ignored"] == 1


def test_georeferenced_gt_on_a_sub_window_is_evaluated_on_the_overlap(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, size=(20, 30)).astype(np.uint8)
    perm = np.array([7, 9, 8], dtype=np.uint8)  # GT = a relabelling of PRED on its window
    gt = perm[pred[5:13, 12:22]]
    t_gt = T @ Affine.translation(12, 5)
    pp = write_labels(tmp_path / "pred.tif", pred)
    r = evaluate([EvalPair(pp, write_labels(tmp_path / "gt.tif", gt, transform=t_gt))])
    assert r["accuracy"] == 100 and r["mIoU"] == 100
    assert r["pixels"]["total"] == 80
    assert r["inputs"][0]["pred_window"] == {"row_off": 5, "col_off": 12, "height": 8,
                                             "width": 10}
    # a GT reaching past PRED's edge: only the 5 overlapping rows count
    t_edge = T @ Affine.translation(12, 15)
    gt_edge = np.zeros((8, 10), dtype=np.uint8)
    gt_edge[:5] = perm[pred[15:20, 12:22]]
    r = evaluate([EvalPair(pp, write_labels(tmp_path / "edge.tif", gt_edge, transform=t_edge))])
    assert r["pixels"]["total"] == 50 and r["accuracy"] == 100
    assert r["inputs"][0]["pred_window"]["height"] == 5
    # a GT starting above and left of PRED: its rows 2.. and cols 3.. lie on PRED
    gt_nw = np.zeros((8, 10), dtype=np.uint8)
    gt_nw[2:, 3:] = perm[pred[:6, :7]]
    r = evaluate([EvalPair(pp, write_labels(tmp_path / "nw.tif", gt_nw,
                                            transform=T @ Affine.translation(-3, -2)))])
    assert r["pixels"]["total"] == 42 and r["accuracy"] == 100


def test_misaligned_ground_truth_is_a_clear_error(tmp_path):
    pp = write_labels(tmp_path / "pred.tif", np.zeros((20, 30), dtype=np.uint8))
    g = np.ones((10, 10), dtype=np.uint8)
    cases = {
        "pixel size": write_labels(tmp_path / "res.tif", g, transform=Affine(
            2.0, 0, 500000, 0, -2.0, 5800000)),
        "CRS differs": write_labels(tmp_path / "crs.tif", g, crs="EPSG:32632"),
        "does not overlap": write_labels(tmp_path / "far.tif", g,
                                         transform=T @ Affine.translation(100, 0)),
        "fraction of a pixel": write_labels(tmp_path / "half.tif", g,
                                            transform=T @ Affine.translation(0.5, 0)),
    }
    for problem, gt in cases.items():
        with pytest.raises(InputError, match=problem) as exc:
            evaluate([EvalPair(pp, gt)])
        assert exc.value.path == gt


def test_non_georeferenced_rasters_need_the_same_shape(tmp_path):
    pp = write_labels(tmp_path / "pred.tif", np.zeros((20, 30), dtype=np.uint8),
                      transform=None, crs=None)
    gt = write_labels(tmp_path / "gt.tif", np.ones((20, 29), dtype=np.uint8),
                      transform=None, crs=None)
    with pytest.raises(InputError, match="shapes must match"):
        evaluate([EvalPair(pp, gt)])
    same = write_labels(tmp_path / "ok.png.tif", np.ones((20, 30), dtype=np.uint8),
                        transform=None, crs=None)
    assert evaluate([EvalPair(pp, same)])["accuracy"] == 100


def test_a_png_gt_on_the_grid_of_a_georeferenced_pred_works(tmp_path):
    pred = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    pp = write_labels(tmp_path / "pred.tif", pred)
    Image.fromarray(np.array([[4, 6], [6, 6]], dtype=np.uint8), "L").save(tmp_path / "gt.png")
    r = evaluate([EvalPair(pp, str(tmp_path / "gt.png"))])
    assert r["accuracy"] == 100 and r["classes"] == ["class 4", "class 6"]


def _zarr_pred(path: Path, labels: np.ndarray, transform: Affine) -> str:
    from pipeline.io.zarr_store import finalize_store, prepare_store

    tmp, _ = prepare_store(path, height=labels.shape[0], width=labels.shape[1], chunk=16,
                           block_size=32, transform=transform,
                           crs_wkt=rasterio.crs.CRS.from_epsg(32633).to_wkt(),
                           class_names=names(4), colors=[(1, 2, 3)] * 4, fingerprint="t")
    import zarr

    zarr.open_group(str(tmp), mode="r+")["labels"][:] = labels
    return str(finalize_store(tmp, path, {}))


def test_streaming_block_by_block_equals_one_piece(tmp_path):
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, size=(50, 37)).astype(np.uint8)
    pred[rng.random(pred.shape) < 0.1] = 255
    gt = ((pred.astype(int) + (rng.random(pred.shape) < 0.3)) % 4 + 1).astype(np.uint16) * 100
    gt[rng.random(gt.shape) < 0.1] = 0
    pairs = [EvalPair(write_labels(tmp_path / "pred.tif", pred),
                      write_labels(tmp_path / "gt.tif", gt, nodata=None))]
    small = evaluate(pairs, ignore=[0], block_rows=7)
    whole = evaluate(pairs, ignore=[0], block_rows=10_000)
    assert small["confusion"] == whole["confusion"] and small["pixels"] == whole["pixels"]
    assert small["accuracy"] == whole["accuracy"] and 0 < small["accuracy"] < 100
    # the same labels in a labels.zarr store (georeferencing from spatial_ref) give the same
    zp = _zarr_pred(tmp_path / "labels.zarr", pred, T)
    z = evaluate([EvalPair(zp, pairs[0].gt)], ignore=[0], block_rows=7)
    assert z["confusion"] == whole["confusion"]


def test_wide_gt_values_are_counted_too(tmp_path):
    pred = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    gt = np.array([[10, 10, 60000, 60000]], dtype=np.uint16)  # span > one bincount table
    r = evaluate([EvalPair(write_labels(tmp_path / "p.tif", pred),
                           write_labels(tmp_path / "g.tif", gt, nodata=None))])
    assert r["classes"] == ["class 10", "class 60000"] and r["accuracy"] == 100


# --- mappings --------------------------------------------------------------------------------


def test_mapping_files_and_builtins(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("value,class\n1,road\n5,road\n2,house\n0,ignore\n")
    m = load_mapping(str(csv))
    assert m.classes == ["road", "house"]
    assert m.index(1) == m.index(5) == 0 and m.index(0) == -1 and m.index(7) is None
    yml = tmp_path / "m.yaml"
    yml.write_text("1: road\n2: house\n0: null\n")
    assert load_mapping(str(yml)).lookup == {1: 0, 2: 1, 0: -1}
    p3 = load_mapping("potsdam3")
    assert p3.classes == ["roads and cars", "buildings and clutter", "vegetation and trees"]
    assert [p3.index(v) for v in range(7)] == [-1, 0, 1, 2, 2, 0, 1]
    assert load_mapping("potsdam6").classes[4] == "car"
    with pytest.raises(InputError, match="not found"):
        load_mapping(str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("v,name\n1,x\n")
    with pytest.raises(InputError, match="header"):
        load_mapping(str(bad))


def test_a_gt_value_missing_from_the_mapping_is_an_error(tmp_path):
    pp = write_labels(tmp_path / "p.tif", np.zeros((2, 2), dtype=np.uint8))
    gt = write_labels(tmp_path / "g.tif", np.array([[1, 2], [3, 9]], dtype=np.uint8), nodata=None)
    with pytest.raises(InputError, match="9 are not in the mapping"):
        evaluate([EvalPair(pp, gt)], mapping="potsdam6")
    assert evaluate([EvalPair(pp, gt)], mapping="potsdam6", ignore=[9])["pixels"]["ignored"] == 1


def _potsdam() -> tuple[Path, Path, np.ndarray]:
    base = shared("isprs_potsdam")
    gt_path = base / "labels" / "2_10_0_0_512_512.png"
    return gt_path, base / "images" / "2_10_0_0_512_512.png", np.array(Image.open(gt_path))


def test_potsdam3_mapping_on_the_real_potsdam_crop(tmp_path):
    gt_path, _, gt = _potsdam()
    lut = np.full(256, 255, dtype=np.uint8)
    lut[[1, 5]], lut[[2, 6]], lut[[3, 4]] = 0, 1, 2
    pp = write_labels(tmp_path / "p3.tif", lut[gt], transform=None, crs=None)
    r = evaluate([EvalPair(pp, str(gt_path))], mapping="potsdam3", ignore=[0])
    assert r["accuracy"] == 100 and r["mIoU"] == 100
    assert r["matching"] == {"0": "roads and cars", "1": "buildings and clutter",
                             "2": "vegetation and trees"}
    assert r["pixels"]["evaluated"] == int((gt > 0).sum())

    # PRED = the 6 fine classes: 6 clusters for 3 classes, 3 of them unmatched
    fine = np.where(gt > 0, gt.astype(int) - 1, 255).astype(np.uint8)
    pf = write_labels(tmp_path / "p6.tif", fine, transform=None, crs=None,
                      names=["impervious", "building", "low veg", "tree", "car", "clutter"])
    r = evaluate([EvalPair(pf, str(gt_path))], mapping="potsdam3", ignore=[0])
    counts = {v: int((gt == v).sum()) for v in range(1, 7)}
    veg_kept = max(counts[3], counts[4])  # the larger of low vegetation / tree is matched
    matched = counts[1] + counts[2] + veg_kept
    assert len(r["unmatched_clusters"]) == 3
    assert r["accuracy"] == pytest.approx(100 * matched / sum(counts.values()), abs=1e-3)
    assert r["accuracy"] < 100
    # STEGO's metric drops the clusters with ids >= 3 (tree, car, clutter) before matching;
    # impervious, building and low vegetation then match their merged classes exactly
    assert r["stego_variant"]["accuracy"] == 100 and r["stego_variant"]["mIoU"] == 100
    assert r["stego_variant"]["dropped_pixels"] == counts[4] + counts[5] + counts[6]
    assert r["matching"]["1"] == "buildings and clutter"


# --- vector ground truth ---------------------------------------------------------------------


def _write_gpkg(path: Path, polygons: list, values: list[str] | None, crs: str) -> str:
    import pyogrio.raw
    import shapely

    fields = ["class"] if values is not None else ["area"]
    data = [np.array(values, dtype=object)] if values is not None else [
        np.array([shapely.area(p) for p in polygons])]
    pyogrio.raw.write(str(path), geometry=shapely.to_wkb(np.array(polygons, dtype=object)),
                      field_data=data, fields=fields, crs=crs, geometry_type="Polygon",
                      driver="GPKG")
    return str(path)


def test_vector_ground_truth_with_a_class_field(tmp_path):
    import shapely

    pred = np.zeros((20, 20), dtype=np.uint8)
    pred[2:6, 2:10] = 3  # polygon "a": rows 2..5, cols 2..9
    pred[10:18, 12:16] = 1  # polygon "b"
    pp = write_labels(tmp_path / "pred.tif", pred)
    x0, y0 = T.c, T.f
    a = shapely.box(x0 + 2, y0 - 6, x0 + 10, y0 - 2)
    b = shapely.box(x0 + 12, y0 - 18, x0 + 16, y0 - 10)
    gpkg = _write_gpkg(tmp_path / "gt.gpkg", [a, b], ["a", "b"], "EPSG:32633")
    r = evaluate([EvalPair(pp, gpkg)])
    assert r["classes"] == ["background", "a", "b"]
    assert r["accuracy"] == 100 and r["inputs"][0]["class_field"] == "class"
    assert r["matching"] == {"0": "background", "1": "b", "3": "a"}
    # without a class-like field every polygon is "foreground"
    plain = _write_gpkg(tmp_path / "plain.gpkg", [a, b], None, "EPSG:32633")
    r = evaluate([EvalPair(pp, plain)])
    assert r["classes"] == ["background", "foreground"]
    assert r["pixels"]["evaluated"] == 400
    with pytest.raises(InputError, match="no field 'nope'"):
        evaluate([EvalPair(pp, gpkg)], class_field="nope")
    # polygons in another CRS are reprojected onto PRED's grid
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lonlat = [shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
              for g in (a, b)]
    geo = _write_gpkg(tmp_path / "geo.gpkg", lonlat, ["a", "b"], "EPSG:4326")
    assert evaluate([EvalPair(pp, geo)])["accuracy"] > 99


def test_spacenet_building_footprints_as_vector_ground_truth(tmp_path):
    import pyogrio.raw
    import shapely
    from rasterio.features import rasterize

    tif = shared("spacenet4_atlanta", "sample_geotiff.tif")
    geojson = shared("spacenet4_atlanta", "geotiff_labels.geojson")
    with rasterio.open(tif) as ds:
        transform, crs, shape = ds.transform, ds.crs, ds.shape
    wkb = pyogrio.raw.read(str(geojson), columns=[])[2]
    fp = rasterize([(g, 1) for g in shapely.from_wkb(wkb)], out_shape=shape,
                   transform=transform, fill=0, dtype="uint8")
    assert 0.03 < fp.mean() < 0.06
    pp = write_labels(tmp_path / "pred.tif", fp, transform=transform, crs=crs.to_wkt())
    r = evaluate([EvalPair(pp, str(geojson), str(tif))])
    assert sorted(r["classes"]) == ["background", "foreground"]
    assert r["accuracy"] == 100 and r["mIoU"] == 100
    assert r["matching"] == {"0": "background", "1": "foreground"}
    shifted = np.zeros_like(fp)
    shifted[:, 6:] = fp[:, :-6]
    ps = write_labels(tmp_path / "shifted.tif", shifted, transform=transform, crs=crs.to_wkt())
    s = evaluate([EvalPair(ps, str(geojson))])
    assert s["accuracy"] < 100 and s["per_class_iou"]["foreground"] < 90


# --- outputs ---------------------------------------------------------------------------------


def _check_png(path: Path, max_w: int = 1100) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert im.format == "PNG" and 100 < w <= max_w and 50 < h < 2000
    return w, h


def test_outputs_are_written_atomically_and_are_sane(tmp_path):
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 4, size=(300, 500)).astype(np.uint8)
    gt = (pred % 3 + 1).astype(np.uint8)
    gt[:10] = 0
    img = rng.integers(0, 255, size=(3, 300, 500)).astype(np.uint8)
    with rasterio.open(tmp_path / "img.tif", "w", driver="GTiff", width=500, height=300,
                       count=3, dtype="uint8", transform=T, crs="EPSG:32633") as dst:
        dst.write(img)
    pair = EvalPair(write_labels(tmp_path / "pred.tif", pred),
                    write_labels(tmp_path / "gt.tif", gt, nodata=None), str(tmp_path / "img.tif"))
    metrics = evaluate([pair], ignore=[0])
    out = tmp_path / "eval"
    files = write_evaluation(metrics, [pair], out)
    assert sorted(p.name for p in out.iterdir()) == ["confusion.png", "metrics.json",
                                                     "preview.png"]
    assert set(files) == {"metrics", "confusion", "preview"}
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "mIoU", "per_class_iou", "matching", "unmatched_clusters",
                "confusion", "pixels", "stego_variant", "inputs", "classes", "clusters"):
        assert key in doc
    assert set(doc["pixels"]) >= {"total", "evaluated", "ignored", "nodata"}
    # 4 clusters, 3 classes: STEGO's metric drops cluster 3, the others are pure
    assert doc["stego_variant"]["accuracy"] == 100 and doc["accuracy"] < 100
    assert doc["stego_variant"]["dropped_pixels"] == int((pred[10:] == 3).sum())
    _check_png(out / "confusion.png", max_w=2000)
    w3, _ = _check_png(out / "preview.png")
    assert w3 <= 1024
    # without an image: prediction | ground truth only
    pair2 = EvalPair(pair.pred, pair.gt)
    write_evaluation(metrics, [pair2], tmp_path / "eval2")
    _check_png(tmp_path / "eval2" / "preview.png")


def test_preview_of_a_large_zarr_pred_is_decimated(tmp_path):
    pred = (np.arange(400)[:, None] // 50 + np.arange(600)[None, :] // 75) % 4
    zp = _zarr_pred(tmp_path / "labels.zarr", pred.astype(np.uint8), T)
    gt = write_labels(tmp_path / "gt.tif", (pred + 1).astype(np.uint8), nodata=None)
    metrics = evaluate([EvalPair(zp, gt)])
    assert metrics["accuracy"] == 100
    files = write_evaluation(metrics, [EvalPair(zp, gt)], tmp_path / "out")
    w, h = _check_png(files["preview"])
    assert w <= 1024 and h < 700


# --- naming clusters -------------------------------------------------------------------------


def test_cluster_names_from_metrics_and_from_a_file(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"matching": {"2": "building", "0": "road"}}))
    assert cluster_names_from_metrics(metrics, 4) == ["road", "cluster 1", "building",
                                                      "cluster 3"]
    with pytest.raises(InputError, match="not in the model"):
        cluster_names_from_metrics(metrics, 2)
    yml = tmp_path / "names.yaml"
    yml.write_text("0: water\n2: {name: forest, color: '#00ff00'}\n3: [field, 200 180 0]\n")
    names_, colors = cluster_names_from_file(yml, 4)
    assert names_ == ["water", "cluster 1", "forest", "field"]
    assert colors == [None, None, (0, 255, 0), (200, 180, 0)]
    csv = tmp_path / "names.csv"
    csv.write_text("cluster,name\n1,roofs\n")
    assert cluster_names_from_file(csv, 3) == (["cluster 0", "roofs", "cluster 2"], None)
    dup = tmp_path / "dup.yaml"
    dup.write_text("0: a\n1: a\n")
    with pytest.raises(InputError, match="duplicate"):
        cluster_names_from_file(dup, 2)


def test_rename_model_classes_rewrites_model_json_only(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    meta = {"format_version": 1, "method": "pixel-kmeans", "class_names": names(3),
            "colors": [[1, 1, 1], [2, 2, 2], [3, 3, 3]], "params": {"k": 3}, "fit": {"x": 1}}
    (model / "model.json").write_text(json.dumps(meta, indent=2))
    (model / "model.safetensors").write_bytes(b"weights")
    rename_model_classes(model, ["road", "roof", "tree"], [None, (9, 9, 9), None])
    new = json.loads((model / "model.json").read_text())
    assert new["class_names"] == ["road", "roof", "tree"]
    assert new["colors"] == [[1, 1, 1], [9, 9, 9], [3, 3, 3]]
    assert {k: v for k, v in new.items() if k not in ("class_names", "colors")} == {
        k: v for k, v in meta.items() if k not in ("class_names", "colors")}
    assert (model / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in model.iterdir()) == ["model.json", "model.safetensors"]
    with pytest.raises(InputError, match="3 clusters"):
        rename_model_classes(model, ["a", "b"])
