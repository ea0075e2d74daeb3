"""Tests for edifice.blocks.mlp: MLP and the conditioned ResMLP."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edifice.blocks import ACTIVATIONS, MLP, ResMLP


def _perturb(net, seed=123, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_shapes_and_layers(act, gen):
    net = MLP(3, 5, hidden=7, depth=2, act=act)
    assert net(torch.randn(4, 3, generator=gen)).shape == (4, 5)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    assert net.config == dict(in_dim=3, out_dim=5, hidden=7, depth=2, act=act)


def test_mlp_depth_zero_is_linear(gen):
    net = MLP(3, 2, depth=0)
    assert len(net.net) == 1 and isinstance(net.net[0], nn.Linear)
    assert net(torch.randn(6, 3, generator=gen)).shape == (6, 2)


def test_mlp_errors():
    with pytest.raises(ValueError, match="act must be one of 'silu'.*; got 'swish'"):
        MLP(2, 2, act="swish")
    with pytest.raises(ValueError, match="depth must be an int >= 0, got -1"):
        MLP(2, 2, depth=-1)
    with pytest.raises(ValueError, match="hidden must be a positive int, got 0"):
        MLP(2, 2, hidden=0)
    with pytest.raises(TypeError, match="in_dim must be an int"):
        MLP(2.0, 2)
    with pytest.raises(ValueError, match="out_dim must be a positive int"):
        MLP(2, 0)


@pytest.mark.parametrize("data_dim", [2, 64, 784], ids=["2d", "8x8", "28x28"])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_resmlp_shapes(data_dim, num_classes, gen):
    net = ResMLP(data_dim, hidden=32, depth=2, num_classes=num_classes)
    x = torch.randn(5, data_dim, generator=gen)
    y = None if num_classes is None else torch.randint(0, 10, (5,), generator=gen)
    out = net(x, torch.rand(5, generator=gen), y=y)
    assert out.shape == (5, data_dim) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_resmlp_label_conditioning_and_null_label(gen):
    torch.manual_seed(0)
    net = ResMLP(2, hidden=16, depth=2, num_classes=3)
    _perturb(net)
    x, t = torch.randn(4, 2, generator=gen), torch.full((4,), 10.0)
    a = net(x, t, y=torch.zeros(4, dtype=torch.long))
    b = net(x, t, y=torch.full((4,), 2, dtype=torch.long))
    assert not torch.allclose(a, b)
    null = torch.full((4,), net.label_embed.null_label, dtype=torch.long)
    torch.testing.assert_close(net(x, t), net(x, t, y=null))  # y=None means the null label
    assert not torch.allclose(net(x, t), a)


def test_resmlp_time_conditioning_and_scalar_time(gen):
    torch.manual_seed(0)
    net = ResMLP(2, hidden=16, depth=1, t_scale=1000.0)
    x = torch.randn(3, 2, generator=gen)
    assert not torch.allclose(net(x, torch.zeros(3)), net(x, torch.ones(3)))
    torch.testing.assert_close(net(x, 0.5), net(x, torch.full((3,), 0.5)))
    torch.testing.assert_close(net(x, torch.tensor(0.5)), net(x, torch.full((3,), 0.5)))
    torch.testing.assert_close(net(x, torch.tensor([3, 3, 3])), net(x, torch.full((3,), 3.0)))


def test_resmlp_float64_no_grad(gen):
    net = ResMLP(4, hidden=16, depth=2, num_classes=2).double()
    with torch.no_grad():
        out = net(torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.rand(3, dtype=torch.float64),
                  y=torch.tensor([0, 1, 2]))
    assert out.dtype == torch.float64 and out.shape == (3, 4) and not out.requires_grad


def test_resmlp_gradients_reach_every_parameter(gen):
    net = ResMLP(2, hidden=16, depth=2, num_classes=3, dropout=0.1)
    out = net(torch.randn(8, 2, generator=gen), torch.rand(8, generator=gen), y=torch.tensor([0, 1, 2, 3] * 2))
    out.pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_resmlp_config_rebuilds_the_same_network(gen):
    net = ResMLP(3, hidden=16, depth=2, t_scale=1000, num_classes=4, dropout=0.1)
    cfg = json.loads(json.dumps(net.config))
    assert cfg == net.config
    assert cfg == dict(data_dim=3, hidden=16, depth=2, time_dim=16, t_scale=1000.0, time_features="sinusoidal",
                       num_classes=4, dropout=0.1)
    twin = ResMLP(**cfg)
    twin.load_state_dict(net.state_dict())
    net.eval(), twin.eval()
    x, t = torch.randn(2, 3, generator=gen), torch.rand(2, generator=gen)
    assert torch.equal(net(x, t, y=torch.tensor([1, 4])), twin(x, t, y=torch.tensor([1, 4])))


def test_resmlp_forward_errors():
    net = ResMLP(2, hidden=8, depth=1, num_classes=3)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\) to match the batch of x, got \(3,\)"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\] or the null label 3, got 4"):
        net(x, torch.zeros(4), y=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
        net(x, torch.zeros(4), y=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="y must be an integer"):
        net(x, torch.zeros(4), y=torch.zeros(4))
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 2\), got \(4, 3\)"):
        net(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        net(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="y was given but the network was built with num_classes=None"):
        ResMLP(2, hidden=8, depth=1)(x, torch.zeros(4), y=torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(data_dim=0), ValueError, "data_dim must be a positive int, got 0"),
        (dict(data_dim=2, hidden=0), ValueError, "hidden must be a positive int, got 0"),
        (dict(data_dim=2, depth=0), ValueError, "depth must be a positive int, got 0"),
        (dict(data_dim=2, time_dim=0), ValueError, "time_dim must be a positive int, got 0"),
        (dict(data_dim=2, t_scale=-1.0), ValueError, "t_scale must be in"),
        (dict(data_dim=2, num_classes=0), ValueError, "num_classes must be a positive int, got 0"),
        (dict(data_dim=2, num_classes=2.0), TypeError, "num_classes must be an int"),
        (dict(data_dim=2, dropout=1.0), ValueError, r"dropout must be in \[0.0, 1.0\), got 1.0"),
        (dict(data_dim=2, dropout=-0.1), ValueError, "dropout must be in"),
        (dict(data_dim=(2,)), TypeError, "data_dim must be an int"),
    ],
)
def test_resmlp_option_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ResMLP(**kwargs)


def test_resmlp_runs_on_device(device):
    net = ResMLP(2, hidden=16, depth=2, num_classes=3).to(device)
    x, t = torch.randn(4, 2, device=device), torch.rand(4, device=device)
    out = net(x, t, y=torch.tensor([0, 1, 2, 3], device=device))
    assert out.device.type == device.type and out.shape == (4, 2)
