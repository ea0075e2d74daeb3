r"""DPM-Solver and DPM-Solver++: fast exponential-integrator solvers of the diffusion probability-flow ODE.

**Time convention:** continuous ``t ∈ (0, 1]``, data at 0, noise at ``T = 1``, for a variance-preserving
``x_t = α_t x_0 + σ_t ε`` (``α_t² + σ_t² = 1``) with half log-SNR ``λ_t = log(α_t / σ_t)``: a
:class:`~edifice.schedules.VPSDE` (``log α_t`` = its ``log_mean_coeff``) or a discrete DDPM
:class:`~edifice.schedules.NoiseSchedule` of ``N`` steps read as in Lu et al.'s reference code (step ``n`` at
``t_n = (n + 1) / N``, ``log α = ½ log ᾱ_n``, linear in ``t`` in between). Networks see ``t`` (continuous) or
the fractional step ``N t - 1`` (discrete; the reference's ``1000 (t - 1/N)`` for ``N = 1000``). Sampling runs
from ``t = 1`` to ``t_end`` (``1e-3`` continuous, ``1/N`` discrete). With ``h = λ_t - λ_s`` (Lu et al. 2022,
eqs. 3.4, 3.7; Lu et al. 2022b, eq. 9 and Alg. 2; ``s'`` the previous point, ``r = (λ_s - λ_{s'}) / h``)::

    exact:          x_t = (α_t/α_s) x_s - α_t ∫_{λ_s}^{λ_t} e^{-λ} ε̂(x_λ, λ) dλ     (noise prediction ε̂)
    DPM-Solver-1:   x_t = (α_t/α_s) x_s - σ_t (e^h - 1) ε̂_s                        (= DDIM)
    DPM-Solver++1:  x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x̂_s                    (data prediction x̂)
    DPM-Solver++2M: x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) (x̂_s + (x̂_s - x̂_{s'}) / (2 r))

DPM-Solver-2/3 (singlestep) add one / two model calls at ``λ_s + r_1 h`` (``r_1 = ½``; or ``⅓``, ``r_2 = ⅔``);
multistep solvers reuse earlier outputs. Each data-prediction formula is the noise-prediction one with
``α ↔ σ`` (so ``h → -h``), which the code uses once. ``method="singlestep"`` spends ``steps`` calls like the
reference's "DPM-Solver-fast" (:func:`singlestep_orders`); ``"multistep"`` makes one call per step, warming
up with lower orders. :func:`sample_discrete` reproduces diffusers' ``DPMSolverMultistepScheduler`` defaults.

Example:
    >>> import torch
    >>> from edifice.generative import ddpm, dpm_solver
    >>> net = ddpm.build(data_shape=(2,), hidden=16, depth=1)
    >>> dpm_solver.sample(net, (3, 2), steps=10, algorithm="dpm_solver_pp").shape
    torch.Size([3, 2])
    >>> dpm_solver.discrete_timesteps(1000, 4).tolist()
    [999, 749, 500, 250]

References:
    DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10 Steps. Lu, Zhou,
    Bao, Chen, Li, Zhu, 2022. arXiv:2206.00927.
    DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models. Lu, Zhou, Bao, Chen, Li,
    Zhu, 2022b. arXiv:2211.01095.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from edifice._checks import append_dims, check_choice, check_cond, check_float, check_int, check_tensor
from edifice.generative._common import coefficient
from edifice.generative.ddpm import TARGETS, _hi, _schedule, _start
from edifice.schedules import SDE, VPSDE, NoiseSchedule

__all__ = [
    "ALGORITHMS", "METHODS", "SKIP_TYPES", "MODEL_KINDS", "SPACINGS", "NoiseScheduleVP", "model_wrapper",
    "time_steps", "singlestep_orders", "discrete_timesteps", "dpm_solver_first_order", "dpm_solver_pp_first_order",
    "dpm_solver_second_order", "dpm_solver_third_order", "dpm_solver_pp_2m_step", "multistep_step", "sample",
    "sample_discrete",
]

ALGORITHMS = ("dpm_solver", "dpm_solver_pp")
METHODS = ("singlestep", "multistep")
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic")
MODEL_KINDS = ("eps", "x0", "v", "score")
SPACINGS = ("linspace", "leading", "trailing")
_F64 = torch.float64


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through ``(xp, fp)`` (``xp`` ascending), extrapolated linearly."""
    xp, fp = xp.to(x), fp.to(x)
    i = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


