"""Rectified flow: losses, pairs, straightness and reflow against float64 closed forms, and a moons pipeline.

Closed forms used (``x0 ~ N(0, I)`` at ``t = 0``, data at ``t = 1``):

- ``v = a x`` (exponential field): the Euler trajectory is ``Z_k = r^k Z0``, ``r = 1 + a/N``, so the Euler
  straightness is ``mean‖Z0‖² a² (1/N) Σ_k (r^k - mean_j r^j)²`` exactly, and the ODE's is
  ``mean‖Z0‖² (a (e^{2a} - 1)/2 - (e^a - 1)²)`` (``S = ∫ E‖v‖² dt - E‖Z1 - Z0‖²`` for an exact flow).
- Data ``N(m, s² I)``, independent coupling: the 1-rectified flow is ``u(x, t) = m + (t s² - (1 - t))/C_t (x - t m)``,
  ``C_t = (1 - t)² + t² s²``, whose trajectories are ``Z_t = t m + g(t) Z0``, ``g = √C_t``. They are CURVED
  (``g`` is not affine in ``t``, even for ``s = 1``), with ``S = d (∫_0^1 g'² dt - (s - 1)²) > 0`` for whitened
  noise. The flow map is ``Z1 = m + s Z0`` (affine), so the reflow pairs are ``(z, m + s z)``; the
  2-rectified flow fitted on them is ``v2(x, t) = m + (s - 1)(x - t m)/(1 - t + t s)`` -- constant along the
  straight lines ``x_t = t m + (1 - t + t s) z``: S = 0 and one Euler step is exact. So one reflow makes the
  Gaussian flow exactly straight.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import quad

from edifice.data import toy2d
from edifice.generative import flow_matching as fm
from edifice.generative import rectified_flow as rf
from edifice.metrics import w2

F64 = torch.float64
M, S = torch.tensor([1.0, -2.0, 0.5], dtype=F64), 0.5


def whitened_noise(n, d, seed=0):
    """Noise whose empirical mean is exactly 0 and empirical covariance (1/n) exactly I."""
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / n)
    return torch.linalg.solve_triangular(chol, z.T, upper=False).T


def rf1_field(m, s):
    """Exact 1-rectified flow from N(0, I) to N(m, s² I)."""
    def v(x, t):
        t = t.to(x.dtype)[:, None]
        c = (1 - t) ** 2 + t**2 * s**2
        return m + (t * s**2 - (1 - t)) / c * (x - t * m)
    return v


def rf2_field(m, s):
    """Exact 2-rectified flow: the velocity of the straight interpolations of the pairs (z, m + s z)."""
    def v(x, t):
        t = t.to(x.dtype)[:, None]
        return m + (s - 1) * (x - t * m) / (1 - t + t * s)
    return v


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        return self.fn(x, t)


def small_net(dtype=F64):
    torch.manual_seed(0)
    return rf.build(data_shape=(2,), hidden=16, depth=1).to(dtype)


# ------------------------------------------------------------------------------------------------ losses


@given(st.integers(1, 6), st.integers(1, 3), st.integers(0, 2**16))
def test_loss_is_straight_path_regression(b, d, seed):
    g = torch.Generator().manual_seed(seed)
    x0, x1 = torch.randn(b, d, generator=g, dtype=F64), torch.randn(b, d, generator=g, dtype=F64)
    t = torch.rand(b, generator=g, dtype=F64)
    field = lambda x, t: torch.sin(x) * (1 + t[:, None])  # noqa: E731
    want = (field(t[:, None] * x1 + (1 - t[:, None]) * x0, t) - (x1 - x0)).square().mean()
    got, logs = rf.loss(field, x1, noise=x0, t=t)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-14) and logs["loss"] == got
    assert torch.equal(got, fm.loss(field, x1, noise=x0, t=t, sigma_min=0.0)[0])
    r, _ = rf.reflow_loss(field, x0, x1, t=t)
    assert torch.allclose(r, want, rtol=1e-12, atol=1e-14)
    # distillation is the reflow regression at t = 0 only.
    dl, dlogs = rf.distill_loss(field, x0, x1)
    assert torch.allclose(dl, rf.reflow_loss(field, x0, x1, t=0.0)[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(dl, (x0 + field(x0, torch.zeros(b, dtype=F64)) - x1).square().mean(), rtol=1e-12)
    assert not dlogs["loss"].requires_grad


def test_losses_backprop_and_use_generator_and_cond():
    net = small_net()
    x1 = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    a, _ = rf.loss(net, x1, generator=torch.Generator().manual_seed(3))
    b, _ = rf.loss(net, x1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.backward()
    assert all(p.grad is not None for p in net.parameters())
    x0 = torch.randn(8, 2, dtype=F64)
    r1, _ = rf.reflow_loss(net, x0, x1, generator=torch.Generator().manual_seed(4))
    r2, _ = rf.reflow_loss(net, x0, x1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(r1, r2) and r1.requires_grad
    seen = {}

    def cond_field(x, t, y=None):
        seen["y"] = y
        return torch.zeros_like(x)

    y = torch.arange(8)
    for call in (lambda: rf.loss(cond_field, x1, cond={"y": y}),
                 lambda: rf.reflow_loss(cond_field, x0, x1, cond={"y": y}),
                 lambda: rf.distill_loss(cond_field, x0, x1, cond={"y": y})):
        seen.clear()
        call()
        assert seen["y"] is y


def test_distill_loss_zero_at_the_pair_map():
    x0 = whitened_noise(64, 3)
    x1 = M + S * x0
    value, _ = rf.distill_loss(rf2_field(M, S), x0, x1)
    assert value.item() < 1e-28
    assert rf.distill_loss(rf1_field(M, S), x0, x1)[0].item() > 0.1  # the 1-RF's first Euler step overshoots


# --------------------------------------------------------------------------------------------- straightness


@given(st.floats(-3, 3), st.floats(-3, 3), st.integers(1, 40))
def test_straightness_of_constant_field_is_exactly_zero(c0, c1, steps):
    c = torch.tensor([c0, c1], dtype=F64)
    noise = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(steps))
    value = rf.straightness(lambda x, t: c.expand_as(x), (5, 2), steps=steps, noise=noise)
    assert value.shape == () and value.dtype == F64 and value.item() == 0.0


def test_straightness_of_point_mass_field_is_zero():
    # v = (3 - x)/(1 - t): straight lines from each x0 to 3, constant speed; Euler is exact.
    noise = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    value = rf.straightness(lambda x, t: (3.0 - x) / (1 - t[:, None]), (16, 2), steps=50, noise=noise)
    assert abs(value.item()) < 1e-20


@given(st.floats(-2.0, 2.0), st.integers(1, 50))
def test_straightness_of_exponential_field_matches_discrete_closed_form(a, steps):
    noise = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(steps))
    value = rf.straightness(lambda x, t: a * x, (7, 3), steps=steps, noise=noise)
    r = (1 + a / steps) ** torch.arange(steps, dtype=F64)  # Z_k / Z_0
    want = noise.square().sum(1).mean() * a**2 * (r - r.mean()).square().mean()
    assert torch.allclose(value, want, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("a", [-1.5, 0.7, 2.0])
def test_straightness_of_exponential_field_converges_to_ode_value(a):
    noise = whitened_noise(32, 2)
    exact = 2 * (a * (math.exp(2 * a) - 1) / 2 - (math.exp(a) - 1) ** 2)  # mean‖z‖² = d = 2
    errs = [abs(rf.straightness(lambda x, t: a * x, (32, 2), steps=n, noise=noise).item() - exact) for n in (200, 400)]
    assert exact > 0.05 and errs[1] < 0.02 * exact and 1.7 < errs[0] / errs[1] < 2.3  # first order in 1/N


def test_straightness_of_gaussian_1rf_matches_quadrature():
    # The 1-RF of Gaussians is curved: S = d (∫ g'² dt - (s - 1)²), g = √((1 - t)² + t² s²).
    d = M.numel()
    integral, _ = quad(lambda t: (t * S**2 - (1 - t)) ** 2 / ((1 - t) ** 2 + t**2 * S**2), 0.0, 1.0, epsabs=1e-13)
    exact = d * (integral - (S - 1) ** 2)
    noise = whitened_noise(64, d)
    value = rf.straightness(rf1_field(M, S), (64, d), steps=1000, noise=noise).item()
    assert exact > 0.1 and abs(value - exact) < 1e-2 * exact, (value, exact)
    # s = 1, m = 0: data == noise in law, Z1 = Z0, yet the path shrinks and grows back: S > 0.
    zero = torch.zeros(d, dtype=F64)
    integral1, _ = quad(lambda t: (2 * t - 1) ** 2 / (1 - 2 * t + 2 * t**2), 0.0, 1.0, epsabs=1e-13)
    v1 = rf.straightness(rf1_field(zero, 1.0), (64, d), steps=1000, noise=noise).item()
    assert abs(v1 - d * integral1) < 1e-2 * d * integral1


@given(st.integers(1, 30), st.floats(-2.0, 2.0))
def test_path_straightness_of_euler_trajectory_equals_straightness(steps, a):
    field = lambda x, t: a * x + torch.cos(3 * t)[:, None] * x.flip(1)  # noqa: E731
    noise = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(steps))
    states = [noise]
    fm.sample(field, (6, 2), steps=steps, noise=noise, callback=lambda info: states.append(info["x"]))
    want = rf.straightness(field, (6, 2), steps=steps, noise=noise)
    assert torch.allclose(rf.path_straightness(states), want, rtol=1e-8, atol=1e-12)
    assert torch.allclose(rf.path_straightness(torch.stack(states)), want, rtol=1e-8, atol=1e-12)


def test_path_straightness_of_straight_lines_and_images():
    z0, z1 = torch.randn(4, 1, 2, 2, dtype=F64), torch.randn(4, 1, 2, 2, dtype=F64)
    ts = torch.linspace(0, 1, 9, dtype=F64)
    line = torch.stack([(1 - t) * z0 + t * z1 for t in ts])  # (9, 4, 1, 2, 2) constant speed
    assert rf.path_straightness(line).item() < 1e-25
    # uneven speed along a straight line is not straight in Liu et al.'s sense (t² parametrisation):
    quad_line = torch.stack([(1 - t**2) * z0 + t**2 * z1 for t in ts])
    want = (z1 - z0).flatten(1).square().sum(1).mean() * ((2 * ts[:-1] + 1 / 8) - 1).square().mean()
    assert torch.allclose(rf.path_straightness(quad_line), want, rtol=1e-10)


# ---------------------------------------------------------------------------------- reflow oracle (Gaussian)


def test_reflow_of_gaussian_pairs_is_exactly_straight():
    noise = whitened_noise(256, 3)
    x0, x1 = rf.make_pairs(rf1_field(M, S), (256, 3), steps=50, method="rk4", noise=noise)
    assert torch.equal(x0, noise) and x0.dtype == F64
    assert (x1 - (M + S * noise)).abs().max().item() < 1e-8  # the 1-RF flow map is z -> m + s z
    t = torch.rand(256, dtype=F64, generator=torch.Generator().manual_seed(1))
    # The 2-RF field fits the pairs' straight interpolations exactly (the reflow loss is 0, its minimum) ...
    assert rf.reflow_loss(rf2_field(M, S), x0, x1, t=t)[0].item() < 1e-15
    assert rf.reflow_loss(rf1_field(M, S), x0, x1, t=t)[0].item() > 1e-2  # ... the 1-RF does not
    # ... and is straight: S = 0, and one Euler step lands on the pairs' end points.
    assert abs(rf.straightness(rf2_field(M, S), (256, 3), steps=20, noise=noise).item()) < 1e-24
    assert rf.straightness(rf1_field(M, S), (256, 3), steps=20, noise=noise).item() > 0.1
    one = Counter(rf2_field(M, S))
    assert (rf.sample(one, (256, 3), steps=1, noise=noise) - (M + S * noise)).abs().max().item() < 1e-12
    assert one.calls == 1


# ------------------------------------------------------------------------------------- pairs and sampling


def test_make_pairs_and_sample_delegate_to_flow_matching():
    net = small_net(torch.float32)
    g = torch.Generator().manual_seed(5)
    x0, x1 = rf.make_pairs(net, (16, 2), steps=4, method="heun", generator=g)
    assert x0.shape == x1.shape == (16, 2) and x1.dtype == torch.float32
    assert not x0.requires_grad and not x1.requires_grad
    x0b, x1b = rf.make_pairs(net, (16, 2), steps=4, method="heun", generator=torch.Generator().manual_seed(5))
    assert torch.equal(x0, x0b) and torch.equal(x1, x1b)
    assert torch.equal(torch.randn(16, 2, generator=torch.Generator().manual_seed(5)), x0)
    with torch.no_grad():
        assert torch.equal(x1, fm.sample(net, (16, 2), steps=4, method="heun", noise=x0))
    out = rf.sample(net, (16, 2), steps=1, noise=x0)
    assert not out.requires_grad
    with torch.no_grad():
        assert torch.allclose(out, x0 + net(x0, torch.zeros(16)))
    counter = Counter(lambda x, t: torch.zeros_like(x))
    rf.straightness(counter, (3, 2), steps=7, generator=g)
    assert counter.calls == 7
    assert rf.straightness(net, (3, 2), steps=2).requires_grad is False


@pytest.mark.parametrize("call,exc,match", [
    (lambda: rf.build(data_shape=(0,)), ValueError, "data_shape must be"),
    (lambda: rf.build(data_shape=(2, 3)), ValueError, "data_shape must be"),
    (lambda: rf.build(data_shape=(2,), hidden=0), ValueError, "hidden must be"),
    (lambda: rf.loss(Counter(torch.sin), torch.zeros(4)), ValueError, "x1 must be a batch"),
    (lambda: rf.loss(Counter(torch.sin), torch.zeros(4, 2), time_dist="beta"), ValueError, "time_dist must be one of"),
    (lambda: rf.loss(Counter(torch.sin), torch.zeros(4, 2), noise=torch.zeros(4, 3)), ValueError,
     "noise must have shape"),
    (lambda: rf.loss(Counter(torch.sin), torch.zeros(4, 2), generator=1), TypeError, "generator must be"),
    (lambda: rf.make_pairs(Counter(torch.sin), (4, 2), steps=0), ValueError, "steps must be a positive int"),
    (lambda: rf.make_pairs(Counter(torch.sin), (4, 2), method="leapfrog"), ValueError, "method must be one of"),
    (lambda: rf.make_pairs(3, (4, 2)), TypeError, "net must be callable"),
    (lambda: rf.make_pairs(Counter(torch.sin), (0, 2)), ValueError, "shape must be"),
    (lambda: rf.make_pairs(Counter(torch.sin), (4, 2), noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
    (lambda: rf.reflow_loss(Counter(torch.sin), torch.zeros(4, 3), torch.zeros(4, 2)), ValueError,
     "x0 and x1 must have the same shape"),
    (lambda: rf.reflow_loss(Counter(torch.sin), [0.0], torch.zeros(4, 2)), TypeError, "x0 must be a torch.Tensor"),
    (lambda: rf.reflow_loss(Counter(torch.sin), torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2)), TypeError,
     "x0 must be a floating"),
    (lambda: rf.reflow_loss(Counter(torch.sin), torch.zeros(4), torch.zeros(4)), ValueError, "x1 must be a batch"),
    (lambda: rf.reflow_loss(Counter(torch.sin), torch.zeros(4, 2), torch.zeros(4, 2), t=torch.zeros(3)), ValueError,
     "t must have shape"),
    (lambda: rf.distill_loss(Counter(torch.sin), torch.zeros(4, 2), torch.zeros(5, 2)), ValueError,
     "x0 and x1 must have the same shape"),
    (lambda: rf.distill_loss(lambda x, t: x[:, :1], torch.zeros(4, 2), torch.zeros(4, 2)), ValueError,
     "net must return a velocity shaped like x"),
    (lambda: rf.distill_loss(Counter(torch.sin), torch.zeros(4, 2), torch.zeros(4, 2), cond=[1]), TypeError,
     "cond must be a mapping"),
    (lambda: rf.straightness(Counter(torch.sin), (4, 2), steps=0), ValueError, "steps must be a positive int"),
    (lambda: rf.straightness(Counter(torch.sin), (4, 2), steps=1.5), TypeError, "steps must be an int"),
    (lambda: rf.straightness(Counter(torch.sin), (4, 2), generator="g"), TypeError, "generator must be"),
    (lambda: rf.straightness(Counter(torch.sin), (4, 2), noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
    (lambda: rf.straightness(lambda x, t: t, (4, 2)), ValueError, "net must return a velocity"),
    (lambda: rf.path_straightness([torch.zeros(4, 2)]), ValueError, "trajectory must hold at least 2 states"),
    (lambda: rf.path_straightness([torch.zeros(4, 2), torch.zeros(4, 3)]), ValueError, "of one shape"),
    (lambda: rf.path_straightness([torch.zeros(4, 2), "x"]), TypeError, r"trajectory\[1\] must be a torch.Tensor"),
    (lambda: rf.path_straightness(torch.zeros(1, 4, 2)), ValueError, "trajectory must have shape"),
    (lambda: rf.path_straightness(torch.zeros(3, 4)), ValueError, "trajectory must have shape"),
    (lambda: rf.path_straightness("x"), TypeError, "trajectory must be a torch.Tensor"),
    (lambda: rf.sample(Counter(torch.sin), (4, 2), steps=0), ValueError, "steps must be a positive int"),
    (lambda: rf.sample(Counter(torch.sin), (4, 2), dtype=torch.int32), TypeError, "dtype must be a floating"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------ learning


def _fit(net, steps, batch_loss, g):
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(steps):
        value, _ = batch_loss(g)
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
    return net.eval()


def _gelbrich(x, y):
    """Gelbrich's lower bound on W2: ``W2² >= ‖m_x - m_y‖² + ‖Σ_x^{1/2} - Σ_y^{1/2}‖_F²`` (any two laws).

    Used for the collapsed 1-RF one-step samples, where the exact Hungarian W2 at n = 2000 takes 10-40 s
    (the 1000-point exact W2 was measured 1.86 against this bound's 1.81)."""
    def root(c):
        lam, q = torch.linalg.eigh(c)
        return q @ torch.diag(lam.clamp(min=0).sqrt()) @ q.T
    x, y = x.double(), y.double()
    cx, cy = torch.cov(x.T, correction=0), torch.cov(y.T, correction=0)
    return float(((x.mean(0) - y.mean(0)).square().sum() + (root(cx) - root(cy)).square().sum()).sqrt())


def test_reflow_straightens_and_distillation_gives_one_step_moons():
    # Measured (1 thread): untrained 1-step W2 0.887; 1-RF at 100 Euler steps 0.161, at 1 step
    # collapsed (Gelbrich bound 1.81, FACTS ≈ 1.85); straightness 1.20 -> 0.0007 after one reflow
    # (4096 pairs); 2-RF 1 step 0.186, 2 steps 0.177; distilled 1 step 0.176 (two fresh moons samples: ≈ 0.09).
    n1, n2, n3, n_pairs = 600, 400, 200, 4096
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # initialisation only
    net1 = rf.build(data_shape=(2,), hidden=128, depth=3)
    _fit(net1, n1, lambda g: rf.loss(net1, toy2d.sample("moons", 256, generator=g), generator=g), g)

    test = toy2d.sample("moons", 2000, generator=torch.Generator().manual_seed(123))
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))
    teacher = float(w2(rf.sample(net1, (2000, 2), steps=100, noise=z), test))
    rf1_one = _gelbrich(rf.sample(net1, (2000, 2), steps=1, noise=z), test)
    s1 = float(rf.straightness(net1, (500, 2), steps=32, noise=z[:500]))

    # Reflow: fine-tune a copy on the 1-RF's pairs (solved with rk4, 8 steps).
    x0, x1 = rf.make_pairs(net1, (n_pairs, 2), steps=8, method="rk4", generator=g)
    net2 = copy.deepcopy(net1)

    def reflow_batch(g):
        i = torch.randint(0, n_pairs, (256,), generator=g)
        return rf.reflow_loss(net2, x0[i], x1[i], generator=g)

    _fit(net2, n2, reflow_batch, g)
    s2 = float(rf.straightness(net2, (500, 2), steps=32, noise=z[:500]))
    rf2_one = float(w2(rf.sample(net2, (2000, 2), steps=1, noise=z), test))
    rf2_two = float(w2(rf.sample(net2, (2000, 2), steps=2, noise=z), test))

    # Distillation: fine-tune a copy of the 2-RF on its own pairs (straight: 8 Euler steps suffice) at t = 0.
    y0, y1 = rf.make_pairs(net2, (n_pairs, 2), steps=8, method="euler", generator=g)
    net3 = copy.deepcopy(net2)

    def distill_batch(g):
        i = torch.randint(0, n_pairs, (256,), generator=g)
        return rf.distill_loss(net3, y0[i], y1[i])

    _fit(net3, n3, distill_batch, g)
    distilled = float(w2(rf.sample(net3, (2000, 2), steps=1, noise=z), test))

    torch.manual_seed(1)
    fresh = rf.build(data_shape=(2,), hidden=128, depth=3)
    with torch.no_grad():  # a fresh net has a zero output layer: give the untrained net a real output
        for p in fresh.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    untrained = float(w2(rf.sample(fresh.eval(), (2000, 2), steps=1, noise=z), test))
    print(f"RF moons: untrained {untrained:.3f}; 1-RF 100 steps {teacher:.3f}, 1 step >= {rf1_one:.3f}; "
          f"S {s1:.4f} -> {s2:.4f}; 2-RF 1/2 steps {rf2_one:.3f}/{rf2_two:.3f}; distilled 1 step {distilled:.3f}")

    assert untrained > 0.7 and teacher < 0.3
    assert rf1_one > 1.2  # one Euler step of the curved 1-RF collapses towards the mean
    assert s1 > 0.3 and s2 < s1 / 10  # reflow straightens (measured ~1700x)
    assert rf2_one < 0.3 and rf2_one < 0.25 * rf1_one and rf2_one < 0.35 * untrained
    assert rf2_two < 0.3
    assert distilled < 0.3 and distilled < 1.6 * teacher and distilled < 0.35 * untrained
