"""Feature-space fidelity metrics: Fréchet distance, KID, precision/recall, density/coverage.

Closed-form oracles (Gaussian Fréchet distances, exact shifts, (k+1)/k density of a set against
itself), scipy / numpy reference formulas, brute-force loops on tiny inputs, and the errors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.metrics import fidelity
from edifice.metrics.fidelity import (
    FrechetSampleWarning,
    density_coverage,
    feature_stats,
    fidelity_metrics,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_distance,
    precision_recall,
)

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pts(n: int, d: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=F64)


def _unif(n: int, d: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, d, generator=_gen(seed), dtype=F64)


def _reference_fd(mu1, c1, mu2, c2) -> float:
    """The textbook formula with scipy's (complex-capable) matrix square root."""
    mu1, c1, mu2, c2 = (t.numpy() for t in (mu1, c1, mu2, c2))
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2.0 * np.real(root)))


def _eig_fd(mu1, c1, mu2, c2) -> float:
    """tr (C1^1/2 C2 C1^1/2)^1/2 = sum sqrt(eig(C1 C2)) (the eigenvalues are real and >= 0)."""
    mu1, c1, mu2, c2 = (t.numpy() for t in (mu1, c1, mu2, c2))
    ev = np.linalg.eigvals(c1 @ c2).real.clip(min=0.0)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * np.sqrt(ev).sum())


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(_pts(d, d, seed))
    return q


_floats = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@st.composite
def _psd(draw, d: int) -> torch.Tensor:
    """A PSD matrix A A^T of any rank from 1 to d (rank-deficient ones included)."""
    r = draw(st.integers(1, d))
    a = torch.tensor(draw(st.lists(_floats, min_size=d * r, max_size=d * r)), dtype=F64).reshape(d, r)
    return a @ a.T


@st.composite
def _gaussians(draw, count: int = 2):
    d = draw(st.integers(1, 4))
    return [
        (torch.tensor(draw(st.lists(_floats, min_size=d, max_size=d)), dtype=F64), draw(_psd(d)))
        for _ in range(count)
    ]


# ------------------------------------------------------------------------------ feature_stats


def test_feature_stats_match_numpy_and_flatten():
    x = _pts(50, 4).reshape(50, 1, 2, 2)
    mu, cov = feature_stats(x)
    flat = x.reshape(50, 4).numpy()
    assert mu.dtype == cov.dtype == F64 and mu.shape == (4,) and cov.shape == (4, 4)
    np.testing.assert_allclose(mu.numpy(), flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(flat, rowvar=False), rtol=1e-12, atol=1e-14)  # N - 1
    assert torch.equal(cov, cov.T)


# ------------------------------------------------------------------------- Fréchet, Gaussians


