"""One contract test over every registered family.

Each family must: build from small options (a module, or a NamedTuple of modules); give finite
losses whose gradients together reach every parameter; sample with the requested shape and dtype;
give the same bits for the same seed; survive a ``state_dict`` round trip; and reject a bad option
with a ValueError naming it. A family that is registered without a row here fails
``test_every_family_has_a_contract_row``. Families trained by several objectives (GANs) list them
in ``OBJECTIVES``; the others are trained by their ``loss``.
"""

from __future__ import annotations

import pytest
import torch

import edifice

# family -> list of (case id, build options, data shape, sample kwargs, a bad option and the name in its error)
CASES = {
    "ddpm": [
        ("vector", dict(data_shape=(2,), hidden=32, depth=2), (2,), dict(steps=10), ("hidden", 0)),
        ("image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2)), (1, 8, 8), dict(steps=4),
         ("base_channels", -1)),
        ("class", dict(data_shape=(2,), hidden=32, depth=2, num_classes=3), (2,), dict(steps=5), ("num_classes", 0)),
    ],
    "ddim": [
        ("vector", dict(data_shape=(2,), hidden=32, depth=2), (2,), dict(steps=10, eta=0.5), ("depth", 0)),
        ("image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2)), (1, 8, 8), dict(steps=4),
         ("channel_mults", ())),
    ],
    "flow_matching": [
        ("vector", dict(data_shape=(2,), hidden=32, depth=2), (2,), dict(steps=8), ("hidden", 0)),
        ("image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2)), (1, 8, 8),
         dict(steps=3, method="midpoint"), ("base_channels", 0)),
        ("class", dict(data_shape=(2,), hidden=32, depth=2, num_classes=3), (2,), dict(steps=4), ("num_classes", -2)),
    ],
    "score_sde": [
        ("vp", dict(data_shape=(2,), hidden=32, depth=2), (2,), dict(steps=6), ("hidden", 0)),
        ("ve-em", dict(data_shape=(2,), hidden=32, depth=2, sde="ve"), (2,), dict(steps=6, sampler="em"),
         ("sigma_max", 0.001)),
        ("subvp-ode", dict(data_shape=(2,), hidden=32, depth=2, sde="subvp", num_classes=3), (2,),
         dict(steps=4, sampler="ode", method="heun"), ("sde", "vpp")),
        ("image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2)), (1, 8, 8), dict(steps=3),
         ("base_channels", 0)),
    ],
    "edm": [
        ("vector", dict(data_shape=(2,), hidden=32, depth=2), (2,), dict(steps=5), ("sigma_data", 0.0)),
        ("stochastic", dict(data_shape=(2,), hidden=32, depth=2, num_classes=3), (2,),
         dict(steps=5, s_churn=10.0, sampler="heun"), ("num_classes", 0)),
        ("image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2)), (1, 8, 8),
         dict(steps=3, sampler="euler"), ("channel_mults", ())),
    ],
    "ncsn": [
        ("vector", dict(data_shape=(2,), hidden=32, depth=2, num_scales=4), (2,), dict(steps_per_level=3),
         ("num_scales", 0)),
        ("image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2), num_scales=3), (1, 8, 8),
         dict(steps_per_level=2), ("sigma_min", 5.0)),
    ],
}

