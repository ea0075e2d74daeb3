"""EDM: preconditioning, loss, step functions, samplers and likelihood against float64 Gaussian oracles.

Data ``N(μ, Σ)`` has the exact denoiser ``D(x, σ) = μ + Σ (Σ + σ² I)^{-1} (x - μ)``, and the probability-flow ODE
``dx/dσ = σ (Σ + σ² I)^{-1} (x - μ)`` has the exact flow map ``x_b - μ = (Σ + σ_b² I)^{1/2} (Σ + σ_a² I)^{-1/2}
(x_a - μ)`` (all matrices are functions of ``Σ``, so they commute).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.generative import ddpm, edm
from edifice.schedules import karras_sigmas, make_schedule

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)
LAM, Q = torch.linalg.eigh(COV)


def gauss_denoiser(x, sigma):
    """Exact ``E[x_0 | x_σ]`` for ``x_0 ~ N(MU, COV)``; ``sigma`` (B,), any float dtype."""
    s2 = sigma.to(F64)[:, None] ** 2
    y = (x.to(F64) - MU) @ Q  # (B, 2) in the eigenbasis
    return (MU + (y * LAM / (LAM + s2)) @ Q.T).to(x.dtype)


def flow_map(x, sigma_a, sigma_b):
    """Exact probability-flow map from level ``sigma_a`` to ``sigma_b``."""
    y = (x - MU) @ Q
    return MU + (y * ((LAM + sigma_b**2) / (LAM + sigma_a**2)).sqrt()) @ Q.T


def gauss_log_prob(x, mean, cov):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


class Counter:
    def __init__(self, fn=gauss_denoiser):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        return self.fn(x, sigma)


def noise(n, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------- preconditioning, network


def test_preconditioning_table_1():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, 0.5)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)


@given(st.floats(1e-3, 1e3), st.floats(0.05, 5.0))
def test_preconditioning_gives_unit_variance_input_and_target(sigma, sd):
    s = torch.tensor([sigma], dtype=F64)
    c_skip, c_out, c_in, _ = edm.preconditioning(s, sd)
    torch.testing.assert_close(c_in**2 * (s**2 + sd**2), torch.ones(1, dtype=F64))  # Var(c_in (y + n)) = 1
    torch.testing.assert_close(c_out**2, (1 - c_skip) ** 2 * sd**2 + c_skip**2 * s**2)  # Var of F's target
    torch.testing.assert_close(edm.loss_weight(s, sd), 1 / c_out**2)


def test_denoiser_applies_preconditioning_to_its_backbone():
    torch.manual_seed(0)
    net = edm.build(data_shape=(3,), hidden=16, depth=1, sigma_data=0.7).double()
    x, sigma = torch.randn(4, 3, dtype=F64), torch.tensor([0.01, 0.3, 2.0, 50.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, 0.7)
    want = c_skip[:, None] * x + c_out[:, None] * net.backbone(c_in[:, None] * x, c_noise)
    torch.testing.assert_close(net(x, sigma), want)
    assert net.sigma_data == 0.7 and net.backbone.config["t_scale"] == 250.0
    other = edm.EDMDenoiser(**net.config).double()
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x, 0.3), net(x, torch.full((4,), 0.3, dtype=F64)))


def test_denoiser_conditional_and_image():
    net = edm.build(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2), num_classes=3)
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 5.0]), y=torch.tensor([0, 2]))
    assert out.shape == (2, 1, 8, 8) and net.config["data_shape"] == [1, 8, 8]


@pytest.mark.parametrize("kw,err,match", [(dict(sigma_data=0.0), ValueError, "sigma_data"),
                                          (dict(hidden=0), ValueError, "hidden"),
                                          (dict(channel_mults=()), ValueError, "channel_mults"),
                                          (dict(data_shape=2), TypeError, "data_shape"),
                                          (dict(data_shape=(1, 8, 6)), ValueError, "data_shape")])
def test_build_errors(kw, err, match):
    with pytest.raises(err, match=match):
        edm.build(**{"data_shape": (2,), **kw})


# ------------------------------------------------------------------------------- training


def test_sample_sigma_is_log_normal():
    s = edm.sample_sigma(20000, p_mean=-1.2, p_std=1.2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert abs(s.log().mean() + 1.2) < 0.03 and abs(s.log().std() - 1.2) < 0.03
    again = edm.sample_sigma(20000, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(s, again)


@pytest.mark.parametrize("kw,err,match", [(dict(n=0), ValueError, "n must be a positive int"),
                                          (dict(p_std=0.0), ValueError, "p_std"),
                                          (dict(p_mean=float("nan")), ValueError, "p_mean"),
                                          (dict(dtype=torch.long), TypeError, "dtype")])
def test_sample_sigma_errors(kw, err, match):
    with pytest.raises(err, match=match):
        edm.sample_sigma(**{"n": 4, **kw})


def test_loss_equals_weighted_denoising_error():
    x, n = noise(8, 1), noise(8, 2)
    sigma = torch.linspace(0.01, 20.0, 8, dtype=F64)
    net = lambda v, s: 0.9 * v  # noqa: E731
    value, logs = edm.loss(net, x, noise=n, sigma=sigma, sigma_data=0.7)
    want = (edm.loss_weight(sigma, 0.7)[:, None] * (0.9 * (x + sigma[:, None] * n) - x) ** 2).mean()
    torch.testing.assert_close(value, want)
    assert torch.equal(logs["loss"], value) and not logs["loss"].requires_grad


def test_loss_takes_sigma_data_from_the_network():
    net = edm.build(data_shape=(2,), hidden=8, depth=1, sigma_data=2.0)
    x = torch.randn(4, 2)
    kw = dict(noise=torch.randn(4, 2), sigma=0.5)
    torch.testing.assert_close(edm.loss(net, x, **kw)[0], edm.loss(net, x, sigma_data=2.0, **kw)[0])
    assert not torch.allclose(edm.loss(net, x, **kw)[0], edm.loss(net, x, sigma_data=0.5, **kw)[0])


def test_loss_is_minimised_by_the_exact_denoiser():
    g = torch.Generator().manual_seed(3)
    x = MU + noise(20000, 4) @ torch.linalg.cholesky(COV).T
    kw = dict(noise=noise(20000, 5), sigma=edm.sample_sigma(20000, generator=g, dtype=F64))
    best = edm.loss(gauss_denoiser, x, **kw)[0]
    for shift in (0.05, -0.05):
        assert edm.loss(lambda v, s: gauss_denoiser(v, s) + shift, x, **kw)[0] > best
    assert edm.loss(lambda v, s: gauss_denoiser(1.02 * v, s), x, **kw)[0] > best


@pytest.mark.parametrize("kw,err,match", [
    (dict(sigma=0.0), ValueError, "sigma must be > 0"),
    (dict(sigma=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "sigma must be > 0"),
    (dict(sigma=torch.ones(3)), ValueError, "sigma must have shape"),
    (dict(noise=torch.ones(4, 3)), ValueError, "noise must have shape"),
    (dict(sigma_data=-1.0), ValueError, "sigma_data"),
    (dict(p_std=-1.0), ValueError, "p_std"),
    (dict(cond=[1]), TypeError, "cond"),
])
def test_loss_errors(kw, err, match):
    with pytest.raises(err, match=match):
        edm.loss(gauss_denoiser, torch.zeros(4, 2), **kw)


def test_loss_rejects_a_batchless_x():
    with pytest.raises(ValueError, match="x must be a batch"):
        edm.loss(gauss_denoiser, torch.zeros(2))


# ------------------------------------------------------------------------------- step functions

# σ_next is 0 or at least σ/1000: Heun's correction divides by σ_next, so a tiny σ_next amplifies rounding
sig_pairs = st.tuples(st.floats(0.01, 50.0), st.one_of(st.just(0.0), st.floats(1e-3, 1.0)))
sig_pairs = sig_pairs.map(lambda p: (p[0], p[0] * p[1]))


@given(sig_pairs, st.integers(0, 100))
def test_steps_are_exact_for_a_constant_denoiser(pair, seed):
    # D = c makes the ODE x(σ) = c + (x - c) σ/σ_0 linear in σ: Euler and Heun are both exact.
    sigma, sigma_next = pair
    x, c = noise(3, seed), noise(3, seed + 1)
    want = c + (x - c) * sigma_next / sigma
    const = lambda v, s: c  # noqa: E731
    torch.testing.assert_close(edm.euler_step(x, c, sigma, sigma_next), want)
    torch.testing.assert_close(edm.heun_step(const, x, sigma, sigma_next, c), want)
    s, sn = torch.full((3,), sigma, dtype=F64), torch.full((3,), sigma_next, dtype=F64)
    torch.testing.assert_close(edm.heun_step(const, x, s, sn, c), want)


def test_heun_step_is_the_trapezoid_rule_and_euler_at_zero():
    x, sigma, sigma_next = noise(3, 1), 2.0, 1.2
    den = gauss_denoiser(x, torch.full((3,), sigma, dtype=F64))
    x_e = x + (sigma_next - sigma) * (x - den) / sigma
    d2 = (x_e - gauss_denoiser(x_e, torch.full((3,), sigma_next, dtype=F64))) / sigma_next
    want = x + (sigma_next - sigma) * ((x - den) / sigma + d2) / 2
    torch.testing.assert_close(edm.heun_step(gauss_denoiser, x, sigma, sigma_next, den), want)
    counter = Counter()
    torch.testing.assert_close(edm.heun_step(counter, x, sigma, 0.0, den), den)
    assert counter.calls == 0
    # per-sample levels, some of them 0: a torch.where, no host sync
    sn = torch.tensor([sigma_next, 0.0, sigma_next], dtype=F64)
    out = edm.heun_step(gauss_denoiser, x, torch.full((3,), sigma, dtype=F64), sn, den)
    torch.testing.assert_close(out[[0, 2]], want[[0, 2]])
    torch.testing.assert_close(out[1], den[1])


def test_churn_raises_the_noise_level():
    x, z = noise(4, 1), noise(4, 2)
    x_hat, s_hat = edm.churn(x, 2.0, 0.25, z, 1.1)
    assert s_hat == 2.5
    torch.testing.assert_close(x_hat, x + math.sqrt(2.5**2 - 4.0) * 1.1 * z)
    x_hat2, s_hat2 = edm.churn(x, torch.tensor(2.0, dtype=F64), 0.25, z, 1.1)
    torch.testing.assert_close(x_hat2, x_hat)
    torch.testing.assert_close(s_hat2, torch.tensor(2.5, dtype=F64))
    assert torch.equal(edm.churn(x, 2.0, 0.0, z)[0], x)


@pytest.mark.parametrize("call,err,match", [
    (lambda: edm.churn(torch.zeros(2, 2), 1.0, -0.1, torch.zeros(2, 2)), ValueError, "gamma"),
    (lambda: edm.churn(torch.zeros(2, 2), 1.0, 0.1, torch.zeros(2, 2), -1.0), ValueError, "s_noise"),
    (lambda: edm.churn(torch.zeros(2, 2), 1.0, 0.1, torch.zeros(2, 3)), ValueError, "noise must have shape"),
    (lambda: edm.euler_step(torch.zeros(2, 2), torch.zeros(2, 3), 1.0, 0.5), ValueError, "denoised"),
    (lambda: edm.euler_step([0.0], torch.zeros(2, 3), 1.0, 0.5), TypeError, "x must be a torch.Tensor"),
    (lambda: edm.heun_step(None, torch.zeros(2, 2), 1.0, 0.5, torch.zeros(2, 2)), TypeError, "denoise_fn"),
    (lambda: edm.heun_step(gauss_denoiser, torch.zeros(2, 2), 1.0, -0.5, torch.zeros(2, 2)), ValueError,
     "sigma_next"),
    (lambda: edm.euler_step(torch.zeros(2, 2), torch.zeros(2, 2), 0.0, 0.5), ValueError, "sigma must be in"),
    (lambda: edm.euler_step(torch.zeros(2, 2), torch.zeros(2, 2), "1", 0.5), TypeError, "sigma must be a number"),
    (lambda: edm.churn(torch.zeros(2, 2), torch.ones(3), 0.1, torch.zeros(2, 2)), ValueError, "sigma must have"),
    (lambda: edm.preconditioning(torch.ones(2), 0.0), ValueError, "sigma_data"),
    (lambda: edm.preconditioning(1.0), TypeError, "sigma must be a torch.Tensor"),
    (lambda: edm.loss_weight(torch.ones(2, dtype=torch.long)), TypeError, "floating"),
    (lambda: edm.heun_step(gauss_denoiser, torch.zeros(2, 2), 1.0, torch.zeros(3), torch.zeros(2, 2)), ValueError,
     "sigma_next must have shape"),
    (lambda: edm.loss(gauss_denoiser, torch.zeros(4, 2, dtype=torch.long)), TypeError, "x must be a floating"),
    (lambda: edm.sample(gauss_denoiser, (0, 2)), ValueError, "shape must be a non-empty tuple of positive ints"),
    (lambda: edm.vp_denoiser(lambda x, t: x)(torch.zeros(2, 2), torch.ones(3)), ValueError, "sigma must have shape"),
])
def test_step_function_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_network_calls_heun_2n_minus_1_euler_n(steps):
    for sampler, want in (("heun", 2 * steps - 1), ("euler", steps)):
        for churn_kw in ({}, dict(s_churn=40.0)):
            counter = Counter()
            edm.sample(counter, (3, 2), steps=steps, sampler=sampler, noise=noise(3), **churn_kw)
            assert counter.calls == want, (sampler, churn_kw)


def test_sample_walks_the_karras_ladder_and_reports_progress():
    seen, levels = [], []

    def net(x, s):
        levels.append(s.clone())
        return gauss_denoiser(x, s)

    edm.sample(net, (3, 2), steps=6, sampler="euler", noise=noise(3), callback=seen.append, sigma_min=0.01,
               sigma_max=10.0, rho=3.0)
    ladder = karras_sigmas(6, sigma_min=0.01, sigma_max=10.0, rho=3.0)
    assert [d["i"] for d in seen] == list(range(6)) and set(seen[0]) == {"i", "t", "x", "x0"}
    torch.testing.assert_close(torch.stack([d["t"] for d in seen]), ladder[1:])
    torch.testing.assert_close(torch.stack([s[0] for s in levels]), ladder[:-1])
    assert all(s.shape == (3,) for s in levels)
    torch.testing.assert_close(seen[-1]["x"], seen[-1]["x0"])  # the last Euler step lands on D


def test_explicit_sigmas_override_the_ladder():
    ladder = [5.0, 1.0, 0.1, 0.0]
    a = edm.sample(gauss_denoiser, (3, 2), sigmas=ladder, noise=noise(3))
    b = edm.sample(gauss_denoiser, (3, 2), sigmas=torch.tensor(ladder, dtype=torch.float32), noise=noise(3),
                   steps=99, sigma_max=1e4)
    torch.testing.assert_close(a, b)
    x = 5.0 * noise(3)
    x = edm.heun_step(gauss_denoiser, x, 5.0, 1.0, gauss_denoiser(x, torch.full((3,), 5.0, dtype=F64)))
    x = edm.heun_step(gauss_denoiser, x, 1.0, 0.1, gauss_denoiser(x, torch.full((3,), 1.0, dtype=F64)))
    torch.testing.assert_close(a, gauss_denoiser(x, torch.full((3,), 0.1, dtype=F64)))


def test_sample_dtype_device_and_determinism():
    assert edm.sample(gauss_denoiser, (3, 2), steps=3).dtype == torch.float32
    assert edm.sample(gauss_denoiser, (3, 2), steps=3, noise=noise(3)).dtype == F64
    net = edm.build(data_shape=(2,), hidden=8, depth=1).double()
    assert edm.sample(net, (3, 2), steps=2).dtype == F64

    def run(seed):
        return edm.sample(gauss_denoiser, (4, 2), steps=4, s_churn=5.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_churn_only_inside_the_level_window():
    base = edm.sample(gauss_denoiser, (4, 2), steps=6, noise=noise(4))
    off = edm.sample(gauss_denoiser, (4, 2), steps=6, noise=noise(4), s_churn=30.0, s_tmin=100.0)
    assert torch.equal(base, off)  # no γ > 0: no noise drawn, the same bits
    g = torch.Generator().manual_seed(0)
    quiet = edm.sample(gauss_denoiser, (4, 2), steps=6, noise=noise(4), s_churn=30.0, s_noise=0.0, generator=g)
    assert not torch.allclose(base, quiet)  # σ̂ > σ changes the path even without noise
    # γ = min(S_churn/N, √2 - 1) on σ_i in [S_tmin, S_tmax]: replay Algorithm 2 by hand
    ladder = karras_sigmas(6)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = edm.sample(gauss_denoiser, (4, 2), steps=6, noise=noise(4), s_churn=1.2, s_tmin=0.05, s_tmax=10.0,
                     s_noise=1.007, generator=g1, sampler="euler")
    x = 80.0 * noise(4)
    for i in range(6):
        s = float(ladder[i])
        if 0.05 <= s <= 10.0:
            x, s = edm.churn(x, s, 0.2, torch.randn(4, 2, generator=g2, dtype=F64), 1.007)
        x = edm.euler_step(x, gauss_denoiser(x, torch.full((4,), s, dtype=F64)), s, float(ladder[i + 1]))
    torch.testing.assert_close(got, x)


# The deterministic samplers push N(0, σ_max² I) (not the true N(μ, Σ + σ_max² I)) through the flow map:
# their exact output law is N(μ - Aμ, σ_max² A²) with A = Σ^{1/2} (Σ + σ_max² I)^{-1/2} (a 1% shift of the mean).
_A = Q @ torch.diag((LAM / (LAM + 80.0**2)).sqrt()) @ Q.T
PUSH_MEAN, PUSH_COV = MU - _A @ MU, 80.0**2 * _A @ _A


# Heun needs ~40 steps here (18 steps leave a 0.09 error on the covariance: the 0.33-std component bends the ODE
# around σ ≈ 0.3); the stochastic samplers need γ = S_churn/N small, since each churned Euler step spans σ̂/σ_{i+1}.
@pytest.mark.parametrize("sampler,steps,kw", [("heun", 40, {}), ("euler", 200, {}),
                                              ("heun", 64, dict(s_churn=10.0, s_tmin=0.01, s_tmax=50.0)),
                                              ("euler", 400, dict(s_churn=20.0))])
def test_samplers_recover_the_gaussian(sampler, steps, kw):
    x = edm.sample(gauss_denoiser, (20000, 2), steps=steps, sampler=sampler, noise=noise(20000, 7),
                   generator=torch.Generator().manual_seed(8), **kw)
    assert (x.mean(0) - PUSH_MEAN).abs().max() < 0.025  # Monte Carlo SE ≈ 0.007
    assert (torch.cov(x.T) - PUSH_COV).abs().max() < 0.035  # Monte Carlo SE ≈ 0.01


def test_deterministic_heun_follows_the_exact_flow_map():
    z = noise(50, 3)
    x = edm.sample(gauss_denoiser, (50, 2), steps=160, noise=z)
    # the last step is x = D(x, σ_min): the exact map to σ_min, then one Euler step to 0
    want = gauss_denoiser(flow_map(80.0 * z, 80.0, 0.002), torch.full((50,), 0.002, dtype=F64))
    torch.testing.assert_close(x, want, rtol=0, atol=2e-3)


def test_measured_order_heun_2_euler_1():
    z = noise(16, 9)
    exact = flow_map(80.0 * z, 80.0, 0.002)
    slopes = {}
    for sampler in ("euler", "heun"):
        errs, ns = [], [10, 20, 40, 80]
        for n in ns:
            states = []
            edm.sample(gauss_denoiser, (16, 2), steps=n, sampler=sampler, noise=z, callback=states.append)
            errs.append((states[-2]["x"] - exact).abs().max().item())  # the state at σ_{N-1} = σ_min
        slopes[sampler] = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert 0.8 < slopes["euler"] < 1.3 and 1.8 < slopes["heun"] < 2.3, slopes


@pytest.mark.parametrize("kw,err,match", [
    (dict(sigma_min=1.0, sigma_max=1.0), ValueError, "sigma_min must be < sigma_max"),
    (dict(sigma_min=0.0), ValueError, "sigma_min"),
    (dict(steps=0), ValueError, "steps must be a positive int, got 0"),
    (dict(steps=2.0), TypeError, "steps must be an int"),
    (dict(sampler="rk4"), ValueError, "sampler must be one of 'heun', 'euler'"),
    (dict(s_churn=-1.0), ValueError, "s_churn"),
    (dict(s_noise=-1.0), ValueError, "s_noise"),
    (dict(s_tmin=-1.0), ValueError, "s_tmin"),
    (dict(s_tmin=2.0, s_tmax=1.0), ValueError, "s_tmax must be >= s_tmin"),
    (dict(s_tmax="inf"), TypeError, "s_tmax must be a number"),
    (dict(s_tmax=float("nan")), ValueError, "s_tmax"),
    (dict(rho=0.0), ValueError, "rho"),
    (dict(sigmas=[1.0, 2.0, 0.0]), ValueError, "strictly descending"),
    (dict(sigmas=[2.0, 1.0, 1.0, 0.0]), ValueError, "strictly descending"),
    (dict(sigmas=[2.0, 1.0]), ValueError, "end with 0"),
    (dict(sigmas=[0.0]), ValueError, "at least 2"),
    (dict(sigmas=[2.0, -1.0, 0.0]), ValueError, "positive"),
    (dict(sigmas=[float("inf"), 1.0, 0.0]), ValueError, "finite"),
    (dict(sigmas=torch.ones(2, 2)), ValueError, "sigmas must have 1 dimensions"),
    (dict(sigmas="karras"), TypeError, "sigmas must be a 1-D tensor"),
    (dict(noise=torch.zeros(3, 3)), ValueError, "noise must have shape"),
    (dict(cond=3), TypeError, "cond"),
    (dict(callback=3), TypeError, "callback"),
])
def test_sample_errors(kw, err, match):
    with pytest.raises(err, match=match):
        edm.sample(gauss_denoiser, (3, 2), **kw)


def test_sample_rejects_a_non_callable_net():
    with pytest.raises(TypeError, match="net must be callable"):
        edm.sample(3, (3, 2))


# ------------------------------------------------------------------------------- likelihood


def test_probability_flow_field():
    x, s = noise(5, 1), torch.tensor(0.7, dtype=F64)
    f = edm.probability_flow(lambda v, sig, y: gauss_denoiser(v, sig) + y, cond={"y": 0.0})
    torch.testing.assert_close(f(s, x), (x - gauss_denoiser(x, s.expand(5))) / 0.7)
    with pytest.raises(TypeError, match="net must be callable"):
        edm.probability_flow(None)


def test_log_prob_equals_the_exact_change_of_variables():
    # The prior N(0, σ_max² I) stands in for the true marginal N(μ, Σ + σ_max² I); account for that exactly.
    x = MU + noise(8, 2) @ torch.linalg.cholesky(COV).T
    z = flow_map(x, 0.002, 80.0)
    eye = torch.eye(2, dtype=F64)
    want = (gauss_log_prob(x, MU, COV + 0.002**2 * eye) + gauss_log_prob(z, torch.zeros(2, dtype=F64), 80.0**2 * eye)
            - gauss_log_prob(z, MU, COV + 80.0**2 * eye))
    for method, steps, tol in (("rk4", 80, 3e-5), ("heun", 100, 0.02), ("heun", 50, 0.06)):
        got = edm.log_prob(gauss_denoiser, x, steps=steps, method=method)
        torch.testing.assert_close(got, want, rtol=0, atol=tol)
    # and the plain analytic density of the data at σ_min, up to the prior's O(|μ|/σ_max) mismatch
    analytic = gauss_log_prob(x, MU, COV + 0.002**2 * eye)
    torch.testing.assert_close(edm.log_prob(gauss_denoiser, x, steps=40, method="rk4"), analytic, rtol=0, atol=0.05)


def test_log_prob_hutchinson_is_unbiased():
    x = MU + noise(4, 3) @ torch.linalg.cholesky(COV).T
    exact = edm.log_prob(gauss_denoiser, x, steps=12, method="rk4", sigma_max=5.0)
    est = torch.stack([edm.log_prob(gauss_denoiser, x, steps=12, method="rk4", sigma_max=5.0,
                                    divergence="hutchinson", generator=torch.Generator().manual_seed(s))
                       for s in range(40)])  # (40, 4)
    se = est.std(0) / math.sqrt(40)
    assert ((est.mean(0) - exact).abs() <= 3 * se + 1e-9).all() and (est.std(0) > 0).all()


@pytest.mark.parametrize("kw,err,match", [
    (dict(sigma_min=5.0, sigma_max=1.0), ValueError, "sigma_min must be < sigma_max"),
    (dict(steps=0), ValueError, "steps must be a positive int"),
    (dict(method="leapfrog"), ValueError, "method must be one of"),
    (dict(rho=-1.0), ValueError, "rho"),
    (dict(divergence="trace"), ValueError, "divergence must be one of"),
    (dict(n_probes=0), ValueError, "n_probes"),
])
def test_log_prob_errors(kw, err, match):
    with pytest.raises(err, match=match):
        edm.log_prob(gauss_denoiser, torch.zeros(3, 2, dtype=F64), **kw)


def test_log_prob_rejects_a_batchless_x():
    with pytest.raises(ValueError, match="x must be a batch"):
        edm.log_prob(gauss_denoiser, torch.zeros(2))


# ------------------------------------------------------------------------------- DDPM networks as denoisers

SCHEDULE = make_schedule("linear", 1000)
TABLE = ((1 - SCHEDULE.alpha_bar) / SCHEDULE.alpha_bar).sqrt()


@pytest.mark.parametrize("target", ddpm.TARGETS)
def test_vp_denoiser_recovers_x0_from_every_target(target):
    x0, eps = noise(4, 1), noise(4, 2)
    k = torch.tensor([0, 10, 500, 999])
    sigma = TABLE[k]
    ab = SCHEDULE.alpha_bar[k]

    def net(x_vp, t):  # a perfect network at the integer steps it is asked about
        assert torch.equal(t, k.to(F64))
        torch.testing.assert_close(x_vp, ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps)
        return ddpm.prediction_target(x0, eps, ab, target=target)

    den = edm.vp_denoiser(net, SCHEDULE, target=target)
    torch.testing.assert_close(den(x0 + sigma[:, None] * eps, sigma), x0)


def test_vp_timestep_inverts_the_linear_interpolation():
    t = torch.tensor([0.0, 0.25, 17.5, 998.9, 999.0], dtype=F64)
    sigma = torch.from_numpy(np.interp(t.numpy(), np.arange(1000), TABLE.numpy()))
    den = edm.vp_denoiser(lambda x, t: x, SCHEDULE)
    torch.testing.assert_close(den.timestep(sigma), t, rtol=0, atol=1e-9)
    clamped = den.timestep(torch.tensor([1e-5, 1e4], dtype=F64))
    assert clamped.tolist() == [0.0, 999.0]
    assert den.timestep(torch.tensor([0.5])).dtype == torch.float32


def test_vp_denoiser_follows_the_network_and_passes_cond():
    net = ddpm.build(data_shape=(2,), hidden=8, depth=1, num_classes=3).double()
    den = edm.vp_denoiser(net, None, target="v")
    assert isinstance(den, torch.nn.Module) and next(den.parameters()).dtype == F64
    y = torch.tensor([0, 2, 1])
    x = edm.sample(den, (3, 2), sigmas=edm.vp_sigmas(None, 4), cond={"y": y}, generator=torch.Generator())
    assert x.dtype == F64 and torch.isfinite(x).all()


def test_vp_sigmas_ladder():
    lad = edm.vp_sigmas(SCHEDULE, 10)
    assert lad.shape == (11,) and lad.dtype == F64 and lad[-1] == 0 and (lad[1:] < lad[:-1]).all()
    torch.testing.assert_close(lad[[0, -2]], TABLE[[999, 0]])
    torch.testing.assert_close(lad[1], torch.tensor(np.interp(888.0, np.arange(1000), TABLE.numpy())))
    assert edm.vp_sigmas(SCHEDULE, 1).tolist() == [TABLE[0].item(), 0.0]


@pytest.mark.parametrize("call,err,match", [
    (lambda: edm.vp_denoiser(lambda x, t: x, SCHEDULE, target="score"), ValueError, "target must be one of"),
    (lambda: edm.vp_denoiser(lambda x, t: x, "linear"), TypeError, "schedule must be a NoiseSchedule"),
    (lambda: edm.vp_denoiser(None, SCHEDULE), TypeError, "eps_net must be callable"),
    (lambda: edm.vp_sigmas(SCHEDULE, 0), ValueError, "steps must be a positive int"),
    (lambda: edm.vp_sigmas(SCHEDULE.alpha_bar, 5), TypeError, "schedule must be a NoiseSchedule"),
])
def test_vp_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_everything_runs_on_the_device(device):
    torch.manual_seed(0)
    net = edm.build(data_shape=(2,), hidden=8, depth=1).to(device)
    x = torch.randn(4, 2, device=device)
    assert edm.loss(net, x, generator=torch.Generator(device).manual_seed(0))[0].device.type == device.type
    for kw in (dict(sampler="heun"), dict(sampler="euler", s_churn=5.0)):
        assert edm.sample(net, (3, 2), steps=3, **kw).device.type == device.type
    den = edm.vp_denoiser(ddpm.build(data_shape=(2,), hidden=8, depth=1).to(device), SCHEDULE)
    assert edm.sample(den, (3, 2), sigmas=edm.vp_sigmas(SCHEDULE, 3)).device.type == device.type
    assert edm.log_prob(net, x, steps=2).device.type == device.type