@given(_gaussians())
def test_gaussian_fd_diagonal_closed_form(g2):
    (mu1, c1), (mu2, c2) = g2
    a, b = c1.diagonal(), c2.diagonal()  # diagonal covariances with these (>= 0) variances
    expected = (mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()
    got = gaussian_frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got.shape == () and got.dtype == F64
    assert math.isclose(float(got), float(expected), rel_tol=1e-9, abs_tol=1e-9)


def test_gaussian_fd_commuting_covariances_closed_form_and_scipy():
    d = 6
    q = _rotation(d, 3)
    a = torch.linspace(0.1, 3.0, d, dtype=F64)
    b = torch.linspace(2.0, 0.5, d, dtype=F64)
    c1, c2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T  # commute: same eigenvectors
    c1, c2 = (c1 + c1.T) / 2, (c2 + c2.T) / 2
    mu1, mu2 = _pts(1, d, 1)[0], _pts(1, d, 2)[0]
    got = float(gaussian_frechet_distance(mu1, c1, mu2, c2))
    closed = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    assert math.isclose(got, closed, rel_tol=1e-10)
    assert math.isclose(got, _reference_fd(mu1, c1, mu2, c2), rel_tol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_fd_non_commuting_matches_scipy_sqrtm(seed):
    d = 7
    a, b = _pts(d, d, seed), _pts(d, d + 2, seed + 10)
    c1, c2 = a @ a.T + 0.1 * torch.eye(d, dtype=F64), b @ b.T / 3  # full rank, not commuting
    assert not torch.allclose(c1 @ c2, c2 @ c1)
    mu1, mu2 = _pts(1, d, seed + 20)[0], _pts(1, d, seed + 30)[0]
    got = float(gaussian_frechet_distance(mu1, c1, mu2, c2))
    assert math.isclose(got, _reference_fd(mu1, c1, mu2, c2), rel_tol=1e-8)


def test_gaussian_fd_one_dimensional_is_w2_squared():
    t = torch.tensor
    got = gaussian_frechet_distance(t([1.0]), t([[4.0]]), t([-2.0]), t([[9.0]]))  # N(1, 2^2) vs N(-2, 3^2)
    assert math.isclose(float(got), 3.0**2 + (2.0 - 3.0) ** 2, rel_tol=1e-12)


@given(_gaussians(count=3))
def test_gaussian_fd_psd_properties(g3):
    """Non-negative, symmetric, zero on itself, agrees with an eigenvalue formula, and sqrt(FD) is a metric."""
    (mu1, c1), (mu2, c2), (mu3, c3) = g3
    d12 = float(gaussian_frechet_distance(mu1, c1, mu2, c2))
    d21 = float(gaussian_frechet_distance(mu2, c2, mu1, c1))
    scale = 1.0 + float(c1.abs().max() + c2.abs().max())
    assert d12 >= 0.0
    assert math.isclose(d12, d21, rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert float(gaussian_frechet_distance(mu1, c1, mu1, c1)) <= 1e-9 * scale
    assert math.isclose(d12, _eig_fd(mu1, c1, mu2, c2), rel_tol=1e-6, abs_tol=1e-6 * scale)
    d13 = float(gaussian_frechet_distance(mu1, c1, mu3, c3))
    d23 = float(gaussian_frechet_distance(mu2, c2, mu3, c3))
    assert math.sqrt(d13) <= math.sqrt(d12) + math.sqrt(d23) + 1e-6 * scale  # W2 triangle inequality


# --------------------------------------------------------------------------- Fréchet, samples


@pytest.mark.parametrize("n, d", [(500, 3), (1000, 64), (40, 64)])
def test_fd_self_is_zero_and_shift_is_exact(n, d):
    x = _pts(n, d) * 3.0 + 5.0
    c = torch.linspace(-1.0, 2.0, d, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetSampleWarning)  # (40, 64): rank-deficient, still exact
        assert float(frechet_distance(x, x)) < 1e-8
        assert float(frechet_distance(x, x.flip(0))) < 1e-8  # order does not matter
        # Shifting changes the mean only: the covariances are identical, so FD = |c|^2 exactly.
        torch.testing.assert_close(frechet_distance(x, x + c), c.pow(2).sum(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(frechet_distance(x + c, x), c.pow(2).sum(), rtol=1e-10, atol=1e-10)


def test_fd_grows_with_the_shift():
    x, y = _pts(400, 5, 0), _pts(400, 5, 1)
    e = torch.ones(5, dtype=F64)
    values = [float(frechet_distance(x, y + s * e)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 19.0  # ~ 4 * 5 = 20


def test_fd_equals_gaussian_fd_of_feature_stats_and_is_symmetric():
    x, y = _pts(300, 6, 0), _pts(200, 6, 1) @ _pts(6, 6, 2)
    d = frechet_distance(x, y)
    assert d.shape == () and d.dtype == F64
    torch.testing.assert_close(d, gaussian_frechet_distance(*feature_stats(x), *feature_stats(y)))
    torch.testing.assert_close(d, frechet_distance(y, x), rtol=1e-10, atol=1e-12)
    assert math.isclose(float(d), _reference_fd(*feature_stats(x), *feature_stats(y)), rel_tol=1e-8)


@pytest.mark.parametrize("d", [3, 8])
def test_sample_fd_converges_to_closed_form(d):
    n = 20000
    s = torch.linspace(0.5, 2.0, d, dtype=F64)
    x = _pts(n, d, 0)
    y = _pts(n, d, 1) * s + 0.3  # N(0.3, diag(s^2)) against N(0, I)
    closed = 0.09 * d + float((1.0 - s).pow(2).sum())
    # The estimator's error (bias O(D/N) plus noise O(sqrt(D/N))) is a few hundredths here; allow ~6 sigma.
    tol = 8.0 * d / math.sqrt(n)
    assert abs(float(frechet_distance(x, y)) - closed) < tol
    # and at a tenth of the samples the error is larger on average over seeds (the small-N bias)
    small = np.mean([float(frechet_distance(_pts(200, d, 2 * i), _pts(200, d, 2 * i + 1) * s + 0.3)) - closed
                     for i in range(10)])
    assert small > 0.0


def test_fd_warns_when_n_le_d_and_still_returns():
    x, y = _pts(10, 16, 0), _pts(200, 16, 1)
    with pytest.warns(FrechetSampleWarning, match=r"10 samples of x for 16 feature dimensions \(N <= D\)") as rec:
        d = frechet_distance(x, y)
    assert math.isfinite(float(d)) and float(d) > 0
    msg = str(rec[0].message)
    assert "rank at most" in msg and "biased upward" in msg and "kernel_distance" in msg
    assert rec[0].filename == __file__  # points at the caller
    with pytest.warns(FrechetSampleWarning, match="16 samples of y"):
        frechet_distance(y, _pts(16, 16, 2))
    assert issubclass(FrechetSampleWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # N = D + 1: no warning
        frechet_distance(_pts(17, 16), y)


def test_fd_errors():
    with pytest.raises(ValueError, match="x must hold at least 2 points, got 1"):
        frechet_distance(_pts(1, 2), _pts(5, 2))
    with pytest.raises(ValueError, match="y must hold at least 2 points, got 1"):
        frechet_distance(_pts(5, 2), _pts(1, 2))
    with pytest.raises(ValueError, match="same number of features per point, got 3 and 4"):
        frechet_distance(_pts(50, 3), _pts(50, 4))
    bad = _pts(50, 3)
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="y must be finite, got 1 NaN"):
        frechet_distance(_pts(50, 3), bad)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        frechet_distance(np.zeros((5, 2)), _pts(5, 2))
    with pytest.raises(ValueError, match="f must hold at least 2 points"):
        feature_stats(_pts(1, 3))


def test_gaussian_fd_errors():
    mu, cov = torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64)
    with pytest.raises(ValueError, match="mu1 and mu2 must have the same dimension, got 3 and 4"):
        gaussian_frechet_distance(mu, cov, torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match=r"cov2 must have shape \(3, 3\), got \(4, 4\)"):
        gaussian_frechet_distance(mu, cov, mu, torch.eye(4))
    with pytest.raises(ValueError, match="mu1 must have 1 dimensions"):
        gaussian_frechet_distance(cov, cov, mu, cov)
    with pytest.raises(ValueError, match="cov1 must be positive semi-definite, got smallest eigenvalue -1"):
        gaussian_frechet_distance(mu, torch.diag(torch.tensor([1.0, -1.0, 2.0])), mu, cov)
    with pytest.raises(ValueError, match="cov2 must be a symmetric matrix"):
        gaussian_frechet_distance(mu, cov, mu, cov + torch.triu(torch.ones(3, 3), 1))
    with pytest.raises(ValueError, match="mu2 must be finite"):
        gaussian_frechet_distance(mu, cov, torch.tensor([0.0, float("inf"), 0.0]), cov)
    with pytest.raises(TypeError, match="cov1 must be a torch.Tensor"):
        gaussian_frechet_distance(mu, [[1.0]], mu, cov)
    # round-off sized negative eigenvalues are clamped, not rejected
    tiny = torch.diag(torch.tensor([1.0, -1e-6, 2.0], dtype=F64))
    clamped = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
    assert float(gaussian_frechet_distance(mu, tiny, mu, clamped)) < 1e-14  # read as 0, not as |-1e-6|


# ---------------------------------------------------------------------------------------- KID


def _kid_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2.0 * sxy


_small_sets = st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(1, 3)).flatmap(
    lambda nmd: st.tuples(
        st.lists(st.lists(_floats, min_size=nmd[2], max_size=nmd[2]), min_size=nmd[0], max_size=nmd[0]),
        st.lists(st.lists(_floats, min_size=nmd[2], max_size=nmd[2]), min_size=nmd[1], max_size=nmd[1]),
    )
)


@given(_small_sets)
def test_kid_matches_brute_force(sets):
    x, y = (torch.tensor(s, dtype=F64) for s in sets)
    expected = _kid_loop(x, y)
    got = kernel_distance(x, y)
    assert got.shape == () and got.dtype == F64
    assert math.isclose(float(got), expected, rel_tol=1e-9, abs_tol=1e-9 * (1.0 + abs(expected)) + 1e-9)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    # Two samples of N(0, I_8), 600 points each: the estimate's spread is about 0.005 here.
    same = [float(kernel_distance(_pts(600, 8, 2 * s), _pts(600, 8, 2 * s + 1))) for s in range(10)]
    assert max(abs(v) for v in same) < 0.025
    assert abs(np.mean(same)) < 0.006  # unbiased: centred on 0 (the V-statistic would sit near +0.02)
    assert min(same) < 0  # and so it can be negative
    x, y = _pts(600, 8, 0), _pts(600, 8, 1)
    shifted = [float(kernel_distance(x, y + s)) for s in (0.25, 0.5, 1.0)]
    assert shifted == sorted(shifted) and shifted[1] > 0.2 and shifted[1] > 20 * max(abs(v) for v in same)


def test_kid_subsets():
    x, y = _pts(300, 4, 0), _pts(300, 4, 1) + 0.3
    full = kernel_distance(x, y)
    # one subset of every point is a permutation of the sets: the same U-statistic
    one = kernel_distance(x, y, subsets=1, subset_size=300, generator=_gen(5))
    torch.testing.assert_close(one, full, rtol=1e-10, atol=1e-12)
    a = kernel_distance(x, y, subsets=20, subset_size=100, generator=_gen(7))
    b = kernel_distance(x, y, subsets=20, subset_size=100, generator=_gen(7))
    c = kernel_distance(x, y, subsets=20, subset_size=100, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)  # reproducible, and really random subsets
    assert abs(float(a) - float(full)) < 0.25 * float(full)  # an unbiased average of the same quantity
    default = kernel_distance(x, y, subsets=1, generator=_gen(5))  # default size min(N, M, 1000) = 300
    torch.testing.assert_close(default, full, rtol=1e-10, atol=1e-12)


def test_kid_errors():
    x = _pts(20, 3)
    with pytest.raises(ValueError, match="subset_size is used only together with subsets"):
        kernel_distance(x, x, subset_size=5)
    with pytest.raises(ValueError, match="subset_size must be at most the size of the smaller set, got 15 "
                                         "with 20 points in x and 10 in y"):
        kernel_distance(x, x[:10], subsets=2, subset_size=15)
    with pytest.raises(ValueError, match="subset_size must be an int >= 2, got 1"):
        kernel_distance(x, x, subsets=2, subset_size=1)
    with pytest.raises(ValueError, match="subsets must be a positive int, got 0"):
        kernel_distance(x, x, subsets=0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        kernel_distance(x, x, subsets=2, generator=0)
    with pytest.raises(ValueError, match="same number of features per point, got 3 and 2"):
        kernel_distance(x, _pts(20, 2))
    with pytest.raises(ValueError, match="y must hold at least 2 points"):
        kernel_distance(x, x[:1])


# --------------------------------------------------------------------------- precision/recall


def _radii_loop(pts: np.ndarray, k: int) -> np.ndarray:
    return np.array([sorted(((p - q) ** 2).sum() for q in pts)[k] for p in pts])  # self at index 0


def _inside_loop(points: np.ndarray, centres: np.ndarray, r2: np.ndarray) -> np.ndarray:
    return np.array([sum(((p - c) ** 2).sum() <= r for c, r in zip(centres, r2)) for p in points])


_grid_sets = st.tuples(st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda kd: st.tuples(
        st.just(kd[0]),
        st.lists(st.lists(st.integers(-3, 3), min_size=kd[1], max_size=kd[1]), min_size=kd[0] + 1, max_size=8),
        st.lists(st.lists(st.integers(-3, 3), min_size=kd[1], max_size=kd[1]), min_size=kd[0] + 1, max_size=8),
    )
)


@given(_grid_sets)
def test_precision_recall_and_density_coverage_match_brute_force(case):
    """Integer grids: many ties and duplicates, exact squared distances (closed balls, self excluded)."""
    k, real, fake = case
    r, f = np.array(real, dtype=float), np.array(fake, dtype=float)
    real_t, fake_t = torch.tensor(r), torch.tensor(f)
    fake_in = _inside_loop(f, r, _radii_loop(r, k))
    real_in = _inside_loop(r, f, _radii_loop(f, k))
    pr = precision_recall(real_t, fake_t, k=k)
    assert pr == {"precision": float(np.mean(fake_in > 0)), "recall": float(np.mean(real_in > 0))}
    dc = density_coverage(real_t, fake_t, k=k)
    covered = [any(((p - c) ** 2).sum() <= rr for p in f) for c, rr in zip(r, _radii_loop(r, k))]
    assert math.isclose(dc["density"], fake_in.sum() / (k * len(f)), rel_tol=1e-12)
    assert dc["coverage"] == float(np.mean(covered))


def test_precision_recall_brute_force_high_dimensional():
    """D > 8 (distances from matrix products): continuous data against a numpy loop."""
    real, fake = _pts(40, 12, 0), _pts(30, 12, 1) * 1.3 + 0.2
    r, f = real.numpy(), fake.numpy()
    fake_in = _inside_loop(f, r, _radii_loop(r, 4))
    real_in = _inside_loop(r, f, _radii_loop(f, 4))
    assert precision_recall(real, fake, k=4) == {"precision": float(np.mean(fake_in > 0)),
                                                 "recall": float(np.mean(real_in > 0))}
    assert math.isclose(density_coverage(real, fake, k=4)["density"], fake_in.sum() / (4 * 30), rel_tol=1e-12)


def test_precision_recall_half_overlapping_squares():
    real = _unif(2000, 2, 0)  # U[0, 1]^2
    fake = _unif(2000, 2, 1) + torch.tensor([0.5, 0.0], dtype=F64)  # U[0.5, 1.5] x [0, 1]: half inside
    pr = precision_recall(real, fake, k=3)
    assert abs(pr["precision"] - 0.5) < 0.05 and abs(pr["recall"] - 0.5) < 0.05


@pytest.mark.parametrize("d", [2, 12])
def test_precision_recall_identical_sets(d):
    x = _pts(300, d)
    assert precision_recall(x, x, k=3) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(x, x.flip(0), k=1) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_collapsed_fake_and_mode_dropping():
    real = _pts(500, 2)
    collapsed = real[7].expand(100, 2)
    pr = precision_recall(real, collapsed, k=3)
    assert pr["precision"] == 1.0 and pr["recall"] == 1 / 500  # only the point itself is reached
    # four clusters, a generator that produces two of them: precision stays, recall halves
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]], dtype=F64)
    real = centres.repeat_interleave(250, 0) + 0.5 * _pts(1000, 2, 1)
    fake = centres[:2].repeat_interleave(500, 0) + 0.5 * _pts(1000, 2, 2)
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.95 and abs(pr["recall"] - 0.5) < 0.05


def test_fake_outliers_inflate_recall_but_not_coverage():
    real = _unif(500, 2, 0)
    fake = torch.cat([0.5 + 0.01 * _pts(200, 2, 1), torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-4.0, -4.0]],
                                                                  dtype=F64)])
    pr, dc = precision_recall(real, fake, k=3), density_coverage(real, fake, k=3)
    assert pr["recall"] == 1.0  # the outliers' k-NN balls are huge and swallow every real point
    assert dc["coverage"] < 0.05  # only real points define balls: a tight blob covers almost nothing


