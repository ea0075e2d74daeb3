"""Consistency models: parameterisation, discretisation, losses and samplers against float64 Gaussian oracles.

Data ``x_0 ~ N(μ, diag(s²))`` has the exact denoiser ``D(x, σ) = μ + s²/(s² + σ²) (x - μ)``; the probability-flow
ODE ``dx/dσ = (x - D)/σ = σ (x - μ)/(s² + σ²)`` keeps ``(x - μ)/√(s² + σ²)`` constant, so the exact consistency
function (the ODE's end point at ``σ_min``) is ``f*(x, σ) = μ + (x - μ) √(s² + σ_min²)/√(s² + σ²)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from edifice.data import toy2d
from edifice.generative import consistency as cm
from edifice.generative import edm
from edifice.metrics import w2
from edifice.schedules import karras_sigmas

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
S = torch.tensor([1.0, 0.5], dtype=F64)
SMIN = 0.002


def gauss_denoiser(x, sigma):
    return MU + S**2 / (S**2 + sigma[:, None] ** 2) * (x - MU)


def exact_f(x, sigma):
    """The exact consistency function of N(MU, diag(S²)) with boundary at SMIN."""
    return MU + (x - MU) * ((S**2 + SMIN**2) / (S**2 + sigma[:, None] ** 2)).sqrt()


class Counter:
    def __init__(self, fn):
        self.fn, self.calls, self.sigmas = fn, 0, []

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        self.sigmas.append(sigma)
        return self.fn(x, sigma)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def data(n, seed=0):
    return MU + S * torch.randn(n, 2, generator=gen(seed), dtype=F64)


def perturbed(net, scale=0.3, seed=0):
    """Give a fresh net (zero-initialised output layers) a real output."""
    g = gen(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


# ------------------------------------------------------------------------------- parameterisation, network


@given(st.floats(1e-4, 1e3), st.floats(1e-4, 0.5), st.floats(0.05, 5.0))
def test_boundary_scalings_formulas(sigma, sigma_min, sd):
    s = torch.tensor([sigma, sigma_min], dtype=F64)
    c_skip, c_out = cm.boundary_scalings(s, sigma_min=sigma_min, sigma_data=sd)
    torch.testing.assert_close(c_skip[0], torch.tensor(sd**2 / ((sigma - sigma_min) ** 2 + sd**2), dtype=F64))
    torch.testing.assert_close(c_out[0], torch.tensor(sd * (sigma - sigma_min) / math.sqrt(sigma**2 + sd**2),
                                                      dtype=F64))
    assert c_skip[1] == 1.0 and c_out[1] == 0.0  # the boundary condition, exactly


@given(st.lists(st.floats(-50, 50), min_size=6, max_size=6), st.floats(1e-4, 0.5), st.floats(0.1, 5.0),
       st.sampled_from([torch.float32, F64]))
def test_consistency_model_is_the_identity_at_sigma_min_exactly(values, sigma_min, sd, dtype):
    torch.manual_seed(0)
    net = perturbed(cm.build(data_shape=(2,), hidden=16, depth=1, sigma_min=sigma_min, sigma_max=80.0,
                             sigma_data=sd)).to(dtype)
    x = torch.tensor(values, dtype=dtype).reshape(3, 2)
    assert torch.equal(net(x, sigma_min), x)
    sigma = torch.tensor([sigma_min, 1.0, sigma_min], dtype=dtype)
    out = net(x, sigma)
    assert torch.equal(out[[0, 2]], x[[0, 2]]) and not torch.equal(out[1], x[1])


def test_consistency_model_applies_the_parameterisation_to_its_backbone():
    torch.manual_seed(0)
    net = perturbed(cm.build(data_shape=(3,), hidden=16, depth=1, sigma_data=0.7, sigma_min=0.01, sigma_max=20.0))
    net = net.double()
    x, sigma = torch.randn(4, 3, dtype=F64), torch.tensor([0.01, 0.3, 2.0, 20.0], dtype=F64)
    c_skip, c_out = cm.boundary_scalings(sigma, sigma_min=0.01, sigma_data=0.7)
    c_in = 1 / (sigma**2 + 0.49).sqrt()
    want = c_skip[:, None] * x + c_out[:, None] * net.backbone(c_in[:, None] * x, sigma.log() / 4)
    torch.testing.assert_close(net(x, sigma), want)
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0.01, 20.0, 0.7)
    assert net.backbone.config["t_scale"] == 250.0
    other = cm.ConsistencyModel(**net.config).double()
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x, 0.3), net(x, torch.full((4,), 0.3, dtype=F64)))


def test_consistency_model_conditional_and_image():
    net = cm.build(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2), num_classes=3)
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 5.0]), y=torch.tensor([0, 2]))
    assert out.shape == (2, 1, 8, 8) and net.config["data_shape"] == [1, 8, 8]


@pytest.mark.parametrize("kw,err,match", [
    (dict(sigma_min=1.0, sigma_max=1.0), ValueError, "sigma_min must be < sigma_max"),
    (dict(sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min.*sigma_max"),
    (dict(sigma_min=0.0), ValueError, "sigma_min"),
    (dict(sigma_data=0.0), ValueError, "sigma_data"),
    (dict(hidden=0), ValueError, "hidden"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(data_shape=(0,)), ValueError, "data_shape"),
    (dict(data_shape=(2, 3)), ValueError, "data_shape"),
    (dict(data_shape=2), TypeError, "data_shape"),
])
def test_build_errors(kw, err, match):
    with pytest.raises(err, match=match):
        cm.build(**{"data_shape": (2,), **kw})


@pytest.mark.parametrize("call,err,match", [
    (lambda: cm.boundary_scalings([1.0]), TypeError, "sigma"),
    (lambda: cm.boundary_scalings(torch.ones(2), sigma_min=0.0), ValueError, "sigma_min"),
    (lambda: cm.boundary_scalings(torch.ones(2), sigma_data=-1.0), ValueError, "sigma_data"),
])
def test_boundary_scalings_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ------------------------------------------------------------------------------- discretisation, curriculum


@given(st.integers(2, 300), st.floats(1e-4, 0.5), st.floats(1.0, 200.0), st.floats(0.5, 10.0))
def test_sigmas_ascending_karras(n, lo, hi, rho):
    s = cm.sigmas(n, sigma_min=lo, sigma_max=hi, rho=rho)
    assert s.shape == (n,) and s.dtype == F64 and bool((s[1:] > s[:-1]).all())
    torch.testing.assert_close(s[[0, -1]], torch.tensor([lo, hi], dtype=F64))
    i = torch.arange(n, dtype=F64)
    want = (lo ** (1 / rho) + i / (n - 1) * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
    torch.testing.assert_close(s, want)


def test_curriculum_ict_values():
    # s0 = 10, s1 = 1280: ⌊log2 128⌋ + 1 = 8 stages of K' = 800 // 8 = 100 steps
    got = [cm.curriculum(k, 800) for k in (0, 99, 100, 199, 200, 699, 700, 799, 5000)]
    assert got == [11, 11, 21, 21, 41, 641, 1281, 1281, 1281]
    assert cm.curriculum(3, 2, s0=2, s1=8) == 9  # K' would be 0: clamped to 1


@given(st.integers(1, 5000), st.integers(1, 50), st.integers(0, 9), st.integers(0, 6000))
def test_curriculum_doubles_from_s0_to_s1(total, s0, extra, step):
    s1 = s0 * 2**extra + (extra % 3)  # not always a power-of-2 multiple
    stages = math.floor(math.log2(s1 / s0)) + 1
    k_prime = max(total // stages, 1)
    n = cm.curriculum(step, total, s0=s0, s1=s1)
    assert n == min(s0 * 2 ** (step // k_prime), s1) + 1
    assert cm.curriculum(0, total, s0=s0, s1=s1) == s0 + 1
    assert cm.curriculum(step + 1, total, s0=s0, s1=s1) >= n  # monotone
    if total >= stages:  # the last stage reached: at least s0 2^⌊log2(s1/s0)⌋ intervals, at most s1
        assert s0 * 2 ** (stages - 1) + 1 <= cm.curriculum(total - 1, total, s0=s0, s1=s1) <= s1 + 1
    assert cm.curriculum(10**9, total, s0=s0, s1=s1) == s1 + 1


@given(st.integers(2, 200), st.floats(-3.0, 2.0), st.floats(0.2, 4.0))
def test_index_probs_are_the_log_normal_mass_of_each_interval(n, p_mean, p_std):
    s = cm.sigmas(n)
    p = cm.index_probs(s, p_mean=p_mean, p_std=p_std)
    normal = torch.distributions.Normal(torch.tensor(p_mean, dtype=F64), torch.tensor(p_std, dtype=F64))
    mass = normal.cdf(s[1:].log()) - normal.cdf(s[:-1].log())
    assert p.shape == (n - 1,) and bool((p >= 0).all())
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(p, mass / mass.sum())


@given(st.lists(st.floats(-10, 10), min_size=4, max_size=4), st.lists(st.floats(-10, 10), min_size=4, max_size=4),
       st.floats(1e-4, 1.0))
def test_pseudo_huber_properties(a, b, c):
    a, b = torch.tensor(a, dtype=F64).reshape(2, 2), torch.tensor(b, dtype=F64).reshape(2, 2)
    d = cm.pseudo_huber(a, b, c=c)
    norm = (a - b).norm(dim=1)
    assert d.shape == (2,) and bool((d >= 0).all())
    torch.testing.assert_close(d, cm.pseudo_huber(b, a, c=c))
    assert bool((d <= norm + 1e-12).all()) and bool((d >= norm - c - 1e-12).all())
    torch.testing.assert_close(d, (norm**2 + c * c).sqrt() - c)
    assert bool((cm.pseudo_huber(a, a, c=c) == 0).all())


def test_pseudo_huber_default_c_and_quadratic_regime():
    a = torch.zeros(3, 1, 4, 4, dtype=F64)
    b = torch.full_like(a, 1e-7)
    c = 0.00054 * math.sqrt(16)
    torch.testing.assert_close(cm.pseudo_huber(a, b), torch.full((3,), 16e-14 / (2 * c), dtype=F64), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("call,err,match", [
    (lambda: cm.sigmas(1), ValueError, "n must be an int >= 2"),
    (lambda: cm.sigmas(5, sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_min must be < sigma_max"),
    (lambda: cm.sigmas(5, rho=0.0), ValueError, "rho"),
    (lambda: cm.curriculum(-1, 10), ValueError, "step"),
    (lambda: cm.curriculum(0, 0), ValueError, "total_steps"),
    (lambda: cm.curriculum(0, 10, s0=0), ValueError, "s0"),
    (lambda: cm.curriculum(0, 10, s0=20, s1=10), ValueError, "s1 must be >= s0"),
    (lambda: cm.curriculum(1.5, 10), TypeError, "step"),
    (lambda: cm.index_probs(torch.tensor([1.0, 0.5])), ValueError, "sigmas"),
    (lambda: cm.index_probs(torch.tensor([1.0])), ValueError, "sigmas"),
    (lambda: cm.index_probs(torch.ones(2, 2)), ValueError, "sigmas"),
    (lambda: cm.index_probs(cm.sigmas(4), p_std=0.0), ValueError, "p_std"),
    (lambda: cm.pseudo_huber(torch.ones(2, 3), torch.ones(2, 2)), ValueError, "b must have shape"),
    (lambda: cm.pseudo_huber(torch.ones(2, 3), torch.ones(2, 3), c=0.0), ValueError, "c must be"),
    (lambda: cm.pseudo_huber(torch.ones(3), torch.ones(3)), ValueError, "batches"),
])
def test_discretisation_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


# ------------------------------------------------------------------------------- consistency training


def test_loss_equals_the_weighted_consistency_gap():
    x, z = data(6, 1), data(6, 2) - MU
    net = lambda v, s: 0.9 * v + 0.1 * s[:, None]  # noqa: E731
    index = torch.tensor([0, 1, 2, 3, 9, 5])
    for metric in ("pseudo_huber", "l2"):
        value, logs = cm.loss(net, x, step=0, noise=z, index=index, metric=metric, c=0.01)
        s = cm.sigmas(11)  # step 0: N = s0 + 1
        lo, hi = s[index][:, None], s[index + 1][:, None]
        gap = ((net(x + hi * z, hi[:, 0]) - net(x + lo * z, lo[:, 0])) ** 2).sum(1)
        d = (gap + 1e-4).sqrt() - 0.01 if metric == "pseudo_huber" else gap
        torch.testing.assert_close(value, (d / (hi - lo)[:, 0]).mean())
        assert torch.equal(logs["loss"], value) and not logs["loss"].requires_grad
        assert logs["num_scales"] == 11


def test_loss_follows_the_curriculum_and_the_net_range():
    net = Counter(lambda v, s: v)
    cm.loss(net, data(4), step=700, total_steps=800, sigma_min=0.01, sigma_max=10.0, generator=gen(),
            index=torch.tensor([0, 1, 1279, 1279]))
    lo, hi = net.sigmas  # target first, then online
    s = cm.sigmas(1281, sigma_min=0.01, sigma_max=10.0)
    torch.testing.assert_close(hi, s[[1, 2, 1280, 1280]])
    torch.testing.assert_close(lo, s[[0, 1, 1279, 1279]])
    model = cm.build(data_shape=(2,), hidden=8, depth=1, sigma_min=0.1, sigma_max=5.0)
    _, logs = cm.loss(model, torch.randn(3, 2), index=torch.tensor([9, 9, 9]), generator=gen())
    assert logs["sigma"] == pytest.approx(5.0)


def test_loss_draws_intervals_from_index_probs():
    seen = []
    net = lambda v, s: (seen.append(s), v)[1]  # noqa: E731
    cm.loss(net, torch.zeros(20000, 1, dtype=F64), generator=gen(3))
    s = cm.sigmas(11)
    idx = torch.searchsorted(s, seen[0])  # target levels = σ_i
    freq = torch.bincount(idx, minlength=10).double() / 20000
    torch.testing.assert_close(freq, cm.index_probs(s), atol=0.012, rtol=0)


def test_loss_backprops_through_the_online_call_only_and_shares_dropout():
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.5))
            self.drop = nn.Dropout(0.5)
            self.masks = []

        def forward(self, x, sigma):
            m = self.drop(torch.ones_like(x))
            self.masks.append(m)
            return self.w * x * m

    net = Recorder()
    x, z = torch.randn(64, 3, generator=gen(1)), torch.randn(64, 3, generator=gen(2))
    idx = torch.full((64,), 4)
    torch.manual_seed(5)
    value, _ = cm.loss(net, x, noise=z, index=idx, metric="l2")
    after_loss = torch.get_rng_state()
    target_mask, online_mask = net.masks
    assert torch.equal(target_mask, online_mask)  # same dropout mask for f_θ and f_θ⁻
    torch.manual_seed(5)
    nn.Dropout(0.5)(torch.ones(64, 3))
    assert torch.equal(after_loss, torch.get_rng_state())  # the RNG advanced as for a single call
    value.backward()
    s = cm.sigmas(11)
    lo, hi = s[4].float(), s[5].float()
    target = (0.5 * (x + lo * z) * target_mask).detach()
    w = torch.tensor(0.5, requires_grad=True)
    want = ((w * (x + hi * z) * online_mask - target) ** 2).sum(1).mean() / (hi - lo)
    want.backward()
    torch.testing.assert_close(net.w.grad, w.grad)
    net.eval()  # eval mode: no RNG bookkeeping, masks are identity
    cm.loss(net, x, noise=z, index=idx)


def test_loss_is_deterministic_under_a_seed_and_conditional():
    net = perturbed(cm.build(data_shape=(2,), hidden=16, depth=1, num_classes=3))
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    a = cm.loss(net, x, generator=gen(1), cond={"y": y})[0]
    b = cm.loss(net, x, generator=gen(1), cond={"y": y})[0]
    assert torch.equal(a, b) and torch.isfinite(a)


@pytest.mark.parametrize("kw,err,match", [
    (dict(metric="l1"), ValueError, "metric"),
    (dict(c=-1.0), ValueError, "c must be"),
    (dict(noise=torch.zeros(3, 2)), ValueError, "noise must have shape"),
    (dict(index=torch.tensor([0, 1, 10, 2])), ValueError, "index must be in"),
    (dict(index=torch.tensor([0, 1])), ValueError, "index must have shape"),
    (dict(index=torch.zeros(4)), TypeError, "index"),
    (dict(step=-3), ValueError, "step"),
    (dict(total_steps=0), ValueError, "total_steps"),
    (dict(p_std=0.0), ValueError, "p_std"),
    (dict(rho=-1.0), ValueError, "rho"),
    (dict(sigma_min=5.0, sigma_max=1.0), ValueError, "sigma_min"),
    (dict(cond=[1]), TypeError, "cond"),
    (dict(generator=0), TypeError, "generator"),
])
def test_loss_errors(kw, err, match):
    with pytest.raises(err, match=match):
        cm.loss(lambda v, s: v, torch.zeros(4, 2), **kw)


def test_loss_input_errors():
    with pytest.raises(ValueError, match="x must be a batch"):
        cm.loss(lambda v, s: v, torch.zeros(4))
    with pytest.raises(TypeError, match="x must be a floating"):
        cm.loss(lambda v, s: v, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="net must return"):
        cm.loss(lambda v, s: v[:, :1], torch.zeros(4, 2))


# ------------------------------------------------------------------------------- consistency distillation


def test_distillation_loss_vanishes_for_the_exact_consistency_function():
    """Oracle: f* and the exact teacher agree up to one Heun step's error, O(h³) per step -> loss O(h⁶)."""
    x = data(4000)
    kw = dict(sigma_min=SMIN, generator=gen(1))
    heun = [float(cm.distillation_loss(exact_f, gauss_denoiser, x, n=n, **kw)[0]) for n in (18, 36, 72)]
    euler = [float(cm.distillation_loss(exact_f, gauss_denoiser, x, n=n, solver="euler", **kw)[0]) for n in (18, 36)]
    # measured: heun 3.7e-5, 4.4e-7, 6.2e-9 (ratio ~80: order 6 in h); euler 3.5e-4, 2.0e-5 (ratio ~17: order 4)
    assert heun[2] < 1e-7 and heun[0] / heun[1] > 40 and heun[1] / heun[2] > 40
    assert 10 < euler[0] / euler[1] < 25
    def wrong_f(v, sigma):  # the consistency function of N(μ, (1.2 s)²): not consistent along this ODE
        return MU + (v - MU) * ((1.44 * S**2 + SMIN**2) / (1.44 * S**2 + sigma[:, None] ** 2)).sqrt()

    wrong = float(cm.distillation_loss(wrong_f, gauss_denoiser, x, n=72, **kw)[0])
    assert wrong > 1000 * heun[2]


