"""ODE integration: fixed-step Runge-Kutta steps over one shared loop, adaptive methods via torchdiffeq.

Vector fields are ``f(t, x) -> dx/dt`` with ``t`` a 0-dim tensor and ``x`` a ``(B, ...)`` tensor; a denoising
network ``net(x, t, **cond)`` becomes one with :func:`network_field` (the single adapter). :func:`odeint` takes
any 1-D sequence of times; decreasing times integrate backwards (e.g. data -> noise for likelihoods).

Fixed-step methods and their orders: ``euler`` (1), ``midpoint`` (2), ``heun`` (2, the explicit trapezoid rule
that EDM uses), ``rk4`` (4). Adaptive methods (:data:`ADAPTIVE`) are torchdiffeq's embedded Runge-Kutta pairs
with error control by ``rtol`` / ``atol``.

Example:
    >>> import torch
    >>> from edifice.integrators import odeint
    >>> x1 = odeint(lambda t, x: -x, torch.ones(3, 2), torch.linspace(0.0, 1.0, 11), method="rk4")
    >>> bool(torch.allclose(x1, torch.full((3, 2), torch.e ** -1), atol=1e-5))
    True

References:
    - Solving Ordinary Differential Equations I, Hairer, Norsett & Wanner, 1993 (Runge-Kutta methods).
    - Neural Ordinary Differential Equations, Chen et al., 2018, arXiv:1806.07366 (torchdiffeq).
    - Elucidating the Design Space of Diffusion-Based Generative Models, Karras et al., 2022,
      arXiv:2206.00364 (Heun's method for diffusion sampling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torchdiffeq

from edifice._checks import batch_time, check_choice, check_cond, check_float, check_tensor

__all__ = [
    "euler_step", "midpoint_step", "heun_step", "rk4_step", "STEPPERS", "ADAPTIVE", "METHODS",
    "odeint", "network_field",
]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_step(f: Field, t: torch.Tensor, x: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Forward Euler: ``x + dt f(t, x)`` (order 1, one evaluation)."""
    return x + dt * f(t, x)


