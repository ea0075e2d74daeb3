r"""Autoregressive networks over a 2-D map of discrete codes: masked convolutions, a gated PixelCNN and a
small causal transformer — the priors of a VQ-VAE.

Both priors model an index map ``c`` of shape ``(B, h, w)`` with values in ``{0..K-1}`` in **raster order**
(row by row, left to right), ``p(c) = ∏_i p(c_i | c_{<i}, y)``, and return logits ``(B, K, h, w)`` whose
entry at position ``i`` depends only on the codes at positions ``< i`` (and the label ``y``). One forward pass
gives every conditional (teacher forcing); sampling needs ``h * w`` passes.

* :class:`MaskedConv2d` — PixelCNN's masked convolution (van den Oord et al. 2016a): mask ``"A"`` hides the
  centre tap and everything after it (first layer), mask ``"B"`` keeps the centre (later layers). A plain
  stack of them is causal but has a *blind spot* above-right of each position.
* :class:`GatedMaskedConv2d` / :class:`GatedPixelCNN` — the gated PixelCNN (van den Oord et al. 2016b,
  "Conditional Image Generation with PixelCNN Decoders"): a vertical stack (rows strictly above) and a
  horizontal stack (the current row, to the left) with gated activations ``tanh(W_f * x) ⊙ σ(W_g * x)``,
  which removes the blind spot; a label enters every layer as a bias (their conditional PixelCNN, eq. 4).
* :class:`CausalTransformerPrior` — a small decoder-only transformer over the flattened map with a start
  token (the label's embedding when conditional), learned positions and causal self-attention.

Example:
    >>> import torch
    >>> from edifice.blocks.masked import GatedPixelCNN, CausalTransformerPrior
    >>> codes = torch.randint(0, 16, (2, 4, 4))
    >>> GatedPixelCNN(16, (4, 4), hidden=8, layers=2)(codes).shape
    torch.Size([2, 16, 4, 4])
    >>> CausalTransformerPrior(16, (4, 4), hidden=8, layers=1, heads=2)(codes).shape
    torch.Size([2, 16, 4, 4])

References:
    Pixel Recurrent Neural Networks. van den Oord, Kalchbrenner, Kavukcuoglu, 2016. arXiv:1601.06759.
    Conditional Image Generation with PixelCNN Decoders. van den Oord, Kalchbrenner, Vinyals, Espeholt,
    Graves, Kavukcuoglu, 2016. arXiv:1606.05328.
    Attention Is All You Need. Vaswani et al., 2017. arXiv:1706.03762.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_choice, check_int, check_shape_tuple, check_tensor
from edifice.blocks.embedding import LabelEmbedding

__all__ = ["MaskedConv2d", "GatedMaskedConv2d", "GatedPixelCNN", "CausalTransformerPrior", "check_codes"]


def check_codes(name: str, codes: Any, num_codes: int, map_shape: tuple[int, int]) -> torch.Tensor:
    """An integer ``(B, h, w)`` index map for a prior over ``num_codes`` codes on ``map_shape``; raise otherwise.

    The value range is checked on CPU tensors only (elsewhere it would need a host sync).
    """
    check_tensor(name, codes, shape=(None, *map_shape))
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer (long) tensor of code indices, got dtype {codes.dtype}")
    if codes.device.type == "cpu" and codes.numel() and bool(((codes < 0) | (codes >= num_codes)).any()):
        bad = codes[(codes < 0) | (codes >= num_codes)][0].item()
        raise ValueError(f"{name} must hold code indices in [0, {num_codes - 1}], got {bad}")
    return codes.long()


class MaskedConv2d(nn.Conv2d):
    """PixelCNN masked convolution over one raster-ordered channel group (``'same'`` padding, odd kernel).

    Mask ``"A"`` keeps the rows above the centre and the taps left of it; ``"B"`` also keeps the centre.

    Args:
        in_channels, out_channels: as :class:`torch.nn.Conv2d`.
        kernel_size: an odd int.
        mask_type: ``"A"`` (first layer: the output at ``i`` must not see input ``i``) or ``"B"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, mask_type: str = "B") -> None:
        kernel_size = check_int("kernel_size", kernel_size, min=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        check_choice("mask_type", mask_type, ("A", "B"))
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.ones(kernel_size, kernel_size)
        c = kernel_size // 2
        mask[c, c + (mask_type == "B"):] = 0
        mask[c + 1:] = 0
        self.register_buffer("mask", mask[None, None], persistent=False)
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedMaskedConv2d(nn.Module):
    r"""One gated PixelCNN layer with vertical and horizontal stacks (van den Oord et al. 2016b, Fig. 2).

    The vertical stack at row ``r`` sees input rows ``< r`` (mask ``"A"``: the current row is cut from its
    kernel) or ``<= r`` of the previous vertical output (mask ``"B"``, which itself only knew rows above);
    the horizontal stack sees the current row left of the centre (``"A"``) or up to it (``"B"``) plus the
    vertical stack's features. Gate: ``tanh(a) ⊙ σ(b)`` with ``[a, b]`` the ``2C`` pre-activations plus an
    optional conditioning bias ``V h``. The horizontal output has a residual connection except for mask
    ``"A"`` (the input at the current position must not leak).

    Args:
        channels: ``C``.
        kernel_size: odd ``k`` (the vertical kernel is ``(k//2 + 1, k)``, the horizontal one ``(1, k//2 + 1)``).
        mask_type: ``"A"`` or ``"B"``.
        cond_dim: width of a conditioning vector, or None.
    """

    def __init__(self, channels: int, kernel_size: int = 3, *, mask_type: str = "B", cond_dim: int | None = None) -> None:
        super().__init__()
        channels = check_int("channels", channels, min=1)
        kernel_size = check_int("kernel_size", kernel_size, min=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.mask_type = check_choice("mask_type", mask_type, ("A", "B"))
        k, half = kernel_size, kernel_size // 2
        self.vert = nn.Conv2d(channels, 2 * channels, (half + 1, k), padding=(half, half))
        self.horiz = nn.Conv2d(channels, 2 * channels, (1, half + 1), padding=(0, half))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = nn.Conv2d(channels, channels, 1)
        vmask = torch.ones(half + 1, k)
        hmask = torch.ones(1, half + 1)
        if mask_type == "A":
            vmask[-1] = 0  # the current row
            hmask[0, -1] = 0  # the current position
        self.register_buffer("vmask", vmask[None, None], persistent=False)
        self.register_buffer("hmask", hmask[None, None], persistent=False)
        self.cond = nn.Linear(cond_dim, 2 * channels) if cond_dim is not None else None

    @staticmethod
    def _gate(a: torch.Tensor) -> torch.Tensor:
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def forward(self, x_v: torch.Tensor, x_h: torch.Tensor, c: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_v, x_h: (B, C, h, w)``, ``c: (B, cond_dim)`` or None -> new ``(x_v, x_h)``."""
        h, w = x_v.shape[-2:]
        v = F.conv2d(x_v, self.vert.weight * self.vmask, self.vert.bias, padding=self.vert.padding)
        v = v[:, :, :h]  # (B, 2C, h, w): output row r saw input rows r - k//2 .. r
        hz = F.conv2d(x_h, self.horiz.weight * self.hmask, self.horiz.bias, padding=self.horiz.padding)
        hz = hz[:, :, :, :w]  # (B, 2C, h, w): output column j saw input columns j - k//2 .. j
        bias = 0.0 if self.cond is None or c is None else self.cond(c)[:, :, None, None]  # (B, 2C, 1, 1)
        out_v = self._gate(v + bias)  # (B, C, h, w)
        out_h = self.h_out(self._gate(hz + self.v_to_h(v) + bias))  # (B, C, h, w)
        if self.mask_type == "B":
            out_h = out_h + x_h
        return out_v, out_h


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over a ``(B, h, w)`` map of codes in ``{0..K-1}`` -> logits ``(B, K, h, w)``.

    Code embedding -> one mask-``"A"`` gated layer -> ``layers - 1`` mask-``"B"`` gated layers -> ReLU, 1x1
    conv, ReLU, 1x1 conv to ``K`` logits (from the horizontal stack). The logits at a position depend on the
    codes strictly before it in raster order and on ``y``.

    Args:
        num_codes: ``K``.
        map_shape: ``(h, w)``.
        hidden: channels ``C``.
        layers: gated layers (>= 1).
        kernel_size: odd kernel size.
        num_classes: labels for a conditional prior (``y = num_classes`` is the null label), or None.
    """

    def __init__(self, num_codes: int, map_shape: tuple[int, int], *, hidden: int = 64, layers: int = 4,
                 kernel_size: int = 3, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_codes = check_int("num_codes", num_codes, min=2)
        self.map_shape = check_shape_tuple("map_shape", map_shape)
        hidden = check_int("hidden", hidden, min=1)
        layers = check_int("layers", layers, min=1)
        self.label = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.embed = nn.Embedding(num_codes, hidden)
        self.layers = nn.ModuleList([
            GatedMaskedConv2d(hidden, kernel_size, mask_type="A" if i == 0 else "B",
                              cond_dim=hidden if num_classes is not None else None) for i in range(layers)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_codes, 1))

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` long -> ``(B, h, w, C)`` input embeddings (what :meth:`forward_embedded` takes)."""
        return self.embed(codes)

    def forward_embedded(self, e: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, K, h, w)`` from embedded codes ``e: (B, h, w, C)`` (causality tests differentiate here)."""
        x = e.permute(0, 3, 1, 2)  # (B, C, h, w)
        c = None
        if self.label is not None:
            y = torch.full((e.shape[0],), self.label.null_label, device=e.device) if y is None else y
            c = self.label(y)  # (B, C)
        x_v, x_h = x, x
        for layer in self.layers:
            x_v, x_h = layer(x_v, x_h, c)
        return self.head(x_h)  # (B, K, h, w)

    def forward(self, codes: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_embedded(self.embed_codes(codes), y)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, N, d/heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))  # (B, N, D)
        return x + self.mlp(self.norm2(x))


class CausalTransformerPrior(nn.Module):
    """Decoder-only transformer over the raster-flattened code map -> logits ``(B, K, h, w)``.

    The input sequence is ``[s, c_0, ..., c_{N-2}]`` (``N = h w``), ``s`` a learned start token plus the
    label's embedding when conditional; output ``i`` predicts ``c_i``. Pre-norm blocks with causal
    :func:`torch.nn.functional.scaled_dot_product_attention` and learned absolute positions.

    Args:
        num_codes: ``K``.
        map_shape: ``(h, w)``.
        hidden: model width (divisible by ``heads``).
        layers: transformer blocks (>= 1).
        heads: attention heads.
        num_classes: labels for a conditional prior (``y = num_classes`` is the null label), or None.
    """

    def __init__(self, num_codes: int, map_shape: tuple[int, int], *, hidden: int = 64, layers: int = 4,
                 heads: int = 4, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_codes = check_int("num_codes", num_codes, min=2)
        self.map_shape = check_shape_tuple("map_shape", map_shape)
        hidden = check_int("hidden", hidden, min=1)
        layers = check_int("layers", layers, min=1)
        heads = check_int("heads", heads, min=1)
        if hidden % heads:
            raise ValueError(f"hidden must be divisible by heads={heads}, got {hidden}")
        n = self.map_shape[0] * self.map_shape[1]
        self.embed = nn.Embedding(num_codes, hidden)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.pos = nn.Parameter(torch.randn(n, hidden) * 0.02)
        self.label = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.blocks = nn.ModuleList([_Block(hidden, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_codes)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` long -> ``(B, h, w, D)`` input embeddings (what :meth:`forward_embedded` takes)."""
        return self.embed(codes)

    def forward_embedded(self, e: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, K, h, w)`` from embedded codes ``e: (B, h, w, D)``."""
        b, h, w, d = e.shape
        start = self.start.expand(b, 1, d)  # (B, 1, D)
        if self.label is not None:
            y = torch.full((b,), self.label.null_label, device=e.device) if y is None else y
            start = start + self.label(y)[:, None]  # (B, 1, D)
        x = torch.cat([start, e.reshape(b, h * w, d)[:, :-1]], dim=1) + self.pos  # (B, N, D), shifted right
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))  # (B, N, K)
        return logits.transpose(1, 2).reshape(b, self.num_codes, h, w)  # (B, K, h, w)

    def forward(self, codes: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_embedded(self.embed_codes(codes), y)