def test_distillation_loss_equals_the_hand_computed_euler_target():
    x, z = data(5, 1), data(5, 2) - MU
    idx = torch.tensor([0, 3, 16, 7, 7])
    net = lambda v, s: 0.8 * v  # noqa: E731
    target_net = lambda v, s: 0.7 * v  # noqa: E731
    value, logs = cm.distillation_loss(net, gauss_denoiser, x, noise=z, index=idx, solver="euler",
                                       target_net=target_net, sigma_min=SMIN)
    s = cm.sigmas(18, sigma_min=SMIN)
    lo, hi = s[idx][:, None], s[idx + 1][:, None]
    x_hi = x + hi * z
    x_lo = x_hi + (lo - hi) * (x_hi - gauss_denoiser(x_hi, hi[:, 0])) / hi
    torch.testing.assert_close(value, ((0.8 * x_hi - 0.7 * x_lo) ** 2).sum(1).mean())
    torch.testing.assert_close(logs["sigma"], hi.mean())
    heun, _ = cm.distillation_loss(net, gauss_denoiser, x, noise=z, index=idx, sigma_min=SMIN)
    x_heun = edm.heun_step(gauss_denoiser, x_hi, hi[:, 0], lo[:, 0], gauss_denoiser(x_hi, hi[:, 0]))
    torch.testing.assert_close(heun, ((0.8 * x_hi - 0.8 * x_heun) ** 2).sum(1).mean())


