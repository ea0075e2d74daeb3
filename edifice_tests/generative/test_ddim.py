"""DDIM: timestep spacings, the step and its variance, Gaussian oracles for sampling and inversion."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.generative import ddim, ddpm
from edifice.schedules import make_schedule

T = 1000
SCHEDULE = make_schedule("linear", T)
MU, S = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.5


def gaussian_eps(mu: torch.Tensor, s: float, schedule=SCHEDULE):
    """Exact ε*(x_t, t) for data N(mu, s² I): E[ε | x_t] = √(1-ᾱ) (x_t - √ᾱ mu) / (ᾱ s² + 1 - ᾱ)."""

    def net(x, t):
        ab = schedule.alpha_bar.to(x.device)[t.round().long()].to(x.dtype)[:, None]  # (B, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu.to(x)) / (ab * s**2 + 1 - ab)

    return net


def exact_flow(x_T: torch.Tensor, ab_T: torch.Tensor, mu: torch.Tensor, s: float) -> torch.Tensor:
    """The probability-flow ODE map from level ᾱ_T to the data, for N(mu, s² I) data (affine)."""
    return mu + (x_T - ab_T.sqrt() * mu) * s / (ab_T * s**2 + 1 - ab_T).sqrt()


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_build_and_loss_are_ddpms():
    assert ddim.build is ddpm.build and ddim.loss is ddpm.loss and ddim.timesteps is ddpm.timesteps


# ----------------------------------------------------------------------------- timesteps


def test_timesteps_values():
    assert ddim.timesteps(T, 5).tolist() == [999, 749, 500, 250, 0]
    assert ddim.timesteps(T, 5, spacing="leading").tolist() == [800, 600, 400, 200, 0]
    assert ddim.timesteps(T, 5, spacing="trailing").tolist() == [999, 799, 599, 399, 199]
    for spacing in ddim.SPACINGS:
        ts = ddim.timesteps(T, T, spacing=spacing)
        assert ts.dtype == torch.long and ts.tolist() == list(range(T - 1, -1, -1))


@given(T_=st.integers(1, 2000), frac=st.floats(0, 1), spacing=st.sampled_from(ddim.SPACINGS))
def test_timesteps_properties(T_, frac, spacing):
    steps = max(1, round(frac * T_))
    ts = ddim.timesteps(T_, steps, spacing=spacing)
    assert len(ts) == steps and (ts[:-1] > ts[1:]).all() and ts.min() >= 0 and ts.max() <= T_ - 1
    if spacing in ("linspace", "trailing") and steps > 1:
        assert ts[0] == T_ - 1
    if spacing in ("linspace", "leading"):
        assert ts[-1] == 0


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((T, 0), {}, ValueError, "steps must be a positive int"),
        ((T, T + 1), {}, ValueError, "steps must be an int <= 1000"),
        ((T, 10.0), {}, TypeError, "steps must be an int"),
        ((0, 1), {}, ValueError, "T must be a positive int"),
        ((T, 10), dict(spacing="uniform"), ValueError, "spacing must be one of 'linspace', 'leading', 'trailing'"),
    ],
)
def test_timesteps_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ddim.timesteps(*args, **kwargs)


# ----------------------------------------------------------------------------- sigma and the step


@pytest.mark.parametrize("t, s, want", [(420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979),
                                        (999, 998, 0.02)])
def test_eta1_variance_reference_values(t, s, want):
    """diffusers' DDIM variance test values (linear betas 1e-4..0.02, T = 1000)."""
    var = ddim.ddim_sigma(SCHEDULE.alpha_bar[t], SCHEDULE.alpha_bar[s], 1.0) ** 2
    assert abs(var.item() - want) < 1e-5


@given(t=st.integers(1, T - 1), gap=st.integers(1, 200), eta=st.floats(0, 1))
def test_sigma_equals_ddpm_posterior_variance(t, gap, eta):
    s = max(t - gap, -1)
    ab_t, ab_s = SCHEDULE.alpha_bar[t], (SCHEDULE.alpha_bar[s] if s >= 0 else torch.tensor(1.0, dtype=torch.float64))
    beta = 1 - ab_t / ab_s
    posterior = beta * (1 - ab_s) / (1 - ab_t)
    torch.testing.assert_close(ddim.ddim_sigma(ab_t, ab_s, eta) ** 2, eta**2 * posterior, rtol=1e-10, atol=1e-16)
    if s == t - 1:
        torch.testing.assert_close(ddim.ddim_sigma(ab_t, ab_s, 1.0) ** 2, SCHEDULE.posterior_variance[t])


@given(t=st.integers(1, T - 1), gap=st.integers(1, 300), seed=st.integers(0, 2**16),
       variance_noise=st.booleans())
