"""GAN losses: closed-form values, the optimal discriminator, saturation, penalties, clipping, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edifice.generative import gan

R = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
F_ = torch.tensor([-3.0, 0.0, 1.0], dtype=torch.float64)


def _sp(u):
    return math.log1p(math.exp(u))


def _mean(xs):
    return sum(xs) / len(xs)


def _linear(w):
    """A linear critic ``D(x) = <w, x>`` (no bias) with weight ``w``."""
    net = nn.Linear(len(w), 1, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([w], dtype=torch.float64))
    return net


# ---------------------------------------------------------------------------------------------
# closed-form values


def _expected_d(kind, r, f):
    if kind in ("minimax", "non_saturating"):
        return _mean([_sp(-v) for v in r]) + _mean([_sp(v) for v in f])
    if kind == "least_squares":
        return 0.5 * _mean([(v - 1) ** 2 for v in r]) + 0.5 * _mean([v ** 2 for v in f])
    if kind == "hinge":
        return _mean([max(0.0, 1 - v) for v in r]) + _mean([max(0.0, 1 + v) for v in f])
    return _mean(f) - _mean(r)


def _expected_g(kind, f):
    if kind == "minimax":
        return _mean([math.log(1 - 1 / (1 + math.exp(-v))) for v in f])
    if kind == "non_saturating":
        return _mean([-math.log(1 / (1 + math.exp(-v))) for v in f])
    if kind == "least_squares":
        return 0.5 * _mean([(v - 1) ** 2 for v in f])
    return -_mean(f)


@pytest.mark.parametrize("kind", gan.LOSSES)
def test_discriminator_loss_closed_form(kind):
    loss, logs = gan.discriminator_loss(R, F_, kind=kind)
    assert loss.item() == pytest.approx(_expected_d(kind, R.tolist(), F_.tolist()), abs=1e-12)
    assert set(logs) == {"loss", "d_real", "d_fake"}
    assert logs["d_real"].item() == pytest.approx(0.5) and logs["d_fake"].item() == pytest.approx(-2 / 3)
    assert not any(v.requires_grad for v in logs.values())


@pytest.mark.parametrize("kind", gan.LOSSES)
def test_generator_loss_closed_form(kind):
    loss, logs = gan.generator_loss(F_, kind=kind)
    assert loss.item() == pytest.approx(_expected_g(kind, F_.tolist()), abs=1e-12)
    assert set(logs) == {"loss", "d_fake"}


def test_hand_values_hinge_wasserstein_least_squares():
    r, f = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.0])
    assert gan.discriminator_loss(r, f, kind="hinge")[0].item() == pytest.approx(0.25 + 0.5)
    assert gan.discriminator_loss(r, f, kind="wasserstein")[0].item() == pytest.approx(-0.5 - 1.25)
    assert gan.generator_loss(f, kind="hinge")[0].item() == pytest.approx(0.5)
    assert gan.generator_loss(f, kind="wasserstein")[0].item() == pytest.approx(0.5)
    # a perfect LSGAN discriminator (r = 1, f = 0) has zero loss; the generator's is 1/2 there
    assert gan.discriminator_loss(torch.ones(3), torch.zeros(3), kind="least_squares")[0].item() == 0.0
    assert gan.generator_loss(torch.zeros(3), kind="least_squares")[0].item() == pytest.approx(0.5)
    # BCE at logits 0 is 2 log 2
    assert gan.discriminator_loss(torch.zeros(2), torch.zeros(2))[0].item() == pytest.approx(2 * math.log(2))


def test_column_logits_match_flat_logits():
    for kind in gan.LOSSES:
        a = gan.discriminator_loss(R[:, None], F_[:, None], kind=kind)[0]
        b = gan.discriminator_loss(R, F_, kind=kind)[0]
        assert torch.equal(a, b)
        assert torch.equal(gan.generator_loss(F_[:, None], kind=kind)[0], gan.generator_loss(F_, kind=kind)[0])


@pytest.mark.parametrize("kind", ["minimax", "non_saturating"])
def test_softplus_forms_are_stable_for_extreme_logits(kind):
    big = torch.tensor([1e4, -1e4], dtype=torch.float32, requires_grad=True)
    d, _ = gan.discriminator_loss(big, -big, kind=kind)
    g, _ = gan.generator_loss(big, kind=kind)
    assert torch.isfinite(d) and torch.isfinite(g)
    (d + g).backward()
    assert torch.isfinite(big.grad).all()
    assert d.item() == pytest.approx(1e4)  # only the misclassified half costs, linearly


# ---------------------------------------------------------------------------------------------
# the optimal discriminator D* = p / (p + q)


def test_optimal_discriminator_minimises_minimax_loss():
    # two support points; p = (3/4, 1/4), q = (1/4, 3/4); batches realise the expectations exactly
    p, q = (0.75, 0.25), (0.25, 0.75)
    real_idx, fake_idx = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 1, 1])

    def loss_at(l):
        return gan.discriminator_loss(l[real_idx], l[fake_idx], kind="minimax")[0]

    d_star = torch.tensor([p[0] / (p[0] + q[0]), p[1] / (p[1] + q[1])], dtype=torch.float64)
    l_star = torch.logit(d_star).requires_grad_(True)
    value = loss_at(l_star)
    (grad,) = torch.autograd.grad(value, l_star)
    assert grad.abs().max().item() < 1e-12  # stationary
    for dx in (-0.3, -0.05, 0.05, 0.3):  # and a minimum along every grid direction
        for e in (torch.tensor([dx, 0.0]), torch.tensor([0.0, dx]), torch.tensor([dx, -dx])):
            assert loss_at(l_star.detach() + e.double()).item() > value.item()
    # the optimum value is log 4 - 2 JSD(p, q) (Goodfellow et al., Theorem 1)
    m = [(a + b) / 2 for a, b in zip(p, q)]
    jsd = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    assert value.item() == pytest.approx(math.log(4) - 2 * jsd, abs=1e-12)


def test_non_saturating_gradient_does_not_vanish():
    f = torch.tensor([-20.0, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (g_mm,) = torch.autograd.grad(gan.generator_loss(f, kind="minimax")[0], f)
    (g_ns,) = torch.autograd.grad(gan.generator_loss(f, kind="non_saturating")[0], f)
    assert torch.equal(torch.sign(g_mm), torch.sign(g_ns)) and (g_ns < 0).all()  # both push f up
    # confidently rejected fake (f = -20): the minimax gradient ~ σ(f)/B vanishes, the NS one ~ 1/B
    assert abs(g_mm[0].item()) < 1e-8
    assert abs(g_ns[0].item()) == pytest.approx(1 / 3, rel=1e-6)
    torch.testing.assert_close(g_mm, -torch.sigmoid(f.detach()) / 3)
    torch.testing.assert_close(g_ns, -torch.sigmoid(-f.detach()) / 3)


# ---------------------------------------------------------------------------------------------
# gradient penalty and R1


def _batch(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_gradient_penalty_linear_critic():
    real, fake = _batch(5, 2, seed=0), _batch(5, 2, seed=1)
    g = torch.Generator().manual_seed(0)
    assert gan.gradient_penalty(_linear([0.6, 0.8]), real, fake, generator=g).item() == pytest.approx(0.0, abs=1e-12)
    w = [1.5, -2.0]  # ||w|| = 2.5
    net = _linear(w)
    gp = gan.gradient_penalty(net, real, fake, generator=g)
    assert gp.item() == pytest.approx((2.5 - 1.0) ** 2)
    # create_graph: the penalty trains the critic; d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    gp.backward()
    expected = 2 * (2.5 - 1.0) * torch.tensor([w], dtype=torch.float64) / 2.5
    torch.testing.assert_close(net.weight.grad, expected)
    # a zero-centred penalty is ||w||^2
    assert gan.gradient_penalty(net, real, fake, center=0.0, generator=g).item() == pytest.approx(6.25)


def test_gradient_penalty_interpolates_with_alpha():
    real, fake = _batch(4, 1, 2, 2, seed=0), _batch(4, 1, 2, 2, seed=1)
    critic = lambda x: 0.5 * x.flatten(1).square().sum(1)  # noqa: E731  grad D(x) = x
    for a in (0.0, 0.3, 1.0):
        alpha = torch.full((4,), a, dtype=torch.float64)
        x_hat = a * real + (1 - a) * fake
        expected = (x_hat.flatten(1).norm(dim=1) - 1).square().mean()
        torch.testing.assert_close(gan.gradient_penalty(critic, real, fake, alpha=alpha), expected)


def test_gradient_penalty_alpha_is_per_sample_and_seeded():
    real, fake = _batch(6, 3, seed=0), _batch(6, 3, seed=1)
    critic = lambda x: 0.5 * x.square().sum(1)  # noqa: E731
    a = gan.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    b = gan.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(3))
    c = gan.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    alpha = torch.rand(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(a, gan.gradient_penalty(critic, real, fake, alpha=alpha))


def test_r1_penalty_linear_critic_and_backprop():
    real = _batch(5, 3)
    w = [1.0, -2.0, 0.5]
    net = _linear(w)
    r1 = gan.r1_penalty(net, real)
    assert r1.item() == pytest.approx(1 + 4 + 0.25)
    r1.backward()
    torch.testing.assert_close(net.weight.grad, 2 * torch.tensor([w], dtype=torch.float64))


def test_penalties_pass_cond_and_work_under_no_grad():
    real, fake = _batch(3, 2, seed=0), _batch(3, 2, seed=1)
    seen = []

    def critic(x, scale):
        seen.append(scale)
        return scale * x.sum(1)  # grad = scale * (1, 1)

    with torch.no_grad():
        gp = gan.gradient_penalty(critic, real, fake, cond={"scale": 2.0}, generator=torch.Generator())
        r1 = gan.r1_penalty(critic, real, cond={"scale": 2.0})
    assert seen == [2.0, 2.0]
    assert gp.item() == pytest.approx((2 * math.sqrt(2) - 1) ** 2)
    assert r1.item() == pytest.approx(8.0)


def test_penalties_do_not_leak_gradients_into_inputs():
    real = _batch(3, 2, seed=0).requires_grad_(True)
    fake = _batch(3, 2, seed=1).requires_grad_(True)
    net = _linear([1.0, 1.0])
    (gan.gradient_penalty(net, real, fake, generator=torch.Generator()) + gan.r1_penalty(net, real)).backward()
    assert real.grad is None and fake.grad is None
    assert net.weight.grad is not None


# ---------------------------------------------------------------------------------------------
# weight clipping


def test_clip_weights_clamps_in_place():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[2].bias.fill_(-0.3)
        net[0].bias.fill_(0.005)
    before = net[0].weight.data_ptr()
    out = gan.clip_weights_(net, c=0.01)
    assert out is net and net[0].weight.data_ptr() == before
    assert all(p.abs().max().item() <= 0.01 for p in net.parameters())
    assert (net[0].weight == 0.01).all() and (net[2].bias == -0.01).all() and (net[0].bias == 0.005).all()


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("fn", ["discriminator", "generator"])
def test_unknown_kind_lists_valid(fn):
    with pytest.raises(ValueError, match="kind must be one of 'minimax', 'non_saturating'.*'wasserstein'; got 'bce'"):
        if fn == "discriminator":
            gan.discriminator_loss(R, F_, kind="bce")
        else:
            gan.generator_loss(F_, kind="bce")


def test_logit_errors():
    with pytest.raises(TypeError, match="real_logits must be a torch.Tensor"):
        gan.discriminator_loss([1.0], F_)
    with pytest.raises(TypeError, match="fake_logits must be a floating-point tensor"):
        gan.discriminator_loss(R, torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="fake_logits must be a floating-point tensor"):
        gan.generator_loss(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"real_logits must have shape \(B,\) or \(B, 1\), got \(3, 2\)"):
        gan.discriminator_loss(torch.zeros(3, 2), F_)
    with pytest.raises(ValueError, match=r"fake_logits must have shape \(B,\) or \(B, 1\), got \(\)"):
        gan.generator_loss(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"fake_logits must have the shape of real_logits \(3,\), got \(4,\)"):
        gan.discriminator_loss(R, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"fake_logits must have the shape of real_logits \(3,\), got \(3, 1\)"):
        gan.discriminator_loss(R, F_[:, None])


def test_penalty_errors():
    net = _linear([1.0, 1.0])
    real, fake = _batch(3, 2, seed=0), _batch(3, 2, seed=1)
    with pytest.raises(ValueError, match=r"alpha must have shape \(3\), got \(3, 1\)"):
        gan.gradient_penalty(net, real, fake, alpha=torch.rand(3, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="alpha must be a floating-point tensor"):
        gan.gradient_penalty(net, real, fake, alpha=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"fake must have shape \(3, 2\), got \(4, 2\)"):
        gan.gradient_penalty(net, real, _batch(4, 2))
    with pytest.raises(ValueError, match=r"real must be a batch \(B, \.\.\.\), got shape \(3,\)"):
        gan.gradient_penalty(net, real[:, 0], fake[:, 0])
    with pytest.raises(TypeError, match="real must be a floating-point tensor"):
        gan.gradient_penalty(net, real.long(), fake)
    with pytest.raises(ValueError, match=r"center must be in \[0.0, inf\], got -1.0"):
        gan.gradient_penalty(net, real, fake, center=-1.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        gan.gradient_penalty(net, real, fake, generator=0)
    with pytest.raises(TypeError, match="cond must be a mapping"):
        gan.gradient_penalty(net, real, fake, cond=[1])
    with pytest.raises(ValueError, match=r"real must be a batch \(B, \.\.\.\), got shape \(3,\)"):
        gan.r1_penalty(net, real[:, 0])
    with pytest.raises(TypeError, match="real must be a torch.Tensor"):
        gan.r1_penalty(net, [[1.0, 2.0]])
    with pytest.raises(TypeError, match="cond must be a mapping"):
        gan.r1_penalty(net, real, cond=3)


def test_clip_weights_errors():
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got list"):
        gan.clip_weights_([torch.zeros(2)])
    with pytest.raises(ValueError, match=r"c must be in \(0.0, inf\], got 0.0"):
        gan.clip_weights_(nn.Linear(2, 1), c=0.0)
    with pytest.raises(TypeError, match="c must be a number"):
        gan.clip_weights_(nn.Linear(2, 1), c="0.01")
