"""Learning tests: each family, trained briefly on a 2-D set, must reach a real quality number.

Thresholds are set so that a broken model cannot meet them: an untrained network (checked in the same
test) scores W2 >= 1 on moons and misses the modes of 8gaussians, while two fresh samples of the data score
about 0.15 (moons) and 0.25 (8gaussians) at n = 2000 (measured in edifice_tests/data/test_toy2d.py).
The full-length numbers live in benchmarks/; these runs take seconds on 2 cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from edifice.data import toy2d
from edifice.generative import ddim, ddpm, edm, ncsn, score_sde
from edifice.generative import flow_matching as fm
from edifice import metrics
from edifice.metrics import w2

N_EVAL = 2000
def mode_coverage(x: torch.Tensor) -> tuple[float, float, float]:
    """(fraction within 3 std of its nearest centre, smallest and largest share of a mode)."""
    cov = metrics.mode_coverage(x, metrics.EIGHT_GAUSSIANS_CENTRES, std=metrics.EIGHT_GAUSSIANS_STD)
    shares = cov["shares"] * cov["high_quality"]  # share of all samples, not only of the high-quality ones
    return cov["high_quality"], float(shares.min()), float(shares.max())


def train(family, data: str, steps: int, build_kw=None, **loss_kw) -> torch.nn.Module:
    torch.manual_seed(0)  # initialisation only
    g = torch.Generator().manual_seed(0)
    net = family.build(data_shape=(2,), hidden=128, depth=3, **(build_kw or {}))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x = toy2d.sample(data, 256, generator=g)
        loss, _ = family.loss(net, x, generator=g, **loss_kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def held_out(data: str) -> torch.Tensor:
    return toy2d.sample(data, N_EVAL, generator=torch.Generator().manual_seed(12345))


def untrained(family, build_kw=None) -> torch.nn.Module:
    torch.manual_seed(1)
    net = family.build(data_shape=(2,), hidden=128, depth=3, **(build_kw or {}))
    with torch.no_grad():  # fresh nets may have zero output layers: give the untrained net a real output
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return net.eval()


SAMPLERS = {
    "flow_matching": lambda net, g: fm.sample(net, (N_EVAL, 2), steps=10, method="heun", generator=g),
    "ddpm": lambda net, g: ddpm.sample(net, (N_EVAL, 2), steps=100, generator=g),
    "ddim": lambda net, g: ddim.sample(net, (N_EVAL, 2), steps=50, target="v", generator=g),
}
FAMILIES = {"flow_matching": (fm, {}), "ddpm": (ddpm, {}), "ddim": (ddpm, {"target": "v"})}
STEPS = {"flow_matching": 1500, "ddpm": 1500, "ddim": 1500}


@pytest.mark.parametrize("name", ["flow_matching", "ddpm", "ddim"])
def test_learns_moons(name):
    family, kw = FAMILIES[name]
    test = held_out("moons")
    g = torch.Generator().manual_seed(7)
    net = train(family, "moons", STEPS[name], **kw)
    with torch.no_grad():
        before = float(w2(SAMPLERS[name](untrained(family), g), test))
        after = float(w2(SAMPLERS[name](net, g), test))
    print(f"{name} moons W2: untrained {before:.3f} -> trained {after:.3f}")
    assert before > 0.8
    assert after < 0.3 and after < 0.35 * before, f"W2 {after:.3f} (untrained {before:.3f})"


@pytest.mark.parametrize("name", ["flow_matching", "ddpm"])
def test_learns_8gaussians(name):
    family, kw = FAMILIES[name]
    test = held_out("8gaussians")
    g = torch.Generator().manual_seed(7)
    net = train(family, "8gaussians", STEPS[name], **kw)
    with torch.no_grad():
        x0 = SAMPLERS[name](untrained(family), g)
        x1 = SAMPLERS[name](net, g)
    before, after = float(w2(x0, test)), float(w2(x1, test))
    near0, _, _ = mode_coverage(x0)
    near, lo, hi = mode_coverage(x1)
    print(f"{name} 8gaussians W2 {before:.3f} -> {after:.3f}; near a mode {near0:.2f} -> {near:.2f}, "
          f"mode shares {lo:.3f}..{hi:.3f}")
    assert near0 < 0.5 and before > 1.0
    assert after < 0.45
    assert near > 0.85, f"only {near:.2f} of samples within 3 std of a mode"
    assert lo > 0.07 and hi < 0.18, f"mode shares {lo:.3f}..{hi:.3f} (1/8 = 0.125 each)"


# -- continuous-time families: W2 of samples, and the NLL of a short run against the untrained net ------------

CONTINUOUS = {
    # name: (module, build options, data, sampler(net, g), log_prob(net, x) or None)
    "score_sde_vp": (score_sde, {"sde": "vp"}, "moons",
                     lambda net, g: score_sde.sample(net, (N_EVAL, 2), sampler="pc", steps=300, generator=g),
                     lambda net, x: score_sde.log_prob(net, x, steps=20, method="rk4")),
    "score_sde_ve": (score_sde, {"sde": "ve", "sigma_max": 10.0, "time_features": "sinusoidal"}, "8gaussians",
                     lambda net, g: score_sde.sample(net, (N_EVAL, 2), sampler="ode", steps=60, method="heun",
                                                     generator=g),
                     None),
    "edm": (edm, {"sigma_data": 1.0}, "8gaussians",
            lambda net, g: edm.sample(net, (N_EVAL, 2), steps=40, sampler="heun", generator=g),
            lambda net, x: edm.log_prob(net, x, steps=20, method="rk4")),
    "ncsn": (ncsn, {"sigma_max": 5.0, "num_scales": 10}, "moons",
             lambda net, g: ncsn.sample(net, (N_EVAL, 2), steps_per_level=50, generator=g),
             None),
}


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_continuous_family_learns(name):
    family, build_kw, data, sampler, log_prob = CONTINUOUS[name]
    test = held_out(data)
    g = torch.Generator().manual_seed(7)
    net = train(family, data, 1500, build_kw=build_kw)
    fresh = untrained(family, build_kw)
    with torch.no_grad():
        before = float(w2(sampler(fresh, g), test))
        after = float(w2(sampler(net, g), test))
    line = f"{name} {data} W2: untrained {before:.3f} -> trained {after:.3f}"
    limit = 0.3 if data == "moons" else 0.45
    assert before > 0.8, line
    assert after < limit and after < 0.35 * before, line
    if log_prob is not None:
        x = test[:300]
        nll0, nll1 = float(-log_prob(fresh, x).mean()), float(-log_prob(net, x).mean())
        line += f"; NLL untrained {nll0:.3f} -> trained {nll1:.3f} nats"
        assert math.isfinite(nll1) and nll1 < nll0 - 0.5, line
    print(line)
