"""VAE maths against torch.distributions and a conjugate Gaussian model with an exact log p(x).

The IWAE oracle is the 1-D model ``z ~ N(0, 1)``, ``x | z ~ N(z, s²)``: then ``p(x) = N(0, 1 + s²)``
and the exact posterior is ``N(x / (1 + s²), s² / (1 + s²))``. With that posterior as ``q`` every
importance weight equals ``p(x)``, so ``L_K = log p(x)`` exactly for every ``K``; with a mismatched
``q`` the expected bound rises with ``K`` towards ``log p(x)`` and never exceeds it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from edifice.generative import vae

S2 = 0.25  # observation variance of the conjugate model


def _rand(shape, gen, scale=1.0):
    return scale * torch.randn(shape, generator=gen, dtype=torch.float64)


# ---------------------------------------------------------------- KL and likelihoods vs torch

def test_gaussian_kl_matches_torch(f64, gen):
    mu, logvar = _rand((5, 3, 4), gen), _rand((5, 3, 4), gen)
    q = Normal(mu, torch.exp(0.5 * logvar))
    want = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum((1, 2))
    got = vae.gaussian_kl(mu, logvar)
    assert got.shape == (5,)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.all(got >= 0)


def test_gaussian_log_prob_matches_torch(f64, gen):
    x, mean, logvar = _rand((6, 2, 3), gen), _rand((6, 2, 3), gen), _rand((6, 2, 3), gen)
    want = Normal(mean, torch.exp(0.5 * logvar)).log_prob(x).sum((1, 2))
    torch.testing.assert_close(vae.gaussian_log_prob(x, mean, logvar), want)
    # a shared scalar log-variance broadcasts
    lv = torch.tensor(0.3)
    torch.testing.assert_close(
        vae.gaussian_log_prob(x, mean, lv), Normal(mean, math.exp(0.15)).log_prob(x).sum((1, 2))
    )
    torch.testing.assert_close(vae.log_normal_diag(x, mean, logvar), want)
    torch.testing.assert_close(vae.log_normal_standard(x), Normal(0.0, 1.0).log_prob(x).sum((1, 2)))


def test_bernoulli_log_prob_matches_torch_and_is_stable(f64, gen):
    logits = _rand((4, 10), gen, scale=5.0)
    x = (torch.rand((4, 10), generator=gen, dtype=torch.float64) < 0.5).double()
    want = Bernoulli(logits=logits).log_prob(x).sum(1)
    torch.testing.assert_close(vae.bernoulli_log_prob(x, logits), want)
    extreme = vae.bernoulli_log_prob(torch.tensor([[1.0, 0.0]]), torch.tensor([[-800.0, 800.0]]))
    torch.testing.assert_close(extreme, torch.tensor([-1600.0]))


@pytest.mark.parametrize("mean", [-1.3, -0.99, -0.2, 0.0, 0.37, 1.0, 2.5])
@pytest.mark.parametrize("log_scale", [-7.0, -4.0, -1.0, 0.5, 3.0])
def test_discretized_logistic_sums_to_one(f64, mean, log_scale):
    bins = 256
    grid = torch.linspace(-1.0, 1.0, bins)  # every bin centre, one "pixel" each
    lp = vae.discretized_logistic_log_prob(
        grid[:, None], torch.full((bins, 1), mean), torch.tensor(log_scale), bins=bins
    )
    assert lp.shape == (bins,)
    assert torch.all(torch.isfinite(lp)) and torch.all(lp <= 0)
    assert abs(lp.exp().sum().item() - 1.0) < 1e-6


def test_discretized_logistic_per_pixel_and_small_bins(f64, gen):
    # per pixel: 3 pixels with different parameters, summed over their own 256-level grids
    means, log_scales = torch.tensor([-0.5, 0.1, 0.9]), torch.tensor([-3.0, -5.0, -0.5])
    grid = torch.linspace(-1.0, 1.0, 256)[:, None].expand(256, 3)
    per_pixel = torch.stack(
        [vae.discretized_logistic_log_prob(grid[:, i:i + 1], means[i].expand(256, 1), log_scales[i])
         for i in range(3)], 1)
    torch.testing.assert_close(per_pixel.exp().sum(0), torch.ones(3), atol=1e-6, rtol=0)
    # joint log-prob is the sum over pixels
    joint = vae.discretized_logistic_log_prob(grid, means.expand(256, 3), log_scales.expand(256, 3))
    torch.testing.assert_close(joint, per_pixel.sum(1))
    for bins in (2, 3, 17):
        g = torch.linspace(-1.0, 1.0, bins)[:, None]
        lp = vae.discretized_logistic_log_prob(g, torch.full((bins, 1), 0.2), torch.tensor(-0.7), bins=bins)
        assert abs(lp.exp().sum().item() - 1.0) < 1e-12


def test_discretized_logistic_tiny_probabilities_are_finite_and_differentiable():
    # Far in the tail both CDFs are ~e^c: P = e^{c+} (1 - e^{c- - c+}) to relative error e^{c+}.
    # In float32 the naive sigmoid difference underflows to 0 (log = -inf); the log-space form does not.
    s, h = math.exp(-6.0), 1.0 / 255
    c_plus, c_min = (-0.9 + h) / s, (-0.9 - h) / s
    want = c_plus + math.log(-math.expm1(c_min - c_plus))
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor([[0.0]], dtype=dtype)
        mean = torch.tensor([[0.9]], dtype=dtype, requires_grad=True)
        log_scale = torch.tensor(-6.0, dtype=dtype, requires_grad=True)
        lp = vae.discretized_logistic_log_prob(x, mean, log_scale)
        assert torch.isfinite(lp).all() and lp.item() < -300
        assert abs(lp.item() - want) < (1e-9 if dtype == torch.float64 else 1e-3) * abs(want)
        lp.sum().backward()
        assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
    naive = torch.sigmoid(torch.tensor(c_plus)) - torch.sigmoid(torch.tensor(c_min))  # float32
    assert naive.item() == 0.0


def test_log_likelihood_dispatch(f64, gen):
    x, a, b = _rand((3, 4), gen).clamp(-1, 1), _rand((3, 4), gen), _rand((3, 4), gen)
    torch.testing.assert_close(vae.log_likelihood("gaussian", x, a, b), vae.gaussian_log_prob(x, a, b))
    xb = (x > 0).double()
    torch.testing.assert_close(vae.log_likelihood("bernoulli", xb, a), vae.bernoulli_log_prob(xb, a))
    torch.testing.assert_close(
        vae.log_likelihood("logistic", x, a, b, bins=16), vae.discretized_logistic_log_prob(x, a, b, bins=16)
    )
    assert set(vae.LIKELIHOODS) == {"gaussian", "bernoulli", "logistic"}


# ---------------------------------------------------------------- reparameterisation

def test_reparameterize_moments(f64, gen):
    n = 200_000
    mu = torch.tensor([1.5, -2.0]).expand(n, 2)
    logvar = torch.tensor([0.0, math.log(0.09)]).expand(n, 2)
    z = vae.reparameterize(mu, logvar, generator=gen)
    torch.testing.assert_close(z.mean(0), torch.tensor([1.5, -2.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.3]), atol=0.01, rtol=0)
    # the same seed gives the same draw; explicit noise is used verbatim
    z2 = vae.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, z2)
    eps = torch.ones(n, 2)
    torch.testing.assert_close(vae.reparameterize(mu, logvar, noise=eps)[0], torch.tensor([2.5, -1.7]))


def test_reparameterize_is_differentiable(f64, gen):
    mu = _rand((3, 2), gen).requires_grad_()
    logvar = _rand((3, 2), gen).requires_grad_()
    eps = _rand((3, 2), gen)
    assert torch.autograd.gradcheck(lambda m, lv: vae.reparameterize(m, lv, noise=eps), (mu, logvar))
    vae.reparameterize(mu, logvar, noise=eps).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


# ---------------------------------------------------------------- ELBO and IWAE on a conjugate model

def _log_px_exact(x):
    return Normal(0.0, math.sqrt(1.0 + S2)).log_prob(x)


def _iwae(x, q_mu, q_logvar, k, gen):
    """IWAE bound for the conjugate model; x: (B,), q parameters (B,); returns (B,)."""
    b = x.shape[0]
    mu = q_mu.expand(k, b)[..., None]  # (K, B, 1)
    lv = q_logvar.expand(k, b)[..., None]  # (K, B, 1)
    z = vae.reparameterize(mu, lv, generator=gen)  # (K, B, 1)
    xs = x.expand(k, b)[..., None]
    log_px_z = vae.gaussian_log_prob(xs, z, torch.tensor(math.log(S2)), batch_dims=2)  # (K, B)
    log_pz = vae.log_normal_standard(z, batch_dims=2)
    log_qz = vae.log_normal_diag(z, mu, lv, batch_dims=2)
    return vae.iwae_bound(log_px_z, log_pz, log_qz), (log_px_z, log_pz, log_qz)


def test_iwae_k1_equals_single_sample_elbo(f64, gen):
    x = _rand((7,), gen)
    q_mu, q_logvar = _rand((7,), gen), _rand((7,), gen)
    bound, (log_px_z, log_pz, log_qz) = _iwae(x, q_mu, q_logvar, 1, gen)
    single = vae.elbo(log_px_z[0], log_qz[0] - log_pz[0])  # sample-estimate KL
    torch.testing.assert_close(bound, single)


def test_elbo_expectation_matches_analytic(f64, gen):
    # E_q[log p(x|z)] - KL in closed form vs the Monte Carlo mean of L_1
    x, q_mu, q_var = torch.tensor([1.2]), torch.tensor([0.3]), torch.tensor([0.5])
    analytic_rec = -0.5 * (math.log(2 * math.pi * S2) + ((x - q_mu) ** 2 + q_var) / S2)
    want = vae.elbo(analytic_rec, vae.gaussian_kl(q_mu[:, None], q_var.log()[:, None]))
    n = 200_000
    mc, _ = _iwae(x.expand(n), q_mu.expand(n), q_var.log().expand(n), 1, gen)
    assert abs(mc.mean().item() - want.item()) < 5 * mc.std().item() / math.sqrt(n)
    # beta weights only the KL
    kl = vae.gaussian_kl(q_mu[:, None], q_var.log()[:, None])
    torch.testing.assert_close(vae.elbo(analytic_rec, kl, beta=0.0), analytic_rec)
    torch.testing.assert_close(vae.elbo(analytic_rec, kl, beta=4.0), analytic_rec - 4 * kl)


def test_iwae_exact_posterior_gives_log_px_for_every_k(f64, gen):
    x = _rand((5,), gen, scale=2.0)
    post_mu, post_logvar = x / (1 + S2), torch.full_like(x, math.log(S2 / (1 + S2)))
    for k in (1, 2, 10, 100):
        bound, _ = _iwae(x, post_mu, post_logvar, k, gen)
        torch.testing.assert_close(bound, _log_px_exact(x), rtol=1e-12, atol=1e-12)


def test_iwae_rises_with_k_towards_log_px(f64, gen):
    n = 10_000  # replicas of one observation -> Monte Carlo expectation of the bound
    x = torch.full((n,), 1.5)
    q_mu, q_logvar = torch.zeros(n), torch.zeros(n)  # q = prior: a poor but valid proposal
    log_px = _log_px_exact(x[:1]).item()
    means, ses = [], []
    for k in (1, 2, 5, 20, 200):
        bound, _ = _iwae(x, q_mu, q_logvar, k, gen)
        means.append(bound.mean().item())
        ses.append(bound.std().item() / math.sqrt(n))
    for k_lo, k_hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:]):
        assert k_hi > k_lo - 4 * math.hypot(se_lo, se_hi)
    for m, se in zip(means, ses):
        assert m < log_px + 4 * se
    assert means[0] < log_px - 0.5  # the ELBO gap is real here ...
    assert abs(means[-1] - log_px) < 0.02  # ... and K = 200 nearly closes it (gap ~0.007)


# ---------------------------------------------------------------- error paths

def test_errors():
    a, b = torch.zeros(2, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="logvar must have the shape of mu"):
        vae.gaussian_kl(a, b)
    with pytest.raises(ValueError, match="logvar must have the shape of mu"):
        vae.reparameterize(a, b)
    with pytest.raises(ValueError, match="noise must have the shape of mu"):
        vae.reparameterize(a, a, noise=b)
    with pytest.raises(ValueError, match="mean must have the shape of x"):
        vae.gaussian_log_prob(a, b, a)
    with pytest.raises(ValueError, match="logvar must broadcast to the shape of x"):
        vae.gaussian_log_prob(a, a, b)
    with pytest.raises(ValueError, match="logvar must broadcast to the shape of x"):
        vae.gaussian_log_prob(a, a, torch.zeros(5, 2, 3))
    with pytest.raises(ValueError, match="logits must have the shape of x"):
        vae.bernoulli_log_prob(a, b)
    with pytest.raises(ValueError, match="mean must have the shape of x"):
        vae.discretized_logistic_log_prob(a, b, a)
    with pytest.raises(ValueError, match="log_scale must broadcast"):
        vae.discretized_logistic_log_prob(a, a, b)
    with pytest.raises(ValueError, match="bins must be an int >= 2, got 1"):
        vae.discretized_logistic_log_prob(a, a, a, bins=1)
    with pytest.raises(ValueError, match="bins must be an int >= 2"):
        vae.log_likelihood("logistic", a, a, a, bins=0)
    with pytest.raises(ValueError, match="mu must have the shape of z"):
        vae.log_normal_diag(a, b, a)
    with pytest.raises(ValueError, match="batch_dims must be <= x.ndim = 2, got 3"):
        vae.gaussian_log_prob(a, a, a, batch_dims=3)
    with pytest.raises(ValueError, match="batch_dims must be a positive int"):
        vae.log_normal_standard(a, batch_dims=0)
    with pytest.raises(ValueError, match="likelihood must be one of 'gaussian', 'bernoulli', 'logistic'; got 'p"):
        vae.log_likelihood("poisson", a, a)
    with pytest.raises(ValueError, match=r"params for likelihood 'gaussian' must be \(mean, logvar\), got 1"):
        vae.log_likelihood("gaussian", a, a)
    with pytest.raises(ValueError, match="bins applies only to likelihood 'logistic'"):
        vae.log_likelihood("bernoulli", a, a, bins=256)
    v, w = torch.zeros(3), torch.zeros(4)
    with pytest.raises(ValueError, match=r"beta must be in \[0.0, inf\], got -0.5"):
        vae.elbo(v, v, beta=-0.5)
    with pytest.raises(ValueError, match="kl must have the shape of log_px_given_z"):
        vae.elbo(v, w)
    with pytest.raises(ValueError, match="log_px_given_z must have 1 dimensions"):
        vae.elbo(a, a)
    with pytest.raises(ValueError, match="log_px_given_z_k must have 2 dimensions"):
        vae.iwae_bound(v, v, v)
    with pytest.raises(ValueError, match="log_pz_k must have the shape of log_px_given_z_k"):
        vae.iwae_bound(a, b, a)
    with pytest.raises(ValueError, match="log_qz_k must have the shape of log_px_given_z_k"):
        vae.iwae_bound(a, a, b)
    with pytest.raises(TypeError, match="mu must be a torch.Tensor"):
        vae.gaussian_kl([0.0], a)
    with pytest.raises(TypeError, match="beta must be a number"):
        vae.elbo(v, v, beta="1")
