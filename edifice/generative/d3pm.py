r"""Discrete denoising diffusion (D3PM, Austin et al. 2021): categorical forward chains, x0-parameterised reverse.

**Time convention:** integer steps ``t ∈ {1, ..., T}``; ``x_0`` is the data and ``x_T`` (nearly) the stationary
law of the chain. Networks are called ``net(x_t, t.float(), **cond)`` with ``x_t`` a long tensor of states
``(B, *data_shape)`` and return logits ``(B, *data_shape, K)`` of ``p̃_θ(x_0 | x_t)``.

Each of the ``D`` data elements (pixels / coordinates) takes one of ``K = categories`` values and is noised
independently by a row-stochastic transition matrix, ``[Q_t]_{ij} = q(x_t = j | x_{t-1} = i)`` (Austin et al.
Sec. 3)::

    q(x_t | x_{t-1}) = Cat(x_t; x_{t-1} Q_t),      q(x_t | x_0) = Cat(x_t; x_0 Q̄_t),   Q̄_t = Q_1 Q_2 ... Q_t,
    q(x_{t-1} | x_t, x_0) = Cat(x_{t-1}; (x_t Q_tᵀ ⊙ x_0 Q̄_{t-1}) / (x_0 Q̄_t x_tᵀ))                  (eq. 3)

(rows ``x`` one-hot). Three chains (:data:`TRANSITIONS`, App. A.2):

- ``"uniform"``: ``Q_t = (1 - β_t) I + β_t 𝟙𝟙ᵀ / K``, stationary law uniform; ``Q̄_t = ᾱ_t I + (1 - ᾱ_t) 𝟙𝟙ᵀ/K``
  with ``ᾱ_t = Π_{s≤t} (1 - β_s)``. Default betas: Hoogeboom et al.'s cosine schedule (``ᾱ_T = 0``).
- ``"absorbing"``: an extra **mask** state ``m = K`` (``K' = K + 1`` states); ``Q_t = (1 - β_t) I + β_t 𝟙 e_mᵀ``,
  ``Q̄_t = ᾱ_t I + (1 - ᾱ_t) 𝟙 e_mᵀ``: each element is masked for good with probability ``1 - ᾱ_t``. This is
  *masked diffusion* (the absorbing case of D3PM; BERT-like). Default betas ``β_t = 1 / (T - t + 1)``, so that
  ``1 - ᾱ_t = t / T`` (every element masked at ``t = T``).
- ``"gaussian"``: discretised Gaussian for ordinal data (App. A.2.1),
  ``[Q_t]_{ij} = exp(-4 (i - j)² / ((K-1)² β_t)) / Σ_{n=-(K-1)}^{K-1} exp(-4 n² / ((K-1)² β_t))`` for ``i ≠ j``
  and the rest of the row's mass on the diagonal; symmetric, so its stationary law is uniform. ``Q̄_t`` is the
  matrix product (no closed form). Default betas ``linspace(0.02, 1, T)`` (Austin et al.'s image setting).

The network predicts ``x_0`` (Sec. 3.3) and the reverse step marginalises it through the posterior (eq. 4),
``p_θ(x_{t-1} | x_t) ∝ Σ_{x̃_0} q(x_{t-1}, x_t | x̃_0) p̃_θ(x̃_0 | x_t) ∝ x_t Q_tᵀ ⊙ p̃_θ Q̄_{t-1}``, which is
:func:`posterior` with a distribution in place of the one-hot ``x_0``. Training minimises the hybrid loss
``L_λ = L_vb + λ E[-log p̃_θ(x_0 | x_t)]`` (eq. 5). Data in model space ``[-1, 1]`` is quantised to ``K`` evenly
spaced levels ``-1 + 2k / (K - 1)`` (:func:`to_states`; ``K = 2`` is the binarisation ``x > 0``) and samples are
mapped back (:func:`to_model_space`, ``{-1, 1}`` for ``K = 2``). Transition matrices are float64.

Example:
    >>> import torch
    >>> from edifice.generative import d3pm
    >>> g = torch.Generator().manual_seed(0)
    >>> net = d3pm.build(data_shape=(4,), categories=3, transition="absorbing", T=10, hidden=16, depth=1)
    >>> value, logs = d3pm.loss(net, torch.rand(8, 4, generator=g) * 2 - 1, generator=g)
    >>> sorted(logs)
    ['ce', 'loss', 'prior', 'vb']
    >>> d3pm.sample(net, (2, 4), generator=g).unique().tolist() <= [-1.0, 0.0, 1.0]
    True

References:
    Structured Denoising Diffusion Models in Discrete State-Spaces. Austin, Johnson, Ho, Tarlow, van den Berg,
    2021. arXiv:2107.03006.
    Argmax Flows and Multinomial Diffusion: Learning Categorical Distributions (uniform chain, cosine
    schedule). Hoogeboom, Nielsen, Jaini, Forré, Welling, 2021. arXiv:2102.05379.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    batch_steps, check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple,
    check_tensor, rand, randint,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import hi_dtype, resolve_device_dtype

__all__ = [
    "TRANSITIONS", "D3PMSchedule", "D3PMNet", "default_betas", "uniform_matrices", "absorbing_matrices",
    "gaussian_matrices", "transition_matrices", "cumulative_matrices", "make_schedule", "to_states",
    "to_model_space", "q_xt_given_x0", "q_sample", "posterior", "build", "loss", "nll_bound", "reverse_step",
    "sample",
]

TRANSITIONS = ("uniform", "absorbing", "gaussian")
_TINY = 1e-30


# ----------------------------------------------------------------------------- transition matrices


def _betas_arg(betas: Any, *, positive: bool = False) -> torch.Tensor:
    """A non-empty 1-D sequence / tensor of betas in [0, 1] (or (0, 1]) -> float64 cpu tensor (host checks)."""
    if isinstance(betas, torch.Tensor):
        if betas.ndim != 1 or betas.is_complex() or betas.dtype == torch.bool:
            raise ValueError(f"betas must be a 1-D real tensor, got shape {tuple(betas.shape)} dtype {betas.dtype}")
        b = betas.detach().to("cpu", torch.float64)
    elif isinstance(betas, Sequence) and not isinstance(betas, str):
        for v in betas:
            check_float("betas", v)
        b = torch.tensor([float(v) for v in betas], dtype=torch.float64)
    else:
        raise TypeError(f"betas must be a 1-D tensor or a sequence of numbers, got {type(betas).__name__}")
    if b.numel() == 0:
        raise ValueError("betas must be non-empty, got 0 values")
    lo_ok = (b > 0) if positive else (b >= 0)
    if not bool((lo_ok & (b <= 1)).all()):
        interval = "(0, 1]" if positive else "[0, 1]"
        raise ValueError(f"betas must lie in {interval}, got values in [{float(b.min())}, {float(b.max())}]")
    return b


def default_betas(transition: str, T: int) -> torch.Tensor:
    """Austin et al.'s default noise schedule for each chain, float64 ``(T,)`` (index ``t - 1`` holds ``β_t``).

    ``"uniform"``: cosine ``ᾱ(t) = cos((t/T + 0.008)/1.008 · π/2)`` (Hoogeboom et al. 2021, not squared),
    ``β_t = 1 - ᾱ(t)/ᾱ(t-1)``; ``"absorbing"``: ``β_t = 1/(T - t + 1)`` (``q`` masks with probability ``t/T``);
    ``"gaussian"``: ``linspace(0.02, 1, T)``. Each ends with ``β_T = 1`` (up to rounding), so ``q(x_T | x_0)`` is
    the stationary law for the uniform and absorbing chains.

    Raises:
        ValueError / TypeError: for an unknown ``transition`` or ``T < 1``.
    """
    check_choice("transition", transition, TRANSITIONS)
    check_int("T", T, min=1)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    if transition == "uniform":
        f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + 0.008) / 1.008 * math.pi / 2)
        return (1.0 - f[1:] / f[:-1]).clamp(0.0, 1.0)
    if transition == "absorbing":
        return 1.0 / (T - t + 1.0)
    return torch.linspace(0.02, 1.0, T, dtype=torch.float64) if T > 1 else torch.ones(1, dtype=torch.float64)


def uniform_matrices(K: int, betas: Any) -> torch.Tensor:
    """Uniform chain ``Q_t = (1 - β_t) I + β_t 𝟙𝟙ᵀ / K`` (Austin et al. App. A.2.1), float64 ``(T, K, K)``.

    Args:
        K: number of categories (>= 2). betas: ``(T,)`` values in ``[0, 1]`` (a tensor or a sequence).

    Raises:
        ValueError / TypeError: naming ``K`` or ``betas``.
    """
    check_int("K", K, min=2)
    b = _betas_arg(betas)[:, None, None]
    eye = torch.eye(K, dtype=torch.float64)
    return (1.0 - b) * eye + b / K  # (T, K, K)


def absorbing_matrices(K: int, betas: Any) -> torch.Tensor:
    """Absorbing chain ``Q_t = (1 - β_t) I + β_t 𝟙 e_mᵀ`` with the mask state ``m = K``, float64 ``(T, K+1, K+1)``.

    Each state jumps to the mask with probability ``β_t`` and the mask row is ``e_m`` (it stays absorbed)
    (Austin et al. App. A.2.2).

    Raises:
        ValueError / TypeError: naming ``K`` or ``betas``.
    """
    check_int("K", K, min=1)
    b = _betas_arg(betas)[:, None, None]
    eye = torch.eye(K + 1, dtype=torch.float64)
    to_mask = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    to_mask[:, K] = 1.0
    return (1.0 - b) * eye + b * to_mask  # (T, K+1, K+1)


def gaussian_matrices(K: int, betas: Any) -> torch.Tensor:
    """Discretised Gaussian chain of Austin et al. App. A.2.1, float64 ``(T, K, K)``.

    ``[Q_t]_{ij} = exp(-4 (i-j)² / ((K-1)² β_t)) / Σ_{n=-(K-1)}^{K-1} exp(-4 n² / ((K-1)² β_t))`` for ``i ≠ j``,
    ``[Q_t]_{ii} = 1 - Σ_{l≠i} [Q_t]_{il}``: nearby levels are likelier, as for Gaussian noise on ordinal data.

    Args:
        K: number of levels (>= 2). betas: ``(T,)`` values in ``(0, 1]``.

    Raises:
        ValueError / TypeError: naming ``K`` or ``betas`` (a zero beta is rejected: it divides).
    """
    check_int("K", K, min=2)
    b = _betas_arg(betas, positive=True)[:, None, None]
    n = torch.arange(-(K - 1), K, dtype=torch.float64)
    norm = torch.exp(-4.0 * n**2 / ((K - 1) ** 2 * b)).sum(dim=-1, keepdim=True)  # (T, 1, 1)
    i = torch.arange(K, dtype=torch.float64)
    d2 = (i[:, None] - i[None, :]) ** 2
    off = torch.exp(-4.0 * d2 / ((K - 1) ** 2 * b)) / norm * (1.0 - torch.eye(K, dtype=torch.float64))
    return off + torch.diag_embed(1.0 - off.sum(dim=-1))  # (T, K, K)


_MATRICES = {"uniform": uniform_matrices, "absorbing": absorbing_matrices, "gaussian": gaussian_matrices}


def transition_matrices(transition: str, K: int, betas: Any) -> torch.Tensor:
    """The one-step matrices ``Q_1..Q_T`` of a chain by name, float64 ``(T, K', K')`` (``K' = K + 1`` absorbing)."""
    check_choice("transition", transition, TRANSITIONS)
    return _MATRICES[transition](K, betas)


def cumulative_matrices(transition: str, K: int, betas: Any) -> torch.Tensor:
    """``Q̄_0 = I, Q̄_1, ..., Q̄_T`` with ``Q̄_t = Q_1 ... Q_t``, float64 ``(T + 1, K', K')``.

    Closed form for the uniform (``ᾱ_t I + (1 - ᾱ_t) 𝟙𝟙ᵀ/K``) and absorbing (``ᾱ_t I + (1 - ᾱ_t) 𝟙 e_mᵀ``)
    chains, ``ᾱ_t = Π_{s≤t}(1 - β_s)``; the running matrix product for the Gaussian chain.

    Raises:
        ValueError / TypeError: naming ``transition``, ``K`` or ``betas``.
    """
    check_choice("transition", transition, TRANSITIONS)
    if transition == "gaussian":
        q = gaussian_matrices(K, betas)
        out = [torch.eye(K, dtype=torch.float64)]
        for qt in q:
            out.append(out[-1] @ qt)
        return torch.stack(out)
    check_int("K", K, min=2 if transition == "uniform" else 1)
    b = _betas_arg(betas)
    ab = torch.cat([b.new_ones(1), torch.cumprod(1.0 - b, 0)])[:, None, None]  # (T+1, 1, 1)
    if transition == "uniform":
        return ab * torch.eye(K, dtype=torch.float64) + (1.0 - ab) / K
    to_mask = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    to_mask[:, K] = 1.0
    return ab * torch.eye(K + 1, dtype=torch.float64) + (1.0 - ab) * to_mask


class D3PMSchedule(NamedTuple):
    """A D3PM chain: ``matrices[t-1] = Q_t`` ``(T, K', K')``, ``cumulative[t] = Q̄_t`` ``(T+1, K', K')`` (float64)."""

    transition: str
    categories: int
    betas: torch.Tensor
    matrices: torch.Tensor
    cumulative: torch.Tensor

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    @property
    def num_states(self) -> int:
        """``K' = K + 1`` for the absorbing chain (the mask is state ``K``), else ``K``."""
        return self.categories + (self.transition == "absorbing")

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "D3PMSchedule":
        """The schedule's tensors on ``device`` (in ``dtype``, default float64 where the device has it)."""
        dtype = dtype or hi_dtype(torch.device(device))
        return self._replace(**{k: getattr(self, k).to(device, dtype) for k in ("betas", "matrices", "cumulative")})


def make_schedule(transition: str, categories: int, T: int, betas: Any = None) -> D3PMSchedule:
    """Build a :class:`D3PMSchedule` (``betas=None``: :func:`default_betas`; else ``T`` must equal ``len(betas)``).

    Raises:
        ValueError / TypeError: naming ``transition``, ``categories``, ``T`` or ``betas``.
    """
    check_choice("transition", transition, TRANSITIONS)
    check_int("categories", categories, min=2)
    check_int("T", T, min=1)
    b = default_betas(transition, T) if betas is None else _betas_arg(betas, positive=transition == "gaussian")
    if b.shape[0] != T:
        raise ValueError(f"betas must have T = {T} values, got {b.shape[0]}")
    return D3PMSchedule(transition, categories, b, transition_matrices(transition, categories, b),
                        cumulative_matrices(transition, categories, b))


# ----------------------------------------------------------------------------- states, marginals, posterior


def to_states(x: torch.Tensor, K: int) -> torch.Tensor:
    """Quantise model-space ``x ∈ [-1, 1]`` to the nearest of ``K`` levels ``-1 + 2k/(K-1)`` -> long states.

    Ties go down, so ``K = 2`` is exactly the binarisation ``x > 0``; values outside ``[-1, 1]`` are clamped.

    Raises:
        TypeError: if ``x`` is not a floating tensor. ValueError / TypeError: naming ``K``.
    """
    check_tensor("x", x, floating=True)
    check_int("K", K, min=2)
    return torch.ceil((x + 1.0) / 2.0 * (K - 1) - 0.5).clamp(0, K - 1).long()


def to_model_space(states: torch.Tensor, K: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map states ``k ∈ {0..K-1}`` to the model-space levels ``-1 + 2k/(K-1)`` (``{-1, 1}`` for ``K = 2``)."""
    check_int("K", K, min=2)
    return states.to(dtype) * (2.0 / (K - 1)) - 1.0


def _states_arg(name: str, x: Any, num_states: int) -> torch.Tensor:
    check_tensor(name, x)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of states, got dtype {x.dtype}")
    if x.ndim < 1 or (x.numel() and bool(((x < 0) | (x >= num_states)).any())):
        raise ValueError(f"{name} must hold states in [0, {num_states}) with a batch dimension, got shape "
                         f"{tuple(x.shape)}")
    return x.long()


def _schedule_arg(net: Any, schedule: Any) -> D3PMSchedule:
    if schedule is None:
        schedule = getattr(net, "schedule", None)
        if schedule is None:
            raise TypeError("schedule must be given (a D3PMSchedule) when net has no .schedule attribute")
    if not isinstance(schedule, D3PMSchedule):
        raise TypeError(f"schedule must be a D3PMSchedule, got {type(schedule).__name__}")
    return schedule


def _steps(t: Any, x: torch.Tensor, T: int, *, low: int = 1) -> torch.Tensor:
    t = batch_steps(t, x, "t")
    if bool(((t < low) | (t > T)).any()):  # host sync: public entry points only
        raise ValueError(f"t must be in [{low}, {T}], got values in [{int(t.min())}, {int(t.max())}]")
    return t


def _probs(x0: torch.Tensor, num_states: int, dtype: torch.dtype) -> torch.Tensor:
    """Long states -> one-hot; probabilities over ``K`` or ``K'`` states -> padded to ``K'`` (mask prob 0)."""
    if not x0.is_floating_point():
        return F.one_hot(x0, num_states).to(dtype)
    x0 = x0.to(dtype)
    return F.pad(x0, (0, num_states - x0.shape[-1])) if x0.shape[-1] < num_states else x0


def _x0_arg(x0: Any, schedule: D3PMSchedule) -> torch.Tensor:
    check_tensor("x0", x0)
    if x0.is_floating_point():
        if x0.ndim < 2 or x0.shape[-1] not in (schedule.categories, schedule.num_states):
            raise ValueError(f"x0 probabilities must have shape (B, ..., {schedule.categories}) or "
                             f"(B, ..., {schedule.num_states}), got {tuple(x0.shape)}")
        return x0
    return _states_arg("x0", x0, schedule.num_states)


def _gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` for ``t (B,)`` shaped ``(B, 1, ..., 1, K', K')`` to broadcast over ``ndim - 1`` data dims."""
    out = table[t]
    return out.reshape(out.shape[:1] + (1,) * (ndim - 1) + out.shape[1:])


def q_xt_given_x0(x0: torch.Tensor, t: Any, schedule: D3PMSchedule) -> torch.Tensor:
    """``q(x_t | x_0) = x_0 Q̄_t`` (Austin et al. Sec. 3) for every element: probabilities ``(B, ..., K')``.

    Args:
        x0: ``(B, ...)`` long states, or ``(B, ..., K)`` / ``(B, ..., K')`` probabilities.
        t: ``(B,)`` integer steps in ``[0, T]`` (``t = 0`` gives ``x_0`` itself) or an int.
        schedule: the chain (:func:`make_schedule` or ``net.schedule``).

    Returns:
        ``(B, ..., K')`` in float64 (float32 on mps) on ``x0``'s device.
    """
    schedule = _schedule_arg(None, schedule)
    x0 = _x0_arg(x0, schedule)
    lead = x0 if not x0.is_floating_point() else x0[..., 0]
    t = _steps(t, lead, schedule.T, low=0)
    sch = schedule.to(x0.device)
    p = _probs(x0, schedule.num_states, sch.cumulative.dtype)
    return (p.unsqueeze(-2) @ _gather(sch.cumulative, t, lead.ndim)).squeeze(-2)


def _categorical(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Inverse-CDF draw from probabilities ``(..., K')`` (need not be normalised) -> long ``(...)``."""
    u = rand(p.shape[:-1] + (1,), generator=generator, device=p.device, dtype=p.dtype)
    c = p.cumsum(-1)
    return (c < u * c[..., -1:]).sum(-1).clamp_max(p.shape[-1] - 1)


def q_sample(x0: torch.Tensor, t: Any, schedule: D3PMSchedule, *, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """Draw ``x_t ~ q(x_t | x_0)`` elementwise: long states ``(B, ...)`` (``x0`` long states ``(B, ...)``)."""
    schedule = _schedule_arg(None, schedule)
    x0 = _states_arg("x0", x0, schedule.num_states)
    return _categorical(q_xt_given_x0(x0, t, schedule), check_generator(generator))


def _posterior(x_t: torch.Tensor, p0: torch.Tensor, t: torch.Tensor, sch: D3PMSchedule) -> torch.Tensor:
    """Unchecked :func:`posterior`; ``p0 (B, ..., K')`` in the schedule's dtype, ``sch`` on the right device."""
    nd = x_t.ndim
    qt = _gather(sch.matrices, t - 1, nd)  # (B, 1.., K', K'): Q_t
    fact1 = torch.gather(qt.expand(x_t.shape + qt.shape[-2:]).transpose(-1, -2), -2,
                         x_t[..., None, None].expand(x_t.shape + (1, qt.shape[-1]))).squeeze(-2)  # x_t Q_tᵀ
    fact2 = (p0.unsqueeze(-2) @ _gather(sch.cumulative, t - 1, nd)).squeeze(-2)  # p0 Q̄_{t-1}
    w = fact1 * fact2  # (B, ..., K')
    return w / w.sum(-1, keepdim=True).clamp_min(_TINY)


def posterior(x_t: torch.Tensor, x0_probs: torch.Tensor, t: Any, schedule: D3PMSchedule) -> torch.Tensor:
    """``q(x_{t-1} | x_t, x_0) ∝ x_t Q_tᵀ ⊙ x_0 Q̄_{t-1}`` (Austin et al. eq. 3), batched over elements.

    With a distribution ``p̃(x_0)`` in place of the one-hot ``x_0`` this is the x0-parameterised reverse step
    ``p_θ(x_{t-1} | x_t) ∝ Σ_{x̃_0} q(x_{t-1}, x_t | x̃_0) p̃(x̃_0)`` (eq. 4). Note that eq. 4 is the true reverse
    step ``Σ q(x_{t-1} | x_t, x_0) p(x_0 | x_t)`` when ``p̃(x_0) ∝ p(x_0 | x_t) / q(x_t | x_0)`` (for one element:
    ``p̃`` = the data prior), which equals Bayes' ``p(x_0 | x_t)`` only where ``q(x_t | x_0)`` does not depend on
    ``x_0`` (the absorbing chain); the network learns this through ``L_vb``. For the absorbing chain with
    ``x_t = m`` (masked) and one-hot ``x_0``: mass ``(ᾱ_{t-1} - ᾱ_t)/(1 - ᾱ_t)`` on ``x_0`` and the rest on the
    mask; an unmasked ``x_t`` stays itself.

    Args:
        x_t: ``(B, ...)`` long states in ``[0, K')``.
        x0_probs: ``(B, ..., K)`` or ``(B, ..., K')`` probabilities of ``x_0``, or ``(B, ...)`` long states.
        t: ``(B,)`` integer steps in ``[1, T]`` or an int.
        schedule: the chain.

    Returns:
        ``(B, ..., K')`` probabilities of ``x_{t-1}`` (float64; float32 on mps), each row summing to 1.

    Raises:
        ValueError / TypeError: naming ``x_t``, ``x0``, ``t`` or ``schedule``.
    """
    schedule = _schedule_arg(None, schedule)
    x_t = _states_arg("x_t", x_t, schedule.num_states)
    x0 = _x0_arg(x0_probs, schedule)
    if (x0.shape[:-1] if x0.is_floating_point() else x0.shape) != x_t.shape:
        raise ValueError(f"x0_probs must match x_t's shape {tuple(x_t.shape)} (plus a class axis), got "
                         f"{tuple(x0.shape)}")
    t = _steps(t, x_t, schedule.T)
    sch = schedule.to(x_t.device)
    return _posterior(x_t, _probs(x0, schedule.num_states, sch.cumulative.dtype), t, sch)


# ----------------------------------------------------------------------------- network


class D3PMNet(nn.Module):
    """``net(x_t, t, y=None) -> logits (B, *data_shape, K)`` of ``p̃_θ(x_0 | x_t)`` (x0-parameterisation, Sec. 3.3).

    States are one-hot encoded into ``K'`` channels per element (``(B, D K')`` for vectors, ``(B, C K', H, W)``
    for images) and fed to a time-conditioned backbone (:func:`edifice.blocks.backbone`: ResMLP, UNet or DiT)
    with ``t_scale=1`` (steps ``1..T``); its output is read as ``K'`` logits per element, of which the ``K`` data
    classes are kept (the mask is never a data value). A floating ``x_t`` is read as model-space values and
    quantised with :func:`to_states` (so ``net(x, t)`` works on any data-shaped float tensor). ``self.schedule``
    holds the chain; ``self.config`` the build options.
    """

    def __init__(self, *, data_shape: tuple[int, ...], schedule: D3PMSchedule, config: dict[str, Any],
                 inner: nn.Module) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.schedule = schedule
        self.config = config
        self.inner = inner

    def forward(self, x_t: torch.Tensor, t: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x_t", x_t, shape=(None, *self.data_shape))
        K, Kp = self.schedule.categories, self.schedule.num_states
        if x_t.is_floating_point():
            x_t = to_states(x_t, K)
        dtype = next(self.inner.parameters()).dtype
        h = F.one_hot(x_t.long(), Kp).to(dtype)  # (B, *data_shape, K')
        b = x_t.shape[0]
        if len(self.data_shape) == 1:
            h = h.reshape(b, -1)  # (B, D K')
        else:
            c, hh, ww = self.data_shape
            h = h.permute(0, 1, 4, 2, 3).reshape(b, c * Kp, hh, ww)  # (B, C K', H, W)
        t = t if isinstance(t, torch.Tensor) and t.is_floating_point() else torch.as_tensor(t, dtype=dtype)
        out = self.inner(h, t.to(device=h.device, dtype=dtype), y)
        if len(self.data_shape) == 1:
            out = out.reshape(b, self.data_shape[0], Kp)  # (B, D, K')
        else:
            out = out.reshape(b, c, Kp, hh, ww).permute(0, 1, 3, 4, 2)  # (B, C, H, W, K')
        return out[..., :K]  # (B, *data_shape, K)


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    categories: int = 2,
    transition: str = "uniform",
    T: int = 1000,
    betas: Sequence[float] | None = None,
    hidden: int = 256,
    depth: int = 3,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    dropout: float = 0.0,
    backbone: str = "auto",
    dit_preset: str | None = None,
    patch_size: int | None = None,
) -> D3PMNet:
    """Build an x0-predicting network for categorical data: a :class:`D3PMNet` carrying its chain.

    Args:
        data_shape: ``(D,)`` or a square image ``(C, H, H)``; every element takes one of ``categories`` values.
        num_classes: number of labels for class conditioning (``y=None`` means the null label), or None.
        categories: ``K >= 2`` values per element (2 = binarised data; up to 256 quantised levels).
        transition: ``"uniform"``, ``"absorbing"`` (masked diffusion) or ``"gaussian"``.
        T: number of diffusion steps (Austin et al. use 1000).
        betas: ``T`` custom betas (``β_t`` at index ``t - 1``), or None for :func:`default_betas`.
        hidden, depth: ResMLP width and depth (vector data).
        base_channels, channel_mults, num_res_blocks: UNet options (images).
        dropout: dropout probability in ``[0, 1)``.
        backbone, dit_preset, patch_size: the architecture (see :func:`edifice.blocks.backbone`).

    Returns:
        A :class:`D3PMNet` ``net(x_t, t, y=None) -> (B, *data_shape, K)`` logits.

    Raises:
        ValueError / TypeError: naming the offending option (e.g. ``data_shape=(0,)``, ``categories=1``).
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) not in (1, 3) or (len(data_shape) == 3 and data_shape[1] != data_shape[2]):
        raise ValueError(f"data_shape must be (D,) or a square image (C, H, H), got {data_shape}")
    check_int("categories", categories, min=2)
    check_choice("transition", transition, TRANSITIONS)
    check_int("T", T, min=1)
    schedule = make_schedule(transition, categories, T, betas)
    kp = schedule.num_states
    inner_shape = (data_shape[0] * kp,) if len(data_shape) == 1 else (data_shape[0] * kp, *data_shape[1:])
    inner = _backbone(inner_shape, t_scale=1.0, num_classes=num_classes, hidden=hidden, depth=depth,
                      base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                      dropout=dropout, arch=backbone, dit_preset=dit_preset, patch_size=patch_size)
    config = dict(data_shape=list(data_shape), num_classes=num_classes, categories=categories,
                  transition=transition, T=T, betas=None if betas is None else schedule.betas.tolist(),
                  hidden=hidden, depth=depth, base_channels=base_channels, channel_mults=list(channel_mults),
                  num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone, dit_preset=dit_preset,
                  patch_size=patch_size)
    return D3PMNet(data_shape=data_shape, schedule=schedule, config=config, inner=inner)


# ----------------------------------------------------------------------------- loss


def _data_states(x: Any, K: int, quantize: bool) -> torch.Tensor:
    check_tensor("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        return _states_arg("x", x, K)
    states = to_states(x, K)
    if not quantize and not torch.equal(to_model_space(states, K, x.dtype), x):
        raise ValueError(f"x must lie on the {K} levels -1 + 2k/(K-1) when quantize=False (or pass long states), "
                         f"got values such as {x.flatten()[:3].tolist()}")
    return states


def _call(net: Any, x_t: torch.Tensor, t: torch.Tensor, cond: dict, K: int, dtype: torch.dtype) -> torch.Tensor:
    out = net(x_t, t.to(dtype), **cond)
    if not isinstance(out, torch.Tensor) or out.shape != x_t.shape + (K,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"net must return x0 logits of shape {tuple(x_t.shape) + (K,)}, got {got}")
    return out


def _kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``Σ_k q log(q / p)`` over the last axis (``0 log 0 = 0``)."""
    return (torch.xlogy(q, q) - q * p.clamp_min(_TINY).log()).sum(-1)


def _prior_kl(x0: torch.Tensor, sch: D3PMSchedule) -> torch.Tensor:
    """``KL(q(x_T | x_0) || p(x_T))`` per element: the stationary prior (uniform, or all-mask)."""
    qT = (F.one_hot(x0, sch.num_states).to(sch.cumulative.dtype).unsqueeze(-2) @ sch.cumulative[-1]).squeeze(-2)
    prior = torch.zeros(sch.num_states, dtype=qT.dtype, device=qT.device)
    if sch.transition == "absorbing":
        prior[-1] = 1.0
    else:
        prior += 1.0 / sch.num_states
    return _kl(qT, prior)


def loss(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    hybrid_lambda: float = 0.01,
    quantize: bool = True,
    schedule: D3PMSchedule | None = None,
    generator: torch.Generator | None = None,
    t: Any = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hybrid loss ``L_λ = L_vb + λ E[-log p̃_θ(x_0 | x_t)]`` (Austin et al. eq. 5), one ``t`` per example.

    With ``t ~ U{1..T}`` and ``x_t ~ q(x_t | x_0)``, the variational term is ``KL(q(x_{t-1}|x_t,x_0) ||
    p_θ(x_{t-1}|x_t))`` for ``t >= 2`` and ``-log p_θ(x_0 | x_1)`` for ``t = 1``; both averaged over the data
    elements (nats per element). ``L_vb`` is the one-step Monte Carlo term (``T ×`` it estimates the bound's
    sum over steps); the constant prior term ``KL(q(x_T|x_0) || p(x_T))`` is only logged. ``λ = 0`` gives the
    pure bound, large ``λ`` approaches the auxiliary cross-entropy alone.

    Args:
        net: ``net(x_t, t, **cond) -> (B, ..., K)`` logits of ``x_0`` (e.g. :func:`build`).
        x: ``(B, ...)`` model-space data in ``[-1, 1]`` (quantised to ``K`` levels, see :func:`to_states`) or
            long states in ``[0, K)``.
        hybrid_lambda: ``λ >= 0``.
        quantize: if False, floating ``x`` must already lie on the ``K`` levels (else ValueError naming x).
        schedule: the chain (default: ``net.schedule``).
        generator: draws ``t`` and ``x_t``. t: ``(B,)`` / int override for the steps, in ``[1, T]``.
        cond: conditioning keyword arguments for ``net`` (e.g. ``{"y": labels}``).

    Returns:
        ``(loss, {"loss", "vb", "ce", "prior"})``, the logs detached (``prior``: nats per element).

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    schedule = _schedule_arg(net, schedule)
    lam = check_float("hybrid_lambda", hybrid_lambda, min=0.0)
    if not isinstance(quantize, bool):
        raise TypeError(f"quantize must be a bool, got {type(quantize).__name__}")
    cond = check_cond(cond)
    generator = check_generator(generator)
    x0 = _data_states(x, schedule.categories, quantize)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    sch = schedule.to(x.device)
    if t is None:
        t = randint(1, schedule.T + 1, (x0.shape[0],), generator=generator, device=x.device)
    else:
        t = _steps(t, x0, schedule.T)
    q_t = (F.one_hot(x0, sch.num_states).to(sch.cumulative.dtype).unsqueeze(-2)
           @ _gather(sch.cumulative, t, x0.ndim)).squeeze(-2)
    x_t = _categorical(q_t, generator)
    logits = _call(net, x_t, t, cond, schedule.categories, dtype)
    p0 = torch.softmax(logits.to(sch.cumulative.dtype), -1)
    p_post = _posterior(x_t, _probs(p0, sch.num_states, p0.dtype), t, sch)  # p_θ(x_{t-1} | x_t)
    q_post = _posterior(x_t, F.one_hot(x0, sch.num_states).to(p0.dtype), t, sch)
    nll0 = -p_post.clamp_min(_TINY).log().gather(-1, x0[..., None]).squeeze(-1)
    first = (t == 1).reshape((-1,) + (1,) * (x0.ndim - 1))
    vb = torch.where(first, nll0, _kl(q_post, p_post)).flatten(1).mean(1).mean().to(dtype)
    ce = F.cross_entropy(logits.movedim(-1, 1), x0)
    value = vb + lam * ce
    logs = {"loss": value.detach(), "vb": vb.detach(), "ce": ce.detach(),
            "prior": _prior_kl(x0, sch).mean().to(dtype).detach()}
    return value, logs


@torch.no_grad()
def nll_bound(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    schedule: D3PMSchedule | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The variational bound ``-log p(x) <= L_T + Σ_{t=2}^T L_{t-1} + L_0`` in nats per example, ``(B,)``.

    Every step's term of Austin et al.'s ``L_vb`` (their eq. 1) is evaluated at one draw ``x_t ~ q(x_t | x_0)``
    (an unbiased estimate of the bound, not the exact likelihood, which D3PM does not give); ``L_T`` is exact.
    Costs ``T`` network calls; summed over the data elements.

    Args:
        net: the x0 network. x: ``(B, ...)`` model-space data or long states. schedule: default ``net.schedule``.
        generator: draws the ``x_t``. cond: conditioning for ``net``.

    Returns:
        ``(B,)`` bound in nats (divide by ``D log 2`` for bits per dimension).
    """
    schedule = _schedule_arg(net, schedule)
    cond = check_cond(cond)
    x0 = _data_states(x, schedule.categories, True)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    g = check_generator(generator)
    sch = schedule.to(x.device)
    total = _prior_kl(x0, sch).flatten(1).sum(1)
    onehot = F.one_hot(x0, sch.num_states).to(sch.cumulative.dtype)
    for step in range(1, schedule.T + 1):
        t = torch.full((x0.shape[0],), step, device=x.device, dtype=torch.long)
        q_t = (onehot.unsqueeze(-2) @ _gather(sch.cumulative, t, x0.ndim)).squeeze(-2)
        x_t = _categorical(q_t, g)
        p0 = torch.softmax(_call(net, x_t, t, cond, schedule.categories, dtype).to(sch.cumulative.dtype), -1)
        p_post = _posterior(x_t, _probs(p0, sch.num_states, p0.dtype), t, sch)
        if step == 1:
            term = -p_post.clamp_min(_TINY).log().gather(-1, x0[..., None]).squeeze(-1)
        else:
            term = _kl(_posterior(x_t, onehot, t, sch), p_post)
        total = total + term.flatten(1).sum(1)
    return total.to(dtype)


# ----------------------------------------------------------------------------- sampler


def reverse_step(x_t: torch.Tensor, logits: torch.Tensor, t: Any, schedule: D3PMSchedule, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One ancestral step ``x_{t-1} ~ p_θ(x_{t-1} | x_t)`` from x0 logits ``(B, ..., K)`` (eq. 4): long states.

    Raises:
        ValueError / TypeError: naming ``x_t``, ``logits``, ``t`` or ``schedule``.
    """
    schedule = _schedule_arg(None, schedule)
    check_tensor("logits", logits, shape=(*x_t.shape, schedule.categories), floating=True)
    p = posterior(x_t, torch.softmax(logits.to(hi_dtype(logits.device)), -1), t, schedule)
    return _categorical(p, check_generator(generator))


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    schedule: D3PMSchedule | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Ancestral sampling ``x_T ~ p(x_T)``, then ``x_{t-1} ~ p_θ(x_{t-1} | x_t)`` for ``t = T..1`` (T net calls).

    ``x_T`` is drawn from the stationary law: all-mask for the absorbing chain, uniform otherwise (the Gaussian
    chain's matrices are symmetric, hence doubly stochastic). Every step samples, the last included (Austin
    et al.'s code takes the argmax at the last step; sampling is the exact ancestral sampler of the model).

    Args:
        net: ``net(x_t, t, **cond) -> (B, ..., K)`` x0 logits (any callable).
        shape: ``(B, *data_shape)``.
        generator: draws every step. cond: conditioning for ``net``.
        callback: called after each step with ``{"t", "x_t" (states at t - 1), "x0_probs"}``.
        schedule: the chain (default: ``net.schedule``).
        device, dtype: where and in which floating dtype to return samples (default: the net's, else cpu /
            float32).

    Returns:
        ``(B, *data_shape)`` samples in model space (levels ``-1 + 2k/(K-1)``; ``{-1, 1}`` for ``K = 2``).

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(x_t, t, **cond), got {type(net).__name__}")
    schedule = _schedule_arg(net, schedule)
    shape = check_shape_tuple("shape", shape)
    cond = check_cond(cond)
    generator = check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    device, dtype = resolve_device_dtype(net, None, device, dtype)
    sch = schedule.to(device)
    K = schedule.categories
    if schedule.transition == "absorbing":
        x = torch.full(shape, K, dtype=torch.long, device=device)
    else:
        x = randint(0, K, shape, generator=generator, device=device)
    steps = torch.arange(schedule.T, 0, -1, device=device)
    for step in steps:
        t = step.expand(shape[0])
        p0 = torch.softmax(_call(net, x, t, cond, K, dtype).to(sch.cumulative.dtype), -1)
        x = _categorical(_posterior(x, _probs(p0, sch.num_states, p0.dtype), t, sch), generator)
        if callback is not None:
            callback({"t": t, "x_t": x, "x0_probs": p0})
    return to_model_space(x.clamp_max(K - 1), K, dtype)
