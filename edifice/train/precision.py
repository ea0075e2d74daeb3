"""Mixed precision: one switch, ``precision``, for training and sampling.

- ``"fp32"``: everything in float32 (the default).
- ``"bf16"``: ``torch.autocast`` to bfloat16 on CPU or CUDA. Matrix products and convolutions run in
  bfloat16; parameters, optimiser state, losses and the samplers' state stay float32, and the
  schedules and integrator bookkeeping (alpha_bar, log-det sums, divergence accumulators) are computed
  in float32 / float64 by the families themselves. bfloat16 has float32's exponent range, so no loss
  scaling is needed.
- ``"fp16"``: autocast to float16 with a dynamic gradient scaler (:func:`grad_scaler`); CUDA only (float16's
  narrow range underflows gradients without one, and CPU float16 kernels are slow or missing).

>>> import torch
>>> from edifice.train.precision import autocast
>>> with autocast("bf16", "cpu"):
...     y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
>>> y.dtype
torch.bfloat16
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["PRECISIONS", "check_precision", "autocast", "grad_scaler", "autocast_dtype"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: Any, device: Any = "cpu") -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS` and ``device`` supports it; raise otherwise."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device (float16 autocast with a gradient scaler), got "
                         f"device {str(dev)!r}; use precision='bf16' on {dev.type}")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16' is not supported by this GPU; use 'fp16' or 'fp32'")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None for ``"fp32"``)."""
    return _DTYPES[check_precision(precision, "cuda" if precision == "fp16" else "cpu")]


def autocast(precision: str, device: Any = "cpu") -> contextlib.AbstractContextManager:
    """A context that runs the enclosed forward passes in ``precision`` on ``device`` (a no-op for fp32)."""
    precision = check_precision(precision, device)
    dev = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=dev.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: Any = "cpu") -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for ``"fp16"`` (None otherwise: bfloat16 and float32 need none)."""
    precision = check_precision(precision, device)
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
