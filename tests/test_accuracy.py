"""`sample_accuracy`: plain accuracy from sample counts and the stratified estimators of
Olofsson et al. 2014 (Remote Sensing of Environment 148), checked against the paper's worked
example, a small example derived by hand, edge cases and every rejected input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.accuracy import sample_accuracy

approx = pytest.approx

# Olofsson et al. 2014, Section 5: Table 8, the error matrix of sample counts (rows: map class,
# columns: reference class) and the mapped area in 30 m pixels (0.09 ha each).
PAPER_NAMES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
PAPER_COUNTS = np.array([[66, 0, 5, 4],
                         [0, 55, 8, 12],
                         [1, 0, 153, 11],
                         [2, 1, 9, 313]])
PAPER_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])
HA_PER_PIXEL = 0.09


def _json_ready(result: dict) -> dict:
    """The result survives strict JSON (no NaN, no NumPy types) unchanged."""
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    return result


def _assert_close(a: object, b: object) -> None:
    """Two JSON-like results equal up to float rounding, None where the other is None."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float) and isinstance(b, float):
        assert a == approx(b, rel=1e-12, abs=1e-15)
    else:
        assert a == b


def _paper() -> dict:
    return _json_ready(sample_accuracy(PAPER_COUNTS, PAPER_NAMES, PAPER_PIXELS,
                                       pixel_area=HA_PER_PIXEL, design="stratified"))


def _by_name(result: dict, block: str = "area_weighted") -> dict[str, dict]:
    classes = result[block]["classes"] if block else result["classes"]
    return {c["name"]: c for c in classes}


# --- the published example ------------------------------------------------------------------

def test_paper_error_matrix_in_area_proportions_is_table_9() -> None:
    table_9 = [[0.0176, 0.0000, 0.0013, 0.0011],
               [0.0000, 0.0110, 0.0016, 0.0024],
               [0.0019, 0.0000, 0.2967, 0.0213],
               [0.0040, 0.0020, 0.0179, 0.6212]]
    matrix = np.array(_paper()["area_weighted"]["error_matrix"])
    assert np.round(matrix, 4) == approx(np.array(table_9), abs=1e-12)
    assert matrix.sum(axis=1) == approx(PAPER_PIXELS / PAPER_PIXELS.sum())


def test_paper_overall_accuracy_and_interval() -> None:
    r = _paper()
    oa = r["area_weighted"]["overall_accuracy"]
    assert round(oa["estimate"], 3) == 0.947  # published to two decimals: 0.95 ± 0.02
    assert round(oa["margin95"], 2) == 0.02
    est, se = oa["estimate"], oa["se"]
    assert oa["ci95"] == approx([est - 1.96 * se, est + 1.96 * se])
    assert r["overall_accuracy"] == approx(587 / 640)  # plain, unweighted: (66+55+153+313)/640


def test_paper_areas_in_hectares_and_pixels() -> None:
    published_ha = {"deforestation": (21_158, 6_158), "forest gain": (11_686, 3_756),
                    "stable forest": (285_770, 15_510), "stable non-forest": (581_386, 16_282)}
    classes = _by_name(_paper())
    for name, (area, margin) in published_ha.items():
        assert classes[name]["area"]["estimate"] == approx(area, abs=1), name
        assert classes[name]["area"]["margin95"] == approx(margin, abs=1), name
    defo = classes["deforestation"]
    assert defo["area_pixels"]["estimate"] == approx(235_086, abs=1)
    assert defo["area_pixels"]["margin95"] == approx(68_418, abs=1)
    assert defo["area_proportion"]["estimate"] == approx(235_086 / 10_000_000, abs=1e-7)


def test_paper_users_and_producers_accuracy() -> None:
    published = {  # name: (user's, ± 95 %, producer's, ± 95 %)
        "deforestation": (0.88, 0.07, 0.75, 0.21), "forest gain": (0.73, 0.10, 0.85, None),
        "stable forest": (0.93, 0.04, 0.93, 0.03), "stable non-forest": (0.96, 0.02, 0.96, None)}
    classes = _by_name(_paper())
    for name, (ua, ua_m, pa, pa_m) in published.items():
        c = classes[name]
        assert c["users_accuracy"]["estimate"] == approx(ua, abs=0.005), name
        assert c["users_accuracy"]["margin95"] == approx(ua_m, abs=0.005), name
        assert c["producers_accuracy"]["estimate"] == approx(pa, abs=0.005), name
        if pa_m is not None:
            assert c["producers_accuracy"]["margin95"] == approx(pa_m, abs=0.005), name


