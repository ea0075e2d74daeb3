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

from edifice.testing.cases import (CASES, LOSS_KWARGS, NOT_DENOISERS, OBJECTIVES, cond_for as _cond,
                                   draw as _draw, eval_mode as _eval, fresh as _fresh, modules as _modules,
                                   named_parameters as _named_parameters, on_device, perturb as _perturb,
                                   to_device)

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


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_loss_is_finite_and_reaches_every_parameter(name, case, opts, shape, skw, bad, device):
    fam = edifice.family(name)
    nets = to_device(_fresh(name, opts), device)
    assert all(isinstance(m, torch.nn.Module) for m in _modules(nets))
    if not isinstance(nets, torch.nn.Module):
        assert hasattr(nets, "_fields"), "multi-network families return a NamedTuple of modules"
    _perturb(nets)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((16, *shape), generator=g).clamp(-1, 1).to(device)
    extra = LOSS_KWARGS[name](opts) if name in LOSS_KWARGS else {}
    extra = {k: to_device(v, device) if isinstance(v, torch.nn.Module) else v for k, v in extra.items()}
    g_loss = torch.Generator(device=device).manual_seed(1)  # losses draw on their generator's device
    for objective in OBJECTIVES.get(name, ("loss",)):
        loss, logs = getattr(fam, objective)(nets, x, generator=g_loss, cond=on_device(_cond(opts, 16, g), device),
                                             **extra)
        assert loss.ndim == 0 and torch.isfinite(loss), objective
        assert isinstance(logs, dict) and all(not v.requires_grad for v in logs.values())
        loss.backward()
    missing = [n for n, p in _named_parameters(nets) if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


@pytest.mark.parametrize("name,case,opts,shape,skw,bad", PARAMS)
def test_sample_shape_dtype_and_determinism(name, case, opts, shape, skw, bad, device):
    fam = edifice.family(name)
    nets = _fresh(name, opts)
    _perturb(nets)
    _eval(nets)
    to_device(nets, device)
    a, b, c = (_draw(fam, nets, shape, skw, opts, s, device=device) for s in (0, 0, 1))
    assert a.shape == (5, *shape) and a.dtype == torch.float32 and a.device.type == device.type
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
