r"""Multi-head self- and cross-attention on ``F.scaled_dot_product_attention``.

.. math::
    \mathrm{Attention}(Q, K, V) = \mathrm{softmax}(Q K^\top / \sqrt{d})\, V

with ``d = dim / heads`` per head; the fused kernel picks flash / memory-efficient attention where
the device supports it.

References:
    Attention Is All You Need, Vaswani et al., 2017, arXiv:1706.03762.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from edifice._checks import check_int, check_tensor

__all__ = ["SelfAttention", "CrossAttention"]


def _check_heads(dim: int, heads: int) -> None:
    check_int("heads", heads, min=1)
    if dim % heads:
        raise ValueError(f"heads must divide dim; got dim={dim}, heads={heads}")


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens: ``(B, N, D) -> (B, N, D)``.

    ``Q, K, V = x W_qkv``; each of the ``heads`` heads attends with
    ``softmax(Q K^T / sqrt(D / heads)) V``; the heads are concatenated and projected by ``W_o``.

    Args:
        dim: token width ``D``; must be divisible by ``heads``.
        heads: number of heads.
        qkv_bias: whether the ``Q, K, V`` projection has a bias.

    Raises:
        TypeError / ValueError: for an invalid option (e.g. ``heads`` not dividing ``dim``).

    References:
        Attention Is All You Need, Vaswani et al., 2017, arXiv:1706.03762.

    Example:
        >>> attn = SelfAttention(16, heads=4)
        >>> attn(torch.randn(2, 10, 16)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int, *, heads: int = 4, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, min=1)
        _check_heads(dim, heads)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=_check_bool("qkv_bias", qkv_bias))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the ``N`` tokens of ``x`` ``(B, N, D)``."""
        check_tensor("x", x, shape=(None, None, self.dim))
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)  # 3 x (B, H, N, d)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, D)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: tokens ``x`` ``(B, N, D)`` attend to ``context`` ``(B, M, Dc)``.

    ``Q = x W_q`` and ``K, V = context W_kv``, then ``softmax(Q K^T / sqrt(D / heads)) V`` per head,
    concatenated and projected back to ``D``.

    Args:
        dim: query width ``D``; must be divisible by ``heads``.
        context_dim: context width ``Dc``.
        heads: number of heads.
        qkv_bias: whether the ``Q`` and ``K, V`` projections have a bias.

    Raises:
        TypeError / ValueError: for an invalid option.

    References:
        Attention Is All You Need, Vaswani et al., 2017, arXiv:1706.03762.
        High-Resolution Image Synthesis with Latent Diffusion Models, Rombach et al., 2022,
        arXiv:2112.10752.

    Example:
        >>> attn = CrossAttention(16, 8, heads=2)
        >>> attn(torch.randn(2, 10, 16), torch.randn(2, 3, 8)).shape
        torch.Size([2, 10, 16])
    """

    def __init__(self, dim: int, context_dim: int, *, heads: int = 4, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, min=1)
        self.context_dim = check_int("context_dim", context_dim, min=1)
        _check_heads(dim, heads)
        self.heads = heads
        _check_bool("qkv_bias", qkv_bias)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend from ``x`` ``(B, N, D)`` to ``context`` ``(B, M, Dc)``; returns ``(B, N, D)``."""
        check_tensor("x", x, shape=(None, None, self.dim))
        check_tensor("context", context, shape=(x.shape[0], None, self.context_dim))
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.heads)  # (B, H, N, d)
        kv = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.heads)  # 2 x (B, H, M, d)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, H, N, d)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, D)