def test_eta1_step_equals_ancestral_step(t, gap, seed, variance_noise):
    s = max(t - gap, -1)
    x_t, eps, z = _randn(3, 2, seed=seed), _randn(3, 2, seed=seed + 1), _randn(3, 2, seed=seed + 2)
    ab_t = SCHEDULE.alpha_bar[t]
    ab_s = SCHEDULE.alpha_bar[s] if s >= 0 else 1.0
    got = ddim.ddim_step(x_t, eps, ab_t, ab_s, eta=1.0, noise=z)
    want = ddpm.ancestral_step(x_t, t, eps, SCHEDULE, t_prev=s, noise=z)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_eta0_is_deterministic_and_eta_adds_sigma_noise():
    x_t, eps, z = _randn(3, 2, seed=1), _randn(3, 2, seed=2), _randn(3, 2, seed=3)
    ab_t, ab_s = SCHEDULE.alpha_bar[600], SCHEDULE.alpha_bar[500]
    a = ddim.ddim_step(x_t, eps, ab_t, ab_s)
    torch.testing.assert_close(ddim.ddim_step(x_t, eps, ab_t, ab_s, noise=z), a)  # η = 0 ignores noise
    for eta in (0.3, 1.0):
        sigma = ddim.ddim_sigma(ab_t, ab_s, eta)
        with_z = ddim.ddim_step(x_t, eps, ab_t, ab_s, eta=eta, noise=z)
        without = ddim.ddim_step(x_t, eps, ab_t, ab_s, eta=eta, noise=torch.zeros_like(z))
        torch.testing.assert_close(with_z - without, sigma * z)  # the σ z term is really there
    # the step's variance over many draws of z is σ²
    zs = _randn(20000, 1, seed=4)
    out = ddim.ddim_step(torch.zeros(20000, 1), torch.zeros(20000, 1), ab_t, ab_s, eta=1.0, noise=zs)
    assert abs(out.var().item() / ddim.ddim_sigma(ab_t, ab_s, 1.0).item() ** 2 - 1) < 0.05


def test_last_step_lands_on_x0_and_clipping_only_when_asked():
    x_t, eps, z = _randn(3, 2, seed=5), _randn(3, 2, seed=6), _randn(3, 2, seed=7)
    ab_t = SCHEDULE.alpha_bar[30]
    x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    torch.testing.assert_close(ddim.ddim_step(x_t, eps, ab_t, 1.0, eta=1.0, noise=z), x0)
    big = 40 * eps
    x0_big = (x_t - (1 - ab_t).sqrt() * big) / ab_t.sqrt()
    assert x0_big.abs().max() > 1
    torch.testing.assert_close(ddim.ddim_step(x_t, big, ab_t, 1.0), x0_big)
    torch.testing.assert_close(ddim.ddim_step(x_t, big, ab_t, 1.0, clip_x0=1.0), x0_big.clamp(-1, 1))


def test_step_accepts_per_sample_alpha_bar():
    x_t, eps = _randn(3, 2, seed=8), _randn(3, 2, seed=9)
    t, s = torch.tensor([900, 500, 10]), torch.tensor([800, 400, 0])
    got = ddim.ddim_step(x_t, eps, SCHEDULE.alpha_bar[t], SCHEDULE.alpha_bar[s])
    for i in range(3):
        row = ddim.ddim_step(x_t[i:i + 1], eps[i:i + 1], SCHEDULE.alpha_bar[t[i]], SCHEDULE.alpha_bar[s[i]])
        torch.testing.assert_close(got[i:i + 1], row)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(eta=-0.1), ValueError, r"eta must be in \[0.0, 1.0\]"),
        (dict(eta=1.5), ValueError, r"eta must be in \[0.0, 1.0\]"),
        (dict(eta="1"), TypeError, "eta must be a number"),
        (dict(eta=0.5), ValueError, "noise is required when eta > 0"),
        (dict(noise=torch.zeros(2, 2)), ValueError, "noise must have shape"),
        (dict(eps=torch.zeros(3, 3)), ValueError, "eps must have shape"),
        (dict(x_t=[0.0]), TypeError, "x_t must be a torch.Tensor"),
        (dict(alpha_bar_t=0.0), ValueError, "alpha_bar_t must be in"),
        (dict(alpha_bar_prev=1.5), ValueError, "alpha_bar_prev must be in"),
        (dict(alpha_bar_t=torch.ones(2)), ValueError, r"alpha_bar_t must be a number, a 0-dim tensor or have shape"),
        (dict(alpha_bar_prev=torch.ones(3, dtype=torch.long)), TypeError, "alpha_bar_prev must be a floating"),
        (dict(clip_x0=0.0), ValueError, "clip_x0 must be in"),
    ],
)
def test_ddim_step_errors(kwargs, exc, match):
    args = dict(x_t=torch.zeros(3, 2), eps=torch.zeros(3, 2), alpha_bar_t=0.5, alpha_bar_prev=0.6) | kwargs
    with pytest.raises(exc, match=match):
        ddim.ddim_step(args.pop("x_t"), args.pop("eps"), args.pop("alpha_bar_t"), args.pop("alpha_bar_prev"), **args)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((0.5, 0.6, -1.0), ValueError, "eta must be in"),
        ((0.6, 0.5, 1.0), ValueError, "alpha_bar_prev <= 1"),
        ((1.0, 1.0, 1.0), ValueError, "alpha_bar_t < 1"),
        ((0.5, "a", 1.0), TypeError, "alpha_bar_prev must be a number"),
        ((torch.ones(2, dtype=torch.long), 0.5, 1.0), TypeError, "alpha_bar_t must be a floating"),
    ],
)
def test_ddim_sigma_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        ddim.ddim_sigma(*args)


