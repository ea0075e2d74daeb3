"""Continuous SDEs and sigma ladders of ``edifice.schedules``, and the Langevin step functions.

The score-SDE family's oracle tests check the kernels against simulation; here: closed forms, the
reference discretisations, ladders, and errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.integrators import langevin_step, langevin_step_size
from edifice.schedules import SDES, SubVPSDE, VESDE, VPSDE, geometric_sigmas, karras_sigmas, make_sde

T64 = dict(dtype=torch.float64)


@given(st.floats(0.0, 1.0))
def test_vp_kernel_closed_form(t):
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    tt = torch.tensor([t], **T64)
    integral = 0.1 * t + 0.5 * t * t * (20.0 - 0.1)  # ∫_0^t β
    assert math.isclose(float(sde.scale(tt)), math.exp(-0.5 * integral), rel_tol=1e-12)
    assert math.isclose(float(sde.std(tt)), math.sqrt(1 - math.exp(-integral)), rel_tol=1e-9, abs_tol=1e-12)
    sub = SubVPSDE()
    assert float(sub.std(tt)) <= float(sde.std(tt)) + 1e-15  # sub-VP's variance is below VP's
    assert math.isclose(float(sub.std(tt)), 1 - math.exp(-integral), rel_tol=1e-9, abs_tol=1e-12)


@given(st.floats(0.0, 1.0))
def test_ve_kernel_and_diffusion(t):
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    tt = torch.tensor([t], **T64)
    sigma = 0.01 * 5000.0 ** t
    assert math.isclose(float(sde.std(tt)), sigma, rel_tol=1e-12)
    # g² = d σ² / dt for VE
    assert math.isclose(float(sde.diffusion(tt)) ** 2, 2 * sigma**2 * math.log(5000.0), rel_tol=1e-12)


def test_vp_variance_obeys_its_ode():
    # d std²/dt = β (1 - std²) for VP (Song et al. eq. 30 with the linear drift).
    sde, h = VPSDE(), 1e-6
    t = torch.linspace(0.05, 0.95, 7, **T64)
    lhs = (sde.std(t + h).square() - sde.std(t - h).square()) / (2 * h)
    torch.testing.assert_close(lhs, sde.beta(t) * (1 - sde.std(t).square()), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SDES))
def test_prior_log_prob_is_the_normal_density(name):
    sde = make_sde(name)
    z = sde.prior_sample((5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(z), ref)


def test_discretisations_follow_the_reference_levels():
    x = torch.ones(3, 2, **T64)
    N = 1000
    t = torch.tensor([0.0, 0.5, 1.0], **T64)
    f, g = VPSDE().discretize(x, t, N)
    i = torch.floor(t * (N - 1))
    beta = (0.1 + i * (20.0 - 0.1) / (N - 1)) / N
    torch.testing.assert_close(g, beta.sqrt())
    torch.testing.assert_close(f, ((1 - beta).sqrt() - 1)[:, None] * x)
    f, g = VESDE().discretize(x, t, N)
    sig = 0.01 * 5000.0 ** (i / (N - 1))
    prev = torch.where(i > 0, 0.01 * 5000.0 ** ((i - 1) / (N - 1)), torch.zeros_like(i))
    torch.testing.assert_close(g, (sig**2 - prev**2).sqrt())
    assert torch.equal(f, torch.zeros_like(x))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="sde"):
        make_sde("vpp")
    with pytest.raises(ValueError, match="beta_min must be < beta_max"):
        VPSDE(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=1.0)
    with pytest.raises(TypeError, match="sigma_max"):
        make_sde("vp", sigma_max=3.0)
    with pytest.raises(ValueError, match="N must exceed beta_max"):
        VPSDE().discretize(torch.zeros(1, 2), torch.zeros(1), 10)
    with pytest.raises(ValueError, match=r"t must lie in \[0.001, 1\]"):
        VPSDE().check_time(torch.tensor([0.0, 0.5]), torch.zeros(2, 2), eps=1e-3)
    with pytest.raises(ValueError, match="n must be"):
        karras_sigmas(0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        geometric_sigmas(4, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="rho"):
        karras_sigmas(4, rho=0.0)


@given(st.integers(2, 60), st.floats(1.0, 20.0))
def test_karras_ladder(n, rho):
    s = karras_sigmas(n, sigma_min=0.002, sigma_max=80.0, rho=rho)
    assert s.shape == (n + 1,) and float(s[-1]) == 0.0
    assert math.isclose(float(s[0]), 80.0, rel_tol=1e-12) and math.isclose(float(s[-2]), 0.002, rel_tol=1e-9)
    assert bool((s[:-1] > s[1:]).all())
    # evenly spaced in σ^(1/ρ)
    d = s[:-1] ** (1 / rho)
    torch.testing.assert_close(d[1:] - d[:-1], torch.full((n - 1,), float(d[1] - d[0]), **T64))


@given(st.integers(2, 40))
def test_geometric_ladder_has_a_constant_ratio(n):
    s = geometric_sigmas(n, sigma_min=0.01, sigma_max=1.0)
    ratio = s[1:] / s[:-1]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.01 ** (1 / (n - 1))))


def test_langevin_step_and_step_size():
    g = torch.Generator().manual_seed(0)
    x, s, z = (torch.randn(8, 2, generator=g, **T64) for _ in range(3))
    eps = langevin_step_size(s, z, 0.16)
    ratio = z.norm(dim=1).mean() / s.norm(dim=1).mean()  # batch-mean norms, as in Song et al.'s code
    torch.testing.assert_close(eps, 2 * (0.16 * ratio) ** 2)
    torch.testing.assert_close(langevin_step(x, s, eps, z), x + eps * s + (2 * eps).sqrt() * z)
    alpha = torch.linspace(0.5, 1.0, 8, **T64)
    assert langevin_step_size(s, z, 0.16, alpha=alpha).shape == (8,)
    zero = langevin_step_size(torch.zeros_like(s), z, 0.16)  # a zero score: no step, not NaN
    assert float(zero) == 0.0
