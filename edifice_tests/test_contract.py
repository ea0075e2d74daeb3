"""One contract test over every registered family.

Each family must: build from small options; give a finite loss whose gradient reaches every
parameter; sample with the requested shape and dtype; give the same bits for the same seed; survive
a ``state_dict`` round trip; and reject a bad option with a ValueError naming it. A family that is
registered without a row here fails ``test_every_family_has_a_contract_row``.
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


def _perturb(net):
    # Zero-initialised output layers make a fresh network's output constant; perturb so the tests see signal.
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_loss_is_finite_and_reaches_every_parameter(name, case, opts, shape, skw, bad):
    fam = edifice.family(name)
    net = _fresh(name, opts)
    assert isinstance(net, torch.nn.Module)
    _perturb(net)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((16, *shape), generator=g)
    loss, logs = fam.loss(net, x, generator=g, cond=_cond(opts, 16, g))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert isinstance(logs, dict) and all(not v.requires_grad for v in logs.values())
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_sample_shape_dtype_and_determinism(name, case, opts, shape, skw, bad):
    fam = edifice.family(name)
    net = _fresh(name, opts)
    _perturb(net)
    net.eval()

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return fam.sample(net, (5, *shape), generator=g, cond=_cond(opts, 5, torch.Generator().manual_seed(9)), **skw)

    with torch.no_grad():
        a, b, c = run(0), run(0), run(1)
    assert a.shape == (5, *shape) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same seed must give the same bits"
    assert not torch.equal(a, c), "different seeds must give different samples"


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_state_dict_round_trip(name, case, opts, shape, skw, bad):
    net = _fresh(name, opts, seed=0)
    _perturb(net)
    other = _fresh(name, opts, seed=1)
    other.load_state_dict(net.state_dict())
    net.eval(), other.eval()
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(2))
    t = torch.full((3,), 0.5)
    cond = _cond(opts, 3, torch.Generator().manual_seed(3)) or {}
    with torch.no_grad():
        assert torch.equal(net(x, t, **cond), other(x, t, **cond))


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
