"""Score matching and NCE for energy-based models against float64 closed forms, and a moons fit.

Closed forms used (``E(x) = ‖x - μ‖²/(2 s²)``, score ``-(x - μ)/s²``, Jacobian of the score ``-I/s²``):

- DSM on data ``x = μ + τ z`` with ``x̃ = x + σ ε``: ``½‖σ s(x̃) + ε‖² = ½‖-σ τ z/s² + (1 - σ²/s²) ε‖²``. When the
  stacked ``(z, ε)`` sample is *whitened* (empirical covariance exactly I) the empirical loss equals its
  expectation ``D/2 (σ² τ²/s⁴ + (1 - σ²/s²)²)``, minimised exactly at ``s² = τ² + σ²`` (the smoothed data).
- Explicit score matching ``E[tr ∇s + ½‖s‖²] = -D/s² + D τ²/(2 s⁴)``, minimised at ``s² = τ²``; sliced score
  matching with the directions ``√D e_i`` (``(1/D) Σ v vᵀ = I`` exactly) reproduces it sample by sample.
- NCE at the true density and its true ``log Z`` has zero population gradient in ``log Z``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from edifice.data import toy2d
from edifice.generative import ebm_losses as L
from edifice.metrics import w2

F64 = torch.float64


class GaussEnergy(nn.Module):
    """E(x) = ‖x - μ‖²/(2 s²) with learnable μ and log s (its normaliser is log Z = D/2 log(2π s²))."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=F64).clone())
        self.log_s = nn.Parameter(torch.tensor(math.log(s), dtype=F64))

    def forward(self, x):
        return (x - self.mu).flatten(1).pow(2).sum(1) / (2 * torch.exp(2 * self.log_s))


def mlp_energy(d=2, hidden=16, seed=0, dtype=F64):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    net = net.to(dtype)
    return lambda x: net(x.flatten(1)).squeeze(-1), net


def whitened(n, d, seed=0):
    """(n, d) float64 points with empirical mean 0 and empirical covariance (1/n) exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T


def exact_sm(energy, x):
    """Hyvärinen's objective per sample: tr ∇s + ½‖s‖² = -tr ∇²E + ½‖∇E‖² (exact Hessian)."""
    out = []
    for xi in x:
        hess = torch.autograd.functional.hessian(lambda u: energy(u[None])[0], xi)
        grad = torch.autograd.functional.jacobian(lambda u: energy(u[None])[0], xi)
        out.append(-torch.trace(hess) + 0.5 * grad.pow(2).sum())
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------- score


