"""Tests for edifice.schedules: beta schedules, alpha_bar, SNR, NoiseSchedule and its posteriors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.schedules import (
    BETA_SCHEDULES,
    NoiseSchedule,
    alpha_bar,
    beta_schedule,
    cosine_betas,
    linear_betas,
    make_schedule,
    sigmoid_betas,
    snr,
)

Ts = st.integers(min_value=2, max_value=2000)


def _check_monotone(betas: torch.Tensor, T: int) -> None:
    assert betas.dtype == torch.float64 and betas.shape == (T,)
    assert bool(((betas > 0) & (betas < 1)).all())
    ab = alpha_bar(betas)
    assert bool(((ab > 0) & (ab < 1)).all())
    assert bool((ab[1:] < ab[:-1]).all())


@given(T=Ts, start=st.floats(1e-6, 0.05), width=st.floats(1e-4, 0.2))
def test_linear_properties_and_endpoints(T, start, width):
    end = start + width
    betas = linear_betas(T, beta_start=start, beta_end=end)
    _check_monotone(betas, T)
    assert betas[0].item() == pytest.approx(start, rel=1e-12)
    assert betas[-1].item() == pytest.approx(end, rel=1e-12)


@given(T=Ts, s=st.floats(0.0, 0.1), max_beta=st.floats(0.5, 0.999))
def test_cosine_properties_and_endpoints(T, s, max_beta):
    betas = cosine_betas(T, s=s, max_beta=max_beta)
    _check_monotone(betas, T)
    ab = alpha_bar(betas)

    def f(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    # alpha_bar[0] is exactly the first discretisation point and close to 1.
    assert ab[0].item() == pytest.approx(f(1 / T) / f(0), rel=1e-12)
    if s == 0.008:
        assert 1 - ab[0].item() < 0.04 / T + 3 / T**2
    # The last beta is clipped, so the final alpha_bar is tiny.
    assert betas[-1].item() == pytest.approx(max_beta)
    assert ab[-1].item() <= (1 - max_beta) * ab[-2].item() * (1 + 1e-12)


def test_cosine_default_values():
    ab = alpha_bar(cosine_betas(1000))
    assert 1 - ab[0].item() < 5e-5
    assert ab[-1].item() < 1e-8
    # away from the clipped end, alpha_bar follows the closed form f(t) / f(0)
    i = torch.arange(1, 900, dtype=torch.float64)
    f = torch.cos((i / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(ab[:899], f, rtol=1e-10, atol=0)  # ab[k] = f((k+1)/T) / f(0)


@given(T=Ts, start=st.floats(-5.0, -1.0), end=st.floats(1.0, 5.0), tau=st.floats(0.3, 3.0))
def test_sigmoid_properties(T, start, end, tau):
    betas = sigmoid_betas(T, start=start, end=end, tau=tau)
    _check_monotone(betas, T)
    assert betas.max().item() <= 0.999


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
def test_beta_schedule_dispatch(name):
    torch.testing.assert_close(beta_schedule(name, 50), BETA_SCHEDULES[name](50), rtol=0, atol=0)
    s = make_schedule(name, T=50)
    assert s.name == name and s.T == 50


def test_snr():
    ab = alpha_bar(linear_betas(100))
    r = snr(ab)
    assert r.dtype == torch.float64
    torch.testing.assert_close(r, ab / (1 - ab))
    assert bool((r[1:] < r[:-1]).all())


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_noise_schedule_fields(name):
    s = make_schedule(name, T=200)
    assert s.T == 200
    for field in ("betas", "alphas", "alpha_bar", "alpha_bar_prev", "posterior_variance",
                  "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
        v = getattr(s, field)
        assert v.shape == (200,) and v.dtype == torch.float64 and bool(torch.isfinite(v).all()), field
    torch.testing.assert_close(s.alphas, 1 - s.betas)
    torch.testing.assert_close(s.alpha_bar, torch.cumprod(1 - s.betas, 0))
    assert s.alpha_bar_prev[0].item() == 1.0
    torch.testing.assert_close(s.alpha_bar_prev[1:], s.alpha_bar[:-1], rtol=0, atol=0)
    ones = torch.ones(200, dtype=torch.float64)
    torch.testing.assert_close(s.sqrt_alpha_bar**2 + s.sqrt_one_minus_alpha_bar**2, ones)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0].item() == math.log(s.posterior_variance[1].item())
    torch.testing.assert_close(s.posterior_log_variance_clipped[1:], s.posterior_variance[1:].log())


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_posterior_matches_gaussian_product(name):
    """q(x_{t-1} | x_t, x_0) from Bayes' rule on q(x_{t-1} | x_0) q(x_t | x_{t-1}) (Ho et al. eq. 6-7)."""
    s = make_schedule(name, T=100)
    t = torch.arange(1, 100)
    ab_prev, alpha, beta = s.alpha_bar[t - 1], s.alphas[t], s.betas[t]
    precision = 1 / (1 - ab_prev) + alpha / beta
    var = 1 / precision
    torch.testing.assert_close(s.posterior_variance[t], var)
    x0, xt = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-1.3, dtype=torch.float64)
    mean = var * (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * xt / beta)
    torch.testing.assert_close(s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * xt, mean)
    # at t = 0 the posterior mean is x_0 itself
    assert s.posterior_mean_coef1[0].item() == pytest.approx(1.0) and s.posterior_mean_coef2[0].item() == 0.0


