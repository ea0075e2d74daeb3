"""EMA math: closed-form averages, warm-up schedule, buffers, state round trip, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edifice.train.ema import EMA, ema_decay_at, ema_update_


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_update_matches_closed_form_without_warmup():
    net = _net()
    ema = EMA(net, decay=0.9, warmup=False)
    w0 = net[0].weight.detach().clone()
    values = [1.0, -2.0, 0.5]
    expected = w0.clone()
    for v in values:
        with torch.no_grad():
            net[0].weight.fill_(v)
        ema.update(net)
        expected = 0.9 * expected + 0.1 * v
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.num_updates == 3


def test_warmup_schedule_and_cap():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 10) == pytest.approx(11 / 20)
    assert ema_decay_at(0.999, 10**6) == 0.999
    assert ema_decay_at(0.5, 3, warmup=False) == 0.5
    net = _net()
    ema = EMA(net, decay=0.999)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update(net)  # decay 0.1 at the first update: mostly the new weights
    torch.testing.assert_close(ema.module[0].weight, net[0].weight - 0.1)


def test_decay_zero_copies_and_buffers_are_copied():
    net = _net()
    ema = EMA(net, decay=0.0)
    net.train()(torch.randn(8, 3))  # changes the BatchNorm running statistics
    with torch.no_grad():
        net[0].bias.mul_(3.0)
    ema.update(net)
    for a, b in zip(ema.module.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_ema_module_is_frozen_copy_in_eval_mode():
    net = _net()
    ema = EMA(net)
    assert ema.module is not net and not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_state_dict_round_trip_and_copy_to():
    net = _net()
    ema = EMA(net, decay=0.5, warmup=False)
    with torch.no_grad():
        net[0].weight.add_(2.0)
    ema.update(net)
    other = EMA(_net(), decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1
    torch.testing.assert_close(other.module[0].weight, ema.module[0].weight)
    target = _net()
    ema.copy_to(target)
    torch.testing.assert_close(target[0].weight, ema.module[0].weight)


def test_errors():
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(_net(), decay=1.0)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        EMA("net")
    with pytest.raises(ValueError, match="EMA target has 2 parameters but the model has 4"):
        ema_update_(nn.Linear(2, 2), _net(), 0.5)
