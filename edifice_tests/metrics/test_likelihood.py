"""bits_per_dim and nll_summary: unit conversions, dequantisation offsets, standard errors, errors."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.metrics import bits_per_dim, nll_summary

LN2 = math.log(2.0)


def test_bits_per_dim_conversions():
    d = 784
    assert float(bits_per_dim(d * LN2, d)) == pytest.approx(1.0)
    out = bits_per_dim(torch.tensor([d * LN2, 3 * d * LN2]), d)  # batch mean: 2 bits
    assert out.shape == () and float(out) == pytest.approx(2.0)
    # 8-bit data, model on [0, 1]: + ln 256 per dim = + 8 bits
    assert float(bits_per_dim(torch.tensor(0.0), d, dequant_bins=256)) == pytest.approx(8.0)
    # model on [-1, 1] (scale 2): - 1 bit; together + ln 128 per dim = 7 bits
    assert float(bits_per_dim(0.0, d, scale=2.0)) == pytest.approx(-1.0)
    assert float(bits_per_dim(0.0, d, dequant_bins=256, scale=2.0)) == pytest.approx(7.0)


def test_bits_per_dim_uniform_oracle():
    # A uniform density on the 8-bit bins of [0, 1]^D: p = 1, nll 0 nats; discrete probability of
    # each bin is 256^-D, i.e. exactly 8 bits per dim.
    assert float(bits_per_dim(torch.zeros(5), 3 * 8 * 8, dequant_bins=256)) == pytest.approx(8.0)


def test_bits_per_dim_dtype_and_grad():
    assert bits_per_dim(1.0, 2).dtype == torch.float64
    nll = torch.tensor([1.0, 2.0], requires_grad=True)
    bpd = bits_per_dim(nll, 4)
    assert bpd.dtype == torch.float32
    bpd.backward()
    torch.testing.assert_close(nll.grad, torch.full((2,), 1 / (2 * 4 * LN2)))


def test_nll_summary_values():
    lp = torch.tensor([-1.0, -2.0, -4.0, -5.0], dtype=torch.float32)
    out = nll_summary(lp)
    assert set(out) == {"nll", "nll_se"}
    assert out["nll"].dtype == torch.float64 and out["nll"].shape == ()
    assert float(out["nll"]) == pytest.approx(3.0)
    assert float(out["nll_se"]) == pytest.approx(math.sqrt(10 / 3) / 2)
    out = nll_summary(lp, num_dims=2, dequant_bins=256, scale=2.0)
    assert float(out["bpd"]) == pytest.approx(3.0 / (2 * LN2) + 7.0)
    assert float(out["bpd_se"]) == pytest.approx(float(out["nll_se"]) / (2 * LN2))


def test_nll_summary_gaussian_entropy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g, dtype=torch.float64)
    lp = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    out = nll_summary(lp)
    entropy = 0.5 * math.log(2 * math.pi * math.e)
    assert abs(float(out["nll"]) - entropy) < 4 * float(out["nll_se"])


def test_nll_summary_edge_cases():
    out = nll_summary(torch.tensor([-1.5]))
    assert float(out["nll"]) == 1.5 and math.isnan(float(out["nll_se"]))
    out = nll_summary(torch.tensor([-1.0, -math.inf]))
    assert math.isinf(float(out["nll"]))
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    assert not nll_summary(lp)["nll"].requires_grad


def test_errors():
    with pytest.raises(ValueError, match="num_dims must be a positive int, got 0"):
        bits_per_dim(1.0, 0)
    with pytest.raises(TypeError, match="num_dims must be an int, got float"):
        bits_per_dim(1.0, 2.0)
    with pytest.raises(ValueError, match="dequant_bins must be an int >= 2, got 1"):
        bits_per_dim(1.0, 2, dequant_bins=1)
    with pytest.raises(ValueError, match=r"scale must be in \(0.0, inf\], got 0.0"):
        bits_per_dim(1.0, 2, scale=0.0)
    with pytest.raises(ValueError, match="nll_nats must not contain NaN"):
        bits_per_dim(torch.tensor([1.0, math.nan]), 2)
    with pytest.raises(ValueError, match=r"nll_nats must be a scalar or have shape \(B,\), got \(2, 2\)"):
        bits_per_dim(torch.zeros(2, 2), 2)
    with pytest.raises(ValueError, match=r"nll_nats must not be empty, got shape \(0,\)"):
        bits_per_dim(torch.zeros(0), 2)
    with pytest.raises(TypeError, match="nll_nats must be a floating-point tensor, got dtype torch.int64"):
        bits_per_dim(torch.tensor([1, 2]), 2)
    with pytest.raises(TypeError, match="nll_nats must be a tensor or a number, got str"):
        bits_per_dim("1.0", 2)
    with pytest.raises(ValueError, match=r"log_prob must have shape \(B,\), got \(\)"):
        nll_summary(torch.tensor(-1.0))
    with pytest.raises(ValueError, match="log_prob must not contain \\+inf"):
        nll_summary(torch.tensor([-1.0, math.inf]))
    with pytest.raises(ValueError, match="log_prob must not contain NaN"):
        nll_summary(torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="num_dims must be a positive int, got -3"):
        nll_summary(torch.tensor([-1.0, -2.0]), num_dims=-3)
