"""The denoiser backbone of a data shape: a ResMLP for vectors, a UNet or a DiT for square images.

Every family whose network is ``net(x, t, y=None)`` with output shaped like ``x`` (DDPM, DDIM, flow
matching, and later score SDEs and EDM) builds it here, so options mean the same thing everywhere and
are validated once. Families differ only in ``t_scale``: DDPM's integer steps ``0..T-1`` use 1, flow
matching's ``t ∈ [0, 1]`` uses 1000 so the sinusoidal features span the same range.
"""

from __future__ import annotations

from torch import nn

from edifice._checks import check_choice, check_float, check_int, check_shape_tuple
from edifice.blocks.mlp import ResMLP
from edifice.blocks.unet import UNet

__all__ = ["backbone", "BACKBONES"]

BACKBONES = ("auto", "mlp", "unet", "dit")


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
    arch: str = "auto",
    dit_preset: str | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    """Build a ResMLP for ``(D,)`` data, a UNet or a DiT for ``(C, H, H)`` images; every option is validated.

    Args:
        data_shape: ``(D,)`` or a square image ``(C, H, H)``.
        t_scale: multiplier applied to ``t`` before the sinusoidal embedding.
        time_features: ``"sinusoidal"`` or ``"fourier"`` (Gaussian random Fourier features).
        num_classes: labels for class conditioning (``y=None`` means the null label), or None.
        hidden, depth: ResMLP width and number of residual blocks (vector data).
        base_channels, channel_mults, num_res_blocks: UNet widths, per-level multipliers, blocks per level.
        dropout: dropout probability in ``[0, 1)``.
        arch: ``"auto"`` (ResMLP for vectors, UNet for images), ``"mlp"``, ``"unet"`` or ``"dit"`` (a Diffusion
            Transformer, :class:`~edifice.blocks.transformer.DiT`, images only).
        dit_preset: a key of :data:`~edifice.blocks.transformer.DIT_PRESETS` (default ``"tiny"`` up to 16x16
            images, ``"small28"`` above); the UNet / ResMLP width options do not apply to it.
        patch_size: the DiT's patch size (default: the preset's).

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
    check_choice("backbone", arch, BACKBONES)
    if dit_preset is not None or patch_size is not None:
        if arch != "dit":
            raise ValueError(f"dit_preset / patch_size are options of backbone='dit', got backbone={arch!r}")
    is_image = len(data_shape) == 3
    if arch == "mlp" and is_image or arch in ("unet", "dit") and len(data_shape) == 1:
        raise ValueError(f"backbone={arch!r} does not fit data_shape {data_shape}: mlp is for vectors (D,), "
                         "unet and dit for images (C, H, H)")
    if arch == "dit":
        if dropout:
            raise ValueError(f"dropout is not an option of backbone='dit', got dropout={dropout}")
        from edifice.blocks.transformer import DIT_PRESETS, dit_preset as make_dit

        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"data_shape must be a square image (C, H, H) for backbone='dit', got {data_shape}")
        preset = dit_preset if dit_preset is not None else ("tiny" if data_shape[1] <= 16 else "small28")
        check_choice("dit_preset", preset, tuple(DIT_PRESETS))
        extra = {} if patch_size is None else {"patch_size": patch_size}
        return make_dit(preset, data_shape=data_shape, num_classes=num_classes, t_scale=t_scale,
                        time_features=time_features, **extra)
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
