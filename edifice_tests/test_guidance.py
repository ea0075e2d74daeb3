"""Classifier-free guidance and classifier guidance: exact scale properties, one batched call, the interval,
closed-form oracles (two-Gaussian mixture), every family's sampler, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from edifice import guidance
from edifice.generative import ddim, ddpm, edm, flow_matching, score_sde
from edifice.schedules import make_schedule, make_sde

K = 3


def _nets():
    torch.manual_seed(0)
    return {
        "resmlp": (ddpm.build(data_shape=(2,), num_classes=K, hidden=16, depth=2), (2,)),
        "unet": (ddpm.build(data_shape=(1, 8, 8), num_classes=K, base_channels=8), (1, 8, 8)),
    }


NETS = _nets()


def _inputs(shape, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *shape, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g).float()
    y = torch.randint(0, K, (b,), generator=g)
    return x, t, y


class Recorder:
    """A closed-form conditional 'network' that records every call: output = x * (1 + y) + t (null label 0)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, y=None, **cond):
        self.calls.append((x.shape[0], None if y is None else y.clone(), {k: getattr(v, "shape", v) for k, v in cond.items()}))
        lab = torch.zeros(x.shape[0], dtype=x.dtype) if y is None else torch.where(y == K, 0, y + 1).to(x.dtype)
        extra = cond["context"].sum(dim=(1, 2)) if "context" in cond else 0.0
        return x * (1.0 + lab[:, None]) + (t + extra)[:, None]


# ----------------------------------------------------------------------------- exact scale properties


@pytest.mark.parametrize("name", NETS)
def test_scale_one_is_exactly_the_conditional_network(name):
    net, shape = NETS[name]
    x, t, y = _inputs(shape)
    assert torch.equal(guidance.cfg(net, 1.0)(x, t, y=y), net(x, t, y=y))


@pytest.mark.parametrize("name", NETS)
def test_scale_zero_is_exactly_the_unconditional_network(name):
    net, shape = NETS[name]
    x, t, y = _inputs(shape)
    uncond = net(x, t)
    assert torch.equal(guidance.cfg(net, 0.0)(x, t, y=y), uncond)
    assert torch.equal(net(x, t, y=torch.full_like(y, K)), uncond)  # y=None is the null label


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0, 7.5])
def test_unconditional_path_is_never_changed(name, scale):
    net, shape = NETS[name]
    x, t, _ = _inputs(shape)
    guided = guidance.cfg(net, scale)
    uncond = net(x, t)
    assert torch.equal(guided(x, t), uncond)
    assert torch.equal(guided(x, t, y=None), uncond)
    # an all-null label tensor: the rows are taken from the unconditional half of the batched call, so they equal
    # the unbatched call up to float rounding (a (2B, ...) matmul may block differently from a (B, ...) one)
    torch.testing.assert_close(guided(x, t, y=torch.full((x.shape[0],), K)), uncond, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NETS)
def test_guided_output_is_the_cfg_formula(name):
    net, shape = NETS[name]
    x, t, y = _inputs(shape)
    w = 3.0
    cond, uncond = net(x, t, y=y), net(x, t)
    torch.testing.assert_close(guidance.cfg(net, w)(x, t, y=y), uncond + w * (cond - uncond), rtol=1e-5, atol=1e-5)


@given(scale=st.floats(0.0, 20.0), labels=st.lists(st.integers(0, K), min_size=1, max_size=6))
def test_mixed_batches_rowwise(scale, labels):
    net = Recorder()
    y = torch.tensor(labels)
    x = torch.randn(len(labels), 2, dtype=torch.float64)
    t = torch.arange(len(labels), dtype=torch.float64)
    out = guidance.cfg(net, scale, num_classes=K)(x, t, y=y)
    cond, uncond = net(x, t, y=y), net(x, t)
    expect = uncond + scale * (cond - uncond)
    null = y == K
    assert torch.equal(out[null], uncond[null])  # null rows: exactly unconditional
    torch.testing.assert_close(out[~null], expect[~null])


