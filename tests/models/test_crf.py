"""Dense CRF (pipeline.models.crf): exact reference, fast version, behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pipeline.models.crf as crf
from pipeline.models.crf import CRFParams, dense_crf, dense_crf_batch, dense_crf_naive
from pipeline.models.permutohedral import PermutohedralLattice


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: these small problems only pay OpenMP's sync costs (seconds when
    another process busies the second core); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PALETTE = torch.tensor([[40, 110, 60], [190, 180, 170], [150, 40, 50]], dtype=torch.float32)


def scene(
    seed: int, size: int = 48, k: int = 3, colour_noise: float = 0.0, prob_noise: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs (K, S, S) float64, image (3, S, S) uint8, true labels (S, S)): three colour regions
    (right half, a disc, the rest) and probabilities that favour the true label by +1 logit."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    lab = (xx > size * 0.55).long()
    lab[(yy - size * 0.3) ** 2 + (xx - size * 0.3) ** 2 < (size * 0.2) ** 2] = 2
    img = PALETTE[lab].permute(2, 0, 1) + colour_noise * torch.randn(3, size, size, generator=g)
    img = img.round().clamp(0, 255).to(torch.uint8)
    logits = prob_noise * torch.randn(k, size, size, generator=g, dtype=torch.float64)
    logits.scatter_add_(0, (lab % k)[None], torch.ones(1, size, size, dtype=torch.float64))
    return torch.softmax(logits, 0), img, lab % k


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(0) == b.argmax(0)).double().mean())


# ------------------------------------------------------------------------------------------
# the exact reference against an independent scalar computation
# ------------------------------------------------------------------------------------------


def loop_crf(probs: np.ndarray, image: np.ndarray, p: CRFParams) -> np.ndarray:
    """densecrf 2.2's update written with scalar loops (self term included, symmetric norm)."""
    k, h, w = probs.shape
    pix = [(y, x) for y in range(h) for x in range(w)]
    n = len(pix)

    def kernels(i: int, j: int) -> tuple[float, float]:
        (yi, xi), (yj, xj) = pix[i], pix[j]
        d2 = (xi - xj) ** 2 + (yi - yj) ** 2
        c2 = sum((float(image[c, yi, xi]) - float(image[c, yj, xj])) ** 2 for c in range(3))
        kg = math.exp(-d2 / (2 * p.gaussian_sxy**2))
        kb = math.exp(-d2 / (2 * p.bilateral_sxy**2) - c2 / (2 * p.bilateral_srgb**2))
        return kg, kb

    kmat = [[kernels(i, j) for j in range(n)] for i in range(n)]
    deg = [[sum(kmat[i][j][m] for j in range(n)) for m in range(2)] for i in range(n)]
    weights = (p.gaussian_compat, p.bilateral_compat)
    unary = [[-math.log(min(max(probs[c, y, x], 1e-5), 1.0)) for c in range(k)] for y, x in pix]

    def softmax(v: list[float]) -> list[float]:
        mx = max(v)
        e = [math.exp(a - mx) for a in v]
        return [a / sum(e) for a in e]

    q = [softmax([-u for u in unary[i]]) for i in range(n)]
    for _ in range(p.iterations):
        new = []
        for i in range(n):
            energy = []
            for lab in range(k):
                e = -unary[i][lab]
                for m in range(2):
                    msg = sum(
                        kmat[i][j][m] / math.sqrt(deg[i][m] * deg[j][m]) * q[j][lab]
                        for j in range(n)
                    )
                    e -= -weights[m] * msg  # tmp -= PottsCompatibility(-w * filtered)
                energy.append(e)
            new.append(softmax(energy))
        q = new
    return np.array(q).T.reshape(k, h, w)


@pytest.mark.parametrize("iterations", [1, 2])
def test_naive_matches_scalar_loops(iterations: int) -> None:
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(3, 4, 5, generator=g, dtype=torch.float64), 0)
    image = torch.randint(0, 256, (3, 4, 5), generator=g).to(torch.uint8)
    image[:, :2, :3] = 100  # some equal colours so the bilateral kernel is not ~identity
    params = CRFParams(
        iterations=iterations,
        gaussian_sxy=1.3,
        gaussian_compat=3.0,
        bilateral_sxy=4.0,
        bilateral_srgb=40.0,
        bilateral_compat=4.0,
    )
    expected = loop_crf(probs.numpy(), image.numpy(), params)
    got = dense_crf_naive(probs, image, params).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)
    # and the CRF did something
    assert np.abs(got - probs.numpy()).max() > 0.05