class NoiseScheduleVP:
    """``α_t``, ``σ_t``, ``λ_t`` and ``t(λ)`` of a VP schedule in continuous time ``t ∈ (0, 1]``.

    Args:
        schedule: a :class:`~edifice.schedules.VPSDE` (closed form; ``t(λ)`` as in Lu et al. App. D) or a
            discrete :class:`~edifice.schedules.NoiseSchedule` with ``T >= 2`` (``log α`` piecewise linear in
            ``t`` through ``((n+1)/N, ½ log ᾱ_n)``). The sub-VP and VE SDEs are not VP-shaped: ValueError.

    The methods take a floating tensor ``t`` (or ``λ``) of any shape and return one like it (no host sync).
    ``discrete`` tells which kind; ``t_eps`` is the default end time (``1/N`` or ``1e-3``, as in the reference).
    """

    T = 1.0

    def __init__(self, schedule: Any) -> None:
        self.sde: VPSDE | None = None
        if isinstance(schedule, NoiseSchedule):
            if schedule.T < 2:
                raise ValueError(f"schedule must have T >= 2 steps to interpolate, got T={schedule.T}")
            self.log_alpha_table = 0.5 * schedule.alpha_bar.detach().to("cpu", _F64).log()  # (N,)
            self.t_table = torch.arange(1, schedule.T + 1, dtype=_F64) / schedule.T  # (N,)
        elif isinstance(schedule, SDE):
            if not (isinstance(schedule, VPSDE) and schedule.name == "vp"):
                raise ValueError(f"schedule must be variance preserving (a VPSDE or a NoiseSchedule), got the "
                                 f"{schedule.name!r} SDE, whose alpha_t^2 + sigma_t^2 != 1")
            self.sde = schedule
        else:
            raise TypeError(f"schedule must be a NoiseSchedule or a VPSDE, got {type(schedule).__name__}")
        self.discrete = self.sde is None
        self.t_eps = 1.0 / self.t_table.numel() if self.discrete else 1e-3

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log α_t``."""
        return _interp(t, self.t_table, self.log_alpha_table) if self.discrete else self.sde.log_mean_coeff(t)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``α_t``."""
        return self.log_alpha(t).exp()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``σ_t = sqrt(1 - α_t²)``."""
        return (-torch.expm1(2.0 * self.log_alpha(t))).sqrt()

    def lambda_t(self, t: torch.Tensor) -> torch.Tensor:
        """Half log-SNR ``λ_t = log α_t - log σ_t``, decreasing in ``t``."""
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def inverse_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        """The time ``t`` with ``λ_t = lam`` (closed form for the VPSDE, interpolated for a discrete schedule)."""
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        if self.discrete:
            return _interp(log_alpha, self.log_alpha_table.flip(0), self.t_table.flip(0))
        b0, db = self.sde.beta_min, self.sde.beta_max - self.sde.beta_min
        tmp = -4.0 * db * log_alpha  # 2 Δβ log(1 + e^{-2λ}); t solves Δβ t²/2 + β_0 t = tmp / (2 Δβ)
        return tmp / ((b0 ** 2 + tmp).sqrt() + b0) / db

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time a network is called at: ``t`` (continuous) or the fractional step ``N t - 1`` (discrete)."""
        return t * self.t_table.numel() - 1.0 if self.discrete else t

    def __repr__(self) -> str:
        return f"NoiseScheduleVP({f'discrete, N={self.t_table.numel()}' if self.discrete else repr(self.sde)})"


def _view(schedule: Any) -> NoiseScheduleVP:
    return schedule if isinstance(schedule, NoiseScheduleVP) else NoiseScheduleVP(schedule)


def _convert(out: torch.Tensor, x: torch.Tensor, a: Any, s: Any, kind: str, pred: str) -> torch.Tensor:
    """Network output of ``kind`` -> ``"eps"`` or ``"x0"`` prediction (``a``, ``s``: α_t, σ_t broadcastable)."""
    if kind == pred:
        return out
    if kind == "v":
        return a * x - s * out if pred == "x0" else a * out + s * x
    if kind == "x0":
        return (x - a * out) / s
    eps = -s * out if kind == "score" else out
    return eps if pred == "eps" else (x - s * eps) / a


