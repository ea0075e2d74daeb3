r"""Rectified flow (Liu, Gong & Liu 2023): straight-path velocity regression, reflow, one-step distillation.

**Time convention:** flow matching's: ``t ∈ [0, 1]``; noise ``x0 ~ N(0, I)`` at ``t = 0``, data ``x1`` at
``t = 1``. Networks are called ``net(x_t, t, **cond)`` with ``t`` a ``(B,)`` float in ``[0, 1]``.

The rectified flow of a coupling ``(X0, X1)`` is the ODE ``dZ_t = v(Z_t, t) dt`` whose velocity solves the
least-squares problem on straight interpolations (Liu et al. eq. 1)::

    min_v ∫_0^1 E ‖(X1 - X0) - v(X_t, t)‖² dt,        X_t = t X1 + (1 - t) X0,

i.e. ``v(x, t) = E[X1 - X0 | X_t = x]`` -- flow matching with ``σ_min = 0`` (:func:`loss`). Simulating it from
``Z0 = X0`` gives a *deterministic* coupling ``(Z0, Z1)`` with the same marginals and no larger convex
transport cost. **Reflow** (their Sec. 2.3, Algorithm 1) trains a new flow on those pairs
(:func:`make_pairs`, then :func:`reflow_loss`); each round straightens the paths, so that few Euler steps
(even one) suffice. **Distillation** (Sec. 2.3) fits the one-step map ``z0 ↦ z0 + v(z0, 0)`` to the pairs
directly (:func:`distill_loss`). :func:`straightness` measures how far a flow is from straight,

    S(Z) = ∫_0^1 E ‖(Z1 - Z0) - v(Z_t, t)‖² dt,

which is 0 exactly when every trajectory is a straight line travelled at constant speed (Sec. 2.3; their
Theorem 3.7 gives ``min_{k ≤ K} S(Z^k) ≤ E‖X1 - X0‖² / K`` over ``K`` reflow rounds).

Networks and sampling are flow matching's: :func:`build` and :func:`sample` delegate to
:mod:`edifice.generative.flow_matching` (``sample(..., steps=1)`` is one Euler call, the one-step generator).

Example (a point mass at 3 has the straight field ``(3 - x) / (1 - t)``: zero straightness, exact in one step):
    >>> import torch
    >>> from edifice.generative import rectified_flow as rf
    >>> field = lambda x, t: (3.0 - x) / (1.0 - t[:, None])
    >>> g = torch.Generator().manual_seed(0)
    >>> round(float(rf.straightness(field, (4, 1), steps=10, generator=g)), 8)
    0.0
    >>> rf.sample(field, (2, 1), steps=1, generator=g)
    tensor([[3.],
            [3.]])

References:
    Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow. Liu, Gong, Liu, 2023.
    arXiv:2209.03003.
    Flow Matching for Generative Modeling. Lipman, Chen, Ben-Hamu, Nickel, Le, 2023. arXiv:2210.02747.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edifice._checks import check_choice, check_cond, check_generator, check_int, check_tensor
from edifice.generative import flow_matching as _fm
from edifice.generative._common import call_net, initial_noise
from edifice.integrators import METHODS

__all__ = ["build", "loss", "make_pairs", "reflow_loss", "distill_loss", "straightness", "path_straightness",
           "sample"]


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
    """Build a velocity network ``v_θ(x, t, y=None)``: exactly :func:`edifice.generative.flow_matching.build`.

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)``.
        num_classes: number of labels for class conditioning, or None.
        hidden, depth: ResMLP width and depth (vector data).
        base_channels, channel_mults, num_res_blocks: UNet options (images).
        dropout: dropout probability in ``[0, 1)``.
        backbone, dit_preset, patch_size: the architecture (see :func:`edifice.blocks.backbone`).

    Returns:
        An ``nn.Module`` mapping ``x (B, *data_shape)``, ``t (B,)`` to a velocity ``(B, *data_shape)``.

    Raises:
        ValueError / TypeError: naming the offending option (e.g. ``data_shape=(0,)``).
    """
    return _fm.build(data_shape=data_shape, num_classes=num_classes, hidden=hidden, depth=depth,
                     base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                     dropout=dropout, backbone=backbone, dit_preset=dit_preset, patch_size=patch_size)


def loss(
    net: Callable[..., torch.Tensor],
    x1: torch.Tensor,
    *,
    time_dist: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | float | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rectified-flow loss ``mean ‖v_θ(x_t, t) - (x1 - x0)‖²``, ``x_t = t x1 + (1 - t) x0`` (Liu et al. eq. 1).

    The independent coupling ``x0 ~ N(0, I)`` of the first rectified flow ("1-RF"); flow matching's loss with
    ``sigma_min = 0`` (the mean is over every element, as in flow matching).

    Args:
        net: velocity network ``net(x, t, **cond)``.
        x1: ``(B, ...)`` data batch.
        time_dist, time_loc, time_scale: law of ``t`` (``"uniform"`` or ``"logit_normal"``, see
            :func:`edifice.generative.flow_matching.sample_time`); unused when ``t`` is given.
        generator: draws the noise and the times.
        noise: ``(B, ...)`` override for ``x0``. t: ``(B,)`` or scalar override for the times.
        cond: conditioning keyword arguments for ``net``.

    Returns:
        ``(loss, {"loss": loss.detach()})``.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    return _fm.loss(net, x1, sigma_min=0.0, coupling="independent", time_dist=time_dist, time_loc=time_loc,
                    time_scale=time_scale, generator=generator, noise=noise, t=t, cond=cond)


def _check_pairs(x0: Any, x1: Any) -> None:
    check_tensor("x0", x0, floating=True)
    check_tensor("x1", x1, floating=True)
    if x1.ndim < 2:
        raise ValueError(f"x1 must be a batch (B, ...), got shape {tuple(x1.shape)}")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")


@torch.no_grad()
def make_pairs(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 100,
    method: str = "rk4",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the deterministic coupling ``(Z0, Z1)`` of a flow: noise and the end of its ODE (Liu et al. Alg. 1).

    ``Z0 ~ N(0, I)`` (or ``noise``) and ``Z1 = Z0 + ∫_0^1 v(Z_t, t) dt`` solved with ``method`` over ``steps``
    uniform steps; the pairs feed :func:`reflow_loss` and :func:`distill_loss`. Liu et al. solve this ODE
    accurately (an adaptive RK45); the error of the solver becomes the error of the next flow's target.

    Args:
        net: velocity network ``net(x, t, **cond)`` (any callable).
        shape: ``(B, *data_shape)``.
        steps, method, rtol, atol: the solver, as in :func:`edifice.generative.flow_matching.sample`.
        generator: draws ``Z0``. cond: conditioning for ``net`` (keep it to train a conditional reflow).
        noise: ``(B, *data_shape)`` given ``Z0``.
        device, dtype: where to sample (default: ``noise``'s, else the net's, else cpu / float32).

    Returns:
        ``(x0, x1)``, two ``(B, *data_shape)`` tensors without gradient.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    steps = check_int("steps", steps, min=1)
    check_choice("method", method, METHODS)
    generator = check_generator(generator)
    x0 = initial_noise(net, shape, noise, generator, device, dtype)
    x1 = _fm.sample(net, tuple(shape), steps=steps, method=method, rtol=rtol, atol=atol, cond=cond, noise=x0)
    return x0, x1


def reflow_loss(
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    x1: torch.Tensor,
    *,
    time_dist: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
    generator: torch.Generator | None = None,
    t: torch.Tensor | float | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reflow loss on given pairs: ``mean ‖v_θ(x_t, t) - (x1 - x0)‖²``, ``x_t = t x1 + (1 - t) x0``.

    Trains the ``(k+1)``-rectified flow on pairs ``(x0, x1)`` drawn from the ``k``-th with :func:`make_pairs`
    (Liu et al. Sec. 2.3, Algorithm 1). Only ``t`` is random; pairs must keep their alignment (and ``cond`` the
    labels they were generated with).

    Args:
        net: velocity network ``net(x, t, **cond)``.
        x0: ``(B, ...)`` start points (noise). x1: ``(B, ...)`` their end points.
        time_dist, time_loc, time_scale: law of ``t`` (see :func:`loss`).
        generator: draws the times. t: ``(B,)`` or scalar override for the times.
        cond: conditioning keyword arguments for ``net``.

    Returns:
        ``(loss, {"loss": loss.detach()})``.

    Raises:
        ValueError / TypeError: naming the offending argument (``x0`` / ``x1`` shapes must match).
    """
    _check_pairs(x0, x1)
    return _fm.loss(net, x1, sigma_min=0.0, coupling="independent", time_dist=time_dist, time_loc=time_loc,
                    time_scale=time_scale, generator=generator, noise=x0, t=t, cond=cond)


