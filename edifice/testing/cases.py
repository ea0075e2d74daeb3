"""Small, fast configurations of every registered family, for property tests (yours and edifice's own).

``CASES[family]`` lists ``(case id, build options, data shape, sample kwargs, (bad option, value))`` rows: each
builds in milliseconds, samples in a few network calls, and names one option whose bad value must be refused.
The contract test, the hardening tests (mixed precision, ``torch.compile``, batch invariance, fuzzing) and
the benchmarks all draw their networks from this one table, so a family added here is covered everywhere.

>>> from edifice.testing.cases import CASES, fresh
>>> name, opts, shape, skw, bad = "ddpm", *CASES["ddpm"][0][1:]
>>> net = fresh(name, opts)
>>> sorted(CASES) == __import__("edifice").models()
True
"""

from __future__ import annotations

import torch

import edifice

__all__ = ["CASES", "NOT_DENOISERS", "LOSS_KWARGS", "OBJECTIVES", "PARAMS", "fresh", "cond_for", "modules",
           "named_parameters", "perturb", "eval_mode", "draw", "iter_cases", "to_device", "on_device"]

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
    "progressive_distillation": lambda opts: dict(teacher=fresh("ddpm", opts, seed=5), student_steps=2, target="v"),
}

# Families trained by several objectives (one optimiser each); the rest are trained by `loss`.
OBJECTIVES = {"gan": ("discriminator_objective", "generator_objective")}


def iter_cases():
    """``(family, case id, build options, data shape, sample kwargs, bad option)`` for every row, in order."""
    for name in sorted(CASES):
        for case in CASES[name]:
            yield (name, *case)


PARAMS = list(iter_cases())


def cond_for(opts, batch, gen):
    """Random labels ``{"y": (batch,)}`` for a class-conditional case, else None."""
    if opts.get("num_classes"):
        return {"y": torch.randint(0, opts["num_classes"], (batch,), generator=gen)}
    return None


def fresh(name, opts, seed=0):
    """``edifice.build(name, **opts)`` with the global RNG seeded for the initial weights."""
    torch.manual_seed(seed)  # parameter initialisation only; the library itself never seeds
    return edifice.build(name, **opts)


def modules(nets):
    """The modules of a family's networks, as a list."""
    return [nets] if isinstance(nets, torch.nn.Module) else list(nets)


def named_parameters(nets):
    """``(name, parameter)`` over every network, prefixed by the NamedTuple field for multi-network families."""
    if isinstance(nets, torch.nn.Module):
        return list(nets.named_parameters())
    return [(f"{field}.{n}", p) for field, m in zip(nets._fields, nets) for n, p in m.named_parameters()]


def perturb(nets, scale=0.02):
    """Add seeded noise to every parameter: zero-initialised output layers make a fresh net's output constant."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in modules(nets):
            for p in m.parameters():
                if p.is_floating_point():
                    p.add_(scale * torch.randn(p.shape, generator=g).to(p))


def eval_mode(nets):
    """Put every network in eval mode."""
    for m in modules(nets):
        m.eval()


def to_device(nets, device):
    """Move every network to ``device`` (in place) and return ``nets``."""
    for m in modules(nets):
        m.to(device)
    return nets


def on_device(cond, device):
    """``cond`` with its tensors moved to ``device`` (None stays None)."""
    if cond is None:
        return None
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}


def draw(fam, nets, shape, skw, opts, seed, n=5, device=None):
    """``n`` samples of a case under ``torch.no_grad()``, the noise from a CPU generator seeded with ``seed``.

    The noise is drawn on the CPU and moved to the networks' device, so a case gives the same bits'
    starting noise on every device.
    """
    g = torch.Generator().manual_seed(seed)
    cond = cond_for(opts, n, torch.Generator().manual_seed(9))
    if device is not None:
        cond = on_device(cond, device)
    with torch.no_grad():
        return fam.sample(nets, (n, *shape), generator=g, cond=cond, **skw)