def model_wrapper(net: Callable[..., torch.Tensor], schedule: Any, *, model_kind: str = "eps",
                  prediction: str = "eps", cond: Mapping[str, Any] | None = None) -> Callable[..., torch.Tensor]:
    """Wrap ``net`` as ``f(x, t)`` of continuous time ``t`` ``(B,)`` returning the ``prediction`` the solver needs.

    ``net(x, model_time(t), **cond)`` predicts ``model_kind``: ``"eps"``, ``"x0"``, ``"v"``
    (``v = α ε - σ x_0``) or ``"score"`` (``ε = -σ_t s``; e.g. a score_sde ScoreNet with its VPSDE).
    ``prediction`` is ``"eps"`` (DPM-Solver) or ``"x0"`` (DPM-Solver++, ``x_0 = (x - σ ε)/α``).
    """
    view = _view(schedule)
    check_choice("model_kind", model_kind, MODEL_KINDS)
    check_choice("prediction", prediction, ("eps", "x0"))
    cond = check_cond(cond)
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        la = append_dims(view.log_alpha(t), x.ndim)
        out = net(x, view.model_time(t).to(x.dtype), **cond)
        return _convert(out, x, la.exp().to(x.dtype), (-torch.expm1(2 * la)).sqrt().to(x.dtype), model_kind,
                        prediction)

    return fn


# ----------------------------------------------------------------------------- time grids


def _grid(view: NoiseScheduleVP, n: int, skip_type: str, t0: float, t1: float) -> torch.Tensor:
    if skip_type == "logSNR":
        lam = view.lambda_t(torch.tensor([t0, t1], dtype=_F64))
        return view.inverse_lambda(torch.linspace(float(lam[0]), float(lam[1]), n + 1, dtype=_F64))
    if skip_type == "time_uniform":
        return torch.linspace(t0, t1, n + 1, dtype=_F64)
    return torch.linspace(math.sqrt(t0), math.sqrt(t1), n + 1, dtype=_F64).square()  # time_quadratic


def _t_end(view: NoiseScheduleVP, t_end: Any) -> float:
    if t_end is None:
        return view.t_eps
    lo = view.t_eps if view.discrete else 0.0  # no extrapolation below the first DDPM step
    return check_float("t_end", t_end, min=lo, max=view.T, min_open=not view.discrete, max_open=True)


def time_steps(schedule: Any, steps: int, *, skip_type: str = "time_uniform",
               t_end: float | None = None) -> torch.Tensor:
    """The ``steps + 1`` times from ``T = 1`` down to ``t_end`` (Lu et al. Sec. 3.4), float64 on cpu.

    ``"logSNR"``: uniform in ``λ``; ``"time_uniform"``: uniform in ``t``; ``"time_quadratic"``: uniform in
    ``√t``. ``t_end`` defaults to ``1e-3`` (continuous) / ``1/N`` (discrete, the smallest allowed).
    """
    view = _view(schedule)
    check_int("steps", steps, min=1)
    check_choice("skip_type", skip_type, SKIP_TYPES)
    return _grid(view, steps, skip_type, view.T, _t_end(view, t_end))


