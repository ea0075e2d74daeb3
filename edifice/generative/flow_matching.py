"""Flow matching: regress a velocity field on a conditional probability path, then integrate it.

**Time convention:** ``t ∈ [0, 1]``; noise ``x0 ~ N(0, I)`` at ``t = 0``, data ``x1`` at ``t = 1``.
Networks are called ``net(x_t, t, **cond)`` with ``t`` a ``(B,)`` float in ``[0, 1]``.

Conditional flow matching (CFM) with the optimal-transport path of Lipman et al. (their eq. 20-23)::

    x_t = (1 - (1 - σ_min) t) x0 + t x1,        u_t = x1 - (1 - σ_min) x0,
    L(θ) = E_{t, (x0, x1)} ‖v_θ(x_t, t) - u_t‖²

where ``(x0, x1)`` is drawn from a coupling: *independent* (``x0 ⟂ x1``) or *minibatch optimal
transport* (Tong et al.): within a batch, ``x0`` is permuted to minimise ``Σ_i ‖x0_π(i) - x1_i‖²``.
With equal-size batches and uniform weights the exact OT plan is a permutation (Birkhoff), so an
exact assignment solver (``scipy.optimize.linear_sum_assignment``) gives the exact minibatch plan.
Times are uniform on ``[0, 1)`` or logit-normal, ``t = sigmoid(loc + scale · z)`` (Esser et al.).

Samples come from integrating ``dx/dt = v_θ(x, t)`` from ``t = 0`` to ``1`` with any method of
:mod:`edifice.integrators`; ``log_prob`` integrates the instantaneous change of variables
``d log p_t(x_t)/dt = -∇·v_θ(x_t, t)`` backwards from the data (Chen et al.; Grathwohl et al.).

Example (a closed-form field: ``v = x1 - x0`` for a single target point ``x1 = 3`` is ``(3 - x) / (1 - t)``;
Euler's first step from ``t = 0`` already lands on it):
    >>> import torch
    >>> from edifice.generative import flow_matching as fm
    >>> field = lambda x, t: (3.0 - x) / (1.0 - t[:, None])
    >>> fm.sample(field, (2, 1), steps=1, generator=torch.Generator().manual_seed(0))
    tensor([[3.],
            [3.]])

References:
    Flow Matching for Generative Modeling. Lipman, Chen, Ben-Hamu, Nickel, Le, 2023. arXiv:2210.02747.
    Improving and Generalizing Flow-Based Generative Models with Minibatch Optimal Transport.
    Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio, 2024. arXiv:2302.00482.
    Scaling Rectified Flow Transformers for High-Resolution Image Synthesis (logit-normal time).
    Esser et al., 2024. arXiv:2403.03206.
    Neural Ordinary Differential Equations. Chen, Rubanova, Bettencourt, Duvenaud, 2018. arXiv:1806.07366.
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models.
    Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, 2019. arXiv:1810.01367.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from edifice._checks import (
    append_dims, batch_time, check_choice, check_cond, check_float, check_generator, check_int,
    check_shape_tuple, check_tensor, rand, randn,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import initial_noise
from edifice.integrators import DIVERGENCES, METHODS, cnf_log_prob, network_field, odeint

__all__ = ["build", "sample_time", "ot_permutation", "ot_coupling", "path", "loss", "sample", "log_prob"]

COUPLINGS = ("independent", "ot")
TIME_DISTS = ("uniform", "logit_normal")


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
    """Build a velocity network ``v_θ(x, t, y=None)`` for data of shape ``data_shape``.

    Vector data ``(D,)`` gets a :class:`~edifice.blocks.ResMLP` (``hidden``, ``depth``); images
    ``(C, H, W)`` with ``H == W`` get a :class:`~edifice.blocks.UNet` (``base_channels``,
    ``channel_mults``, ``num_res_blocks``). Both embed time with ``t_scale=1000`` since ``t ∈ [0, 1]``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)``.
        num_classes: number of labels for class conditioning (``y=None`` means the null label), or None.
        hidden, depth: width and number of residual blocks of the ResMLP (vector data).
        base_channels, channel_mults, num_res_blocks: UNet widths, per-level multipliers, blocks per level.
        dropout: dropout probability in ``[0, 1)``.
        backbone: ``"auto"`` (ResMLP for vectors, UNet for images), ``"mlp"``, ``"unet"`` or ``"dit"`` (a
            Diffusion Transformer; ``dit_preset`` and ``patch_size`` choose it, see :func:`edifice.blocks.backbone`).

    Returns:
        An ``nn.Module`` mapping ``x (B, *data_shape)``, ``t (B,)`` to a velocity ``(B, *data_shape)``.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return _backbone(data_shape, t_scale=1000.0, num_classes=num_classes, hidden=hidden, depth=depth,
                    base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                    dropout=dropout, arch=backbone,
                     dit_preset=dit_preset, patch_size=patch_size)


