r"""Stochastic interpolants (Albergo, Boffi, Vanden-Eijnden 2023): one bridge, an ODE and a family of SDEs.

**Time convention:** ``t ∈ [0, 1]``; noise ``x0 ~ N(0, I)`` at ``t = 0``, data ``x1`` at ``t = 1`` (as flow
matching). Networks are called ``net(x_t, t, **cond)`` with ``t`` a ``(B,)`` float in ``[0, 1]``.

The interpolant (their Definition 2.1, with a Gaussian base and a spatially linear bridge)::

    x_t = α(t) x0 + β(t) x1 + γ(t) z,        x0, z ~ N(0, I) independent of x1 and of each other,

with ``kind="linear"``: ``α = 1 - t``, ``β = t``; ``kind="trig"``: ``α = cos(πt/2)``, ``β = sin(πt/2)``; and the
latent noise ``γ(t) = √(a t (1 - t))``, ``a = gamma_scale >= 0`` (``a = 0``: a deterministic interpolant, the
flow-matching path). Since ``α x0 + γ z`` is Gaussian, ``x_t = β x1 + σ ε`` with ``σ = √(α² + γ²)`` and the
unit-variance noise ``ε = (α x0 + γ z) / σ``. Two regressions identify everything:

- ``objective="velocity"``: ``b(t, x) = E[α' x0 + β' x1 + γ' z | x_t = x]``, the velocity whose ODE
  ``dx/dt = b`` transports ``N(0, I)`` to the data (the transport equation of the paper);
- ``objective="denoiser"``: ``η(t, x) = E[ε | x_t = x]`` (the paper's denoiser for the Gaussian part).

For a Gaussian base, with ``c = αα' + γγ'`` and ``k = c - β' σ² / β``::

    score    s = ∇ log ρ_t = -η / σ                                 (Tweedie)
    velocity b = (β'/β) x + (k / σ) η = β' E[x1 | x] + (c / σ) η
    score    s = -(b - (β'/β) x) / k                               (inverting the line above)

(``E[x0 | x_t] = (α/σ) η`` and ``E[z | x_t] = (γ/σ) η`` because ``(x0, z)`` is independent of ``x1``.) Any
``ε >= 0`` (``diffusion``) gives an SDE with the same marginals as the ODE (the paper's forward Fokker-Planck
equation): ``dX = [b + ε s] dt + √(2ε) dW``; ``ε = 0`` is the ODE.

**Singular ends.** ``β(0) = 0`` and ``σ(1) = 0`` make the conversions (hence ``objective="denoiser"`` sampling
and the SDE) singular at the ends, and ``γ'(t) = a (1 - 2t) / (2γ)`` is infinite at both ends when ``a > 0``. Losses
draw ``t ~ U[t_min, t_max)`` and samplers integrate on ``[t_min, t_max]`` (default ``[10⁻³, 1 - 10⁻³]``); an end
where a target or a field is singular raises a ValueError naming ``t_min`` / ``t_max``. (``b`` itself stays finite:
``γ' E[z | x_t] = γγ'/σ · η`` with ``γγ' = a (1 - 2t)/2``, so the velocity ODE may run on all of ``[0, 1]``.)
The SDE's last step is taken without noise (its drift only), so the output is not blurred by a final
``√(2ε dt)`` kick.

Example (the exact velocity of a point mass at 3 with the linear interpolant is ``(3 - x) / (1 - t)``; Euler's first
step from ``t = 0`` lands on it):
    >>> import torch
    >>> from edifice.generative import interpolant as si
    >>> field = lambda x, t: (3.0 - x) / (1.0 - t[:, None])
    >>> si.sample(field, (2, 1), steps=1, t_min=0.0, t_max=1.0, generator=torch.Generator().manual_seed(0))
    tensor([[3.],
            [3.]])

References:
    Stochastic Interpolants: A Unifying Framework for Flows and Diffusions. Albergo, Boffi, Vanden-Eijnden, 2023.
    arXiv:2303.08797.
    Building Normalizing Flows with Stochastic Interpolants. Albergo, Vanden-Eijnden, 2023. arXiv:2209.15571.
    SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant Transformers.
    Ma, Goldstein, Albergo, Boffi, Vanden-Eijnden, Xie, 2024. arXiv:2401.08740.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_time, check_choice, check_cond, check_float, check_generator, check_int, check_tensor,
    rand, randn,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import call_net, initial_noise
from edifice.integrators import STEPPERS, euler_maruyama_step

__all__ = [
    "KINDS", "OBJECTIVES", "METHODS", "Coefficients", "coefficients", "interpolate", "build", "loss",
    "score_from_denoiser", "velocity_from_denoiser", "score_from_velocity", "denoiser_from_velocity",
    "drift", "sample",
]

KINDS = ("linear", "trig")
OBJECTIVES = ("velocity", "denoiser")
METHODS = tuple(STEPPERS) + ("sde",)
"""Sampler methods: the fixed-step ODE methods of :mod:`edifice.integrators` and ``"sde"`` (Euler-Maruyama)."""
T_MIN, T_MAX = 1e-3, 1.0 - 1e-3


class Coefficients(NamedTuple):
    """``α, β, γ`` of the interpolant and their time derivatives, each shaped like ``t``."""

    alpha: torch.Tensor
    beta: torch.Tensor
    gamma: torch.Tensor
    dalpha: torch.Tensor
    dbeta: torch.Tensor
    dgamma: torch.Tensor


def _check_kind(kind: Any, gamma_scale: Any) -> float:
    check_choice("kind", kind, KINDS)
    return check_float("gamma_scale", gamma_scale, min=0.0)


def _coefficients(t: torch.Tensor, kind: str, a: float) -> Coefficients:
    if kind == "linear":
        alpha, beta = 1.0 - t, t
        dalpha, dbeta = torch.full_like(t, -1.0), torch.ones_like(t)
    else:
        h = 0.5 * math.pi
        alpha, beta = torch.cos(h * t), torch.sin(h * t)
        dalpha, dbeta = -h * beta, h * alpha
    if a == 0.0:
        gamma = dgamma = torch.zeros_like(t)
    else:
        gamma = (a * t * (1.0 - t)).clamp_min(0.0).sqrt()
        dgamma = a * (1.0 - 2.0 * t) / (2.0 * gamma)  # ±inf at t = 0 and t = 1
    return Coefficients(alpha, beta, gamma, dalpha, dbeta, dgamma)


def coefficients(t: torch.Tensor | float, *, kind: str = "linear", gamma_scale: float = 0.0) -> Coefficients:
    """``α(t), β(t), γ(t)`` and ``α'(t), β'(t), γ'(t)`` of the interpolant ``x_t = α x0 + β x1 + γ z``.

    ``linear``: ``α = 1 - t``, ``β = t``; ``trig``: ``α = cos(πt/2)``, ``β = sin(πt/2)``;
    ``γ = √(a t (1 - t))`` with ``γ' = a (1 - 2t) / (2γ)`` (infinite at ``t ∈ {0, 1}`` when ``a > 0``; ``γ = γ' = 0``
    when ``a = 0``).

    Args:
        t: times, a tensor of any shape (floating) or a number (then float64 0-dim tensors are returned).
        kind: ``"linear"`` or ``"trig"``. gamma_scale: ``a >= 0``.

    Returns:
        :class:`Coefficients` ``(alpha, beta, gamma, dalpha, dbeta, dgamma)``, each shaped like ``t``.

    Raises:
        ValueError / TypeError: for a bad ``t``, ``kind`` or ``gamma_scale``.
    """
    a = _check_kind(kind, gamma_scale)
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor(check_float("t", t), dtype=torch.float64)
    check_tensor("t", t, floating=True)
    return _coefficients(t, kind, a)


def _coef_like(t: Any, x: torch.Tensor, kind: str, a: float) -> Coefficients:
    """Coefficients at ``t`` (``(B,)``, 0-dim or a number) reshaped to ``(B, 1, ..., 1)`` for ``x``."""
    c = _coefficients(batch_time(t, x), kind, a)
    return Coefficients(*(append_dims(v, x.ndim) for v in c))


def _check_same(name: str, value: Any, ref: torch.Tensor) -> torch.Tensor:
    return check_tensor(name, value, shape=tuple(ref.shape), floating=True)


def _check_batch(name: str, value: Any) -> torch.Tensor:
    check_tensor(name, value, floating=True)
    if value.ndim < 2:
        raise ValueError(f"{name} must be a batch (B, ...), got shape {tuple(value.shape)}")
    return value


def interpolate(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float, *, kind: str = "linear",
    gamma_scale: float = 0.0, z: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The interpolant and its regression targets.

    ``x_t = α x0 + β x1 + γ z``; velocity target ``∂_t x_t = α' x0 + β' x1 + γ' z``; noise target
    ``ε = (α x0 + γ z) / √(α² + γ²)`` (unit variance, ``x_t = β x1 + √(α² + γ²) ε``). ``ε`` is 0/0 at ``t = 1``
    and the velocity target is infinite at ``t ∈ {0, 1}`` when ``gamma_scale > 0``: use interior times there.

    Args:
        x0: ``(B, ...)`` base noise. x1: ``(B, ...)`` data. t: ``(B,)`` times or a number.
        kind, gamma_scale: the interpolant (see :func:`coefficients`).
        z: ``(B, ...)`` latent noise; required when ``gamma_scale > 0``, ignored when it is 0.

    Returns:
        ``(x_t, velocity_target, noise_target)``, each ``(B, ...)``.

    Raises:
        ValueError / TypeError: on mismatched shapes, a bad ``t``, ``kind``, ``gamma_scale`` or a missing ``z``.
    """
    a = _check_kind(kind, gamma_scale)
    _check_batch("x1", x1)
    _check_same("x0", x0, x1)
    if a > 0.0:
        if z is None:
            raise ValueError("z must be given (a tensor shaped like x1) when gamma_scale > 0")
        _check_same("z", z, x1)
    c = _coef_like(t, x1, kind, a)
    noise = c.alpha * x0 if a == 0.0 else c.alpha * x0 + c.gamma * z
    x_t = noise + c.beta * x1
    velocity = c.dalpha * x0 + c.dbeta * x1 if a == 0.0 else c.dalpha * x0 + c.dbeta * x1 + c.dgamma * z
    return x_t, velocity, noise / (c.alpha.square() + c.gamma.square()).sqrt()


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    hidden: int = 256,
    depth: int = 3,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    dropout: float = 0.0,
    backbone: str = "auto",
    dit_preset: str | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    """Build a velocity or denoiser network ``net(x, t, y=None)`` for data of shape ``data_shape``.

    The same backbone serves both objectives (the output is shaped like ``x``); time is embedded with
    ``t_scale=1000`` since ``t ∈ [0, 1]``. Options as :func:`edifice.generative.flow_matching.build`.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return _backbone(data_shape, t_scale=1000.0, num_classes=num_classes, hidden=hidden, depth=depth,
                     base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                     dropout=dropout, arch=backbone, dit_preset=dit_preset, patch_size=patch_size)


def _check_window(t_min: Any, t_max: Any, *, low_singular: str | None, high_singular: str | None
                  ) -> tuple[float, float]:
    t_min = check_float("t_min", t_min, min=0.0, max=1.0)
    t_max = check_float("t_max", t_max, min=0.0, max=1.0)
    if t_min >= t_max:
        raise ValueError(f"t_min must be < t_max, got t_min={t_min}, t_max={t_max}")
    if low_singular is not None and t_min == 0.0:
        raise ValueError(f"t_min must be > 0 for {low_singular} (singular at t = 0), got t_min=0.0")
    if high_singular is not None and t_max == 1.0:
        raise ValueError(f"t_max must be < 1 for {high_singular} (singular at t = 1), got t_max=1.0")
    return t_min, t_max


def loss(
    net: Callable[..., torch.Tensor],
    x1: torch.Tensor,
    *,
    kind: str = "linear",
    gamma_scale: float = 0.0,
    objective: str = "velocity",
    t_min: float = T_MIN,
    t_max: float = T_MAX,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    t: torch.Tensor | float | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Quadratic regression of the velocity ``b`` or the denoiser ``η`` (Albergo et al.: their unique minimisers).

    ``velocity``: ``mean ‖net(x_t, t) - (α' x0 + β' x1 + γ' z)‖²``; ``denoiser``:
    ``mean ‖net(x_t, t) - (α x0 + γ z)/σ‖²``; means over batch and dimensions, ``t ~ U[t_min, t_max)``.

    Args:
        net: network ``net(x, t, **cond)``. x1: ``(B, ...)`` data batch.
        kind, gamma_scale: the interpolant (see :func:`coefficients`).
        objective: ``"velocity"`` or ``"denoiser"``.
        t_min, t_max: time window, ``0 <= t_min < t_max <= 1``. ``t_min = 0`` / ``t_max = 1`` raise where the target
            is singular (``gamma_scale > 0`` with the velocity objective; ``t_max = 1`` with the denoiser).
        generator: draws ``x0``, ``t`` and ``z`` (in that order; ``z`` only when ``gamma_scale > 0``).
        noise: ``(B, ...)`` override for ``x0``. z: ``(B, ...)`` override for the latent ``z``.
        t: ``(B,)`` or scalar override for the times (must lie in ``[t_min, t_max]``).
        cond: conditioning for ``net``.

    Returns:
        ``(loss, {"loss": loss.detach()})``.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    _check_batch("x1", x1)
    a = _check_kind(kind, gamma_scale)
    check_choice("objective", objective, OBJECTIVES)
    velocity_singular = "the velocity target with gamma_scale > 0" if objective == "velocity" and a > 0 else None
    t_min, t_max = _check_window(
        t_min, t_max, low_singular=velocity_singular,
        high_singular=velocity_singular or ("the denoiser target" if objective == "denoiser" else None))
    cond = check_cond(cond)
    generator = check_generator(generator)
    if noise is None:
        x0 = randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    else:
        x0 = _check_same("noise", noise, x1).to(x1)
    if t is None:
        u = rand((x1.shape[0],), generator=generator, device=x1.device, dtype=x1.dtype)
        t = t_min + (t_max - t_min) * u
    else:
        t = batch_time(t, x1)
        if not bool(((t >= t_min) & (t <= t_max)).all()):  # host sync: losses are entry points
            raise ValueError(f"t must lie in [t_min, t_max] = [{t_min}, {t_max}], "
                             f"got values in [{float(t.min())}, {float(t.max())}]")
    if a > 0.0:
        z = randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype) if z is None else \
            _check_same("z", z, x1).to(x1)
    x_t, velocity, eps = interpolate(x0, x1, t, kind=kind, gamma_scale=a, z=z)
    target = velocity if objective == "velocity" else eps
    value = (call_net(net, x_t, t, cond, f"a {objective}") - target).square().mean()
    return value, {"loss": value.detach()}


def score_from_denoiser(denoiser: torch.Tensor, t: torch.Tensor | float, *, kind: str = "linear",
                        gamma_scale: float = 0.0) -> torch.Tensor:
    """Score ``s = ∇ log ρ_t = -η / σ``, ``σ = √(α² + γ²)`` (Tweedie: ``x_t = β x1 + σ ε``, ``η = E[ε | x_t]``).

    Args:
        denoiser: ``(B, ...)`` ``η(t, x)``. t: ``(B,)`` or a number in ``[0, 1)``.
        kind, gamma_scale: the interpolant.

    Returns:
        ``(B, ...)`` score (infinite at ``t = 1``, where ``σ = 0``).
    """
    a = _check_kind(kind, gamma_scale)
    _check_batch("denoiser", denoiser)
    c = _coef_like(t, denoiser, kind, a)
    return -denoiser / (c.alpha.square() + c.gamma.square()).sqrt()


def velocity_from_denoiser(denoiser: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float, *,
                           kind: str = "linear", gamma_scale: float = 0.0) -> torch.Tensor:
    """Velocity ``b = β' E[x1 | x] + (c/σ) η`` with ``E[x1 | x] = (x - σ η)/β``, ``c = αα' + γγ'``.

    From ``E[x0 | x_t] = (α/σ) η``, ``E[z | x_t] = (γ/σ) η`` (``(x0, z)`` is independent of ``x1``), so
    ``b = E[α' x0 + β' x1 + γ' z | x_t] = (β'/β)(x - σ η) + (αα' + γγ')/σ · η``.

    Args:
        denoiser: ``(B, ...)`` ``η(t, x)``. x: ``(B, ...)`` points. t: ``(B,)`` or a number in ``(0, 1)``.
        kind, gamma_scale: the interpolant.

    Returns:
        ``(B, ...)`` velocity (singular at ``t = 0``, where ``β = 0``, and at ``t = 1``, where ``σ = 0``).
    """
    a = _check_kind(kind, gamma_scale)
    _check_batch("x", x)
    _check_same("denoiser", denoiser, x)
    c = _coef_like(t, x, kind, a)
    sigma = (c.alpha.square() + c.gamma.square()).sqrt()
    return c.dbeta / c.beta * (x - sigma * denoiser) + (c.alpha * c.dalpha + c.gamma * c.dgamma) / sigma * denoiser


def _k(c: Coefficients) -> torch.Tensor:
    """``k = αα' + γγ' - β'(α² + γ²)/β``: ``b - (β'/β) x = -k s``."""
    return c.alpha * c.dalpha + c.gamma * c.dgamma - c.dbeta * (c.alpha.square() + c.gamma.square()) / c.beta


def score_from_velocity(velocity: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float, *,
                        kind: str = "linear", gamma_scale: float = 0.0) -> torch.Tensor:
    """Score from the velocity: ``s = -m``, ``m = (b - (β'/β) x) / (αα' + γγ' - β'(α² + γ²)/β)``.

    Writing ``b = (β'/β) x + (k/σ) η`` (see :func:`velocity_from_denoiser`) with ``k = αα' + γγ' - β'σ²/β`` and
    ``s = -η/σ`` gives ``b - (β'/β) x = -k s``. For ``kind="linear"``, ``a = 0``: ``k = -(1 - t)/t``.

    Args:
        velocity: ``(B, ...)`` ``b(t, x)``. x: ``(B, ...)`` points. t: ``(B,)`` or a number in ``(0, 1)``.
        kind, gamma_scale: the interpolant.

    Returns:
        ``(B, ...)`` score (singular at ``t = 0``, where ``β = 0``, and at ``t = 1``, where ``k = 0``).
    """
    a = _check_kind(kind, gamma_scale)
    _check_batch("x", x)
    _check_same("velocity", velocity, x)
    c = _coef_like(t, x, kind, a)
    return -(velocity - c.dbeta / c.beta * x) / _k(c)


def denoiser_from_velocity(velocity: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float, *,
                           kind: str = "linear", gamma_scale: float = 0.0) -> torch.Tensor:
    """Denoiser ``η = -σ s = σ (b - (β'/β) x) / k`` (inverse of :func:`velocity_from_denoiser`), ``t ∈ (0, 1)``."""
    a = _check_kind(kind, gamma_scale)
    _check_batch("x", x)
    _check_same("velocity", velocity, x)
    c = _coef_like(t, x, kind, a)
    return (c.alpha.square() + c.gamma.square()).sqrt() * (velocity - c.dbeta / c.beta * x) / _k(c)


def drift(output: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float, *, objective: str = "velocity",
          kind: str = "linear", gamma_scale: float = 0.0, diffusion: float = 0.0) -> torch.Tensor:
    """Drift ``b + ε s`` of the sampling SDE ``dX = [b + ε s] dt + √(2ε) dW`` from a network output.

    Args:
        output: ``(B, ...)`` the network's ``b`` (``objective="velocity"``) or ``η`` (``"denoiser"``).
        x: ``(B, ...)`` points. t: ``(B,)`` or a number. objective, kind, gamma_scale: as in :func:`loss`.
        diffusion: ``ε >= 0``; ``0`` returns the ODE velocity ``b`` (no score needed, regular at the ends for the
            velocity objective).

    Returns:
        ``(B, ...)`` drift.
    """
    check_choice("objective", objective, OBJECTIVES)
    _check_kind(kind, gamma_scale)
    eps = check_float("diffusion", diffusion, min=0.0)
    if objective == "velocity":
        b = output
        if eps == 0.0:
            return b
        return b + eps * score_from_velocity(b, x, t, kind=kind, gamma_scale=gamma_scale)
    b = velocity_from_denoiser(output, x, t, kind=kind, gamma_scale=gamma_scale)
    if eps == 0.0:
        return b
    return b + eps * score_from_denoiser(output, t, kind=kind, gamma_scale=gamma_scale)


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 100,
    method: str = "euler",
    objective: str = "velocity",
    kind: str = "linear",
    gamma_scale: float = 0.0,
    diffusion: float = 1.0,
    t_min: float = T_MIN,
    t_max: float = T_MAX,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Integrate the ODE ``dx/dt = b`` or the SDE ``dX = [b + ε s] dt + √(2ε) dW`` on ``[t_min, t_max]``.

    Starts from ``x ~ N(0, I)`` at ``t_min`` (exact at ``t_min = 0``; at ``t_min = 10⁻³`` the law of ``x_t`` differs
    from ``N(0, I)`` by ``O(t_min)``) on a uniform grid of ``steps`` intervals. ODE methods take fixed steps
    (``euler`` 1 network call per step, ``midpoint`` / ``heun`` 2, ``rk4`` 4); ``"sde"`` takes Euler-Maruyama steps
    with ``ε = diffusion`` (1 call per step), the last one without its noise. ``b`` and ``s`` come from the network
    output through :func:`drift`. The loop never synchronises with the host.

    Args:
        net: ``net(x, t, **cond)`` returning ``b`` or ``η`` (any callable).
        shape: ``(B, *data_shape)``. steps: number of uniform time steps.
        method: one of :data:`METHODS`. objective, kind, gamma_scale: as the net was trained (see :func:`loss`).
        diffusion: ``ε >= 0`` of ``"sde"`` (ignored by the ODE methods).
        t_min, t_max: integration window, ``0 <= t_min < t_max <= 1``; an end where the field is singular raises
            (``"sde"`` and ``objective="denoiser"`` need both strictly inside; the velocity ODE may use ``[0, 1]``).
        generator: draws the initial noise and the SDE's increments. cond: conditioning for ``net``.
        callback: called as ``callback({"i": i, "t": t_{i+1}, "x": x})`` after each step.
        noise: ``(B, *data_shape)`` initial ``x``; sets device / dtype unless given explicitly.
        device, dtype: where to sample; default: ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples at ``t_max``.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    steps = check_int("steps", steps, min=1)
    check_choice("method", method, METHODS)
    check_choice("objective", objective, OBJECTIVES)
    a = _check_kind(kind, gamma_scale)
    eps = check_float("diffusion", diffusion, min=0.0)
    sde = method == "sde"
    # b itself is regular at both ends (γγ' = a(1 - 2t)/2 stays finite); the conversions are not.
    low = "method='sde'" if sde else "objective='denoiser'" if objective == "denoiser" else None
    t_min, t_max = _check_window(t_min, t_max, low_singular=low, high_singular=low)
    cond = check_cond(cond)
    generator = check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    x = initial_noise(net, shape, noise, generator, device, dtype)
    ts = torch.linspace(t_min, t_max, steps + 1, device=x.device, dtype=x.dtype)
    what = "a velocity" if objective == "velocity" else "a denoiser"

    def field(t: torch.Tensor, x: torch.Tensor, e: float = 0.0) -> torch.Tensor:
        out = call_net(net, x, batch_time(t, x), cond, what)
        return drift(out, x, t, objective=objective, kind=kind, gamma_scale=a, diffusion=e)

    step = None if sde else STEPPERS[method]
    root = math.sqrt(2.0 * eps)
    for i in range(steps):
        t, dt = ts[i], ts[i + 1] - ts[i]
        if step is not None:
            x = step(field, t, x, dt)
        elif i < steps - 1 and eps > 0.0:
            kick = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = euler_maruyama_step(lambda t, x: field(t, x, eps), lambda t, x: root, t, x, dt, kick)
        else:  # the last SDE step: drift only
            x = x + dt * field(t, x, eps)
        if callback is not None:
            callback({"i": i, "t": ts[i + 1], "x": x})
    return x