def test_distillation_loss_gradients_and_teacher_calls():
    torch.manual_seed(0)
    net = perturbed(cm.build(data_shape=(2,), hidden=16, depth=1, num_classes=2))
    teacher = Counter(lambda v, s: 0.5 * v)
    value, _ = cm.distillation_loss(net, teacher, torch.randn(8, 2), generator=gen(), cond={"y": torch.zeros(8).long()})
    assert teacher.calls == 2  # Heun: two teacher calls
    value.backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("kw,err,match", [
    (dict(n=1), ValueError, "n must be"),
    (dict(solver="rk4"), ValueError, "solver"),
    (dict(metric="lpips"), ValueError, "metric"),
    (dict(target_net=3), TypeError, "target_net"),
    (dict(teacher=None), TypeError, "teacher"),
    (dict(index=torch.tensor([0, 0, 17, 0])), ValueError, "index must be in"),
    (dict(noise=torch.zeros(4, 3)), ValueError, "noise"),
    (dict(teacher=lambda v, s: v[:, 0]), ValueError, "net must return a denoised x"),
])
def test_distillation_loss_errors(kw, err, match):
    args = {"teacher": gauss_denoiser, **kw}
    with pytest.raises(err, match=match):
        cm.distillation_loss(lambda v, s: v, args.pop("teacher"), torch.zeros(4, 2, dtype=F64), **args)


