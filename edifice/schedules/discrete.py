"""Discrete-time noise schedules for diffusion models: beta schedules, alpha_bar, SNR, posteriors.

Time convention (DDPM / DDIM): integer steps ``t in {0, ..., T-1}``, ``t = 0`` least noisy. The forward
process is ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` with
``alpha_bar_t = prod_{s <= t} (1 - beta_s)``.

Every schedule is computed in float64 and stays float64; values are cast to the data's dtype at use
(:meth:`NoiseSchedule.at`). The posterior quantities follow Ho et al. (2020), eqs. (6)-(7), with the
conventions of diffusers' ``DDPMScheduler`` and OpenAI's improved-diffusion:
``alpha_bar_prev[0] = 1``, ``posterior_variance[0] = 0``, and the clipped log-variance uses
``posterior_variance[1]`` at ``t = 0``.

Example:
    >>> import torch
    >>> from edifice.schedules import make_schedule
    >>> s = make_schedule("cosine", T=1000)
    >>> x = torch.zeros(4, 3, 8, 8)
    >>> s.at("alpha_bar", torch.tensor([0, 10, 500, 999]), like=x).shape
    torch.Size([4, 1, 1, 1])

References:
    - Denoising Diffusion Probabilistic Models, Ho, Jain & Abbeel, 2020, arXiv:2006.11239.
    - Improved Denoising Diffusion Probabilistic Models, Nichol & Dhariwal, 2021, arXiv:2102.09672.
    - On the Importance of Noise Scheduling for Diffusion Models, Chen, 2023, arXiv:2301.10972.
    - Scalable Adaptive Computation for Iterative Generation, Jabri, Fleet & Chen, 2022, arXiv:2212.11972.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from edifice._checks import append_dims, batch_steps, check_choice, check_float, check_int, check_tensor

__all__ = [
    "linear_betas", "cosine_betas", "sigmoid_betas", "beta_schedule", "alpha_bar", "snr",
    "NoiseSchedule", "make_schedule", "BETA_SCHEDULES",
]

_F64 = torch.float64


def linear_betas(T: int, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas spaced linearly from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4).

    ``betas[0] == beta_start`` and ``betas[-1] == beta_end`` (for ``T >= 2``; ``T = 1`` gives
    ``[beta_start]``).

    Args:
        T: number of diffusion steps, a positive int.
        beta_start: first beta; ``0 < beta_start < beta_end < 1``.
        beta_end: last beta.

    Returns:
        ``(T,)`` float64 tensor.

    Raises:
        TypeError / ValueError: for a non-int or non-positive ``T`` or betas outside
        ``0 < beta_start < beta_end < 1``.

    References:
        Denoising Diffusion Probabilistic Models, Ho et al., 2020, arXiv:2006.11239.
    """
    check_int("T", T, min=1)
    beta_start = check_float("beta_start", beta_start, min=0.0, max=1.0, min_open=True, max_open=True)
    beta_end = check_float("beta_end", beta_end, min=0.0, max=1.0, min_open=True, max_open=True)
    if not beta_start < beta_end:
        raise ValueError(
            f"beta_start and beta_end must satisfy 0 < beta_start < beta_end < 1, "
            f"got beta_start={beta_start}, beta_end={beta_end}"
        )
    return torch.linspace(beta_start, beta_end, T, dtype=_F64)


def _betas_from_alpha_bar(fn: Callable[[torch.Tensor], torch.Tensor], T: int, max_beta: float) -> torch.Tensor:
    """Discretise a continuous ``alpha_bar(tau)``, ``tau in [0, 1]``: ``beta_i = 1 - ab((i+1)/T) / ab(i/T)``."""
    tau = torch.arange(T + 1, dtype=_F64) / T  # (T+1,)
    ab = fn(tau)
    betas = 1.0 - ab[1:] / ab[:-1]  # (T,)
    return betas.clamp(max=max_beta)