def distill_loss(
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    x1: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One-step distillation loss ``mean ‖x0 + v_θ(x0, 0) - x1‖²`` on pairs of a flow (Liu et al. Sec. 2.3).

    Fits the one-step Euler map ``T(z0) = z0 + v_θ(z0, 0)`` to the coupling ``(Z0, Z1)`` of a (rectified) flow,
    i.e. :func:`reflow_loss` with ``t = 0`` only (the mean is over every element). Liu et al. use an
    LPIPS metric for images; this is the squared L2 version. Deterministic: draws nothing.

    Args:
        net: velocity network ``net(x, t, **cond)``, sampled afterwards with ``sample(net, ..., steps=1)``.
        x0: ``(B, ...)`` start points (noise). x1: ``(B, ...)`` their end points (from :func:`make_pairs`).
        cond: conditioning keyword arguments for ``net``.

    Returns:
        ``(loss, {"loss": loss.detach()})``.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    _check_pairs(x0, x1)
    cond = check_cond(cond)
    t0 = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)
    v = call_net(net, x0, t0, cond, "a velocity")
    value = (x0 + v - x1).square().mean()
    return value, {"loss": value.detach()}


@torch.no_grad()
def straightness(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 100,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Straightness ``S(Z) = ∫_0^1 E ‖(Z1 - Z0) - v(Z_t, t)‖² dt`` of a flow (Liu et al. Sec. 2.3), estimated.

    Along the Euler trajectory ``Z_{k+1} = Z_k + v_k / N``, ``v_k = v(Z_k, k/N)`` (``N = steps``), the
    displacement is ``Z_N - Z_0 = (1/N) Σ_k v_k``, and the integral becomes the Riemann sum

        S_N = (1/N) Σ_{k<N} mean_b ‖(Z_N - Z_0)_b - v_{k,b}‖²,

    the mean over the batch of each trajectory's spread of velocities around their mean (squared Euclidean
    norm summed over the data dimensions, not averaged). It is accumulated with Welford's update, so a
    constant-velocity trajectory gives exactly 0 and memory does not grow with ``steps``. ``S = 0`` iff every
    trajectory is a straight line at constant speed -- then one Euler step is exact. ``S_N → S`` as
    ``N → ∞`` (error ``O(1/N)``). The same value as :func:`path_straightness` of the Euler trajectory.

    Args:
        net: velocity network ``net(x, t, **cond)`` (any callable).
        shape: ``(B, *data_shape)``.
        steps: number ``N`` of Euler steps (network calls).
        generator: draws ``Z0``. cond: conditioning for ``net``.
        noise: ``(B, *data_shape)`` given ``Z0``.
        device, dtype: as in :func:`sample`.

    Returns:
        0-dim tensor ``S_N`` (no gradient; the loop makes no host sync).

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    steps = check_int("steps", steps, min=1)
    cond = check_cond(cond)
    generator = check_generator(generator)
    x = initial_noise(net, shape, noise, generator, device, dtype)
    ts = torch.linspace(0.0, 1.0, steps + 1, device=x.device, dtype=x.dtype)
    mean = torch.zeros_like(x)
    m2 = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)  # (B,) Σ_k ‖v_k - running mean‖² (Welford)
    for k in range(steps):
        v = call_net(net, x, ts[k].expand(x.shape[0]), cond, "a velocity")
        delta = v - mean
        mean = mean + delta / (k + 1)
        m2 = m2 + (delta * (v - mean)).flatten(1).sum(dim=1)
        x = x + (ts[k + 1] - ts[k]) * v
    return (m2 / steps).mean()