def test_one_batched_call_with_doubled_conditioning():
    net = Recorder()
    guided = guidance.cfg(net, 2.5, num_classes=K)
    x, t, y = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    ctx = torch.randn(4, 3, 5, dtype=torch.float64)
    out = guided(x, t, y=y, context=ctx, flag="keep")
    assert len(net.calls) == 1
    b, labels, cond = net.calls[0]
    assert b == 8 and labels.tolist() == [0, 1, 2, 0, K, K, K, K]
    assert cond == {"context": (8, 3, 5), "flag": "keep"}
    c, u = net(x, t, y=y, context=ctx), net(x, t, y=torch.full_like(y, K), context=ctx)
    torch.testing.assert_close(out, u + 2.5 * (c - u))
    # scale 1, scale 0 and y=None each cost one un-doubled call
    for scale, labels in ((1.0, y), (0.0, y), (4.0, None)):
        net.calls.clear()
        guidance.cfg(net, scale, num_classes=K)(x, t, y=labels)
        assert len(net.calls) == 1 and net.calls[0][0] == 4


def test_scalar_time_is_accepted():
    net = Recorder()
    x, y = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 2])
    out = guidance.cfg(net, 2.0, num_classes=K)(x, 0.5, y=y)
    c, u = net(x, torch.full((3,), 0.5, dtype=torch.float64), y=y), net(x, torch.full((3,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(out, u + 2.0 * (c - u))


def test_interval_applies_guidance_only_inside():
    net = Recorder()
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, K])
    t = torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0, 0.5], dtype=torch.float64)
    out = guidance.cfg(net, 4.0, num_classes=K, interval=(0.2, 0.7))(x, t, y=y)
    c, u = net(x, t, y=y), net(x, t)
    g = u + 4.0 * (c - u)
    inside = torch.tensor([False, True, True, True, False, True])
    assert torch.equal(out[~inside], c[~inside])  # outside: exactly the conditional output
    torch.testing.assert_close(out[inside][:3], g[inside][:3])
    assert torch.equal(out[5], u[5])  # a null row inside the interval is still unconditional
    # off: no interval guides everywhere; an empty-width interval guides only at that time
    torch.testing.assert_close(guidance.cfg(net, 4.0, num_classes=K)(x, t, y=y)[:5], g[:5])
    point = guidance.cfg(net, 4.0, num_classes=K, interval=(0.5, 0.5))(x, t, y=y)
    torch.testing.assert_close(point[2], g[2])
    assert torch.equal(point[1], c[1])
    # scale 0 with an interval: unconditional inside, conditional outside
    zero = guidance.cfg(net, 0.0, num_classes=K, interval=(0.2, 0.7))(x, t, y=y)
    assert torch.equal(zero[0], c[0]) and torch.allclose(zero[2], u[2])


def test_wrapper_is_a_module_that_forwards_attributes():
    net = score_sde.build(data_shape=(2,), num_classes=K, hidden=16, depth=1)
    guided = guidance.cfg(net, 2.0)
    assert guided.sde is net.sde and guided.num_classes == K and guided.scale == 2.0
    assert list(guided.parameters())[0] is list(net.parameters())[0]
    assert set(guided.state_dict()) == {"net." + k for k in net.state_dict()}
    assert guidance.cfg(edm.build(data_shape=(2,), num_classes=K, hidden=16, depth=1), 2.0).sigma_data == 0.5
    with pytest.raises(AttributeError):
        guided.no_such_attribute


# ----------------------------------------------------------------------------- every family's sampler


def _family_cases():
    kw = dict(data_shape=(2,), num_classes=K, hidden=16, depth=1)
    return {
        "ddpm": (ddpm.build(**kw), lambda n, **a: ddpm.sample(n, (4, 2), steps=8, **a)),
        "ddim": (ddim.build(**kw), lambda n, **a: ddim.sample(n, (4, 2), steps=8, eta=0.5, **a)),
        "flow_matching": (flow_matching.build(**kw), lambda n, **a: flow_matching.sample(n, (4, 2), steps=6, **a)),
        "score_sde": (score_sde.build(**kw), lambda n, **a: score_sde.sample(n, (4, 2), steps=6, **a)),
        "edm": (edm.build(**kw), lambda n, **a: edm.sample(n, (4, 2), steps=4, **a)),
        "edm_churn": (edm.build(**kw), lambda n, **a: edm.sample(n, (4, 2), steps=4, s_churn=5.0, **a)),
    }