def cosine_betas(T: int, *, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), eq. (17).

    ``alpha_bar(tau) = f(tau) / f(0)`` with ``f(tau) = cos^2((tau + s) / (1 + s) * pi / 2)``, discretised as
    ``beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)`` (the same betas as diffusers'
    ``"squaredcos_cap_v2"``). ``alpha_bar[0] = 1 - beta_0`` is close to 1 (about ``1 - 0.04 / T``); the last
    beta is clipped to ``max_beta``, so ``alpha_bar[-1] <= 1 - max_beta``.

    Args:
        T: number of diffusion steps, a positive int.
        s: small offset that keeps the first betas from vanishing, ``s >= 0``.
        max_beta: upper clip for the betas, in ``(0, 1)``.

    Returns:
        ``(T,)`` float64 tensor.

    References:
        Improved Denoising Diffusion Probabilistic Models, Nichol & Dhariwal, 2021, arXiv:2102.09672.
    """
    check_int("T", T, min=1)
    s = check_float("s", s, min=0.0)
    max_beta = check_float("max_beta", max_beta, min=0.0, max=1.0, min_open=True, max_open=True)

    def f(tau: torch.Tensor) -> torch.Tensor:
        return torch.cos((tau + s) / (1.0 + s) * (math.pi / 2)) ** 2

    return _betas_from_alpha_bar(f, T, max_beta)


def sigmoid_betas(
    T: int,
    *,
    start: float = -3.0,
    end: float = 3.0,
    tau: float = 1.0,
    clip_min: float = 1e-9,
    max_beta: float = 0.999,
) -> torch.Tensor:
    """Sigmoid schedule of Jabri et al. (2022) / Chen (2023), defined through ``alpha_bar``.

    ``alpha_bar(u) = (v(end) - v(u (end - start) + start)) / (v(end) - v(start))`` clipped below at
    ``clip_min``, with ``v(z) = sigmoid(z / tau)`` and ``u in [0, 1]`` (Chen 2023, Algorithm 1), discretised
    like :func:`cosine_betas` and clipped at ``max_beta``. Smaller ``tau`` keeps more signal early.

    Args:
        T: number of diffusion steps, a positive int.
        start: left end of the sigmoid's input range, ``start < end``.
        end: right end of the sigmoid's input range.
        tau: temperature, ``tau > 0``.
        clip_min: lower clip for the continuous ``alpha_bar``, in ``(0, 1)``.
        max_beta: upper clip for the betas, in ``(0, 1)``.

    Returns:
        ``(T,)`` float64 tensor.

    References:
        On the Importance of Noise Scheduling for Diffusion Models, Chen, 2023, arXiv:2301.10972.
        Scalable Adaptive Computation for Iterative Generation, Jabri et al., 2022, arXiv:2212.11972.
    """
    check_int("T", T, min=1)
    start = check_float("start", start)
    end = check_float("end", end)
    if not start < end:
        raise ValueError(f"start must be < end, got start={start}, end={end}")
    tau = check_float("tau", tau, min=0.0, min_open=True)
    clip_min = check_float("clip_min", clip_min, min=0.0, max=1.0, min_open=True, max_open=True)
    max_beta = check_float("max_beta", max_beta, min=0.0, max=1.0, min_open=True, max_open=True)
    v_start, v_end = 1.0 / (1.0 + math.exp(-start / tau)), 1.0 / (1.0 + math.exp(-end / tau))

    def f(u: torch.Tensor) -> torch.Tensor:
        v = torch.sigmoid((u * (end - start) + start) / tau)
        return ((v_end - v) / (v_end - v_start)).clamp(min=clip_min)

    return _betas_from_alpha_bar(f, T, max_beta)


BETA_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "sigmoid": sigmoid_betas,
}


def beta_schedule(name: str, T: int, **kwargs: Any) -> torch.Tensor:
    """Betas of the schedule ``name`` (one of :data:`BETA_SCHEDULES`), ``(T,)`` float64.

    Extra keyword arguments go to the schedule function (e.g. ``beta_end=`` for ``"linear"``).

    Raises:
        ValueError: for an unknown ``name`` (the message lists the valid ones) or invalid options.
    """
    check_choice("name", name, tuple(BETA_SCHEDULES))
    return BETA_SCHEDULES[name](T, **kwargs)


def alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    """Cumulative signal fraction ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``, float64, same shape as ``betas``."""
    check_tensor("betas", betas, ndim=1, floating=True)
    return torch.cumprod(1.0 - betas.to(_F64), dim=0)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``alpha_bar / (1 - alpha_bar)`` (Kingma et al. 2021, arXiv:2107.00630), float64."""
    check_tensor("alpha_bar", alpha_bar, floating=True)
    ab = alpha_bar.to(_F64)
    return ab / (1.0 - ab)