def sample_time(
    n: int,
    *,
    dist: str = "uniform",
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n`` training times in ``[0, 1]``.

    ``"uniform"``: ``t ~ U[0, 1)``. ``"logit_normal"``: ``t = sigmoid(loc + scale · z)``, ``z ~ N(0, 1)``,
    clamped to ``[eps, 1 - eps]`` (``eps`` of ``dtype``) so that rounding never yields exactly 0 or 1.
    ``loc`` / ``scale`` belong to the logit-normal law; changing them with ``"uniform"`` is an error.

    Returns:
        ``(n,)`` tensor of times.

    Raises:
        ValueError: on a bad ``n``, ``dist``, ``loc`` or ``scale``; TypeError on a non-floating ``dtype``.
    """
    n = check_int("n", n, min=1)
    check_choice("dist", dist, TIME_DISTS)
    loc = check_float("loc", loc)
    scale = check_float("scale", scale, min=0.0, min_open=True)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if dist == "uniform":
        if (loc, scale) != (0.0, 1.0):
            raise ValueError(f"loc and scale only apply to dist='logit_normal', got loc={loc}, scale={scale}")
        return rand((n,), generator=generator, device=device, dtype=dtype)
    z = randn((n,), generator=generator, device=device, dtype=dtype)
    eps = torch.finfo(dtype).eps
    return torch.sigmoid(loc + scale * z).clamp(eps, 1.0 - eps)


def _check_pair(x0: Any, x1: Any) -> None:
    check_tensor("x0", x0, floating=True)
    check_tensor("x1", x1, floating=True)
    if x0.ndim < 2 or x1.ndim < 2:
        raise ValueError(f"x0 and x1 must be batches (B, ...), got shapes {tuple(x0.shape)} and {tuple(x1.shape)}")
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(f"x0 and x1 must have the same number of samples, got {x0.shape[0]} and {x1.shape[0]}")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")


def ot_permutation(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Exact minibatch OT assignment: the permutation ``π`` minimising ``Σ_i ‖x0[π[i]] - x1[i]‖²``.

    Solved exactly with ``scipy.optimize.linear_sum_assignment`` on the ``(B, B)`` float64 cost
    matrix: ``O(B³)`` time on the host (one device-to-host copy per call), which is negligible next
    to a network step for the usual batches (``B ≲ 1024``).

    Args:
        x0: ``(B, ...)`` source points (noise).
        x1: ``(B, ...)`` target points (data), same shape.

    Returns:
        ``(B,)`` long tensor ``π`` on ``x0``'s device; ``x0[π]`` is paired with ``x1``.

    Raises:
        ValueError: if the shapes (in particular the batch sizes) differ.
    """
    _check_pair(x0, x1)
    with torch.no_grad():
        cost = torch.cdist(x1.flatten(1).double(), x0.flatten(1).double()).square_()  # (B, B)
    _, cols = linear_sum_assignment(cost.cpu().numpy())  # rows come back as arange(B)
    return torch.as_tensor(cols, dtype=torch.long, device=x0.device)


def ot_coupling(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Return ``x0`` permuted so that ``(x0[i], x1[i])`` is an exact minibatch OT pairing.

    ``x1`` (and any labels attached to it) keeps its order. See :func:`ot_permutation`.
    """
    return x0[ot_permutation(x0, x1)]


def path(
    x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float, *, sigma_min: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point and velocity of the conditional OT path of Lipman et al. (eq. 20-22).

    ``x_t = (1 - (1 - σ_min) t) x0 + t x1`` and ``u_t = dx_t/dt = x1 - (1 - σ_min) x0``: ``x_0 = x0``
    and, at ``t = 1``, ``x_1 = x1 + σ_min x0 ~ N(x1, σ_min² I)``.

    Args:
        x0: ``(B, ...)`` noise. x1: ``(B, ...)`` data. t: ``(B,)`` times or a number.
        sigma_min: width of the path at ``t = 1``, in ``[0, 1)``.

    Returns:
        ``(x_t, u_t)``, both ``(B, ...)``.
    """
    _check_pair(x0, x1)
    sigma_min = check_float("sigma_min", sigma_min, min=0.0, max=1.0, max_open=True)
    t = append_dims(batch_time(t, x1), x1.ndim)  # (B, 1, ..., 1)
    x_t = (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1
    u_t = x1 - (1.0 - sigma_min) * x0
    return x_t, u_t


def loss(
    net: Callable[..., torch.Tensor],
    x1: torch.Tensor,
    *,
    sigma_min: float = 0.0,
    coupling: str = "independent",
    time_dist: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | float | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conditional flow-matching loss ``mean ‖v_θ(x_t, t) - u_t‖²`` (Lipman et al. eq. 23).

    Args:
        net: velocity network ``net(x, t, **cond)``.
        x1: ``(B, ...)`` data batch.
        sigma_min: path width at ``t = 1``, in ``[0, 1)``.
        coupling: ``"independent"`` or ``"ot"`` (exact minibatch OT, Tong et al.; permutes the noise,
            so ``x1`` and ``cond`` stay aligned).
        time_dist, time_loc, time_scale: law of ``t`` (see :func:`sample_time`); unused when ``t`` is given.
        generator: draws the noise and the times.
        noise: ``(B, ...)`` override for ``x0`` (the coupling is still applied to it).
        t: ``(B,)`` or scalar override for the times.
        cond: conditioning keyword arguments for ``net`` (e.g. ``{"y": labels}``).

    Returns:
        ``(loss, {"loss": loss.detach()})``.
    """
    check_tensor("x1", x1, floating=True)
    if x1.ndim < 2:
        raise ValueError(f"x1 must be a batch (B, ...), got shape {tuple(x1.shape)}")
    sigma_min = check_float("sigma_min", sigma_min, min=0.0, max=1.0, max_open=True)
    check_choice("coupling", coupling, COUPLINGS)
    check_choice("time_dist", time_dist, TIME_DISTS)
    time_loc = check_float("time_loc", time_loc)
    time_scale = check_float("time_scale", time_scale, min=0.0, min_open=True)
    if time_dist == "uniform" and (time_loc, time_scale) != (0.0, 1.0):
        raise ValueError(f"time_loc and time_scale only apply to time_dist='logit_normal', "
                         f"got time_loc={time_loc}, time_scale={time_scale}")
    cond = check_cond(cond)
    generator = check_generator(generator)
    if noise is None:
        x0 = randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    else:
        x0 = check_tensor("noise", noise, shape=tuple(x1.shape), floating=True).to(x1)
    if t is None:
        t = sample_time(x1.shape[0], dist=time_dist, loc=time_loc, scale=time_scale, generator=generator,
                        device=x1.device, dtype=x1.dtype)
    else:
        t = batch_time(t, x1)
    if coupling == "ot":
        x0 = ot_coupling(x0, x1)
    x_t, u_t = path(x0, x1, t, sigma_min=sigma_min)
    value = (net(x_t, t, **cond) - u_t).square().mean()
    return value, {"loss": value.detach()}


def _check_solver(steps: Any, method: Any, rtol: Any, atol: Any) -> tuple[int, str, float, float]:
    steps = check_int("steps", steps, min=1)
    check_choice("method", method, METHODS)
    rtol = check_float("rtol", rtol, min=0.0, min_open=True)
    atol = check_float("atol", atol, min=0.0, min_open=True)
    return steps, method, rtol, atol


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
    """Draw samples by integrating ``dx/dt = v_θ(x, t)`` from noise at ``t = 0`` to data at ``t = 1``.

    Args:
        net: velocity network ``net(x, t, **cond)`` (any callable).
        shape: ``(B, *data_shape)``.
        steps: number of uniform steps for the fixed-step methods (``euler`` 1 evaluation per step,
            ``midpoint`` / ``heun`` 2, ``rk4`` 4). For adaptive methods (``dopri5``, ...) the step size
            is chosen by the solver from ``rtol`` / ``atol`` and ``steps`` only sets the output grid.
        method: any name of ``edifice.integrators`` (fixed-step or adaptive).
        rtol, atol: tolerances of adaptive methods.
        generator: draws the initial noise. cond: conditioning for ``net``.
        callback: called as ``callback(dict(i=..., t=..., x=...))`` per fixed step (see ``odeint``).
        noise: ``(B, *data_shape)`` initial ``x0``; sets device / dtype unless given explicitly.
        device, dtype: where to sample; default: ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples at ``t = 1``.
    """
    shape = check_shape_tuple("shape", shape)
    steps, method, rtol, atol = _check_solver(steps, method, rtol, atol)
    cond = check_cond(cond)
    generator = check_generator(generator)
    x0 = initial_noise(net, shape, noise, generator, device, dtype)
    ts = torch.linspace(0.0, 1.0, steps + 1, device=x0.device, dtype=x0.dtype)
    return odeint(network_field(net, cond), x0, ts, method=method, rtol=rtol, atol=atol, callback=callback)


def log_prob(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    steps: int = 20,
    method: str = "rk4",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    cond: Mapping[str, Any] | None = None,
    divergence: str = "exact",
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log-density of the model at ``x`` (nats) by the instantaneous change of variables.

    Integrates the augmented state ``[x_t, ℓ_t]`` with ``dx/dt = v_θ(x, t)``, ``dℓ/dt = ∇·v_θ(x, t)``
    from the data (``t = 1``, ``ℓ = 0``) back to ``t = 0``; then
    ``log p_1(x) = log N(x_0; 0, I) - ∫_0^1 ∇·v_θ dt = log N(x_0; 0, I) + ℓ_0``.

    Args:
        net: velocity network. x: ``(B, *data_shape)`` points.
        steps, method, rtol, atol: as in :func:`sample` (default ``rk4``, 20 steps).
        cond: conditioning for ``net``.
        divergence: ``"exact"`` (one backward pass per dimension; small data) or ``"hutchinson"``
            (unbiased stochastic trace estimate with ``n_probes`` Rademacher probes, drawn once and held
            fixed along the solve as in FFJORD; high dimensions).
        n_probes: Hutchinson probes per sample (each costs one backward pass per field evaluation).
        generator: draws the Hutchinson probes.

    Returns:
        ``(B,)`` log-densities in nats. An evaluation routine: no gradient flows to ``net``.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    steps, method, rtol, atol = _check_solver(steps, method, rtol, atol)
    check_choice("divergence", divergence, DIVERGENCES)
    n_probes = check_int("n_probes", n_probes, min=1)
    cond = check_cond(cond)
    generator = check_generator(generator)
    d = x[0].numel()

    def prior(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * z.flatten(1).square().sum(dim=1) - 0.5 * d * math.log(2.0 * math.pi)

    ts = torch.linspace(1.0, 0.0, steps + 1, device=x.device, dtype=x.dtype)
    return cnf_log_prob(network_field(net, cond), x, ts, prior_log_prob=prior, method=method, rtol=rtol, atol=atol,
                        divergence=divergence, n_probes=n_probes, generator=generator)