def test_precision_recall_errors():
    x = _pts(10, 2)
    with pytest.raises(ValueError, match="k must be smaller than the number of real points, got k=10 with 10"):
        precision_recall(x, _pts(50, 2), k=10)
    with pytest.raises(ValueError, match="k must be smaller than the number of fake points, got k=3 with 3"):
        precision_recall(x, x[:3], k=3)
    with pytest.raises(ValueError, match="k must be a positive int, got 0"):
        precision_recall(x, x, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        precision_recall(x, x, k=2.0)
    with pytest.raises(ValueError, match="real and fake must have the same number of features per point, got 2 and 3"):
        precision_recall(x, _pts(10, 3))
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="real must be finite"):
        precision_recall(x, _pts(10, 2))


# --------------------------------------------------------------------------- density/coverage


def test_density_coverage_same_distribution():
    real, fake = _pts(2000, 2, 0), _pts(2000, 2, 1)
    dc = density_coverage(real, fake, k=5)
    assert abs(dc["density"] - 1.0) < 0.06
    assert abs(dc["coverage"] - (1 - 2.0**-5)) < 0.02  # Naeem et al.: E[coverage] ~ 1 - 1/2^k at N = M


@pytest.mark.parametrize("d", [2, 12])
def test_density_coverage_of_a_set_against_itself(d):
    x = _pts(400, d)
    dc = density_coverage(x, x, k=5)
    # every ball holds its centre and its k neighbours (no ties in continuous data): (k + 1) / k
    assert dc["coverage"] == 1.0 and math.isclose(dc["density"], 6 / 5, rel_tol=1e-12)