# ------------------------------------------------------------------------------- sampling


@given(st.floats(1e-4, 0.1), st.floats(1e-4, 50.0))
def test_renoise_jumps_from_sigma_min(sigma_min, extra):
    x0, z = data(3), data(3, 1)
    assert torch.equal(cm.renoise(x0, sigma_min, z, sigma_min=sigma_min), x0)
    sigma = sigma_min + extra
    want = x0 + math.sqrt(sigma**2 - sigma_min**2) * z
    torch.testing.assert_close(cm.renoise(x0, sigma, z, sigma_min=sigma_min), want)
    torch.testing.assert_close(cm.renoise(x0, torch.full((3,), sigma, dtype=F64), z, sigma_min=sigma_min), want)


def test_one_step_sampling_reproduces_the_gaussian():
    z = torch.randn(40000, 2, generator=gen(), dtype=F64)
    f = Counter(exact_f)
    x = cm.sample(f, (40000, 2), noise=z, sigma_min=SMIN)
    assert f.calls == 1
    r = ((S**2 + SMIN**2) / (S**2 + 80.0**2)).sqrt()
    torch.testing.assert_close(x, MU + (80.0 * z - MU) * r)  # exactly f*(σ_max z, σ_max)
    # N(μ, s²) up to the prior's O(s/σ_max) mismatch and Monte-Carlo error
    torch.testing.assert_close(x.mean(0), MU, atol=0.02, rtol=0)
    torch.testing.assert_close(x.std(0), S, atol=0.01, rtol=0)
    x2 = cm.sample(exact_f, (40000, 2), steps=2, sigma_min=SMIN, generator=gen(1), dtype=F64)
    torch.testing.assert_close(x2.mean(0), MU, atol=0.02, rtol=0)
    torch.testing.assert_close(x2.std(0), S, atol=0.01, rtol=0)


