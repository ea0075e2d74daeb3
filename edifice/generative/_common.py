"""Helpers shared by the families' samplers (one definition, used by DDPM, DDIM, flow matching, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edifice._checks import check_float, check_shape_tuple, check_tensor, randn

__all__ = ["resolve_device_dtype", "initial_noise", "hi_dtype", "coefficient", "call_net"]


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


def hi_dtype(device: torch.device) -> torch.dtype:
    """Dtype for schedule coefficients on ``device``: float64 wherever the backend has it (not on mps)."""
    return torch.float32 if device.type == "mps" else torch.float64


def coefficient(name: str, value: Any, x: torch.Tensor, **bounds: Any) -> torch.Tensor:
    """A step function's scalar coefficient: a number, a 0-dim or a ``(B,)`` floating tensor -> tensor on ``x``'s device.

    Numbers are checked with ``check_float(name, value, **bounds)`` and become 0-dim tensors of
    :func:`hi_dtype`; tensors are checked for shape only (a range check would need a host sync inside
    sampler loops).
    """
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, floating=True)
        if value.ndim not in (0, 1) or (value.ndim == 1 and value.shape[0] != x.shape[0]):
            raise ValueError(f"{name} must be a number, a 0-dim tensor or have shape ({x.shape[0]},), "
                             f"got {tuple(value.shape)}")
        return value.to(x.device)
    return torch.tensor(check_float(name, value, **bounds), dtype=hi_dtype(x.device), device=x.device)


def call_net(net: Any, x: torch.Tensor, t: torch.Tensor, cond: dict, what: str) -> torch.Tensor:
    """``net(x, t, **cond)``, with a ValueError naming ``what`` the net should return unless it is shaped like ``x``."""
    out = net(x, t, **cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"net must return {what} shaped like x {tuple(x.shape)}, got {got}")
    return out
