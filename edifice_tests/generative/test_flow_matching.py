"""Flow matching: path, couplings, time laws, loss, sampler plumbing, builder and errors.

The closed-form Gaussian oracles live in ``test_flow_matching_oracle.py``.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.generative import flow_matching as fm


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Recorder:
    """A callable velocity network that records every call's keyword arguments and times."""

    def __init__(self, scale=0.5):
        self.kwargs, self.times, self.scale = [], [], scale

    def __call__(self, x, t, **kwargs):
        self.kwargs.append(kwargs)
        self.times.append(t.detach().clone())
        return -self.scale * x + t.reshape(-1, *([1] * (x.ndim - 1)))


# --- path -----------------------------------------------------------------------------------------

@given(seed=st.integers(0, 2**16), sigma_min=st.floats(0.0, 0.9), d=st.integers(1, 4))
def test_path_endpoints(seed, sigma_min, d):
    x0, x1 = _randn(5, d, seed=seed), _randn(5, d, seed=seed + 1)
    xa, _ = fm.path(x0, x1, 0.0, sigma_min=sigma_min)
    torch.testing.assert_close(xa, x0)
    xb, _ = fm.path(x0, x1, 1.0, sigma_min=sigma_min)
    torch.testing.assert_close(xb, x1 + sigma_min * x0)  # N(x1, σ_min² I) given x1
    if sigma_min == 0.0:
        torch.testing.assert_close(xb, x1)


def test_path_end_marginal_has_std_sigma_min():
    x1 = _randn(1, 3, seed=1).expand(20000, 3)
    x0 = _randn(20000, 3, seed=2)
    xb, _ = fm.path(x0, x1, torch.ones(20000, dtype=torch.float64), sigma_min=0.1)
    torch.testing.assert_close((xb - x1).std(0), torch.full((3,), 0.1, dtype=torch.float64), atol=2e-3, rtol=0)


@given(seed=st.integers(0, 2**16), sigma_min=st.floats(0.0, 0.9), t=st.floats(0.0, 1.0))
def test_path_velocity_is_time_derivative(seed, sigma_min, t):
    x0, x1 = _randn(4, 1, 3, seed=seed), _randn(4, 1, 3, seed=seed + 7)
    tt = torch.full((4,), t, dtype=torch.float64)
    _, u = fm.path(x0, x1, tt, sigma_min=sigma_min)
    _, dxdt = torch.func.jvp(lambda s: fm.path(x0, x1, s, sigma_min=sigma_min)[0], (tt,), (torch.ones_like(tt),))
    torch.testing.assert_close(u, dxdt)


def test_path_accepts_per_sample_times():
    x0, x1 = _randn(3, 2, seed=0), _randn(3, 2, seed=1)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    xt, _ = fm.path(x0, x1, t)
    torch.testing.assert_close(xt[1], 0.5 * (x0[1] + x1[1]))


# --- time laws ------------------------------------------------------------------------------------

@given(loc=st.floats(-30.0, 30.0), scale=st.floats(0.01, 20.0), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_logit_normal_times_in_open_unit_interval(loc, scale, dtype):
    t = fm.sample_time(256, dist="logit_normal", loc=loc, scale=scale, generator=torch.Generator().manual_seed(0),
                       dtype=dtype)
    assert t.shape == (256,) and t.dtype == dtype
    assert bool(((t > 0) & (t < 1)).all())


def test_time_laws_statistics_and_determinism():
    g = torch.Generator().manual_seed(0)
    u = fm.sample_time(20000, generator=g)
    assert 0.0 <= u.min().item() and u.max().item() < 1.0 and abs(u.mean().item() - 0.5) < 0.01
    t = fm.sample_time(20000, dist="logit_normal", loc=0.5, scale=1.0, generator=g, dtype=torch.float64)
    z = torch.logit(t)
    assert abs(z.mean().item() - 0.5) < 0.03 and abs(z.std().item() - 1.0) < 0.03
    a = fm.sample_time(8, dist="logit_normal", generator=torch.Generator().manual_seed(3))
    b = fm.sample_time(8, dist="logit_normal", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# --- OT coupling ----------------------------------------------------------------------------------

def _cost(x0, x1):
    return (x0 - x1).flatten(1).square().sum().item()


@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), d=st.integers(1, 3))
def test_ot_coupling_equals_brute_force(seed, n, d):
    x0, x1 = _randn(n, d, seed=seed), _randn(n, d, seed=seed + 1)
    best = min(_cost(x0[list(p)], x1) for p in itertools.permutations(range(n)))
    perm = fm.ot_permutation(x0, x1)
    assert sorted(perm.tolist()) == list(range(n))
    assert abs(_cost(fm.ot_coupling(x0, x1), x1) - best) < 1e-9