def test_multistep_levels_and_calls():
    for steps in (1, 2, 5):
        f = Counter(lambda v, s: torch.zeros_like(v))
        seen = []
        x = cm.sample(f, (3, 2), steps=steps, generator=gen(), callback=seen.append)
        want = karras_sigmas(steps + 1, sigma_min=0.002, sigma_max=80.0, append_zero=False)[:-1].float()
        assert f.calls == steps and len(seen) == steps and x.shape == (3, 2) and x.dtype == torch.float32
        torch.testing.assert_close(torch.stack([s[0] for s in f.sigmas]), want)
        torch.testing.assert_close(torch.stack([d["t"] for d in seen]), want)
    # explicit levels; identity net shows the renoising: x = τ_1 z_1 + √(τ_2² - σ_min²) z_2
    f = Counter(lambda v, s: v)
    g = gen(4)
    x = cm.sample(f, (5, 2), sigmas=[10.0, 0.5], generator=g, dtype=F64)
    g = gen(4)
    z1, z2 = torch.randn(5, 2, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    torch.testing.assert_close(x, 10.0 * z1 + math.sqrt(0.25 - SMIN**2) * z2)
    assert f.calls == 2


def test_sample_uses_the_net_range_and_is_deterministic():
    net = perturbed(cm.build(data_shape=(2,), hidden=16, depth=1, sigma_min=0.01, sigma_max=5.0, num_classes=2))
    y = torch.tensor([0, 1, 1])
    a = cm.sample(net, (3, 2), steps=3, generator=gen(2), cond={"y": y})
    b = cm.sample(net, (3, 2), steps=3, generator=gen(2), cond={"y": y})
    assert torch.equal(a, b) and a.dtype == torch.float32
    seen = []
    cm.sample(net, (3, 2), steps=2, generator=gen(), callback=seen.append)
    assert float(seen[0]["t"]) == pytest.approx(5.0)


@pytest.mark.parametrize("kw,err,match", [
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.0), TypeError, "steps"),
    (dict(sigmas=[1.0, 2.0]), ValueError, "strictly descending"),
    (dict(sigmas=[100.0, 1.0]), ValueError, "sigma_min, sigma_max"),
    (dict(sigmas=[1.0, 0.001]), ValueError, "sigmas"),
    (dict(sigmas=[]), ValueError, "sigmas"),
    (dict(sigmas="80"), TypeError, "sigmas"),
    (dict(sigmas=[80.0, 1.0], steps=3), ValueError, "steps must equal len"),
    (dict(rho=0.0), ValueError, "rho"),
    (dict(sigma_min=80.0), ValueError, "sigma_min"),
    (dict(callback=1), TypeError, "callback"),
    (dict(cond=1), TypeError, "cond"),
    (dict(noise=torch.zeros(3, 2)), ValueError, "noise"),
    (dict(dtype=torch.long), TypeError, "dtype"),
])
def test_sample_errors(kw, err, match):
    with pytest.raises(err, match=match):
        cm.sample(lambda v, s: v, (2, 2), **kw)