CASES.update({
    "vae": [
        ("vector", dict(data_shape=(2,), latent_dim=2, hidden=32, depth=2), (2,), dict(), ("latent_dim", 0)),
        ("conv", dict(data_shape=(1, 8, 8), latent_dim=4, arch="conv", channels=(8, 16)), (1, 8, 8),
         dict(mean=True), ("channels", ())),
        ("cvae-ladder", dict(data_shape=(2,), latent_dim=4, hidden=32, depth=2, num_classes=3, levels=2), (2,),
         dict(), ("levels", 3)),
        ("bernoulli", dict(data_shape=(1, 8, 8), latent_dim=4, hidden=32, depth=1, arch="mlp",
                           likelihood="bernoulli"), (1, 8, 8), dict(), ("likelihood", "poisson")),
    ],
    "vqvae": [
        ("pixelcnn", dict(data_shape=(1, 8, 8), codebook_size=8, code_dim=4, channels=(8, 16), prior_hidden=16,
                          prior_layers=2), (1, 8, 8), dict(), ("codebook_size", 1)),
        ("transformer", dict(data_shape=(1, 8, 8), codebook_size=8, code_dim=4, channels=(8, 16), prior_hidden=16,
                             prior_layers=2, prior="transformer", num_classes=3, ema=False), (1, 8, 8), dict(),
         ("prior", "lstm")),
    ],
    "gan": [
        ("mlp", dict(data_shape=(2,), hidden=32, depth=2), (2,), dict(), ("hidden", 0)),
        ("dcgan-sn", dict(data_shape=(1, 8, 8), arch="dcgan", channels=(8, 16), latent_dim=8, spectral_norm=True),
         (1, 8, 8), dict(), ("arch", "stylegan")),
        ("projection", dict(data_shape=(2,), hidden=32, depth=2, num_classes=3, cond_mode="projection"), (2,),
         dict(), ("cond_mode", "film")),
        ("acgan", dict(data_shape=(2,), hidden=32, depth=2, num_classes=3, cond_mode="acgan"), (2,), dict(),
         ("num_classes", 0)),
        ("infogan", dict(data_shape=(2,), hidden=32, depth=2, info_categorical=3, info_continuous=1), (2,), dict(),
         ("info_categorical", -1)),
    ],
})

CASES["dit"] = [
    ("tiny", dict(data_shape=(1, 8, 8), hidden=32, depth=2, heads=4), (1, 8, 8), dict(steps=4), ("patch_size", 3)),
    ("learn-sigma-class", dict(data_shape=(1, 8, 8), hidden=32, depth=1, heads=2, num_classes=3, learn_sigma=True),
     (1, 8, 8), dict(steps=3), ("preset", "XXL/2")),
    ("ddim", dict(data_shape=(2, 8, 8), hidden=16, depth=1, heads=2, patch_size=4), (2, 8, 8),
     dict(steps=3, sampler="ddim", eta=0.5), ("heads", 0)),
]

CASES["latent_diffusion"] = [
    ("kl-ddpm", dict(data_shape=(1, 8, 8), latent_channels=2, ae_channels=(8, 16), denoiser_hidden=16,
                     denoiser_depth=1), (1, 8, 8), dict(steps=3, sampler="ddim"), ("latent_channels", 0)),
    ("vq-flow-class", dict(data_shape=(1, 8, 8), latent_channels=2, ae_channels=(8, 16), denoiser_hidden=16,
                           denoiser_depth=1, autoencoder="vqvae", codebook_size=8, objective="flow_matching",
                           num_classes=3), (1, 8, 8), dict(steps=2), ("autoencoder", "gan")),
]

CASES["flow"] = [
    ("realnvp", dict(data_shape=(2,), kind="realnvp", blocks=2, hidden=16), (2,), dict(), ("kind", "flowpp")),
    ("nsf", dict(data_shape=(2,), kind="nsf", blocks=2, hidden=16), (2,), dict(), ("blocks", 0)),
    ("glow-image", dict(data_shape=(1, 4, 4), kind="glow", blocks=2, hidden=8, scales=1), (1, 4, 4), dict(),
     ("num_classes", 3)),
    ("ffjord", dict(data_shape=(2,), kind="ffjord", hidden=8, ode_steps=2), (2,), dict(), ("ode_method", "rk45")),
]

_V = dict(data_shape=(2,), hidden=32, depth=2)
_IMG = dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2))
CASES.update({
    "consistency": [
        ("vector", _V, (2,), dict(steps=1), ("sigma_data", 0.0)),
        ("multistep-class", dict(_V, num_classes=3), (2,), dict(steps=3), ("sigma_min", 100.0)),
        ("image", _IMG, (1, 8, 8), dict(steps=2), ("base_channels", 0)),
    ],
    "rectified_flow": [
        ("vector", _V, (2,), dict(steps=1), ("hidden", 0)),
        ("image-class", dict(_IMG, num_classes=3), (1, 8, 8), dict(steps=2, method="heun"), ("num_classes", 0)),
    ],
    "interpolant": [
        ("vector", _V, (2,), dict(steps=4), ("depth", 0)),
        ("trig-sde", dict(_V, num_classes=3), (2,),
         dict(steps=4, method="sde", kind="trig", gamma_scale=1.0, objective="denoiser"), ("dropout", 1.5)),
        ("image", _IMG, (1, 8, 8), dict(steps=2), ("channel_mults", ())),
    ],
    "shortcut": [
        ("vector", _V, (2,), dict(steps=1), ("max_steps", 3)),
        ("image-class", dict(_IMG, num_classes=3), (1, 8, 8), dict(steps=2), ("base_channels", 0)),
    ],
    "meanflow": [
        ("vector", _V, (2,), dict(steps=1), ("hidden", 0)),
        ("class-2step", dict(_V, num_classes=3), (2,), dict(steps=2), ("num_classes", 0)),
        ("image", _IMG, (1, 8, 8), dict(steps=1), ("channel_mults", ())),
    ],
    "progressive_distillation": [
        ("vector", _V, (2,), dict(steps=2, target="v"), ("hidden", 0)),
        ("image", _IMG, (1, 8, 8), dict(steps=1, target="v"), ("base_channels", 0)),
    ],
})

