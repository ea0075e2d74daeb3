r"""A small U-Net for images, conditioned on time and (optionally) a class label.

The architecture follows the DDPM U-Net (Ho et al., 2020) as refined by Nichol & Dhariwal (2021)
and Dhariwal & Nichol (2021): residual blocks with GroupNorm + SiLU, the conditioning vector
``c = e_t(t) + e_y(y)`` injected into every residual block as a scale/shift of its second
normalisation (``GroupNorm(h) (1 + scale) + shift``), multi-head self-attention at the low
resolutions, downsampling by a strided 3x3 convolution, upsampling by nearest-neighbour
interpolation followed by a 3x3 convolution, and skip connections concatenated on the way up.

Resolutions: level ``i`` works at ``image_size / 2**i``, ``i = 0..len(channel_mults)-1``, with
``base_channels * channel_mults[i]`` channels; e.g. 28 -> 14 -> 7 for ``channel_mults=(1, 2, 2)``.

References:
    U-Net: Convolutional Networks for Biomedical Image Segmentation, Ronneberger et al., 2015,
    arXiv:1505.04597.
    Denoising Diffusion Probabilistic Models, Ho et al., 2020, arXiv:2006.11239.
    Improved Denoising Diffusion Probabilistic Models, Nichol & Dhariwal, 2021, arXiv:2102.09672.
    Diffusion Models Beat GANs on Image Synthesis, Dhariwal & Nichol, 2021, arXiv:2105.05233.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from edifice._checks import batch_time, check_choice, check_float, check_int, check_shape_tuple, check_tensor
from edifice.blocks.attention import SelfAttention
from edifice.blocks.embedding import TIME_FEATURES, LabelEmbedding, TimestepEmbedding, condition_vector

__all__ = ["UNet", "ResBlock", "AttentionBlock2d"]


class ResBlock(nn.Module):
    """``x -> GN -> SiLU -> conv -> GN * (1 + scale) + shift -> SiLU -> dropout -> conv`` plus a skip.

    ``(scale, shift) = Linear(SiLU(c))`` per channel; the skip is a 1x1 conv when the widths differ.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, H, W)
        scale, shift = self.emb(c)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, out_ch, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h  # (B, out_ch, H, W)


class AttentionBlock2d(nn.Module):
    """Residual self-attention over the ``H * W`` pixels of a feature map: ``x + Attn(GN(x))``."""

    def __init__(self, channels: int, *, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = SelfAttention(channels, heads=heads)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, H*W, C)
        out = rearrange(self.attn(tokens), "b (h w) c -> b c h w", h=h, w=w)  # (B, C, H, W)
        return x + out


class _Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class _Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class _Stage(nn.ModuleList):
    """Layers applied in order, each called as ``layer(h, c)``."""

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for layer in self:
            h = layer(h, c)
        return h


