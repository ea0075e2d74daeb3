r"""Denoising diffusion probabilistic models (DDPM): forward noising, posterior, loss, ancestral sampler.

**Time convention:** integer steps ``t ∈ {0, ..., T-1}``, ``t = 0`` least noisy; networks are called
``net(x_t, t.float(), **cond)``. With ``ᾱ_t = Π_{s≤t} (1 - β_s)`` (``schedule.alpha_bar``)::

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)                                    (Ho et al. eq. 4)
    q(x_s | x_t, x_0) = N(c1 x_0 + c2 x_t, β̃ I),   s < t the previous step (ᾱ_s = 1 when s = -1),
    β_{t|s} = 1 - ᾱ_t / ᾱ_s,   β̃ = β_{t|s} (1 - ᾱ_s) / (1 - ᾱ_t),                    (eqs. 6-7)
    c1 = √ᾱ_s β_{t|s} / (1 - ᾱ_t),   c2 = √(1 - β_{t|s}) (1 - ᾱ_s) / (1 - ᾱ_t)

With ``s = t - 1`` these are the usual DDPM quantities; with ``s`` the previous step of a shorter
sequence they give respaced sampling (Nichol & Dhariwal, Sec. 4). The network predicts one of three
targets, related by ``x_t = √ᾱ x_0 + √(1-ᾱ) ε`` and ``v = √ᾱ ε - √(1-ᾱ) x_0`` (Salimans & Ho):
``"eps"`` (ε), ``"x0"`` (x_0) or ``"v"``. The ancestral step samples ``x_s ~ N(μ̃, σ² I)`` with
``σ² = β̃`` (``variance="small"``) or ``β_{t|s}`` (``"large"``); the last step adds no noise.

Schedules are float64; coefficients are formed in float64 and cast to the data's dtype at use.

Example:
    >>> import torch
    >>> from edifice.generative import ddpm
    >>> g = torch.Generator().manual_seed(0)
    >>> net = ddpm.build(data_shape=(2,), hidden=32, depth=1)
    >>> value, logs = ddpm.loss(net, torch.randn(16, 2, generator=g), target="v", generator=g)
    >>> ddpm.sample(net, (4, 2), steps=10, target="v", generator=g).shape
    torch.Size([4, 2])

References:
    Denoising Diffusion Probabilistic Models. Ho, Jain, Abbeel, 2020. arXiv:2006.11239.
    Improved Denoising Diffusion Probabilistic Models. Nichol, Dhariwal, 2021. arXiv:2102.09672.
    Progressive Distillation for Fast Sampling of Diffusion Models (v-prediction). Salimans, Ho, 2022.
    arXiv:2202.00512.
    Common Diffusion Noise Schedules and Sample Steps are Flawed (timestep spacings). Lin, Liu, Li, Yang,
    2024. arXiv:2305.08891.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_steps, check_choice, check_cond, check_float, check_int, check_tensor, randint,
    randn,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import coefficient, hi_dtype
from edifice.generative._common import initial_noise as _start
from edifice.schedules import NoiseSchedule, make_schedule

__all__ = [
    "TARGETS", "VARIANCES", "SPACINGS", "build", "timesteps", "q_sample", "posterior_mean_variance",
    "predict_x0", "predict_eps", "convert_prediction", "prediction_target", "loss", "ancestral_step", "sample",
]

TARGETS = ("eps", "x0", "v")
VARIANCES = ("small", "large")
SPACINGS = ("linspace", "leading", "trailing")


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
    """Build a denoiser ``net(x_t, t, y=None)`` for data of shape ``data_shape`` (``t`` in steps ``0..T-1``).

    Vector data ``(D,)`` gets a :class:`~edifice.blocks.ResMLP` (``hidden``, ``depth``); square images
    ``(C, H, H)`` get a :class:`~edifice.blocks.UNet` (``base_channels``, ``channel_mults``,
    ``num_res_blocks``). Both embed time with ``t_scale=1``. The output has the data's shape and is read as
    the prediction target chosen in :func:`loss` / :func:`sample`.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``.
        num_classes: number of labels for class conditioning (``y=None`` means the null label), or None.
        hidden, depth: width and number of residual blocks of the ResMLP (vector data).
        base_channels, channel_mults, num_res_blocks: UNet widths, per-level multipliers, blocks per level.
        dropout: dropout probability in ``[0, 1)``.
        backbone: ``"auto"`` (ResMLP for vectors, UNet for images), ``"mlp"``, ``"unet"`` or ``"dit"`` (a
            Diffusion Transformer; ``dit_preset`` and ``patch_size`` choose it, see :func:`edifice.blocks.backbone`).

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return _backbone(data_shape, t_scale=1.0, num_classes=num_classes, hidden=hidden, depth=depth,
                    base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                    dropout=dropout, arch=backbone,
                     dit_preset=dit_preset, patch_size=patch_size)


