"""GAN networks and objectives: build, spectral norm, projection, gradient flow, ACGAN / InfoGAN, sampling, learning."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edifice.data import toy2d
from edifice.generative import gan
from edifice.metrics.modes import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD, mode_coverage


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=_g(seed)).clamp(-1, 1)


def _img(**kw):
    return gan.build(data_shape=(1, 8, 8), channels=(8, 16), latent_dim=6, hidden=16, **kw)


def _vec(**kw):
    return gan.build(data_shape=(2,), hidden=16, depth=2, **kw)


# ---------------------------------------------------------------------------------------------
# build


def test_build_defaults_shapes_and_config():
    g, d = gan.build(data_shape=(2,))
    assert g.latent_dim == 8 and isinstance(g.net, nn.Module)
    assert g(torch.randn(5, 8)).shape == (5, 2) and d(torch.randn(5, 2)).shape == (5,)
    assert g.config["arch"] == "mlp" and g.config["channels"] == (64, 128)
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in d.modules())
    nets = gan.build(data_shape=(1, 28, 28))
    assert nets.generator.latent_dim == 64 and nets.generator.config["arch"] == "dcgan"
    x = nets.generator(torch.randn(3, 64))
    assert x.shape == (3, 1, 28, 28) and x.abs().max() <= 1  # tanh
    assert nets.discriminator(x).shape == (3,) and nets.discriminator.feature_dim == 128 * 7 * 7
    assert any(isinstance(m, nn.BatchNorm2d) for m in nets.generator.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in nets.discriminator.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gan.build(data_shape=(1, 8, 8), batch_norm=False).generator.modules())


def test_mlp_on_images_and_rebuild_from_config():
    g, d = gan.build(data_shape=(1, 8, 8), arch="mlp", hidden=16, depth=1)
    x = g(torch.randn(4, 64))
    assert x.shape == (4, 1, 8, 8) and x.abs().max() <= 1 and d(x).shape == (4,)
    nets = _img(num_classes=3, cond_mode="acgan", info_categorical=4, info_continuous=2, spectral_norm=True)
    again = gan.build(**nets.generator.config)
    for a, b in zip(nets, again):
        assert a.state_dict().keys() == b.state_dict().keys()
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("mode", gan.COND_MODES)
@pytest.mark.parametrize("arch", ["mlp", "dcgan"])
def test_conditional_builds_run(mode, arch):
    nets = (_vec if arch == "mlp" else _img)(num_classes=3, cond_mode=mode, info_categorical=3, info_continuous=1)
    b = 4
    shape = (b, 2) if arch == "mlp" else (b, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])  # 3 = the null label
    lat = gan.sample_latent(nets, b, generator=_g())
    x = nets.generator(lat["z"], y, lat["c"])
    assert x.shape == shape
    logits, aux = nets.discriminator.forward_aux(x, y)
    assert logits.shape == (b,)
    assert aux["cat"].shape == (b, 3) and aux["cont"].shape == (b, 1)
    assert ("class" in aux) == (mode == "acgan")
    if mode == "acgan":
        assert aux["class"].shape == (b, 3)


def test_build_errors():
    for bad in [(0,), (2, 3), (1, 8, 6), ()]:
        with pytest.raises(ValueError, match="data_shape"):
            gan.build(data_shape=bad)
    with pytest.raises(ValueError, match=r"data_shape: image size 28 is not divisible by 2\*\*3"):
        gan.build(data_shape=(1, 28, 28), channels=(8, 16, 32))
    with pytest.raises(ValueError, match="arch must be one of 'auto', 'mlp', 'dcgan'; got 'resnet'"):
        gan.build(data_shape=(2,), arch="resnet")
    with pytest.raises(ValueError, match=r"arch='dcgan' needs an image data_shape \(C, H, H\), got \(2,\)"):
        gan.build(data_shape=(2,), arch="dcgan")
    with pytest.raises(ValueError, match="cond_mode must be one of 'concat', 'projection', 'acgan'; got 'film'"):
        gan.build(data_shape=(2,), num_classes=3, cond_mode="film")
    with pytest.raises(ValueError, match="info_categorical must be 0 .* got 1"):
        gan.build(data_shape=(2,), info_categorical=1)
    with pytest.raises(ValueError, match="info_continuous must be an int >= 0, got -1"):
        gan.build(data_shape=(2,), info_continuous=-1)
    with pytest.raises(ValueError, match="latent_dim must be a positive int, got 0"):
        gan.build(data_shape=(2,), latent_dim=0)
    with pytest.raises(ValueError, match="depth must be a positive int, got 0"):
        gan.build(data_shape=(2,), depth=0)
    with pytest.raises(ValueError, match="hidden must be a positive int, got 0"):
        gan.build(data_shape=(2,), hidden=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        gan.build(data_shape=(2,), num_classes=0)
    with pytest.raises(ValueError, match="channels must be a non-empty sequence of positive ints"):
        gan.build(data_shape=(1, 8, 8), channels=())
    with pytest.raises(TypeError, match="spectral_norm must be true or false, got 1"):
        gan.build(data_shape=(2,), spectral_norm=1)
    with pytest.raises(TypeError, match="batch_norm must be true or false"):
        gan.build(data_shape=(2,), batch_norm="yes")
    with pytest.raises(TypeError, match="latent_dim must be an int"):
        gan.build(data_shape=(2,), latent_dim=2.0)


def test_network_input_errors():
    g, d = _vec()
    with pytest.raises(ValueError, match=r"z must have shape \(\*, 8\), got \(3, 4\)"):
        g(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\) for this network, got \(3, 3\)"):
        d(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="y was given but the generator was built with num_classes=None"):
        g(torch.zeros(3, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="y was given but the discriminator was built with num_classes=None"):
        d(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="c was given but the generator was built without InfoGAN codes"):
        g(torch.zeros(3, 8), c=torch.zeros(3, 2))
    gi, di = _vec(num_classes=2, info_categorical=2)
    with pytest.raises(ValueError, match=r"c \(InfoGAN codes of shape \(3, 2\)\) must be given"):
        gi(torch.zeros(3, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 1\] or the null label 2, got 5"):
        gi(torch.zeros(3, 8), torch.tensor([0, 1, 5]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\) to match the batch, got \(2,\)"):
        di(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# spectral normalisation


def _weights(module):
    """(name, effective weight) of every spectrally normalised layer."""
    out = []
    for name, m in module.named_modules():
        if nn.utils.parametrize.is_parametrized(m, "weight"):
            out.append((name, m.weight))
    return out


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_spectral_norm_gives_unit_top_singular_value(shape):
    torch.manual_seed(0)
    nets = gan.build(data_shape=shape, hidden=16, depth=2, channels=(8, 16), spectral_norm=True, num_classes=3,
                     cond_mode="projection")
    d = nets.discriminator
    x = _x(8, *shape)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    with torch.no_grad():
        for _ in range(200):  # each training-mode call runs one power iteration per layer
            d(x, y)
    d.eval()
    layers = _weights(d)
    sn = [m for m in d.modules() if nn.utils.parametrize.is_parametrized(m, "weight")]
    for cls in (nn.Linear, nn.Embedding) + ((nn.Conv2d,) if len(shape) == 3 else ()):
        assert any(isinstance(m, cls) for m in sn), cls
    assert len(layers) == len(sn) >= 3
    for name, w in layers:
        top = torch.linalg.svdvals(w.detach().reshape(w.shape[0], -1).double())[0].item()
        assert top == pytest.approx(1.0, abs=1e-3), name
    # without spectral_norm the same layers are far from 1
    plain = gan.build(data_shape=shape, hidden=16, depth=2, channels=(8, 16), num_classes=3, cond_mode="projection")
    assert not _weights(plain.discriminator)


# ---------------------------------------------------------------------------------------------
# projection discriminator


@settings(max_examples=10, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=6), seed=st.integers(0, 1000))
def test_projection_class_term_is_inner_product(labels, seed):
    torch.manual_seed(seed)
    d = gan.build(data_shape=(3,), hidden=8, depth=1, num_classes=4, cond_mode="projection").discriminator
    y = torch.tensor(labels)  # 4 = the null label
    x = torch.randn(len(labels), 3, generator=_g(seed))
    phi = d.features(x)
    expected = d.head(phi)[:, 0] + (d.embed.table.weight[y] * phi).sum(1)
    torch.testing.assert_close(d(x, y), expected)
    # the unconditional part is shared: the difference between two labels is <e_a - e_b, φ(x)>
    ya, yb = torch.zeros_like(y), torch.ones_like(y)
    diff = d(x, ya) - d(x, yb)
    torch.testing.assert_close(diff, phi @ (d.embed.table.weight[0] - d.embed.table.weight[1]))


# ---------------------------------------------------------------------------------------------
# objectives: gradient flow


def _grads(module):
    return {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("kind", gan.LOSSES)
def test_discriminator_objective_trains_only_d(kind):
    nets = _img(num_classes=3, cond_mode="acgan", info_categorical=2, info_continuous=1)
    x, y = _x(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    loss, logs = gan.discriminator_objective(nets, x, kind=kind, gp_weight=1.0, r1_weight=1.0, generator=_g(),
                                             cond={"y": y})
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(logs) == {"loss", "d_real", "d_fake", "gp", "r1", "aux", "aux_acc", "info"}
    assert all(v.ndim == 0 and not v.requires_grad for v in logs.values())
    loss.backward()
    assert all(g is None for g in _grads(nets.generator).values())  # fakes under no_grad
    missing = [n for n, g in _grads(nets.discriminator).items() if g is None]
    assert not missing, missing  # trunk, ψ, class head and Q head all learn


def test_generator_objective_reaches_g_and_leaves_d_alone():
    nets = _img(num_classes=3, cond_mode="acgan", info_categorical=2, info_continuous=1)
    x, y = _x(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    loss, logs = gan.generator_objective(nets, x, generator=_g(), cond={"y": y})
    assert set(logs) == {"loss", "d_fake", "aux", "info"}
    loss.backward()
    missing = [n for n, g in _grads(nets.generator).items() if g is None]
    assert not missing, missing
    # gradients land on D (documented, unused): stepping the generator's optimiser leaves D unchanged
    assert nets.discriminator.head.weight.grad is not None
    before = [p.detach().clone() for p in nets.discriminator.parameters()]
    torch.optim.Adam(nets.generator.parameters(), lr=0.1).step()
    assert all(torch.equal(a, p) for a, p in zip(before, nets.discriminator.parameters()))
    # and the next critic step starts from zero_grad: its gradient is exactly the D objective's own
    opt_d = torch.optim.SGD(nets.discriminator.parameters(), lr=0.0)
    opt_d.zero_grad()
    gan.discriminator_objective(nets, x, generator=_g(1), cond={"y": y})[0].backward()
    fresh = _img(num_classes=3, cond_mode="acgan", info_categorical=2, info_continuous=1)
    fresh.generator.load_state_dict(nets.generator.state_dict())
    fresh.discriminator.load_state_dict(nets.discriminator.state_dict())
    gan.discriminator_objective(fresh, x, generator=_g(1), cond={"y": y})[0].backward()
    for p, q in zip(nets.discriminator.parameters(), fresh.discriminator.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def _param_grad(nets, which, **kw):
    for p in list(nets.generator.parameters()) + list(nets.discriminator.parameters()):
        p.grad = None
    fn = gan.discriminator_objective if which == "d" else gan.generator_objective
    fn(nets, kw.pop("x"), generator=_g(3), **kw)[0].backward()


def test_acgan_and_infogan_terms_get_gradients():
    torch.manual_seed(0)
    nets = _vec(num_classes=3, cond_mode="acgan", info_categorical=3, info_continuous=2)
    x, y = _x(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    d = nets.discriminator
    # the auxiliary heads do not touch the adversarial logit: their gradient comes from the extra terms only
    _param_grad(nets, "d", x=x, cond={"y": y}, aux_weight=0.0, info_weight=0.0)
    assert d.class_head.weight.grad is None or d.class_head.weight.grad.abs().max() == 0
    assert d.q_head[0].weight.grad is None or d.q_head[0].weight.grad.abs().max() == 0
    _param_grad(nets, "d", x=x, cond={"y": y})
    assert d.class_head.weight.grad.abs().max() > 0 and d.q_head[0].weight.grad.abs().max() > 0
    # the generator's class and information terms reach the generator (through D's heads)
    _param_grad(nets, "g", x=x, cond={"y": y}, aux_weight=0.0, info_weight=0.0)
    base = [p.grad.clone() for p in nets.generator.parameters()]
    _param_grad(nets, "g", x=x, cond={"y": y}, aux_weight=1.0, info_weight=0.0)
    with_aux = [p.grad.clone() for p in nets.generator.parameters()]
    _param_grad(nets, "g", x=x, cond={"y": y}, aux_weight=0.0, info_weight=1.0)
    with_info = [p.grad.clone() for p in nets.generator.parameters()]
    assert any(not torch.allclose(a, b) for a, b in zip(base, with_aux))
    assert any(not torch.allclose(a, b) for a, b in zip(base, with_info))
    assert d.q_head[0].weight.grad.abs().max() > 0  # G's step also trains Q (Chen et al.)


def test_objective_values_match_the_pure_losses():
    nets = _vec(num_classes=3, cond_mode="projection")
    x, y = _x(5, 2), torch.tensor([0, 1, 2, 3, 0])
    for kind in gan.LOSSES:
        loss, logs = gan.discriminator_objective(nets, x, kind=kind, generator=_g(7), cond={"y": y})
        lat = gan.sample_latent(nets, 5, generator=_g(7))
        fake = nets.generator(lat["z"], y)
        ref = gan.discriminator_loss(nets.discriminator(x, y), nets.discriminator(fake, y), kind=kind)[0]
        torch.testing.assert_close(loss, ref)
        loss, _ = gan.generator_objective(nets, x, kind=kind, generator=_g(7), cond={"y": y})
        torch.testing.assert_close(loss, gan.generator_loss(nets.discriminator(fake, y), kind=kind)[0])


def test_penalty_terms_use_labels_and_weights():
    nets = _vec(num_classes=3, cond_mode="concat")
    x, y = _x(5, 2), torch.tensor([0, 1, 2, 3, 0])
    base, _ = gan.discriminator_objective(nets, x, generator=_g(2), cond={"y": y})
    loss, logs = gan.discriminator_objective(nets, x, gp_weight=10.0, r1_weight=4.0, generator=_g(2), cond={"y": y})
    # same draws: z first, then the penalty's α (so the adversarial part is the same)
    g = _g(2)
    gan.sample_latent(nets, 5, generator=g)
    lat = gan.sample_latent(nets, 5, generator=_g(2))
    fake = nets.generator(lat["z"], y).detach()
    gp = gan.gradient_penalty(nets.discriminator, x, fake, generator=g, cond={"y": y})
    r1 = gan.r1_penalty(nets.discriminator, x, cond={"y": y})
    torch.testing.assert_close(logs["gp"], gp.detach())
    torch.testing.assert_close(logs["r1"], r1.detach())
    torch.testing.assert_close(loss, base + 10.0 * gp + 0.5 * 4.0 * r1)  # r1_weight is γ: γ/2 · R1


@settings(max_examples=15, deadline=None)
@given(w=st.lists(st.floats(-3, 3, allow_nan=False), min_size=3, max_size=3), seed=st.integers(0, 100))
def test_penalties_of_a_linear_critic(w, seed):
    """Any linear critic D(x) = <w, x> + b: GP = (‖w‖ - 1)², R1 = ‖w‖², whatever the points and α."""
    critic = nn.Linear(3, 1).double()
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([w], dtype=torch.float64))
    real = torch.randn(7, 3, generator=_g(seed), dtype=torch.float64) * 5
    fake = torch.randn(7, 3, generator=_g(seed + 1), dtype=torch.float64)
    norm = math.sqrt(sum(v * v for v in w))
    assert gan.gradient_penalty(critic, real, fake, generator=_g(seed)).item() == pytest.approx((norm - 1) ** 2, abs=1e-9)
    assert gan.r1_penalty(critic, real).item() == pytest.approx(norm ** 2, abs=1e-9)


def test_acgan_skips_null_labels_and_info_loss_closed_form():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    y = torch.tensor([0, 2, 1])  # 2 = null: skipped
    expected = (F.cross_entropy(logits[0:1], y[0:1]) + F.cross_entropy(logits[2:3], y[2:3])) / 2
    torch.testing.assert_close(gan._class_ce(logits, y, 2), expected)
    assert gan._class_ce(logits, torch.full((3,), 2), 2).item() == 0.0  # all null: no NaN
    c = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, -0.5]])
    aux = {"cat": torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]), "cont": torch.tensor([[1.5], [-0.5]])}
    expected = (math.log(2) + math.log(4 / 3)) / 2 + 0.5 * (1.0 + 0.0) / 2
    assert gan.info_loss(aux, c).item() == pytest.approx(expected)
    assert gan.info_loss({"cont": torch.zeros(2, 1)}, torch.ones(2, 1)).item() == pytest.approx(0.5)


def test_objective_errors():
    nets = _vec()
    x = _x(4, 2)
    with pytest.raises(ValueError, match="kind must be one of 'minimax'.*got 'wgan'"):
        gan.discriminator_objective(nets, x, kind="wgan")
    with pytest.raises(ValueError, match="kind must be one of"):
        gan.generator_objective(nets, x, kind="bce")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\) for this network, got \(4, 3\)"):
        gan.discriminator_objective(nets, _x(4, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\) for this network, got \(2,\)"):
        gan.generator_objective(nets, _x(2))
    with pytest.raises(ValueError, match=r"gp_weight must be in \[0.0, inf\], got -1.0"):
        gan.discriminator_objective(nets, x, gp_weight=-1.0)
    with pytest.raises(ValueError, match=r"info_weight must be in \[0.0, inf\]"):
        gan.generator_objective(nets, x, info_weight=-0.5)
    with pytest.raises(ValueError, match=r"cond\['y'\] was given but the GAN was built with num_classes=None"):
        gan.generator_objective(nets, x, cond={"y": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(TypeError, match="nets must be GANNets"):
        gan.generator_objective(nets.generator, x)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        gan.discriminator_objective(nets, x, generator=1)
    cnets = _vec(num_classes=3)
    with pytest.raises(ValueError, match=r"cond\['y'\] \(labels of shape \(4,\)\) is required"):
        gan.discriminator_objective(cnets, x)
    with pytest.raises(ValueError, match=r"cond\['y'\] must have shape \(4,\) to match the batch, got \(3,\)"):
        gan.discriminator_objective(cnets, x, cond={"y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"cond\['y'\] must hold labels in \[0, 2\] or the null label 3, got -1"):
        gan.generator_objective(cnets, x, cond={"y": torch.tensor([0, 1, 2, -1])})
    with pytest.raises(TypeError, match="y must be an integer"):
        gan.generator_objective(cnets, x, cond={"y": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"cond may only hold 'y'.*\['t'\]"):
        gan.generator_objective(cnets, x, cond={"y": torch.zeros(4, dtype=torch.long), "t": 1})


# ---------------------------------------------------------------------------------------------
# latents and sampling


def test_sample_latent_codes():
    nets = _vec(info_categorical=4, info_continuous=3)
    lat = gan.sample_latent(nets, 500, generator=_g())
    z, c = lat["z"], lat["c"]
    assert z.shape == (500, 8) and c.shape == (500, 7)
    onehot, cont = c[:, :4], c[:, 4:]
    assert torch.equal(onehot.sum(1), torch.ones(500)) and set(onehot.unique().tolist()) == {0.0, 1.0}
    assert (onehot.sum(0) > 80).all()  # every category drawn
    assert cont.min() >= -1 and cont.max() < 1 and cont.min() < -0.9 and cont.max() > 0.9
    again = gan.sample_latent(nets, 500, generator=_g())
    assert torch.equal(again["z"], z) and torch.equal(again["c"], c)
    assert gan.sample_latent(_vec(), 3, generator=_g())["c"] is None
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        gan.sample_latent(nets, 0)


def test_sample_is_seeded_and_follows_the_generator():
    nets = _img()
    nets.generator.eval()
    a = gan.sample(nets, (3, 1, 8, 8), generator=_g(5))
    b = gan.sample(nets, (3, 1, 8, 8), generator=_g(5))
    c = gan.sample(nets, (3, 1, 8, 8), generator=_g(6))
    assert a.dtype == torch.float32 and a.shape == (3, 1, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    z = gan.sample_latent(nets, 3, generator=_g(5))["z"]
    with torch.no_grad():
        torch.testing.assert_close(a, nets.generator(z))
    torch.testing.assert_close(gan.sample(nets, (3, 1, 8, 8), z=z), a)


def test_conditional_sampling_uses_the_labels():
    torch.manual_seed(0)
    nets = _vec(num_classes=4, info_categorical=2)
    z = torch.randn(4, 8, generator=_g())
    c = torch.tensor([[1.0, 0.0]] * 4)
    ya, yb = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    xa = gan.sample(nets, (4, 2), cond={"y": ya}, z=z, c=c)
    xb = gan.sample(nets, (4, 2), cond={"y": yb}, z=z, c=c)
    torch.testing.assert_close(xa, nets.generator(z, ya, c))
    assert not torch.allclose(xa, xb)
    torch.testing.assert_close(xa.flip(0), gan.sample(nets, (4, 2), cond={"y": yb}, z=z.flip(0), c=c))
    c2 = torch.tensor([[0.0, 1.0]] * 4)
    assert not torch.allclose(xa, gan.sample(nets, (4, 2), cond={"y": ya}, z=z, c=c2))  # the code matters
    with pytest.raises(ValueError, match=r"cond\['y'\] \(labels of shape \(4,\)\) is required"):
        gan.sample(nets, (4, 2))


def test_sample_errors():
    nets = _vec()
    with pytest.raises(ValueError, match=r"shape must be \(B, 2\) for this network, got \(4, 3\)"):
        gan.sample(nets, (4, 3))
    with pytest.raises(ValueError, match="shape must be a non-empty tuple of positive ints"):
        gan.sample(nets, (0, 2))
    with pytest.raises(ValueError, match=r"z must have shape \(4, 8\), got \(4, 7\)"):
        gan.sample(nets, (4, 2), z=torch.zeros(4, 7))
    with pytest.raises(ValueError, match="c was given but the generator was built without InfoGAN codes"):
        gan.sample(nets, (4, 2), c=torch.zeros(4, 1))


# ---------------------------------------------------------------------------------------------
# learning


def test_mlp_gan_covers_the_eight_gaussians():
    """An MLP GAN (non-saturating loss) on 8gaussians covers the 8 modes; the untrained generator none.

    Measured (1000 steps of batch 256, about 5 s on one thread): untrained 0 modes / 0.0 high quality;
    trained seeds 0-3: 8 modes each, high-quality fraction 0.81-0.95.
    """
    torch.manual_seed(0)
    g = _g(0)
    nets = gan.build(data_shape=(2,), hidden=64, depth=2)
    opt_g = torch.optim.Adam(nets.generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(nets.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def coverage():
        with torch.no_grad():
            x = gan.sample(nets, (2000, 2), generator=_g(1))
        return mode_coverage(x, EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)

    before = coverage()
    start = time.perf_counter()
    for _ in range(1000):
        x = toy2d.sample("8gaussians", 256, generator=g)
        loss, _ = gan.discriminator_objective(nets, x, generator=g)
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        loss, _ = gan.generator_objective(nets, x, generator=g)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    after = coverage()
    print(f"untrained {before['modes']} modes / {before['high_quality']:.3f}; trained {after['modes']} modes / "
          f"{after['high_quality']:.3f} in {time.perf_counter() - start:.1f} s")
    assert before["modes"] <= 2 and before["high_quality"] < 0.2
    assert after["modes"] >= 6 and after["high_quality"] >= 0.6