@given(seed=st.integers(0, 2**16), n=st.integers(1, 64), shape=st.sampled_from([(2,), (5,), (1, 2, 2)]))
def test_ot_coupling_never_increases_cost(seed, n, shape):
    x0, x1 = _randn(n, *shape, seed=seed), _randn(n, *shape, seed=seed + 1) + 1.0
    paired = fm.ot_coupling(x0, x1)
    assert paired.shape == x0.shape
    assert _cost(paired, x1) <= _cost(x0, x1) + 1e-9
    # A permutation of the rows: the same multiset of points.
    torch.testing.assert_close(paired.flatten(1).sum(0), x0.flatten(1).sum(0))


def test_ot_coupling_recovers_a_shuffled_translation():
    x1 = _randn(32, 2, seed=3)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    x0 = x1[perm] + 1e-3
    torch.testing.assert_close(fm.ot_coupling(x0, x1), x1 + 1e-3)


# --- loss -----------------------------------------------------------------------------------------

def test_loss_matches_manual_computation():
    x1, noise = _randn(8, 3, seed=0), _randn(8, 3, seed=1)
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    net = Recorder()
    value, logs = fm.loss(net, x1, noise=noise, t=t, sigma_min=0.05)
    xt = (1 - 0.95 * t[:, None]) * noise + t[:, None] * x1
    expected = (net(xt, t) - (x1 - 0.95 * noise)).square().mean()
    torch.testing.assert_close(value, expected)
    assert set(logs) == {"loss"} and not logs["loss"].requires_grad


def test_loss_ot_coupling_permutes_the_noise():
    x1, noise = _randn(16, 2, seed=0) + 3.0, _randn(16, 2, seed=1)
    t = torch.full((16,), 0.3, dtype=torch.float64)
    a, _ = fm.loss(Recorder(), x1, noise=noise, t=t, coupling="ot")
    b, _ = fm.loss(Recorder(), x1, noise=fm.ot_coupling(noise, x1), t=t)
    torch.testing.assert_close(a, b)