def test_sample_net_errors():
    with pytest.raises(TypeError, match="net must be callable"):
        cm.sample(3, (2, 2))
    with pytest.raises(ValueError, match="shape"):
        cm.sample(lambda v, s: v, (0, 2))
    with pytest.raises(ValueError, match="net must return"):
        cm.sample(lambda v, s: v.sum(1), (2, 2))
    with pytest.raises(ValueError, match="sigma must be"):
        cm.renoise(torch.zeros(2, 2), 0.001, torch.zeros(2, 2), sigma_min=0.002)
    with pytest.raises(ValueError, match="noise must have shape"):
        cm.renoise(torch.zeros(2, 2), 1.0, torch.zeros(2, 3))


# ------------------------------------------------------------------------------- learning (moons)

N_EVAL = 2000
SD_MOONS = 1.433  # std of moons (all coordinates), measured on 100000 points: the EDM / CM sigma_data


def _fit(net, loss_fn, steps):
    g = gen(0)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for k in range(steps):
        value, _ = loss_fn(net, toy2d.sample("moons", 256, generator=g), k, g)
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
    return net.eval()


def test_learns_moons_by_consistency_training_and_distillation():
    """(a) iCT (no teacher) and (b) CD from a briefly trained EDM teacher give one-step samplers on moons.

    Measured (1 thread, seeds below): untrained 1-step W2 1.63 (N(0, I) scores 1.0); (a) CT 350 steps, curriculum
    s0 = 10 -> s1 = 80: 1-step 0.36, 2-step 0.37; (b) EDM teacher 350 steps: Heun 18 steps (35 calls) 0.29; CD
    student (initialised from the teacher's backbone as in Song et al., 400 steps, Heun, l2, n = 18): 1-step 0.48,
    i.e. 1.65x the teacher's W2 with 35x fewer network calls (the student initialised from the teacher, before
    CD, scores 1.53 at 1 step). Two fresh samples of moons score ≈ 0.09. Longer runs do better (CT 1500 steps,
    s1 = 160: 1-step 0.26; teacher / CD 600 / 600 steps: 0.22 / 0.47), but the whole file must run in ~40 s.
    """
    test = toy2d.sample("moons", N_EVAL, generator=gen(12345))

    def score(net, steps, seed=7):
        return float(w2(cm.sample(net, (N_EVAL, 2), steps=steps, generator=gen(seed)), test))

    torch.manual_seed(1)
    untrained = perturbed(cm.build(data_shape=(2,), hidden=128, depth=3, sigma_data=SD_MOONS), scale=0.05).eval()
    before = score(untrained, 1)

    ct_steps = 350
    torch.manual_seed(0)
    ct = _fit(cm.build(data_shape=(2,), hidden=128, depth=3, sigma_data=SD_MOONS),
              lambda net, x, k, g: cm.loss(net, x, step=k, total_steps=ct_steps, s1=80, generator=g), ct_steps)
    ct1, ct2 = score(ct, 1), score(ct, 2)

    torch.manual_seed(0)
    teacher = _fit(edm.build(data_shape=(2,), hidden=128, depth=3, sigma_data=SD_MOONS),
                   lambda net, x, k, g: edm.loss(net, x, generator=g), 350).requires_grad_(False)
    reference = float(w2(edm.sample(teacher, (N_EVAL, 2), steps=18, sampler="heun", generator=gen(7)), test))
    student = cm.build(data_shape=(2,), hidden=128, depth=3, sigma_data=SD_MOONS)
    student.backbone.load_state_dict(teacher.backbone.state_dict())  # Song et al.: initialise from the teacher
    student = _fit(student, lambda net, x, k, g: cm.distillation_loss(net, teacher, x, generator=g), 400)
    cd1 = score(student, 1)
    print(f"consistency moons W2: untrained {before:.3f}; CT 1-step {ct1:.3f} 2-step {ct2:.3f}; "
          f"EDM teacher heun-18 {reference:.3f}; CD 1-step {cd1:.3f}")
    assert before > 0.9
    assert ct1 < 0.5 and ct1 < 0.4 * before and ct2 < 0.55
    assert reference < 0.35
    assert cd1 < 2.5 * reference and cd1 < 0.45 * before
