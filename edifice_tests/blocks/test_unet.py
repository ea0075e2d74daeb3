"""Tests for edifice.blocks.unet: shapes at 8x8 and 28x28, conditioning, config, errors."""

from __future__ import annotations

import json

import pytest
import torch

from edifice.blocks import UNet
from edifice.blocks.unet import AttentionBlock2d


def _perturb(net, seed=123, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize(
    "size,mults",
    [(8, (1, 2)), (8, (1, 2, 2)), (28, (1, 2)), (28, (1, 2, 2))],
    ids=["8-2lvl", "8-3lvl", "28-2lvl", "28-3lvl"],
)
@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_shapes(size, mults, num_classes, gen):
    net = UNet(1, image_size=size, base_channels=8, channel_mults=mults, num_classes=num_classes)
    x = torch.randn(2, 1, size, size, generator=gen)
    y = None if num_classes is None else torch.tensor([3, 10])
    out = net(x, torch.tensor([0.0, 999.0]), y=y)
    assert out.shape == (2, 1, size, size) and out.dtype == torch.float32
    # conv_out is zero-initialised: a fresh network outputs exactly zero
    assert torch.all(out == 0)


def test_unet_default_is_small_and_attends_at_lowest_resolution():
    net = UNet(1, image_size=28)
    assert net.config["base_channels"] == 32 and net.config["attention_resolutions"] == [14]
    assert sum(p.numel() for p in net.parameters()) < 2_000_000
    assert sum(isinstance(m, AttentionBlock2d) for m in net.modules()) == 4  # down, middle, 2 up
    none = UNet(1, image_size=8, base_channels=8, attention_resolutions=())
    assert not any(isinstance(m, AttentionBlock2d) for m in none.modules())


def test_unet_options_change_shapes(gen):
    net = UNet(3, out_channels=6, image_size=16, base_channels=8, channel_mults=(1, 1, 2), num_res_blocks=2,
               attention_resolutions=[16, 4], heads=2, groups=4, dropout=0.1)
    out = net(torch.randn(2, 3, 16, 16, generator=gen), torch.rand(2, generator=gen))
    assert out.shape == (2, 6, 16, 16)


def test_unet_conditioning_after_perturbation(gen):
    torch.manual_seed(0)
    net = UNet(1, image_size=8, base_channels=8, num_classes=3)
    _perturb(net)
    x, t = torch.randn(2, 1, 8, 8, generator=gen), torch.full((2,), 5.0)
    a = net(x, t, y=torch.tensor([0, 0]))
    b = net(x, t, y=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(net(x, t), net(x, t, y=torch.tensor([3, 3])))  # y=None -> null label
    assert not torch.allclose(a, net(x, torch.full((2,), 50.0), y=torch.tensor([0, 0])))
    torch.testing.assert_close(net(x, 5.0, y=torch.tensor([0, 0])), a)


def test_unet_float64_no_grad(gen):
    net = UNet(1, image_size=8, base_channels=8, num_classes=2).double()
    _perturb(net)
    x = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = net(x, torch.rand(2, dtype=torch.float64), y=torch.tensor([1, 2]))
    assert out.dtype == torch.float64 and out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert not out.requires_grad


def test_unet_gradients_reach_every_parameter(gen):
    net = UNet(1, image_size=8, base_channels=8, num_classes=3)
    out = net(torch.randn(2, 1, 8, 8, generator=gen), torch.rand(2, generator=gen), y=torch.tensor([0, 3]))
    (out - 1).pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.conv_out.weight.grad.abs().sum() > 0  # zero-init last layer still learns
    _perturb(net)
    net.zero_grad()
    out = net(torch.randn(2, 1, 8, 8, generator=gen), torch.rand(2, generator=gen), y=torch.tensor([0, 3]))
    out.pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_unet_config_rebuilds_the_same_network(gen):
    net = UNet(1, image_size=8, base_channels=8, channel_mults=(1, 2), t_scale=1000, num_classes=2)
    cfg = json.loads(json.dumps(net.config))
    assert cfg == net.config
    assert cfg["out_channels"] == 1 and cfg["channel_mults"] == [1, 2] and cfg["attention_resolutions"] == [4]
    twin = UNet(**cfg)
    _perturb(net)
    twin.load_state_dict(net.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8, generator=gen), torch.rand(2, generator=gen), torch.tensor([0, 1])
    assert torch.equal(net(x, t, y=y), twin(x, t, y=y))


def test_unet_forward_errors():
    net = UNet(1, image_size=8, base_channels=8, num_classes=3)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\) to match the batch of x, got \(3,\)"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 2\] or the null label 3, got 7"):
        net(x, torch.zeros(2), y=torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 1, 8, 8\), got \(2, 1, 9, 9\)"):
        net(torch.zeros(2, 1, 9, 9), torch.zeros(2))
    with pytest.raises(ValueError, match="y was given but the network was built with num_classes=None"):
        UNet(1, image_size=8, base_channels=8)(x, torch.zeros(2), y=torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(image_size=28, channel_mults=(1, 2, 2, 2)), ValueError,
         r"image_size must be divisible by 2\*\*\(len\(channel_mults\)-1\) = 8; "
         r"got image_size=28, channel_mults=\(1, 2, 2, 2\)"),
        (dict(image_size=7), ValueError, "image_size=7, channel_mults=\\(1, 2\\)"),
        (dict(image_size=0), ValueError, "image_size must be a positive int, got 0"),
        (dict(image_size=8, base_channels=12), ValueError, "groups must divide base_channels.*got groups=8"),
        (dict(image_size=8, groups=3), ValueError, "groups must divide.*got groups=3"),
        (dict(image_size=8, heads=5, groups=4, base_channels=12, channel_mults=(1, 2)), ValueError,
         "heads must divide the channels of every level with attention; got heads=5, 24 channels at resolution 4"),
        (dict(image_size=8, attention_resolutions=(3,)), ValueError,
         r"attention_resolutions must be among the U-Net resolutions \[8, 4\]; got \(3,\)"),
        (dict(image_size=8, attention_resolutions=4), TypeError, "attention_resolutions must be a tuple of ints"),
        (dict(image_size=8, attention_resolutions=(4.0,)), TypeError, "attention_resolutions must be a tuple of ints"),
        (dict(image_size=8, channel_mults=()), ValueError, "channel_mults must be a non-empty tuple"),
        (dict(image_size=8, channel_mults=(1, 0)), ValueError,
         "channel_mults must be a non-empty tuple of positive ints"),
        (dict(image_size=8, base_channels=0), ValueError, "base_channels must be a positive int, got 0"),
        (dict(image_size=8, num_res_blocks=0), ValueError, "num_res_blocks must be a positive int, got 0"),
        (dict(image_size=8, out_channels=0), ValueError, "out_channels must be a positive int, got 0"),
        (dict(image_size=8, heads=0), ValueError, "heads must be a positive int, got 0"),
        (dict(image_size=8, dropout=1.5), ValueError, "dropout must be in"),
        (dict(image_size=8, groups=0), ValueError, "groups must be a positive int, got 0"),
        (dict(image_size=8, t_scale=0), ValueError, "t_scale must be in"),
        (dict(image_size=8, num_classes=-1), ValueError, "num_classes must be a positive int, got -1"),
        (dict(image_size=8.0), TypeError, "image_size must be an int"),
    ],
)
def test_unet_option_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        UNet(1, **kwargs)


def test_unet_in_channels_error():
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        UNet(0, image_size=8)


def test_unet_runs_on_device(device):
    net = UNet(1, image_size=8, base_channels=8, num_classes=3).to(device)
    _perturb(net)
    x, t = torch.randn(2, 1, 8, 8, device=device), torch.rand(2, device=device)
    out = net(x, t, y=torch.tensor([0, 3], device=device))
    assert out.device.type == device.type and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="y must hold labels"):
        net(x, t, y=torch.tensor([0, 4], device=device))
