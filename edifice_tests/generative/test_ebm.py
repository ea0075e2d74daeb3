"""Energy-based models: SGLD against the Gaussian closed form, the loss gradient, buffer mechanics, JEM, learning.

Closed forms used:

- SGLD on ``E(x) = ‖x - μ‖² / (2 s²)`` with step ``ε`` and noise ``σ`` is the linear recursion
  ``x_{k+1} = μ + r (x_k - μ) + σ z``, ``r = 1 - ε / s²``. From a fixed start ``x_0`` the chain is Gaussian with
  mean ``μ + r^k (x_0 - μ)`` and variance ``σ² (1 - r^{2k}) / (1 - r²)``. With ``σ = √(2ε)`` the stationary
  variance is ``s² / (1 - ε / (2 s²)) = s² + ε/2 + O(ε²)``: the mean is exact, the variance has an ``O(ε)`` bias
  (the unadjusted Langevin algorithm has no Metropolis correction).
- For the quadratic energy ``E_θ(x) = θ q(x)``, ``q = ‖x‖² / 2``, the loss
  ``mean E(x⁺) - mean E(x⁻) + α (mean E(x⁺)² + mean E(x⁻)²)`` has the derivative
  ``mean q⁺ - mean q⁻ + 2 α θ (mean q⁺² + mean q⁻²)`` in ``θ``: with data near 0 and negatives far away it is
  negative, so a gradient step raises ``θ`` -- the data's energy goes down relative to the negatives'.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from edifice import metrics
from edifice.data import toy2d
from edifice.generative import ebm

F64 = torch.float64


def gaussian_energy(mu, s):
    return lambda x: (x - mu).square().sum(dim=1) / (2 * s**2)


class Quadratic(torch.nn.Module):
    """``E_θ(x) = θ ‖x‖² / 2`` with one learnable ``θ``."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta, dtype=F64))

    def forward(self, x):
        return self.theta * 0.5 * x.square().sum(dim=1)


# -- SGLD ---------------------------------------------------------------------------------------------------------

@given(eps=st.floats(1e-3, 0.5), sigma=st.floats(0.0, 2.0), seed=st.integers(0, 100))
def test_langevin_step_is_the_sgld_update(eps, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    x, grad, z = (torch.randn(3, 2, generator=g, dtype=F64) for _ in range(3))
    out = ebm.langevin_step(x, grad, eps, sigma, z)
    torch.testing.assert_close(out, x - eps * grad + sigma * z, rtol=0, atol=1e-15)


@settings(max_examples=10)
@given(mu=st.floats(-2.0, 2.0), s=st.floats(0.3, 2.0), ratio=st.floats(0.05, 0.5), steps=st.integers(1, 40),
       cold=st.booleans())
def test_langevin_gaussian_energy_matches_the_linear_recursion(mu, s, ratio, steps, cold):
    eps = ratio * s**2  # r = 1 - ratio in (0.5, 0.95)
    sigma = 0.3 * math.sqrt(2 * eps) if cold else math.sqrt(2 * eps)
    n, x0 = 20000, mu + 1.5
    x = ebm.langevin(gaussian_energy(mu, s), torch.full((n, 1), x0, dtype=F64), steps=steps, step_size=eps,
                     noise_scale=sigma, generator=torch.Generator().manual_seed(0))
    r = 1 - eps / s**2
    mean = mu + r**steps * (x0 - mu)
    var = sigma**2 * (1 - r ** (2 * steps)) / (1 - r**2)
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n) + 1e-12
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / n) + 1e-12