def test_paper_producers_variance_is_equation_7_with_pixel_counts() -> None:
    # The paper prints ± 0.23 and ± 0.01 for the producer's accuracy of forest gain and stable
    # non-forest; its own V(P̂_j) gives ± 0.25 and ± 0.02 (a simulation of the design: 0.24 and
    # 0.018). So those two are checked against the formula written out here with N_i. (pixels).
    n_i, big_n = PAPER_COUNTS.sum(axis=1), PAPER_PIXELS.astype(float)
    share = PAPER_COUNTS / n_i[:, None]
    classes = _by_name(_paper())
    for j, name in enumerate(PAPER_NAMES):
        n_hat_j = (big_n * share[:, j]).sum()
        u_j, p_j = share[j, j], big_n[j] * share[j, j] / n_hat_j
        others = sum(big_n[i] ** 2 * share[i, j] * (1 - share[i, j]) / (n_i[i] - 1)
                     for i in range(4) if i != j)
        var = (big_n[j] ** 2 * (1 - p_j) ** 2 * u_j * (1 - u_j) / (n_i[j] - 1)
               + p_j**2 * others) / n_hat_j**2
        assert classes[name]["producers_accuracy"]["estimate"] == approx(p_j)
        assert classes[name]["producers_accuracy"]["se"] == approx(math.sqrt(var))
    assert classes["forest gain"]["producers_accuracy"]["margin95"] == approx(0.254, abs=0.001)
    assert classes["stable non-forest"]["producers_accuracy"]["margin95"] == approx(0.018,
                                                                                   abs=0.001)


def test_plain_block_is_always_there() -> None:
    r = _paper()
    assert r["confusion"] == PAPER_COUNTS.tolist() and r["n"] == 640
    assert r["design"] == "stratified" and r["warnings"] == [] and "note" not in r
    defo = _by_name(r, block="")["deforestation"]
    assert defo == {"name": "deforestation", "users_accuracy": approx(66 / 75),
                    "producers_accuracy": approx(66 / 69), "f1": approx(2 * 66 / (75 + 69)),
                    "map_samples": 75, "reference_samples": 69}


# --- a small example worked by hand ---------------------------------------------------------

def test_three_classes_by_hand() -> None:
    counts = np.array([[8, 2, 0],     # n_1. = 10, shares .8 .2 0
                       [1, 8, 1],     # n_2. = 10, shares .1 .8 .1
                       [0, 5, 15]])   # n_3. = 20, shares 0 .25 .75
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"], np.array([500, 300, 200]),
                                    pixel_area=2.0, design="stratified"))
    aw = r["area_weighted"]  # W = .5 .3 .2, A = 1000 pixels = 2000 units²
    assert np.array(aw["error_matrix"]) == approx(np.array([[0.40, 0.10, 0.00],
                                                            [0.03, 0.24, 0.03],
                                                            [0.00, 0.05, 0.15]]))
    # Ô = .40 + .24 + .15; V = .25·.8·.2/9 + .09·.8·.2/9 + .04·.75·.25/19
    v_oa = 0.04 / 9 + 0.0144 / 9 + 0.0075 / 19
    assert aw["overall_accuracy"]["estimate"] == approx(0.79)
    assert aw["overall_accuracy"]["se"] == approx(math.sqrt(v_oa))
    assert aw["overall_accuracy"]["ci95"] == approx([0.79 - 1.96 * math.sqrt(v_oa),
                                                     0.79 + 1.96 * math.sqrt(v_oa)])
    a, b, c = (aw["classes"][k] for k in range(3))
    # user's: n_ii / n_i., V = U(1-U)/(n_i. - 1)
    assert a["users_accuracy"]["estimate"] == approx(0.8)
    assert a["users_accuracy"]["se"] == approx(math.sqrt(0.16 / 9))
    assert c["users_accuracy"]["se"] == approx(math.sqrt(0.75 * 0.25 / 19))
    # area proportion of a: .40 + .03 + 0; V = .25·.8·.2/9 + .09·.1·.9/9 + .04·0
    v_a = 0.04 / 9 + 0.0081 / 9
    assert a["area_proportion"]["estimate"] == approx(0.43)
    assert a["area_proportion"]["se"] == approx(math.sqrt(v_a))
    assert a["area_pixels"]["estimate"] == approx(430) and a["area"]["estimate"] == approx(860)
    assert a["area"]["se"] == approx(2000 * math.sqrt(v_a))
    # producer's of a: .40/.43; with N = 500 300 200 and N̂_.1 = 430:
    # V = [500²(1-P)²·.8·.2/9 + P²·300²·.1·.9/9] / 430²  (stratum c adds 0: n_31 = 0)
    p_a = 0.40 / 0.43
    v_pa = (500**2 * (1 - p_a) ** 2 * 0.16 / 9 + p_a**2 * 300**2 * 0.09 / 9) / 430**2
    assert a["producers_accuracy"]["estimate"] == approx(p_a)
    assert a["producers_accuracy"]["se"] == approx(math.sqrt(v_pa))
    assert b["area_proportion"]["estimate"] == approx(0.39)
    assert c["producers_accuracy"]["estimate"] == approx(0.15 / 0.18)
    assert [k["map_proportion"] for k in aw["classes"]] == approx([0.5, 0.3, 0.2])
    assert aw["total_pixels"] == 1000 and aw["pixel_area"] == 2.0


