"""SDE integration: Euler-Maruyama for Ito SDEs ``dx = drift(t, x) dt + diffusion(t, x) dW``.

``drift(t, x)`` returns a tensor shaped like ``x``; ``diffusion(t, x)`` returns a python number, a 0-dim tensor,
a per-sample ``(B,)`` tensor, or a tensor shaped like ``x`` (diagonal noise). ``t`` is a 0-dim tensor, as for
ODEs. Time may decrease (reverse-time SDEs for sampling): the noise is scaled by ``sqrt(|dt|)``.

:func:`sdeint` is one loop over a registry of predictor steps (:data:`SDE_STEPPERS`) with an optional
``corrector(t, x, *, generator)`` applied after each step; the Langevin corrector of Song et al. (2021) plugs
in there, built from :func:`langevin_step` and :func:`langevin_step_size`.

Example:
    >>> import torch
    >>> from edifice.integrators import sdeint
    >>> g = torch.Generator().manual_seed(0)
    >>> x = sdeint(lambda t, x: -x, lambda t, x: 1.0, torch.zeros(4, 2), torch.linspace(0, 1, 101), generator=g)
    >>> x.shape
    torch.Size([4, 2])

References:
    - Numerical Solution of Stochastic Differential Equations, Kloeden & Platen, 1992 (Euler-Maruyama).
    - Score-Based Generative Modeling through Stochastic Differential Equations, Song et al., 2021,
      arXiv:2011.13456 (reverse-time SDEs, predictor-corrector sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import torch

from edifice._checks import append_dims, check_choice, check_generator, check_tensor, randn

__all__ = ["euler_maruyama_step", "SDE_STEPPERS", "sdeint", "langevin_step", "langevin_step_size"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Diffusion = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, float]]


def _broadcast_diffusion(g: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Shape the diffusion coefficient to broadcast against ``x`` ((B,) -> (B, 1, ..., 1))."""
    if isinstance(g, (int, float)) and not isinstance(g, bool):
        return float(g)
    if not isinstance(g, torch.Tensor):
        raise TypeError(f"diffusion must return a number or a tensor, got {type(g).__name__}")
    if g.ndim == 0 or g.shape == x.shape:
        return g
    if g.ndim == 1 and x.ndim >= 1 and g.shape[0] == x.shape[0]:
        return append_dims(g, x.ndim)  # (B, 1, ..., 1)
    raise ValueError(
        f"diffusion must return a scalar, a ({x.shape[0]},) tensor or a tensor of shape {tuple(x.shape)}, "
        f"got shape {tuple(g.shape)}"
    )