def test_langevin_reaches_the_gaussian_with_an_o_eps_variance_bias(f64):
    mu, s = torch.tensor([1.0, -0.5], dtype=F64), 0.7
    for eps in (0.02, 0.1):
        x = ebm.langevin(gaussian_energy(mu, s), torch.zeros(20000, 2, dtype=F64), steps=300, step_size=eps,
                         noise_scale=math.sqrt(2 * eps), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(x.mean(0), mu, atol=0.03, rtol=0)
        stationary = s**2 / (1 - eps / (2 * s**2))  # s² + ε/2 + O(ε²)
        assert abs(float(x.var(0).mean()) - stationary) < 0.03 * stationary
        if eps == 0.1:  # the bias is visible: 0.49 -> 0.544
            assert float(x.var(0).mean()) > s**2 * 1.05


def test_langevin_is_pure_deterministic_and_runs_under_no_grad():
    nets = ebm.build(data_shape=(2,), hidden=8, depth=1)
    x = torch.randn(6, 2)
    kw = dict(steps=3, step_size=0.1, noise_scale=0.1)
    with torch.no_grad():
        a = ebm.langevin(nets.energy, x, generator=torch.Generator().manual_seed(0), **kw)
    b = ebm.langevin(nets.energy, x, generator=torch.Generator().manual_seed(0), **kw)
    c = ebm.langevin(nets.energy, x, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c) and not b.requires_grad
    assert all(p.grad is None for p in nets.energy.parameters())  # only ∇_x is taken
    assert torch.equal(ebm.langevin(nets.energy, x, steps=0, step_size=0.1, noise_scale=0.1), x)
    seen = []
    y = ebm.langevin(lambda z: 0 * z.sum(1), x, steps=4, step_size=1.0, noise_scale=5.0, clip=1.0,
                     callback=seen.append, generator=torch.Generator().manual_seed(0))
    assert [d["step"] for d in seen] == [0, 1, 2, 3] and y.abs().max() <= 1.0


# -- networks -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,sn", [((3,), False), ((1, 8, 8), True), ((3, 5, 7), False)])
def test_energy_network_shapes_and_jem_identities(shape, sn):
    torch.manual_seed(0)
    nets = ebm.build(data_shape=shape, num_classes=4, hidden=16, depth=2, base_channels=4, spectral_norm=sn,
                     buffer_size=8)
    nets.energy.eval()  # spectral norm's power iteration updates its estimate on every training-mode call
    assert isinstance(nets, ebm.EBM) and nets.energy.config["num_classes"] == 4
    x, y = torch.randn(5, *shape), torch.tensor([0, 1, 2, 3, 1])
    f = nets.energy.logits(x)
    assert f.shape == (5, 4)
    torch.testing.assert_close(nets.energy(x), -f.logsumexp(1))
    torch.testing.assert_close(nets.energy(x, y=y), -f[torch.arange(5), y])
    plain = ebm.build(data_shape=shape, hidden=16, depth=2, base_channels=4, buffer_size=8)
    assert plain.energy(x).shape == (5,)
    with pytest.raises(ValueError, match="logits needs a network built with num_classes"):
        plain.energy.logits(x)
    with pytest.raises(ValueError, match="y was given"):
        plain.energy(x, y=y)


# -- loss -----------------------------------------------------------------------------------------------------------

@given(theta=st.floats(0.1, 3.0), alpha=st.floats(0.0, 1.0), seed=st.integers(0, 50))
def test_loss_gradient_is_the_contrastive_formula_and_lowers_data_energy(theta, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    energy = Quadratic(theta)
    buffer = ebm.ReplayBuffer((2,), 8, init_scale=3.0).to(F64)
    x = 0.1 * torch.randn(8, 2, generator=g, dtype=F64)  # data near 0, negatives uniform on [-3, 3]²
    value, logs = ebm.loss(ebm.EBM(energy, buffer), x, sgld_steps=0, step_size=0.1, noise_scale=0.0, alpha=alpha,
                           generator=g)
    value.backward()
    neg = buffer.samples  # buffer_size == batch: every slot holds one negative (order does not matter)
    q_pos, q_neg = 0.5 * x.square().sum(1), 0.5 * neg.square().sum(1)
    expected = q_pos.mean() - q_neg.mean() + 2 * alpha * theta * (q_pos.square().mean() + q_neg.square().mean())
    torch.testing.assert_close(energy.theta.grad, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logs["cd"], theta * (q_pos.mean() - q_neg.mean()))
    if alpha == 0.0:
        assert energy.theta.grad < 0  # descent raises θ: data energy down relative to the negatives


def test_loss_on_a_network_pushes_data_energy_down_relative_to_fixed_negatives():
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(2,), hidden=32, depth=2, buffer_size=64, init_scale=3.0)
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.randn(64, 2, generator=g)
    value, logs = ebm.loss(nets, x, sgld_steps=0, step_size=0.1, noise_scale=0.0, alpha=0.0, generator=g)
    value.backward()
    with torch.no_grad():
        for p in nets.energy.parameters():
            p -= 1e-3 * p.grad
        gap = nets.energy(x).mean() - nets.energy(nets.buffer.samples).mean()
    assert gap < logs["cd"]


def test_ml_buffer_updates_the_buffer_in_place_and_cd_starts_at_the_data():
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(2,), hidden=16, depth=2, buffer_size=40)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g)
    ebm.loss(nets, x, sgld_steps=2, step_size=0.1, noise_scale=0.1, generator=g)
    assert int(nets.buffer.num_filled) == 16
    ebm.loss(nets, x, sgld_steps=2, step_size=0.1, noise_scale=0.1, generator=g)
    assert 16 < int(nets.buffer.num_filled) <= 32
    before = nets.buffer.samples.clone()
    value, logs = ebm.loss(nets, x, objective="cd", sgld_steps=0, step_size=0.1, noise_scale=0.1, alpha=0.5,
                           generator=g)
    assert torch.equal(nets.buffer.samples, before)  # cd does not use the buffer
    assert float(logs["cd"]) == 0.0  # zero steps from the data: the negatives are the data
    torch.testing.assert_close(value, 0.5 * 2 * nets.energy(x).square().mean())


