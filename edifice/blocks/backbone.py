"""The default denoiser backbone of a data shape: a ResMLP for vectors, a UNet for square images.

Every family whose network is ``net(x, t, y=None)`` with output shaped like ``x`` (DDPM, DDIM, flow
matching, and later score SDEs and EDM) builds it here, so options mean the same thing everywhere and
are validated once. Families differ only in ``t_scale``: DDPM's integer steps ``0..T-1`` use 1, flow
matching's ``t ∈ [0, 1]`` uses 1000 so the sinusoidal features span the same range.
"""

from __future__ import annotations

from torch import nn

from edifice._checks import check_float, check_int, check_shape_tuple
from edifice.blocks.mlp import ResMLP
from edifice.blocks.unet import UNet

__all__ = ["backbone"]


def backbone(
    data_shape: tuple[int, ...],
    *,
    t_scale: float,
    time_features: str = "sinusoidal",
    num_classes: int | None = None,
    hidden: int = 256,
    depth: int = 3,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """Build a ResMLP for ``(D,)`` data or a UNet for ``(C, H, H)`` images; every option is validated.

    Args:
        data_shape: ``(D,)`` or a square image ``(C, H, H)``.
        t_scale: multiplier applied to ``t`` before the sinusoidal embedding.
        time_features: ``"sinusoidal"`` or ``"fourier"`` (Gaussian random Fourier features).
        num_classes: labels for class conditioning (``y=None`` means the null label), or None.
        hidden, depth: ResMLP width and number of residual blocks (vector data).
        base_channels, channel_mults, num_res_blocks: UNet widths, per-level multipliers, blocks per level.
        dropout: dropout probability in ``[0, 1)``.

    Returns:
        An ``nn.Module`` called ``net(x (B, *data_shape), t (B,), y=None) -> (B, *data_shape)``.

    Raises:
        ValueError / TypeError: naming the offending option (the image-only and vector-only options are
        checked whatever the data shape, so a typo never passes silently).
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if num_classes is not None:
        check_int("num_classes", num_classes, min=1)
    check_int("hidden", hidden, min=1)
    check_int("depth", depth, min=1)
    check_int("base_channels", base_channels, min=1)
    check_int("num_res_blocks", num_res_blocks, min=1)
    mults = check_shape_tuple("channel_mults", channel_mults)
    dropout = check_float("dropout", dropout, min=0.0, max=1.0, max_open=True)
    if len(data_shape) == 1:
        return ResMLP(data_shape[0], hidden=hidden, depth=depth, t_scale=t_scale, time_features=time_features, num_classes=num_classes,
                      dropout=dropout)
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"data_shape must be (D,) or a square image (C, H, H), got {data_shape}")
    if data_shape[1] % 2 ** (len(mults) - 1):
        raise ValueError(
            f"data_shape image size must be divisible by 2**(len(channel_mults) - 1) = {2 ** (len(mults) - 1)}, "
            f"got data_shape={data_shape}, channel_mults={mults}"
        )
    return UNet(data_shape[0], image_size=data_shape[1], base_channels=base_channels, channel_mults=mults,
                num_res_blocks=num_res_blocks, dropout=dropout, t_scale=t_scale, time_features=time_features, num_classes=num_classes)