def singlestep_orders(steps: int, order: int) -> list[int]:
    """Orders of the singlestep windows spending exactly ``steps`` calls ("DPM-Solver-fast", Lu et al. Sec. 3.4).

    Order 3: ``K = steps // 3 + 1`` windows, ``[3]*(K-2) + [2, 1]`` / ``[3]*(K-1) + [1]`` / ``[3]*(K-1) + [2]``
    for ``steps % 3 = 0 / 1 / 2``; order 2: ``[2]*(steps//2)`` plus ``[1]`` if ``steps`` is odd; order 1:
    ``[1]*steps``. Raises ValueError for ``order`` outside {1, 2, 3} or ``steps < order``.
    """
    check_int("order", order, min=1, max=3)
    check_int("steps", steps, min=1)
    if steps < order:
        raise ValueError(f"steps must be >= order for the singlestep solver, got steps={steps}, order={order}")
    if order == 3:
        k = steps // 3 + 1
        return [3] * (k - 2) + [2, 1] if steps % 3 == 0 else [3] * (k - 1) + [1 if steps % 3 == 1 else 2]
    return [order] * (steps // order) + [1] * (steps % order)


def discrete_timesteps(T: int, steps: int, spacing: str = "linspace") -> torch.Tensor:
    """The integer timesteps of diffusers' ``DPMSolverMultistepScheduler`` (``steps`` of them, descending).

    ``"linspace"``: ``round(linspace(0, T-1, steps+1))`` reversed without its final 0; ``"leading"``:
    ``arange(steps+1) * (T // (steps+1))`` likewise; ``"trailing"``: ``round(arange(T, 0, -T/steps)) - 1``
    (cut to ``steps`` where rounding adds a stray point, as :func:`edifice.generative.ddpm.timesteps` does).
    ``steps`` must be in ``[1, T-1]`` (beyond that the linspace grid repeats timesteps).
    """
    check_int("T", T, min=2)
    check_int("steps", steps, min=1, max=T - 1)
    check_choice("spacing", spacing, SPACINGS)
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        ts = (np.arange(0, steps + 1) * (T // (steps + 1))).round()[::-1][:-1]
    else:
        ts = np.arange(T, 0, -T / steps).round()[:steps] - 1
    return torch.from_numpy(ts.astype(np.int64))


# ----------------------------------------------------------------------------- step functions
# The cores work in "generic" coefficients (a, b, l): (α, σ, λ) for noise prediction and (σ, α, -λ) for data
# prediction, so that one formula serves both: x_t = (a_t/a_s) x - b_t (e^h - 1) m_s + ..., h = l_t - l_s.


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return append_dims(v.to(x.dtype), x.ndim)


def _multistep(x: torch.Tensor, ms: Sequence[torch.Tensor], a_s: Any, a_t: Any, b_t: Any,
               ls: Sequence[Any]) -> torch.Tensor:
    """Multistep update of order ``len(ms)`` (1-3); ``ms`` oldest first, ``ls`` their ``l`` then the target's."""
    h = ls[-1] - ls[-2]
    phi1 = torch.expm1(h)
    x_t = _bc(a_t / a_s, x) * x - _bc(b_t * phi1, x) * ms[-1]
    if len(ms) == 1:
        return x_t
    r0 = (ls[-2] - ls[-3]) / h
    d1_0 = _bc(1.0 / r0, x) * (ms[-1] - ms[-2])
    if len(ms) == 2:
        return x_t - _bc(0.5 * b_t * phi1, x) * d1_0  # Lu et al. 2022b Alg. 2 / diffusers "midpoint"
    r1 = (ls[-3] - ls[-4]) / h
    d1_1 = _bc(1.0 / r1, x) * (ms[-2] - ms[-3])
    d1 = d1_0 + _bc(r0 / (r0 + r1), x) * (d1_0 - d1_1)
    d2 = _bc(1.0 / (r0 + r1), x) * (d1_0 - d1_1)
    phi2 = phi1 / h - 1.0
    return x_t - _bc(b_t * phi2, x) * d1 - _bc(b_t * (phi2 / h - 0.5), x) * d2


def _singlestep(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, m_s: torch.Tensor,
                a: Sequence[Any], b: Sequence[Any], ls: Sequence[Any]) -> torch.Tensor:
    """DPM-Solver-k (k = len(a) - 1) from point 0 to point k; ``fn(x, j)`` evaluates the model at point j.

    Lu et al. 2022, Algorithms 4-5 (``solver_type="dpmsolver"`` of the reference code).
    """
    order, h = len(a) - 1, ls[-1] - ls[0]
    phi1 = torch.expm1(h)
    x_t = _bc(a[-1] / a[0], x) * x - _bc(b[-1] * phi1, x) * m_s
    if order == 1:
        return x_t
    r1 = (ls[1] - ls[0]) / h
    x1 = _bc(a[1] / a[0], x) * x - _bc(b[1] * torch.expm1(ls[1] - ls[0]), x) * m_s
    m1 = fn(x1, 1)
    if order == 2:
        return x_t - _bc(0.5 / r1 * b[-1] * phi1, x) * (m1 - m_s)
    r2, h2 = (ls[2] - ls[0]) / h, ls[2] - ls[0]
    phi22 = torch.expm1(h2) / h2 - 1.0
    x2 = _bc(a[2] / a[0], x) * x - _bc(b[2] * torch.expm1(h2), x) * m_s - _bc(r2 / r1 * b[2] * phi22, x) * (m1 - m_s)
    m2 = fn(x2, 2)
    return x_t - _bc(b[-1] * (phi1 / h - 1.0) / r2, x) * (m2 - m_s)


def _coef(name: str, value: Any, x: torch.Tensor, zero_ok: bool = False) -> torch.Tensor:
    """A float > 0 (or >= 0 if ``zero_ok``), a 0-dim or a ``(B,)`` floating tensor (not range-checked) -> tensor."""
    return coefficient(name, value, x, min=0.0, min_open=not zero_ok)


def _like_x(x: torch.Tensor, **named: Any) -> list[torch.Tensor]:
    check_tensor("x", x, floating=True)
    return [check_tensor(k, v, shape=tuple(x.shape), floating=True) for k, v in named.items()]


def _abl(al: list, si: list, pp: bool) -> tuple[list, list, list]:
    """Generic coefficients ``(a, b, l)`` from lists of ``α`` and ``σ``."""
    a, b = (si, al) if pp else (al, si)
    return a, b, [torch.log(p / q) for p, q in zip(a, b)]


def multistep_step(x: torch.Tensor, outs: Sequence[torch.Tensor], alphas: Sequence[Any], sigmas: Sequence[Any], *,
                   algorithm: str = "dpm_solver_pp") -> torch.Tensor:
    """One multistep DPM-Solver(++) step of order ``k = len(outs)`` in {1, 2, 3} (Lu et al. 2022b Alg. 2, App. B).

    Args:
        x: ``(B, ...)`` sample at the latest point. outs: the model outputs (ε̂ for ``"dpm_solver"``, x̂_0 for
            ``"dpm_solver_pp"``) at the ``k`` latest points, oldest first. alphas, sigmas: ``k + 1`` values each
            (the ``k`` points, then the target), floats > 0 or 0-dim / ``(B,)`` tensors; the target's sigma may be
            0 for ``"dpm_solver_pp"`` with ``k = 1`` (the step then returns x̂_0).
    """
    check_choice("algorithm", algorithm, ALGORITHMS)
    if not isinstance(outs, (list, tuple)) or not 1 <= len(outs) <= 3:
        raise ValueError(f"outs must be a list of 1 to 3 tensors, got {type(outs).__name__} {outs!r:.40}")
    outs = _like_x(x, **{f"outs[{i}]": o for i, o in enumerate(outs)})
    for name, seq in (("alphas", alphas), ("sigmas", sigmas)):
        if not isinstance(seq, (list, tuple)) or len(seq) != len(outs) + 1:
            raise ValueError(f"{name} must be a list of len(outs) + 1 = {len(outs) + 1} values, got {seq!r}")
    pp, k = algorithm == "dpm_solver_pp", len(outs)
    al = [_coef(f"alphas[{i}]", v, x) for i, v in enumerate(alphas)]
    si = [_coef(f"sigmas[{i}]", v, x, zero_ok=pp and i == k == 1) for i, v in enumerate(sigmas)]
    a, b, ls = _abl(al, si, pp)
    return _multistep(x, outs, a[-2], a[-1], b[-1], ls)


def _first(x: torch.Tensor, name: str, m: torch.Tensor, coefs: tuple, pp: bool) -> torch.Tensor:
    (m,) = _like_x(x, **{name: m})
    names = ("alpha_s", "sigma_s", "alpha_t", "sigma_t")
    al_s, si_s, al_t, si_t = (_coef(n, v, x, zero_ok=pp and n == "sigma_t") for n, v in zip(names, coefs))
    a, b, ls = _abl([al_s, al_t], [si_s, si_t], pp)
    return _multistep(x, [m], a[0], a[1], b[1], ls)


def dpm_solver_first_order(x: torch.Tensor, eps: torch.Tensor, alpha_s: Any, sigma_s: Any, alpha_t: Any,
                           sigma_t: Any) -> torch.Tensor:
    """DPM-Solver-1 ``x_t = (α_t/α_s) x - σ_t (e^h - 1) ε̂`` (Lu et al. 2022 eq. 3.7; it equals DDIM).

    Args:
        x, eps: ``(B, ...)`` the sample at ``s`` and the noise prediction there.
        alpha_s, sigma_s, alpha_t, sigma_t: floats > 0, 0-dim or ``(B,)`` tensors (not range-checked).
    """
    return _first(x, "eps", eps, (alpha_s, sigma_s, alpha_t, sigma_t), False)


def dpm_solver_pp_first_order(x: torch.Tensor, x0: torch.Tensor, alpha_s: Any, sigma_s: Any, alpha_t: Any,
                              sigma_t: Any) -> torch.Tensor:
    """DPM-Solver++1 ``x_t = (σ_t/σ_s) x - α_t (e^{-h} - 1) x̂_0`` (Lu et al. 2022b eq. 9); ``σ_t = 0`` gives x̂_0.

    Args: as :func:`dpm_solver_first_order` with the data prediction ``x0`` (``sigma_t`` may be 0).
    """
    return _first(x, "x0", x0, (alpha_s, sigma_s, alpha_t, sigma_t), True)


def dpm_solver_pp_2m_step(x: torch.Tensor, x0_cur: torch.Tensor, x0_prev: torch.Tensor, h: Any, h_prev: Any,
                          alpha_t: Any, sigma_t: Any, sigma_s: Any) -> torch.Tensor:
    """DPM-Solver++(2M) ``(σ_t/σ_s) x - α_t (e^{-h} - 1) (x̂_s + h/(2h') (x̂_s - x̂_{s'}))`` (Lu et al. 2022b Alg. 2).

    Args:
        x: ``(B, ...)`` sample at ``s``. x0_cur, x0_prev: data predictions at ``s`` and at the previous point.
        h, h_prev: ``λ_t - λ_s > 0`` and ``λ_s - λ_{s'} > 0``. alpha_t, sigma_t, sigma_s: as named (floats > 0,
            0-dim or ``(B,)`` tensors). This is diffusers' ``dpmsolver++`` / ``midpoint`` second-order update.
    """
    x0_cur, x0_prev = _like_x(x, x0_cur=x0_cur, x0_prev=x0_prev)
    h, h_prev = _coef("h", h, x), _coef("h_prev", h_prev, x)
    si_s, al_t, si_t = _coef("sigma_s", sigma_s, x), _coef("alpha_t", alpha_t, x), _coef("sigma_t", sigma_t, x)
    return _multistep(x, [x0_prev, x0_cur], si_s, si_t, al_t, [h_prev, torch.zeros_like(h), -h])  # l = -λ + λ_s


def _single_public(model, x, s, t, schedule, rs, model_s, algorithm) -> torch.Tensor:
    view = _view(schedule)
    check_choice("algorithm", algorithm, ALGORITHMS)
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t), got {type(model).__name__}")
    check_tensor("x", x, floating=True)
    if model_s is not None:
        check_tensor("model_s", model_s, shape=tuple(x.shape), floating=True)
    s_, t_ = _coef("s", s, x), _coef("t", t, x)
    if not isinstance(s, torch.Tensor) and not isinstance(t, torch.Tensor) and not t < s <= view.T:
        raise ValueError(f"s and t must satisfy 0 < t < s <= {view.T:g}, got s={s}, t={t}")
    s, t = (v.to(_hi(x.device)).expand(x.shape[0]) for v in (s_, t_))
    lam_s, lam_t = view.lambda_t(s), view.lambda_t(t)
    ts = [s] + [view.inverse_lambda(lam_s + r * (lam_t - lam_s)) for r in rs] + [t]
    a, b, ls = _abl([view.alpha(u) for u in ts], [view.sigma(u) for u in ts], algorithm == "dpm_solver_pp")
    m_s = model(x, ts[0].to(x.dtype)) if model_s is None else model_s
    return _singlestep(lambda y, j: model(y, ts[j].to(x.dtype)), x, m_s, a, b, ls)


def dpm_solver_second_order(model: Callable[..., torch.Tensor], x: torch.Tensor, s: Any, t: Any, schedule: Any, *,
                            r1: float = 0.5, model_s: torch.Tensor | None = None,
                            algorithm: str = "dpm_solver") -> torch.Tensor:
    """Singlestep DPM-Solver-2 from ``s`` to ``t < s`` (Lu et al. 2022 Alg. 4; with ``"dpm_solver_pp"``: ++(2S)).

    Args:
        model: ``model(x, t (B,))`` returning ε̂ (``"dpm_solver"``) or x̂_0 (``"dpm_solver_pp"``), e.g. from
            :func:`model_wrapper`; called at ``s_1 = t(λ_s + r_1 h)`` (and at ``s`` unless ``model_s`` is given).
        x: ``(B, ...)`` sample at ``s``. s, t: times, floats or 0-dim / ``(B,)`` tensors. schedule: as for
            :class:`NoiseScheduleVP`. r1: the intermediate point's fraction of ``h``, in ``(0, 1)``.
    """
    r1 = check_float("r1", r1, min=0.0, max=1.0, min_open=True, max_open=True)
    return _single_public(model, x, s, t, schedule, [r1], model_s, algorithm)


def dpm_solver_third_order(model: Callable[..., torch.Tensor], x: torch.Tensor, s: Any, t: Any, schedule: Any, *,
                           r1: float = 1 / 3, r2: float = 2 / 3, model_s: torch.Tensor | None = None,
                           algorithm: str = "dpm_solver") -> torch.Tensor:
    """Singlestep DPM-Solver-3 from ``s`` to ``t`` (Lu et al. 2022 Alg. 5): two intermediate calls at ``r_1, r_2``.

    Args: as :func:`dpm_solver_second_order`, with ``0 < r1 < r2 < 1``.
    """
    r1 = check_float("r1", r1, min=0.0, max=1.0, min_open=True, max_open=True)
    r2 = check_float("r2", r2, min=0.0, max=1.0, min_open=True, max_open=True)
    if r1 >= r2:
        raise ValueError(f"r1 must be < r2, got r1={r1}, r2={r2}")
    return _single_public(model, x, s, t, schedule, [r1, r2], model_s, algorithm)


# ----------------------------------------------------------------------------- samplers


def _points(ts: torch.Tensor, la: torch.Tensor, t_in: torch.Tensor, x: torch.Tensor, pp: bool) -> dict[str, Any]:
    """Coefficients at the times ``ts`` with ``log α = la`` (float64 cpu), moved once to ``x``'s device."""
    alpha, sigma = la.exp(), (-torch.expm1(2.0 * la)).sqrt()
    a, b = (sigma, alpha) if pp else (alpha, sigma)
    dev, hi = x.device, _hi(x.device)
    return dict(a=a.to(dev, hi), b=b.to(dev, hi), l=torch.log(a / b).to(dev, hi), alpha=alpha.to(dev, hi),
                sigma=sigma.to(dev, hi), t_in=t_in.to(dev, x.dtype), t=ts.tolist())


def _caller(net: Callable[..., torch.Tensor], cond: dict, kind: str, pred: str, p: dict) -> Callable[..., torch.Tensor]:
    def fn(x: torch.Tensor, j: int) -> torch.Tensor:  # the prediction at point j of p
        out = net(x, p["t_in"][j].expand(x.shape[0]), **cond)
        return _convert(out, x, _bc(p["alpha"][j], x), _bc(p["sigma"][j], x), kind, pred)
    return fn


def _run_multistep(fn, x, p, orders, callback, pp) -> torch.Tensor:
    outs: list[torch.Tensor] = []
    for i, k in enumerate(orders):
        outs = (outs + [fn(x, i)])[-3:]
        x = _multistep(x, outs[-k:], p["a"][i], p["a"][i + 1], p["b"][i + 1], p["l"][i + 1 - k:i + 2])
        if callback is not None:
            callback(dict(i=i, t=p["t"][i], x=x, **({"x0": outs[-1]} if pp else {})))
    return x


@torch.no_grad()
def sample(net: Callable[..., torch.Tensor], shape: tuple[int, ...], *, schedule: Any = None, model_kind: str = "eps",
           steps: int = 20, algorithm: str = "dpm_solver", order: int | None = None, method: str | None = None,
           skip_type: str = "time_uniform", t_end: float | None = None, lower_order_final: bool = True,
           generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None,
           callback: Callable[[dict[str, Any]], None] | None = None, noise: torch.Tensor | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Solve the probability-flow ODE from ``x_1 ~ N(0, I)`` to ``t_end`` by DPM-Solver(++) in ``steps`` network calls.

    Args:
        net: ``net(x, t (B,), **cond)`` predicting ``model_kind`` at ``model_time(t)`` (see the module docstring).
        shape: ``(B, *data_shape)``. schedule: a VPSDE, a NoiseSchedule or a :class:`NoiseScheduleVP`; None =
            ``net.sde`` if the net has one (a score_sde ScoreNet), else DDPM's default linear schedule, T = 1000.
        model_kind: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``. steps: network calls (NFE), positive.
        algorithm: ``"dpm_solver"`` (noise prediction, Lu et al. 2022) or ``"dpm_solver_pp"`` (data prediction,
            Lu et al. 2022b). order: 1-3; default 3 for ``"dpm_solver"``, 2 for ``"dpm_solver_pp"``.
        method: ``"singlestep"`` (DPM-Solver-fast: windows of :func:`singlestep_orders`, needs ``steps >= order``;
            with ``"logSNR"`` they are uniform in λ, else cut from the ``steps``-point grid; the inner points are
            spaced by ``skip_type`` within each window, as in the reference) or ``"multistep"``; default
            singlestep for ``"dpm_solver"``, multistep for ``"dpm_solver_pp"``.
        skip_type, t_end: as in :func:`time_steps` (``"logSNR"`` suits low-dimensional data best).
        lower_order_final: multistep only: with ``steps < 10``, step ``i`` has order ``min(order, steps - i)``.
        generator, noise, device, dtype: the initial ``x_1``, as in :func:`edifice.generative.ddpm.sample`.
        cond: conditioning for ``net``. callback: ``dict(i, t, x[, x0])`` after each (outer) step; ``t`` (float)
            is where the step started and the model was called, ``x0`` the data prediction there (++ only).

    Returns:
        ``(B, *data_shape)`` the solution at ``t_end``, under ``torch.no_grad()``; the loop makes no host sync.

    Raises:
        ValueError / TypeError: unknown ``algorithm`` / ``method`` / ``skip_type`` / ``model_kind``, ``order``
        not in {1, 2, 3}, ``steps <= 0``, ``steps < order`` (singlestep), a VE or sub-VP SDE, bad ``t_end``,
        ``shape``, ``noise``, ``cond`` or ``net``.
    """
    if schedule is None:
        schedule = net.sde if isinstance(getattr(net, "sde", None), SDE) else _schedule(None)
    view, cond = _view(schedule), check_cond(cond)
    check_choice("model_kind", model_kind, MODEL_KINDS)
    check_choice("algorithm", algorithm, ALGORITHMS)
    pp = algorithm == "dpm_solver_pp"
    order = check_int("order", (2 if pp else 3) if order is None else order, min=1, max=3)
    method = check_choice("method", method or ("multistep" if pp else "singlestep"), METHODS)
    check_int("steps", steps, min=1)
    check_choice("skip_type", skip_type, SKIP_TYPES)
    t0 = _t_end(view, t_end)
    orders = singlestep_orders(steps, order) if method == "singlestep" else None
    x = _start(net, shape, noise, generator, device, dtype)

    def points(ts: torch.Tensor) -> dict[str, Any]:
        return _points(ts, view.log_alpha(ts), view.model_time(ts), x, pp)

    pred = "x0" if pp else "eps"
    if method == "multistep":
        p = points(_grid(view, steps, skip_type, view.T, t0))
        final = lower_order_final and steps < 10
        orders = [min(order, i + 1, steps - i if final else order) for i in range(steps)]
        return _run_multistep(_caller(net, cond, model_kind, pred, p), x, p, orders, callback, pp)
    if skip_type == "logSNR":
        outer = _grid(view, len(orders), skip_type, view.T, t0)
    else:
        outer = _grid(view, steps, skip_type, view.T, t0)[torch.tensor(np.cumsum([0] + orders))]
    windows = [points(_grid(view, k, skip_type, float(outer[i]), float(outer[i + 1]))) for i, k in enumerate(orders)]
    for i, p in enumerate(windows):  # every coefficient was computed above: no host sync in this loop
        fn = _caller(net, cond, model_kind, pred, p)
        m_s = fn(x, 0)
        x = _singlestep(fn, x, m_s, p["a"], p["b"], p["l"])
        if callback is not None:
            callback(dict(i=i, t=p["t"][0], x=x, **({"x0": m_s} if pp else {})))
    return x


@torch.no_grad()
def sample_discrete(net: Callable[..., torch.Tensor], shape: tuple[int, ...], *, steps: int = 20,
                    schedule: NoiseSchedule | None = None, target: str = "eps", order: int = 2,
                    spacing: str = "linspace", lower_order_final: bool = True, generator: torch.Generator | None = None,
                    cond: Mapping[str, Any] | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
                    noise: torch.Tensor | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Multistep DPM-Solver++ on integer timesteps, reproducing diffusers' ``DPMSolverMultistepScheduler`` defaults.

    Timesteps from :func:`discrete_timesteps`; ``α = √ᾱ_t``, ``σ = √(1-ᾱ_t)`` there and a final ``σ = 0``
    (``final_sigmas_type="zero"``: the last step returns x̂_0). Step ``i`` has order ``min(order, i + 1)``, except
    the last (order 1) and, with ``lower_order_final`` and ``steps < 15``, the one before it (at most 2); the
    update is the ``"midpoint"`` one. ``steps`` calls of ``net(x, t (B,) float, **cond)`` at the integer ``t``.

    Args:
        steps: in ``[1, T-1]``. schedule: default DDPM's linear, T = 1000. target: ``"eps"``, ``"x0"`` or ``"v"``
            (diffusers' ``prediction_type``). order: ``solver_order``, 1-3. spacing: ``timestep_spacing``.
        Others as in :func:`sample`; callback gets ``dict(i, t (int), x, x0)``.

    Raises:
        ValueError / TypeError: bad ``steps``, ``order``, ``target``, ``spacing``, ``schedule``, ``shape``,
        ``noise``, ``cond`` or ``net``.
    """
    schedule = _schedule(schedule)
    check_choice("target", target, TARGETS)
    check_int("order", order, min=1, max=3)
    cond = check_cond(cond)
    ts = discrete_timesteps(schedule.T, steps, spacing)
    x = _start(net, shape, noise, generator, device, dtype)
    la = torch.cat([0.5 * schedule.alpha_bar.detach().to("cpu", _F64)[ts].log(), torch.zeros(1, dtype=_F64)])
    p = _points(ts, la, ts.to(_F64), x, True)  # plus a final point with alpha = 1, sigma = 0
    p["t"] = ts.tolist()
    orders = [min(order, i + 1) for i in range(steps - 1)] + [1]
    if lower_order_final and 2 <= steps < 15:
        orders[-2] = min(orders[-2], 2)
    return _run_multistep(_caller(net, cond, target, "x0", p), x, p, orders, callback, True)