@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_score_of_quadratic_is_linear(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    a = a @ a.T + torch.eye(d, dtype=F64)
    x = torch.randn(b, d, generator=g, dtype=F64)
    energy = lambda u: 0.5 * torch.einsum("bi,ij,bj->b", u, a, u)
    with torch.no_grad():  # samplers call it under no_grad
        s = L.score_of(energy, x, create_graph=False)
    torch.testing.assert_close(s, -x @ a, rtol=1e-12, atol=1e-12)
    assert not s.requires_grad


def test_score_of_create_graph_reaches_parameters_and_images():
    energy = GaussEnergy([0.0], 1.0)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    s = L.score_of(energy, x, create_graph=True)
    assert s.shape == x.shape
    s.sum().backward()
    assert energy.log_s.grad is not None and energy.mu.grad is not None


def test_score_of_passes_cond():
    energy = lambda x, y: (x - y[:, None]).pow(2).sum(1) / 2
    x, y = torch.zeros(2, 3, dtype=F64), torch.tensor([1.0, -2.0], dtype=F64)
    s = L.score_of(energy, x, create_graph=False, cond={"y": y})
    torch.testing.assert_close(s, y[:, None].expand(2, 3))


# ------------------------------------------------------------------------------------------------------ DSM


@given(st.integers(1, 6), st.integers(1, 3), st.floats(0.01, 2.0), st.integers(0, 2**16))
def test_dsm_matches_definition(b, d, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    energy, _ = mlp_energy(d, seed=seed % 7)
    x = torch.randn(b, d, generator=g, dtype=F64)
    eps = torch.randn(b, d, generator=g, dtype=F64)
    loss, logs = L.dsm_loss(energy, x, sigma=sigma, noise=eps)
    xt = x + sigma * eps
    s = L.score_of(energy, xt, create_graph=False)
    want = (sigma**2 / 2 * (s + (xt - x) / sigma**2).pow(2).sum(1)).mean()
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logs["loss"], want, rtol=1e-10, atol=1e-12)
    assert not logs["loss"].requires_grad


def test_dsm_zero_for_exact_kernel_score():
    x0 = torch.tensor([0.3, -1.0], dtype=F64)
    sigma = 0.4
    energy = GaussEnergy(x0, sigma)  # score of q_σ(· | x0) exactly
    loss, _ = L.dsm_loss(energy, x0.expand(5, 2), sigma=sigma, generator=torch.Generator().manual_seed(1))
    assert float(loss.detach()) < 1e-24


def dsm_whitened_loss(energy, tau, sigma, mu, n=400, d=2):
    ze = whitened(n, 2 * d, seed=3)
    z, eps = ze[:, :d], ze[:, d:]
    return L.dsm_loss(energy, mu + tau * z, sigma=sigma, noise=eps)[0]


@pytest.mark.parametrize("tau,sigma", [(1.0, 0.1), (0.5, 0.5), (2.0, 1.0)])
def test_dsm_gaussian_minimiser_is_smoothed_variance(tau, sigma):
    mu = torch.tensor([1.0, -0.5], dtype=F64)
    s_star = math.sqrt(tau**2 + sigma**2)
    # closed form of the (whitened) empirical loss
    energy = GaussEnergy(mu, 0.7 * s_star)
    s = 0.7 * s_star
    closed = 2 / 2 * (sigma**2 * tau**2 / s**4 + (1 - sigma**2 / s**2) ** 2)
    torch.testing.assert_close(dsm_whitened_loss(energy, tau, sigma, mu), torch.tensor(closed, dtype=F64))
    # zero gradient at s² = τ² + σ² (in μ and log s)
    energy = GaussEnergy(mu, s_star)
    dsm_whitened_loss(energy, tau, sigma, mu).backward()
    assert abs(float(energy.log_s.grad)) < 1e-10 and float(energy.mu.grad.abs().max()) < 1e-10
    # and the minimum over a grid of s sits at the grid point nearest s_star
    grid = s_star * torch.linspace(0.5, 1.5, 21, dtype=F64)
    with torch.no_grad():
        losses = [float(dsm_whitened_loss(GaussEnergy(mu, float(si)), tau, sigma, mu)) for si in grid]
    assert int(torch.tensor(losses).argmin()) == 10


# ------------------------------------------------------------------------------------------------------ SSM


@given(st.integers(1, 4), st.booleans(), st.integers(0, 2**16))
def test_ssm_with_basis_directions_is_explicit_score_matching(b, vr, seed):
    d = 2
    energy, _ = mlp_energy(d, seed=seed % 5)
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    v = math.sqrt(d) * torch.eye(d, dtype=F64)[:, None, :].expand(d, b, d)  # (P=D, B, D): (1/D) Σ v vᵀ = I
    loss, logs = L.ssm_loss(energy, x, projections=v, variance_reduction=vr)
    torch.testing.assert_close(loss, exact_sm(energy, x).mean(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("projection", ["gaussian", "rademacher"])
@pytest.mark.parametrize("vr", [True, False])
def test_ssm_monte_carlo_expectation_is_explicit_score_matching(projection, vr):
    energy, _ = mlp_energy(2, seed=1)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    g = torch.Generator().manual_seed(2)
    losses = torch.stack([L.ssm_loss(energy, x, n_projections=500, projection=projection, variance_reduction=vr,
                                     generator=g)[0].detach() for _ in range(4)])
    exact = exact_sm(energy, x).mean()
    se = losses.std() / 2 + 1e-3
    assert abs(float(losses.mean() - exact)) < 5 * float(se) + 0.05 * abs(float(exact))


def test_ssm_gaussian_minimiser_is_data_variance():
    mu, tau = torch.tensor([0.5, -1.0], dtype=F64), 0.8
    x = mu + tau * whitened(200, 2, seed=4)
    v = math.sqrt(2) * torch.eye(2, dtype=F64)[:, None, :].expand(2, 200, 2)
    energy = GaussEnergy(mu, tau)
    loss, logs = L.ssm_loss(energy, x, projections=v)
    torch.testing.assert_close(loss, torch.tensor(-2 / tau**2 + 2 * tau**2 / (2 * tau**4), dtype=F64))
    torch.testing.assert_close(logs["trace"], torch.tensor(-2 / tau**2, dtype=F64))
    loss.backward()
    assert abs(float(energy.log_s.grad)) < 1e-10


def test_ssm_images_and_cond_tiling():
    energy = lambda x, y: (x.flatten(1) - y[:, None]).pow(2).sum(1) / 2  # score -(x - y), tr ∇s = -D
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    loss, logs = L.ssm_loss(energy, x, n_projections=4, projection="rademacher", cond={"y": y},
                            generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logs["trace"], torch.tensor(-4.0, dtype=F64))  # Rademacher: vᵀ(-I)v = -D exactly
    torch.testing.assert_close(logs["score_sq"], 0.5 * (x.flatten(1) - y[:, None]).pow(2).sum(1).mean())


# ------------------------------------------------------------------------------------------------------ NCE


def test_nce_gradient_vanishes_in_log_z_at_truth():
    mu, tau, d = torch.tensor([1.0, -1.0], dtype=F64), 0.7, 2
    x = mu + tau * torch.randn(20000, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    energy = GaussEnergy(mu, tau)
    true_log_z = d / 2 * math.log(2 * math.pi * tau**2)

    def grad_at(lz, nu=1):
        log_z = torch.tensor(lz, dtype=F64, requires_grad=True)
        loss, logs = L.nce_loss(energy, x, log_z=log_z, noise_ratio=nu, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad(loss, log_z)
        return float(grad), logs

    for nu in (1, 3):
        g0, logs = grad_at(true_log_z, nu)
        assert abs(g0) < 0.02
        assert grad_at(true_log_z - 1.0, nu)[0] < -0.1 and grad_at(true_log_z + 1.0, nu)[0] > 0.1
    # the NCE estimate of log Z (1-D minimisation over log_z) recovers the normaliser
    grid = torch.linspace(true_log_z - 0.5, true_log_z + 0.5, 41, dtype=F64)
    with torch.no_grad():
        vals = [float(L.nce_loss(energy, x, log_z=float(c), generator=torch.Generator().manual_seed(1))[0])
                for c in grid]
    assert abs(float(grid[int(torch.tensor(vals).argmin())]) - true_log_z) < 0.06


def test_nce_matches_definition_and_uses_energy_log_z():
    energy, net = mlp_energy(2, seed=0)
    module = nn.Module()
    module.net = net
    module.log_z = nn.Parameter(torch.tensor(0.3, dtype=F64))
    module.forward = energy
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    eps = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    loss, logs = L.nce_loss(module, x, noise=eps, noise_ratio=2)
    m = x.mean(0)
    sd = float((x - m).pow(2).mean().sqrt())
    y = m + sd * eps
    q = torch.distributions.Normal(m, sd)
    g_data = -energy(x) - 0.3 - q.log_prob(x).sum(1) - math.log(2)
    g_noise = -energy(y) - 0.3 - q.log_prob(y).sum(1) - math.log(2)
    want = -torch.nn.functional.logsigmoid(g_data).mean() - 2 * torch.nn.functional.logsigmoid(-g_noise).mean()
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    assert float(logs["log_z"]) == pytest.approx(0.3)
    loss.backward()
    assert module.log_z.grad is not None
    assert 0.0 <= float(logs["accuracy"]) <= 1.0


def test_nce_noise_std_and_log_z_default_zero():
    energy = lambda x: x.flatten(1).pow(2).sum(1) / 2
    x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    loss, logs = L.nce_loss(energy, x, noise_std=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and float(logs["log_z"]) == 0.0


# ---------------------------------------------------------------------------------------- seeds and errors


@pytest.mark.parametrize("fn", [L.dsm_loss, L.ssm_loss, L.nce_loss])
def test_same_seed_same_loss(fn):
    energy, _ = mlp_energy(2, seed=0)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = fn(energy, x, generator=torch.Generator().manual_seed(5))[0]
    b = fn(energy, x, generator=torch.Generator().manual_seed(5))[0]
    c = fn(energy, x, generator=torch.Generator().manual_seed(6))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_errors():
    energy, _ = mlp_energy(2, seed=0)
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(TypeError, match="energy must be callable"):
        L.dsm_loss(3, x)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        L.ssm_loss(energy, [[0.0, 1.0]])
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        L.nce_loss(energy, torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be a batch .* got shape \(2,\)"):
        L.score_of(energy, torch.ones(2, dtype=F64), create_graph=False)
    with pytest.raises(TypeError, match="create_graph must be a bool, got int"):
        L.score_of(energy, x, create_graph=1)
    with pytest.raises(ValueError, match=r"energy must return a tensor of shape \(4,\).*got \(4, 1\)"):
        L.score_of(lambda u: u[:, :1], x, create_graph=False)
    with pytest.raises(TypeError, match="cond must be a mapping"):
        L.dsm_loss(energy, x, cond=[1])
    with pytest.raises(ValueError, match=r"sigma must be in \(0.0, inf\], got 0.0"):
        L.dsm_loss(energy, x, sigma=0.0)
    with pytest.raises(ValueError, match=r"noise must have shape \(4, 2\), got \(4, 3\)"):
        L.dsm_loss(energy, x, noise=torch.zeros(4, 3, dtype=F64))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        L.dsm_loss(energy, x, generator=0)
    with pytest.raises(ValueError, match="n_projections must be a positive int, got 0"):
        L.ssm_loss(energy, x, n_projections=0)
    with pytest.raises(TypeError, match="variance_reduction must be a bool, got str"):
        L.ssm_loss(energy, x, variance_reduction="yes")
    with pytest.raises(ValueError, match="projection must be one of 'gaussian', 'rademacher'; got 'sphere'"):
        L.ssm_loss(energy, x, projection="sphere")
    with pytest.raises(ValueError, match=r"projections must have shape \(\*, 4, 2\), got \(3, 2\)"):
        L.ssm_loss(energy, x, projections=torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="projections must hold at least one direction"):
        L.ssm_loss(energy, x, projections=torch.zeros(0, 4, 2, dtype=F64))
    with pytest.raises(ValueError, match="noise_ratio must be a positive int, got 0"):
        L.nce_loss(energy, x, noise_ratio=0)
    with pytest.raises(ValueError, match=r"noise_std must be in \(0.0, inf\], got -1.0"):
        L.nce_loss(energy, x, noise_std=-1.0)
    with pytest.raises(ValueError, match="x has zero spread"):
        L.nce_loss(energy, torch.ones(4, 2, dtype=F64))
    with pytest.raises(TypeError, match="log_z must be a number, got str"):
        L.nce_loss(energy, x, log_z="0")
    with pytest.raises(ValueError, match=r"log_z must be a floating scalar tensor, got shape \(2,\)"):
        L.nce_loss(energy, x, log_z=torch.zeros(2))
    with pytest.raises(ValueError, match=r"noise must have shape \(8, 2\), got \(4, 2\)"):
        L.nce_loss(energy, x, noise_ratio=2, noise=torch.zeros(4, 2, dtype=F64))


# ------------------------------------------------------------------------------------------------- learning


def test_dsm_energy_on_moons_gives_langevin_samples_near_the_data():
    """An MLP energy fitted by DSM (σ = 0.2, 600 Adam steps); 1000 unadjusted Langevin steps (ε = 0.003) from
    N(0, I) land far closer to moons (W2 on 500 points) than the N(0, I) start does (≈ 1.05)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
    energy = lambda x: net(x).squeeze(-1)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(600):
        loss, _ = L.dsm_loss(energy, toy2d.sample("moons", 256, generator=g), sigma=0.2, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x0 = torch.randn(500, 2, generator=g)
    x, eps = x0, 0.003
    for _ in range(1000):
        x = x + eps * L.score_of(energy, x, create_graph=False) + math.sqrt(2 * eps) * torch.randn(x.shape, generator=g)
    data = toy2d.sample("moons", 500, generator=g)
    w_model, w_noise = float(w2(x, data)), float(w2(x0, data))
    print(f"W2 model {w_model:.3f} vs N(0, I) {w_noise:.3f}")
    assert w_model < 0.65 * w_noise, (w_model, w_noise)  # seeds 0/1/2 measured 0.35/0.60/0.48 vs ≈ 1.05
