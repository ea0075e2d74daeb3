"""Closed-form oracles for score SDEs: Gaussian data under the VP, VE and sub-VP diffusions.

For data ``N(μ, Σ)`` the marginal at time ``t`` is ``N(scale μ, C_t)`` with ``C_t = scale² Σ + std² I``, so the
exact score is ``s(x, t) = -C_t⁻¹ (x - scale μ)``. In Σ's eigenbasis ``Σ = Q diag(λ) Qᵀ`` everything is
diagonal with eigenvalues ``c_t = scale² λ + std²``, and the probability-flow ODE is linear: the deviation from
the mean scales by ``sqrt(c_t / c_s)`` between two times. That gives the exact output of the ODE sampler for
every starting point and the exact log-density of the model (prior at ``t = 1`` included) — the tight oracles
below. The stochastic samplers are checked on moments, with errors that must shrink as the steps grow.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.generative import score_sde as S
from edifice.integrators import ADAPTIVE, sdeint
from edifice.schedules import make_sde

F64 = torch.float64
MU = torch.tensor([0.5, -1.0], dtype=F64)
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
EPS = {"vp": 1e-3, "subvp": 1e-3, "ve": 1e-5}


class GaussianScore:
    """Exact score of the marginal of ``N(mu, cov)`` under ``sde``; exposes ``.sde`` like a ScoreNet."""

    def __init__(self, sde, mu=MU, cov=COV):
        self.sde, self.mu = make_sde(sde), mu
        self.lam, self.q = torch.linalg.eigh(cov)
        self.calls = 0

    def c(self, t):
        return self.sde.scale(t)[:, None] ** 2 * self.lam + self.sde.std(t)[:, None] ** 2  # (B, D)

    def mean(self, t):
        return self.sde.scale(t)[:, None] * self.mu  # (B, D)

    def __call__(self, x, t):
        self.calls += 1
        r = (x - self.mean(t)) @ self.q  # (B, D) eigen-coordinates
        return -(r / self.c(t)) @ self.q.T

    def flow(self, x, s, t):
        """Exact probability-flow map from time s to time t (numbers) of points x (B, D)."""
        s_, t_ = torch.tensor([s], dtype=F64), torch.tensor([t], dtype=F64)
        y = ((x - self.mean(s_)) @ self.q) * (self.c(t_) / self.c(s_)).sqrt()
        return self.mean(t_) + y @ self.q.T

    def model_log_prob(self, x, eps):
        """Exact log-density at time eps of the model whose prior at t = 1 is the SDE's prior."""
        ratio = self.c(torch.ones(1, dtype=F64)) / self.c(torch.full((1,), eps, dtype=F64))
        return self.sde.prior_log_prob(self.flow(x, eps, 1.0)) + 0.5 * ratio.log().sum(-1)


