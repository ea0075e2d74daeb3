"""Tests for edifice.blocks.adaln: modulate and the AdaLN-Zero block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edifice.blocks import AdaLNZero, SelfAttention, modulate


def test_modulate_broadcasts_over_tokens(gen):
    x = torch.randn(2, 5, 3, generator=gen)
    shift, scale = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    out = modulate(x, shift, scale)
    torch.testing.assert_close(out, x * (1 + scale[:, None]) + shift[:, None])
    x2 = torch.randn(2, 3, generator=gen)
    torch.testing.assert_close(modulate(x2, shift, scale), x2 * (1 + scale) + shift)


def test_modulate_shape_errors():
    with pytest.raises(ValueError, match=r"shift must have shape \(2, 3\)"):
        modulate(torch.zeros(2, 5, 3), torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"scale must have shape \(2, 3\)"):
        modulate(torch.zeros(2, 5, 3), torch.zeros(2, 3), torch.zeros(1, 3))


@pytest.mark.parametrize("fn", [nn.Linear(8, 8), SelfAttention(8, heads=2)], ids=["linear", "attention"])
def test_fresh_adaln_zero_is_exactly_identity(fn, gen):
    block = AdaLNZero(8, 6, fn)
    x, c = torch.randn(3, 7, 8, generator=gen), torch.randn(3, 6, generator=gen)
    assert torch.equal(block(x, c), x)
    assert torch.all(block.modulation[1].weight == 0) and torch.all(block.modulation[1].bias == 0)


def test_adaln_zero_after_training_step_depends_on_condition(gen):
    block = AdaLNZero(4, 3, nn.Linear(4, 4))
    x, c = torch.randn(5, 4, generator=gen), torch.randn(5, 3, generator=gen)
    block(x, c).pow(2).sum().backward()
    # the zero gate still passes a gradient to the modulation layer
    assert block.modulation[1].weight.grad is not None and block.modulation[1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        block.modulation[1].weight.copy_(torch.randn(12, 3, generator=gen))
    out = block(x, c)
    assert not torch.allclose(out, x)
    assert not torch.allclose(out, block(x, c + 1.0))
    # matches the formula x + gate * fn(modulate(LN(x), shift, scale))
    shift, scale, gate = block.modulation(c).chunk(3, dim=-1)
    ln = nn.functional.layer_norm(x, (4,), eps=1e-6)
    torch.testing.assert_close(out, x + gate * block.fn(ln * (1 + scale) + shift))


def test_adaln_zero_errors():
    with pytest.raises(TypeError, match="fn must be an nn.Module, got function"):
        AdaLNZero(4, 3, lambda x: x)
    with pytest.raises(ValueError, match="dim must be a positive int, got 0"):
        AdaLNZero(0, 3, nn.Identity())
    with pytest.raises(ValueError, match="cond_dim must be a positive int"):
        AdaLNZero(4, 0, nn.Identity())
    block = AdaLNZero(4, 3, nn.Identity())
    with pytest.raises(ValueError, match=r"c must have shape \(2, 3\)"):
        block(torch.zeros(2, 4), torch.zeros(2, 5))