def midpoint_step(f: Field, t: torch.Tensor, x: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Explicit midpoint: ``x + dt f(t + dt/2, x + dt/2 f(t, x))`` (order 2, two evaluations)."""
    half = dt / 2
    return x + dt * f(t + half, x + half * f(t, x))


def heun_step(f: Field, t: torch.Tensor, x: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Heun (explicit trapezoid): Euler predictor, then the mean of both slopes (order 2, two evaluations)."""
    k1 = f(t, x)
    k2 = f(t + dt, x + dt * k1)
    return x + dt / 2 * (k1 + k2)


def rk4_step(f: Field, t: torch.Tensor, x: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta (order 4, four evaluations)."""
    half = dt / 2
    k1 = f(t, x)
    k2 = f(t + half, x + half * k1)
    k3 = f(t + half, x + half * k2)
    k4 = f(t + dt, x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


STEPPERS: dict[str, Callable[[Field, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "euler": euler_step,
    "midpoint": midpoint_step,
    "heun": heun_step,
    "rk4": rk4_step,
}
"""Fixed-step methods: ``{name: step(f, t, x, dt) -> x_next}``."""

ADAPTIVE: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
"""Adaptive-step methods, delegated to ``torchdiffeq.odeint``."""

METHODS: tuple[str, ...] = tuple(STEPPERS) + ADAPTIVE
"""Every valid ``method`` name of :func:`odeint`."""


def odeint(
    f: Field,
    x0: torch.Tensor,
    ts: torch.Tensor,
    *,
    method: str = "euler",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Integrate ``dx/dt = f(t, x)`` from ``ts[0]`` to ``ts[-1]`` and return the final state.

    Fixed-step methods take one step per interval ``[ts[i], ts[i+1]]`` of any sequence of times (increasing,
    decreasing, or uneven). Adaptive methods hand ``ts`` to ``torchdiffeq.odeint``, which needs ``ts`` strictly
    monotone and chooses its own steps in between.

    The loop never synchronises with the host: ``t`` and ``dt`` stay 0-dim tensors. ``ts`` is moved once to
    ``x0``'s device; floating ``ts`` keep their dtype (integer ``ts`` become ``x0``'s dtype, float32 at least),
    and the state keeps ``x0``'s dtype.

    Pitfall: torchdiffeq's ``dopri5`` (and the other adaptive methods) may evaluate ``f`` at times slightly
    beyond ``ts[-1]``; a field undefined there (a score-SDE ODE integrated down to ``t = 1e-5`` asks for
    ``t < 0``, where the noise scale is NaN) must clamp ``t`` itself. Nothing is clamped here.

    Args:
        f: vector field ``f(t, x)`` with ``t`` a 0-dim tensor, returning a tensor shaped like ``x``.
        x0: initial state ``(B, ...)``, floating point.
        ts: ``(N,)`` times, ``N >= 2``; ``ts[0]`` is the time of ``x0``.
        method: one of :data:`METHODS`.
        rtol: relative tolerance (adaptive methods only), > 0.
        atol: absolute tolerance (adaptive methods only), > 0.
        callback: called as ``callback({"i": i, "t": ts[i+1], "x": x})`` after each interval ``i`` with the
            state at ``ts[i+1]`` (for adaptive methods, once per output time).

    Returns:
        The state at ``ts[-1]``, shaped like ``x0``.

    Raises:
        ValueError: for an unknown ``method`` (the message lists the valid ones), fewer than two times, or
            non-monotone times with an adaptive method.
        TypeError: for non-tensor ``x0`` / ``ts`` or a non-floating ``x0``.
    """
    check_choice("method", method, METHODS)
    check_tensor("x0", x0, floating=True)
    check_tensor("ts", ts, ndim=1)
    if ts.shape[0] < 2:
        raise ValueError(f"ts must hold at least 2 times, got shape {tuple(ts.shape)}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    time_dtype = ts.dtype if ts.is_floating_point() else torch.promote_types(x0.dtype, torch.float32)
    ts = ts.to(device=x0.device, dtype=time_dtype)

    if method in STEPPERS:
        step = STEPPERS[method]
        x = x0
        for i in range(ts.shape[0] - 1):
            x = step(f, ts[i], x, ts[i + 1] - ts[i])
            if callback is not None:
                callback({"i": i, "t": ts[i + 1], "x": x})
        return x

    rtol = check_float("rtol", rtol, min=0.0, min_open=True)
    atol = check_float("atol", atol, min=0.0, min_open=True)
    diffs = ts[1:] - ts[:-1]
    if not (bool((diffs > 0).all()) or bool((diffs < 0).all())):  # torchdiffeq syncs here anyway
        raise ValueError("ts must be strictly increasing or strictly decreasing for an adaptive method")
    xs = torchdiffeq.odeint(f, x0, ts, method=method, rtol=rtol, atol=atol)  # (N, *x0.shape)
    if callback is not None:
        for i in range(ts.shape[0] - 1):
            callback({"i": i, "t": ts[i + 1], "x": xs[i + 1]})
    return xs[-1]


def network_field(net: Callable[..., torch.Tensor], cond: Mapping[str, Any] | None = None) -> Field:
    """Adapt a network ``net(x, t, **cond)`` (``t`` of shape ``(B,)``) to a vector field ``f(t, x)``.

    The 0-dim time is broadcast to ``(B,)`` in ``x``'s dtype and device. This is the one place where the
    network convention meets the integrator convention.

    Args:
        net: any callable ``net(x, t, **cond)``, e.g. a velocity network.
        cond: keyword arguments passed to every call (e.g. ``{"y": labels}``), or ``None``.

    Returns:
        ``f(t, x) = net(x, t.expand(B), **cond)``.

    Raises:
        TypeError: if ``net`` is not callable or ``cond`` is not a mapping.
    """
    if not callable(net):
        raise TypeError(f"net must be callable, got {type(net).__name__}")
    kwargs = check_cond(cond)

    def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return net(x, batch_time(t, x), **kwargs)

    return f