# ----------------------------------------------------------------------------- shared helpers


@functools.lru_cache(maxsize=1)
def _default_schedule() -> NoiseSchedule:
    return make_schedule("linear", 1000)


def _schedule(schedule: Any) -> NoiseSchedule:
    if schedule is None:
        return _default_schedule()
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be a NoiseSchedule or None, got {type(schedule).__name__}")
    return schedule


_hi = hi_dtype


def _c(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cast a coefficient (0-dim or ``(B,)``) to ``x``'s dtype, shaped to broadcast against ``x``."""
    return append_dims(coef.to(x.dtype), x.ndim)


def _x0_eps(out: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchecked core of :func:`convert_prediction`; ``ab`` 0-dim or ``(B,)``, any float dtype."""
    a, s = _c(ab.sqrt(), x_t), _c((1.0 - ab).sqrt(), x_t)
    if target == "eps":
        return (x_t - s * out) / a, out
    if target == "x0":
        return out, (x_t - a * out) / s
    return a * x_t - s * out, a * out + s * x_t  # v


def _alpha_bar_arg(name: str, value: Any, x: torch.Tensor) -> torch.Tensor:
    """A python float in (0, 1], a 0-dim or a ``(B,)`` floating tensor -> tensor on ``x.device``."""
    return coefficient(name, value, x, min=0.0, max=1.0, min_open=True)


def _steps_arg(t: Any, x: torch.Tensor, T: int, name: str = "t", low: int = 0) -> torch.Tensor:
    """Integer steps (int, 0-dim or ``(B,)`` integer tensor) in ``[low, T)`` -> ``(B,)`` long on ``x.device``."""
    t = batch_steps(t, x, name)
    if bool(((t < low) | (t >= T)).any()):  # host sync: public entry points only, never in a sampler loop
        raise ValueError(f"{name} must be in [{low}, {T}), got values in [{int(t.min())}, {int(t.max())}]")
    return t.to(device=x.device, dtype=torch.long)


def _gather_ab(schedule: NoiseSchedule, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``ᾱ`` at steps ``t`` (``-1`` gives 1), ``(B,)`` in float64 (float32 on mps) on ``x.device``."""
    table = torch.cat([schedule.alpha_bar.new_ones(1), schedule.alpha_bar]).to(x.device, _hi(x.device))
    return table[t + 1]


def _check_clip(clip_x0: Any) -> float | None:
    return None if clip_x0 is None else check_float("clip_x0", clip_x0, min=0.0, min_open=True)


def timesteps(T: int, steps: int, *, spacing: str = "linspace") -> torch.Tensor:
    """The ``steps`` sampling timesteps out of ``T``, descending, as a long tensor (on cpu).

    The spacings of Lin et al. (2024), Table 2, identical to diffusers' ``timestep_spacing``
    (``steps_offset=0``): ``"linspace"`` ``round(linspace(0, T-1, steps))`` (starts at ``T-1``, ends at 0;
    ``steps=1`` gives ``[0]``); ``"leading"`` ``arange(steps) * (T // steps)`` (DDIM paper, ends at 0);
    ``"trailing"`` ``round(arange(T, 0, -T/steps)) - 1`` (starts at ``T-1``). After the last timestep the
    samplers step to ``x_0`` (``ᾱ = 1``). ``steps == T`` gives ``T-1, ..., 0`` for every spacing.

    Raises:
        ValueError / TypeError: for a bad ``T``, ``steps`` (must be in ``[1, T]``) or ``spacing``.
    """
    check_int("T", T, min=1)
    check_int("steps", steps, min=1, max=T)
    check_choice("spacing", spacing, SPACINGS)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(steps) * (T // steps))[::-1]
    else:  # [:steps] drops the stray extra point np.arange can produce by rounding (diffusers keeps it)
        ts = np.round(np.arange(T, 0, -T / steps))[:steps] - 1
    return torch.from_numpy(ts.astype(np.int64))


def q_sample(x0: torch.Tensor, t: Any, noise: torch.Tensor, schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Draw ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε`` from ``q(x_t | x_0)`` (Ho et al. eq. 4).

    Args:
        x0: ``(B, ...)`` clean data. t: ``(B,)`` integer steps in ``[0, T)`` (or an int).
        noise: ``ε``, same shape as ``x0``. schedule: default ``make_schedule("linear", 1000)``.

    Returns:
        ``(B, ...)`` noisy data in ``x0``'s dtype.
    """
    schedule = _schedule(schedule)
    check_tensor("x0", x0, floating=True)
    check_tensor("noise", noise, shape=tuple(x0.shape), floating=True)
    ab = _gather_ab(schedule, _steps_arg(t, x0, schedule.T), x0)
    return _c(ab.sqrt(), x0) * x0 + _c((1.0 - ab).sqrt(), x0) * noise


def posterior_mean_variance(
    x0: torch.Tensor, x_t: torch.Tensor, t: Any, schedule: NoiseSchedule | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. eqs. 6-7).

    Returns:
        ``(mean (B, ...), var (B, 1, ..., 1), log_var (B, 1, ..., 1))``; ``var = 0`` at ``t = 0`` and
        ``log_var`` there uses the variance at ``t = 1`` (``schedule.posterior_log_variance_clipped``).
    """
    schedule = _schedule(schedule)
    check_tensor("x_t", x_t, floating=True)
    check_tensor("x0", x0, shape=tuple(x_t.shape), floating=True)
    t = _steps_arg(t, x_t, schedule.T)
    c1, c2, var, _ = _posterior(_gather_ab(schedule, t, x_t), _gather_ab(schedule, t - 1, x_t))
    log_var = schedule.posterior_log_variance_clipped.to(x_t.device)[t]
    return _c(c1, x_t) * x0 + _c(c2, x_t) * x_t, _c(var, x_t), _c(log_var, x_t)


def _posterior(ab_t: torch.Tensor, ab_s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(c1, c2, β̃, β_{t|s})`` of ``q(x_s | x_t, x_0)`` from ``ᾱ_t`` and ``ᾱ_s`` (see the module docstring)."""
    beta = 1.0 - ab_t / ab_s
    c1 = ab_s.sqrt() * beta / (1.0 - ab_t)
    c2 = (1.0 - beta).sqrt() * (1.0 - ab_s) / (1.0 - ab_t)
    return c1, c2, beta * (1.0 - ab_s) / (1.0 - ab_t), beta


def convert_prediction(
    out: torch.Tensor, x_t: torch.Tensor, alpha_bar: Any, *, target: str = "eps"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output into ``(x0, eps)`` predictions at noise level ``ᾱ``.

    ``eps``: ``x_0 = (x_t - √(1-ᾱ) ε) / √ᾱ``; ``x0``: ``ε = (x_t - √ᾱ x_0) / √(1-ᾱ)``;
    ``v``: ``x_0 = √ᾱ x_t - √(1-ᾱ) v``, ``ε = √ᾱ v + √(1-ᾱ) x_t``.

    Args:
        out, x_t: ``(B, ...)``. alpha_bar: a float in ``(0, 1]``, a 0-dim or a ``(B,)`` tensor.
        target: ``"eps"``, ``"x0"`` or ``"v"``.
    """
    check_choice("target", target, TARGETS)
    check_tensor("x_t", x_t, floating=True)
    check_tensor("out", out, shape=tuple(x_t.shape), floating=True)
    return _x0_eps(out, x_t, _alpha_bar_arg("alpha_bar", alpha_bar, x_t), target)


def prediction_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: Any, *, target: str = "eps") -> torch.Tensor:
    """The regression target for ``target``: ``ε``, ``x_0`` or ``v = √ᾱ ε - √(1-ᾱ) x_0`` (Salimans & Ho).

    Args:
        x0, eps: ``(B, ...)``. alpha_bar: a float in ``(0, 1]``, a 0-dim or a ``(B,)`` tensor.
    """
    check_choice("target", target, TARGETS)
    check_tensor("x0", x0, floating=True)
    check_tensor("eps", eps, shape=tuple(x0.shape), floating=True)
    ab = _alpha_bar_arg("alpha_bar", alpha_bar, x0)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    return _c(ab.sqrt(), x0) * eps - _c((1.0 - ab).sqrt(), x0) * x0


def predict_x0(x_t: torch.Tensor, t: Any, out: torch.Tensor, schedule: NoiseSchedule | None = None, *,
               target: str = "eps") -> torch.Tensor:
    """``x_0`` predicted from a network output at integer steps ``t`` (see :func:`convert_prediction`)."""
    schedule = _schedule(schedule)
    check_tensor("x_t", x_t, floating=True)
    return convert_prediction(out, x_t, _gather_ab(schedule, _steps_arg(t, x_t, schedule.T), x_t), target=target)[0]


def predict_eps(x_t: torch.Tensor, t: Any, out: torch.Tensor, schedule: NoiseSchedule | None = None, *,
                target: str = "eps") -> torch.Tensor:
    """``ε`` predicted from a network output at integer steps ``t`` (see :func:`convert_prediction`)."""
    schedule = _schedule(schedule)
    check_tensor("x_t", x_t, floating=True)
    return convert_prediction(out, x_t, _gather_ab(schedule, _steps_arg(t, x_t, schedule.T), x_t), target=target)[1]


def loss(
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    schedule: NoiseSchedule | None = None,
    target: str = "eps",
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Simple DDPM loss ``E_{t, ε} ‖net(x_t, t) - target‖²`` (Ho et al. eq. 14, ``L_simple``), mean over elements.

    Args:
        net: ``net(x_t, t.float(), **cond)``. x0: ``(B, *data_shape)`` clean data.
        schedule: default ``make_schedule("linear", 1000)``. target: ``"eps"``, ``"x0"`` or ``"v"``.
        generator: draws ``t ~ U{0..T-1}`` and ``ε ~ N(0, I)`` unless given as ``t`` / ``noise``.
        cond: extra keyword arguments for ``net`` (e.g. ``{"y": labels}``).

    Returns:
        ``(loss, {"loss": loss.detach()})``.

    Raises:
        ValueError / TypeError: bad ``target``, ``t`` (integer, in ``[0, T)``, shape ``(B,)``), ``noise`` shape,
        ``schedule``, ``cond`` or ``x0``.
    """
    schedule = _schedule(schedule)
    check_choice("target", target, TARGETS)
    check_tensor("x0", x0, floating=True)
    cond = check_cond(cond)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (B, *data_shape), got {tuple(x0.shape)}")
    if t is None:
        t = randint(0, schedule.T, (x0.shape[0],), generator=generator, device=x0.device)
    else:
        t = _steps_arg(t, x0, schedule.T)
    if noise is None:
        noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    check_tensor("noise", noise, shape=tuple(x0.shape), floating=True)
    ab = _gather_ab(schedule, t, x0)
    x_t = _c(ab.sqrt(), x0) * x0 + _c((1.0 - ab).sqrt(), x0) * noise
    out = net(x_t, t.to(x0.dtype), **cond)
    value = (out - prediction_target(x0, noise, ab, target=target)).square().mean()
    return value, {"loss": value.detach()}


# ----------------------------------------------------------------------------- reverse process


def _ancestral(x_t: torch.Tensor, out: torch.Tensor, ab_t: torch.Tensor, ab_s: torch.Tensor, target: str,
               variance: str, clip_x0: float | None, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchecked, sync-free core of :func:`ancestral_step`; returns ``(x_s, x0_pred)``."""
    x0 = _x0_eps(out, x_t, ab_t, target)[0]
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    c1, c2, var, beta = _posterior(ab_t, ab_s)
    mean = _c(c1, x_t) * x0 + _c(c2, x_t) * x_t
    if noise is None:
        return mean, x0
    std = (var if variance == "small" else beta).sqrt() * (ab_s < 1)  # no noise on the step to x_0
    return mean + _c(std, x_t) * noise, x0


def ancestral_step(
    x_t: torch.Tensor,
    t: Any,
    out: torch.Tensor,
    schedule: NoiseSchedule | None = None,
    *,
    t_prev: Any = None,
    target: str = "eps",
    variance: str = "small",
    clip_x0: float | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral step ``x_s ~ N(μ̃(x_t, x̂_0), σ² I)`` from step ``t`` to ``s = t_prev`` (Ho et al. Alg. 2).

    Args:
        x_t: ``(B, ...)``. t: ``(B,)`` integer steps in ``[0, T)`` (or an int). out: network output at ``t``.
        schedule: default ``make_schedule("linear", 1000)``.
        t_prev: previous steps, ``-1 <= t_prev < t`` (``-1`` = the clean data); default ``t - 1``. Larger
            jumps give respaced sampling.
        target: what ``out`` predicts. variance: ``"small"`` (``σ² = β̃``) or ``"large"`` (``σ² = β_{t|s}``).
        clip_x0: clamp the predicted ``x_0`` to ``[-clip_x0, clip_x0]``; None = no clipping.
        noise: ``(B, ...)`` standard normal draw; required unless every sample steps to ``t_prev = -1``,
            where no noise is added.

    Returns:
        ``(B, ...)`` sample at ``t_prev``. Validation makes one host sync; :func:`sample` uses a sync-free core.

    Raises:
        ValueError / TypeError: bad ``target`` / ``variance`` / ``clip_x0``, steps out of range or not integer,
        ``t_prev >= t``, shape mismatches, or missing ``noise``.
    """
    schedule = _schedule(schedule)
    check_choice("target", target, TARGETS)
    check_choice("variance", variance, VARIANCES)
    clip_x0 = _check_clip(clip_x0)
    check_tensor("x_t", x_t, floating=True)
    check_tensor("out", out, shape=tuple(x_t.shape), floating=True)
    t = _steps_arg(t, x_t, schedule.T)
    t_prev = t - 1 if t_prev is None else _steps_arg(t_prev, x_t, schedule.T, name="t_prev", low=-1)
    if bool((t_prev >= t).any()):
        raise ValueError("t_prev must be smaller than t for every sample")
    if noise is None and bool((t_prev >= 0).any()):
        raise ValueError("noise is required for an ancestral step that does not end at x_0 (t_prev >= 0)")
    if noise is not None:
        check_tensor("noise", noise, shape=tuple(x_t.shape), floating=True)
    ab_t, ab_s = _gather_ab(schedule, t, x_t), _gather_ab(schedule, t_prev, x_t)
    return _ancestral(x_t, out, ab_t, ab_s, target, variance, clip_x0, noise)[0]


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    schedule: NoiseSchedule | None = None,
    target: str = "eps",
    variance: str = "small",
    spacing: str = "linspace",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Ancestral sampling from ``x_T ~ N(0, I)`` (Ho et al. Alg. 2), optionally respaced (Nichol & Dhariwal).

    Args:
        net: ``net(x, t (B,) float, **cond)`` returning the ``target`` prediction.
        shape: ``(B, *data_shape)``. steps: number of steps, ``None`` = all ``T``; fewer steps use
            :func:`timesteps` with ``spacing`` and the respaced posterior. schedule: default linear, T = 1000.
        target, variance, clip_x0: as in :func:`ancestral_step`.
        generator: draws the initial and per-step noise (no draw for the final step).
        cond: conditioning for ``net``. callback: called after each step with
            ``dict(i, t (int), x, x0)``. noise: ``x_T``, sets device / dtype unless given explicitly.
        device, dtype: default: ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples, computed under ``torch.no_grad()``; the loop makes no host sync.

    Raises:
        ValueError / TypeError: bad ``steps`` (in ``[1, T]``), ``spacing``, ``target``, ``variance``,
        ``clip_x0``, ``shape``, ``noise`` shape, ``dtype``, ``cond`` or a non-callable ``net``.
    """
    schedule = _schedule(schedule)
    check_choice("target", target, TARGETS)
    check_choice("variance", variance, VARIANCES)
    clip_x0 = _check_clip(clip_x0)
    cond = check_cond(cond)
    steps = schedule.T if steps is None else check_int("steps", steps, min=1, max=schedule.T)
    ts = timesteps(schedule.T, steps, spacing=spacing)
    x = _start(net, shape, noise, generator, device, dtype)

    def update(x, out, ab_t, ab_s, z):
        return _ancestral(x, out, ab_t, ab_s, target, variance, clip_x0, z)

    return _reverse_chain(net, x, ts, schedule, cond, update, noisy=True, generator=generator, callback=callback)


def _reverse_chain(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    ts: torch.Tensor,
    schedule: NoiseSchedule,
    cond: dict[str, Any],
    update: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    *,
    noisy: bool,
    generator: torch.Generator | None,
    callback: Callable[[dict[str, Any]], None] | None,
) -> torch.Tensor:
    """The one loop of the DDPM / DDIM samplers: ``x <- update(x, net(x, t), ᾱ_t, ᾱ_prev, z)`` over ``ts``.

    ``ts`` is descending; the last step lands on ``x0`` (``ᾱ_prev = 1``) and draws no noise. ``z`` is fresh
    ``N(0, I)`` from ``generator`` when ``noisy``, else None. Schedule values are gathered once before the loop,
    so the loop makes no host sync.
    """
    ab = _gather_ab(schedule, ts.to(x.device), x)  # (steps,)
    ab_prev = torch.cat([ab[1:], ab.new_ones(1)])  # (steps,)
    t_in = ts.to(device=x.device, dtype=x.dtype)
    last = len(ts) - 1
    for i, t in enumerate(ts.tolist()):
        out = net(x, t_in[i].expand(x.shape[0]), **cond)
        z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if noisy and i < last else None
        x, x0 = update(x, out, ab[i], ab_prev[i], z)
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x