# ----------------------------------------------------------------------------- samplers and oracles


def test_eta0_gaussian_oracle_error_falls_with_steps():
    """With the exact ε of N(mu, s² I), η = 0 DDIM is Euler on the probability-flow ODE: first order."""
    z = _randn(2000, 2, seed=10)
    z = (z - z.mean(0)) / z.std(0)  # x_T ~ N(0, I) with exact sample moments: no Monte Carlo error below
    exact = exact_flow(z, SCHEDULE.alpha_bar[T - 1], MU, S)
    ab = SCHEDULE.alpha_bar[T - 1]
    x_T = ab.sqrt() * MU + (ab * S**2 + 1 - ab).sqrt() * z  # the exact marginal of x_T
    errors, moment_errors = [], []
    for steps in (10, 20, 50, 100):
        x = ddim.sample(gaussian_eps(MU, S), z.shape, steps=steps, noise=z)
        errors.append((x - exact).abs().max().item())
        y = ddim.sample(gaussian_eps(MU, S), z.shape, steps=steps, noise=x_T)
        moment_errors.append(max((y.mean(0) - MU).abs().max().item(), (y.std(0) - S).abs().max().item()))
    assert all(b < 0.65 * a for a, b in zip(errors, errors[1:])), errors
    assert all(b < 0.65 * a for a, b in zip(moment_errors, moment_errors[1:])), moment_errors
    assert errors[-1] < 0.1 and moment_errors[-1] < 0.02
    # from N(0, I) the mean and std are right up to the ~0.006 mismatch of N(0, I) with the true x_T law
    assert (x.mean(0) - MU).abs().max() < 0.02 and (x.std(0) - S).abs().max() < 0.02