def test_density_coverage_errors():
    x = _pts(5, 2)
    with pytest.raises(ValueError, match="k must be smaller than the number of real points, got k=5 with 5"):
        density_coverage(x, _pts(50, 2))
    assert density_coverage(_pts(50, 2), x[:1], k=5)["coverage"] > 0  # one fake point is enough
    with pytest.raises(ValueError, match="real and fake must have the same number of features per point"):
        density_coverage(_pts(50, 2), _pts(50, 3))


# ---------------------------------------------------------------------------- fidelity_metrics


def test_fidelity_metrics_agrees_with_the_parts():
    real, fake = _pts(300, 4, 0), _pts(200, 4, 1) + 0.2
    out = fidelity_metrics(real, fake)
    assert list(out) == ["fd", "kid", "precision", "recall", "density", "coverage"]
    assert all(type(v) is float for v in out.values())
    assert out["fd"] == float(frechet_distance(real, fake))
    assert out["kid"] == float(kernel_distance(real, fake))
    assert {"precision": out["precision"], "recall": out["recall"]} == precision_recall(real, fake, k=3)
    assert {"density": out["density"], "coverage": out["coverage"]} == density_coverage(real, fake, k=5)
    assert fidelity_metrics(real, fake, k=5, density_k=2)["recall"] == precision_recall(real, fake, k=5)["recall"]