CASES["mdn"] = [
    ("inverse", dict(data_shape=(2,), components=3, hidden=16, depth=2), (2,), dict(), ("components", 0)),
    ("wide", dict(data_shape=(3,), input_dim=1, components=1, hidden=8, depth=1), (3,), dict(), ("input_dim", 3)),
]

CASES["rbm"] = [
    ("bernoulli", dict(data_shape=(2,), hidden=8, chains=16), (2,), dict(steps=20), ("hidden", 0)),
    ("image", dict(data_shape=(1, 8, 8), hidden=16, chains=32), (1, 8, 8), dict(steps=20), ("chains", 0)),
    ("gaussian", dict(data_shape=(2,), hidden=8, visible="gaussian", sigma=0.5), (2,), dict(steps=20),
     ("visible", "poisson")),
]

CASES["ebm"] = [
    ("vector", dict(data_shape=(2,), hidden=32, depth=2, buffer_size=64), (2,), dict(steps=5), ("buffer_size", 0)),
    ("image-sn", dict(data_shape=(1, 8, 8), base_channels=8, hidden=32, depth=2, spectral_norm=True, buffer_size=64),
     (1, 8, 8), dict(steps=3, clip=1.0), ("base_channels", 0)),
    ("jem", dict(data_shape=(2,), hidden=32, depth=2, num_classes=3, buffer_size=64), (2,), dict(steps=5),
     ("num_classes", 1)),
]

CASES["d3pm"] = [
    ("uniform-image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2), T=6), (1, 8, 8), dict(),
     ("transition", "bert")),
    ("absorbing-class", dict(data_shape=(2,), hidden=32, depth=2, categories=4, transition="absorbing", T=8,
                             num_classes=3), (2,), dict(), ("categories", 1)),
    ("gaussian-image", dict(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2), categories=4,
                            transition="gaussian", T=5), (1, 8, 8), dict(), ("T", 0)),
]

CASES["pixelcnn"] = [
    ("gated", dict(data_shape=(1, 8, 8), hidden=16, layers=2), (1, 8, 8), dict(), ("arch", "lstm")),
    ("plain-class", dict(data_shape=(1, 8, 8), arch="pixelcnn", hidden=16, layers=2, num_classes=3), (1, 8, 8),
     dict(), ("levels", 1)),
    ("transformer-quantised", dict(data_shape=(1, 4, 4), arch="transformer", hidden=16, layers=1, heads=2, levels=16),
     (1, 4, 4), dict(temperature=0.9), ("heads", 3)),
]

CASES["made"] = [
    ("image", dict(data_shape=(1, 8, 8), hidden=32, depth=1), (1, 8, 8), dict(), ("hidden", 0)),
    ("vector-masks-class", dict(data_shape=(6,), hidden=16, num_masks=3, num_classes=3), (6,), dict(),
     ("num_masks", 0)),
]

# Families whose network is not a denoiser net(x, t, **cond) (the round-trip test then compares samples only).
NOT_DENOISERS = {"flow", "shortcut", "meanflow", "mdn", "rbm", "ebm", "pixelcnn", "made"}

# Extra keyword arguments of a family's loss in this test (a teacher network for distillation families).
LOSS_KWARGS = {
    "progressive_distillation": lambda opts: dict(teacher=_fresh("ddpm", opts, seed=5), student_steps=2, target="v"),
}

# Families trained by several objectives (one optimiser each); the rest are trained by `loss`.
OBJECTIVES = {"gan": ("discriminator_objective", "generator_objective")}