@pytest.mark.parametrize(("name", "diffusers_name"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_parity_with_diffusers(name, diffusers_name):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    s = make_schedule(name, T=1000)
    # diffusers keeps float32 betas / alphas_cumprod (FACTS.md): agreement to float32 precision only.
    torch.testing.assert_close(s.betas.float(), ref.betas, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.alpha_bar.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-7)
    for t in (1, 10, 500, 999):
        var = ref._get_variance(t, variance_type="fixed_small")
        # diffusers recomputes beta_t = 1 - ab_t / ab_{t-1} in float32: cancellation costs ~3 digits at small t
        assert s.posterior_variance[t].item() == pytest.approx(var.item(), rel=1e-3)


def test_at_shapes_dtype_device(device):
    s = make_schedule("linear", T=100).to(device)
    assert s.betas.dtype == torch.float64 and s.device.type == device.type
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32, device=device)
    t = torch.tensor([0, 5, 99], device=device)
    v = s.at("alpha_bar", t, like=x)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float32 and v.device == x.device
    torch.testing.assert_close(v.flatten().double().cpu(), s.alpha_bar[t].cpu(), rtol=1e-6, atol=0)
    assert s.at("betas", 7, like=x).shape == (3, 1, 1, 1)
    assert s.at("betas", torch.tensor(7), like=x[:, 0, 0, 0]).shape == (3,)
    assert s.at("posterior_variance", t, like=x.double()).dtype == torch.float64


def test_noise_schedule_from_betas_frozen_and_repr():
    betas = torch.linspace(1e-3, 0.05, 10)
    s = NoiseSchedule(betas)
    assert s.name == "custom" and s.T == 10 and s.betas.dtype == torch.float64
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = betas
    assert "T=10" in repr(s)
    s1 = make_schedule("linear", T=1)
    assert bool(torch.isfinite(s1.posterior_log_variance_clipped).all())


def test_errors():
    with pytest.raises(ValueError, match="T must be a positive int, got 0"):
        make_schedule("linear", T=0)
    with pytest.raises(TypeError, match="T must be an int"):
        make_schedule("linear", T=10.0)
    with pytest.raises(ValueError, match="name must be one of 'linear', 'cosine', 'sigmoid'; got 'quadratic'"):
        make_schedule("quadratic", T=10)
    with pytest.raises(ValueError, match="0 < beta_start < beta_end < 1"):
        make_schedule("linear", T=10, beta_start=0.02, beta_end=0.01)
    with pytest.raises(ValueError, match="beta_start must be in"):
        linear_betas(10, beta_start=0.0)
    with pytest.raises(ValueError, match="beta_end must be in"):
        linear_betas(10, beta_end=1.0)
    with pytest.raises(ValueError, match="s must be in"):
        cosine_betas(10, s=-0.1)
    with pytest.raises(ValueError, match="max_beta must be in"):
        cosine_betas(10, max_beta=1.0)
    with pytest.raises(ValueError, match="start must be < end"):
        sigmoid_betas(10, start=1.0, end=-1.0)
    with pytest.raises(ValueError, match="tau must be in"):
        sigmoid_betas(10, tau=0.0)
    with pytest.raises(ValueError, match="clip_min must be in"):
        sigmoid_betas(10, clip_min=0.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        make_schedule("cosine", T=10, beta_end=0.1)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="betas must have 1 dimensions"):
        NoiseSchedule(torch.full((2, 2), 0.1))
    with pytest.raises(TypeError, match="betas must be a floating-point tensor"):
        NoiseSchedule(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="betas must have at least one entry"):
        NoiseSchedule(torch.zeros(0))
    with pytest.raises(TypeError, match="name must be a str"):
        NoiseSchedule(torch.tensor([0.1]), name=3)
    with pytest.raises(TypeError, match="betas must be a torch.Tensor"):
        alpha_bar([0.1, 0.2])
    with pytest.raises(TypeError, match="alpha_bar must be a torch.Tensor"):
        snr(0.5)


def test_at_errors():
    s = make_schedule("linear", T=10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="name must be one of"):
        s.at("sigma", torch.tensor([0, 1]), like=x)
    with pytest.raises(TypeError, match="t must be an int or an integer tensor"):
        s.at("betas", torch.tensor([0.0, 1.0]), like=x)
    with pytest.raises(TypeError, match="t must be an int or an integer tensor"):
        s.at("betas", 1.5, like=x)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        s.at("betas", torch.tensor([0, 1, 2]), like=x)
    with pytest.raises(ValueError, match="like must have a batch dimension"):
        s.at("betas", 0, like=torch.tensor(1.0))
    with pytest.raises(TypeError, match="like must be a torch.Tensor"):
        s.at("betas", 0, like=None)
