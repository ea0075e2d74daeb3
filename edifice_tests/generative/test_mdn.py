"""Mixture density networks: the mixture density against direct and torch.distributions oracles, sampling
moments against the closed-form mixture moments, errors, and Bishop's inverse problem.

Closed forms used:

- ``p(y | x) = Σ_k π_k Π_d N(y_d; μ_kd, σ_kd²)`` evaluated directly (sum of densities) in float64 and by
  ``torch.distributions.MixtureSameFamily``; with ``K = 1`` it is Gaussian regression,
  ``-log p = Σ_d [½ ((y - μ)/σ)² + log σ + ½ log 2π]`` (least squares plus a constant when ``σ = 1``).
- Mixture moments ``E[y] = Σ π μ``, ``Var[y] = Σ π (σ² + μ²) - E[y]²``; samples must match them (CLT bounds)
  and the drawn components must have frequencies ``π``.
- Inverse sine ``x = y + 0.3 sin(2π y)``: for ``x ∈ (0.407, 0.593)`` three branches of ``y``; at ``x = 0.5``
  they are ``y ≈ 0.21, 0.50, 0.79``, at ``x = 0.42`` ``y ≈ 0.17, 0.60, 0.71``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import distributions as D

from edifice.generative import mdn

F64 = torch.float64


def random_params(b, k, dy, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(b, k, generator=g, dtype=F64)
    means = scale * torch.randn(b, k, dy, generator=g, dtype=F64)
    log_stds = 0.5 * torch.randn(b, k, dy, generator=g, dtype=F64)
    y = scale * torch.randn(b, dy, generator=g, dtype=F64)
    return logits, means, log_stds, y


def direct_log_density(logits, means, log_stds, y):
    """log of Σ_k π_k Π_d N(y_d; μ, σ²) summed as densities (no log-space tricks)."""
    w = torch.softmax(logits, -1)
    s = log_stds.exp()
    dens = torch.exp(-0.5 * ((y[:, None] - means) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    return torch.log((w * dens.prod(-1)).sum(-1))


def torch_mixture(logits, means, log_stds):
    comp = D.Independent(D.Normal(means, log_stds.exp()), 1)
    return D.MixtureSameFamily(D.Categorical(logits=logits), comp)


def const_net(logits, means, log_stds):
    """A closed-form 'network' returning the same mixture for every input row."""
    def net(x):
        n = x.shape[0]
        return (logits.expand(n, -1), means.expand(n, -1, -1), log_stds.expand(n, -1, -1))
    return net


# ------------------------------------------------------------------------------------------------ density


@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**16))
def test_mixture_log_prob_equals_direct_mixture_density(b, k, dy, seed):
    logits, means, log_stds, y = random_params(b, k, dy, seed)
    got = mdn.mixture_log_prob(logits, means, log_stds, y)
    assert got.shape == (b,)
    torch.testing.assert_close(got, direct_log_density(logits, means, log_stds, y), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, torch_mixture(logits, means, log_stds).log_prob(y), rtol=1e-10, atol=1e-10)


@given(st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**16))
def test_one_component_is_gaussian_regression(b, dy, seed):
    _, means, log_stds, y = random_params(b, 1, dy, seed)
    x = torch.zeros(b, 2, dtype=F64)
    net = lambda x: (torch.zeros(x.shape[0], 1, dtype=F64), means, log_stds)  # noqa: E731
    want = (0.5 * ((y - means[:, 0]) / log_stds[:, 0].exp()) ** 2 + log_stds[:, 0] + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(mdn.nll(net, x, y), want.sum(-1), rtol=1e-12, atol=1e-12)
    # unit variance: half the squared error plus a constant (least squares)
    unit = lambda x: (torch.zeros(x.shape[0], 1, dtype=F64), means, torch.zeros_like(means))  # noqa: E731
    want = 0.5 * (y - means[:, 0]).square().sum(-1) + 0.5 * dy * math.log(2 * math.pi)
    torch.testing.assert_close(mdn.nll(unit, x, y), want, rtol=1e-12, atol=1e-12)


def test_log_prob_is_stable_far_from_the_components():
    logits = torch.tensor([[0.0, 50.0]], dtype=F64, requires_grad=True)
    means = torch.tensor([[[0.0], [1.0]]], dtype=F64, requires_grad=True)
    log_stds = torch.full((1, 2, 1), -5.0, dtype=F64, requires_grad=True)
    y = torch.tensor([[30.0]], dtype=F64)
    assert direct_log_density(logits, means, log_stds, y).isinf().all()  # the naive sum underflows
    lp = mdn.mixture_log_prob(logits, means, log_stds, y)
    # the nearer component (mean 1) dominates: -½ (29/σ)² - log σ - ½ log 2π + log π_2
    want = -0.5 * (29 * math.exp(5)) ** 2 + 5 - 0.5 * math.log(2 * math.pi) - math.log1p(math.exp(-50))
    torch.testing.assert_close(lp, torch.tensor([want], dtype=F64), rtol=1e-12, atol=0)
    lp.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (logits, means, log_stds))


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**16))
def test_moments_match_torch_distributions(b, k, dy, seed):
    logits, means, log_stds, _ = random_params(b, k, dy, seed)
    mean, var = mdn.moments(logits, means, log_stds)
    mix = torch_mixture(logits, means, log_stds)
    torch.testing.assert_close(mean, mix.mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(var, mix.variance, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------ sampling


@given(st.integers(1, 4), st.integers(1, 2), st.integers(0, 2**16))
def test_sampling_matches_the_mixture_moments_and_weights(k, dy, seed):
    logits, means, log_stds, _ = random_params(1, k, dy, seed)
    n = 20000
    seen = {}
    out = mdn.sample(const_net(logits, means, log_stds), (n, 1 + dy), condition=torch.zeros(n, 1, dtype=F64),
                     generator=torch.Generator().manual_seed(seed), callback=seen.update)
    assert out.shape == (n, 1 + dy) and out.dtype == F64 and torch.equal(out[:, 0], torch.zeros(n, dtype=F64))
    y = out[:, 1:]
    mean, var = mdn.moments(logits, means, log_stds)
    se = (var / n).sqrt()
    assert ((y.mean(0) - mean[0]).abs() <= 5 * se[0] + 1e-12).all()
    fourth = ((y - mean[0]) ** 4).mean(0)
    assert ((y.var(0) - var[0]).abs() <= 6 * ((fourth - var[0] ** 2).clamp_min(0) / n).sqrt() + 1e-9).all()
    pi = torch.softmax(logits[0], -1)
    freq = torch.bincount(seen["component"], minlength=k).to(F64) / n
    assert ((freq - pi).abs() <= 5 * (pi * (1 - pi) / n).sqrt() + 1e-12).all()
    assert torch.equal(seen["y"], y)


def test_sample_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    net = mdn.build(data_shape=(3,), input_dim=1, components=3, hidden=8, depth=1, x_range=(2.0, 3.0))
    state = torch.random.get_rng_state()
    a, b, c = (mdn.sample(net, (50, 3), generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.float32
    assert ((a[:, 0] >= 2.0) & (a[:, 0] < 3.0)).all()  # x ~ U(x_range) recorded at build
    d = mdn.sample(net, (50, 3), x_range=(-5.0, -4.0), generator=torch.Generator().manual_seed(0))
    assert ((d[:, 0] >= -5.0) & (d[:, 0] < -4.0)).all()
    cond = torch.linspace(0, 1, 50, dtype=F64)[:, None]
    e = mdn.sample(net, (50, 3), condition=cond, generator=torch.Generator().manual_seed(0))
    assert e.dtype == torch.float32 and torch.equal(e[:, :1], cond.float())  # follows the net's dtype


# ------------------------------------------------------------------------------------------------ build, loss


def test_build_shapes_config_and_loss_gradients():
    torch.manual_seed(0)
    net = mdn.build(data_shape=(5,), input_dim=2, components=4, hidden=16, depth=3)
    assert net.config == dict(input_dim=2, output_dim=3, components=4, hidden=16, depth=3, x_range=(-1.0, 1.0))
    data = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    logits, means, log_stds = net(data[:, :2])
    assert logits.shape == (7, 4) and means.shape == (7, 4, 3) and log_stds.shape == (7, 4, 3)
    value, logs = mdn.loss(net, data, generator=torch.Generator().manual_seed(0), cond={})
    assert set(logs) == {"loss", "nll", "std"} and not any(v.requires_grad for v in logs.values())
    torch.testing.assert_close(value, mdn.nll(net, data[:, :2], data[:, 2:]).mean())
    torch.testing.assert_close(value, -mdn.log_prob(net, data).mean())
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("opts,err,match", [
    (dict(data_shape=(0,)), ValueError, "data_shape"),
    (dict(data_shape=(2, 3)), ValueError, "data_shape must be a vector"),
    (dict(data_shape=(1,)), ValueError, "data_shape.*D > input_dim"),
    (dict(data_shape=(3,), input_dim=3), ValueError, "D > input_dim"),
    (dict(data_shape=(2,), num_classes=3), ValueError, "num_classes must be None"),
    (dict(data_shape=(2,), components=0), ValueError, "components must be a positive int, got 0"),
    (dict(data_shape=(2,), components=2.0), TypeError, "components must be an int"),
    (dict(data_shape=(2,), hidden=0), ValueError, "hidden must be a positive int"),
    (dict(data_shape=(2,), depth=0), ValueError, "depth must be a positive int"),
    (dict(data_shape=(2,), input_dim=0), ValueError, "input_dim must be a positive int"),
    (dict(data_shape=(2,), x_range=(1.0, 1.0)), ValueError, "x_range must have low < high"),
    (dict(data_shape=(2,), x_range=1.0), TypeError, "x_range must be a pair"),
])
def test_build_errors(opts, err, match):
    with pytest.raises(err, match=match):
        mdn.build(**opts)


def test_loss_log_prob_and_nll_errors():
    net = mdn.build(data_shape=(2,), hidden=8, depth=1)
    data = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"data must have shape \(B, 2\)"):
        mdn.loss(net, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="data must have 2 dimensions"):
        mdn.log_prob(net, torch.zeros(4))
    with pytest.raises(ValueError, match="cond must be None or empty"):
        mdn.loss(net, data, cond={"y": torch.zeros(4)})
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        mdn.loss(net, data, generator=0)
    with pytest.raises(TypeError, match="net must be an MDN"):
        mdn.log_prob(lambda x: x, data)
    with pytest.raises(ValueError, match="x and y must have the same batch size"):
        mdn.nll(net, torch.zeros(3, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"y must have shape \(4, 1\)"):
        mdn.nll(net, torch.zeros(4, 1), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="net must return"):
        mdn.nll(lambda x: x, torch.zeros(4, 1), torch.zeros(4, 1))
    with pytest.raises(TypeError, match="net must be callable"):
        mdn.nll(3, torch.zeros(4, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"means must have shape \(1, 2, Dy\)"):
        mdn.mixture_log_prob(torch.zeros(1, 2), torch.zeros(1, 3, 1), torch.zeros(1, 3, 1), torch.zeros(1, 1))


def test_sample_errors():
    net = mdn.build(data_shape=(2,), hidden=8, depth=1)
    plain = const_net(*random_params(1, 2, 1, 0)[:3])
    with pytest.raises(ValueError, match=r"shape must be \(n, D\)"):
        mdn.sample(net, (4, 1, 2))
    with pytest.raises(ValueError, match="shape must be .*D > input_dim"):
        mdn.sample(net, (4, 1))
    with pytest.raises(ValueError, match=r"condition must have shape \(4, 1\)"):
        mdn.sample(net, (4, 2), condition=torch.zeros(3, 1))
    with pytest.raises(ValueError, match="condition must be given"):
        mdn.sample(plain, (4, 2))
    with pytest.raises(ValueError, match="cond must be None or empty"):
        mdn.sample(net, (4, 2), cond={"y": 1})
    with pytest.raises(ValueError, match="x_range must have low < high"):
        mdn.sample(net, (4, 2), x_range=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"net must return means of shape \(4, K, 2\)"):
        mdn.sample(plain, (4, 3), condition=torch.zeros(4, 1, dtype=F64))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        mdn.sample(net, (4, 2), generator=1)


# ------------------------------------------------------------------------------------------------ data


def test_inverse_sine():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = mdn.inverse_sine(500, generator=g())
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, mdn.inverse_sine(500, generator=g()))
    exact = mdn.inverse_sine(500, noise=0.0, generator=g(), dtype=F64)
    x, y = exact.unbind(1)
    assert ((y >= 0) & (y < 1)).all()
    torch.testing.assert_close(x, y + 0.3 * torch.sin(2 * math.pi * y), rtol=0, atol=1e-15)
    u = mdn.inverse_sine(2000, noise=0.1, noise_dist="uniform", generator=g(), dtype=F64)
    resid = u[:, 0] - (u[:, 1] + 0.3 * torch.sin(2 * math.pi * u[:, 1]))
    assert resid.abs().max() <= 0.1 and resid.abs().max() > 0.09
    with pytest.raises(ValueError, match="n must be a positive int"):
        mdn.inverse_sine(0)
    with pytest.raises(ValueError, match=r"noise must be in \[0.0, inf\]"):
        mdn.inverse_sine(5, noise=-1.0)
    with pytest.raises(ValueError, match="noise_dist must be one of 'gaussian', 'uniform'"):
        mdn.inverse_sine(5, noise_dist="laplace")


# ------------------------------------------------------------------------------------------------ learning


def branches(x0):
    """The y's with y + 0.3 sin(2πy) = x0 (roots of the noise-free forward map)."""
    y = torch.linspace(0, 1, 100001, dtype=F64)
    f = y + 0.3 * torch.sin(2 * math.pi * y) - x0
    return y[:-1][(f[:-1] * f[1:]) <= 0]