def path_straightness(trajectory: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Straightness ``S`` of trajectories given as states on the uniform grid ``t_k = k / N``, ``k = 0..N``.

    With finite-difference velocities ``v_k = N (z_{k+1} - z_k)``:
    ``S_N = (1/N) Σ_{k<N} mean_b ‖(z_N - z_0)_b - v_{k,b}‖²`` -- for an Euler trajectory exactly
    :func:`straightness`; for any solver's trajectory the same Riemann sum of Liu et al.'s ``S(Z)``.
    Collect the states with a sampler's ``callback`` (prepend the starting noise).

    Args:
        trajectory: ``(N + 1, B, ...)`` tensor or a sequence of ``N + 1`` tensors ``(B, ...)``, ``N >= 1``.

    Returns:
        0-dim tensor.

    Raises:
        ValueError / TypeError: for a non-tensor, fewer than 2 states or mismatched shapes.
    """
    if isinstance(trajectory, (list, tuple)):
        for i, z in enumerate(trajectory):
            check_tensor(f"trajectory[{i}]", z, floating=True)
        if len(trajectory) < 2 or any(z.shape != trajectory[0].shape for z in trajectory):
            raise ValueError(f"trajectory must hold at least 2 states of one shape, got shapes "
                             f"{[tuple(z.shape) for z in trajectory]}")
        trajectory = torch.stack(tuple(trajectory))
    check_tensor("trajectory", trajectory, floating=True)
    if trajectory.ndim < 3 or trajectory.shape[0] < 2:
        raise ValueError(f"trajectory must have shape (N + 1, B, ...) with N >= 1, got {tuple(trajectory.shape)}")
    n = trajectory.shape[0] - 1
    z = trajectory.flatten(2)  # (N + 1, B, D)
    v = n * (z[1:] - z[:-1])  # (N, B, D)
    d = z[-1] - z[0]  # (B, D)
    return (d - v).square().sum(dim=2).mean()


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 20,
    method: str = "euler",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Integrate ``dx/dt = v_θ(x, t)`` from noise at ``t = 0`` to data at ``t = 1``: flow matching's sampler.

    ``steps=1`` with ``method="euler"`` is the one-step generator ``x0 + v_θ(x0, 0)`` of a reflowed or
    distilled flow (one network call). Runs under ``torch.no_grad()``. Arguments and return value as in
    :func:`edifice.generative.flow_matching.sample`.

    Returns:
        ``(B, *data_shape)`` samples at ``t = 1``.
    """
    return _fm.sample(net, shape, steps=steps, method=method, rtol=rtol, atol=atol, generator=generator,
                      cond=cond, callback=callback, noise=noise, device=device, dtype=dtype)
