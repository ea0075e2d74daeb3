"""Tests for edifice.integrators.divergence: exact trace vs autograd Jacobian, Hutchinson unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.integrators import divergence_exact, divergence_hutchinson, hutchinson_probes


def _mlp_field(d: int, seed: int = 0):
    """A nonlinear, non-symmetric, time-dependent per-sample field on (B, d)."""
    g = torch.Generator().manual_seed(seed)
    W1, W2 = torch.randn(d, 16, generator=g, dtype=torch.float64), torch.randn(16, d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return lambda t, x: torch.tanh(x @ W1 + t) @ W2 / 4 + x @ A.T


def _conv_field(c: int, seed: int = 0):
    """A per-sample field on images (B, C, H, W)."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).double()
    return lambda t, x: torch.sin(conv(x)) * (1 + t)


def _trace_per_sample(f, t, x):
    J = torch.autograd.functional.jacobian(lambda y: f(t, y), x)  # (B, *s, B, *s)
    b, d = x.shape[0], x[0].numel()
    J = J.reshape(b, d, b, d)
    return torch.stack([J[i, :, i, :].trace() for i in range(b)])


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_exact_equals_trace_of_jacobian(kind, f64):
    g = torch.Generator().manual_seed(1)
    if kind == "mlp":
        f, x = _mlp_field(5), torch.randn(4, 5, generator=g)
    else:
        f, x = _conv_field(2), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor(0.3)
    fx, div = divergence_exact(f, t, x)
    assert div.shape == (x.shape[0],) and fx.shape == x.shape
    torch.testing.assert_close(fx, f(t, x))
    torch.testing.assert_close(div, _trace_per_sample(f, t, x), rtol=1e-10, atol=1e-10)


def test_works_under_no_grad_and_detaches(f64):
    f, x = _mlp_field(3), torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(0.0)
    with torch.no_grad():
        fx, div = divergence_exact(f, t, x)
        fx_h, div_h = divergence_hutchinson(f, t, x, generator=torch.Generator().manual_seed(0))
    for v in (fx, div, fx_h, div_h):
        assert not v.requires_grad
    torch.testing.assert_close(div, _trace_per_sample(f, t, x))
    assert not x.requires_grad  # the caller's tensor is untouched


def test_create_graph_gradcheck(f64):
    f = _mlp_field(3)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    t = torch.tensor(0.5)
    probes = hutchinson_probes(x.shape, n_probes=2, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    assert torch.autograd.gradcheck(lambda y: divergence_exact(f, t, y, create_graph=True)[1], (x,))
    assert torch.autograd.gradcheck(lambda y: divergence_hutchinson(f, t, y, noise=probes, create_graph=True)[1], (x,))
    with torch.no_grad():  # training under an outer no_grad still gets a graph when asked
        fx, div = divergence_exact(f, t, x.detach(), create_graph=True)
    assert fx.requires_grad and div.requires_grad


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_hutchinson_unbiased(dist, f64):
    """Many single-probe estimates at one point (the point repeated over the batch) average to the trace."""
    f = _mlp_field(6, seed=5)
    t = torch.tensor(0.2)
    point = torch.randn(1, 6, generator=torch.Generator().manual_seed(6))
    exact = _trace_per_sample(f, t, point)[0].item()
    n = 20000
    _, est = divergence_hutchinson(f, t, point.expand(n, 6), generator=torch.Generator().manual_seed(7), dist=dist)
    se = est.std().item() / math.sqrt(n)
    assert se > 0
    assert abs(est.mean().item() - exact) < 4 * se, (est.mean().item(), exact, se)
    # averaging probes reduces the variance by the number of probes
    _, est4 = divergence_hutchinson(f, t, point.expand(n, 6), generator=torch.Generator().manual_seed(8),
                                    dist=dist, n_probes=4)
    assert abs(est4.mean().item() - exact) < 4 * est4.std().item() / math.sqrt(n)
    assert 0.2 < est4.var().item() / est.var().item() < 0.3


def test_hutchinson_matches_probe_formula_and_is_deterministic(f64):
    f, x = _mlp_field(4), torch.randn(3, 4, generator=torch.Generator().manual_seed(9))
    t = torch.tensor(0.1)
    probes = hutchinson_probes(x.shape, n_probes=3, dist="gaussian", generator=torch.Generator().manual_seed(0),
                               dtype=x.dtype)
    _, div = divergence_hutchinson(f, t, x, noise=probes)
    J = torch.autograd.functional.jacobian(lambda y: f(t, y), x).reshape(3, 4, 3, 4)
    want = torch.stack([torch.stack([e[i] @ J[i, :, i, :] @ e[i] for e in probes]).mean() for i in range(3)])
    torch.testing.assert_close(div, want)
    _, one = divergence_hutchinson(f, t, x, noise=probes[0])  # a single probe shaped like x
    torch.testing.assert_close(one, torch.stack([probes[0][i] @ J[i, :, i, :] @ probes[0][i] for i in range(3)]))
    a = divergence_hutchinson(f, t, x, generator=torch.Generator().manual_seed(1), n_probes=2)[1]
    b = divergence_hutchinson(f, t, x, generator=torch.Generator().manual_seed(1), n_probes=2)[1]
    assert torch.equal(a, b)


def test_rademacher_is_exact_for_diagonal_jacobians(f64):
    f = lambda t, x: torch.sin(x) * 3  # noqa: E731
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    _, div = divergence_hutchinson(f, 0.0, x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(div, (3 * torch.cos(x)).reshape(5, -1).sum(1))


def test_probes_have_identity_second_moment(f64):
    for dist in ("rademacher", "gaussian"):
        e = hutchinson_probes((4,), n_probes=20000, dist=dist, generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
        assert e.shape == (20000, 4)
        torch.testing.assert_close(e.T @ e / 20000, torch.eye(4), rtol=0, atol=0.05)
    assert set(hutchinson_probes((100,), dist="rademacher").unique().tolist()) == {-1.0, 1.0}


def test_field_independent_of_x_has_zero_divergence(f64):
    x = torch.randn(3, 2)
    for fn in (divergence_exact, divergence_hutchinson):
        fx, div = fn(lambda t, y: torch.ones_like(y) * 2, torch.tensor(0.0), x)
        torch.testing.assert_close(div, torch.zeros(3))
        torch.testing.assert_close(fx, torch.full((3, 2), 2.0))


def test_errors():
    f = lambda t, x: x  # noqa: E731
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="dist must be one of 'rademacher', 'gaussian'; got 'uniform'"):
        divergence_hutchinson(f, 0.0, x, dist="uniform")
    with pytest.raises(ValueError, match="n_probes must be a positive int, got 0"):
        divergence_hutchinson(f, 0.0, x, n_probes=0)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 3\) or \(K, 2, 3\)"):
        divergence_hutchinson(f, 0.0, x, noise=torch.ones(3, 2))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        divergence_exact(f, 0.0, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        divergence_hutchinson(f, 0.0, [1.0])
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        divergence_exact(f, 0.0, torch.tensor(1.0))
    with pytest.raises(ValueError, match="x must have a batch dimension"):
        divergence_hutchinson(f, 0.0, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"f\(t, x\) must return a tensor of shape \(2, 3\), got \(2,\)"):
        divergence_exact(lambda t, y: y.sum(1), 0.0, x)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        divergence_hutchinson(f, 0.0, x, generator=1)
