"""Divergence of a vector field, ``div f(t, x) = tr(df/dx)``, for the instantaneous change of variables.

Continuous normalising flows and flow-matching likelihoods integrate ``d log p(x_t)/dt = -div f(t, x_t)``
(Chen et al. 2018, Theorem 1). Two estimators, both returning ``(f(t, x), div)`` so the field is evaluated once:

- :func:`divergence_exact`: one vector-Jacobian product per data dimension ``D`` (cost ``D`` backward
  passes); exact, for small ``D`` (2-D toy data, tests).
- :func:`divergence_hutchinson`: ``E[eps^T (df/dx) eps] = tr(df/dx)`` for probes with ``E[eps eps^T] = I``
  (Rademacher or Gaussian); one backward pass per probe, unbiased, for images.

Both treat samples as independent: row ``b`` of ``f(t, x)`` must depend on ``x[b]`` only (true for
networks without batch statistics). ``x`` may have any shape ``(B, ...)``; dimensions are flattened.
Both enable autograd internally, so they work under ``torch.no_grad()``. With ``create_graph=False`` the
results are detached (likelihood evaluation); with ``create_graph=True`` they stay differentiable with
respect to ``x`` and ``f``'s parameters (training objectives that contain the divergence).

References:
    - Neural Ordinary Differential Equations, Chen et al., 2018, arXiv:1806.07366.
    - FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models, Grathwohl et al.,
      2019, arXiv:1810.01367 (Hutchinson's estimator for CNFs).
    - A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing Splines,
      Hutchinson, 1990.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from edifice._checks import check_choice, check_int, check_tensor, randint, randn

__all__ = ["divergence_exact", "divergence_hutchinson", "hutchinson_probes", "PROBE_DISTRIBUTIONS"]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PROBE_DISTRIBUTIONS: tuple[str, ...] = ("rademacher", "gaussian")


def _eval(f: Field, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate ``f`` with a graph from ``x`` (call under ``enable_grad``); returns the leaf used and ``f``."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    fx = f(t, x)
    if not isinstance(fx, torch.Tensor) or fx.shape != x.shape:
        got = tuple(fx.shape) if isinstance(fx, torch.Tensor) else type(fx).__name__
        raise ValueError(f"f(t, x) must return a tensor of shape {tuple(x.shape)}, got {got}")
    return x, fx


def _vjp(fx: torch.Tensor, x: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``v^T (df/dx)`` per sample, zeros where ``f`` does not depend on ``x``."""
    if not fx.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(fx, x, v, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _finish(fx: torch.Tensor, div: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return (fx, div) if create_graph else (fx.detach(), div.detach())


def divergence_exact(
    f: Field, t: torch.Tensor, x: torch.Tensor, *, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact divergence ``sum_i d f_i / d x_i`` per sample, by ``D`` vector-Jacobian products.

    Args:
        f: vector field ``f(t, x)`` returning a tensor shaped like ``x``.
        t: time passed to ``f`` (usually a 0-dim tensor).
        x: ``(B, ...)`` floating-point points; ``D = prod(x.shape[1:])``.
        create_graph: keep the graph so the results can be differentiated (training).

    Returns:
        ``(f(t, x), div)`` with ``f(t, x)`` shaped like ``x`` and ``div`` of shape ``(B,)``.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor. ValueError: if ``x`` has no batch dimension or
            ``f`` returns the wrong shape.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension (B, ...), got a 0-dim tensor")
    b = x.shape[0]
    with torch.enable_grad():
        x, fx = _eval(f, t, x)
        flat_shape = (b, x[0].numel())
        div = x.new_zeros(b)
        for i in range(flat_shape[1]):
            v = x.new_zeros(flat_shape)  # (B, D)
            v[:, i] = 1.0
            g = _vjp(fx, x, v.view_as(x), create_graph)
            div = div + g.reshape(flat_shape)[:, i]  # (B,)
    return _finish(fx, div, create_graph)


def hutchinson_probes(
    shape: tuple[int, ...] | torch.Size,
    *,
    n_probes: int = 1,
    dist: str = "rademacher",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n_probes`` probe tensors with ``E[eps eps^T] = I``: shape ``(n_probes, *shape)``.

    Draw them once per trajectory and pass them to :func:`divergence_hutchinson` as ``noise=`` to keep the
    estimator fixed along an ODE solve (FFJORD does this; a field that changes at every evaluation confuses
    adaptive step-size control).

    Raises:
        ValueError: for an unknown ``dist`` (listing the valid ones) or ``n_probes < 1``.
    """
    check_choice("dist", dist, PROBE_DISTRIBUTIONS)
    n_probes = check_int("n_probes", n_probes, min=1)
    full = (n_probes, *tuple(shape))
    if dist == "gaussian":
        return randn(full, generator=generator, device=device, dtype=dtype)
    return randint(0, 2, full, generator=generator, device=device).to(dtype) * 2 - 1


def divergence_hutchinson(
    f: Field,
    t: torch.Tensor,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    n_probes: int = 1,
    dist: str = "rademacher",
    noise: torch.Tensor | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hutchinson's unbiased estimate ``mean_k eps_k^T (df/dx) eps_k`` of the divergence, per sample.

    Variance per probe, with ``S = (J + J^T) / 2``: Rademacher ``2 (||S||_F^2 - sum_i S_ii^2)`` (exact for
    diagonal Jacobians); Gaussian ``2 ||S||_F^2``. Averaging ``n_probes`` probes divides it by ``n_probes``.

    Args:
        f: vector field ``f(t, x)`` returning a tensor shaped like ``x``.
        t: time passed to ``f`` (usually a 0-dim tensor).
        x: ``(B, ...)`` floating-point points.
        generator: random generator for the probes (unused when ``noise`` is given).
        n_probes: probes averaged per sample, >= 1.
        dist: ``"rademacher"`` or ``"gaussian"``.
        noise: optional probes, shaped like ``x`` (one probe) or ``(K, *x.shape)`` (K probes, ``n_probes``
            ignored), e.g. from :func:`hutchinson_probes`.
        create_graph: keep the graph so the results can be differentiated (training).

    Returns:
        ``(f(t, x), div)`` with ``f(t, x)`` shaped like ``x`` and ``div`` of shape ``(B,)``.

    Raises:
        ValueError: for an unknown ``dist``, ``n_probes < 1``, a mis-shaped ``noise`` or ``f`` output.
        TypeError: for a non-floating ``x`` or a bad ``generator``.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension (B, ...), got a 0-dim tensor")
    if noise is None:
        probes = hutchinson_probes(
            x.shape, n_probes=n_probes, dist=dist, generator=generator, device=x.device, dtype=x.dtype
        )  # (K, B, ...)
    else:
        check_tensor("noise", noise, floating=True)
        if noise.shape == x.shape:
            probes = noise.unsqueeze(0)  # (1, B, ...)
        elif noise.ndim == x.ndim + 1 and noise.shape[1:] == x.shape:
            probes = noise
        else:
            raise ValueError(
                f"noise must have shape {tuple(x.shape)} or (K, {', '.join(map(str, x.shape))}), "
                f"got {tuple(noise.shape)}"
            )
        probes = probes.to(device=x.device, dtype=x.dtype)
    b = x.shape[0]
    with torch.enable_grad():
        x, fx = _eval(f, t, x)
        div = x.new_zeros(b)
        for eps in probes:
            g = _vjp(fx, x, eps, create_graph)  # eps^T J, shaped like x
            div = div + (g * eps).reshape(b, -1).sum(dim=1)  # (B,)
        div = div / probes.shape[0]
    return _finish(fx, div, create_graph)