@pytest.mark.parametrize("family", list(_family_cases()))
def test_every_sampler_accepts_the_wrapper(family):
    torch.manual_seed(1)
    net, run = _family_cases()[family]
    y = torch.tensor([0, 1, 2, K])

    def go(n, labels):
        return run(n, generator=torch.Generator().manual_seed(3), cond={} if labels is None else {"y": labels})

    assert torch.equal(go(guidance.cfg(net, 1.0), y), go(net, y))  # scale 1 samples the conditional model
    assert torch.equal(go(guidance.cfg(net, 0.0), y), go(net, None))  # scale 0 the unconditional one
    assert torch.equal(go(guidance.cfg(net, 5.0), None), go(net, None))
    guided = go(guidance.cfg(net, 4.0), y)
    assert guided.shape == (4, 2) and torch.isfinite(guided).all()
    assert torch.equal(guided, go(guidance.cfg(net, 4.0), y))  # same seed, same bits
    assert not torch.equal(guided[:3], go(net, y)[:3])
    if family != "score_sde":  # (the Langevin corrector's step size is a batch-wide norm: rows interact there)
        assert torch.equal(guided[3], go(net, None)[3])  # the null-labelled sample follows the unguided chain


def test_loss_functions_accept_the_wrapper_too():
    net = edm.build(data_shape=(2,), num_classes=K, hidden=16, depth=1)
    value, _ = edm.loss(guidance.cfg(net, 1.0), torch.randn(8, 2), cond={"y": torch.randint(0, K, (8,))},
                        generator=torch.Generator().manual_seed(0))
    value.backward()
    assert all(p.grad is not None for p in net.parameters())


# ----------------------------------------------------------------------------- closed-form classifier guidance

MU = torch.tensor([[-2.0, 1.0], [2.0, -1.0]], dtype=torch.float64)  # class means (2 classes, 2-D)
S0 = 0.5  # per-class std


def _ab(t, schedule):
    return schedule.alpha_bar[t.round().long()]  # (B,)


class MixtureEps(nn.Module):
    """Exact ε-prediction of the two-Gaussian mixture under DDPM noising; class-conditional when y is given.

    ``num_classes`` is set so the guidance wrappers treat it as conditional (null label 2 = the mixture)."""

    def __init__(self, schedule, conditional=True):
        super().__init__()
        self.schedule = schedule
        self.num_classes = 2 if conditional else None

    def scale_var(self, t):
        ab = _ab(t, self.schedule)
        return ab.sqrt(), ab * S0**2 + 1.0 - ab, (1.0 - ab).sqrt()

    def forward(self, x, t, y=None):
        a, var, s = self.scale_var(t)
        m = a[:, None, None] * MU[None]  # (B, 2, D)
        logp = -((x[:, None] - m) ** 2).sum(-1) / (2 * var[:, None])  # (B, 2)
        w = torch.softmax(logp, dim=1)
        if y is not None:
            w = torch.where((y == 2)[:, None], w, nn.functional.one_hot(y.clamp(max=1), 2).to(x.dtype))
        score = -(w[:, :, None] * (x[:, None] - m)).sum(1) / var[:, None]
        return -s[:, None] * score


def _classifier(scale_fn):
    def clf(x, t):
        a, var = scale_fn(t)
        return -((x[:, None] - a[:, None, None] * MU[None]) ** 2).sum(-1) / (2 * var[:, None])  # (B, 2)
    return clf


def test_classifier_guidance_at_scale_one_gives_the_conditional_eps(f64):
    sch = make_schedule("linear", 1000)
    uncond, cond = MixtureEps(sch, conditional=False), MixtureEps(sch)
    clf = _classifier(lambda t: cond.scale_var(t)[:2])
    x, t = torch.randn(64, 2) * 2, torch.randint(0, 1000, (64,)).double()
    y = torch.randint(0, 2, (64,))
    guided = guidance.classifier_guided(uncond, clf, 1.0, schedule=sch)
    assert not guided.pass_labels
    torch.testing.assert_close(guided(x, t, y=y), cond(x, t, y=y), rtol=1e-9, atol=1e-9)
    assert torch.equal(guided(x, t), uncond(x, t))  # y=None: unguided
    # the same through x0- and v-parameterised networks
    for target in ("x0", "v"):
        def as_target(net, target=target):
            def f(x, t, y=None):
                ab = _ab(t, sch)
                eps = net(x, t, y=y)
                x0 = (x - (1 - ab).sqrt()[:, None] * eps) / ab.sqrt()[:, None]
                return ddpm.prediction_target(x0, eps, ab, target=target)
            return f
        g = guidance.classifier_guided(as_target(uncond), clf, 1.0, schedule=sch, target=target)
        torch.testing.assert_close(g(x, t, y=y), as_target(cond)(x, t, y=y), rtol=1e-7, atol=1e-7)


