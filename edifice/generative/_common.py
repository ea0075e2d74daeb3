"""Helpers shared by the families' samplers (one definition, used by DDPM, DDIM, flow matching, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edifice._checks import check_shape_tuple, check_tensor, randn

__all__ = ["resolve_device_dtype", "initial_noise"]


def resolve_device_dtype(net: Any, noise: torch.Tensor | None, device: Any, dtype: Any) -> tuple[torch.device, torch.dtype]:
    """Where to sample: explicit ``device``/``dtype``, else ``noise``'s, else the net's parameters', else cpu/float32."""
    ref = noise
    if ref is None and isinstance(net, nn.Module):
        ref = next(net.parameters(), None)
    dev = torch.device(device) if device is not None else (ref.device if ref is not None else torch.device("cpu"))
    if dtype is None:
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dev, dtype


def initial_noise(net: Any, shape: Any, noise: Any, generator: Any, device: Any, dtype: Any) -> torch.Tensor:
    """Validate a sampler's ``net`` / ``shape`` / ``noise`` and return its starting point.

    Returns ``noise`` moved to the resolved device and dtype, or fresh ``N(0, I)`` drawn with ``generator``.

    Raises:
        TypeError: if ``net`` is not callable or ``dtype`` is not floating.
        ValueError: if ``shape`` is not a tuple of positive ints or ``noise`` does not have that shape.
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
    shape = check_shape_tuple("shape", shape)
    if noise is not None:
        check_tensor("noise", noise, shape=shape, floating=True)
    device, dtype = resolve_device_dtype(net, noise, device, dtype)
    if noise is None:
        return randn(shape, generator=generator, device=device, dtype=dtype)
    return noise.to(device=device, dtype=dtype)