def test_inversion_reconstruction_error_falls_with_steps():
    x0 = MU + S * _randn(500, 2, seed=11)
    net = gaussian_eps(MU, S)
    errors = []
    for steps in (10, 20, 50, 100):
        latent = ddim.invert(net, x0, steps=steps)
        errors.append((ddim.sample(net, x0.shape, steps=steps, noise=latent) - x0).abs().max().item())
    assert all(b < 0.65 * a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1
    assert (latent.std(0) - 1).abs().max() < 0.1  # data is mapped close to N(0, I)


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
def test_respaced_ddpm_equals_ddim_eta1(spacing):
    """Same timesteps, same generator draws: the ancestral sampler and η = 1 DDIM agree."""
    net = gaussian_eps(MU, S)
    kw = dict(steps=25, spacing=spacing, noise=_randn(64, 2, seed=12))
    a = ddpm.sample(net, (64, 2), generator=torch.Generator().manual_seed(5), **kw)
    b = ddim.sample(net, (64, 2), eta=1.0, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("target", ["x0", "v"])
def test_sample_and_invert_target_parametrisations_agree(target):
    eps_net = gaussian_eps(MU, S)

    def other(x, t):
        ab = SCHEDULE.alpha_bar[t.long()]
        eps = eps_net(x, t)
        x0 = (x - (1 - ab[:, None]).sqrt() * eps) / ab[:, None].sqrt()
        return ddpm.prediction_target(x0, eps, ab, target=target)

    z = _randn(8, 2, seed=13)
    kw = dict(steps=10, eta=0.5, generator=None)
    a = ddim.sample(eps_net, z.shape, noise=z, **kw | dict(generator=torch.Generator().manual_seed(0)))
    b = ddim.sample(other, z.shape, noise=z, target=target, **kw | dict(generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ddim.invert(eps_net, z, steps=10), ddim.invert(other, z, steps=10, target=target))


def test_sample_determinism_dtype_callback_and_cond():
    net = ddim.build(data_shape=(1, 8, 8), base_channels=8, num_classes=2)
    records = []
    cond = {"y": torch.tensor([0, 1])}
    a = ddim.sample(net, (2, 1, 8, 8), steps=3, eta=0.5, generator=torch.Generator().manual_seed(0), cond=cond,
                    callback=records.append)
    b = ddim.sample(net, (2, 1, 8, 8), steps=3, eta=0.5, generator=torch.Generator().manual_seed(0), cond=cond)
    assert a.shape == (2, 1, 8, 8) and a.dtype == torch.float32 and torch.equal(a, b)
    assert [(r["i"], r["t"]) for r in records] == [(0, 999), (1, 500), (2, 0)] and torch.equal(records[-1]["x"], a)
    assert torch.equal(records[-1]["x"], records[-1]["x0"])  # the last step lands on x̂_0
    z = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    c = ddim.sample(net.double(), z.shape, steps=3, noise=z, cond=cond)
    d = ddim.sample(net, z.shape, steps=3, noise=z, cond=cond, generator=torch.Generator().manual_seed(9))
    assert c.dtype == torch.float64 and torch.equal(c, d)  # η = 0: the generator plays no part
    steps_seen = []
    ddim.invert(net, z, steps=3, cond=cond, callback=lambda r: steps_seen.append((r["i"], r["t"])))
    assert steps_seen == [(0, 0), (1, 500), (2, 999)]


def test_sample_loop_makes_no_host_reads(monkeypatch):
    def forbid(d):
        if d["i"] == 0:
            for name in ("item", "__bool__", "tolist", "cpu", "numpy"):
                monkeypatch.setattr(torch.Tensor, name, _raise)

    def _raise(*args, **kwargs):
        raise AssertionError("host read inside the sampling loop")

    ddim.sample(gaussian_eps(MU, S), (4, 2), steps=5, eta=0.5, target="eps", clip_x0=3.0, callback=forbid)
    monkeypatch.undo()
    ddim.invert(gaussian_eps(MU, S), torch.zeros(4, 2), steps=5, callback=forbid)
    monkeypatch.undo()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(steps=0), ValueError, "steps must be a positive int"),
        (dict(steps=T + 1), ValueError, "steps must be an int <= 1000"),
        (dict(spacing="uniform"), ValueError, "spacing must be one of"),
        (dict(eta=-0.5), ValueError, "eta must be in"),
        (dict(target="score"), ValueError, "target must be one of"),
        (dict(clip_x0=0), ValueError, "clip_x0 must be in"),
        (dict(noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
        (dict(shape=[4, -2]), ValueError, "shape must be"),
        (dict(net=None), TypeError, "net must be callable"),
        (dict(cond=(1,)), TypeError, "cond must be a mapping"),
        (dict(schedule="cosine"), TypeError, "schedule must be a NoiseSchedule"),
    ],
)
def test_sample_errors(kwargs, exc, match):
    net, shape = kwargs.pop("net", lambda x, t: x), kwargs.pop("shape", (4, 2))
    with pytest.raises(exc, match=match):
        ddim.sample(net, shape, **kwargs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(steps=0), ValueError, "steps must be a positive int"),
        (dict(spacing="uniform"), ValueError, "spacing must be one of"),
        (dict(target="score"), ValueError, "target must be one of"),
        (dict(x0=torch.zeros(4)), ValueError, "x0 must have shape"),
        (dict(x0=[1.0]), TypeError, "x0 must be a torch.Tensor"),
        (dict(net="net"), TypeError, "net must be callable"),
        (dict(cond=1), TypeError, "cond must be a mapping"),
    ],
)
def test_invert_errors(kwargs, exc, match):
    net, x0 = kwargs.pop("net", lambda x, t: x), kwargs.pop("x0", torch.zeros(4, 2))
    with pytest.raises(exc, match=match):
        ddim.invert(net, x0, **kwargs)


def test_v_and_x0_targets_keep_float32_precision_at_tiny_alpha_bar():
    """DDIM takes x0 straight from an x0 / v output: with the cosine schedule (alpha_bar_999 ~ 2e-9) one float32
    step agrees with float64 to ~1e-6 (recomputing x0 from eps would divide by sqrt(alpha_bar) ~ 5e-5)."""
    import copy

    from edifice.generative import ddpm as _ddpm
    from edifice.schedules import make_schedule

    torch.manual_seed(0)
    net = _ddpm.build(data_shape=(2,), hidden=32, depth=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    schedule = make_schedule("cosine", 1000)
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    for target in ("v", "x0"):
        a = ddim.sample(net, (16, 2), steps=1, schedule=schedule, target=target, spacing="trailing", noise=z)
        b = ddim.sample(copy.deepcopy(net).double(), (16, 2), steps=1, schedule=schedule, target=target,
                        spacing="trailing", noise=z.double())
        assert (a.double() - b).abs().max() < 1e-5, target