def test_perfect_map() -> None:
    counts = np.diag([30, 20, 50])
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"], np.array([100, 300, 600]),
                                    design="stratified"))
    assert r["overall_accuracy"] == 1.0
    aw = r["area_weighted"]
    assert aw["overall_accuracy"] == {"estimate": 1.0, "se": 0.0, "margin95": 0.0,
                                      "ci95": [1.0, 1.0]}
    for k, w in zip(aw["classes"], [0.1, 0.3, 0.6], strict=True):
        for key in ("users_accuracy", "producers_accuracy"):
            assert k[key]["estimate"] == approx(1.0) and k[key]["se"] == approx(0.0)
        assert k["area_proportion"]["estimate"] == approx(w)
        assert k["area_proportion"]["se"] == approx(0.0)
        assert "area" not in k  # no pixel_area given


def test_a_class_that_is_never_right() -> None:
    counts = np.array([[8, 2, 0],
                       [5, 0, 5],    # mapped as b: never b
                       [0, 3, 7]])
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"], np.array([4, 2, 4]),
                                    design="stratified"))
    b = _by_name(r, block="")["b"]
    assert (b["users_accuracy"], b["producers_accuracy"], b["f1"]) == (0.0, 0.0, 0.0)
    bw = _by_name(r)["b"]
    assert bw["users_accuracy"]["estimate"] == 0.0 and bw["users_accuracy"]["se"] == 0.0
    assert bw["producers_accuracy"]["estimate"] == 0.0 and bw["producers_accuracy"]["se"] == 0.0
    # p̂_.b = .4·2/10 + .4·3/10 > 0 even though nothing mapped as b is b
    assert bw["area_proportion"]["estimate"] == approx(0.2)


# --- designs ----------------------------------------------------------------------------------

def test_simple_equals_stratified_when_weights_are_the_sample_shares() -> None:
    counts = np.array([[8, 2, 0], [1, 8, 1], [0, 5, 15]])
    pixels = counts.sum(axis=1) * 100  # W_i = n_i. / n
    strat = sample_accuracy(counts, ["a", "b", "c"], pixels, pixel_area=4.0, design="stratified")
    simple = sample_accuracy(counts, ["a", "b", "c"], pixels, pixel_area=4.0, design="simple")
    assert simple["design"] == "simple"
    _assert_close(simple["area_weighted"], strat["area_weighted"])


def test_simple_without_mapped_pixels_gives_proportions_only() -> None:
    counts = np.array([[8, 2, 0], [1, 8, 1], [0, 5, 15]])
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"], design="simple"))
    aw = r["area_weighted"]
    assert aw["overall_accuracy"]["estimate"] == approx(r["overall_accuracy"])  # 31/40
    assert [k["area_proportion"]["estimate"] for k in aw["classes"]] == approx([9 / 40, 15 / 40,
                                                                                16 / 40])
    assert all("area_pixels" not in k and "area" not in k for k in aw["classes"])
    assert aw["total_pixels"] is None


def test_design_none_has_counts_and_a_note_but_no_area_estimates() -> None:
    r = _json_ready(sample_accuracy(PAPER_COUNTS, PAPER_NAMES, PAPER_PIXELS, design="none"))
    assert "area_weighted" not in r
    assert "not drawn at random" in r["note"] and "do not apply" in r["note"]
    assert r["overall_accuracy"] == approx(587 / 640)
    assert sample_accuracy(PAPER_COUNTS, PAPER_NAMES)["design"] == "none"  # the default


# --- undefined values -------------------------------------------------------------------------

