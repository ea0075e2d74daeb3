"""Exponential moving average (EMA) of network parameters.

Sampling from an EMA of the weights, rather than from the last iterate, is standard for diffusion
and flow models (Ho et al. 2020 use a decay of 0.9999; Karras et al. 2024 study it in depth):

    θ_ema ← d · θ_ema + (1 − d) · θ

With ``warmup=True`` the decay used at update ``n`` (counting from 0) is
``min(decay, (1 + n) / (10 + n))``, so early averages are not dominated by the random
initialisation (the schedule of TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``).
Buffers (e.g. normalisation statistics) are copied, not averaged.

References:
    Denoising Diffusion Probabilistic Models, Ho et al. 2020, arXiv:2006.11239.
    Analyzing and Improving the Training Dynamics of Diffusion Models, Karras et al. 2024,
    arXiv:2312.02696.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .._checks import check_float, check_int

__all__ = ["EMA", "ema_decay_at", "ema_update_"]


def ema_decay_at(decay: float, num_updates: int, *, warmup: bool = True) -> float:
    """The decay applied at update number ``num_updates`` (0-based): ``min(decay, (1+n)/(10+n))``."""
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, decay: float) -> None:
    """In place: ``p_target ← decay · p_target + (1 − decay) · p_source``; buffers copied.

    ``target`` and ``source`` must have the same architecture (same parameter order and shapes).
    """
    _lerp_pairs(_pairs(target, source), decay)


def _pairs(target: nn.Module, source: nn.Module) -> tuple[list, list, list, list]:
    t_params = list(target.parameters())
    s_params = [p.detach() for p in source.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(
            f"EMA target has {len(t_params)} parameters but the model has {len(s_params)}; "
            "they must share one architecture")
    return t_params, s_params, list(target.buffers()), list(source.buffers())


def _lerp_pairs(pairs: tuple[list, list, list, list], decay: float) -> None:
    t_params, s_params, t_bufs, s_bufs = pairs
    with torch.no_grad():
        if all(e.dtype == p.dtype and e.device == p.device for e, p in zip(t_params, s_params)):
            if t_params:
                torch._foreach_lerp_(t_params, s_params, 1.0 - decay)  # one fused call over all tensors
        else:
            for e, p in zip(t_params, s_params):
                e.lerp_(p.to(e.dtype), 1.0 - decay)
        for e, b in zip(t_bufs, s_bufs):
            e.copy_(b)


class EMA:
    """An exponential moving average of ``model``'s parameters, kept in a separate module copy.

    Args:
        model: the network being trained (unwrap DDP first). It is deep-copied once.
        decay: the target decay ``d`` in ``[0, 1)``; 0 makes the EMA a copy of the model.
        warmup: use ``min(decay, (1+n)/(10+n))`` at update ``n``.

    The averaged network is ``ema.module`` (in eval mode, no gradients): sample from it directly.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> ema = EMA(net, decay=0.9, warmup=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.add_(1.0)
        >>> ema.update(net)
        >>> bool(torch.allclose(ema.module.weight, net.weight - 0.9))
        True
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.decay = check_float("decay", decay, min=0.0, max=1.0, max_open=True)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._cache: tuple[nn.Module, tuple] | None = None  # (source model, its parameter pairs)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay_at(self.decay, self.num_updates, warmup=self.warmup)

    def update(self, model: nn.Module) -> None:
        """Fold the current parameters of ``model`` into the average (call after each optimiser step)."""
        if self._cache is None or self._cache[0] is not model:
            self._cache = (model, _pairs(self.module, model))
        _lerp_pairs(self._cache[1], self.current_decay())
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones."""
        ema_update_(model, self.module, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """``{"module": tensors, "num_updates": int, "decay": float, "warmup": bool}``."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates,
                "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.module.load_state_dict(state["module"])
        self.num_updates = check_int("num_updates", state["num_updates"], min=0)
        self.decay = check_float("decay", state.get("decay", self.decay), min=0.0, max=1.0, max_open=True)
        self.warmup = bool(state.get("warmup", self.warmup))
