"""Tests of dequantisation, the logit transform and bits per dim."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.flows.base import Flow
from edifice.flows.dequantize import LogitTransform, VariationalDequantizer, bits_per_dim, uniform_dequantize

DT = torch.float64


def _levels(shape=(3, 1, 2, 2), bins=256, seed=0):
    return torch.randint(0, bins, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_uniform_dequantize_bounds_and_float_input():
    k = _levels((64, 1, 4, 4))
    y = uniform_dequantize(k, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.get_default_dtype() and y.shape == k.shape
    assert bool(((y * 256).floor() == k.float()).all()) and y.min() >= 0 and y.max() < 1
    yf = uniform_dequantize(k.to(DT) / 255, generator=torch.Generator().manual_seed(0))
    assert yf.dtype == DT and bool(((yf * 256).floor() == k.to(DT)).all())  # same levels
    assert torch.equal(y, uniform_dequantize(k, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(y, uniform_dequantize(k, generator=torch.Generator().manual_seed(1)))
    # 4-bit data
    k16 = torch.randint(0, 16, (32, 5), generator=torch.Generator().manual_seed(1))
    y16 = uniform_dequantize(k16, bins=16)
    assert bool(((y16 * 16).floor() == k16).all())
    # the noise is uniform within a bin: mean offset 1/2
    assert abs(((y16 * 16) - k16).mean().item() - 0.5) < 0.1


def test_uniform_dequantize_bad_input():
    with pytest.raises(ValueError, match="x"):
        uniform_dequantize(torch.tensor([[20]]), bins=16)
    with pytest.raises(ValueError, match="x"):
        uniform_dequantize(torch.tensor([[-1]]))
    with pytest.raises(ValueError, match="x"):
        uniform_dequantize(torch.tensor([[1.2]]))
    with pytest.raises(ValueError, match="x"):
        uniform_dequantize(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="bins"):
        uniform_dequantize(torch.tensor([[0]]), bins=1)
    with pytest.raises(TypeError, match="x"):
        uniform_dequantize([[0]])
    with pytest.raises(TypeError, match="generator"):
        uniform_dequantize(torch.tensor([[0]]), generator=1)


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1e-6])
def test_logit_transform_logdet_and_round_trip(alpha):
    x = torch.rand(3, 2, 3, dtype=DT, generator=torch.Generator().manual_seed(0)) * 0.98 + 0.01
    t = LogitTransform(alpha)
    y, ld = t(x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: t(v.reshape(1, 2, 3))[0].reshape(6), x[b].reshape(6))
        assert abs(torch.linalg.slogdet(jac)[1].item() - ld[b].item()) < 1e-10
    xr, ldi = t.inverse(y)
    assert torch.allclose(xr, x, atol=1e-12) and torch.allclose(ldi, -ld, atol=1e-10)
    expected = torch.logit(alpha + (1 - 2 * alpha) * x)
    assert torch.allclose(y, expected, atol=1e-12)


def test_logit_transform_in_flow_and_boundaries():
    flow = Flow([LogitTransform(0.05)], shape=(1, 2, 2))
    x = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]], dtype=DT)  # boundaries are fine with alpha > 0
    lp = flow.log_prob(x)
    y = torch.logit(0.05 + 0.9 * x)
    manual = -0.5 * (y**2 + math.log(2 * math.pi)).sum() + (math.log(0.9) - torch.log(0.05 + 0.9 * x)
                                                               - torch.log(0.95 - 0.9 * x)).sum()
    assert torch.isfinite(lp).all() and torch.allclose(lp, manual[None], atol=1e-12)
    s = flow.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 2, 2) and s.min() > 0 and s.max() < 1


def test_logit_transform_bad_input():
    with pytest.raises(ValueError, match="x must lie in"):
        LogitTransform(0.05)(torch.tensor([[1.2, 0.5]]))
    with pytest.raises(ValueError, match="x must lie in"):
        LogitTransform(0.05)(torch.tensor([[-0.1, 0.5]]))
    with pytest.raises(ValueError, match="x must lie in"):
        LogitTransform(0.0)(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="x must lie in"):
        LogitTransform()(torch.tensor([[float("nan"), 0.5]]))
    with pytest.raises(ValueError, match="y"):
        LogitTransform().inverse(torch.tensor([[float("nan"), 0.5]]))
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(0.5)
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(-0.1)
    with pytest.raises(TypeError, match="x"):
        LogitTransform()(torch.tensor([[1, 0]]))


def test_variational_dequantizer_bounds_and_log_q():
    torch.manual_seed(0)
    deq = VariationalDequantizer((1, 2, 2), hidden=8, layers=3).double()
    k = _levels((5, 1, 2, 2))
    y, log_q = deq(k, generator=torch.Generator().manual_seed(0))
    assert y.shape == k.shape and y.dtype == DT and log_q.shape == (5,)
    assert bool(((y * 256).floor() == k.to(DT)).all())
    u = y * 256 - k.to(DT)
    assert torch.allclose(deq.log_q(k, u), log_q, atol=1e-8)
    # float input k / 255 gives the same draw
    y2, log_q2 = deq(k.to(DT) / 255, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y2, y, atol=1e-12) and torch.allclose(log_q2, log_q, atol=1e-10)


def test_variational_dequantizer_density_integrates_to_one():
    torch.manual_seed(0)
    deq = VariationalDequantizer((1, 1, 1), hidden=8, layers=2).double()
    for p in deq.nets[1][-1].parameters():  # a non-trivial q(u | k)
        torch.nn.init.normal_(p, std=0.5)
    n = 20000
    u = ((torch.arange(n, dtype=DT) + 0.5) / n).reshape(n, 1, 1, 1)
    for level in (0, 100, 255):
        k = torch.full((n, 1, 1, 1), level, dtype=torch.uint8)
        mass = deq.log_q(k, u).exp().mean().item()
        assert abs(mass - 1) < 0.01, (level, mass)


def test_variational_dequantizer_gradients_and_bpd():
    torch.manual_seed(0)
    deq = VariationalDequantizer((2, 2, 2), hidden=4)
    flow = Flow([LogitTransform(0.05)], shape=(2, 2, 2))
    k = _levels((4, 2, 2, 2))
    y, log_q = deq(k, generator=torch.Generator().manual_seed(0))
    bpd = bits_per_dim(flow.log_prob(y) - log_q, 8, bins=256)
    assert bpd.ndim == 0 and torch.isfinite(bpd)
    bpd.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deq.parameters())


def test_variational_dequantizer_bad_input():
    deq = VariationalDequantizer((1, 2, 2), hidden=4)
    with pytest.raises(ValueError, match="shape"):
        VariationalDequantizer((4,))
    with pytest.raises(ValueError, match="layers"):
        VariationalDequantizer((1, 2, 2), layers=1)
    with pytest.raises(ValueError, match="x"):
        deq(torch.zeros(2, 1, 3, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="x"):
        deq(torch.full((2, 1, 2, 2), 300))
    with pytest.raises(ValueError, match="u"):
        deq.log_q(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match="u"):
        deq.log_q(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.full((3, 1, 2, 2), 0.5))


def test_bits_per_dim():
    d = 784
    assert abs(float(bits_per_dim(torch.zeros(2), d)) - 8.0) < 1e-12  # uniform on [0, 1]^D, 8-bit data
    assert abs(float(bits_per_dim(torch.tensor([-d * math.log(2.0)]), d, bins=None)) - 1.0) < 1e-12
    assert abs(float(bits_per_dim(torch.zeros(1), d, bins=256, scale=2.0)) - 7.0) < 1e-12
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="dequant_bins"):
        bits_per_dim(torch.zeros(2), 4, bins=1)
    with pytest.raises(TypeError, match="log_prob"):
        bits_per_dim(0.0, 4)
