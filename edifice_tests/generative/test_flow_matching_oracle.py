"""Closed-form oracles for flow matching: a Gaussian -> Gaussian marginal velocity field.

With ``x0 ~ N(0, I)``, ``x1 ~ N(m, Σ)``, the independent coupling and ``σ_min = 0``, the marginal
path is ``x_t ~ N(t m, C_t)`` with ``C_t = (1 - t)² I + t² Σ`` and the marginal velocity is

    u(x, t) = E[x1 - x0 | x_t = x] = m + (t Σ - (1 - t) I) C_t⁻¹ (x - t m).

All matrices commute, so the flow map is linear: ``x(1) = m + Σ^{1/2} x(0)`` exactly. Driving
``sample`` with this field must therefore push (whitened) noise onto the exact target mean and
covariance, and ``log_prob`` must return ``log N(x; m, Σ)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from edifice.generative import flow_matching as fm

FIXED = ("euler", "midpoint", "heun", "rk4")


class GaussianVelocity:
    """Exact marginal velocity from N(0, I) to N(m, Σ), evaluated in Σ's eigenbasis Σ = Q diag(λ) Qᵀ."""

    def __init__(self, m: torch.Tensor, cov: torch.Tensor):
        self.m = m
        self.lam, self.q = torch.linalg.eigh(cov)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], self.m.numel())  # (B, D)
        t = t.to(x.dtype)[:, None]  # (B, 1)
        coef = (t * self.lam - (1 - t)) / ((1 - t) ** 2 + t**2 * self.lam)  # (B, D) eigenvalues of A_t
        r = (flat - t * self.m) @ self.q  # (B, D) in the eigenbasis
        return (self.m + (coef * r) @ self.q.T).reshape(x.shape)


def isotropic(m, s):
    m = torch.as_tensor(m, dtype=torch.float64)
    return GaussianVelocity(m, s**2 * torch.eye(m.numel(), dtype=torch.float64))


