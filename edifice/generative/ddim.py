r"""Denoising diffusion implicit models (DDIM): the non-Markovian sampler for a DDPM-trained network.

**Time convention:** integer steps ``t ∈ {0, ..., T-1}``, ``t = 0`` least noisy, as in
:mod:`edifice.generative.ddpm`; networks are called ``net(x_t, t.float(), **cond)``. DDIM uses the same
network and loss as DDPM (``ddim.build is ddpm.build``, ``ddim.loss is ddpm.loss``).

One step from ``ᾱ_t`` to ``ᾱ_s`` (``s`` the previous timestep; ``ᾱ_s = 1`` after the last one), Song et al.
eqs. (12) and (16)::

    x̂_0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t
    σ   = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)
    x_s = √ᾱ_s x̂_0 + √(1 - ᾱ_s - σ²) ε + σ z,     z ~ N(0, I)

``η = 0`` is the deterministic DDIM (an Euler step of the probability-flow ODE in the variables
``x/√ᾱ``, ``√((1-ᾱ)/ᾱ)``); ``η = 1`` gives ``σ²`` equal to the (respaced) DDPM posterior variance ``β̃``,
and the step then equals the ancestral DDPM step. The last step lands on ``x̂_0`` exactly. Running the
``η = 0`` map forwards in time (:func:`invert`) encodes data into noise.

Example:
    >>> import torch
    >>> from edifice.generative import ddim
    >>> net = ddim.build(data_shape=(2,), hidden=32, depth=1)
    >>> x = ddim.sample(net, (4, 2), steps=20, eta=0.0, spacing="trailing")
    >>> latent = ddim.invert(net, x, steps=20, spacing="trailing")
    >>> latent.shape
    torch.Size([4, 2])

References:
    Denoising Diffusion Implicit Models. Song, Meng, Ermon, 2021. arXiv:2010.02502.
    Diffusion Models Beat GANs on Image Synthesis (DDIM inversion, App. F). Dhariwal, Nichol, 2021.
    arXiv:2105.05233.
    Common Diffusion Noise Schedules and Sample Steps are Flawed (timestep spacings). Lin, Liu, Li, Yang,
    2024. arXiv:2305.08891.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from edifice._checks import check_choice, check_cond, check_float, check_int, check_tensor
from edifice.generative.ddpm import (
    SPACINGS, TARGETS, _alpha_bar_arg, _c, _check_clip, _gather_ab, _reverse_chain, _schedule, _start, _x0_eps,
    build, loss, timesteps,
)
from edifice.schedules import NoiseSchedule

__all__ = ["SPACINGS", "TARGETS", "build", "loss", "timesteps", "ddim_sigma", "ddim_step", "sample", "invert"]


def _sigma(ab_t: torch.Tensor, ab_s: torch.Tensor, eta: float) -> torch.Tensor:
    if eta == 0.0:  # also keeps inversion (ᾱ_s < ᾱ_t) free of the square root of a negative number
        return torch.zeros_like(ab_t * ab_s)
    return eta * ((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)).clamp(min=0.0).sqrt()


def ddim_sigma(alpha_bar_t: Any, alpha_bar_prev: Any, eta: float) -> torch.Tensor:
    """DDIM noise scale ``σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)`` (Song et al. eq. 16).

    ``σ² `` with ``η = 1`` is the DDPM posterior variance ``β̃`` between the two steps.

    Args:
        alpha_bar_t: ``ᾱ_t`` in ``(0, 1)``, a float or a floating tensor.
        alpha_bar_prev: ``ᾱ_s >= ᾱ_t`` (1 for the final step), same kind.
        eta: ``η`` in ``[0, 1]``.

    Returns:
        ``σ`` as a tensor broadcast from the inputs (float64 for python floats).

    Raises:
        ValueError / TypeError: ``eta`` outside ``[0, 1]``; for floats, ``ᾱ`` outside the stated ranges.
    """
    eta = check_float("eta", eta, min=0.0, max=1.0)
    ab = []
    for name, value in (("alpha_bar_t", alpha_bar_t), ("alpha_bar_prev", alpha_bar_prev)):
        if isinstance(value, torch.Tensor):
            ab.append(check_tensor(name, value, floating=True))
        else:
            ab.append(torch.tensor(check_float(name, value, min=0.0, max=1.0, min_open=True), dtype=torch.float64))
    floats = not isinstance(alpha_bar_t, torch.Tensor) and not isinstance(alpha_bar_prev, torch.Tensor)
    if floats and not alpha_bar_t < 1.0 or floats and alpha_bar_prev < alpha_bar_t:
        raise ValueError(f"alpha_bar_t and alpha_bar_prev must satisfy 0 < alpha_bar_t <= alpha_bar_prev <= 1 "
                         f"and alpha_bar_t < 1, got alpha_bar_t={alpha_bar_t}, alpha_bar_prev={alpha_bar_prev}")
    return _sigma(ab[0], ab[1].to(ab[0].device), eta)


def _ddim(x_t: torch.Tensor, eps: torch.Tensor, ab_t: torch.Tensor, ab_s: torch.Tensor, eta: float,
          noise: torch.Tensor | None, clip_x0: float | None,
          x0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchecked, sync-free core of :func:`ddim_step`; returns ``(x_s, x0_pred)``.

    ``x0``: the network's own ``x̂_0`` when it predicts ``x0`` or ``v`` (as diffusers' scheduler uses it);
    recomputing it from ``ε`` divides by ``√ᾱ_t``, which loses float32 precision where ``ᾱ_t`` is tiny (the
    first step of a cosine schedule, ``ᾱ ≈ 2e-9``).
    """
    if x0 is None:
        x0 = _x0_eps(eps, x_t, ab_t, "eps")[0]
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    sigma = _sigma(ab_t, ab_s, eta)
    x_s = _c(ab_s.sqrt(), x_t) * x0 + _c((1.0 - ab_s - sigma.square()).clamp(min=0.0).sqrt(), x_t) * eps
    if noise is not None:
        x_s = x_s + _c(sigma, x_t) * noise
    return x_s, x0


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar_t: Any,
    alpha_bar_prev: Any,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """One DDIM step ``x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s-σ²) ε + σ z`` (Song et al. eq. 12).

    Args:
        x_t: ``(B, ...)`` current sample. eps: ``(B, ...)`` predicted noise at ``x_t``.
        alpha_bar_t, alpha_bar_prev: ``ᾱ_t`` and ``ᾱ_s`` — python floats in ``(0, 1]``, 0-dim or ``(B,)``
            floating tensors (not range-checked, to stay sync-free). ``alpha_bar_prev = 1`` returns ``x̂_0``.
        eta: ``η`` in ``[0, 1]``; 0 is deterministic, 1 matches DDPM's ancestral step.
        noise: ``z``, ``(B, ...)`` standard normal; required when ``eta > 0``. It is really added as ``σ z``.
        clip_x0: clamp ``x̂_0`` to ``[-clip_x0, clip_x0]`` (``ε`` is kept, as in diffusers); None = off.

    Returns:
        ``(B, ...)`` the sample at the previous timestep.

    Raises:
        ValueError: bad ``eta`` / ``clip_x0`` / ``alpha_bar`` values, shape mismatches, ``noise`` missing
        when ``eta > 0``. TypeError: non-tensor or non-floating inputs.
    """
    eta = check_float("eta", eta, min=0.0, max=1.0)
    clip_x0 = _check_clip(clip_x0)
    check_tensor("x_t", x_t, floating=True)
    check_tensor("eps", eps, shape=tuple(x_t.shape), floating=True)
    if eta > 0 and noise is None:
        raise ValueError(f"noise is required when eta > 0, got eta={eta} and noise=None")
    if noise is not None:
        check_tensor("noise", noise, shape=tuple(x_t.shape), floating=True)
    ab_t = _alpha_bar_arg("alpha_bar_t", alpha_bar_t, x_t)
    ab_s = _alpha_bar_arg("alpha_bar_prev", alpha_bar_prev, x_t)
    return _ddim(x_t, eps, ab_t, ab_s, eta, noise, clip_x0)[0]