def test_buffer_draw_and_push_mechanics():
    buf = ebm.ReplayBuffer((2,), 100, init_scale=2.0)
    g = torch.Generator().manual_seed(0)
    x0, idx = buf.draw(100, generator=g)  # empty: all uniform
    assert x0.abs().max() <= 2.0 and x0.abs().max() > 1.8 and sorted(idx.tolist()) == list(range(100))
    buf.push(idx, torch.full((100, 2), 7.0))
    assert int(buf.num_filled) == 100
    kept, _ = buf.draw(60, reinit_prob=0.0, generator=g)
    assert torch.equal(kept, torch.full((60, 2), 7.0))
    fresh, _ = buf.draw(60, reinit_prob=1.0, generator=g)
    assert fresh.abs().max() <= 2.0
    big = ebm.ReplayBuffer((1,), 4000)
    big.push(torch.arange(4000), torch.full((4000, 1), 9.0))
    mixed, _ = big.draw(4000, reinit_prob=0.3, generator=g)
    share = float((mixed != 9.0).float().mean())
    assert abs(share - 0.3) < 0.03
    other = ebm.ReplayBuffer((2,), 100, init_scale=2.0)
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.samples, buf.samples) and torch.equal(other.filled, buf.filled)


def test_jem_loss_is_cross_entropy_plus_the_generative_term():
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(2,), num_classes=3, hidden=16, depth=2, buffer_size=32)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 2, generator=g), torch.randint(0, 3, (16,), generator=g)
    value, logs = ebm.loss(nets, x, objective="jem", sgld_steps=2, step_size=0.1, noise_scale=0.01, generator=g,
                           cond={"y": y})
    torch.testing.assert_close(logs["ce"], F.cross_entropy(nets.energy.logits(x), y))
    gen = logs["cd"] + 0.1 * (nets.energy(x).square().mean() + nets.energy(nets.buffer.samples[
        nets.buffer.filled]).square().mean())
    torch.testing.assert_close(value.detach(), logs["ce"] + gen, rtol=1e-5, atol=1e-6)
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in nets.energy.parameters())
    with pytest.raises(ValueError, match="needs labels"):
        ebm.loss(nets, x, objective="jem", generator=g)
    plain = ebm.build(data_shape=(2,), hidden=16, depth=2, buffer_size=32)
    with pytest.raises(ValueError, match="num_classes"):
        ebm.loss(plain, x, objective="jem", cond={"y": y}, generator=g)