# ------------------------------------------------------------------------------------------
# the fast version against the exact reference
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("full_max", [256, 8])  # one banded matrix / blocks with a halo
@pytest.mark.parametrize("sxy", [1.0, 2.5])
def test_fast_gaussian_term_is_exact(monkeypatch, full_max: int, sxy: float) -> None:
    monkeypatch.setattr(crf, "BLUR_FULL_MAX", full_max)
    monkeypatch.setattr(crf, "BLUR_BLOCK", 7)
    probs, image, _ = scene(0, size=30, k=4)
    probs, image = probs[:, :, :23], image[:, :, :23]  # not square
    params = CRFParams(gaussian_sxy=sxy, bilateral_compat=0.0)
    fast, naive = dense_crf(probs, image, params), dense_crf_naive(probs, image, params)
    assert (fast - naive).abs().max() < 2e-3  # only the 4-sigma truncation and float32


SETTINGS = {
    "stego": CRFParams(),
    "bilateral-only": CRFParams(gaussian_compat=0.0),
    "narrow": CRFParams(
        gaussian_sxy=2.0,
        gaussian_compat=2.0,
        bilateral_sxy=15.0,
        bilateral_srgb=10.0,
        bilateral_compat=5.0,
    ),
    "wide-colour": CRFParams(bilateral_sxy=30.0, bilateral_srgb=30.0),
}


@pytest.mark.parametrize("colour_noise", [0.0, 2.0])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_fast_matches_naive(name: str, colour_noise: float) -> None:
    params = SETTINGS[name]
    probs, image, _ = scene(1, colour_noise=colour_noise)
    fast, naive = dense_crf(probs, image, params), dense_crf_naive(probs, image, params)
    diff = (fast - naive).abs()
    assert agreement(fast, naive) >= 0.995
    assert diff.mean() < 0.005
    assert diff.max() < 0.1


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_matches_naive_on_colour_noise(seed: int) -> None:
    """Colour noise of 2x srgb: the lattice's error is largest here, labels still agree."""
    probs, image, _ = scene(seed, colour_noise=6.0)
    params = CRFParams(gaussian_compat=0.0)
    fast, naive = dense_crf(probs, image, params), dense_crf_naive(probs, image, params)
    assert agreement(fast, naive) >= 0.985
    assert (fast - naive).abs().mean() < 0.015


def test_lattice_approximates_gaussian_filter() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(600, 3, generator=g, dtype=torch.float64) * 5
    values = torch.rand(600, 2, generator=g, dtype=torch.float64)
    lattice = PermutohedralLattice(feats, dtype=torch.float64)
    kernel = torch.exp(-torch.cdist(feats, feats).square() / 2)
    ones = torch.ones(600, 1, dtype=torch.float64)
    n_exact = (kernel @ ones).rsqrt()
    n_lat = lattice.compute(ones).rsqrt()
    exact = n_exact * (kernel @ (n_exact * values))
    approx = n_lat * lattice.compute(n_lat * values)
    assert ((approx - exact).norm() / exact.norm()) < 0.05
    # a point's response is local like the Gaussian's (exact: 0.88 at 0.5, 4e-5 at 4.5)
    unit = torch.zeros(600, 1, dtype=torch.float64)
    unit[0] = 1
    response = lattice.compute(unit)[:, 0]
    dist = torch.cdist(feats[:1], feats)[0]
    assert response[dist < 0.5].min() > 0.5 * response.max()
    assert response[dist > 4.5].abs().max() < 0.01 * response.max()


def test_gaussian_lattice_mode_close_to_exact() -> None:
    probs, image, _ = scene(2, colour_noise=2.0)
    exact = dense_crf(probs, image)
    lattice = dense_crf(probs, image, gaussian="lattice")
    assert agreement(exact, lattice) >= 0.98
    with pytest.raises(ValueError):
        dense_crf(probs, image, gaussian="bogus")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# behaviour
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [dense_crf, dense_crf_naive])
def test_zero_compat_returns_probs(fn) -> None:
    probs, image, _ = scene(3, size=20, k=4)
    params = CRFParams(gaussian_compat=0.0, bilateral_compat=0.0)
    out = fn(probs, image, params)
    assert torch.allclose(out, probs, atol=1e-6)


