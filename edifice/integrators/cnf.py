"""Log-likelihood of a continuous normalizing flow by the instantaneous change of variables.

For an ODE ``dx/dt = f(x, t)`` that carries the data at ``ts[0]`` to a prior at ``ts[-1]``,
``d log p_t(x_t) / dt = -∇·f(x_t, t)`` (Chen et al. 2018, Theorem 1), so

    log p_{ts[0]}(x) = log p_prior(x_{ts[-1]}) + ∫_{ts[0]}^{ts[-1]} ∇·f(x_t, t) dt.

:func:`cnf_log_prob` integrates the augmented state ``[x_t, ℓ_t]`` with ``dℓ/dt = ∇·f`` on any method of
:mod:`edifice.integrators` (the formula holds for either direction of time). Every family with a
deterministic flow — flow matching, the probability-flow ODE of score SDEs, EDM — computes its
likelihood here.

Example (a zero field leaves the prior's density unchanged: ``log N(0; 0, I_2) = -ln 2π``):
    >>> import math, torch
    >>> from edifice.integrators import cnf_log_prob
    >>> prior = lambda z: -0.5 * z.square().sum(1) - math.log(2 * math.pi)
    >>> x = torch.zeros(3, 2)
    >>> cnf_log_prob(lambda t, x: 0 * x, x, torch.linspace(0, 1, 5), prior_log_prob=prior).tolist()
    [-1.8378770351409912, -1.8378770351409912, -1.8378770351409912]

References:
    Neural Ordinary Differential Equations. Chen, Rubanova, Bettencourt, Duvenaud, 2018. arXiv:1806.07366.
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models. Grathwohl, Chen,
    Bettencourt, Sutskever, Duvenaud, 2019. arXiv:1810.01367.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from edifice._checks import check_choice, check_float, check_generator, check_int, check_tensor
from edifice.integrators.divergence import (
    PROBE_DISTRIBUTIONS, divergence_exact, divergence_hutchinson, hutchinson_probes,
)
from edifice.integrators.ode import METHODS, odeint

__all__ = ["cnf_log_prob", "DIVERGENCES", "auto_divergence"]

DIVERGENCES = ("exact", "hutchinson")
"""Divergence estimators accepted by :func:`cnf_log_prob`."""


def auto_divergence(x: torch.Tensor, *, max_exact_dims: int = 16) -> str:
    """``"exact"`` for data with at most ``max_exact_dims`` dimensions per sample, else ``"hutchinson"``."""
    return "exact" if x[0].numel() <= max_exact_dims else "hutchinson"


def cnf_log_prob(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    ts: torch.Tensor,
    *,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor],
    method: str = "rk4",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    n_probes: int = 1,
    dist: str = "rademacher",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log-density ``(B,)`` in nats at ``x`` of the flow ``dx/dt = f(t, x)`` whose prior sits at ``ts[-1]``.

    Args:
        f: vector field ``f(t, x)`` (``t`` a 0-dim tensor), e.g. from :func:`edifice.integrators.network_field`.
        x: ``(B, ...)`` points at time ``ts[0]``.
        ts: ``(N,)`` integration grid from the data time to the prior time (any direction; uneven grids work
            with the fixed-step methods).
        prior_log_prob: ``prior_log_prob(z (B, ...)) -> (B,)`` nats at ``ts[-1]``.
        method: any name of :data:`edifice.integrators.METHODS`.
        rtol, atol: tolerances of adaptive methods.
        divergence: ``"exact"`` (one backward pass per dimension; small data) or ``"hutchinson"`` (an unbiased
            stochastic trace, ``n_probes`` probes per sample drawn once and held fixed along the solve, as in
            FFJORD; large data).
        n_probes: Hutchinson probes per sample (averaged).
        dist: Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        generator: draws the probes.

    Returns:
        ``(B,)`` log-densities in nats. An evaluation routine: no gradient flows back.

    Raises:
        ValueError: for unknown ``method`` / ``divergence`` / ``dist``, ``n_probes < 1``, a batchless ``x``,
            or fewer than two times.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    check_tensor("ts", ts, ndim=1)
    if ts.shape[0] < 2:
        raise ValueError(f"ts must hold at least 2 times, got shape {tuple(ts.shape)}")
    check_choice("method", method, METHODS)
    check_float("rtol", rtol, min=0.0, min_open=True)
    check_float("atol", atol, min=0.0, min_open=True)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("dist", dist, PROBE_DISTRIBUTIONS)
    n_probes = check_int("n_probes", n_probes, min=1)
    generator = check_generator(generator)
    if not callable(prior_log_prob):
        raise TypeError(f"prior_log_prob must be callable, got {type(prior_log_prob).__name__}")
    b, data_shape = x.shape[0], tuple(x.shape[1:])
    d = math.prod(data_shape)
    probes = None
    if divergence == "hutchinson":  # drawn once per solve: the augmented field stays deterministic
        probes = hutchinson_probes(x.shape, n_probes=n_probes, dist=dist, generator=generator, device=x.device,
                                   dtype=x.dtype)  # (K, B, ...)

    def augmented(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x_t = z[:, :d].reshape(b, *data_shape)  # (B, D + 1) -> (B, *data_shape)
        if probes is None:
            v, div = divergence_exact(f, t, x_t)
        else:
            v, div = divergence_hutchinson(f, t, x_t, noise=probes)
        return torch.cat([v.reshape(b, d), div[:, None]], dim=1)  # (B, D + 1)

    z0 = torch.cat([x.detach().reshape(b, d), x.new_zeros(b, 1)], dim=1)  # (B, D + 1)
    with torch.no_grad():
        z1 = odeint(augmented, z0, ts.to(device=x.device), method=method, rtol=rtol, atol=atol)
    x_prior = z1[:, :d].reshape(b, *data_shape)
    return prior_log_prob(x_prior) + z1[:, d]