def fit(net, steps, objective, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        data = mdn.inverse_sine(256, generator=g)
        value = objective(net, data)
        opt.zero_grad()
        value.backward()
        opt.step()
    return net


def test_mdn_learns_the_multivalued_inverse_where_least_squares_averages():
    torch.manual_seed(0)
    net = fit(mdn.build(data_shape=(2,), components=5, hidden=32, depth=2), 1200,
              lambda n, d: mdn.loss(n, d)[0])
    torch.manual_seed(0)  # least squares: the mean of a 1-component MDN trained on the squared error
    ls = fit(mdn.build(data_shape=(2,), components=1, hidden=32, depth=2), 1200,
             lambda n, d: (n(d[:, :1])[1][:, 0] - d[:, 1:]).square().mean())
    test = mdn.inverse_sine(4000, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        nll_mdn = float(-mdn.log_prob(net, test).mean())
        pred = ls(test[:, :1])[1][:, 0]
        mse = float((pred - test[:, 1:]).square().mean())
        # the least-squares baseline as a density: N(y; f(x), mse), its best homoscedastic Gaussian
        nll_ls = 0.5 * math.log(2 * math.pi * mse) + 0.5
        # the MDN's conditional at x = 0.5 on a grid: modes and the mass of their basins
        ys = torch.linspace(-0.3, 1.3, 1601)[:, None]
        dens = mdn.log_prob(net, torch.cat([torch.full_like(ys, 0.5), ys], 1)).exp()
        peaks = [i for i in range(1, len(ys) - 1) if dens[i] > dens[i - 1] and dens[i] >= dens[i + 1]]
        cuts = [0] + [min(range(a, b), key=lambda i: dens[i]) for a, b in zip(peaks, peaks[1:])] + [len(ys)]
        mass = [float(dens[a:b].sum() * (ys[1, 0] - ys[0, 0])) for a, b in zip(cuts, cuts[1:])]
        modes = [float(ys[p, 0]) for p, m in zip(peaks, mass) if m > 0.15]
        ls_mid = ls(torch.tensor([[0.42], [0.5]]))[1][:, 0, 0]
    print(f"MDN NLL {nll_mdn:.3f} vs least squares {nll_ls:.3f}; modes at x=0.5: {modes} masses {mass}; "
          f"LS at x=0.42, 0.5: {ls_mid.tolist()}")
    assert nll_mdn < nll_ls - 0.5  # measured: about -1.1 vs -0.1 nats
    assert len(modes) >= 2  # bimodal at least (measured: three modes, on the three branches)
    truth = branches(0.5)  # ≈ 0.21, 0.50, 0.79
    assert len(truth) == 3 and all(min(abs(m - t) for t in truth.tolist()) < 0.05 for m in modes)
    # least squares at x = 0.42 lands in the gap between the branches (≈ 0.17 | 0.60, 0.71), far from all
    gap = branches(0.42)
    assert float((gap - ls_mid[0]).abs().min()) > 0.1
    assert float(gap.min()) < ls_mid[0] < float(gap.max())
