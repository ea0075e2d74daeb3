"""Sample distances: exact W2, sliced W2, MMD, energy distance — closed forms, oracles, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.metrics import energy_distance, mmd, sliced_wasserstein, w2


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pts(n: int, d: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)


_sets = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.tuples(
        st.lists(st.lists(st.floats(-5, 5), min_size=2, max_size=2), min_size=n, max_size=n),
        st.lists(st.lists(st.floats(-5, 5), min_size=2, max_size=2), min_size=n, max_size=n),
    )
)


# ------------------------------------------------------------------------------------------- w2


def test_w2_self_and_permutation_zero():
    x = _pts(300)
    assert float(w2(x, x)) == 0.0
    assert float(w2(x, x[torch.randperm(300, generator=_gen(1))])) == 0.0
    hi = _pts(50, d=40)  # high-dimensional path (matrix-product distances)
    assert float(w2(hi, hi.flip(0))) < 1e-6


@pytest.mark.parametrize("d", [1, 2, 5, 30])
def test_w2_shift_is_norm_of_shift(d):
    x = _pts(200, d)
    c = torch.linspace(-1.0, 2.0, d, dtype=torch.float64)
    torch.testing.assert_close(w2(x, x + c), c.norm(), rtol=1e-9, atol=1e-9)


def test_w2_one_dimensional_equals_sorted_matching():
    x, y = _pts(100, 1, seed=1), _pts(100, 1, seed=2) * 2 + 1
    expected = (x.sort(0).values - y.sort(0).values).pow(2).mean().sqrt()
    torch.testing.assert_close(w2(x, y), expected, rtol=1e-12, atol=0)


@given(_sets)
def test_w2_matches_brute_force(sets):
    x, y = (torch.tensor(s, dtype=torch.float64) for s in sets)
    n = x.shape[0]
    best = min(float((x - y[list(p)]).pow(2).sum(1).mean()) for p in itertools.permutations(range(n)))
    assert math.isclose(float(w2(x, y)), math.sqrt(best), rel_tol=1e-9, abs_tol=1e-9)


def test_w2_returns_float64_scalar_flattens_and_differentiates():
    x = torch.rand(8, 1, 2, 2, generator=_gen(), requires_grad=True)
    y = torch.rand(8, 1, 2, 2, generator=_gen(1))
    d = w2(x, y)
    assert d.shape == () and d.dtype == torch.float64
    d.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ sliced


def test_sliced_le_w2_and_deterministic():
    for seed in range(3):
        x, y = _pts(150, 3, seed), _pts(150, 3, seed + 10) * 1.5 + 0.3
        sw = sliced_wasserstein(x, y, generator=_gen(seed))
        assert sw.shape == () and sw.dtype == torch.float64
        assert 0 < float(sw) <= float(w2(x, y))
        assert torch.equal(sw, sliced_wasserstein(x, y, generator=_gen(seed)))


def test_sliced_in_one_dimension_is_exact_w2():
    x, y = _pts(64, 1, 3), _pts(64, 1, 4) + 0.5
    torch.testing.assert_close(sliced_wasserstein(x, y, n_projections=5, generator=_gen()), w2(x, y))


def test_sliced_unequal_sizes():
    x = _pts(40, 1)
    # y holds every point of x twice: the same empirical distribution
    assert float(sliced_wasserstein(x, torch.cat([x, x]), n_projections=3, generator=_gen())) < 1e-12
    shifted = torch.cat([x, x]) + 0.7
    torch.testing.assert_close(sliced_wasserstein(x, shifted, n_projections=3, generator=_gen()),
                               torch.tensor(0.7, dtype=torch.float64))
    # two points vs three points, hand-computed quantile coupling: levels 1/3, 1/2, 2/3, 1
    a = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0], [0.0], [3.0]], dtype=torch.float64)
    expected = math.sqrt((1 / 3) * 0 + (1 / 6) * 0 + (1 / 6) * 1 + (1 / 3) * 4)
    torch.testing.assert_close(sliced_wasserstein(a, b, n_projections=2, generator=_gen()),
                               torch.tensor(expected, dtype=torch.float64))


def test_sliced_of_a_shift_in_d_dims():
    # SW2^2(x, x + c) = E[(theta . c)^2] = |c|^2 / D for theta uniform on the sphere
    x, c = _pts(50, 4), torch.tensor([1.0, -2.0, 0.5, 2.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + c, n_projections=20000, generator=_gen())
    assert abs(float(sw) - float(c.norm()) / 2.0) < 0.03


# --------------------------------------------------------------------------------------------- mmd


def _naive_mmd(x, y, hs, unbiased):
    def k(a, b):
        return sum(math.exp(-float((a - b).pow(2).sum()) / (2 * h * h)) for h in hs) / len(hs)

    n, m = len(x), len(y)
    if unbiased:
        kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    else:
        kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n)) / n**2
        kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return kxx + kyy - 2 * sum(k(a, b) for a in x for b in y) / (n * m)


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_matches_naive_sums(unbiased):
    x, y = _pts(7, 3, 1), _pts(5, 3, 2) + 0.5
    for hs in ([1.0], [0.3, 2.0]):
        got = mmd(x, y, bandwidths=hs if len(hs) > 1 else hs[0], unbiased=unbiased)
        assert math.isclose(float(got), _naive_mmd(x, y, hs, unbiased), rel_tol=1e-10, abs_tol=1e-12)


def test_mmd_identical_near_zero_shifted_positive():
    x, y = _pts(500, 2, 1), _pts(500, 2, 2)
    same = mmd(x, y)
    assert same.shape == () and same.dtype == torch.float64
    assert abs(float(same)) < 5e-3
    d1, d2 = float(mmd(x, y + 0.5)), float(mmd(x, y + 1.5))
    assert d1 > 10 * abs(float(same)) and d2 > d1
    assert float(mmd(x, x, unbiased=False)) == 0.0


def test_mmd_median_heuristic_is_scale_invariant():
    x, y = _pts(100, 2, 1), _pts(80, 2, 2) + 0.3
    torch.testing.assert_close(mmd(x * 7.0, y * 7.0), mmd(x, y))


# ---------------------------------------------------------------------------------------- energy


def test_energy_distance_closed_forms():
    x = _pts(200, 3)
    assert float(energy_distance(x, x)) == 0.0
    c = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)
    # point masses: 2|c| - 0 - 0
    assert math.isclose(float(energy_distance(torch.zeros(5, 3), c.expand(7, 3))), 10.0, rel_tol=1e-12)
    shifted = energy_distance(x, x + 0.5)
    assert float(shifted) > 0 and shifted.dtype == torch.float64 and shifted.shape == ()


def test_energy_distance_one_dimensional_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    x, y = _pts(60, 1, 1), _pts(45, 1, 2) * 2 + 0.3
    expected = stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2
    assert math.isclose(float(energy_distance(x, y)), expected, rel_tol=1e-9)


def test_energy_distance_unbiased_and_gradients():
    x, y = _pts(6, 2, 1), _pts(4, 2, 2)
    dist = lambda a, b: float((a - b).norm())  # noqa: E731
    xy = sum(dist(a, b) for a in x for b in y) / 24
    xx = sum(dist(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(dist(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    assert math.isclose(float(energy_distance(x, y, unbiased=True)), 2 * xy - xx - yy, rel_tol=1e-12)
    xg = x.clone().requires_grad_(True)
    energy_distance(xg, torch.cat([x[:2], y])).backward()  # duplicated points: zero distances
    assert torch.isfinite(xg.grad).all()


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [w2, sliced_wasserstein, mmd, energy_distance])
def test_input_errors(fn):
    x = _pts(4)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        fn(np.zeros((4, 2)), x)
    with pytest.raises(ValueError, match="y must have shape \\(N, ...\\) with a leading batch dimension"):
        fn(x, torch.tensor(1.0))
    with pytest.raises(ValueError, match="x and y must have the same number of features per point, got 2 and 3"):
        fn(x, _pts(4, 3))
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="y must be finite, got 1 NaN or inf values"):
        fn(x, bad)
    with pytest.raises(TypeError, match="x must be a real-valued tensor, got dtype torch.complex64"):
        fn(torch.zeros(4, 2, dtype=torch.complex64), x)
    with pytest.raises(ValueError, match=r"x must hold at least [12] points?, got 0"):
        fn(torch.zeros(0, 2), x)
    with pytest.raises(ValueError, match=r"x must have at least one feature per point, got shape \(4, 0\)"):
        fn(torch.zeros(4, 0), torch.zeros(4, 0))


def test_option_errors():
    x = _pts(4)
    with pytest.raises(ValueError, match="w2 needs sets of equal size, got 4 \\(x\\) and 5 \\(y\\) points"):
        w2(x, _pts(5))
    with pytest.raises(ValueError, match="n_projections must be a positive int, got 0"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sliced_wasserstein(x, x, generator=0)
    with pytest.raises(ValueError, match=r"bandwidths must be positive finite numbers, got \[1.0, -2.0\]"):
        mmd(x, x, bandwidths=[1.0, -2.0])
    with pytest.raises(TypeError, match="bandwidths must be a positive number or a non-empty sequence"):
        mmd(x, x, bandwidths="wide")
    with pytest.raises(TypeError, match="bandwidths must be a positive number or a non-empty sequence"):
        mmd(x, x, bandwidths=[])
    for fn in (mmd, energy_distance):
        with pytest.raises(TypeError, match="unbiased must be a bool, got int 1"):
            fn(x, x, unbiased=1)
        with pytest.raises(ValueError, match="x must hold at least 2 points, got 1"):
            fn(x[:1], x, unbiased=True)
    assert torch.isfinite(mmd(x[:1], x, unbiased=False))
