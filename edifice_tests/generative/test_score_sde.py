"""Score SDEs: builder, SDE resolution, loss, step functions, sampler plumbing, bits/dim and every error.

The closed-form Gaussian oracles live in ``test_score_sde_oracle.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.generative import score_sde as S
from edifice.schedules import SubVPSDE, VESDE, VPSDE, make_sde

F64 = torch.float64


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def close(a, b, atol=1e-12):
    err = (a - b).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol:.3g}"


class Recorder:
    """A linear score ``-x / (1 + t)`` that records the times and keyword arguments of every call."""

    def __init__(self, sde="vp"):
        self.sde = make_sde(sde)
        self.times, self.kwargs = [], []

    def __call__(self, x, t, **kwargs):
        self.times.append(t.detach().clone())
        self.kwargs.append(kwargs)
        return -x / (1 + t.reshape(-1, *([1] * (x.ndim - 1))))


def _tiny(sde="vp", **kw):
    torch.manual_seed(0)
    return S.build(data_shape=(2,), hidden=16, depth=1, sde=sde, **kw)


# --- builder and ScoreNet ------------------------------------------------------------------------------


@pytest.mark.parametrize("sde,features,t_scale", [("vp", "sinusoidal", 1000.0), ("subvp", "sinusoidal", 1000.0),
                                                  ("ve", "fourier", 1.0)])
def test_build_defaults_per_sde(sde, features, t_scale):
    net = _tiny(sde)
    assert isinstance(net, S.ScoreNet) and net.sde == make_sde(sde)
    assert net.backbone.config["time_features"] == features and net.backbone.config["t_scale"] == t_scale
    assert net.config["sde"] == sde and net.config["time_features"] is None
    other = S.build(**net.config)  # the config rebuilds the same architecture
    other.load_state_dict(net.state_dict())


def test_build_explicit_time_features():
    assert _tiny("vp", time_features="fourier").backbone.config["t_scale"] == 1.0
    ve = _tiny("ve", time_features="sinusoidal", sigma_max=10.0)
    assert math.isclose(ve.backbone.config["t_scale"], 1000.0 / math.log(10.0 / 0.01))
    assert ve.sde == VESDE(0.01, 10.0)


@pytest.mark.parametrize("sde", ["vp", "ve", "subvp"])
def test_score_net_is_minus_backbone_over_std(sde):
    net = _tiny(sde)
    x, t = _randn(5, 2, dtype=torch.float32), torch.rand(5, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    c = net.sde.sigma(t).log() if sde == "ve" else t
    close(net.time_input(t), c, 0)
    with torch.no_grad():
        close(net(x, t), -net.backbone(x, c) / net.sde.std(t)[:, None], 1e-6)
        close(net(x, 0.5), net(x, torch.full((5,), 0.5)), 0)  # scalar times broadcast


def test_score_net_on_images_with_labels():
    torch.manual_seed(0)
    net = S.build(data_shape=(1, 4, 4), base_channels=8, channel_mults=(1, 2), num_classes=3)
    x, y = _randn(2, 1, 4, 4, dtype=torch.float32), torch.tensor([0, 2])
    assert net(x, torch.full((2,), 0.3), y=y).shape == (2, 1, 4, 4)
    out = S.sample(net, (2, 1, 4, 4), steps=2, cond={"y": y}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 4, 4) and out.dtype == torch.float32 and torch.isfinite(out).all()
    lp = S.log_prob(net, x, cond={"y": y}, steps=2, divergence=None, generator=torch.Generator().manual_seed(0))
    assert lp.shape == (2,) and torch.isfinite(lp).all()


def test_score_net_constructor_accepts_a_backbone_and_an_sde():
    net = S.ScoreNet(torch.nn.Linear(2, 2), VPSDE(0.2, 10.0))  # a backbone without time or labels is fine too
    assert net.config == {} and net.sde == VPSDE(0.2, 10.0)
    with pytest.raises(TypeError, match="backbone must be an nn.Module"):
        S.ScoreNet(lambda x, t: x)
    with pytest.raises(TypeError, match="sde must be a name or an SDE"):
        S.ScoreNet(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match="sde must be one of"):
        S.ScoreNet(torch.nn.Linear(2, 2), "vpp")


@pytest.mark.parametrize("kw,match", [
    (dict(sde="vpp"), "sde must be one of"), (dict(beta_min=0.0), "beta_min"), (dict(beta_max=0.05), "beta_min"),
    (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min"), (dict(time_features="gauss"), "time_features"),
    (dict(hidden=0), "hidden"), (dict(dropout=1.0), "dropout"),
])
def test_build_errors(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        S.build(data_shape=(2,), **kw)


# --- get_sde -------------------------------------------------------------------------------------------


def test_get_sde_resolution():
    net = _tiny("ve", sigma_max=10.0)
    assert S.get_sde(net) is net.sde
    assert S.get_sde(net, VESDE(0.01, 10.0)) == net.sde
    assert S.get_sde(lambda x, t: x, "subvp") == SubVPSDE()
    assert S.get_sde(VPSDE(0.2, 5.0)) == VPSDE(0.2, 5.0)
    sde = VPSDE(1.0, 2.0)
    assert S.get_sde(lambda x, t: x, sde) is sde


@pytest.mark.parametrize("net,sde,error,match", [
    (lambda x, t: x, None, ValueError, "sde must be given for a plain callable"),
    (lambda x, t: x, "vpp", ValueError, "sde must be one of"),
    (lambda x, t: x, 1.0, TypeError, "sde must be a name, an SDE or None"),
    ("net", "vp", ValueError, "contradicts the network's own"),
])
def test_get_sde_errors(net, sde, error, match):
    net = _tiny("ve") if net == "net" else net
    with pytest.raises(error, match=match):
        S.get_sde(net, sde)


# --- loss ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("weighting", ["variance", "likelihood", "none"])
def test_loss_formula(name, weighting):
    sde = make_sde(name)
    x, z = _randn(6, 1, 3, seed=1), _randn(6, 1, 3, seed=2)
    t = torch.linspace(0.1, 0.9, 6, dtype=F64)
    rec = Recorder(name)
    value, logs = S.loss(rec, x, weighting=weighting, noise=z, t=t)
    std = sde.std(t)[:, None, None]
    x_t = sde.scale(t)[:, None, None] * x + std * z
    close(rec.times[0], t, 0)
    s = rec(x_t, t)
    per = ((std * s + z) if weighting == "variance" else (s + z / std)).square().sum((1, 2))
    if weighting == "likelihood":
        per = per * sde.diffusion(t) ** 2
    close(value, per.mean(), 1e-12)
    assert logs["loss"] == value and not logs["loss"].requires_grad


def test_loss_draws_times_in_eps_one_and_is_deterministic():
    rec, x = Recorder("vp"), _randn(4000, 2)
    a, _ = S.loss(rec, x, eps=0.25, generator=torch.Generator().manual_seed(3))
    b, _ = S.loss(rec, x, eps=0.25, generator=torch.Generator().manual_seed(3))
    c, _ = S.loss(rec, x, eps=0.25, generator=torch.Generator().manual_seed(4))
    assert a == b and a != c
    t = rec.times[0]
    assert t.min() >= 0.25 and t.max() <= 1.0 and abs(t.mean().item() - 0.625) < 0.01


def test_loss_trains_a_score_net_with_labels_and_backprops():
    torch.manual_seed(0)
    net = S.build(data_shape=(2,), hidden=16, depth=1, num_classes=2, sde="subvp")
    x, y = _randn(8, 2, dtype=torch.float32), torch.tensor([0, 1] * 4)
    value, _ = S.loss(net, x, weighting="likelihood", cond={"y": y}, generator=torch.Generator().manual_seed(0))
    value.backward()
    assert all(p.grad is not None for p in net.parameters())


# --- step functions --------------------------------------------------------------------------------------


@given(name=st.sampled_from(["vp", "ve", "subvp"]), t=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_probability_flow_is_drift_minus_half_g2_score(name, t, seed):
    sde, rec = make_sde(name), Recorder(name)
    x = _randn(3, 2, seed=seed)
    tt = torch.full((3,), t, dtype=F64)
    f = S.probability_flow(rec, cond={"y": 1})
    close(f(torch.tensor(t, dtype=F64), x), sde.drift(x, tt) - 0.5 * sde.diffusion(tt)[:, None] ** 2 * rec(x, tt), 1e-9)
    assert rec.kwargs[0] == {"y": 1}
    close(S.reverse_sde_drift(sde, x, tt, rec(x, tt)), sde.drift(x, tt) - sde.diffusion(tt)[:, None] ** 2 * rec(x, tt),
          1e-9)


def test_probability_flow_clamps_time_to_eps_one():
    rec = Recorder("vp")
    f = S.probability_flow(rec, eps=0.01)
    x = _randn(2, 2)
    close(f(torch.tensor(-0.5, dtype=F64), x), f(torch.tensor(0.01, dtype=F64), x), 0)
    close(f(torch.tensor(1.5, dtype=F64), x), f(torch.tensor(1.0, dtype=F64), x), 0)
    assert all(bool(((t >= 0.01) & (t <= 1.0)).all()) for t in rec.times)


@given(t=st.floats(0.05, 1.0), t_next=st.floats(0.0, 0.04), seed=st.integers(0, 1000))
def test_reverse_diffusion_step_for_ve_is_smld(t, t_next, seed):
    sde = VESDE(0.01, 50.0)
    x, s, z = _randn(3, 2, seed=seed), _randn(3, 2, seed=seed + 1), _randn(3, 2, seed=seed + 2)
    sig, sig_next = sde.sigma(torch.tensor(t, dtype=F64)), sde.sigma(torch.tensor(t_next, dtype=F64))
    g2 = sig**2 - sig_next**2
    close(S.reverse_diffusion_step(sde, x, t, s, z, t_next=t_next), x + g2 * s + g2.sqrt() * z, 1e-9 * (1 + g2.item()))
    # Song's N-level ladder: σ_i = σ_min (σ_max / σ_min)^{i / (N - 1)}, step from level i to i - 1 (σ_{-1} = 0).
    N, i = 11, 7
    s_i, s_prev = (sde.sigma(torch.tensor(k / (N - 1), dtype=F64)) for k in (i, i - 1))
    g2 = s_i**2 - s_prev**2
    close(S.reverse_diffusion_step(sde, x, i / (N - 1), s, z, N), x + g2 * s + g2.sqrt() * z, 1e-9 * g2.item())
    close(S.reverse_diffusion_step(sde, x, 0.0, s, None, N), x + 0.01**2 * s, 1e-12)  # last level: to σ = 0


@given(name=st.sampled_from(["vp", "subvp"]), t=st.floats(0.1, 1.0), seed=st.integers(0, 1000))
def test_reverse_diffusion_step_for_vp_is_ddpm(name, t, seed):
    sde = make_sde(name)
    x, s, z = _randn(3, 2, seed=seed), _randn(3, 2, seed=seed + 1), _randn(3, 2, seed=seed + 2)
    tt, tn = torch.tensor([t], dtype=F64), torch.tensor([t - 0.05], dtype=F64)
    a, g = S.transition(sde, tt, tn, x[:1])
    step = S.reverse_diffusion_step(sde, x, t, s, z, t_next=t - 0.05)
    close(step, (2 - a) * x + g**2 * s + g * z, 1e-12)
    if name == "vp":  # the grid transition is DDPM's respaced step: β = 1 - ᾱ_t / ᾱ_{t_next}
        close(g**2, 1 - (sde.scale(tt) / sde.scale(tn)) ** 2, 1e-12)
    f, G = sde.discretize(x, tt.expand(3), 1000)  # Song's fixed-level discretisation
    close(S.reverse_diffusion_step(sde, x, t, s, z, 1000), x - f + G[:, None] ** 2 * s + G[:, None] * z, 1e-12)


def test_euler_maruyama_step_formula():
    sde, x, s, z = make_sde("subvp"), _randn(4, 2, seed=1), _randn(4, 2, seed=2), _randn(4, 2, seed=3)
    t = torch.full((4,), 0.6, dtype=F64)
    g = sde.diffusion(t)[:, None]
    mean = x + (sde.drift(x, t) - g**2 * s) * -0.01
    close(S.euler_maruyama_step(sde, x, t, -0.01, s, None), mean, 1e-12)
    close(S.euler_maruyama_step(sde, x, t, torch.full((4,), -0.01, dtype=F64), s, z), mean + g * 0.1 * z, 1e-12)


def test_langevin_corrector_step_uses_batch_norms_and_alpha():
    x, s, z = _randn(5, 3, seed=1), _randn(5, 3, seed=2), _randn(5, 3, seed=3)
    ratio = z.norm(dim=1).mean() / s.norm(dim=1).mean()  # Song's batch-averaged norms
    eps_ve = 2 * (0.16 * ratio) ** 2
    close(S.langevin_corrector_step("ve", x, 0.5, s, z, snr=0.16), x + eps_ve * s + (2 * eps_ve).sqrt() * z, 1e-12)
    close(S.langevin_corrector_step("ve", x, 0.5, 0 * s, z, snr=0.16), x, 0)  # a zero score (fresh net): no step
    alpha = torch.linspace(0.5, 1.0, 5, dtype=F64)
    eps_a = (alpha * eps_ve)[:, None]
    close(S.langevin_corrector_step("vp", x, 0.5, s, z, snr=0.16, alpha=alpha), x + eps_a * s + (2 * eps_a).sqrt() * z,
          1e-12)
    # VP without alpha: Song's α_i = 1 - β_i of the N-level DDPM discretisation
    sde, N = make_sde("vp"), 1000
    beta = (sde.beta_min + math.floor(0.5 * (N - 1)) * (sde.beta_max - sde.beta_min) / (N - 1)) / N
    close(S.langevin_corrector_step(sde, x, 0.5, s, z, snr=0.16, N=N),
          S.langevin_corrector_step(sde, x, 0.5, s, z, snr=0.16, alpha=1 - beta), 1e-12)


@given(name=st.sampled_from(["vp", "ve", "subvp"]), t=st.floats(1e-3, 1.0), seed=st.integers(0, 1000))
def test_denoise_step_inverts_the_kernel_for_a_point_mass(name, t, seed):
    # Data at a single point x0: the marginal score is -(x - scale x0) / std², and Tweedie returns x0 exactly.
    sde, x0 = make_sde(name), _randn(1, 2, seed=seed)
    tt = torch.full((4,), t, dtype=F64)
    x = sde.perturb(x0.expand(4, 2), tt, _randn(4, 2, seed=seed + 1))
    score = -(x - sde.scale(tt)[:, None] * x0) / sde.std(tt)[:, None] ** 2
    close(S.denoise_step(sde, x, tt, score), x0.expand(4, 2), 1e-8 * (1 + sde.std(tt)[0].item() ** 2))


# --- samplers: plumbing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,calls", [
    (dict(), 2 * 6 + 1), (dict(corrector_steps=3), 4 * 6 + 1), (dict(denoise=False), 2 * 6),
    (dict(corrector="none"), 6 + 1), (dict(predictor="euler_maruyama", corrector="none"), 6 + 1),
    (dict(predictor="none"), 6 + 1), (dict(sampler="em"), 6 + 1), (dict(sampler="ode", method="euler"), 6 + 1),
    (dict(sampler="ode", method="rk4", denoise=False), 4 * 6),
])
def test_network_calls_and_times(kw, calls):
    rec = Recorder("vp")
    S.sample(rec, (3, 2), steps=6, eps=0.01, generator=torch.Generator().manual_seed(0), **kw)
    assert len(rec.times) == calls
    times = torch.stack(rec.times)  # (calls, B)
    assert times.min().item() >= 0.01 - 1e-7 and times.max().item() <= 1.0
    if kw.get("predictor", "rd") != "none":
        assert torch.all(times[0] == 1.0)  # the first predictor step starts at t = 1
    if kw.get("denoise", True):
        assert torch.allclose(times[-1], torch.tensor(0.01))  # Tweedie at eps


@pytest.mark.parametrize("sampler", ["pc", "em", "ode"])
def test_callback_sees_every_step_and_does_not_change_the_result(sampler):
    seen = []
    kw = dict(sde="ve", sampler=sampler, steps=5, eps=1e-3, method="heun")
    a = S.sample(Recorder("ve"), (2, 2), callback=seen.append, generator=torch.Generator().manual_seed(1), **kw)
    b = S.sample(Recorder("ve"), (2, 2), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a, b)
    assert [d["i"] for d in seen] == list(range(5)) and all(d["x"].shape == (2, 2) for d in seen)
    assert abs(seen[-1]["t"].item() - 1e-3) < 1e-7


def test_sample_prior_scale_device_dtype_and_determinism():
    noise = _randn(4, 2)
    x = S.sample(lambda x, t: 0 * x, (4, 2), sde=VESDE(0.01, 7.0), sampler="ode", steps=2, noise=noise,
                 denoise=False)
    close(x, 7.0 * noise, 1e-12)  # a zero score leaves the VE prior sample in place; float64 follows the noise
    assert x.dtype == F64
    net = _tiny("vp")
    out = S.sample(net, (3, 2), steps=3, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32  # follows the net's parameters
    out64 = S.sample(Recorder(), (3, 2), steps=3, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(0))
    assert out64.dtype == F64
    runs = [S.sample(Recorder(), (3, 2), steps=4, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_sample_passes_cond_to_every_call():
    rec = Recorder()
    S.sample(rec, (2, 2), steps=3, cond={"y": "label"}, generator=torch.Generator().manual_seed(0))
    assert rec.kwargs and all(k == {"y": "label"} for k in rec.kwargs)


# --- likelihood and bits/dim -------------------------------------------------------------------------------


def test_log_prob_of_the_vp_fixed_point_is_the_standard_normal():
    x = _randn(5, 3)
    lp = S.log_prob(lambda x, t: -x, x, sde="vp", steps=3, method="euler")
    close(lp, -0.5 * x.square().sum(1) - 1.5 * math.log(2 * math.pi), 1e-12)


def test_bits_per_dim_matches_the_dequantisation_formula():
    # VP with the score -x is exactly N(0, I) in model space (zero flow), so log_prob is closed form.
    k = torch.randint(0, 256, (6, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    x = (k / 255.0).to(F64)
    score = lambda x, t: -x  # noqa: E731
    bpd = S.bits_per_dim(score, x, sde="vp", n_dequant=2, steps=2, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    total = 0
    for _ in range(2):
        z = (k + torch.rand(x.shape, generator=g, dtype=F64)) / 256 * 2 - 1
        total = total + (-0.5 * z.square().sum((1, 2, 3)) - 2 * math.log(2 * math.pi))
    expected = -(total / 2 + 4 * math.log(2) - 4 * math.log(256)) / (4 * math.log(2))
    assert bpd.shape == (6,) and bpd.dtype == F64
    close(bpd, expected, 1e-10)
    # Hutchinson is the default above 16 dimensions and is exact here (the flow is zero)
    big = torch.zeros(2, 17, dtype=F64)
    bpd_h = S.bits_per_dim(score, big, sde="vp", steps=1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(bpd_h).all()


# --- errors ----------------------------------------------------------------------------------------------


def _call(fn, **kw):
    net = kw.pop("net", Recorder("vp"))
    if fn == "sample":
        return S.sample(net, kw.pop("shape", (2, 2)), **{"steps": 2, **kw})
    if fn == "loss":
        return S.loss(net, kw.pop("x", _randn(3, 2)), **kw)
    if fn == "log_prob":
        return S.log_prob(net, kw.pop("x", _randn(3, 2)), **{"steps": 2, **kw})
    return S.bits_per_dim(net, kw.pop("x", torch.zeros(3, 2, dtype=F64)), **{"steps": 2, **kw})


@pytest.mark.parametrize("fn,kw,error,match", [
    ("sample", dict(sde="vpp"), ValueError, "sde must be one of"),
    ("sample", dict(net=lambda x, t: x), ValueError, "sde must be given for a plain callable"),
    ("sample", dict(sampler="ddim"), ValueError, "sampler must be one of"),
    ("sample", dict(predictor="heun"), ValueError, "predictor must be one of"),
    ("sample", dict(corrector="ald"), ValueError, "corrector must be one of"),
    ("sample", dict(predictor="none", corrector="none"), ValueError, "cannot both be 'none'"),
    ("sample", dict(steps=0), ValueError, "steps must be a positive int, got 0"),
    ("sample", dict(steps=2.0), TypeError, "steps must be an int"),
    ("sample", dict(eps=0.0), ValueError, r"eps must be in \(0.0, 1.0\)"),
    ("sample", dict(eps=1.0), ValueError, "eps must be in"),
    ("sample", dict(snr=0.0), ValueError, "snr must be in"),
    ("sample", dict(corrector_steps=0), ValueError, "corrector_steps must be a positive int"),
    ("sample", dict(method="rk5"), ValueError, "method must be one of"),
    ("sample", dict(rtol=0.0), ValueError, "rtol must be in"),
    ("sample", dict(atol=-1.0), ValueError, "atol must be in"),
    ("sample", dict(denoise=1), TypeError, "denoise must be a bool"),
    ("sample", dict(noise=torch.zeros(3, 2)), ValueError, r"noise must have shape \(2, 2\)"),
    ("sample", dict(shape=(0, 2)), ValueError, "shape must be a non-empty tuple"),
    ("sample", dict(cond=[1]), TypeError, "cond must be a mapping"),
    ("sample", dict(generator=0), TypeError, "generator must be a torch.Generator"),
    ("sample", dict(callback=1), TypeError, "callback must be callable"),
    ("sample", dict(net=lambda x, t: x[:, :1], sde="vp"), ValueError, r"net must return a score shaped like x \(2, 2\)"),
    ("sample", dict(net=3, sde="vp"), TypeError, "net must be callable"),
    ("loss", dict(weighting="snr"), ValueError, "weighting must be one of"),
    ("loss", dict(eps=1.5), ValueError, "eps must be in"),
    ("loss", dict(t=1e-6), ValueError, r"t must lie in \[1e-05, 1\]"),
    ("loss", dict(t=torch.tensor([0.5, 0.5, 1.2])), ValueError, "t must lie in"),
    ("loss", dict(t=torch.tensor([0.5, 0.5])), ValueError, r"t must have shape \(3,\)"),
    ("loss", dict(noise=torch.zeros(3, 3)), ValueError, r"noise must have shape \(3, 2\)"),
    ("loss", dict(x=torch.zeros(3)), ValueError, "x must be a batch"),
    ("loss", dict(x=torch.zeros(3, 2, dtype=torch.long)), TypeError, "x must be a floating-point tensor"),
    ("loss", dict(net=lambda x, t: x), ValueError, "sde must be given for a plain callable"),
    ("loss", dict(sde="ve"), ValueError, "contradicts the network's own"),
    ("log_prob", dict(eps=0.0), ValueError, "eps must be in"),
    ("log_prob", dict(steps=0), ValueError, "steps must be a positive int"),
    ("log_prob", dict(method="rk5"), ValueError, "method must be one of"),
    ("log_prob", dict(divergence="approx"), ValueError, "divergence must be one of"),
    ("log_prob", dict(n_probes=0, divergence="hutchinson"), ValueError, "n_probes must be a positive int"),
    ("log_prob", dict(dist="uniform"), ValueError, "dist must be one of"),
    ("log_prob", dict(net=lambda x, t: x), ValueError, "sde must be given for a plain callable"),
    ("bits_per_dim", dict(x=torch.full((2, 2), 0.5, dtype=F64)), ValueError, "multiples of 1/255"),
    ("bits_per_dim", dict(x=torch.full((2, 2), 2.0, dtype=F64)), ValueError, "8-bit values in"),
    ("bits_per_dim", dict(n_dequant=0), ValueError, "n_dequant must be a positive int"),
])
def test_entry_point_errors(fn, kw, error, match):
    with pytest.raises(error, match=match):
        _call(fn, **kw)


@pytest.mark.parametrize("call,error,match", [
    (lambda x, s: S.reverse_diffusion_step("vp", x, 0.5, s, None), ValueError, "exactly one of N and t_next"),
    (lambda x, s: S.reverse_diffusion_step("vp", x, 0.5, s, None, 10, t_next=0.4), ValueError, "exactly one"),
    (lambda x, s: S.reverse_diffusion_step("vp", x, 0.5, s, None, 1), ValueError, "N must be an int >= 2"),
    (lambda x, s: S.reverse_diffusion_step("vp", x, 0.5, s[:, :1], None, 10), ValueError, "score must have shape"),
    (lambda x, s: S.reverse_diffusion_step("vp", x, 0.5, s, s[:1], 10), ValueError, "noise must have shape"),
    (lambda x, s: S.reverse_diffusion_step(None, x, 0.5, s, None, 10), TypeError, "sde must be a name or an SDE"),
    (lambda x, s: S.euler_maruyama_step("vp", x, 0.5, 0.01, s, None), ValueError, r"dt must be in \[-inf, 0.0\)"),
    (lambda x, s: S.euler_maruyama_step("vp", x, torch.ones(4), -0.1, s, None), ValueError, r"t must have shape"),
    (lambda x, s: S.langevin_corrector_step("ve", x, 0.5, s, s, snr=-1.0), ValueError, "snr must be in"),
    (lambda x, s: S.langevin_corrector_step("vp", x, 0.5, s, s, snr=0.1), ValueError, "N or alpha must be given"),
    (lambda x, s: S.langevin_corrector_step("vp", x, 0.5, s, s, snr=0.1, N=20), ValueError, "N must exceed beta_max"),
    (lambda x, s: S.denoise_step("vp", x.long(), 0.5, s), TypeError, "x must be a floating-point tensor"),
    (lambda x, s: S.probability_flow(3, "vp"), TypeError, "net must be callable"),
    (lambda x, s: S.probability_flow(lambda x, t: x), ValueError, "sde must be given"),
    (lambda x, s: S.probability_flow(lambda x, t: x, "vp", eps=1.0), ValueError, "eps must be in"),
])
def test_step_function_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(_randn(3, 2), _randn(3, 2, seed=1))