def _setup(schedule: Any, steps: Any, spacing: Any, target: Any, cond: Any) -> tuple[NoiseSchedule, torch.Tensor, dict]:
    schedule = _schedule(schedule)
    check_int("steps", steps, min=1, max=schedule.T)
    check_choice("spacing", spacing, SPACINGS)
    check_choice("target", target, TARGETS)
    return schedule, timesteps(schedule.T, steps, spacing=spacing), check_cond(cond)


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    schedule: NoiseSchedule | None = None,
    eta: float = 0.0,
    spacing: str = "linspace",
    target: str = "eps",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """DDIM sampling from ``x_T ~ N(0, I)`` over :func:`timesteps` ``(T, steps, spacing)`` (Song et al. Sec. 4).

    Args:
        net: ``net(x, t (B,) float, **cond)`` returning the ``target`` prediction (``"eps"``, ``"x0"``, ``"v"``).
        shape: ``(B, *data_shape)``. steps: number of network calls, in ``[1, T]``.
        schedule: default ``make_schedule("linear", 1000)``. eta: ``η`` in ``[0, 1]``.
        spacing: ``"linspace"``, ``"leading"`` or ``"trailing"``. clip_x0: as in :func:`ddim_step`.
        generator: draws ``x_T`` (unless ``noise`` is given) and, for ``eta > 0``, one ``z`` per step except
            the last (the same draws as :func:`edifice.generative.ddpm.sample`, so ``eta = 1`` reproduces it).
        cond: conditioning for ``net``. callback: ``dict(i, t (int), x, x0)`` after each step.
        noise: ``x_T``; sets device / dtype unless given. device, dtype: default the net's, else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples, computed under ``torch.no_grad()``; the loop makes no host sync.

    Raises:
        ValueError / TypeError: bad ``steps`` (in ``[1, T]``), ``spacing``, ``eta``, ``target``, ``clip_x0``,
        ``shape``, ``noise`` shape, ``cond`` or a non-callable ``net``.
    """
    schedule, ts, cond = _setup(schedule, steps, spacing, target, cond)
    eta = check_float("eta", eta, min=0.0, max=1.0)
    clip_x0 = _check_clip(clip_x0)
    x = _start(net, shape, noise, generator, device, dtype)

    def update(x, out, ab_t, ab_s, z):
        if target == "eps":
            return _ddim(x, out, ab_t, ab_s, eta, z, clip_x0)
        x0, eps = _x0_eps(out, x, ab_t, target)
        return _ddim(x, eps, ab_t, ab_s, eta, z, clip_x0, x0=x0)

    return _reverse_chain(net, x, ts, schedule, cond, update, noisy=eta > 0, generator=generator,
                          callback=callback)