def test_conditional_ml_buffer_and_sampling_use_the_class_energy():
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(1, 8, 8), num_classes=3, hidden=16, depth=2, base_channels=4, buffer_size=16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g).clamp(-1, 1)
    y = torch.randint(0, 3, (16,), generator=g)
    value, _ = ebm.loss(nets, x, sgld_steps=2, clip=1.0, generator=g, cond={"y": y})
    value.backward()
    assert torch.isfinite(value)
    s = ebm.sample(nets, (4, 1, 8, 8), steps=3, clip=1.0, generator=g, cond={"y": y[:4]})
    assert s.shape == (4, 1, 8, 8) and s.abs().max() <= 1.0


@pytest.mark.parametrize("objective", ["dsm", "ssm", "nce"])
def test_score_matching_objectives_dispatch_to_ebm_losses(objective):
    ebm_losses = pytest.importorskip("edifice.generative.ebm_losses")
    assert hasattr(ebm_losses, f"{objective}_loss")
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(2,), hidden=16, depth=2, buffer_size=32)
    g = torch.Generator().manual_seed(0)
    value, logs = ebm.loss(nets, torch.randn(16, 2, generator=g), objective=objective, generator=g)
    value.backward()
    assert torch.isfinite(value) and "loss" in logs
    assert int(nets.buffer.num_filled) == 0
    jem = ebm.build(data_shape=(2,), num_classes=3, hidden=16, depth=2, buffer_size=32)
    y = torch.randint(0, 3, (16,), generator=g)
    value, _ = ebm.loss(jem, torch.randn(16, 2, generator=g), objective=objective, generator=g, cond={"y": y},
                        objective_kwargs={"n_projections": 2} if objective == "ssm" else None)
    assert torch.isfinite(value)


# -- sample ---------------------------------------------------------------------------------------------------------

def test_sample_is_deterministic_and_from_buffer_continues_the_chains():
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(2,), hidden=16, depth=2, buffer_size=20, init_scale=3.0)
    draw = lambda seed, **kw: ebm.sample(nets, (5, 2), steps=3, step_size=0.05, noise_scale=0.1,
                                         generator=torch.Generator().manual_seed(seed), **kw)
    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.dtype == torch.float32
    nets.buffer.push(torch.arange(20), torch.full((20, 2), 50.0))
    before = nets.buffer.samples.clone()
    far = draw(0, from_buffer=True)
    assert (far - 50).abs().max() < 5 and torch.equal(nets.buffer.samples, before)
    start = torch.zeros(5, 2)
    assert torch.equal(ebm.sample(nets, (5, 2), steps=0, noise=start), start)


# -- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(data_shape=(0,)), "data_shape"),
    (dict(data_shape=(2, 3)), "data_shape"),
    (dict(data_shape=(2,), hidden=0), "hidden"),
    (dict(data_shape=(2,), depth=0), "depth"),
    (dict(data_shape=(1, 8, 8), base_channels=0), "base_channels"),
    (dict(data_shape=(2,), num_classes=1), "num_classes"),
    (dict(data_shape=(2,), spectral_norm="yes"), "spectral_norm"),
    (dict(data_shape=(2,), buffer_size=0), "buffer_size"),
    (dict(data_shape=(2,), init_scale=0.0), "init_scale"),
])
def test_build_rejects_bad_options(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ebm.build(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(objective="mle"), "objective must be one of"),
    (dict(sgld_steps=-1), "sgld_steps"),
    (dict(step_size=0.0), "step_size"),
    (dict(noise_scale=-1.0), "noise_scale"),
    (dict(clip=0.0), "clip"),
    (dict(alpha=-0.1), "alpha"),
    (dict(reinit_prob=1.5), "reinit_prob"),
    (dict(objective_kwargs={"sigma": 0.1}), "objective_kwargs is only for"),
    (dict(objective="dsm", objective_kwargs=[1]), "objective_kwargs must be a mapping"),
    (dict(generator=0), "generator"),
])
def test_loss_rejects_bad_arguments(kw, match):
    nets = ebm.build(data_shape=(2,), hidden=8, depth=1, buffer_size=16)
    with pytest.raises((ValueError, TypeError), match=match):
        ebm.loss(nets, torch.randn(8, 2), sgld_steps=kw.pop("sgld_steps", 1), **kw)