def test_cfg_equals_classifier_guidance_with_the_implicit_classifier(f64):
    """ε_c - ε_u = -√(1-ᾱ) ∇ log p(y|x), so CFG at w is classifier guidance at w - 1 on the conditional net."""
    sch = make_schedule("linear", 1000)
    net = MixtureEps(sch)
    clf = _classifier(lambda t: net.scale_var(t)[:2])
    x, t, y = torch.randn(32, 2) * 2, torch.randint(0, 1000, (32,)).double(), torch.randint(0, 2, (32,))
    cg = guidance.classifier_guided(net, clf, 2.0, schedule=sch)
    assert cg.pass_labels
    torch.testing.assert_close(guidance.cfg(net, 3.0)(x, t, y=y), cg(x, t, y=y), rtol=1e-9, atol=1e-9)


def test_classifier_guided_score_at_scale_one_gives_the_conditional_score(f64):
    sde = make_sde("vp")

    def moments(t):
        a, std = sde.scale(t), sde.std(t)
        return a, a**2 * S0**2 + std**2

    def score(x, t, y=None):
        a, var = moments(t)
        m = a[:, None, None] * MU[None]
        w = torch.softmax(-((x[:, None] - m) ** 2).sum(-1) / (2 * var[:, None]), dim=1)
        if y is not None:
            w = nn.functional.one_hot(y, 2).to(x.dtype)
        return -(w[:, :, None] * (x[:, None] - m)).sum(1) / var[:, None]

    x, t, y = torch.randn(64, 2) * 2, torch.rand(64) * 0.99 + 0.01, torch.randint(0, 2, (64,))
    guided = guidance.classifier_guided_score(score, _classifier(moments), 1.0)
    torch.testing.assert_close(guided(x, t, y=y), score(x, t, y=y), rtol=1e-9, atol=1e-9)
    # scale 3 = score + 3 (cond - uncond)
    g3 = guidance.classifier_guided_score(score, _classifier(moments), 3.0)(x, t, y=y)
    torch.testing.assert_close(g3, score(x, t) + 3.0 * (score(x, t, y=y) - score(x, t)), rtol=1e-9, atol=1e-9)
    # and it drives score_sde.sample (under no_grad) onto the chosen class
    sample = score_sde.sample(guided, (400, 2), sde=sde, steps=100, corrector="none", cond={"y": torch.zeros(400, dtype=torch.long)},
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample.mean(0), MU[0], atol=0.1, rtol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guided_sampling_lands_on_the_class(sampler, f64):
    sch = make_schedule("linear", 1000)
    net = MixtureEps(sch, conditional=False)
    guided = guidance.classifier_guided(net, _classifier(lambda t: MixtureEps(sch).scale_var(t)[:2]), 1.0, schedule=sch)
    y = torch.tensor([0, 1] * 300)
    run = ddpm.sample if sampler == "ddpm" else ddim.sample
    x = run(guided, (600, 2), steps=50, schedule=sch, cond={"y": y}, generator=torch.Generator().manual_seed(0))
    for k in (0, 1):
        torch.testing.assert_close(x[y == k].mean(0), MU[k], atol=0.12, rtol=0)
        assert abs(float(x[y == k].std(0).mean()) - S0) < 0.1


# ----------------------------------------------------------------------------- the noise-conditional classifier


@pytest.mark.parametrize("shape", [(3,), (1, 8, 8), (2, 12, 12)])
def test_classifier_shapes_loss_and_gradients(shape):
    torch.manual_seed(0)
    clf = guidance.build_classifier(data_shape=shape, num_classes=4, hidden=16, depth=1, base_channels=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, *shape, generator=g), torch.randint(0, 4, (6,), generator=g)
    assert clf(x, torch.zeros(6)).shape == (6, 4)
    value, logs = guidance.classifier_loss(clf, x, y, generator=g)
    assert set(logs) == {"loss", "accuracy"} and 0.0 <= float(logs["accuracy"]) <= 1.0
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in clf.parameters())
    again = guidance.build_classifier(**clf.config)
    again.load_state_dict(clf.state_dict())
    assert torch.equal(again(x, torch.ones(6)), clf(x, torch.ones(6)))