_FIELDS = (
    "betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar", "snr",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete noise schedule and every per-step quantity DDPM / DDIM need, all ``(T,)`` float64.

    Build one from betas (``NoiseSchedule(betas, name="custom")``) or with :func:`make_schedule`; every
    other field is derived:

    - ``alphas = 1 - betas``; ``alpha_bar = cumprod(alphas)``; ``alpha_bar_prev = [1, alpha_bar[:-1]]``
    - ``sqrt_alpha_bar``, ``sqrt_one_minus_alpha_bar``, ``snr = alpha_bar / (1 - alpha_bar)``
    - ``posterior_variance = beta_t (1 - alpha_bar_prev) / (1 - alpha_bar)`` (``beta~_t``, Ho et al. eq. 7;
      0 at ``t = 0``)
    - ``posterior_log_variance_clipped = log([posterior_variance[1], posterior_variance[1:]])``; for ``T = 1``
      the variance is clamped at 1e-20 instead (diffusers' convention)
    - ``posterior_mean_coef1 = beta_t sqrt(alpha_bar_prev) / (1 - alpha_bar)``,
      ``posterior_mean_coef2 = (1 - alpha_bar_prev) sqrt(alpha_t) / (1 - alpha_bar)``, so that
      ``mu~_t(x_t, x_0) = coef1 * x_0 + coef2 * x_t``.

    The tensors stay float64 on the schedule's device; move them once with :meth:`to` before a sampling loop
    on an accelerator, then :meth:`at` costs no host-device transfer.

    Attributes:
        betas: ``(T,)`` float64 in ``(0, 1)``.
        name: schedule name (informational).
        T: number of steps.
    """

    betas: torch.Tensor
    name: str = "custom"
    T: int = field(init=False)
    alphas: torch.Tensor = field(init=False)
    alpha_bar: torch.Tensor = field(init=False)
    alpha_bar_prev: torch.Tensor = field(init=False)
    sqrt_alpha_bar: torch.Tensor = field(init=False)
    sqrt_one_minus_alpha_bar: torch.Tensor = field(init=False)
    snr: torch.Tensor = field(init=False)
    posterior_variance: torch.Tensor = field(init=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False)
    posterior_mean_coef1: torch.Tensor = field(init=False)
    posterior_mean_coef2: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = check_tensor("betas", self.betas, ndim=1, floating=True).detach().to(_F64)
        if betas.shape[0] < 1:
            raise ValueError("betas must have at least one entry, got shape (0,)")
        if not bool(((betas > 0) & (betas < 1)).all()):  # one host sync at construction, never in a loop
            raise ValueError(f"betas must lie in (0, 1), got min {betas.min().item()}, max {betas.max().item()}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, dim=0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])  # (T,)
        var = betas * (1.0 - ab_prev) / (1.0 - ab)
        if betas.shape[0] > 1:
            log_var = torch.log(torch.cat([var[1:2], var[1:]]))  # (T,)
        else:
            log_var = torch.log(var.clamp(min=1e-20))
        values = {
            "betas": betas, "T": int(betas.shape[0]), "alphas": alphas, "alpha_bar": ab, "alpha_bar_prev": ab_prev,
            "sqrt_alpha_bar": ab.sqrt(), "sqrt_one_minus_alpha_bar": (1.0 - ab).sqrt(), "snr": ab / (1.0 - ab),
            "posterior_variance": var, "posterior_log_variance_clipped": log_var,
            "posterior_mean_coef1": betas * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def device(self) -> torch.device:
        """Device of the schedule's tensors."""
        return self.betas.device

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy with every tensor on ``device``, still float64."""
        return dataclasses.replace(self, betas=self.betas.to(device))

    def at(self, name: str, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """Gather schedule values at integer steps, shaped to broadcast against ``like``.

        Args:
            name: one of the ``(T,)`` fields (``"alpha_bar"``, ``"posterior_variance"``, ...).
            t: ``(B,)`` integer tensor of steps in ``[0, T)``, or an int / 0-dim tensor used for the whole
                batch. Not range-checked (that would need a host sync); out-of-range indices raise in torch.
                The gather happens on ``like``'s device: keep ``t`` and the schedule there (see :meth:`to`).
            like: tensor ``(B, ...)`` whose dtype, device and rank the result takes.

        Returns:
            ``(B, 1, ..., 1)`` with ``like.ndim`` dimensions, in ``like``'s dtype and on its device.

        Raises:
            ValueError: for an unknown ``name`` (listing the valid ones) or a batch mismatch.
            TypeError: if ``t`` is not an int or an integer tensor, or ``like`` is not a tensor.
        """
        check_choice("name", name, _FIELDS)
        check_tensor("like", like)
        if like.ndim == 0:
            raise ValueError("like must have a batch dimension, got a 0-dim tensor")
        t = batch_steps(t, like, "t")
        values: torch.Tensor = getattr(self, name).to(like.device)  # no-op once the schedule is there
        out = values[t.to(like.device)].to(like.dtype)  # (B,)
        return append_dims(out, like.ndim)  # (B, 1, ..., 1)

    def __repr__(self) -> str:
        return f"NoiseSchedule(name={self.name!r}, T={self.T}, device={self.device})"


def make_schedule(name: str = "linear", T: int = 1000, **kwargs: Any) -> NoiseSchedule:
    """Build a validated :class:`NoiseSchedule` from a named beta schedule.

    Args:
        name: ``"linear"``, ``"cosine"`` or ``"sigmoid"``.
        T: number of diffusion steps, a positive int.
        **kwargs: options of the beta function (``beta_start``/``beta_end``, ``s``/``max_beta``,
            ``start``/``end``/``tau``/``clip_min``).

    Raises:
        ValueError / TypeError: for an unknown name (listing the valid ones), a bad ``T`` or bad options.
    """
    return NoiseSchedule(beta_schedule(name, T, **kwargs), name=name)
