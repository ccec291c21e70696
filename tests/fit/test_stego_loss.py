"""STEGO correspondence loss: loop-level references, sampling convention, derangements, replay."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pipeline.fit.stego_loss import (
    LossWeights,
    correlation_term,
    correspondence_loss,
    draw_coords,
    sample,
    super_perm,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / max(norm, 1e-10) for x in v]


def _loop_term(f1, f2, c1, c2, shift, pointwise, zero_clamp, stabilize) -> float:
    """Straightforward reference with explicit loops over n, h, w, i, j."""
    n_, _, h_, w_ = f1.shape
    _, _, i_, j_ = f2.shape

    def unit_vectors(t):
        vals = t.tolist()
        return [
            [[_unit([ch[a][b] for ch in vals[n]]) for b in range(t.shape[3])]
             for a in range(t.shape[2])]
            for n in range(t.shape[0])
        ]  # fmt: skip

    def dot(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    uf1, uf2, uc1, uc2 = (unit_vectors(t) for t in (f1, f2, c1, c2))
    fd, cd = {}, {}
    for n, h, w, i, j in itertools.product(range(n_), range(h_), range(w_), range(i_), range(j_)):
        fd[n, h, w, i, j] = dot(uf1[n][h][w], uf2[n][i][j])
        cd[n, h, w, i, j] = dot(uc1[n][h][w], uc2[n][i][j])
    if pointwise:
        old_mean = sum(fd.values()) / len(fd)
        centred = {}
        for n, h, w in itertools.product(range(n_), range(h_), range(w_)):
            keys = [(n, h, w, i, j) for i in range(i_) for j in range(j_)]
            m = sum(fd[k] for k in keys) / len(keys)
            for k in keys:
                centred[k] = fd[k] - m
        new_mean = sum(centred.values()) / len(centred)
        fd = {k: v - new_mean + old_mean for k, v in centred.items()}
    lo = 0.0 if zero_clamp else -9999.0
    total = 0.0
    for k in fd:
        s = max(cd[k], lo)
        if stabilize:
            s = min(s, 0.8)
        total += -s * (fd[k] - shift)
    return total / len(fd)


@pytest.mark.parametrize(
    "pointwise,zero_clamp,stabilize", list(itertools.product([True, False], repeat=3))
)
@pytest.mark.parametrize("same", [False, True])
def test_correlation_term_matches_loops(pointwise, zero_clamp, stabilize, same):
    g = _gen(1)
    f1 = torch.randn(2, 5, 4, 4, generator=g, dtype=DT)
    c1 = torch.randn(2, 3, 4, 4, generator=g, dtype=DT)
    if same:  # the self pairing: S has exact 1s on its diagonal (exercises the 0.8 cap)
        f2, c2 = f1, c1
    else:  # a partner of another spatial size catches axis mix-ups
        f2 = torch.randn(2, 5, 3, 5, generator=g, dtype=DT) + 0.5
        c2 = torch.randn(2, 3, 3, 5, generator=g, dtype=DT)
    for shift in (0.0, 0.08, 0.46):
        got = correlation_term(
            f1, f2, c1, c2, shift, pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize
        )
        want = _loop_term(f1, f2, c1, c2, shift, pointwise, zero_clamp, stabilize)
        assert got.dtype == DT and got.dim() == 0
        assert abs(float(got) - want) < 1e-10


def test_correlation_term_options_matter():
    """Each option changes the value on this data (so the parametrized test can tell them apart)."""
    g = _gen(2)
    f1, f2 = (torch.randn(2, 5, 4, 4, generator=g, dtype=DT) + 0.3 for _ in range(2))
    c1 = torch.randn(2, 3, 4, 4, generator=g, dtype=DT)
    base = dict(pointwise=True, zero_clamp=True, stabilize=False)
    ref = float(correlation_term(f1, f2, c1, c1, 0.1, **base))
    for key in base:
        flipped = {**base, key: not base[key]}
        assert abs(float(correlation_term(f1, f2, c1, c1, 0.1, **flipped)) - ref) > 1e-6


def _manual_bilinear(t: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """align_corners=True bilinear interpolation with border clamping; t is (C, H, W)."""
    _, hh, ww = t.shape
    px = min(max((x + 1) / 2 * (ww - 1), 0.0), ww - 1)
    py = min(max((y + 1) / 2 * (hh - 1), 0.0), hh - 1)
    x0, y0 = min(int(math.floor(px)), ww - 2), min(int(math.floor(py)), hh - 2)
    ax, ay = px - x0, py - y0
    return (
        t[:, y0, x0] * (1 - ax) * (1 - ay)
        + t[:, y0, x0 + 1] * ax * (1 - ay)
        + t[:, y0 + 1, x0] * (1 - ax) * ay
        + t[:, y0 + 1, x0 + 1] * ax * ay
    )


def test_sample_matches_manual_bilinear():
    g = _gen(3)
    t = torch.randn(2, 3, 4, 5, generator=g, dtype=DT)  # N, C, H=4, W=5
    pts = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0), (0.3, -0.45), (-0.77, 0.1)]
    coords = torch.tensor(pts, dtype=DT).reshape(1, 2, 3, 2).repeat(2, 1, 1, 1)
    coords[1] = -coords[1]
    out = sample(t, coords)
    assert out.shape == (2, 3, 3, 2)  # (N, C, S2, S1): the official permute(0, 2, 1, 3)
    for n, a, b in itertools.product(range(2), range(2), range(3)):
        x, y = (float(v) for v in coords[n, a, b])
        torch.testing.assert_close(
            out[n, :, b, a], _manual_bilinear(t[n], x, y), rtol=0, atol=1e-12
        )
    # corners hit pixels exactly (x indexes width, y height)
    torch.testing.assert_close(out[0, :, 0, 0], t[0, :, 0, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[0, :, 1, 0], t[0, :, 0, 4], rtol=0, atol=0)
    torch.testing.assert_close(out[0, :, 2, 0], t[0, :, 3, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[0, :, 0, 1], t[0, :, 3, 4], rtol=0, atol=0)


def test_sample_border_padding():
    g = _gen(4)
    t = torch.randn(1, 2, 3, 4, generator=g, dtype=DT)
    coords = torch.tensor([[[[1.7, -2.5], [-3.0, 0.0], [0.2, 1.4]]]], dtype=DT)  # (1, 1, 3, 2)
    out = sample(t, coords)
    torch.testing.assert_close(out[0, :, 0, 0], t[0, :, 0, 3], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0, :, 1, 0], t[0, :, 1, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        out[0, :, 2, 0], _manual_bilinear(t[0], 0.2, 1.0), rtol=0, atol=1e-12
    )


def test_super_perm_is_derangement():
    ar_cache = {}
    for n in range(2, 21):
        ar = ar_cache.setdefault(n, torch.arange(n))
        for seed in range(60):
            p = super_perm(n, _gen(seed))
            assert p.dtype == torch.long and p.shape == (n,)
            assert torch.equal(torch.sort(p).values, ar), (n, seed, p)
            assert not bool((p == ar).any()), (n, seed, p)
    assert torch.equal(super_perm(1, _gen(0)), torch.tensor([0]))
    assert torch.equal(super_perm(7, _gen(5)), super_perm(7, _gen(5)))


def test_super_perm_official_trick_quirk():
    """The official one-draw trick avoids fixed points but can repeat partners."""
    seen_non_perm = False
    for seed in range(200):
        p = super_perm(3, _gen(seed), official=True)
        assert not bool((p == torch.arange(3)).any())
        seen_non_perm |= not torch.equal(torch.sort(p).values, torch.arange(3))
    assert seen_non_perm


def _maps(seed: int, n: int = 3, c: int = 6, d: int = 4, hw: int = 5):
    g = _gen(seed)
    return (
        torch.randn(n, c, hw, hw, generator=g, dtype=DT),
        torch.randn(n, d, hw, hw, generator=g, dtype=DT),
        torch.randn(n, c, hw, hw, generator=g, dtype=DT),
        torch.randn(n, d, hw, hw, generator=g, dtype=DT),
    )


@pytest.mark.parametrize("pointwise,stabilize", [(True, False), (False, True)])
def test_correspondence_loss_replays_generator(pointwise, stabilize):
    feats, codes, feats_pos, codes_pos = _maps(5)
    w = LossWeights(
        knn=0.3, self_=0.7, rand=1.1, shift_knn=0.05, shift_self=0.12, shift_rand=0.5,
        feature_samples=4, neg_samples=3, pointwise=pointwise, stabilize=stabilize,
    )  # fmt: skip
    total, logs = correspondence_loss(feats, codes, feats_pos, codes_pos, w, _gen(42))

    g = _gen(42)
    n, s = feats.shape[0], w.feature_samples
    coords1 = torch.rand((n, s, s, 2), generator=g) * 2 - 1
    coords2 = torch.rand((n, s, s, 2), generator=g) * 2 - 1
    perms = [super_perm(n, g) for _ in range(w.neg_samples)]
    opts = dict(pointwise=pointwise, zero_clamp=True, stabilize=stabilize)
    f1, c1 = sample(feats, coords1), sample(codes, coords1)
    l_self = correlation_term(f1, f1, c1, c1, 0.12, **opts)
    l_knn = correlation_term(
        f1, sample(feats_pos, coords2), c1, sample(codes_pos, coords2), 0.05, **opts
    )
    l_rand = sum(
        correlation_term(f1, sample(feats[p], coords2), c1, sample(codes[p], coords2), 0.5, **opts)
        for p in perms
    ) / len(perms)
    want = 0.3 * l_knn + 0.7 * l_self + 1.1 * l_rand

    assert abs(float(total) - float(want)) < 1e-12
    assert set(logs) == {"self", "knn", "rand", "total"}
    for key, val in (("self", l_self), ("knn", l_knn), ("rand", l_rand), ("total", want)):
        assert isinstance(logs[key], float)
        assert abs(logs[key] - float(val)) < 1e-12, key
    # the three terms differ, so a swapped weight or shift would be caught
    assert len({round(logs[k], 9) for k in ("self", "knn", "rand")}) == 3


def test_correspondence_loss_deterministic_and_seed_dependent():
    maps = _maps(6)
    w = LossWeights(feature_samples=5)
    a, _ = correspondence_loss(*maps, w, _gen(0))
    b, _ = correspondence_loss(*maps, w, _gen(0))
    c, _ = correspondence_loss(*maps, w, _gen(1))
    assert float(a) == float(b)
    assert float(a) != float(c)


def test_draw_coords_range_and_shape():
    c = draw_coords(4, 11, _gen(0))
    assert c.shape == (4, 11, 11, 2) and c.dtype == torch.float32
    assert float(c.min()) >= -1.0 and float(c.max()) < 1.0
    assert float(c.min()) < -0.9 and float(c.max()) > 0.9


def test_gradient_reaches_codes_only():
    feats, codes, feats_pos, codes_pos = (t.float().requires_grad_(True) for t in _maps(7))
    total, _ = correspondence_loss(
        feats, codes, feats_pos, codes_pos, LossWeights(neg_samples=2), _gen(0)
    )
    total.backward()
    assert feats.grad is None and feats_pos.grad is None
    assert codes.grad is not None and float(codes.grad.abs().sum()) > 0
    assert codes_pos.grad is not None and float(codes_pos.grad.abs().sum()) > 0

    f1, c1, f2, c2 = (t.float().requires_grad_(True) for t in _maps(8, hw=3))
    correlation_term(f1, f2, c1, c2, 0.1).backward()
    assert f1.grad is None and f2.grad is None
    assert c1.grad is not None and c2.grad is not None


def test_codes_equal_to_features_give_lower_self_term():
    """Region-structured features: copying them as codes beats random codes on the self term."""
    g = _gen(8)
    n, c, hw = 4, 8, 12
    protos = torch.randn(3, c, generator=g, dtype=DT) * 2
    labels = torch.zeros(n, hw, hw, dtype=torch.long)
    labels[:, :, hw // 3 :] = 1
    labels[:, hw // 2 :, 2 * hw // 3 :] = 2
    feats = protos[labels].permute(0, 3, 1, 2) + 0.5 * torch.randn(
        n, c, hw, hw, generator=g, dtype=DT
    )
    rand_codes = torch.randn(n, c, hw, hw, generator=g, dtype=DT)
    for shift in (0.0, 0.08, 0.2, 0.46):
        w = LossWeights(shift_self=shift, feature_samples=8, neg_samples=1)
        _, good = correspondence_loss(feats, feats, feats, feats, w, _gen(0))
        _, bad = correspondence_loss(feats, rand_codes, feats, rand_codes, w, _gen(0))
        assert good["self"] < bad["self"], shift
