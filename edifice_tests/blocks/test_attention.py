"""Tests for edifice.blocks.attention: agreement with naive softmax attention, shapes, errors."""

from __future__ import annotations

import math

import pytest
import torch

from edifice.blocks import CrossAttention, SelfAttention


def _naive(q, k, v, heads):
    b, n, d = q.shape
    m = k.shape[1]
    hd = d // heads
    q = q.reshape(b, n, heads, hd).transpose(1, 2)
    k = k.reshape(b, m, heads, hd).transpose(1, 2)
    v = v.reshape(b, m, heads, hd).transpose(1, 2)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


@pytest.mark.parametrize("heads", [1, 4])
def test_self_attention_matches_naive(heads, f64, gen):
    attn = SelfAttention(8, heads=heads).double()
    x = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    expected = attn.proj(_naive(q, k, v, heads))
    torch.testing.assert_close(attn(x), expected, rtol=1e-10, atol=1e-10)


def test_self_attention_is_permutation_equivariant(gen):
    attn = SelfAttention(8, heads=2, qkv_bias=False)
    assert attn.qkv.bias is None
    x = torch.randn(2, 6, 8, generator=gen)
    perm = torch.randperm(6, generator=gen)
    torch.testing.assert_close(attn(x[:, perm]), attn(x)[:, perm], rtol=1e-5, atol=1e-5)


def test_cross_attention_shape_and_naive(f64, gen):
    attn = CrossAttention(8, 5, heads=2).double()
    x = torch.randn(3, 4, 8, generator=gen, dtype=torch.float64)
    ctx = torch.randn(3, 7, 5, generator=gen, dtype=torch.float64)
    out = attn(x, ctx)
    assert out.shape == (3, 4, 8)
    k, v = attn.kv(ctx).chunk(2, dim=-1)
    torch.testing.assert_close(out, attn.proj(_naive(attn.q(x), k, v, 2)), rtol=1e-10, atol=1e-10)


def test_attention_errors():
    with pytest.raises(ValueError, match="heads must divide dim; got dim=6, heads=4"):
        SelfAttention(6)
    with pytest.raises(ValueError, match="heads must be a positive int, got 0"):
        SelfAttention(8, heads=0)
    with pytest.raises(TypeError, match="qkv_bias must be a bool"):
        SelfAttention(8, qkv_bias=1)
    with pytest.raises(ValueError, match="context_dim must be a positive int"):
        CrossAttention(8, 0)
    with pytest.raises(ValueError, match="heads must divide dim"):
        CrossAttention(6, 3, heads=4)
    with pytest.raises(ValueError, match=r"x must have shape \(\*, \*, 8\)"):
        SelfAttention(8)(torch.zeros(2, 3, 7))
    with pytest.raises(ValueError, match=r"context must have shape \(2, \*, 5\)"):
        CrossAttention(8, 5)(torch.zeros(2, 3, 8), torch.zeros(2, 3, 4))