def whitened(n, d=2, seed=0):
    """Noise with empirical mean exactly 0 and empirical covariance (1/n) exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T


def data(n, seed, mu=MU, cov=COV):
    z = torch.randn(n, mu.numel(), generator=torch.Generator().manual_seed(seed), dtype=F64)
    return mu + z @ torch.linalg.cholesky(cov).T


def moment_error(x, mu=MU, cov=COV):
    m = x.mean(0)
    c = (x - m).T @ (x - m) / x.shape[0]
    return max((m - mu).abs().max().item(), (c - cov).abs().max().item())


def close(a, b, atol):
    """Max-abs comparison (torch.testing.assert_close would import torch.distributed: seconds per process)."""
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


def mvn(x, m, c):
    return torch.distributions.MultivariateNormal(m, covariance_matrix=c).log_prob(x)


# --- stochastic samplers ------------------------------------------------------------------------------

SDE_SAMPLERS = {
    "em": dict(sampler="em"),
    "rd": dict(sampler="pc", corrector="none"),
    "rd+langevin": dict(sampler="pc"),
    "em+langevin": dict(sampler="pc", predictor="euler_maruyama"),
}


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("case", sorted(SDE_SAMPLERS))
def test_sde_samplers_recover_the_moments_and_improve_with_steps(name, case):
    f, n = GaussianScore(name), 20000
    errs = [moment_error(S.sample(f, (n, 2), steps=steps, eps=EPS[name], noise=whitened(n, seed=steps),
                                  generator=torch.Generator().manual_seed(steps), **SDE_SAMPLERS[case]))
            for steps in (8, 64)]
    # VE's reverse-diffusion predictor alone is first order with a large constant on a uniform t grid.
    tol = 0.2 if (name, case) == ("ve", "rd") else 0.07
    assert errs[1] < tol and errs[1] < errs[0] / 3, errs


def test_corrector_only_sampling_recovers_the_moments():
    # Langevin alone must relax to every marginal in turn: enough corrector steps per level do it (VP; VE's
    # 5000-fold range of scales needs far more levels than a fast test affords).
    f, n = GaussianScore("vp"), 5000
    kw = dict(predictor="none", steps=10, snr=0.2, noise=whitened(n))
    few = S.sample(f, (n, 2), corrector_steps=2, generator=torch.Generator().manual_seed(0), **kw)
    many = S.sample(f, (n, 2), corrector_steps=30, generator=torch.Generator().manual_seed(0), **kw)
    assert moment_error(many) < 0.07 and moment_error(few) > 0.2


def test_denoise_is_tweedie_and_matches_the_exact_posterior_mean_covariance():
    # ODE to eps then Tweedie: the output covariance is Cov(E[x0 | x_eps]) = Σ - (Σ⁻¹ + scale²/std² I)⁻¹, which
    # a large eps makes visible.
    f, n, eps = GaussianScore("vp"), 2000, 0.2
    noise = whitened(n)
    x = S.sample(f, (n, 2), sampler="ode", method="rk4", steps=20, eps=eps, noise=noise)
    t = torch.tensor([eps], dtype=F64)
    scale, std = f.sde.scale(t), f.sde.std(t)
    x_eps = f.flow(noise, 1.0, eps)
    close(x, (x_eps + std**2 * f(x_eps, t.expand(n))) / scale, 1e-5)
    m, c = x.mean(0), (x - x.mean(0)).T @ (x - x.mean(0)) / n
    post = torch.linalg.inv(torch.linalg.inv(COV) + (scale / std) ** 2 * torch.eye(2, dtype=F64))
    c1 = f.c(torch.ones(1, dtype=F64))[0]  # the prior N(0, I) is not exactly the marginal at t = 1
    assert (m - MU).abs().max() < 0.01 and (c - (COV - post)).abs().max() < 0.01 + (c1 - 1).abs().max()


# --- probability-flow ODE -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_ode_sampler_lands_on_the_exact_flow_map(name):
    f, n, eps = GaussianScore(name), 256, EPS[name]
    noise = whitened(n, seed=1)
    x1 = noise * f.sde.prior_std()
    exact = f.flow(x1, 1.0, eps)
    t = torch.full((n,), eps, dtype=F64)
    exact_denoised = S.denoise_step(f.sde, exact, t, f(exact, t))
    for method, steps, tol in (("rk4", 64, 1e-4), ("dopri5", 1, 1e-5)):  # dopri5 probes t < eps: clamped
        x = S.sample(f, (n, 2), sampler="ode", method=method, steps=steps, eps=eps, noise=noise, rtol=1e-8,
                     atol=1e-8)
        assert (x - exact_denoised).abs().max().item() < tol, (method, name)
    assert moment_error(exact_denoised) < 0.02  # the limit is the data law (prior mismatch and eps aside)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_ode_sampler_runs_every_adaptive_method(method):
    f, n = GaussianScore("vp"), 16
    noise = whitened(n, seed=3)
    x = S.sample(f, (n, 2), sampler="ode", method=method, steps=1, noise=noise, denoise=False, rtol=1e-6, atol=1e-6)
    assert (x - f.flow(noise, 1.0, 1e-3)).abs().max().item() < 1e-3  # loose: low-order pairs


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_ode_sampler_error_falls_at_the_method_order(method, order):
    f, n = GaussianScore("vp"), 64
    noise = whitened(n, seed=2)
    exact = f.flow(noise, 1.0, 1e-3)
    errs = [(S.sample(f, (n, 2), sampler="ode", method=method, steps=k, noise=noise, denoise=False) - exact)
            .abs().max().item() for k in (16, 32, 64)]
    assert errs[0] > errs[1] > errs[2]
    assert math.log2(errs[1] / errs[2]) > order - 0.3, errs


# --- likelihood -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_log_prob_equals_the_exact_model_density(name):
    f, eps = GaussianScore(name), 1e-5
    x = data(16, seed=3)
    exact = f.model_log_prob(x, eps)
    lp = S.log_prob(f, x, eps=eps, method="rk4", steps=40)
    assert lp.shape == (16,) and lp.dtype == F64
    assert (lp - exact).abs().max().item() < 5e-4
    lp5 = S.log_prob(f, x, eps=eps, method="dopri5", steps=1, rtol=1e-8, atol=1e-8)
    assert (lp5 - exact).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_log_prob_equals_the_data_density(name):
    # With μ = 0 the prior N(0, I) is the t = 1 marginal up to O(scale(1)²), and eps = 1e-5 leaves O(std(eps)²).
    mu = torch.zeros(2, dtype=F64)
    f = GaussianScore(name, mu=mu)
    x = data(32, seed=4, mu=mu)
    lp = S.log_prob(f, x, eps=1e-5, method="rk4", steps=50)
    assert (lp - mvn(x, mu, COV)).abs().max().item() < 1e-3
    t = torch.full((1,), 1e-5, dtype=F64)  # and, closer still, the density of the marginal at eps
    marginal = mvn(x, mu, f.sde.scale(t) ** 2 * COV + f.sde.std(t) ** 2 * torch.eye(2, dtype=F64))
    assert (lp - marginal).abs().max().item() < 3e-4


def test_log_prob_round_trips_the_ode_sampler():
    # log p(sample) = log N(noise) - log|det ∂x/∂x_1| for the deterministic sampler (no denoising step).
    f, n = GaussianScore("subvp"), 16
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    x = S.sample(f, (n, 2), sampler="ode", steps=50, eps=1e-3, noise=noise, denoise=False)
    lp = S.log_prob(f, x, eps=1e-3, steps=50)
    ratio = f.c(torch.ones(1, dtype=F64)) / f.c(torch.full((1,), 1e-3, dtype=F64))
    close(lp, f.sde.prior_log_prob(noise) + 0.5 * ratio.log().sum(-1), 1e-5)


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_hutchinson_log_prob_is_unbiased(dist):
    f, n = GaussianScore("vp"), 2000
    x = MU.expand(n, 2).clone()  # one point, 2000 independent probe draws
    exact = f.model_log_prob(MU[None], 1e-5).item()
    est = S.log_prob(f, x, eps=1e-5, steps=10, divergence="hutchinson", dist=dist,
                     generator=torch.Generator().manual_seed(6))
    se = est.std().item() / math.sqrt(n)
    assert est.std().item() > 0.05  # really stochastic: the PF Jacobian is not diagonal
    # steps=10 rk4 discretisation error is far below the standard error
    assert abs(est.mean().item() - exact) < 3 * se
    seeds = [S.log_prob(f, MU.expand(200, 2).clone(), eps=1e-5, steps=10, divergence="hutchinson", dist=dist,
                        generator=torch.Generator().manual_seed(s)).mean().item() for s in range(5)]
    assert len(set(seeds)) == 5 and abs(sum(seeds) / 5 - exact) < 3 * est.std().item() / math.sqrt(1000)


# --- loss -----------------------------------------------------------------------------------------------


def _irreducible(f, t, weighting):
    """E over data and noise of the per-sample DSM loss at the exact score, at a fixed time t."""
    tt = torch.tensor([t], dtype=F64)
    std2 = f.sde.std(tt).item() ** 2
    var = (1.0 - std2 / f.c(tt)[0]).sum().item()  # E‖std s* + z‖² = tr(I - std² C⁻¹)
    if weighting == "variance":
        return var
    return var / std2 * (f.sde.diffusion(tt).item() ** 2 if weighting == "likelihood" else 1.0)


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("weighting", ["variance", "likelihood", "none"])
def test_loss_at_the_exact_score_is_the_irreducible_minimum(name, weighting):
    f, n, t = GaussianScore(name), 100000, 0.3
    x = data(n, seed=7)

    def value(score):
        return S.loss(score, x, sde=name, weighting=weighting, t=t,
                      generator=torch.Generator().manual_seed(8))[0].item()

    best = value(f)
    target = _irreducible(f, t, weighting)
    assert abs(best - target) < 0.02 * target
    for perturbed in (lambda x, t: f(x, t) + 0.05, lambda x, t: 1.1 * f(x, t), lambda x, t: f(x + 0.05, t)):
        assert value(perturbed) > best


# --- SDE marginals, kernels and step functions -----------------------------------------------------------


@given(name=st.sampled_from(["vp", "ve", "subvp"]), t=st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=8))
def test_std_is_increasing_in_time(name, t):
    sde = make_sde(name)
    t = torch.tensor(sorted(t), dtype=F64)
    std = sde.std(t)
    assert bool((std[1:] >= std[:-1]).all()) and bool((std > 0).all())


@given(t=st.floats(1e-4, 1.0), beta_max=st.floats(1.0, 30.0))
def test_subvp_std_is_below_vp_std(t, beta_max):
    tt = torch.tensor([t], dtype=F64)
    vp, sub = make_sde("vp", beta_max=beta_max), make_sde("subvp", beta_max=beta_max)
    assert sub.std(tt).item() <= vp.std(tt).item() + 1e-15
    assert sub.scale(tt).item() == vp.scale(tt).item()


@given(name=st.sampled_from(["vp", "ve", "subvp"]), s=st.floats(0.0, 1.0), u=st.floats(0.0, 1.0))
def test_transition_composes_the_perturbation_kernels(name, s, u):
    sde = make_sde(name)
    lo, hi = sorted((s, u))
    t_next, t = torch.tensor([lo], dtype=F64), torch.tensor([hi], dtype=F64)
    a, g = S.transition(sde, t, t_next, torch.zeros(1, 2, dtype=F64))
    close(a * sde.scale(t_next), sde.scale(t), 1e-12)  # mean: scale(t) x0
    close((a * sde.std(t_next)) ** 2 + g**2, sde.std(t) ** 2, 1e-12 * (1 + sde.std(t).item() ** 2))
    assert bool((g >= 0).all()) and bool((a <= 1 + 1e-12).all())


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_kernels_match_a_simulation_of_the_forward_sde(name):
    sde, n = make_sde(name), 8000
    x0 = torch.tensor([[1.5, -0.5]], dtype=F64).expand(n, 2)
    for t0, t1 in ((0.0, 0.5), (0.3, 0.9)):
        ts = torch.linspace(t0, t1, 301, dtype=F64)
        x = sdeint(lambda t, x: sde.drift(x, t.expand(n)), lambda t, x: sde.diffusion(t.expand(n)), x0, ts,
                   generator=torch.Generator().manual_seed(9))
        a, g = S.transition(sde, torch.tensor([t1], dtype=F64), torch.tensor([t0], dtype=F64), x0[:1])
        if t0 == 0.0 and name == "ve":  # the VE kernel std σ(t) counts σ_min at t = 0, the SDE from 0 does not
            g = (g**2 - sde.sigma_min**2).sqrt()
        close(x.mean(0), a * x0[0], 4 * g.item() / math.sqrt(n) + 2e-3)
        close(x.std(0), g.expand(2), 4 * g.item() / math.sqrt(2 * n) + 2e-3 * g.item())