@torch.no_grad()
def invert(
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    steps: int = 50,
    schedule: NoiseSchedule | None = None,
    spacing: str = "linspace",
    target: str = "eps",
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """DDIM inversion: run the deterministic (``η = 0``) map from data to noise over the same timesteps.

    The step from ``ᾱ_s`` to the noisier ``ᾱ_t`` uses ``ε = net(x_s, t)`` — the prediction at the step's
    noisy end, as in diffusers' ``DDIMInverseScheduler`` — so that ``sample(net, ..., noise=invert(net, x0))``
    with the same ``steps`` / ``spacing`` reconstructs ``x0`` up to a discretisation error that falls as
    ``steps`` grows.

    Args:
        net: ``net(x, t (B,) float, **cond)``. x0: ``(B, *data_shape)`` data (sets device and dtype).
        steps, schedule, spacing, target, cond: as in :func:`sample`. callback: ``dict(i, t (int), x)``.

    Returns:
        ``(B, *data_shape)`` the latent ``x_T`` at the first (noisiest) sampling timestep (under ``no_grad``).

    Raises:
        ValueError / TypeError: bad ``steps``, ``spacing``, ``target``, ``x0``, ``cond`` or ``net``.
    """
    schedule, ts, cond = _setup(schedule, steps, spacing, target, cond)
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
    check_tensor("x0", x0, floating=True)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (B, *data_shape), got {tuple(x0.shape)}")
    ts = ts.flip(0)  # ascending
    ab = _gather_ab(schedule, ts.to(x0.device), x0)  # (steps,)
    ab_from = torch.cat([ab.new_ones(1), ab[:-1]])  # (steps,)
    t_in = ts.to(device=x0.device, dtype=x0.dtype)
    x = x0
    for i, t in enumerate(ts.tolist()):
        out = net(x, t_in[i].expand(x.shape[0]), **cond)
        eps = out if target == "eps" else _x0_eps(out, x, ab[i], target)[1]
        x = _ddim(x, eps, ab_from[i], ab[i], 0.0, None, None)[0]
        if callback is not None:
            callback(dict(i=i, t=t, x=x))
    return x
