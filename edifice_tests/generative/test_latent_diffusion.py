"""Latent diffusion: build variants, the two losses and their joint sum, the latent scale, encode/decode round
trip, sampling, cross-attention conditioning, bad inputs, and a learning test on the 8x8 digits."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from edifice.generative import ddpm, flow_matching, latent_diffusion as ldm, vqvae

TINY = dict(data_shape=(1, 8, 8), ae_channels=(8, 16), ae_res_blocks=0, latent_channels=4, denoiser_hidden=32,
            denoiser_depth=1, base_channels=8, codebook_size=8)


def _tiny(**kw):
    torch.manual_seed(0)  # parameter initialisation only
    return ldm.build(**{**TINY, **kw})


def _x(b=16, seed=0, shape=(1, 8, 8)):
    return torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _perturb(module, seed=123, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


VARIANTS = [
    dict(),
    dict(autoencoder="vqvae"),
    dict(autoencoder="vqvae", vq_ema=False, objective="flow_matching"),
    dict(objective="flow_matching", backbone="unet", data_shape=(1, 16, 16)),
    dict(backbone="transformer", num_classes=3),
    dict(context_dim=6, denoiser_heads=2),
]
IDS = ["vae-mlp", "vq-mlp", "vq-noema-fm", "vae-unet-fm", "transformer-class", "cross-attention"]


def _cond(nets, b, seed=3):
    cfg = nets.encoder.config
    g = torch.Generator().manual_seed(seed)
    cond = {}
    if cfg["num_classes"]:
        cond["y"] = torch.randint(0, cfg["num_classes"], (b,), generator=g)
    if cfg["context_dim"]:
        cond["context"] = torch.randn(b, 5, cfg["context_dim"], generator=g)
    return cond or None


# ------------------------------------------------------------------------------------------------ build


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_build_returns_three_modules_with_the_latent_scale_buffer(kw):
    nets = _tiny(**kw)
    assert isinstance(nets, ldm.LatentDiffusionNets) and len(nets) == 3
    assert all(isinstance(m, torch.nn.Module) for m in nets)
    assert "latent_scale" in dict(nets.denoiser.named_buffers())
    assert float(nets.denoiser.latent_scale) == 0.0
    assert "latent_scale" in nets.denoiser.state_dict()
    h = kw.get("data_shape", (1, 8, 8))[1] // 4
    assert ldm.latent_shape(nets) == (4, h, h)
    assert (nets.decoder.quantizer is not None) == (kw.get("autoencoder") == "vqvae")
    rebuilt = ldm.build(**nets.encoder.config)
    assert [type(m) for m in rebuilt] == [type(m) for m in nets]


def test_auto_backbone_choice():
    assert _tiny().denoiser.kind == "mlp"  # 2x2 latents
    assert _tiny(data_shape=(1, 16, 16)).denoiser.kind == "unet"  # 4x4 latents
    assert _tiny(data_shape=(1, 28, 28)).denoiser.kind == "unet"  # 7x7: channel_mults (1,)
    assert _tiny(context_dim=4, denoiser_heads=2).denoiser.kind == "transformer"


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_joint_loss_is_finite_and_reaches_every_parameter(kw):
    nets = _tiny(**kw)
    _perturb(nets.denoiser)
    g = torch.Generator().manual_seed(1)
    shape = kw.get("data_shape", (1, 8, 8))
    value, logs = ldm.loss(nets, _x(shape=shape), generator=g, cond=_cond(nets, 16))
    assert value.ndim == 0 and torch.isfinite(value)
    assert all(not v.requires_grad for v in logs.values())
    assert {"loss", "recon", "autoencoder_loss", "denoiser_loss", "latent_std"} <= set(logs)
    value.backward()
    missing = [f"{f}.{n}" for f, m in zip(nets._fields, nets) for n, p in m.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_denoiser_loss_reaches_only_the_denoiser():
    nets = _tiny()
    ldm.estimate_latent_scale(nets, _x(64))
    value, _ = ldm.denoiser_loss(nets, _x(), generator=torch.Generator().manual_seed(0))
    value.backward()
    assert all(p.grad is None for m in (nets.encoder, nets.decoder) for p in m.parameters())
    assert all(p.grad is not None for p in nets.denoiser.parameters())


def test_autoencoder_loss_reaches_only_the_autoencoder():
    nets = _tiny()
    value, logs = ldm.autoencoder_loss(nets, _x(), generator=torch.Generator().manual_seed(0))
    value.backward()
    assert sorted(logs) == ["kl", "loss", "recon"]
    assert all(p.grad is not None for m in (nets.encoder, nets.decoder) for p in m.parameters())
    assert all(p.grad is None for p in nets.denoiser.parameters())


def test_kl_autoencoder_loss_is_the_formula():
    """Per-example sums of squared error plus w_KL times the closed-form KL, with the reparameterised draw."""
    nets = _tiny()
    x = _x(8)
    loss, logs = ldm.autoencoder_loss(nets, x, kl_weight=0.3, generator=torch.Generator().manual_seed(5))
    mu, logvar = nets.encoder(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    x_rec = nets.decoder(mu + (0.5 * logvar).exp() * eps)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    want = (x_rec - x).square().flatten(1).sum(1).mean() + 0.3 * kl.mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logs["recon"], F.mse_loss(x_rec, x).detach())
    torch.testing.assert_close(logs["kl"], kl.mean().detach())


def test_vq_autoencoder_loss_matches_vqvae_terms_and_updates_the_codebook():
    nets = _tiny(autoencoder="vqvae")
    x = _x(8)
    q = nets.decoder.quantizer
    before = q.embed.clone()
    z_e = nets.encoder(x)
    codes = vqvae.nearest_codes(z_e, q.embed)
    z_q = q.lookup(codes)
    want = F.mse_loss(nets.decoder.net(z_q), x) + 0.5 * F.mse_loss(z_e, z_q)
    loss, logs = ldm.autoencoder_loss(nets, x, beta=0.5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loss, want)
    assert {"recon", "commitment", "perplexity", "usage"} <= set(logs)
    assert not torch.equal(q.embed, before), "training mode: EMA update / restarts move the codebook"
    q.eval()
    frozen = q.embed.clone()
    ldm.autoencoder_loss(nets, x)
    assert torch.equal(q.embed, frozen), "eval mode changes nothing"


# ------------------------------------------------------------------------------------------------ properties


@pytest.mark.parametrize("kind", ["vae", "vqvae"])
def test_latent_round_trip_error_equals_the_autoencoders_reconstruction_error(kind):
    nets = _tiny(autoencoder=kind)
    _perturb(nets.encoder)
    x = _x(32, seed=4)
    ldm.estimate_latent_scale(nets, x)
    with torch.no_grad():
        round_trip = ldm.decode(nets, ldm.encode(nets, x))
        if kind == "vae":
            direct = nets.decoder.net(nets.encoder(x)[0])  # decoder at the posterior mean
        else:
            q = nets.decoder.quantizer
            direct = nets.decoder.net(q.lookup(vqvae.nearest_codes(nets.encoder.net(x), q.embed)))
    err_rt, err_direct = F.mse_loss(round_trip, x), F.mse_loss(direct, x)
    torch.testing.assert_close(err_rt, err_direct, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(round_trip, direct, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["vae", "vqvae"])
def test_scaled_latents_have_unit_std(kind):
    nets = _tiny(autoencoder=kind)
    _perturb(nets.encoder, std=0.3)  # raw latents far from unit std
    fixed, fresh = _x(256, seed=1), _x(256, seed=2)
    raw = ldm.encode(nets, fixed).detach()
    scale = ldm.estimate_latent_scale(nets, fixed)
    assert scale == pytest.approx(1.0 / float(raw.double().std()), rel=1e-6)
    assert float(nets.denoiser.latent_scale) == pytest.approx(scale, rel=1e-6)
    assert float(ldm.encode(nets, fixed).detach().std()) == pytest.approx(1.0, abs=1e-4)
    _, logs = ldm.denoiser_loss(nets, fresh, generator=torch.Generator().manual_seed(0))
    assert 0.8 <= float(logs["latent_std"]) <= 1.2  # what the denoiser sees on another batch


def test_denoiser_loss_is_the_objectives_loss_on_scaled_latents():
    for objective, fam in (("ddpm", ddpm), ("flow_matching", flow_matching)):
        nets = _tiny(objective=objective)
        x = _x(8)
        ldm.estimate_latent_scale(nets, _x(64, seed=9))
        z = ldm.encode(nets, x).detach()
        got, _ = ldm.denoiser_loss(nets, x, generator=torch.Generator().manual_seed(3))
        want, _ = fam.loss(nets.denoiser, z, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kw,skw", [
    (dict(), dict(steps=4)),
    (dict(), dict(steps=3, sampler="ddim")),
    (dict(autoencoder="vqvae", objective="flow_matching"), dict(steps=3, sampler="heun")),
    (dict(context_dim=6, denoiser_heads=2, num_classes=2), dict(steps=2)),
], ids=["ddpm", "ddim", "vq-fm-heun", "cross-attention"])
def test_sample_decodes_to_the_data_shape_and_is_deterministic(kw, skw):
    nets = _tiny(**kw)
    _perturb(nets.denoiser)
    for m in nets:
        m.eval()
    ldm.estimate_latent_scale(nets, _x(64))

    def draw(seed):
        return ldm.sample(nets, (5, 1, 8, 8), generator=torch.Generator().manual_seed(seed), cond=_cond(nets, 5), **skw)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_is_decode_of_the_latent_sampler():
    nets = _tiny()
    _perturb(nets.denoiser)
    ldm.estimate_latent_scale(nets, _x(64))
    got = ldm.sample(nets, (4, 1, 8, 8), steps=5, generator=torch.Generator().manual_seed(0))
    z = ddpm.sample(nets.denoiser, (4, 4, 2, 2), steps=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(got, ldm.decode(nets, z))


def test_vq_decode_snaps_latents_to_the_codebook():
    nets = _tiny(autoencoder="vqvae")
    q = nets.decoder.quantizer
    z = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    snapped = q.lookup(vqvae.nearest_codes(z, q.embed))
    with torch.no_grad():
        torch.testing.assert_close(ldm.decode(nets, z), nets.decoder.net(snapped))


def test_unestimated_scale_reads_as_one_except_in_denoiser_loss():
    nets = _tiny()
    x = _x(8)
    torch.testing.assert_close(ldm.encode(nets, x), nets.encoder(x)[0])
    with pytest.raises(ValueError, match="latent_scale was never estimated.*estimate_latent_scale"):
        ldm.denoiser_loss(nets, x)
    value, _ = ldm.loss(nets, x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(value)


# ------------------------------------------------------------------------------------------------ cross-attention


def test_cross_attention_output_depends_on_the_context():
    nets = _tiny(context_dim=6, denoiser_heads=2)
    _perturb(nets.denoiser)
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(3, 4, 2, 2, generator=g), torch.tensor([3.0, 500.0, 900.0])
    c1, c2 = torch.randn(3, 5, 6, generator=g), torch.randn(3, 5, 6, generator=g)
    with torch.no_grad():
        o1, o1b = nets.denoiser(z, t, context=c1), nets.denoiser(z, t, context=c1)
        o2, o0 = nets.denoiser(z, t, context=c2), nets.denoiser(z, t)
        # per-sample: changing sample 0's context changes only sample 0
        c3 = c1.clone()
        c3[0] += 1.0
        o3 = nets.denoiser(z, t, context=c3)
    assert torch.equal(o1, o1b)
    assert (o1 - o2).abs().amax() > 1e-4 and (o1 - o0).abs().amax() > 1e-4
    assert (o3[0] - o1[0]).abs().amax() > 1e-4 and torch.equal(o3[1:], o1[1:])
    # a context of any length L works
    assert nets.denoiser(z, t, context=torch.randn(3, 11, 6)).shape == z.shape


def test_cross_attention_gradients_reach_the_context_projection():
    nets = _tiny(context_dim=6, denoiser_heads=2)
    ldm.estimate_latent_scale(nets, _x(64))
    cond = {"context": torch.randn(16, 5, 6, generator=torch.Generator().manual_seed(0))}
    value, _ = ldm.denoiser_loss(nets, _x(), generator=torch.Generator().manual_seed(0), cond=cond)
    value.backward()
    kv = nets.denoiser.net.blocks[0].cross.kv.weight
    assert kv.grad is not None and kv.grad.abs().sum() > 0


def test_latent_transformer_blocks_start_as_identity():
    """AdaLN-Zero: self-attention and MLP sub-layers are the identity at init; only cross-attention acts."""
    net = ldm.LatentTransformer(4, 2, hidden=16, depth=2, heads=2)
    h = torch.randn(3, 4, 16)
    c = torch.randn(3, 16)
    for block in net.blocks:
        assert torch.equal(block(h, c, None), h)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("key,value", [
    ("data_shape", (0,)), ("data_shape", (2,)), ("data_shape", (1, 8, 6)), ("data_shape", (1, 6, 6)),
    ("autoencoder", "gan"), ("objective", "edm"), ("backbone", "dit"), ("latent_channels", 0),
    ("ae_channels", ()), ("codebook_size", 1), ("vq_ema", 1), ("denoiser_hidden", 0), ("num_classes", 0),
    ("context_dim", 0),
])
def test_bad_build_option_names_it(key, value):
    with pytest.raises((ValueError, TypeError), match=key):
        ldm.build(**{**TINY, key: value})


def test_context_needs_the_transformer_backbone():
    with pytest.raises(ValueError, match="context_dim"):
        ldm.build(**TINY, context_dim=4, backbone="mlp")
    with pytest.raises(ValueError, match="denoiser_heads"):
        ldm.build(**{**TINY, "denoiser_hidden": 30}, context_dim=4, denoiser_heads=4)


def test_shape_mismatches_name_x_z_and_shape():
    nets = _tiny()
    ldm.estimate_latent_scale(nets, _x(64))
    for fn in (ldm.encode, ldm.autoencoder_loss, ldm.denoiser_loss, ldm.loss, ldm.estimate_latent_scale):
        with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\).*data_shape"):
            fn(nets, torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"z must have the latent shape \(B, 4, 2, 2\)"):
        ldm.decode(nets, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="shape must be .*data_shape"):
        ldm.sample(nets, (2, 1, 16, 16), steps=2)
    with pytest.raises(ValueError, match="z must have shape"):
        nets.denoiser(torch.zeros(2, 4, 3, 3), torch.zeros(2))


def test_bad_arguments_raise_naming_them():
    nets = _tiny()
    vq = _tiny(autoencoder="vqvae")
    x = _x(4)
    with pytest.raises(TypeError, match="nets must be the LatentDiffusionNets"):
        ldm.encode((nets.encoder, nets.decoder), x)
    with pytest.raises(ValueError, match="beta applies only"):
        ldm.autoencoder_loss(nets, x, beta=0.25)
    with pytest.raises(ValueError, match="kl_weight applies only"):
        ldm.autoencoder_loss(vq, x, kl_weight=1e-6)
    with pytest.raises(ValueError, match="kl_weight"):
        ldm.autoencoder_loss(nets, x, kl_weight=-1.0)
    with pytest.raises(ValueError, match="cond may only hold"):
        ldm.autoencoder_loss(nets, x, cond={"label": torch.zeros(4)})
    with pytest.raises(ValueError, match="sampler must be one of"):
        ldm.sample(nets, (2, 1, 8, 8), sampler="heun")
    with pytest.raises(ValueError, match="sampler must be one of"):
        ldm.sample(_tiny(objective="flow_matching"), (2, 1, 8, 8), sampler="ddim")
    with pytest.raises(ValueError, match="context was given"):
        nets.denoiser(torch.zeros(2, 4, 2, 2), torch.zeros(2), context=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="num_classes=None"):
        nets.denoiser(torch.zeros(2, 4, 2, 2), torch.zeros(2), y=torch.zeros(2, dtype=torch.long))
    labelled = _tiny(num_classes=3)
    with pytest.raises(ValueError, match="y must hold labels"):
        labelled.denoiser(torch.zeros(2, 4, 2, 2), torch.zeros(2), y=torch.tensor([0, 7]))
    ldm.estimate_latent_scale(nets, _x(64))
    with pytest.raises(ValueError, match="noise must have shape"):
        ldm.denoiser_loss(nets, x, noise=torch.zeros(4, 4, 3, 3))
    with pytest.raises(ValueError, match="standard deviation"):
        ldm.estimate_latent_scale(nets, torch.zeros(0, 1, 8, 8))


# ------------------------------------------------------------------------------------------------ learning


def test_learns_digits_pixel_mmd_far_below_untrained():
    """Autoencoder 200 steps, then the latent DDPM 300 steps on the 8x8 digits (one thread, <= 25 s)."""
    from edifice import data
    from edifice.metrics.distances import mmd

    start = time.perf_counter()
    src = data.load("digits")
    x_test, _ = src.test_set()
    torch.manual_seed(0)
    nets = ldm.build(data_shape=(1, 8, 8), ae_channels=(16, 32), ae_res_blocks=0, latent_channels=4,
                     denoiser_hidden=96, denoiser_depth=2)
    g = torch.Generator().manual_seed(0)
    fixed, _ = src.train_batch(512, generator=torch.Generator().manual_seed(1))

    def pixel_mmd():
        for m in nets:
            m.eval()
        x = ldm.sample(nets, (x_test.shape[0], 1, 8, 8), steps=50, sampler="ddim",
                       generator=torch.Generator().manual_seed(5))
        for m in nets:
            m.train()
        return float(mmd(x.flatten(1), x_test.flatten(1)))

    ldm.estimate_latent_scale(nets, fixed)
    untrained = pixel_mmd()
    ae_opt = torch.optim.Adam([*nets.encoder.parameters(), *nets.decoder.parameters()], lr=3e-3)
    for _ in range(200):
        x, _ = src.train_batch(64, generator=g)
        value, ae_logs = ldm.autoencoder_loss(nets, x, generator=g)
        ae_opt.zero_grad()
        value.backward()
        ae_opt.step()
    ldm.estimate_latent_scale(nets, fixed)
    with torch.no_grad():
        recon = float(F.mse_loss(ldm.decode(nets, ldm.encode(nets, x_test)), x_test))
    opt = torch.optim.Adam(nets.denoiser.parameters(), lr=3e-3)
    for _ in range(300):
        x, _ = src.train_batch(64, generator=g)
        value, logs = ldm.denoiser_loss(nets, x, generator=g)
        opt.zero_grad()
        value.backward()
        opt.step()
    trained = pixel_mmd()
    elapsed = time.perf_counter() - start
    print(f"latent diffusion on digits: test recon MSE {recon:.4f}, pixel MMD untrained {untrained:.4f} -> "
          f"trained {trained:.4f}, denoiser loss {float(logs['loss']):.3f}, {elapsed:.1f} s")
    assert recon < 0.15  # pixels in [-1, 1]: a blurred but recognisable reconstruction
    assert trained < 0.2 * untrained, (untrained, trained)
    assert trained < 0.06  # train-vs-test MMD of real digits is about 0.006
    assert elapsed < 60, elapsed


def test_classifier_free_guidance_wraps_the_denoiser():
    """``edifice.guidance.cfg`` on ``nets.denoiser`` samples through ``sample`` (the recipe's guided path)."""
    from edifice import guidance

    nets = _tiny(num_classes=3)
    _perturb(nets.denoiser)
    ldm.estimate_latent_scale(nets, _x(64))
    y = torch.tensor([0, 1, 2, 1])

    def draw(scale):
        guided = nets._replace(denoiser=guidance.cfg(nets.denoiser, scale, num_classes=3))
        return ldm.sample(guided, (4, 1, 8, 8), steps=3, sampler="ddim", generator=torch.Generator().manual_seed(0),
                          cond={"y": y})

    plain = ldm.sample(nets, (4, 1, 8, 8), steps=3, sampler="ddim", generator=torch.Generator().manual_seed(0),
                       cond={"y": y})
    assert torch.equal(draw(1.0), plain)  # scale 1 is the conditional model
    assert not torch.equal(draw(3.0), plain)