def test_loss_and_sample_shape_errors():
    nets = ebm.build(data_shape=(2,), hidden=8, depth=1, buffer_size=8)
    with pytest.raises(ValueError, match="buffer_size must be >= the batch size 16, got buffer_size=8"):
        ebm.loss(nets, torch.randn(16, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        ebm.loss(nets, torch.randn(4, 3))
    with pytest.raises(ValueError, match="x must be a batch"):
        ebm.loss(nets, torch.randn(4))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        ebm.loss(nets, torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="energy must return energies of shape"):
        ebm.langevin(lambda z: z, torch.randn(4, 2), steps=1, step_size=0.1, noise_scale=0.1)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        ebm.sample(nets, (4, 2), steps=-1)
    with pytest.raises(TypeError, match="from_buffer"):
        ebm.sample(nets, (4, 2), from_buffer=1)
    with pytest.raises(ValueError, match="buffer_size must be >= the batch size"):
        ebm.sample(nets, (9, 2), from_buffer=True)
    with pytest.raises(ValueError, match="noise must have shape"):
        ebm.sample(nets, (4, 2), noise=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="shape must be"):
        ebm.sample(nets, (4, 3), from_buffer=True)
    with pytest.raises(TypeError, match="init_scale or noise"):
        ebm.sample(nets.energy, (4, 2))
    with pytest.raises(ValueError, match="grad must have shape"):
        ebm.langevin_step(torch.zeros(2, 2), torch.zeros(2, 3), 0.1, 0.1, torch.zeros(2, 2))


# -- learning -------------------------------------------------------------------------------------------------------

def covered(x: torch.Tensor) -> tuple[int, float]:
    """(modes holding >= 5% of ALL samples within 3 std, fraction of samples within 3 std of a mode)."""
    cov = metrics.mode_coverage(x.double(), metrics.EIGHT_GAUSSIANS_CENTRES, std=metrics.EIGHT_GAUSSIANS_STD)
    shares = cov["shares"] * cov["high_quality"]  # share of all samples (1/8 = 0.125 each when perfect)
    return int((shares >= 0.05).sum()), cov["high_quality"]


def test_learning_8gaussians_covers_the_modes():
    torch.manual_seed(0)
    nets = ebm.build(data_shape=(2,), hidden=64, depth=3, buffer_size=2000, init_scale=4.0)
    sgld = dict(step_size=0.01, noise_scale=math.sqrt(0.02))  # proper Langevin: σ = √(2ε)
    untrained = ebm.sample(nets, (1000, 2), steps=200, generator=torch.Generator().manual_seed(1), **sgld)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(nets.energy.parameters(), lr=2e-3, betas=(0.0, 0.999))
    for _ in range(300):
        value, _ = ebm.loss(nets, toy2d.sample("8gaussians", 128, generator=g), sgld_steps=20, generator=g, **sgld)
        opt.zero_grad()
        value.backward()
        opt.step()
    x = ebm.sample(nets, (1000, 2), steps=200, generator=torch.Generator().manual_seed(1), **sgld)
    (m0, hq0), (m1, hq1) = covered(untrained), covered(x)
    print(f"EBM 8gaussians: modes {m0} -> {m1}, within 3 std of a mode {hq0:.2f} -> {hq1:.2f}")
    assert m1 >= 6 and hq1 > 0.7
    assert m0 < 6 and hq0 < 0.4
