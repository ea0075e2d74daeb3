r"""Progressive distillation (Salimans & Ho 2022): halve a DDIM sampler's steps, one round at a time.

**Time convention:** DDPM's integer steps ``t ∈ {0, ..., T-1}``, ``t = 0`` least noisy, ``t = -1`` the clean
data (``ᾱ = 1``); networks are DDPM networks called ``net(z_t, t.float(), **cond)`` that predict one of
:data:`TARGETS` (``"eps"``, ``"x0"`` or ``"v"``), exactly as in :mod:`edifice.generative.ddpm`. Write
``α_t = √ᾱ_t``, ``σ_t = √(1-ᾱ_t)``, so ``z_t = α_t x + σ_t ε``.

A student with ``N`` steps samples with deterministic DDIM (``η = 0``) over the **trailing** grid
``ddpm.timesteps(T, N, spacing="trailing")``, which starts at ``T-1``; the trailing grid of ``2N`` steps
contains it (every other point, with the exceptions stated in :func:`distillation_grid`), so each
student step ``t -> t''`` covers two teacher steps ``t -> t' -> t''`` of the ``2N``-step teacher.
Algorithm 2 of Salimans & Ho regresses the student's ``x̂`` on the point that makes **one** DDIM step land
where the teacher's **two** land::

    z_{t'}  = α_{t'} x̂_T(z_t)    + σ_{t'} ε̂_T(z_t)           (teacher DDIM step t -> t')
    z_{t''} = α_{t''} x̂_T(z_{t'}) + σ_{t''} ε̂_T(z_{t'})       (teacher DDIM step t' -> t'')
    x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t)
    L = w(λ_t) ‖x̃ - x̂_S(z_t)‖²,   w = max(SNR_t, 1)  ("truncated SNR", Sec. 4)

(``t'' = -1`` gives ``x̃ = z_{t''}``, the teacher's two-step sample). Each round initialises the student as a
copy of the teacher, trains it with :func:`loss`, and makes it the next round's teacher; the rounds loop is
the user's (see ``edifice_tests/generative/test_progressive_distillation.py``), not this file's.

**Targets.** Any DDPM target works, but ``"v"`` (or ``"x0"``) is recommended: the first student step starts
at ``ᾱ_{T-1} ≈ 0`` and an ``"eps"`` network's ``x̂ = (z_t - σ_t ε̂) / α_t`` divides by ``α_{T-1}`` (about
0.006 for the linear schedule, 5e-5 for the cosine one), so the few-step (above all one-step)
student's output is dominated by amplified ``ε̂`` errors; Salimans & Ho (Sec. 4) introduce v-prediction for
this reason.

Example (one distillation step of a tiny v-prediction DDPM, then 1-step sampling):
    >>> import copy, torch
    >>> from edifice.generative import progressive_distillation as pd
    >>> g = torch.Generator().manual_seed(0)
    >>> teacher = pd.build(data_shape=(2,), hidden=32, depth=1)
    >>> student = copy.deepcopy(teacher)
    >>> value, logs = pd.loss(student, torch.randn(16, 2, generator=g), teacher=teacher, student_steps=1,
    ...                       target="v", generator=g)
    >>> value.backward()
    >>> pd.sample(student, (4, 2), steps=1, target="v", generator=g).shape
    torch.Size([4, 2])

References:
    Progressive Distillation for Fast Sampling of Diffusion Models. Salimans, Ho, 2022. arXiv:2202.00512.
    Denoising Diffusion Implicit Models. Song, Meng, Ermon, 2021. arXiv:2010.02502.
    Common Diffusion Noise Schedules and Sample Steps are Flawed (trailing timesteps). Lin, Liu, Li, Yang,
    2024. arXiv:2305.08891.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from edifice._checks import check_choice, check_cond, check_int, check_tensor, randint, randn
from edifice.generative import ddim, ddpm
from edifice.generative._common import call_net
from edifice.generative.ddpm import TARGETS, _c, _gather_ab, _schedule, _steps_arg, _x0_eps
from edifice.schedules import NoiseSchedule

__all__ = ["TARGETS", "WEIGHTINGS", "build", "distillation_grid", "distillation_target", "loss_weight", "loss",
           "sample"]

WEIGHTINGS = ("truncated_snr", "snr+1", "snr", "none")


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
    """Build a DDPM network ``net(z_t, t, y=None)`` (:func:`edifice.generative.ddpm.build`, same options).

    Teacher and student have the same architecture; a distillation round starts the student as a copy of the
    teacher (``copy.deepcopy`` or ``load_state_dict``).

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return ddpm.build(data_shape=data_shape, num_classes=num_classes, hidden=hidden, depth=depth,
                      base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                      dropout=dropout, backbone=backbone, dit_preset=dit_preset, patch_size=patch_size)


