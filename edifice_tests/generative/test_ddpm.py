"""DDPM: builder, forward process, posterior, target conversions, loss, ancestral step and sampler."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.blocks import ResMLP, UNet
from edifice.generative import ddpm
from edifice.schedules import make_schedule

T = 1000
SCHEDULE = make_schedule("linear", T)
MU, S = torch.tensor([1.5, -0.5]), 0.5


def gaussian_eps(mu: torch.Tensor, s: float, schedule=SCHEDULE):
    """Exact ε*(x_t, t) for data N(mu, s² I): E[ε | x_t] = √(1-ᾱ) (x_t - √ᾱ mu) / (ᾱ s² + 1 - ᾱ)."""

    def net(x, t):
        ab = schedule.alpha_bar.to(x.device)[t.round().long()].to(x.dtype)[:, None]  # (B, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu.to(x)) / (ab * s**2 + 1 - ab)

    return net


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- build


def test_build_vector_and_image_networks():
    net = ddpm.build(data_shape=(3,), hidden=32, depth=2, num_classes=4)
    assert isinstance(net, ResMLP) and net.config["t_scale"] == 1.0 and net.config["num_classes"] == 4
    assert net(torch.randn(5, 3), torch.arange(5.0), y=torch.tensor([0, 1, 2, 3, 4])).shape == (5, 3)
    unet = ddpm.build(data_shape=(1, 8, 8), base_channels=16, channel_mults=(1, 2))
    assert isinstance(unet, UNet) and unet.config["t_scale"] == 1.0
    assert unet(torch.randn(2, 1, 8, 8), torch.tensor([0.0, 999.0])).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(data_shape=(2, 3)), ValueError, "data_shape must be"),
        (dict(data_shape=(1, 8, 6)), ValueError, "square image"),
        (dict(data_shape=()), ValueError, "data_shape"),
        (dict(data_shape=(2,), hidden=0), ValueError, "hidden"),
        (dict(data_shape=(2,), depth=1.5), TypeError, "depth"),
        (dict(data_shape=(2,), dropout=1.0), ValueError, "dropout"),
        (dict(data_shape=(2,), num_classes=0), ValueError, "num_classes"),
        (dict(data_shape=(1, 8, 8), channel_mults=(1, 0)), ValueError, "channel_mults"),
        (dict(data_shape=(1, 8, 8), base_channels="a"), TypeError, "base_channels"),
        (dict(data_shape=(1, 8, 8), num_res_blocks=0), ValueError, "num_res_blocks"),
        (dict(data_shape=(1, 7, 7)), ValueError, "data_shape image size must be divisible"),
        (dict(data_shape=(2,), width=3), TypeError, "width"),
    ],
)
def test_build_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ddpm.build(**kwargs)


# ----------------------------------------------------------------------------- forward process and posterior


def test_q_sample_marginal_statistics(f64):
    n = 8000
    ts = (0, 300, 999)
    x0 = torch.full((n * len(ts), 2), 2.0)
    t = torch.tensor(ts).repeat_interleave(n)
    x_t = ddpm.q_sample(x0, t, _randn(n * len(ts), 2), SCHEDULE)
    for k, step in enumerate(ts):
        ab = SCHEDULE.alpha_bar[step]
        chunk = x_t[k * n:(k + 1) * n]
        sd = (1 - ab).sqrt()
        assert torch.allclose(chunk.mean(0), 2 * ab.sqrt().expand(2), atol=5 * sd / n**0.5)
        assert torch.allclose(chunk.std(0), sd.expand(2), rtol=0.05)
    # an int t is broadcast and the formula is exact for given noise
    eps = _randn(4, 3, seed=1)
    ab = SCHEDULE.alpha_bar[7]
    torch.testing.assert_close(ddpm.q_sample(torch.ones(4, 3), 7, eps, SCHEDULE), ab.sqrt() + (1 - ab).sqrt() * eps)


def test_posterior_mean_variance_closed_form(f64):
    """Bayes in precision form from the betas: 1/β̃ = α_t/β_t + 1/(1-ᾱ_{t-1}) (Ho et al. eq. 7)."""
    betas, ab = SCHEDULE.betas, SCHEDULE.alpha_bar
    t = torch.tensor([1, 5, 500, 999])
    x0, x_t = _randn(4, 3, seed=2), _randn(4, 3, seed=3)
    mean, var, log_var = ddpm.posterior_mean_variance(x0, x_t, t, SCHEDULE)
    alpha, ab_prev = 1 - betas[t], ab[t - 1]
    want_var = 1 / (alpha / betas[t] + 1 / (1 - ab_prev))
    want_mean = want_var[:, None] * (alpha.sqrt()[:, None] / betas[t][:, None] * x_t
                                     + (ab_prev.sqrt() / (1 - ab_prev))[:, None] * x0)
    assert var.shape == log_var.shape == (4, 1)
    torch.testing.assert_close(var[:, 0], want_var, rtol=1e-10, atol=0)
    torch.testing.assert_close(log_var[:, 0], want_var.log(), rtol=1e-10, atol=0)
    torch.testing.assert_close(mean, want_mean, rtol=1e-10, atol=1e-12)
    # t = 0: the posterior collapses onto x0; the clipped log-variance borrows t = 1
    mean0, var0, log_var0 = ddpm.posterior_mean_variance(x0, x_t, 0, SCHEDULE)
    torch.testing.assert_close(mean0, x0)
    assert (var0 == 0).all() and torch.allclose(log_var0, SCHEDULE.posterior_variance[1].log())


# ----------------------------------------------------------------------------- target conversions


@given(
    ab=st.lists(st.floats(1e-4, 1 - 1e-4), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
    target=st.sampled_from(ddpm.TARGETS),
    per_sample=st.booleans(),
)
def test_conversions_round_trip(ab, seed, target, per_sample):
    x0, eps = _randn(3, 4, seed=seed), _randn(3, 4, seed=seed + 1)
    ab = torch.tensor(ab, dtype=torch.float64) if per_sample else ab[0]
    a = torch.as_tensor(ab, dtype=torch.float64).reshape(-1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    out = ddpm.prediction_target(x0, eps, ab, target=target)
    x0_hat, eps_hat = ddpm.convert_prediction(out, x_t, ab, target=target)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("target", ddpm.TARGETS)
def test_predict_x0_eps_at_integer_steps(target, f64):
    t = torch.tensor([0, 10, 999])
    x0, eps = _randn(3, 2, seed=4), _randn(3, 2, seed=5)
    x_t = ddpm.q_sample(x0, t, eps, SCHEDULE)
    out = ddpm.prediction_target(x0, eps, SCHEDULE.alpha_bar[t], target=target)
    torch.testing.assert_close(ddpm.predict_x0(x_t, t, out, SCHEDULE, target=target), x0)
    torch.testing.assert_close(ddpm.predict_eps(x_t, t, out, SCHEDULE, target=target), eps)


def test_conversion_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target must be one of"):
        ddpm.convert_prediction(x, x, 0.5, target="score")
    with pytest.raises(ValueError, match="alpha_bar must be in"):
        ddpm.convert_prediction(x, x, 0.0)
    with pytest.raises(ValueError, match=r"alpha_bar must be a number, a 0-dim tensor or have shape \(2,\)"):
        ddpm.convert_prediction(x, x, torch.rand(3))
    with pytest.raises(TypeError, match="alpha_bar must be a floating"):
        ddpm.prediction_target(x, x, torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="out must have shape"):
        ddpm.convert_prediction(torch.zeros(2, 4), x, 0.5)
    with pytest.raises(ValueError, match="eps must have shape"):
        ddpm.prediction_target(x, torch.zeros(3, 3), 0.5)


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("target", ddpm.TARGETS)
def test_loss_matches_manual_computation(target, f64):
    net = ddpm.build(data_shape=(2,), hidden=16, depth=1).double()
    x0, noise, t = _randn(6, 2, seed=6), _randn(6, 2, seed=7), torch.tensor([0, 1, 2, 500, 998, 999])
    value, logs = ddpm.loss(net, x0, target=target, noise=noise, t=t)
    ab = SCHEDULE.alpha_bar[t][:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    want = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[target]
    torch.testing.assert_close(value, (net(x_t, t.double()) - want).square().mean())
    assert set(logs) == {"loss"} and not logs["loss"].requires_grad


def test_loss_backprops_draws_valid_t_and_forwards_cond(gen):
    seen = {}
    net = ddpm.build(data_shape=(2,), hidden=16, depth=2, num_classes=3)

    def spy(x, t, y):
        seen.update(t=t, y=y)
        return net(x, t, y=y)

    y = torch.tensor([0, 1, 2, 3] * 16)
    value, _ = ddpm.loss(spy, torch.randn(64, 2), generator=gen, cond={"y": y})
    value.backward()
    assert torch.isfinite(value) and all(p.grad is not None for p in net.parameters())
    t = seen["t"]
    assert t.dtype == torch.float32 and (t == t.round()).all() and t.min() >= 0 and t.max() <= T - 1
    assert seen["y"] is y
    a = ddpm.loss(net, torch.ones(8, 2), generator=torch.Generator().manual_seed(1))[0]
    b = ddpm.loss(net, torch.ones(8, 2), generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(target="score"), ValueError, "target must be one of"),
        (dict(t=torch.full((4,), T)), ValueError, r"t must be in \[0, 1000\)"),
        (dict(t=torch.zeros(4)), TypeError, "t must be an int or an integer tensor"),
        (dict(t=torch.zeros(3, dtype=torch.long)), ValueError, r"t must have shape \(4,\)"),
        (dict(noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
        (dict(schedule="linear"), TypeError, "schedule must be a NoiseSchedule"),
        (dict(cond=[1]), TypeError, "cond must be a mapping"),
        (dict(x0=torch.zeros(4)), ValueError, "x0 must have shape"),
        (dict(x0=torch.zeros(4, 2, dtype=torch.long)), TypeError, "x0 must be a floating"),
    ],
)
def test_loss_errors(kwargs, exc, match):
    x0 = kwargs.pop("x0", torch.zeros(4, 2))
    with pytest.raises(exc, match=match):
        ddpm.loss(lambda x, t: x, x0, **kwargs)


# ----------------------------------------------------------------------------- ancestral step


@pytest.mark.parametrize("variance", ddpm.VARIANCES)
@pytest.mark.parametrize("target", ddpm.TARGETS)
def test_ancestral_step_is_posterior_sample(variance, target, f64):
    t = torch.tensor([1, 7, 400, 999])
    x_t, out, z = _randn(4, 3, seed=8), _randn(4, 3, seed=9), _randn(4, 3, seed=10)
    x0 = ddpm.predict_x0(x_t, t, out, SCHEDULE, target=target)
    mean, var, _ = ddpm.posterior_mean_variance(x0, x_t, t, SCHEDULE)
    var = var if variance == "small" else SCHEDULE.betas[t][:, None]
    got = ddpm.ancestral_step(x_t, t, out, SCHEDULE, target=target, variance=variance, noise=z)
    torch.testing.assert_close(got, mean + var.sqrt() * z)


@pytest.mark.parametrize("variance", ddpm.VARIANCES)
def test_ancestral_step_adds_no_noise_at_t0(variance, f64):
    x_t, out, z = _randn(2, 3, seed=11), _randn(2, 3, seed=12), _randn(2, 3, seed=13)
    t = torch.tensor([0, 5])
    got = ddpm.ancestral_step(x_t, t, out, SCHEDULE, variance=variance, noise=z)
    mean = ddpm.ancestral_step(x_t, t, out, SCHEDULE, variance=variance, noise=torch.zeros_like(z))
    torch.testing.assert_close(got[0], mean[0])  # t = 0: x_0 prediction, no noise
    assert not torch.allclose(got[1], mean[1])  # t = 5: noise really added
    x0 = ddpm.predict_x0(x_t, 0, out, SCHEDULE)
    torch.testing.assert_close(ddpm.ancestral_step(x_t, 0, out, SCHEDULE, variance=variance), x0)  # noise optional


def test_respaced_ancestral_step_uses_respaced_beta(f64):
    x_t, out, z = _randn(2, 3, seed=14), _randn(2, 3, seed=15), _randn(2, 3, seed=16)
    ab_t, ab_s = SCHEDULE.alpha_bar[500], SCHEDULE.alpha_bar[450]
    beta = 1 - ab_t / ab_s
    x0 = (x_t - (1 - ab_t).sqrt() * out) / ab_t.sqrt()
    mean = ab_s.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t) * x_t
    var = beta * (1 - ab_s) / (1 - ab_t)
    got = ddpm.ancestral_step(x_t, 500, out, SCHEDULE, t_prev=450, noise=z)
    torch.testing.assert_close(got, mean + var.sqrt() * z)


def test_ancestral_step_clips_x0_only_when_asked(f64):
    x_t, z = _randn(2, 3, seed=17), torch.zeros(2, 3)
    out = 50 * _randn(2, 3, seed=18)  # x0 prediction far outside [-1, 1]
    x0 = ddpm.predict_x0(x_t, 10, out, SCHEDULE)
    clipped = ddpm.ancestral_step(x_t, 10, out, SCHEDULE, clip_x0=1.0, noise=z)
    torch.testing.assert_close(clipped, ddpm.posterior_mean_variance(x0.clamp(-1, 1), x_t, 10, SCHEDULE)[0])
    plain = ddpm.ancestral_step(x_t, 10, out, SCHEDULE, noise=z)
    torch.testing.assert_close(plain, ddpm.posterior_mean_variance(x0, x_t, 10, SCHEDULE)[0])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(variance="medium"), ValueError, "variance must be one of"),
        (dict(target="score"), ValueError, "target must be one of"),
        (dict(t_prev=5), ValueError, "t_prev must be smaller than t"),
        (dict(t_prev=-2), ValueError, r"t_prev must be in \[-1, 1000\)"),
        (dict(t=T), ValueError, r"t must be in \[0, 1000\)"),
        (dict(t=True), TypeError, "t must be an int or an integer tensor"),
        (dict(clip_x0=0.0), ValueError, "clip_x0 must be in"),
        (dict(clip_x0=True), TypeError, "clip_x0 must be a number"),
        (dict(out=torch.zeros(2, 4)), ValueError, "out must have shape"),
        (dict(noise=None), ValueError, "noise is required"),
        (dict(noise=torch.zeros(3, 3)), ValueError, "noise must have shape"),
    ],
)
def test_ancestral_step_errors(kwargs, exc, match):
    args = dict(t=5, out=torch.zeros(2, 3), noise=torch.zeros(2, 3)) | kwargs
    t, out = args.pop("t"), args.pop("out")
    with pytest.raises(exc, match=match):
        ddpm.ancestral_step(torch.zeros(2, 3), t, out, SCHEDULE, **args)


# ----------------------------------------------------------------------------- sampler


def test_sample_gaussian_oracle_full_chain():
    """Exact ε of N(mu, s² I) data drives the 1000-step ancestral chain to the right mean and std."""
    x = ddpm.sample(gaussian_eps(MU, S), (4000, 2), generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    assert (x.mean(0) - MU).abs().max() < 0.04  # Monte Carlo std of the mean ≈ 0.008
    assert (x.std(0) - S).abs().max() < 0.03


def test_sample_target_parametrisations_agree(f64):
    eps_net = gaussian_eps(MU, S)

    def x0_net(x, t):
        ab = SCHEDULE.alpha_bar[t.long()][:, None]
        return (x - (1 - ab).sqrt() * eps_net(x, t)) / ab.sqrt()

    kw = dict(steps=20, noise=_randn(16, 2, seed=19))
    a = ddpm.sample(eps_net, (16, 2), generator=torch.Generator().manual_seed(3), **kw)
    b = ddpm.sample(x0_net, (16, 2), target="x0", generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(a, b)


def test_sample_shapes_dtypes_determinism_callback_and_cond():
    net = ddpm.build(data_shape=(2,), hidden=16, depth=1, num_classes=2)
    records, seen_t = [], []

    def spy(x, t, y):
        seen_t.append(t)
        assert y.shape == (5,)
        return net(x, t, y=y)

    cond = {"y": torch.tensor([0, 1, 0, 1, 2])}
    a = ddpm.sample(spy, (5, 2), steps=4, generator=torch.Generator().manual_seed(0), cond=cond,
                    callback=records.append)
    b = ddpm.sample(spy, (5, 2), steps=4, generator=torch.Generator().manual_seed(0), cond=cond)
    assert a.shape == (5, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert [r["i"] for r in records] == [0, 1, 2, 3] and [r["t"] for r in records] == [999, 666, 333, 0]
    assert set(records[0]) == {"i", "t", "x", "x0"} and torch.equal(records[-1]["x"], a)
    assert seen_t[0].shape == (5,) and seen_t[0].dtype == torch.float32 and (seen_t[1] == 666).all()
    # dtype follows noise, then dtype=, then the network's parameters
    ident = lambda x, t: x  # noqa: E731
    assert ddpm.sample(ident, (3, 2), steps=2, noise=torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64
    assert ddpm.sample(ident, (3, 2), steps=2, dtype=torch.float64).dtype == torch.float64
    y = torch.zeros(3, dtype=torch.long)
    assert ddpm.sample(net.double(), (3, 2), steps=2, cond={"y": y}).dtype == torch.float64


def test_sample_loop_makes_no_host_reads(monkeypatch):
    """From the first callback on, any .item() / bool() / .tolist() / .cpu() on a tensor fails the test."""

    def forbid(i=0, **_):
        if i == 0:
            for name in ("item", "__bool__", "tolist", "cpu", "numpy"):
                monkeypatch.setattr(torch.Tensor, name, _raise)

    def _raise(*args, **kwargs):
        raise AssertionError("host read inside the sampling loop")

    for variance in ddpm.VARIANCES:
        ddpm.sample(gaussian_eps(MU, S), (4, 2), steps=5, variance=variance, clip_x0=3.0,
                    callback=lambda d: forbid(**d))
        monkeypatch.undo()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_loop_has_no_cuda_sync():
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)

    def enable(d):
        torch.cuda.set_sync_debug_mode("error" if d["i"] < 4 else "default")

    try:
        x = ddpm.sample(gaussian_eps(MU, S), (4, 2), steps=5, generator=g, device=dev, callback=enable)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.device.type == "cuda"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(steps=0), ValueError, "steps must be a positive int"),
        (dict(steps=T + 1), ValueError, "steps must be an int <= 1000"),
        (dict(steps=2.0), TypeError, "steps must be an int"),
        (dict(spacing="uniform"), ValueError, "spacing must be one of"),
        (dict(variance="medium"), ValueError, "variance must be one of"),
        (dict(target="score"), ValueError, "target must be one of"),
        (dict(clip_x0=-1.0), ValueError, "clip_x0 must be in"),
        (dict(shape=(0, 2)), ValueError, "shape must be"),
        (dict(noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
        (dict(net=3), TypeError, "net must be callable"),
        (dict(dtype=torch.long), TypeError, "dtype must be a floating"),
        (dict(cond=3), TypeError, "cond must be a mapping"),
        (dict(schedule=3), TypeError, "schedule must be a NoiseSchedule"),
    ],
)
def test_sample_errors(kwargs, exc, match):
    net, shape = kwargs.pop("net", lambda x, t: x), kwargs.pop("shape", (4, 2))
    with pytest.raises(exc, match=match):
        ddpm.sample(net, shape, **kwargs)