def _check_int_sequence(name: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a tuple of ints, got {type(value).__name__} {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be a tuple of ints, got {tuple(value)!r}")
    return list(value)


class UNet(nn.Module):
    r"""Time (and label) conditioned U-Net: ``net(x, t, y=None) -> (B, out_channels, H, W)``.

    .. math::
        c = e_t(t) + e_y(y), \qquad
        \mathrm{ResBlock}(h, c) = \mathrm{skip}(h) + \mathrm{conv}(\mathrm{SiLU}(
        \mathrm{GN}(\mathrm{conv}(\mathrm{SiLU}(\mathrm{GN}(h)))) (1 + \gamma(c)) + \beta(c)))

    Layout: ``conv_in``; per level ``num_res_blocks`` ResBlocks (+ attention where the resolution
    is in ``attention_resolutions``) and a strided-conv downsample (not after the last level);
    a middle ResBlock / attention / ResBlock at the lowest resolution (the attention only if that
    resolution is in ``attention_resolutions``); the mirror image upwards with
    ``num_res_blocks + 1`` ResBlocks per level, each taking a concatenated skip connection; and
    ``GN -> SiLU -> conv_out``.

    ``conv_out`` is zero-initialised (common practice, Nichol & Dhariwal 2021), so a fresh network
    outputs zeros; on the first backward pass every parameter receives a gradient, which is exactly
    zero for the layers before ``conv_out`` until ``conv_out`` has moved away from zero.

    The constructor options, with defaults resolved, are recorded in ``self.config`` (a
    JSON-serialisable dict; sequences as lists) so ``UNet(**net.config)`` rebuilds it.

    Args:
        in_channels: channels ``C`` of ``x``.
        out_channels: output channels; ``None`` means ``in_channels``.
        image_size: height = width of ``x``; must be divisible by ``2**(len(channel_mults) - 1)``.
        base_channels: channels at full resolution before the multipliers.
        channel_mults: per-level channel multipliers (non-empty tuple of positive ints).
        num_res_blocks: ResBlocks per level on the way down (>= 1).
        attention_resolutions: resolutions (side lengths) with self-attention; ``None`` means the
            lowest resolution only, ``()`` means no attention.
        heads: attention heads; must divide the channels of every level with attention.
        dropout: dropout probability in the ResBlocks, in ``[0, 1)``.
        groups: GroupNorm groups; must divide ``base_channels`` and every
            ``base_channels * mult``.
        t_scale: factor applied to ``t`` before the sinusoidal embedding (1 for DDPM steps,
            1000 for flow-matching times in ``[0, 1]``).
        time_features: ``"sinusoidal"`` or ``"fourier"`` (Gaussian random features, see ``TimestepEmbedding``).
        num_classes: number of classes for label conditioning, or ``None`` (unconditional). With
            labels, ``y=None`` in ``forward`` means the null ("no label") class.

    Raises:
        TypeError / ValueError: for an invalid option, naming it and the offending value.

    References:
        Denoising Diffusion Probabilistic Models, Ho et al., 2020, arXiv:2006.11239.
        Diffusion Models Beat GANs on Image Synthesis, Dhariwal & Nichol, 2021, arXiv:2105.05233.

    Example:
        >>> net = UNet(1, image_size=8, base_channels=16, num_classes=10)
        >>> net(torch.randn(2, 1, 8, 8), torch.tensor([0.0, 500.0]), y=torch.tensor([3, 10])).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        *,
        out_channels: int | None = None,
        image_size: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] | None = None,
        heads: int = 4,
        dropout: float = 0.0,
        groups: int = 8,
        t_scale: float = 1.0,
        time_features: str = "sinusoidal",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, min=1)
        out_channels = in_channels if out_channels is None else check_int("out_channels", out_channels, min=1)
        check_int("image_size", image_size, min=1)
        check_int("base_channels", base_channels, min=1)
        mults = list(check_shape_tuple("channel_mults", channel_mults))
        check_int("num_res_blocks", num_res_blocks, min=1)
        check_int("heads", heads, min=1)
        dropout = check_float("dropout", dropout, min=0.0, max=1.0, max_open=True)
        check_int("groups", groups, min=1)
        t_scale = check_float("t_scale", t_scale, min=0.0, min_open=True)
        check_choice("time_features", time_features, TIME_FEATURES)
        if num_classes is not None:
            check_int("num_classes", num_classes, min=1)

        factor = 2 ** (len(mults) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size must be divisible by 2**(len(channel_mults)-1) = {factor}; "
                f"got image_size={image_size}, channel_mults={tuple(mults)}"
            )
        resolutions = [image_size // 2**i for i in range(len(mults))]
        if attention_resolutions is None:
            attn = [resolutions[-1]]
        else:
            attn = _check_int_sequence("attention_resolutions", attention_resolutions)
            bad = [r for r in attn if r not in resolutions]
            if bad:
                raise ValueError(
                    f"attention_resolutions must be among the U-Net resolutions {resolutions}; got {tuple(attn)}"
                )
        widths = [base_channels] + [base_channels * m for m in mults]
        for w in widths:
            if w % groups:
                raise ValueError(
                    f"groups must divide base_channels and every base_channels * channel_mults entry "
                    f"(channel widths {sorted(set(widths))}); got groups={groups}"
                )
        for res, m in zip(resolutions, mults):
            if res in attn and (base_channels * m) % heads:
                raise ValueError(
                    f"heads must divide the channels of every level with attention; got heads={heads}, "
                    f"{base_channels * m} channels at resolution {res}"
                )

        self.config: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, image_size=image_size,
            base_channels=base_channels, channel_mults=mults, num_res_blocks=num_res_blocks,
            attention_resolutions=attn, heads=heads, dropout=dropout, groups=groups,
            t_scale=t_scale, time_features=time_features, num_classes=num_classes,
        )
        self.in_channels, self.out_channels, self.image_size = in_channels, out_channels, image_size
        self.num_classes = num_classes

        emb_dim = 4 * base_channels
        self.time_embed = TimestepEmbedding(emb_dim, t_scale=t_scale, features=time_features)
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None
        kw = dict(dropout=dropout, groups=groups)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        ch, skips = base_channels, [base_channels]
        self.down = nn.ModuleList()
        for level, (res, m) in enumerate(zip(resolutions, mults)):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, base_channels * m, emb_dim, **kw)]
                ch = base_channels * m
                if res in attn:
                    layers.append(AttentionBlock2d(ch, heads=heads, groups=groups))
                self.down.append(_Stage(layers))
                skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(_Stage([_Downsample(ch)]))
                skips.append(ch)

        middle: list[nn.Module] = [ResBlock(ch, ch, emb_dim, **kw)]
        if resolutions[-1] in attn:
            middle.append(AttentionBlock2d(ch, heads=heads, groups=groups))
        middle.append(ResBlock(ch, ch, emb_dim, **kw))
        self.middle = _Stage(middle)

        self.up = nn.ModuleList()
        for level in reversed(range(len(mults))):
            res, m = resolutions[level], mults[level]
            for j in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), base_channels * m, emb_dim, **kw)]
                ch = base_channels * m
                if res in attn:
                    layers.append(AttentionBlock2d(ch, heads=heads, groups=groups))
                if level > 0 and j == num_res_blocks:
                    layers.append(_Upsample(ch))
                self.up.append(_Stage(layers))

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None = None, *,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the network.

        Args:
            x: ``(B, in_channels, image_size, image_size)``.
            t: ``(B,)`` times (a python number or 0-dim tensor is broadcast to the batch).
            y: ``(B,)`` long labels in ``[0, num_classes]`` (``num_classes`` = null label) or ``None``.
            emb: ``(B, 4 base_channels)`` extra conditioning added to the time embedding, or None.

        Returns:
            ``(B, out_channels, image_size, image_size)``.

        Raises:
            ValueError: on a shape mismatch of ``x`` / ``t`` / ``y``, labels out of range, or a ``y``
                given to an unconditional network.
        """
        s = self.image_size
        check_tensor("x", x, shape=(None, self.in_channels, s, s), floating=True)
        t = batch_time(t, x)  # (B,)
        c = condition_vector(self.time_embed, self.label_embed, t, y, emb)  # (B, 4*base)
        h = self.conv_in(x)  # (B, base, H, W)
        hs = [h]
        for stage in self.down:
            h = stage(h, c)
            hs.append(h)
        h = self.middle(h, c)  # (B, ch, H/2**(L-1), W/2**(L-1))
        for stage in self.up:
            h = stage(torch.cat([h, hs.pop()], dim=1), c)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