def test_fidelity_metrics_uses_kid_subsets_for_large_sets(monkeypatch):
    real, fake = _pts(300, 4, 0), _pts(300, 4, 1) + 0.2
    monkeypatch.setattr(fidelity, "_KID_FULL_MAX", 100)
    monkeypatch.setattr(fidelity, "_KID_SUBSET_SIZE", 50)
    out = fidelity_metrics(real, fake, generator=_gen(3))
    expected = kernel_distance(real, fake, subsets=fidelity._KID_SUBSETS, subset_size=50, generator=_gen(3))
    assert out["kid"] == float(expected) and out["kid"] != float(kernel_distance(real, fake))


def test_fidelity_metrics_warnings_and_errors():
    with pytest.warns(FrechetSampleWarning, match="8 samples of fake"):
        fidelity_metrics(_pts(100, 8), _pts(8, 8, 1))
    with pytest.raises(ValueError, match="real and fake must have the same number of features per point, got 4 and 5"):
        fidelity_metrics(_pts(100, 4), _pts(100, 5))
    with pytest.raises(ValueError, match="fake must hold at least 2 points, got 1"):
        fidelity_metrics(_pts(100, 4), _pts(1, 4))
    with pytest.raises(ValueError, match="density_k must be smaller than the number of real points"):
        fidelity_metrics(_pts(6, 4), _pts(100, 4), k=2, density_k=6)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fidelity_metrics(_pts(100, 4), _pts(100, 4), generator="0")


def test_device_and_dtype(device):
    real = _pts(200, 6, 0).float().to(device)
    fake = (_pts(150, 6, 1) + 0.3).float().to(device)
    for value in (frechet_distance(real, fake), kernel_distance(real, fake, subsets=3, generator=_gen(0))):
        assert value.dtype == F64 and value.shape == () and value.device.type == device.type
    cpu = fidelity_metrics(real.cpu(), fake.cpu())
    here = fidelity_metrics(real, fake)
    for key in cpu:
        assert math.isclose(cpu[key], here[key], rel_tol=1e-9, abs_tol=1e-12), key