def whitened_noise(n, d, seed=0):
    """Noise whose empirical mean is exactly 0 and empirical covariance (1/n) exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T  # (n, d)


M, S = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), 0.5


def _moments_error(x, m, cov):
    n = x.shape[0]
    mean = x.mean(0)
    emp = (x - mean).T @ (x - mean) / n
    return (mean - m).abs().max().item(), (emp - cov).abs().max().item()


@pytest.mark.parametrize("method,steps,tol", [
    ("euler", 100, 3e-2), ("midpoint", 20, 1e-3), ("heun", 20, 1e-3), ("rk4", 10, 1e-5), ("dopri5", 1, 1e-5),
])
def test_sample_reaches_exact_target_moments(method, steps, tol):
    field = isotropic(M, S)
    noise = whitened_noise(512, 3)
    x = fm.sample(field, (512, 3), steps=steps, method=method, noise=noise, rtol=1e-7, atol=1e-7)
    assert x.dtype == torch.float64
    mean_err, cov_err = _moments_error(x, M, S**2 * torch.eye(3, dtype=torch.float64))
    assert mean_err < tol and cov_err < tol
    # The flow map is linear: every sample lands on m + s x0.
    assert (x - (M + S * noise)).abs().max().item() < 10 * tol


def test_sample_full_covariance_target():
    m = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.8], [0.8, 0.6]], dtype=torch.float64)
    noise = whitened_noise(256, 2, seed=1)
    for method, steps, tol in (("rk4", 10, 1e-4), ("dopri5", 1, 1e-5)):
        x = fm.sample(GaussianVelocity(m, cov), (256, 2), steps=steps, method=method, noise=noise,
                      rtol=1e-7, atol=1e-7)
        mean_err, cov_err = _moments_error(x, m, cov)
        assert mean_err < tol and cov_err < tol, (method, mean_err, cov_err)


@pytest.mark.parametrize("method", FIXED)
def test_sample_error_falls_with_steps(method):
    # s = 2 keeps every method in its asymptotic regime from 4 steps on (with s = 0.5, rk4's error is
    # already ~1e-7 at 8 steps and stalls once before falling again).
    noise = whitened_noise(64, 3, seed=2)
    exact = M + 2.0 * noise
    errs = [(fm.sample(isotropic(M, 2.0), (64, 3), steps=n, method=method, noise=noise) - exact).abs().max().item()
            for n in (4, 8, 16, 32)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    order = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
    slope = math.log2(errs[-2] / errs[-1])
    assert slope > order - 0.4, (errs, slope)


def _log_normal(x, m, cov):
    return torch.distributions.MultivariateNormal(m, covariance_matrix=cov).log_prob(x)


def test_log_prob_matches_analytic_isotropic():
    x = M + S * torch.randn(64, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    lp = fm.log_prob(isotropic(M, S), x, steps=20, method="rk4", divergence="exact")
    exact = _log_normal(x, M, S**2 * torch.eye(3, dtype=torch.float64))
    assert lp.shape == (64,) and lp.dtype == torch.float64
    assert (lp - exact).abs().max().item() < 1e-4


def test_log_prob_matches_analytic_full_covariance_2d():
    m = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.8], [0.8, 0.6]], dtype=torch.float64)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = m + z @ torch.linalg.cholesky(cov).T
    lp = fm.log_prob(GaussianVelocity(m, cov), x, steps=20, method="rk4")
    assert (lp - _log_normal(x, m, cov)).abs().max().item() < 1e-4
    # dopri5 on the augmented state agrees as well.
    lp5 = fm.log_prob(GaussianVelocity(m, cov), x, method="dopri5", rtol=1e-7, atol=1e-7)
    assert (lp5 - _log_normal(x, m, cov)).abs().max().item() < 1e-5


def test_log_prob_hutchinson():
    # An isotropic linear field has Jacobian c(t) I: a Rademacher probe gives its trace exactly.
    x = M + S * torch.randn(16, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    lp = fm.log_prob(isotropic(M, S), x, steps=20, divergence="hutchinson", generator=g)
    assert (lp - _log_normal(x, M, S**2 * torch.eye(3, dtype=torch.float64))).abs().max().item() < 1e-4
    # With a full covariance one probe is noisy but unbiased: average the estimates of many rows at one point.
    m = torch.tensor([0.5, -1.0], dtype=torch.float64)
    cov = torch.tensor([[2.0, 0.8], [0.8, 0.6]], dtype=torch.float64)
    x2 = m.expand(2000, 2).clone()
    est = fm.log_prob(GaussianVelocity(m, cov), x2, steps=10, divergence="hutchinson", generator=g)
    exact = _log_normal(m[None], m, cov)
    assert est.std().item() > 0.1  # really stochastic
    assert abs(est.mean().item() - exact.item()) < 4 * est.std().item() / 2000**0.5


def test_log_prob_on_image_shaped_data():
    # The isotropic field is shape-agnostic: data (1, 2, 2) is a 4-D Gaussian.
    m = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64)
    field = isotropic(m, 1.5)
    x = (m + 1.5 * torch.randn(8, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    lp = fm.log_prob(field, x.reshape(8, 1, 2, 2), steps=20)
    assert (lp - _log_normal(x, m, 2.25 * torch.eye(4, dtype=torch.float64))).abs().max().item() < 1e-4
    noise = whitened_noise(8, 4).reshape(8, 1, 2, 2)
    out = fm.sample(field, (8, 1, 2, 2), steps=10, method="rk4", noise=noise)
    assert out.shape == (8, 1, 2, 2)
    assert (out - (m.reshape(1, 2, 2) + 1.5 * noise)).abs().max().item() < 1e-5


def test_sample_then_log_prob_round_trip():
    # log_prob's backward solve of a sample recovers the noise: log p(x) = log N(x0) - log|det ∂x/∂x0|.
    field = isotropic(M, S)
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x = fm.sample(field, (16, 3), steps=20, method="rk4", noise=noise)
    lp = fm.log_prob(field, x, steps=20)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(noise).sum(1) - 3 * math.log(S)
    assert (lp - expected).abs().max().item() < 1e-4