def test_loss_determinism_and_time_laws():
    x1 = _randn(32, 2, seed=0, dtype=torch.float32)
    runs = [fm.loss(Recorder(), x1, generator=torch.Generator().manual_seed(s), coupling="ot")[0] for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    net = Recorder()
    fm.loss(net, x1, time_dist="logit_normal", time_loc=-1.0, time_scale=0.5, generator=torch.Generator())
    t = net.times[0]
    assert t.shape == (32,) and t.dtype == torch.float32 and bool(((t > 0) & (t < 1)).all())
    assert t.mean().item() < 0.4


def test_class_labels_reach_the_network():
    y = torch.tensor([0, 2, 1, 1])
    x1 = _randn(4, 2, seed=0, dtype=torch.float32)
    net = Recorder()
    fm.loss(net, x1, cond={"y": y}, coupling="ot", generator=torch.Generator())
    fm.sample(net, (4, 2), steps=3, method="heun", cond={"y": y}, generator=torch.Generator())
    fm.log_prob(net, x1, steps=2, method="euler", cond={"y": y})
    assert len(net.kwargs) == 1 + 6 + 2
    assert all(set(k) == {"y"} and torch.equal(k["y"], y) for k in net.kwargs)


# --- sampler plumbing -----------------------------------------------------------------------------

def test_sample_callback_and_determinism():
    seen = []
    net = Recorder()
    a = fm.sample(net, (6, 2), steps=5, generator=torch.Generator().manual_seed(0), callback=seen.append)
    b = fm.sample(net, (6, 2), steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (6, 2) and a.dtype == torch.float32
    assert len(seen) == 5 and {"i", "t", "x"} <= set(seen[0])
    times = torch.stack([t[0] for t in net.times[:5]])
    torch.testing.assert_close(times, torch.linspace(0, 0.8, 5))  # Euler evaluates at the left ends


def test_sample_follows_noise_net_and_explicit_dtype():
    net = torch.nn.Linear(2, 2).double()
    field = lambda x, t: net(x)  # noqa: E731
    assert fm.sample(field, (3, 2), steps=2, noise=_randn(3, 2)).dtype == torch.float64
    mod = fm.build(data_shape=(2,), hidden=8, depth=1).double()
    assert fm.sample(mod, (3, 2), steps=2, generator=torch.Generator()).dtype == torch.float64
    out = fm.sample(Recorder(), (3, 2), steps=2, dtype=torch.float64, generator=torch.Generator())
    assert out.dtype == torch.float64
    out = fm.sample(Recorder(), (3, 2), steps=2, noise=_randn(3, 2), dtype=torch.float32)
    assert out.dtype == torch.float32


def test_sample_runs_under_no_grad_with_a_built_network():
    net = fm.build(data_shape=(2,), hidden=16, depth=1, num_classes=2)
    with torch.no_grad():
        x = fm.sample(net, (4, 2), steps=2, cond={"y": torch.tensor([0, 1, 0, 1])}, generator=torch.Generator())
        lp = fm.log_prob(net, x, steps=2)
    assert torch.isfinite(x).all() and lp.shape == (4,) and torch.isfinite(lp).all()


def test_everything_follows_the_device(device):
    net = fm.build(data_shape=(2,), hidden=16, depth=1).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    x1 = torch.randn(8, 2, device=device)
    value, _ = fm.loss(net, x1, coupling="ot", time_dist="logit_normal", generator=g)
    assert value.device.type == device.type
    with torch.no_grad():
        x = fm.sample(net, (8, 2), steps=2, method="midpoint", generator=g)
    assert x.device.type == device.type
    assert fm.log_prob(net, x, steps=2, divergence="hutchinson", generator=g).device.type == device.type


def test_build_shapes_and_time_scale():
    vec = fm.build(data_shape=(3,), hidden=16, depth=2)
    assert vec(torch.randn(5, 3), torch.rand(5)).shape == (5, 3)
    assert vec.config["t_scale"] == 1000.0
    img = fm.build(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2), num_classes=3)
    assert img(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.tensor([0, 2])).shape == (2, 1, 8, 8)


# --- errors ---------------------------------------------------------------------------------------

X = torch.zeros(4, 2)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fm.loss(Recorder(), X, coupling="sinkhorn"), ValueError, "coupling must be one of"),
    (lambda: fm.loss(Recorder(), X, time_dist="beta"), ValueError, "time_dist must be one of"),
    (lambda: fm.loss(Recorder(), X, time_loc=1.0), ValueError, "only apply to time_dist='logit_normal'"),
    (lambda: fm.loss(Recorder(), X, time_dist="logit_normal", time_scale=-1.0), ValueError, "time_scale must be"),
    (lambda: fm.loss(Recorder(), X, time_dist="beta", t=0.5), ValueError, "time_dist must be one of"),
    (lambda: fm.loss(Recorder(), X, sigma_min=-0.1), ValueError, "sigma_min must be in"),
    (lambda: fm.loss(Recorder(), X, sigma_min=1.0), ValueError, "sigma_min must be in"),
    (lambda: fm.loss(Recorder(), X, noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
    (lambda: fm.loss(Recorder(), X, t=torch.zeros(3)), ValueError, "t must have shape"),
    (lambda: fm.loss(Recorder(), torch.zeros(4)), ValueError, "x1 must be a batch"),
    (lambda: fm.loss(Recorder(), X.long()), TypeError, "x1 must be a floating-point"),
    (lambda: fm.loss(Recorder(), X, cond=[1]), TypeError, "cond must be a mapping"),
    (lambda: fm.loss(Recorder(), X, generator=0), TypeError, "generator must be"),
    (lambda: fm.path(X, X, 0.5, sigma_min=2.0), ValueError, "sigma_min must be in"),
    (lambda: fm.path(X, torch.zeros(4, 3), 0.5), ValueError, "same shape"),
    (lambda: fm.ot_coupling(torch.zeros(4, 2), torch.zeros(5, 2)), ValueError, "same number of samples"),
    (lambda: fm.ot_permutation(torch.zeros(4, 2), torch.zeros(4, 3)), ValueError, "same shape"),
    (lambda: fm.ot_coupling(torch.zeros(4), torch.zeros(4)), ValueError, "must be batches"),
    (lambda: fm.ot_coupling([1.0], X), TypeError, "x0 must be a torch.Tensor"),
    (lambda: fm.sample_time(0), ValueError, "n must be a positive int"),
    (lambda: fm.sample_time(4, dist="beta"), ValueError, "dist must be one of"),
    (lambda: fm.sample_time(4, dist="logit_normal", scale=0.0), ValueError, "scale must be in"),
    (lambda: fm.sample_time(4, loc=1.0), ValueError, "only apply to dist='logit_normal'"),
    (lambda: fm.sample_time(4, dtype=torch.int64), TypeError, "dtype must be a floating"),
    (lambda: fm.sample(Recorder(), (4, 2), steps=0), ValueError, "steps must be a positive int"),
    (lambda: fm.sample(Recorder(), (4, 2), steps=2.5), TypeError, "steps must be an int"),
    (lambda: fm.sample(Recorder(), (4, 2), method="leapfrog"), ValueError, "method must be one of.*rk4"),
    (lambda: fm.sample(Recorder(), (4, 2), rtol=0.0, method="dopri5"), ValueError, "rtol must be in"),
    (lambda: fm.sample(Recorder(), (4, 0)), ValueError, "shape must be"),
    (lambda: fm.sample(Recorder(), (4, 2), noise=torch.zeros(4, 3)), ValueError, "noise must have shape"),
    (lambda: fm.sample(Recorder(), (4, 2), dtype=torch.int32), TypeError, "dtype must be a floating"),
    (lambda: fm.log_prob(Recorder(), X, steps=0), ValueError, "steps must be a positive int"),
    (lambda: fm.log_prob(Recorder(), X, method="leapfrog"), ValueError, "method must be one of"),
    (lambda: fm.log_prob(Recorder(), X, divergence="skilling"), ValueError, "divergence must be one of"),
    (lambda: fm.log_prob(Recorder(), X, n_probes=0), ValueError, "n_probes must be a positive int"),
    (lambda: fm.log_prob(Recorder(), torch.zeros(4)), ValueError, "x must be a batch"),
    (lambda: fm.build(data_shape=(2, 3)), ValueError, "data_shape must be"),
    (lambda: fm.build(data_shape=(1, 8, 6)), ValueError, "data_shape must be"),
    (lambda: fm.build(data_shape=(1, 6, 6), channel_mults=(1, 2, 2)), ValueError, "data_shape image size"),
    (lambda: fm.build(data_shape=(0,)), ValueError, "data_shape must be"),
    (lambda: fm.build(data_shape=(2,), num_classes=-2), ValueError, "num_classes must be"),
    (lambda: fm.build(data_shape=(2,), hidden=0), ValueError, "hidden must be"),
    (lambda: fm.build(data_shape=(2,), depth=0), ValueError, "depth must be"),
    (lambda: fm.build(data_shape=(2,), dropout=1.0), ValueError, "dropout must be in"),
    (lambda: fm.build(data_shape=(1, 8, 8), base_channels=0), ValueError, "base_channels must be"),
    (lambda: fm.build(data_shape=(1, 8, 8), num_res_blocks=0), ValueError, "num_res_blocks must be"),
    (lambda: fm.build(data_shape=(1, 8, 8), channel_mults=()), ValueError, "channel_mults must be"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
