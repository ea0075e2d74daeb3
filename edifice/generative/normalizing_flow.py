r"""Normalizing flows as a family: one ``build`` over every flow of :mod:`edifice.flows`, maximum likelihood.

A flow is an invertible ``f`` with a tractable Jacobian; with ``z = f(x)`` and a standard-normal base,
the change of variables gives the exact log-density (Rezende & Mohamed 2015; Dinh et al. 2017)::

    log p(x) = log N(f(x); 0, I) + log |det ∂f/∂x|

and training minimises the negative log-likelihood ``-E log p(x)``. Sampling pushes ``z ~ N(0, I)`` through
``f⁻¹``. ``kind`` picks the transform stack (:data:`KINDS`): the coupling flows ``realnvp``, ``nice`` and
``glow`` (vectors and images), the autoregressive ``maf`` (fast density) and ``iaf`` (fast sampling), the
rational-quadratic spline flow ``nsf``, the ``planar`` and ``radial`` flows, and the continuous ``ffjord``
(vectors; the probability-flow of a learned field, trace by exact divergence).

**Images** live in model space ``[-1, 1]`` on the 8-bit grid ``2k/255 - 1``. A density on a grid is
degenerate, so :func:`loss` dequantises (Theis et al. 2016): ``k/255 -> (k + u)/256``, ``u ~ U(0, 1)``, the
same map that :func:`edifice.train.evaluate` applies before reporting bits per dimension.

Example:
    >>> import torch
    >>> from edifice.generative import normalizing_flow as nf
    >>> flow = nf.build(data_shape=(2,), kind="realnvp", blocks=2, hidden=16)
    >>> loss, logs = nf.loss(flow, torch.randn(8, 2), generator=torch.Generator().manual_seed(0))
    >>> loss.ndim, sorted(logs)
    (0, ['loss', 'nll'])
    >>> nf.sample(flow, (3, 2), generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])

References:
    Variational Inference with Normalizing Flows. Rezende, Mohamed, 2015. arXiv:1505.05770.
    Density estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2017. arXiv:1605.08803.
    Glow: Generative Flow with Invertible 1x1 Convolutions. Kingma, Dhariwal, 2018. arXiv:1807.03039.
    Masked Autoregressive Flow for Density Estimation. Papamakarios, Pavlakou, Murray, 2017. arXiv:1705.07057.
    Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019. arXiv:1906.04032.
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models. Grathwohl, Chen,
    Bettencourt, Sutskever, Duvenaud, 2019. arXiv:1810.01367.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from edifice._checks import check_choice, check_generator, check_int, check_shape_tuple, check_tensor, rand
from edifice.flows import base as _base

__all__ = ["KINDS", "IMAGE_KINDS", "build", "loss", "sample", "log_prob", "dequantize"]

KINDS = ("realnvp", "nice", "glow", "maf", "iaf", "nsf", "planar", "radial", "ffjord")
IMAGE_KINDS = ("realnvp", "nice", "glow")
_ODE_METHODS = ("rk4", "midpoint", "euler", "dopri5")


def build(
    *,
    data_shape: tuple[int, ...],
    kind: str = "realnvp",
    blocks: int = 4,
    hidden: int = 64,
    depth: int = 2,
    bins: int = 8,
    scales: int = 2,
    ode_method: str = "rk4",
    ode_steps: int = 8,
    ode_divergence: str = "exact",
    adjoint: bool = False,
    kinetic: float = 0.0,
    jacobian_norm: float = 0.0,
    num_classes: int | None = None,
) -> _base.Flow:
    """Build a flow of kind ``kind`` for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` for every kind; ``(C, H, W)`` for ``realnvp``, ``nice`` and ``glow``.
        kind: one of :data:`KINDS`.
        blocks: transforms in the stack (couplings, autoregressive layers, planar / radial layers, Glow steps per
            level, RealNVP couplings of the last scale; ignored by ``ffjord``, which has one CNF).
        hidden, depth: width and depth of every conditioner network (or of FFJORD's field).
        bins: spline bins (``nsf``). scales: RealNVP scales / Glow levels for images.
        ode_method, ode_steps: FFJORD's solver (fixed-step methods take ``ode_steps`` steps).
        ode_divergence: FFJORD's trace, ``"exact"`` (D backward passes; small D) or ``"hutchinson"`` (one probe).
        adjoint: FFJORD gradients by the adjoint method (memory O(1) in the solver steps).
        kinetic, jacobian_norm: FFJORD's RNODE regularisers (Finlay et al. 2020), added to :func:`loss`.
        num_classes: must be None: conditional flows are not part of this version.

    Raises:
        ValueError / TypeError: naming the offending option (``kind``, ``data_shape`` for an image shape with a
            vector-only kind, ...).
    """
    from edifice.flows import autoregressive, cnf, coupling, spline

    data_shape = check_shape_tuple("data_shape", data_shape)
    check_choice("kind", kind, KINDS)
    if len(data_shape) not in (1, 3):
        raise ValueError(f"data_shape must be (D,) or an image (C, H, W), got {data_shape}")
    if len(data_shape) == 3 and kind not in IMAGE_KINDS:
        raise ValueError(f"kind={kind!r} is for vectors; data_shape {data_shape} is an image (use one of "
                         f"{', '.join(IMAGE_KINDS)})")
    if num_classes is not None:
        raise ValueError(f"num_classes must be None: conditional flows are not supported yet, got {num_classes}")
    blocks = check_int("blocks", blocks, min=1)
    check_choice("ode_method", ode_method, _ODE_METHODS)
    if kind == "realnvp":
        extra = {"scales": scales} if len(data_shape) == 3 else {}
        return coupling.realnvp(data_shape, blocks=blocks, hidden=hidden, depth=depth, actnorm=True, **extra)
    if kind == "nice":
        return coupling.nice(data_shape, blocks=blocks, hidden=hidden, depth=depth)
    if kind == "glow":
        extra = {"levels": scales} if len(data_shape) == 3 else {}
        return coupling.glow(data_shape, steps=blocks, hidden=hidden, depth=depth, **extra)
    if kind == "maf":
        return autoregressive.maf(data_shape, transforms=blocks, hidden=hidden, depth=depth)
    if kind == "iaf":
        return autoregressive.iaf(data_shape, transforms=blocks, hidden=hidden, depth=depth)
    if kind == "nsf":
        return spline.nsf(data_shape, transforms=blocks, bins=bins, hidden=hidden, depth=depth)
    if kind == "planar":
        return autoregressive.planar(data_shape, layers=blocks)
    if kind == "radial":
        return autoregressive.radial(data_shape, layers=blocks)
    return cnf.ffjord(data_shape, hidden=hidden, depth=depth, method=ode_method, steps=ode_steps,
                      divergence=ode_divergence, adjoint=adjoint, kinetic=kinetic, jacobian_norm=jacobian_norm)


def _check_flow(flow: Any) -> _base.Flow:
    if not isinstance(flow, _base.Flow):
        raise TypeError(f"flow must be an edifice.flows.Flow (from normalizing_flow.build), got {type(flow).__name__}")
    return flow


def _check_x(flow: _base.Flow, x: Any) -> torch.Tensor:
    check_tensor("x", x, floating=True)
    shape = tuple(flow.shape)
    if tuple(x.shape[1:]) != shape or x.ndim != len(shape) + 1:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}) for this flow, got {tuple(x.shape)}")
    return x


def dequantize(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of model-space images on the 8-bit grid: ``k/255 -> (k + u)/256`` (in ``[-1, 1]``)."""
    k = ((x.clamp(-1, 1) + 1) / 2 * 255).round()
    u = rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (k + u) / 256 * 2 - 1


def loss(
    flow: _base.Flow,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood ``-mean log p(x)`` in nats (images dequantised first, with ``generator``).

    Returns:
        ``(loss, {"loss", "nll"})`` (detached logs; ``nll`` equals ``loss``).

    Raises:
        ValueError / TypeError: ``x`` of the wrong shape, a non-flow, or ``cond`` with labels.
    """
    flow = _check_flow(flow)
    x = _check_x(flow, x)
    check_generator(generator)
    if cond:
        raise ValueError(f"cond must be empty: conditional flows are not supported yet, got keys {sorted(cond)}")
    if x.ndim == 4:
        x = dequantize(x, generator=generator)
    for t in flow.transforms:
        if hasattr(t, "generator") and hasattr(t, "last_regularization"):
            t.generator = generator  # FFJORD's Hutchinson / Jacobian-norm probes draw from the loss's generator
    nll = -flow.log_prob(x).mean()
    logs = {"loss": nll.detach(), "nll": nll.detach()}
    regs = []
    for t in flow.transforms:
        if hasattr(t, "last_regularization") and hasattr(t, "generator"):
            t.generator = None  # keep the modules free of per-call state (they are deep-copied for the EMA)
            r = t.last_regularization
            if r is not None and r.requires_grad:
                regs.append(r)
                t.last_regularization = r.detach()
    loss = nll
    if regs:  # FFJORD with RNODE regularisers (kinetic energy, Jacobian norm)
        reg = torch.stack([r.mean() for r in regs]).sum()
        loss = nll + reg
        logs.update(loss=loss.detach(), regularization=reg.detach())
    return loss, logs


def log_prob(flow: _base.Flow, x: torch.Tensor, *, cond: Mapping[str, Any] | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact ``log p(x)`` ``(B,)`` in nats, a density in model space (no dequantisation here)."""
    flow = _check_flow(flow)
    return flow.log_prob(_check_x(flow, x))


def sample(
    flow: _base.Flow,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``shape[0]`` samples ``(n, *data_shape)``: ``z ~ N(0, I)`` pushed through the inverse flow."""
    flow = _check_flow(flow)
    shape = check_shape_tuple("shape", shape)
    if tuple(shape[1:]) != tuple(flow.shape):
        raise ValueError(f"shape must be (n, {', '.join(map(str, flow.shape))}) for this flow, got {shape}")
    if cond:
        raise ValueError(f"cond must be empty: conditional flows are not supported yet, got keys {sorted(cond)}")
    x = flow.sample(shape[0], generator=generator)
    return x.float() if x.dtype != torch.float64 else x