@pytest.mark.parametrize("fn", [dense_crf, dense_crf_naive])
def test_output_is_a_distribution(fn) -> None:
    probs, image, _ = scene(4, size=24, k=5, colour_noise=3.0)
    out = fn(probs.float(), image)
    assert out.shape == probs.shape and out.dtype == torch.float32
    assert torch.allclose(out.sum(0), torch.ones(24, 24), atol=1e-5)
    assert (out >= 0).all()


@pytest.mark.parametrize("fn", [dense_crf, dense_crf_naive])
def test_cleans_noisy_labels(fn) -> None:
    size = 40
    labels = (torch.arange(size)[None, :] >= 17).long().expand(size, size)
    image = PALETTE[labels].permute(2, 0, 1).to(torch.uint8)
    g = torch.Generator().manual_seed(5)
    logits = 1.5 * torch.randn(2, size, size, generator=g)
    logits.scatter_add_(0, labels[None], torch.ones(1, size, size))
    probs = torch.softmax(logits, 0)
    before = float((probs.argmax(0) == labels).float().mean())
    after = float((fn(probs, image).argmax(0) == labels).float().mean())
    assert before < 0.8
    assert after > 0.99


def test_labels_do_not_bleed_across_colour_edge() -> None:
    """Left half confidently label 0, right half weakly label 1.  With a colour edge between
    the halves the right half keeps label 1; on a flat image (control) the near-global
    bilateral term spreads label 0 into it."""
    size = 40
    right = torch.arange(size)[None, :].expand(size, size) >= size // 2
    probs = torch.empty(2, size, size)
    probs[0] = torch.where(right, 0.42, 0.9)
    probs[1] = 1 - probs[0]
    edged = PALETTE[right.long()].permute(2, 0, 1).to(torch.uint8)
    flat = PALETTE[torch.zeros_like(right, dtype=torch.long)].permute(2, 0, 1).to(torch.uint8)
    for fn in (dense_crf, dense_crf_naive):
        assert (fn(probs, edged).argmax(0) == right.long()).all()
        assert (fn(probs, flat).argmax(0)[right] == 0).float().mean() > 0.9


def test_batch_matches_single() -> None:
    (p1, i1, _), (p2, i2, _) = scene(6, size=20), scene(7, size=20)
    batch = dense_crf_batch(torch.stack([p1, p2]), torch.stack([i1, i2]))
    assert torch.allclose(batch[0], dense_crf(p1, i1))
    assert torch.allclose(batch[1], dense_crf(p2, i2))


def test_rejects_bad_shapes() -> None:
    probs, image, _ = scene(8, size=10)
    with pytest.raises(ValueError):
        dense_crf(probs, image[:, :9])
    with pytest.raises(ValueError):
        dense_crf_naive(probs[0], image)
    with pytest.raises(ValueError):
        dense_crf_batch(probs, image)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    probs, image, _ = scene(9, colour_noise=2.0)
    cpu = dense_crf(probs.float(), image)
    gpu = dense_crf(probs.float().cuda(), image.cuda())
    assert gpu.is_cuda
    assert (gpu.cpu() - cpu).abs().max() < 1e-3


def test_matches_pydensecrf() -> None:
    """Reference check against the C++ library STEGO uses (pydensecrf2, a dev dependency)."""
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as utils

    probs, image, _ = scene(10, colour_noise=4.0)
    p = probs.float().numpy()
    bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])
    d = dcrf.DenseCRF2D(48, 48, 3)
    d.setUnaryEnergy(np.ascontiguousarray(utils.unary_from_softmax(p)))
    d.addPairwiseGaussian(sxy=1, compat=3)
    d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=bgr, compat=4)
    ref = torch.from_numpy(np.array(d.inference(10)).reshape(3, 48, 48))
    ours = dense_crf(probs.float(), image, gaussian="lattice")
    assert (ours - ref).abs().max() < 0.01