def euler_maruyama_step(
    drift: Field,
    diffusion: Diffusion,
    t: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One Euler-Maruyama step: ``x + drift(t, x) dt + diffusion(t, x) sqrt(|dt|) noise``.

    Strong order 1/2, weak order 1 (Kloeden & Platen 1992, Sec. 9.1 and 14.1).

    Args:
        drift: ``drift(t, x)`` shaped like ``x``.
        diffusion: ``diffusion(t, x)``: a number, a 0-dim tensor, ``(B,)``, or shaped like ``x``.
        t: 0-dim tensor, current time.
        x: ``(B, ...)`` state.
        dt: 0-dim tensor, signed step (negative for reverse time).
        noise: standard normal ``(B, ...)`` shaped like ``x``.

    Returns:
        The state at ``t + dt``, shaped like ``x``.
    """
    g = _broadcast_diffusion(diffusion(t, x), x)
    return x + drift(t, x) * dt + g * dt.abs().sqrt() * noise


def langevin_step(x: torch.Tensor, score: torch.Tensor, step_size: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """One unadjusted Langevin step: ``x + ε ∇log p(x) + sqrt(2ε) z``.

    The building block of the Langevin corrector (Song et al. 2021, Algorithms 4-5) and of annealed Langevin
    dynamics (Song & Ermon 2019, Algorithm 1).

    Args:
        x: ``(B, ...)`` state.
        score: ``∇log p(x)``, shaped like ``x``.
        step_size: ``ε``: a number, a 0-dim tensor or a per-sample ``(B,)`` tensor, ``> 0``.
        noise: standard normal ``z`` shaped like ``x``.

    Returns:
        The new state, shaped like ``x``.
    """
    eps = _broadcast_diffusion(step_size, x)
    return x + eps * score + (2.0 * eps) ** 0.5 * noise


def langevin_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float, *, alpha: torch.Tensor | float = 1.0
                       ) -> torch.Tensor:
    """Step size of the Langevin corrector from a target signal-to-noise ratio: ``ε = 2 α (r ‖z‖ / ‖s‖)²``.

    Song et al. (2021), Algorithms 4-5, with ``r`` the ``snr`` and ``α = 1`` (VE) or ``α_i = 1 - β_i`` (VP).
    ``‖z‖`` and ``‖s‖`` are per-sample norms averaged over the batch, as in the reference code: a per-sample
    ratio ``‖z‖ / ‖s‖`` has an infinite mean in two dimensions (the score vanishes at the modes) and makes the
    corrector explode. A zero score gives ``ε = 0`` (no step) rather than a NaN.

    Args:
        score: ``(B, ...)`` score ``s``. noise: ``(B, ...)`` the standard normal ``z`` of the step.
        snr: target signal-to-noise ratio ``r > 0`` (0.16 for VE on CIFAR-10 in the paper).
        alpha: ``α``, a number or a ``(B,)`` tensor.

    Returns:
        ``ε``: a 0-dim tensor, or ``(B,)`` when ``alpha`` is ``(B,)``.
    """
    grad_norm = score.flatten(1).norm(dim=1).mean()  # 0-dim
    noise_norm = noise.flatten(1).norm(dim=1).mean()  # 0-dim
    ratio = torch.where(grad_norm > 0, snr * noise_norm / grad_norm, torch.zeros_like(grad_norm))
    return 2.0 * alpha * ratio.square()


SDE_STEPPERS: dict[str, Callable[..., torch.Tensor]] = {"euler_maruyama": euler_maruyama_step}
"""Predictor steps ``step(drift, diffusion, t, x, dt, noise) -> x_next`` usable by :func:`sdeint`."""


def sdeint(
    drift: Field,
    diffusion: Diffusion,
    x0: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str = "euler_maruyama",
    generator: torch.Generator | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    corrector: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Integrate an Ito SDE from ``ts[0]`` to ``ts[-1]`` with one step per interval; return the final state.

    Noise is drawn with ``generator`` (same seed, same bits on the same device), one standard normal tensor
    shaped like ``x0`` per step. The loop never synchronises with the host.

    Args:
        drift: ``drift(t, x)`` shaped like ``x``, ``t`` a 0-dim tensor.
        diffusion: ``diffusion(t, x)``: a number, a 0-dim tensor, ``(B,)``, or shaped like ``x``.
        x0: initial state ``(B, ...)``, floating point.
        ts: ``(N,)`` times, ``N >= 2``, increasing or decreasing.
        method: a predictor in :data:`SDE_STEPPERS`.
        generator: random generator for the Brownian increments.
        callback: called as ``callback({"i": i, "t": ts[i+1], "x": x})`` after each step (and corrector).
        corrector: optional ``corrector(t, x, *, generator) -> x`` applied after each predictor step at the
            new time ``ts[i+1]`` (hook for predictor-corrector samplers; ``None`` = predictor only).

    Returns:
        The state at ``ts[-1]``, shaped like ``x0``.

    Raises:
        ValueError: for an unknown ``method`` (listing the valid ones) or fewer than two times.
        TypeError: for non-tensor ``x0`` / ``ts``, a non-floating ``x0``, a bad ``generator`` or a
            non-callable ``callback`` / ``corrector``.
    """
    check_choice("method", method, tuple(SDE_STEPPERS))
    check_tensor("x0", x0, floating=True)
    check_tensor("ts", ts, ndim=1)
    check_generator(generator)
    if ts.shape[0] < 2:
        raise ValueError(f"ts must hold at least 2 times, got shape {tuple(ts.shape)}")
    for name, fn in (("callback", callback), ("corrector", corrector)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")
    time_dtype = ts.dtype if ts.is_floating_point() else torch.promote_types(x0.dtype, torch.float32)
    ts = ts.to(device=x0.device, dtype=time_dtype)
    step = SDE_STEPPERS[method]
    x = x0
    for i in range(ts.shape[0] - 1):
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = step(drift, diffusion, ts[i], x, ts[i + 1] - ts[i], noise)
        if corrector is not None:
            x = corrector(ts[i + 1], x, generator=generator)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "x": x})
    return x