def test_zero_over_zero_is_none() -> None:
    counts = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])  # c: never mapped, never referenced
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"]))
    c = _by_name(r, block="")["c"]
    assert (c["users_accuracy"], c["producers_accuracy"], c["f1"]) == (None, None, None)
    assert (c["map_samples"], c["reference_samples"]) == (0, 0)
    empty = _json_ready(sample_accuracy(np.zeros((2, 2), dtype=int), ["a", "b"]))
    assert empty["n"] == 0 and empty["overall_accuracy"] is None
    # stratified: c covers none of the map, so it adds nothing and warns nothing
    s = _json_ready(sample_accuracy(counts, ["a", "b", "c"], np.array([5, 5, 0]),
                                    design="stratified"))
    assert s["warnings"] == []
    cw = _by_name(s)["c"]
    assert cw["users_accuracy"]["estimate"] is None and cw["producers_accuracy"]["estimate"] is None
    assert cw["area_proportion"] == {"estimate": 0.0, "se": 0.0, "margin95": 0.0,
                                     "ci95": [0.0, 0.0]}


def test_a_stratum_with_one_sample_has_no_variance() -> None:
    counts = np.array([[9, 1, 0], [0, 1, 0], [1, 0, 8]])  # b: n_2. = 1
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"], np.array([50, 20, 30]),
                                    design="stratified"))
    assert len(r["warnings"]) == 1 and "'b' has 1 sample unit" in r["warnings"][0]
    aw = r["area_weighted"]
    assert aw["overall_accuracy"]["estimate"] == approx(0.5 * 0.9 + 0.2 + 0.3 * 8 / 9)
    assert aw["overall_accuracy"]["se"] is None and aw["overall_accuracy"]["ci95"] is None
    a, b, c = aw["classes"]
    assert b["users_accuracy"] == {"estimate": 1.0, "se": None, "margin95": None, "ci95": None}
    assert a["users_accuracy"]["se"] == approx(math.sqrt(0.09 / 9))  # its own stratum: fine
    assert all(k["area_proportion"]["se"] is None for k in aw["classes"])
    assert all(k["area_proportion"]["estimate"] is not None for k in aw["classes"])


def test_a_mapped_stratum_without_samples_makes_the_estimates_undefined() -> None:
    counts = np.array([[9, 1, 0], [0, 0, 0], [1, 0, 8]])  # b covers 20 % of the map, unsampled
    r = _json_ready(sample_accuracy(counts, ["a", "b", "c"], np.array([50, 20, 30]),
                                    design="stratified"))
    assert len(r["warnings"]) == 1 and "'b'" in r["warnings"][0]
    assert "no sample units" in r["warnings"][0]
    aw = r["area_weighted"]
    assert aw["overall_accuracy"]["estimate"] is None
    assert aw["error_matrix"][1] == [None, None, None]
    assert aw["error_matrix"][0] == approx([0.45, 0.05, 0.0])
    assert all(k["area_proportion"]["estimate"] is None for k in aw["classes"])
    assert aw["classes"][0]["users_accuracy"]["estimate"] == approx(0.9)


# --- rejected input ---------------------------------------------------------------------------

NAMES3 = ["a", "b", "c"]
GOOD = np.array([[5, 1, 0], [1, 5, 1], [0, 1, 5]])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"counts": np.ones((2, 3))}, "square"),
    ({"counts": np.ones(3)}, "square"),
    ({"counts": np.zeros((0, 0)), "class_names": []}, "at least one class"),
    ({"counts": GOOD - 2}, "negative"),
    ({"counts": GOOD + 0.5}, "whole numbers"),
    ({"counts": np.where(GOOD == 0, np.nan, GOOD)}, "finite"),
    ({"class_names": ["a", "b"]}, "class_names has 2 entries"),
    ({"class_names": ["a", "a", "c"]}, "unique"),
    ({"design": "cluster"}, "design must be one of"),
    ({"design": "stratified"}, "needs mapped_pixels"),
    ({"design": "stratified", "mapped_pixels": np.array([1, 2])}, "one entry per class"),
    ({"design": "stratified", "mapped_pixels": np.array([1, -2, 3])}, "not negative"),
    ({"design": "stratified", "mapped_pixels": np.array([10, 0, 10])},
     "stratum 'b' has sample units but 0 mapped pixels"),
    ({"design": "stratified", "mapped_pixels": np.zeros(3)}, "must not all be 0"),
    ({"design": "stratified", "mapped_pixels": np.ones(3), "pixel_area": 0.0}, "positive"),
    ({"design": "stratified", "mapped_pixels": np.ones(3), "pixel_area": "30"}, "a number"),
    ({"design": "simple", "pixel_area": 900.0}, "pixel_area needs mapped_pixels"),
    ({"design": "simple", "counts": np.zeros((3, 3))}, "at least one sample unit"),
])
def test_bad_input_raises_one_clear_line(kwargs: dict, message: str) -> None:
    args = {"counts": GOOD, "class_names": NAMES3, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        sample_accuracy(**args)
    assert "\n" not in str(err.value)
