"""Tests for edifice.integrators.sde: Euler-Maruyama moments (OU), strong order (GBM), determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edifice.integrators import SDE_STEPPERS, euler_maruyama_step, sdeint


def test_ornstein_uhlenbeck_mean_and_variance(f64):
    """dx = -theta x dt + sigma dW from x0 = c: mean c e^{-theta T}, var sigma^2 (1 - e^{-2 theta T}) / (2 theta)."""
    theta, sigma, c, T, n_steps, n_paths = 1.5, 0.8, 2.0, 1.0, 500, 5000
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((n_paths, 2), c)
    x = sdeint(lambda t, x: -theta * x, lambda t, x: sigma, x0, torch.linspace(0.0, T, n_steps + 1), generator=g)
    x = x.flatten()
    mean, var = math.exp(-theta * T) * c, sigma**2 * (1 - math.exp(-2 * theta * T)) / (2 * theta)
    # Euler-Maruyama's own moments on this grid (weak error O(dt)): small next to the standard errors below.
    h = T / n_steps
    em_mean = c * (1 - theta * h) ** n_steps
    em_var = sigma**2 * h * sum((1 - theta * h) ** (2 * k) for k in range(n_steps))
    n = x.numel()
    se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
    assert abs(em_mean - mean) < se_mean and abs(em_var - var) < se_var
    assert abs(x.mean().item() - mean) < 4 * se_mean
    assert abs(x.var().item() - var) < 4 * se_var


def test_strong_order_half_on_geometric_brownian_motion(f64):
    """dX = mu X dt + s X dW has X_T = X_0 exp((mu - s^2/2) T + s W_T); E|X_EM - X_T| falls like dt^{1/2}."""
    mu, s, n_paths = 0.5, 0.8, 4000
    steps = [8, 32, 128, 512]
    errors = []
    for k, n in enumerate(steps):
        ts = torch.linspace(0.0, 1.0, n + 1)
        x0 = torch.ones(n_paths, 1)
        x = sdeint(lambda t, x: mu * x, lambda t, x: s * x, x0, ts, generator=torch.Generator().manual_seed(k))
        # replay the same Brownian increments: drift 0, diffusion 1 from 0 gives W_T exactly
        w = sdeint(lambda t, x: 0 * x, lambda t, x: 1.0, 0 * x0, ts, generator=torch.Generator().manual_seed(k))
        exact = torch.exp((mu - s**2 / 2) + s * w)
        errors.append((x - exact).abs().mean().item())
    slope = np.polyfit(np.log(1.0 / np.array(steps)), np.log(errors), 1)[0]
    assert abs(slope - 0.5) < 0.2, (slope, errors)


def test_reverse_time_brownian_motion(f64):
    """Decreasing ts use sqrt(|dt|): Brownian motion run from t = 1 back to 0 has variance 1."""
    n = 20000
    x = sdeint(lambda t, x: 0 * x, lambda t, x: 1.0, torch.zeros(n, 1), torch.linspace(1.0, 0.0, 51),
               generator=torch.Generator().manual_seed(3))
    assert abs(x.var().item() - 1.0) < 4 * math.sqrt(2 / (n - 1))


def test_same_generator_same_bits():
    def run(seed):
        return sdeint(lambda t, x: -x, lambda t, x: 0.5, torch.ones(16, 3), torch.linspace(0, 1, 11),
                      generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_diffusion_shapes_are_equivalent(f64):
    """A number, a 0-dim tensor, a (B,) tensor and an x-shaped tensor give the same path."""
    x0 = torch.ones(4, 2, 3)
    ts = torch.linspace(0.0, 1.0, 6)
    outs = [
        sdeint(lambda t, x: -x, diffusion, x0, ts, generator=torch.Generator().manual_seed(0))
        for diffusion in (
            lambda t, x: 0.7,
            lambda t, x: torch.tensor(0.7),
            lambda t, x: torch.full((x.shape[0],), 0.7),
            lambda t, x: torch.full_like(x, 0.7),
        )
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=0)
    per_sample = sdeint(lambda t, x: 0 * x, lambda t, x: torch.tensor([0.0, 1.0, 0.0, 1.0]), x0, ts,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(per_sample[0], x0[0]) and not torch.equal(per_sample[1], x0[1])


def test_step_formula(f64):
    x = torch.tensor([[1.0, 2.0]])
    noise = torch.tensor([[0.5, -1.0]])
    dt = torch.tensor(-0.25)
    out = euler_maruyama_step(lambda t, x: 3 * x, lambda t, x: 2.0, torch.tensor(1.0), x, dt, noise)
    torch.testing.assert_close(out, x + 3 * x * dt + 2.0 * 0.5 * noise)


def test_callback_and_corrector_hook(f64):
    seen, corrected_at = [], []

    def corrector(t, x, *, generator):
        corrected_at.append(t.item())
        return x + 1

    ts = torch.linspace(0.0, 1.0, 5)
    out = sdeint(lambda t, x: 0 * x, lambda t, x: 0.0, torch.zeros(2, 2), ts, callback=seen.append,
                 corrector=corrector, generator=torch.Generator())
    torch.testing.assert_close(out, torch.full((2, 2), 4.0))
    assert corrected_at == pytest.approx(ts[1:].tolist())
    assert [d["i"] for d in seen] == [0, 1, 2, 3] and torch.equal(seen[-1]["x"], out)


def test_errors():
    x0 = torch.ones(2, 2)
    ts = torch.linspace(0, 1, 3)
    drift = lambda t, x: -x  # noqa: E731
    valid = ", ".join(repr(m) for m in SDE_STEPPERS)
    with pytest.raises(ValueError, match=f"method must be one of {valid}; got 'milstein'"):
        sdeint(drift, lambda t, x: 1.0, x0, ts, method="milstein")
    with pytest.raises(ValueError, match=r"diffusion must return a scalar, a \(2,\) tensor"):
        sdeint(drift, lambda t, x: torch.ones(3), x0, ts)
    with pytest.raises(TypeError, match="diffusion must return a number or a tensor"):
        sdeint(drift, lambda t, x: "1", x0, ts)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sdeint(drift, lambda t, x: 1.0, x0, ts, generator=0)
    with pytest.raises(ValueError, match="ts must hold at least 2 times"):
        sdeint(drift, lambda t, x: 1.0, x0, ts[:1])
    with pytest.raises(ValueError, match="ts must have 1 dimensions"):
        sdeint(drift, lambda t, x: 1.0, x0, ts[None])
    with pytest.raises(TypeError, match="x0 must be a floating-point tensor"):
        sdeint(drift, lambda t, x: 1.0, torch.ones(2, dtype=torch.long), ts)
    with pytest.raises(TypeError, match="callback must be callable"):
        sdeint(drift, lambda t, x: 1.0, x0, ts, callback=1)
    with pytest.raises(TypeError, match="corrector must be callable"):
        sdeint(drift, lambda t, x: 1.0, x0, ts, corrector="langevin")
