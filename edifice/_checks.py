"""Argument checks and small tensor helpers shared by every module.

Public functions validate user input with these helpers so that every error names the argument,
what was expected and what was given (``"steps must be a positive int, got 0"``). They also hold the
one place where noise is drawn, so that library code always honours an explicit ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "check_int", "check_float", "check_choice", "check_tensor", "check_shape_tuple", "check_cond",
    "check_generator", "append_dims", "batch_time", "batch_steps", "randn", "rand", "randint",
]


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[min, max]``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if min is not None and value < min:
        what = "a positive int" if min == 1 else f"an int >= {min}"
        raise ValueError(f"{name} must be {what}, got {value}")
    if max is not None and value > max:
        raise ValueError(f"{name} must be an int <= {max}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """Return ``float(value)`` if it is a finite real number in the given interval; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    lo = "(" if min_open else "["
    hi = ")" if max_open else "]"
    interval = f"{lo}{'-inf' if min is None else min}, {'inf' if max is None else max}{hi}"
    if min is not None and (value < min or (min_open and value == min)):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    if max is not None and (value > max or (max_open and value == max)):
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; the error lists the valid ones."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {valid}; got {value!r}")
    return value


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    floating: bool = False,
) -> torch.Tensor:
    """Return ``value`` if it is a tensor of the expected rank / shape / kind; raise otherwise.

    ``shape`` entries that are ``None`` match any size.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None:
        shape = tuple(shape)
        ok = value.ndim == len(shape) and all(s is None or s == v for s, v in zip(shape, value.shape))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def check_shape_tuple(name: str, value: Any) -> tuple[int, ...]:
    """Return ``value`` as a tuple of positive ints (a data shape or a sample shape)."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a non-empty tuple of positive ints, got {type(value).__name__} {value!r}")
    if len(value) == 0:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got ()")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {tuple(value)!r}")
    return tuple(value)


def check_cond(cond: Any) -> dict[str, Any]:
    """Return the conditioning mapping as a dict (``None`` means no conditioning)."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a mapping of keyword arguments for the network, got {type(cond).__name__}")
    return dict(cond)


def check_generator(generator: Any) -> torch.Generator | None:
    """Return ``generator`` if it is ``None`` or a ``torch.Generator``; raise otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-sample tensor ``(B,)`` to ``(B, 1, ..., 1)`` with ``ndim`` dimensions."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dimensions")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_time(t: Any, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return time as a ``(B,)`` floating tensor on ``x``'s device and dtype.

    A python number or a 0-dim tensor is broadcast to the batch; a ``(B,)`` tensor must match
    ``x.shape[0]``.
    """
    b = x.shape[0]
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return torch.full((b,), float(t), device=x.device, dtype=x.dtype)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a number or a tensor, got {type(t).__name__}")
    if t.ndim == 0:
        return t.to(device=x.device, dtype=x.dtype).expand(b)
    if t.ndim != 1 or t.shape[0] != b:
        raise ValueError(f"{name} must have shape ({b},) to match the batch of x, got {tuple(t.shape)}")
    return t.to(device=x.device, dtype=x.dtype)


def batch_steps(t: Any, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Return integer time steps as a ``(B,)`` long tensor on ``x``'s device.

    An int or a 0-dim integer tensor is broadcast to the batch; a ``(B,)`` tensor must match ``x.shape[0]``.
    The range is the caller's to check (that needs a host sync, so only public entry points do it).
    """
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.tensor(t)
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or an integer tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    b = x.shape[0]
    if t.ndim == 0:
        return t.to(device=x.device, dtype=torch.long).expand(b)
    if t.ndim != 1 or t.shape[0] != b:
        raise ValueError(f"{name} must have shape ({b},) to match the batch, got {tuple(t.shape)}")
    return t.to(device=x.device, dtype=torch.long)


def _gen_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn with ``generator`` (on the generator's device), moved to ``device``."""
    check_generator(generator)
    out = torch.randn(tuple(shape), generator=generator, device=_gen_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def rand(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform ``[0, 1)`` noise drawn with ``generator``, moved to ``device``."""
    check_generator(generator)
    out = torch.rand(tuple(shape), generator=generator, device=_gen_device(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randint(
    low: int,
    high: int,
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Integers uniform in ``[low, high)`` drawn with ``generator``, moved to ``device``."""
    check_generator(generator)
    out = torch.randint(low, high, tuple(shape), generator=generator, device=_gen_device(generator, device))
    return out.to(device) if device is not None else out


def check_ordered(lo_name: str, lo: Any, hi_name: str, hi: Any) -> tuple[float, float]:
    """Two positive floats with ``lo < hi`` (e.g. ``sigma_min < sigma_max``); ValueError naming both otherwise."""
    lo = check_float(lo_name, lo, min=0.0, min_open=True)
    hi = check_float(hi_name, hi, min=0.0, min_open=True)
    if lo >= hi:
        raise ValueError(f"{lo_name} must be < {hi_name}, got {lo_name}={lo}, {hi_name}={hi}")
    return lo, hi
