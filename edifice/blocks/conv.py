"""Convolutional encoder / decoder stacks shared by the VAE, VQ-VAE and GAN families.

A :class:`ConvEncoder` halves the resolution once per entry of ``channels`` with a 4x4 stride-2
convolution (DCGAN's downsampling, Radford et al. 2016); a :class:`ConvDecoder` doubles it once per
entry with a 4x4 stride-2 transposed convolution. So an ``image_size`` must be divisible by
``2 ** len(channels)``: 28x28 with two stages gives 7x7 features, 8x8 with two stages 2x2.

Both optionally project to / from a flat vector (``out_features`` / ``in_features``) — what a
VAE's Gaussian latent or a GAN's noise vector needs — or keep a feature map (``out_channels`` /
``in_channels``), what a VQ-VAE quantises. ``norm`` is ``"none"``, ``"batch"`` (DCGAN's generator)
or ``"group"``; ``spectral_norm=True`` wraps every convolution and linear layer in
:func:`torch.nn.utils.parametrizations.spectral_norm` (Miyato et al. 2018) for discriminators.

Example:
    >>> import torch
    >>> from edifice.blocks.conv import ConvEncoder, ConvDecoder
    >>> enc = ConvEncoder(1, 28, channels=(32, 64), out_features=16)
    >>> dec = ConvDecoder(1, 28, channels=(64, 32), in_features=16)
    >>> z = enc(torch.zeros(3, 1, 28, 28)); z.shape
    torch.Size([3, 16])
    >>> dec(z).shape
    torch.Size([3, 1, 28, 28])

References:
    Unsupervised Representation Learning with Deep Convolutional Generative Adversarial
    Networks. Radford, Metz, Chintala, 2016. arXiv:1511.06434.
    Spectral Normalization for Generative Adversarial Networks. Miyato, Kataoka, Koyama,
    Yoshida, 2018. arXiv:1802.05957.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_int

__all__ = ["ConvEncoder", "ConvDecoder", "ResidualBlock", "NORMS", "ACTIVATIONS", "check_channels",
           "bottom_size", "maybe_spectral_norm"]

NORMS = ("none", "batch", "group")
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU}


def check_channels(name: str, value: Any) -> tuple[int, ...]:
    """A non-empty tuple of positive ints (``channels=(32, 64)``); the error names ``name``."""
    if isinstance(value, int) or not isinstance(value, (list, tuple)) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {value!r}")
    return tuple(value)


def bottom_size(image_size: int, stages: int, *, name: str = "data_shape") -> int:
    """The spatial size after ``stages`` halvings; raises unless ``image_size`` divides evenly."""
    image_size = check_int(name, image_size, min=1)
    if image_size % (2 ** stages):
        raise ValueError(f"{name}: image size {image_size} is not divisible by 2**{stages} = {2 ** stages} "
                         f"(one halving per entry of channels); use fewer channel stages or another size")
    return image_size // (2 ** stages)


def maybe_spectral_norm(module: nn.Module, enabled: bool) -> nn.Module:
    """``module`` wrapped in spectral normalisation when ``enabled`` (weights of conv / linear layers)."""
    return nn.utils.parametrizations.spectral_norm(module) if enabled else module


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels) if channels % min(8, channels) == 0 else 1, channels)
    return nn.Identity()


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class ResidualBlock(nn.Module):
    """``x + conv1x1(act(conv3x3(act(x))))`` — the residual block of the VQ-VAE paper (Sec. 4.1)."""

    def __init__(self, channels: int, *, act: str = "relu", spectral_norm: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _act(act), maybe_spectral_norm(nn.Conv2d(channels, channels, 3, padding=1), spectral_norm),
            _act(act), maybe_spectral_norm(nn.Conv2d(channels, channels, 1), spectral_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _check_common(norm: str, act: str, res_blocks: int, spectral_norm: bool) -> None:
    check_choice("norm", norm, NORMS)
    check_choice("act", act, tuple(ACTIVATIONS))
    check_int("res_blocks", res_blocks, min=0)
    if not isinstance(spectral_norm, bool):
        raise TypeError(f"spectral_norm must be true or false, got {spectral_norm!r}")


class ConvEncoder(nn.Module):
    """Image ``(B, C, H, W)`` -> features: ``(B, out_features)`` or a map ``(B, out_channels, h, w)``.

    Args:
        in_channels: image channels ``C``.
        image_size: ``H == W``; divisible by ``2 ** len(channels)``.
        channels: output channels of each stride-2 stage (``h = H / 2**len(channels)``).
        out_features: flatten and project to this many features (a vector head), or
        out_channels: a 1x1 convolution to this many channels (a feature-map head), or neither
            (the last stage's map).
        norm: normalisation after each stage but the first (DCGAN): ``"none"``, ``"batch"``, ``"group"``.
        act: ``"relu"``, ``"silu"``, ``"leaky_relu"`` (slope 0.2) or ``"gelu"``.
        res_blocks: residual blocks at the lowest resolution.
        spectral_norm: spectral normalisation on every weight (discriminators).
    """

    def __init__(self, in_channels: int, image_size: int, *, channels: Any = (32, 64), out_features: int | None = None,
                 out_channels: int | None = None, norm: str = "none", act: str = "relu", res_blocks: int = 0,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        in_channels = check_int("in_channels", in_channels, min=1)
        channels = check_channels("channels", channels)
        _check_common(norm, act, res_blocks, spectral_norm)
        if out_features is not None and out_channels is not None:
            raise ValueError("give out_features (a vector head) or out_channels (a map head), not both")
        h = bottom_size(image_size, len(channels))
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(channels):
            layers.append(maybe_spectral_norm(nn.Conv2d(prev, c, 4, stride=2, padding=1), spectral_norm))  # H/2
            if i > 0:
                layers.append(_norm(norm, c))
            layers.append(_act(act))
            prev = c
        layers += [ResidualBlock(prev, act=act, spectral_norm=spectral_norm) for _ in range(res_blocks)]
        if res_blocks:
            layers.append(_act(act))
        self.body = nn.Sequential(*layers)
        self.feature_shape = (prev, h, h)
        self.head: nn.Module
        if out_features is not None:
            out_features = check_int("out_features", out_features, min=1)
            self.head = nn.Sequential(nn.Flatten(), maybe_spectral_norm(nn.Linear(prev * h * h, out_features),
                                                                          spectral_norm))
            self.out_shape: tuple[int, ...] = (out_features,)
        elif out_channels is not None:
            out_channels = check_int("out_channels", out_channels, min=1)
            self.head = maybe_spectral_norm(nn.Conv2d(prev, out_channels, 1), spectral_norm)
            self.out_shape = (out_channels, h, h)
        else:
            self.head = nn.Identity()
            self.out_shape = (prev, h, h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The map before the head, ``(B, channels[-1], h, w)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ConvDecoder(nn.Module):
    """Features ``(B, in_features)`` or ``(B, in_channels, h, w)`` -> image ``(B, out_channels, H, W)``.

    Args:
        out_channels: output channels (image channels, or a multiple for per-pixel parameters).
        image_size: output ``H == W``; divisible by ``2 ** len(channels)``.
        channels: input channels of each stride-2 transposed stage, widest first (``(64, 32)``).
        in_features: a linear layer maps a vector to ``(channels[0], h, h)``, or
        in_channels: a 3x3 convolution maps a feature map to ``channels[0]`` channels.
        norm: normalisation after every hidden layer (``"batch"`` in DCGAN's generator).
        act: hidden activation.
        res_blocks: residual blocks at the lowest resolution.
        out_act: ``None`` (raw outputs) or ``"tanh"`` (images in ``[-1, 1]``, DCGAN).
    """

    def __init__(self, out_channels: int, image_size: int, *, channels: Any = (64, 32), in_features: int | None = None,
                 in_channels: int | None = None, norm: str = "none", act: str = "relu", res_blocks: int = 0,
                 out_act: str | None = None) -> None:
        super().__init__()
        out_channels = check_int("out_channels", out_channels, min=1)
        channels = check_channels("channels", channels)
        _check_common(norm, act, res_blocks, False)
        check_choice("out_act", out_act, (None, "tanh"))
        if (in_features is None) == (in_channels is None):
            raise ValueError("give exactly one of in_features (a vector input) or in_channels (a map input)")
        h = bottom_size(image_size, len(channels))
        c0 = channels[0]
        if in_features is not None:
            in_features = check_int("in_features", in_features, min=1)
            self.stem: nn.Module = nn.Sequential(nn.Linear(in_features, c0 * h * h), nn.Unflatten(1, (c0, h, h)),
                                                 _norm(norm, c0) if norm != "none" else nn.Identity(), _act(act))
            self.in_shape: tuple[int, ...] = (in_features,)
        else:
            in_channels = check_int("in_channels", in_channels, min=1)
            self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1), _act(act))
            self.in_shape = (in_channels, h, h)
        layers: list[nn.Module] = [ResidualBlock(c0, act=act) for _ in range(res_blocks)]
        if res_blocks:
            layers.append(_act(act))
        outs = list(channels[1:]) + [channels[-1]]
        for i, (c_in, c_out) in enumerate(zip(channels, outs)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))  # H*2
            layers += [_norm(norm, c_out), _act(act)]
        layers.append(nn.Conv2d(outs[-1], out_channels, 3, padding=1))
        if out_act == "tanh":
            layers.append(nn.Tanh())
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(z))