PARAMS = [
    pytest.param(name, *case, id=f"{name}-{case[0]}")
    for name in sorted(CASES)
    for case in CASES[name]
]


def test_every_family_has_a_contract_row():
    assert sorted(CASES) == edifice.models()


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'nope'.*flow_matching"):
        edifice.build("nope")


def _cond(opts, batch, gen):
    if opts.get("num_classes"):
        return {"y": torch.randint(0, opts["num_classes"], (batch,), generator=gen)}
    return None


def _fresh(name, opts, seed=0):
    torch.manual_seed(seed)  # parameter initialisation only; the library itself never seeds
    return edifice.build(name, **opts)


def _modules(nets):
    return [nets] if isinstance(nets, torch.nn.Module) else list(nets)


def _named_parameters(nets):
    if isinstance(nets, torch.nn.Module):
        return list(nets.named_parameters())
    return [(f"{field}.{n}", p) for field, m in zip(nets._fields, nets) for n, p in m.named_parameters()]


def _perturb(nets):
    # Zero-initialised output layers make a fresh network's output constant; perturb so the tests see signal.
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in _modules(nets):
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))


def _eval(nets):
    for m in _modules(nets):
        m.eval()


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_loss_is_finite_and_reaches_every_parameter(name, case, opts, shape, skw, bad):
    fam = edifice.family(name)
    nets = _fresh(name, opts)
    assert all(isinstance(m, torch.nn.Module) for m in _modules(nets))
    if not isinstance(nets, torch.nn.Module):
        assert hasattr(nets, "_fields"), "multi-network families return a NamedTuple of modules"
    _perturb(nets)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((16, *shape), generator=g).clamp(-1, 1)
    extra = LOSS_KWARGS[name](opts) if name in LOSS_KWARGS else {}
    for objective in OBJECTIVES.get(name, ("loss",)):
        loss, logs = getattr(fam, objective)(nets, x, generator=g, cond=_cond(opts, 16, g), **extra)
        assert loss.ndim == 0 and torch.isfinite(loss), objective
        assert isinstance(logs, dict) and all(not v.requires_grad for v in logs.values())
        loss.backward()
    missing = [n for n, p in _named_parameters(nets) if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


def _draw(fam, nets, shape, skw, opts, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return fam.sample(nets, (5, *shape), generator=g, cond=_cond(opts, 5, torch.Generator().manual_seed(9)),
                          **skw)


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_sample_shape_dtype_and_determinism(name, case, opts, shape, skw, bad):
    fam = edifice.family(name)
    nets = _fresh(name, opts)
    _perturb(nets)
    _eval(nets)
    a, b, c = (_draw(fam, nets, shape, skw, opts, s) for s in (0, 0, 1))
    assert a.shape == (5, *shape) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed must give the same bits"
    assert not torch.equal(a, c), "different seeds must give different samples"


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_state_dict_round_trip(name, case, opts, shape, skw, bad):
    fam = edifice.family(name)
    nets = _fresh(name, opts, seed=0)
    _perturb(nets)
    other = _fresh(name, opts, seed=1)
    for m, o in zip(_modules(nets), _modules(other)):
        o.load_state_dict(m.state_dict())
    _eval(nets), _eval(other)
    assert torch.equal(_draw(fam, nets, shape, skw, opts, 4), _draw(fam, other, shape, skw, opts, 4))
    if isinstance(nets, torch.nn.Module) and name not in NOT_DENOISERS:  # denoisers: net(x, t, **cond)
        x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(2))
        t = torch.full((3,), 0.5)
        cond = _cond(opts, 3, torch.Generator().manual_seed(3)) or {}
        with torch.no_grad():
            assert torch.equal(nets(x, t, **cond), other(x, t, **cond))


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_bad_option_names_the_option(name, case, opts, shape, skw, bad):
    key, value = bad
    with pytest.raises((ValueError, TypeError), match=key):
        edifice.build(name, **{**opts, key: value})


@pytest.mark.parametrize("name", sorted(CASES))
def test_build_requires_a_valid_data_shape(name):
    with pytest.raises((ValueError, TypeError), match="data_shape"):
        edifice.build(name, data_shape=(0,))
    with pytest.raises((ValueError, TypeError), match="data_shape"):
        edifice.build(name, data_shape=(2, 3))  # neither a vector nor a (C, H, W) image