def distillation_grid(T: int, student_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The student's steps ``t -> t''`` and the teacher's midpoints ``t'`` (trailing grids), on cpu.

    With ``s = ddpm.timesteps(T, N, spacing="trailing")`` (the grid the ``N``-step student samples on) and
    ``u = ddpm.timesteps(T, 2N, spacing="trailing")`` (the ``2N``-step teacher's), student step ``i`` goes from
    ``t = s[i]`` to ``t'' = s[i+1]`` (``-1``, the clean data, after the last) through the teacher's point
    ``t' = u[2i+1]``. The ``2N`` grid nests the ``N`` grid (``u[2i] == s[i]``), so that the student's
    target is exactly the teacher's own ``2N``-step sampler, whenever ``T i / N`` never lands on a half
    integer (e.g. ``T = 1000`` and ``N`` a power of two); at such ties the float arithmetic of the trailing
    spacing may round the two grids apart by one step (e.g. ``T = 1000, N = 48``: ``s[3] = 936``,
    ``u[6] = 937``), and the teacher is then queried one step off its own grid. ``t'`` is kept strictly
    between ``t''`` and ``t``.

    Args:
        T: number of diffusion steps, at least 2. student_steps: ``N``, in ``[1, T // 2]`` (the teacher needs
            ``2N <= T``).

    Returns:
        ``(t, t_mid, t_next)``, three ``(N,)`` long tensors, descending, with ``t > t_mid > t_next`` and
        ``t_next[-1] = -1``.

    Raises:
        ValueError / TypeError: bad ``T`` or ``student_steps``.
    """
    check_int("T", T, min=2)
    n = check_int("student_steps", student_steps, min=1, max=T // 2)
    student = ddpm.timesteps(T, n, spacing="trailing")  # (N,)
    teacher = ddpm.timesteps(T, 2 * n, spacing="trailing")  # (2N,)
    t_next = torch.cat([student[1:], student.new_full((1,), -1)])  # (N,)
    t_mid = torch.minimum(torch.maximum(teacher[1::2], t_next + 1), student - 1)  # (N,)
    if not bool((t_mid > t_next).all()):  # cannot happen for 2N <= T: trailing student steps are >= 2 apart
        raise RuntimeError(f"internal error: no teacher midpoint between student steps for T={T}, N={n}")
    return student, t_mid, t_next


def _teacher_ddim(teacher: Callable[..., torch.Tensor], z: torch.Tensor, t: torch.Tensor, ab_t: torch.Tensor,
                  ab_s: torch.Tensor, target: str, cond: dict) -> torch.Tensor:
    """One deterministic DDIM step ``z_s = α_s x̂ + σ_s ε̂`` with the teacher's ``(x̂, ε̂)`` at ``(z, t)``."""
    out = call_net(teacher, z, t.to(z.dtype), cond, f"a {target!r} prediction")
    x0, eps = _x0_eps(out, z, ab_t, target)
    return _c(ab_s.sqrt(), z) * x0 + _c((1.0 - ab_s).sqrt(), z) * eps


@torch.no_grad()
def _target(teacher: Callable[..., torch.Tensor], z_t: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
            t_next: torch.Tensor, schedule: NoiseSchedule, target: str, cond: dict) -> torch.Tensor:
    """Unchecked core of :func:`distillation_target`; ``t``'s are ``(B,)`` long tensors on ``z_t``'s device."""
    ab_t, ab_m, ab_n = (_gather_ab(schedule, s, z_t) for s in (t, t_mid, t_next))  # 3 x (B,) float64
    z_mid = _teacher_ddim(teacher, z_t, t, ab_t, ab_m, target, cond)
    z_next = _teacher_ddim(teacher, z_mid, t_mid, ab_m, ab_n, target, cond)
    ratio = ((1.0 - ab_n) / (1.0 - ab_t)).sqrt()  # σ_{t''} / σ_t, (B,)
    return (z_next - _c(ratio, z_t) * z_t) / _c(ab_n.sqrt() - ratio * ab_t.sqrt(), z_t)


def _check_net(name: str, net: Any) -> None:
    if not callable(net):
        raise TypeError(f"{name} must be callable as {name}(x, t, **cond), got {type(net).__name__}")


def distillation_target(
    teacher: Callable[..., torch.Tensor],
    x_t: torch.Tensor,
    t: Any,
    t_mid: Any,
    t_next: Any,
    *,
    schedule: NoiseSchedule | None = None,
    target: str = "eps",
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The student's regression target ``x̃`` (Salimans & Ho, Algorithm 2).

    Two teacher DDIM (``η = 0``) steps ``t -> t_mid -> t_next`` give ``z_{t''}``; then
    ``x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t)`` is the ``x̂`` for which one DDIM
    step ``t -> t_next`` from ``z_t`` lands on ``z_{t''}`` exactly. The denominator is positive because the
    SNR falls with ``t``. Computed under ``torch.no_grad()`` (it is a regression target).

    Args:
        teacher: DDPM network ``teacher(x, t (B,) float, **cond)`` predicting ``target``.
        x_t: ``(B, *data_shape)`` noisy input ``z_t``.
        t, t_mid, t_next: integer steps (ints or ``(B,)`` integer tensors) with
            ``T > t > t_mid > t_next >= -1`` (``-1`` = the clean data, ``ᾱ = 1``).
        schedule: default ``make_schedule("linear", 1000)``. target: ``"eps"``, ``"x0"`` or ``"v"``.
        cond: extra keyword arguments for ``teacher`` (e.g. ``{"y": labels}``).

    Returns:
        ``(B, *data_shape)`` ``x̃`` in ``x_t``'s dtype, without grad.

    Raises:
        ValueError / TypeError: bad ``target``, ``schedule``, ``cond``, ``x_t``, a non-callable ``teacher``,
        steps out of range, not integer, or not ordered ``t > t_mid > t_next``.
    """
    schedule = _schedule(schedule)
    check_choice("target", target, TARGETS)
    _check_net("teacher", teacher)
    check_tensor("x_t", x_t, floating=True)
    if x_t.ndim < 2:
        raise ValueError(f"x_t must have shape (B, *data_shape), got {tuple(x_t.shape)}")
    cond = check_cond(cond)
    t = _steps_arg(t, x_t, schedule.T)
    t_mid = _steps_arg(t_mid, x_t, schedule.T, name="t_mid")
    t_next = _steps_arg(t_next, x_t, schedule.T, name="t_next", low=-1)
    if not bool(((t > t_mid) & (t_mid > t_next)).all()):  # host sync: a public entry point, not a sampler loop
        raise ValueError("t, t_mid and t_next must satisfy t > t_mid > t_next for every sample")
    return _target(teacher, x_t, t, t_mid, t_next, schedule, target, cond)


def loss_weight(alpha_bar: torch.Tensor, weighting: str = "truncated_snr") -> torch.Tensor:
    """Weight ``w(λ_t)`` of the ``x``-space error ``‖x̃ - x̂‖²`` (Salimans & Ho, Sec. 4), elementwise.

    ``"truncated_snr"``: ``max(SNR, 1)``, i.e. ``max(‖x - x̂‖², ‖ε - ε̂‖²)``; ``"snr+1"``: ``SNR + 1``, the
    v-loss ``‖v - v̂‖²``; ``"snr"``: ``SNR``, the ε-loss (it vanishes as ``ᾱ -> 0``, so the first step of a
    few-step student gets almost no weight: Salimans & Ho, Sec. 4); ``"none"``: 1. ``SNR = ᾱ / (1 - ᾱ)``.

    Args:
        alpha_bar: floating tensor of ``ᾱ`` in ``(0, 1)`` (not range-checked). weighting: one of
            :data:`WEIGHTINGS`.

    Returns:
        A tensor of ``alpha_bar``'s shape and dtype.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    check_tensor("alpha_bar", alpha_bar, floating=True)
    snr = alpha_bar / (1.0 - alpha_bar)
    if weighting == "truncated_snr":
        return snr.clamp(min=1.0)
    if weighting == "snr+1":
        return snr + 1.0
    if weighting == "snr":
        return snr
    return torch.ones_like(alpha_bar)


def loss(
    student: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    teacher: Callable[..., torch.Tensor],
    student_steps: int,
    schedule: NoiseSchedule | None = None,
    target: str = "eps",
    weighting: str = "truncated_snr",
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Progressive-distillation loss for a ``student_steps``-step student of a ``2 student_steps``-step teacher.

    Per sample (Salimans & Ho, Algorithm 2, on the discrete trailing grids of :func:`distillation_grid`):
    ``i ~ U{0..N-1}``, ``(t, t', t'')`` the ``i``-th student step, ``z_t = α_t x + σ_t ε`` (:func:`ddpm.q_sample`),
    ``x̃ = distillation_target(teacher, z_t, t, t', t'')``, ``x̂`` the student's prediction converted with
    :func:`ddpm.convert_prediction`, and ``L = mean_b w(ᾱ_t) mean_elements (x̂ - x̃)²``
    (:func:`loss_weight`). Only the student's own grid points are trained, as only those are ever queried by
    its ``N``-step sampler (the paper samples continuous ``t = i/N``; on a discrete schedule this is the same).

    Args:
        student: DDPM network ``student(x, t (B,) float, **cond)`` predicting ``target``; gets the gradient.
        x: ``(B, *data_shape)`` clean data.
        teacher: DDPM network with the same convention, ``schedule`` and ``target`` (called under no_grad).
        student_steps: ``N``, the student's number of sampling steps, in ``[1, T // 2]``.
        schedule: default ``make_schedule("linear", 1000)``. target: ``"eps"``, ``"x0"`` or ``"v"`` (``"v"``
            recommended, see the module docstring). weighting: one of :data:`WEIGHTINGS`.
        generator: draws the grid index and ``ε`` unless given as ``t`` / ``noise``.
        noise: ``ε``, shaped like ``x``. t: ``(B,)`` integer steps, each a point of the student grid.
        cond: extra keyword arguments for both networks.

    Returns:
        ``(loss, {"loss", "x0_mse" (unweighted mean ‖x̂ - x̃‖² per element)})``, logs detached.

    Raises:
        ValueError / TypeError: bad ``student_steps``, ``target``, ``weighting``, ``schedule``, ``cond``, ``x``,
        ``noise`` shape, ``t`` (integer, ``(B,)``, on the student grid), or a non-callable ``student`` /
        ``teacher``.
    """
    schedule = _schedule(schedule)
    check_choice("target", target, TARGETS)
    check_choice("weighting", weighting, WEIGHTINGS)
    _check_net("student", student)
    _check_net("teacher", teacher)
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, *data_shape), got {tuple(x.shape)}")
    cond = check_cond(cond)
    grid, grid_mid, grid_next = (g.to(x.device) for g in distillation_grid(schedule.T, student_steps))
    b = x.shape[0]
    if t is None:
        idx = randint(0, student_steps, (b,), generator=generator, device=x.device)
    else:
        t = _steps_arg(t, x, schedule.T)
        match = t[:, None] == grid[None, :]  # (B, N)
        if not bool(match.any(dim=1).all()):
            raise ValueError(f"t must lie on the student's trailing grid of {student_steps} steps "
                             f"{grid.tolist()[:8]}{'...' if student_steps > 8 else ''}, got {t.tolist()[:8]}")
        idx = match.long().argmax(dim=1)
    if noise is None:
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    check_tensor("noise", noise, shape=tuple(x.shape), floating=True)
    t_s, t_mid, t_next = grid[idx], grid_mid[idx], grid_next[idx]  # 3 x (B,)
    ab_t = _gather_ab(schedule, t_s, x)  # (B,) float64
    z_t = _c(ab_t.sqrt(), x) * x + _c((1.0 - ab_t).sqrt(), x) * noise
    x_tilde = _target(teacher, z_t, t_s, t_mid, t_next, schedule, target, cond)
    out = call_net(student, z_t, t_s.to(x.dtype), cond, f"a {target!r} prediction")
    x_hat = _x0_eps(out, z_t, ab_t, target)[0]
    err = (x_hat - x_tilde).square().reshape(b, -1).mean(dim=1)  # (B,)
    value = (loss_weight(ab_t, weighting).to(x.dtype) * err).mean()
    return value, {"loss": value.detach(), "x0_mse": err.mean().detach()}


@torch.no_grad()
def sample(
    student: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 1,
    schedule: NoiseSchedule | None = None,
    target: str = "eps",
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sample a (distilled) student: deterministic DDIM (``η = 0``) over the trailing grid of ``steps`` steps.

    The same as ``ddim.sample(student, shape, steps=steps, eta=0.0, spacing="trailing", ...)``; exactly
    ``steps`` network calls, the first at ``t = T-1`` from ``x ~ N(0, I)``, the last landing on ``x̂_0``.

    Args:
        student: ``student(x, t (B,) float, **cond)`` predicting ``target``. shape: ``(B, *data_shape)``.
        steps: number of network calls, in ``[1, T]``. schedule: default ``make_schedule("linear", 1000)``.
        target: ``"eps"``, ``"x0"`` or ``"v"``. generator: draws ``x_T`` unless ``noise`` is given.
        cond, callback, noise, device, dtype: as in :func:`edifice.generative.ddim.sample`.

    Returns:
        ``(B, *data_shape)`` samples, under ``torch.no_grad()``; the loop makes no host sync.

    Raises:
        ValueError / TypeError: as :func:`edifice.generative.ddim.sample`.
    """
    return ddim.sample(student, shape, steps=steps, schedule=schedule, eta=0.0, spacing="trailing", target=target,
                       generator=generator, cond=cond, callback=callback, noise=noise, device=device, dtype=dtype)