def test_classifier_loss_is_deterministic_and_takes_overrides():
    clf = guidance.build_classifier(data_shape=(2,), num_classes=2, hidden=8, depth=1)
    x, y = torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 1])
    a = guidance.classifier_loss(clf, x, y, generator=torch.Generator().manual_seed(1))[0]
    b = guidance.classifier_loss(clf, x, y, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(a, b)
    t, noise = torch.zeros(5, dtype=torch.long), torch.zeros(5, 2)
    c = guidance.classifier_loss(clf, x, y, t=t, noise=noise)[0]
    sch = make_schedule("linear", 1000)
    expect = nn.functional.cross_entropy(clf(sch.alpha_bar[0].sqrt().float() * x, torch.zeros(5)), y)
    torch.testing.assert_close(c, expect)
    v, _ = guidance.classifier_loss(clf, x, y, sde="vp", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(v)


def test_classifier_learns_a_separable_mixture():
    """A few hundred steps separate two Gaussians at low noise; the guidance gradient then points to the class."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    clf = guidance.build_classifier(data_shape=(2,), num_classes=2, hidden=32, depth=1)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(300):
        y = torch.randint(0, 2, (128,), generator=g)
        x = MU.float()[y] + S0 * torch.randn(128, 2, generator=g)
        loss, logs = guidance.classifier_loss(clf, x, y, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = torch.randint(0, 2, (512,), generator=g)
    x = MU.float()[y] + S0 * torch.randn(512, 2, generator=g)
    _, logs = guidance.classifier_loss(clf, x, y, t=torch.full((512,), 50), generator=g)
    assert float(logs["accuracy"]) > 0.95


# ----------------------------------------------------------------------------- label dropout


def test_label_dropout():
    y = torch.arange(10).repeat(100)
    assert guidance.label_dropout(y, 0.0, num_classes=10) is y
    assert (guidance.label_dropout(y, 1.0, num_classes=10) == 10).all()
    a = guidance.label_dropout(y, 0.2, num_classes=10, generator=torch.Generator().manual_seed(0))
    b = guidance.label_dropout(y, 0.2, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    frac = float((a == 10).float().mean())
    assert abs(frac - 0.2) < 0.04 and torch.equal(a[a != 10], y[a != 10])


# ----------------------------------------------------------------------------- bad input


def test_scale_on_an_unconditional_network_is_refused():
    for net in (ddpm.build(data_shape=(2,), hidden=8, depth=1), score_sde.build(data_shape=(2,), hidden=8, depth=1),
                edm.build(data_shape=(2,), hidden=8, depth=1), nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="scale.*unconditional"):
            guidance.cfg(net, 2.0)
        with pytest.raises(ValueError, match="scale.*unconditional"):
            guidance.cfg(net, 2.0, num_classes=3)


def test_bad_cfg_options():
    net = NETS["resmlp"][0]
    with pytest.raises(ValueError, match=r"num_classes must match the network's num_classes=3, got 4"):
        guidance.cfg(net, 2.0, num_classes=4)
    with pytest.raises(ValueError, match="num_classes must be given"):
        guidance.cfg(lambda x, t, y=None: x, 2.0)
    with pytest.raises(ValueError, match=r"scale must be in \[0.0, inf\], got -1.0"):
        guidance.cfg(net, -1.0)
    with pytest.raises(TypeError, match="scale must be a number"):
        guidance.cfg(net, "3")
    with pytest.raises(ValueError, match="scale must be finite"):
        guidance.cfg(net, math.inf)
    with pytest.raises(TypeError, match="net must be callable"):
        guidance.cfg(3, 2.0, num_classes=3)
    with pytest.raises(ValueError, match="interval must have t_lo <= t_hi"):
        guidance.cfg(net, 2.0, interval=(500, 100))
    with pytest.raises(TypeError, match="interval must be a pair"):
        guidance.cfg(net, 2.0, interval=(1, 2, 3))
    with pytest.raises(TypeError, match=r"interval\[0\] must be a number"):
        guidance.cfg(net, 2.0, interval=("a", 2))
    with pytest.raises(TypeError, match="num_classes must be an int"):
        guidance.cfg(lambda x, t, y=None: x, 2.0, num_classes=2.5)


def test_bad_labels_at_call_time():
    net = NETS["resmlp"][0]
    guided = guidance.cfg(net, 2.0)
    x, t = torch.randn(3, 2), torch.zeros(3)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\] or the null label 3 \(num_classes=3\), got 4"):
        guided(x, t, y=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="got -1"):
        guided(x, t, y=torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match="y must be an integer"):
        guided(x, t, y=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        guided(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="y must have 1 dimensions"):
        guided(x, t, y=torch.tensor(1))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        guided(torch.zeros(3, 2, dtype=torch.long), t, y=torch.tensor([0, 1, 2]))


def test_bad_classifier_guidance_input():
    net = NETS["resmlp"][0]
    clf = guidance.build_classifier(data_shape=(2,), num_classes=K, hidden=8, depth=1)
    with pytest.raises(TypeError, match="classifier must be callable"):
        guidance.classifier_guided(net, "clf", 1.0)
    with pytest.raises(ValueError, match="scale must be in"):
        guidance.classifier_guided_score(net, clf, -2.0)
    with pytest.raises(ValueError, match="target must be one of"):
        guidance.classifier_guided(net, clf, 1.0, target="score")
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        guidance.classifier_guided(net, clf, 1.0, schedule="linear")
    guided = guidance.classifier_guided(net, clf, 1.0)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\] \(num_classes=3\), got 3"):
        guided(torch.randn(2, 2), torch.zeros(2), y=torch.tensor([0, K]))
    for bad, err, match in (
        (dict(data_shape=(1, 8, 6)), ValueError, "data_shape must be"),
        (dict(data_shape=(2,), num_classes=1), ValueError, "num_classes must be an int >= 2"),
        (dict(data_shape=(2,), time_features="x"), ValueError, "time_features must be one of"),
        (dict(data_shape=(2,), hidden=0), ValueError, "hidden must be a positive int"),
    ):
        with pytest.raises(err, match=match):
            guidance.build_classifier(**{"num_classes": 3, **bad})
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\)"):
        clf(torch.randn(2, 3), torch.zeros(2))


def test_bad_classifier_loss_input():
    clf = guidance.build_classifier(data_shape=(2,), num_classes=K, hidden=8, depth=1)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\] \(num_classes=3\), got 3"):
        guidance.classifier_loss(clf, x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"y must be a \(4,\) integer tensor"):
        guidance.classifier_loss(clf, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="schedule and sde are exclusive"):
        guidance.classifier_loss(clf, x, torch.tensor([0, 1, 2, 0]), schedule=make_schedule("linear", 10), sde="vp")
    with pytest.raises(ValueError, match=r"noise must have shape \(4, 2\)"):
        guidance.classifier_loss(clf, x, torch.tensor([0, 1, 2, 0]), noise=torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"t must be in \[0, 1000\)"):
        guidance.classifier_loss(clf, x, torch.tensor([0, 1, 2, 0]), t=torch.full((4,), 1000))
    with pytest.raises(ValueError, match="classifier must return logits"):
        guidance.classifier_loss(lambda x, t: x.sum(1), x, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="x0 must have shape"):
        guidance.classifier_loss(clf, torch.randn(4), torch.tensor([0, 1, 2, 0]))


def test_bad_label_dropout_input():
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\], got 1.5"):
        guidance.label_dropout(torch.tensor([0, 1]), 1.5, num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        guidance.label_dropout(torch.tensor([0, 1]), 0.5, num_classes=0)


# ----------------------------------------------------------------------------- DiT (learned sigma)


def test_dit_with_learned_sigma_guides_only_the_eps_channels():
    dit = pytest.importorskip("edifice.generative.dit")
    torch.manual_seed(0)
    net = dit.build(data_shape=(1, 8, 8), num_classes=K, learn_sigma=True)
    for p in net.parameters():  # a fresh DiT outputs zeros: perturb so that labels matter
        p.data.add_(0.05 * torch.randn_like(p))
    x, t, y = _inputs((1, 8, 8), b=3)
    guided = guidance.cfg(net, 3.0)
    assert guided.learn_sigma is True
    out, cond, uncond = guided(x, t, y=y), net(x, t, y=y), net(x, t)
    torch.testing.assert_close(out[:, :1], uncond[:, :1] + 3.0 * (cond[:, :1] - uncond[:, :1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], cond[:, 1:], rtol=1e-6, atol=1e-6)
    assert torch.equal(guidance.cfg(net, 1.0)(x, t, y=y), cond)
    xs = dit.sample(guided, (3, 1, 8, 8), steps=4, cond={"y": y}, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (3, 1, 8, 8) and torch.isfinite(xs).all()
