r"""MeanFlow (Geng et al. 2025): learn the *average* velocity of a flow and sample in one or a few steps.

**Time convention (the paper's, the reverse of flow matching's):** ``t ∈ [0, 1]``, data ``x`` at ``t = 0``,
noise ``ε ~ N(0, I)`` at ``t = 1``::

    z_t = (1 - t) x + t ε,        v = dz_t/dt = ε - x   (conditional instantaneous velocity).

Networks are called ``net(z, r, t, **cond)`` with ``0 <= r <= t <= 1`` two ``(B,)`` times and return the
average velocity over ``[r, t]`` (eq. 3)::

    u(z_t, r, t) = 1/(t - r) ∫_r^t v(z_τ, τ) dτ,     so that     z_r = z_t - (t - r) u(z_t, r, t)

(``u(z, t, t) = v(z, t)``, the flow-matching velocity). Differentiating ``(t - r) u = ∫_r^t v dτ`` in ``t`` gives
the **MeanFlow identity** (eq. 6) with the total derivative along the trajectory (eq. 8)::

    u(z_t, r, t) = v(z_t, t) - (t - r) d/dt u(z_t, r, t),     d/dt u = v ∂_z u + ∂_t u   (dr/dt = 0),

and training regresses ``u_θ`` on the stop-gradient target (eqs. 9-10)
``u_tgt = v - (t - r)(v ∂_z u_θ + ∂_t u_θ)``, where ``v = ε - x`` and the bracket is one forward-mode
Jacobian-vector product of ``u_θ`` with tangents ``(v, 0, 1)`` on ``(z, r, t)`` (:func:`meanflow_target`).
The loss uses the paper's adaptive weight ``w = 1/(‖Δ‖² + c)^p`` (stop-gradient, Sec. 4.3). Sampling (Alg. 2) is
``z_0 = z_1 - u_θ(z_1, 0, 1)`` at one step, or that update on a uniform grid ``1 = t_0 > ... > t_N = 0``.

Example (data a point mass at 3: the flow is ``z_t = 3 (1 - t) + t ε``, and its average velocity is
``u(z, r, t) = (z - 3)/t``, whatever ``r``; one step lands on 3):
    >>> import torch
    >>> from edifice.generative import meanflow
    >>> u = lambda z, r, t: (z - 3.0) / t[:, None]
    >>> meanflow.sample(u, (2, 1), steps=1, generator=torch.Generator().manual_seed(0))
    tensor([[3.],
            [3.]])

References:
    Mean Flows for One-step Generative Modeling. Geng, Deng, Bai, Kolter, He, 2025. arXiv:2505.13447.
    Flow Matching for Generative Modeling. Lipman, Chen, Ben-Hamu, Nickel, Le, 2023. arXiv:2210.02747.
    Scaling Rectified Flow Transformers for High-Resolution Image Synthesis (logit-normal time).
    Esser et al., 2024. arXiv:2403.03206.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from edifice._checks import (
    append_dims, batch_time, check_choice, check_cond, check_float, check_generator, check_int,
    check_shape_tuple, check_tensor, rand, randn,
)
from edifice.blocks.two_time import TwoTimeNet
from edifice.generative._common import initial_noise
from edifice.generative.flow_matching import sample_time

__all__ = ["TIME_DISTS", "T_SCALE", "MeanFlowModel", "build", "sample_times", "meanflow_target", "adaptive_weight",
           "loss", "step", "sample"]

TIME_DISTS = ("logit_normal", "uniform")
T_SCALE = 10.0
"""Default factor on ``t`` and ``t - r`` before their sinusoidal embeddings (see :func:`build`)."""


class MeanFlowModel(nn.Module):
    """Average-velocity network ``u_θ(z, r, t, y=None)`` (Geng et al.), conditioned on ``(t, t - r)``.

    A :class:`~edifice.blocks.TwoTimeNet` (the backbone of :func:`edifice.blocks.backbone` plus a second time
    embedding) called as ``net(z, t, t - r, y)``: the paper's best positional input is ``(t, t - r)`` (their
    Table 1), both scaled by ``t_scale`` (default :data:`T_SCALE` = 10) before the sinusoidal features.
    The constructor options are recorded in ``self.config`` (JSON-serialisable), so
    ``MeanFlowModel(**net.config)`` rebuilds it; see :func:`build` for their meaning.

    Attributes: ``net`` (the :class:`~edifice.blocks.TwoTimeNet`), ``config``.

    References:
        Mean Flows for One-step Generative Modeling. Geng, Deng, Bai, Kolter, He, 2025. arXiv:2505.13447.
    """

    def __init__(self, *, data_shape: Sequence[int], num_classes: int | None = None,
                 t_scale: float = T_SCALE, hidden: int = 256, depth: int = 3, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1, dropout: float = 0.0,
                 backbone: str = "auto", dit_preset: str | None = None, patch_size: int | None = None) -> None:
        super().__init__()
        data_shape = check_shape_tuple("data_shape", data_shape)
        channel_mults = check_shape_tuple("channel_mults", channel_mults)
        t_scale = check_float("t_scale", t_scale, min=0.0, min_open=True)
        self.net = TwoTimeNet(data_shape, t_scale=t_scale, s_scale=t_scale, num_classes=num_classes,
                              hidden=hidden, depth=depth, base_channels=base_channels, channel_mults=channel_mults,
                              num_res_blocks=num_res_blocks, dropout=dropout, arch=backbone,
                              dit_preset=dit_preset, patch_size=patch_size)  # validates every option
        self.config: dict[str, Any] = dict(
            data_shape=list(data_shape), num_classes=num_classes, t_scale=t_scale, hidden=hidden, depth=depth,
            base_channels=base_channels, channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
            dropout=dropout, backbone=backbone, dit_preset=dit_preset, patch_size=patch_size)

    def forward(self, z: torch.Tensor, r: Any, t: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """Average velocity ``(B, *data_shape)`` of ``z (B, *data_shape)`` over ``[r, t]`` (``(B,)`` / numbers)."""
        r = batch_time(r, z, "r")  # (B,)
        t = batch_time(t, z, "t")  # (B,)
        return self.net(z, t, t - r, y=y)  # (B, *data_shape)


def build(*, data_shape: tuple[int, ...], num_classes: int | None = None, t_scale: float = T_SCALE,
          hidden: int = 256, depth: int = 3, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
          num_res_blocks: int = 1, dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
          patch_size: int | None = None) -> MeanFlowModel:
    """Build a :class:`MeanFlowModel` ``u_θ(z, r, t, y=None)`` for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``. num_classes: labels for conditioning (``y=None`` = null label).
        t_scale: factor ``> 0`` on ``t`` and ``t - r`` before their sinusoidal embeddings. The default, 10, is
            not flow matching's 1000: the MeanFlow target differentiates the network in ``t``, and features
            oscillating up to ``t_scale`` radians per unit time make ``∂_t u_θ`` large and rough. Measured on
            moons (500 Adam steps, uniform times, half the pairs ``r < t``, ``p = 0.5``): one-step W2 0.26 with
            ``t_scale=10`` against 0.62 with 1000 after twice the steps.
        hidden, depth: ResMLP width / blocks (vector data).
        base_channels, channel_mults, num_res_blocks: UNet options (images). dropout: in ``[0, 1)``.
        backbone, dit_preset, patch_size: ``"auto"`` (ResMLP for vectors, UNet for images), ``"mlp"``, ``"unet"``
            or ``"dit"``, see :func:`edifice.blocks.backbone`.

    Returns:
        A :class:`MeanFlowModel` mapping ``z (B, *data_shape)``, ``r (B,)``, ``t (B,)`` to ``(B, *data_shape)``.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return MeanFlowModel(data_shape=data_shape, num_classes=num_classes, t_scale=t_scale, hidden=hidden,
                         depth=depth, base_channels=base_channels, channel_mults=channel_mults,
                         num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone, dit_preset=dit_preset,
                         patch_size=patch_size)


def _check_time_law(time_dist: Any, time_loc: Any, time_scale: Any) -> tuple[str, float, float]:
    check_choice("time_dist", time_dist, TIME_DISTS)
    return time_dist, check_float("time_loc", time_loc), check_float("time_scale", time_scale, min=0.0, min_open=True)


def sample_times(n: int, *, ratio_unequal: float = 0.25, time_dist: str = "logit_normal", time_loc: float = -0.4,
                 time_scale: float = 1.0, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the training pairs ``(r, t)`` with ``0 <= r <= t <= 1`` as in the paper (Sec. 4.3).

    Two independent times are drawn from ``time_dist`` (``"logit_normal"``: ``sigmoid(time_loc + time_scale z)``,
    the paper's ``lognorm(-0.4, 1.0)``; ``"uniform"``: ``U[0, 1)``, which ignores ``time_loc`` / ``time_scale``);
    ``t`` is the larger and ``r`` the smaller. Then each pair independently keeps ``r < t`` with probability
    ``ratio_unequal`` (the paper's 25% "ratio of r ≠ t") and otherwise sets ``r = t`` (a flow-matching sample).

    Returns:
        ``(r, t)``, two ``(n,)`` tensors.

    Raises:
        ValueError / TypeError: on a bad ``n``, ``ratio_unequal`` (in ``[0, 1]``), time law or ``dtype``.
    """
    n = check_int("n", n, min=1)
    ratio_unequal = check_float("ratio_unequal", ratio_unequal, min=0.0, max=1.0)
    time_dist, time_loc, time_scale = _check_time_law(time_dist, time_loc, time_scale)
    generator = check_generator(generator)
    law = dict(dist="uniform") if time_dist == "uniform" else dict(dist="logit_normal", loc=time_loc, scale=time_scale)
    a = sample_time(n, generator=generator, device=device, dtype=dtype, **law)  # (n,)
    b = sample_time(n, generator=generator, device=device, dtype=dtype, **law)  # (n,)
    t, r = torch.maximum(a, b), torch.minimum(a, b)
    keep = rand((n,), generator=generator, device=device, dtype=dtype) < ratio_unequal  # (n,) bool
    return torch.where(keep, r, t), t


def _check_times(z: torch.Tensor, r: Any, t: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` times on ``z`` with ``0 <= r <= t <= 1`` (host sync: losses and targets are entry points)."""
    r, t = batch_time(r, z, "r"), batch_time(t, z, "t")
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1], got min {float(t.min())}, max {float(t.max())}")
    if not bool((r >= 0).all()):
        raise ValueError(f"r must be >= 0, got min {float(r.min())}")
    if not bool((r <= t).all()):
        raise ValueError(f"r must be <= t, got r - t up to {float((r - t).max())}")
    return r, t


def meanflow_target(net: Callable[..., torch.Tensor], z: torch.Tensor, r: Any, t: Any, v: torch.Tensor, *,
                    cond: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's output and its MeanFlow regression target (Geng et al. eqs. 8-10, Alg. 1).

    ``(u, du/dt) = jvp(u_θ, (z, r, t), (v, 0, 1))`` with :func:`torch.func.jvp` gives ``u = u_θ(z, r, t)`` and the
    total derivative ``d/dt u = v ∂_z u_θ + ∂_t u_θ`` in one forward-mode pass; then
    ``u_tgt = v - (t - r) d/dt u``, detached (stop-gradient). Where ``r == t`` the target is exactly ``v``.
    ``u`` keeps its autograd graph to the parameters (one network evaluation serves both). The jvp runs under
    the MATH scaled-dot-product-attention backend (the fused kernels have no forward-mode AD), so attention
    backbones (UNet, DiT) work. Dropout, if any, sees one mask for the primal and the tangent.

    Args:
        net: average-velocity network ``net(z, r, t, **cond)`` (any callable built from torch operations).
        z: ``(B, ...)`` points ``z_t``. r, t: ``(B,)``, 0-dim or numbers with ``0 <= r <= t <= 1``.
        v: ``(B, ...)`` instantaneous velocity at ``(z, t)``: ``ε - x`` in training, or an exact field.
        cond: conditioning keyword arguments for ``net`` (held fixed: no tangent).

    Returns:
        ``(u, u_target)``, both ``(B, ...)``; ``u_target`` has no gradient.

    Raises:
        ValueError: if ``r > t``, a time lies outside ``[0, 1]``, shapes differ or ``net`` returns a wrong shape.
        TypeError: for a non-tensor ``z`` / ``v``, a non-callable ``net`` or a bad ``cond``.
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(z, r, t, **cond), got {type(net).__name__}")
    check_tensor("z", z, floating=True)
    if z.ndim < 2:
        raise ValueError(f"z must be a batch (B, ...), got shape {tuple(z.shape)}")
    check_tensor("v", v, shape=tuple(z.shape), floating=True)
    return _target(net, z, *_check_times(z, r, t), v.to(z), check_cond(cond))


def _target(net: Callable[..., torch.Tensor], z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, v: torch.Tensor,
            cond: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Unchecked core of :func:`meanflow_target` (``r``, ``t``: ``(B,)`` on ``z``; no host sync)."""

    def u_fn(z_: torch.Tensor, r_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return net(z_, r_, t_, **cond)

    with sdpa_kernel([SDPBackend.MATH]):
        u, dudt = torch.func.jvp(u_fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    if not isinstance(u, torch.Tensor) or u.shape != z.shape:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"net must return an average velocity shaped like z {tuple(z.shape)}, got {got}")
    target = v - append_dims(t - r, z.ndim) * dudt
    return u, target.detach()


def adaptive_weight(sq_err: torch.Tensor, *, p: float = 1.0, c: float = 1e-3) -> torch.Tensor:
    """The paper's adaptive loss weight ``w = 1/(‖Δ‖² + c)^p``, detached (Sec. 4.3; ``p = 0`` is plain L2).

    ``sg(w) ‖Δ‖²`` behaves like ``‖Δ‖^{2(1-p)}``: ``p = 0.5`` is close to the pseudo-Huber loss, ``p = 1``
    (the paper's default) to a log loss.

    Args:
        sq_err: ``(B,)`` squared errors ``‖Δ‖²`` (non-negative). p: power ``>= 0``. c: ``> 0``.

    Returns:
        ``(B,)`` weights with no gradient.
    """
    check_tensor("sq_err", sq_err, floating=True)
    p = check_float("p", p, min=0.0)
    c = check_float("c", c, min=0.0, min_open=True)
    return (sq_err.detach() + c).pow(-p)


def loss(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    ratio_unequal: float = 0.25,
    time_dist: str = "logit_normal",
    time_loc: float = -0.4,
    time_scale: float = 1.0,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    t: Any = None,
    r: Any = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MeanFlow loss ``mean_b sg(w_b) ‖u_θ(z_t, r, t) - sg(u_tgt)‖²`` (Geng et al. eq. 9, Alg. 1).

    ``z_t = (1 - t) x + t ε``, ``v = ε - x``, ``u_tgt`` from :func:`meanflow_target`, ``‖·‖²`` the squared
    norm over all data dimensions of one sample (the paper's ``‖Δ‖²``), ``w = 1/(‖Δ‖² + c)^p``
    (:func:`adaptive_weight`). With ``adaptive_p = 0`` and every ``r == t`` this is flow matching's loss
    summed over dimensions, in the reversed time.

    Args:
        net: average-velocity network ``net(z, r, t, **cond)``. x: ``(B, *data_shape)`` data.
        ratio_unequal, time_dist, time_loc, time_scale: law of ``(r, t)`` (see :func:`sample_times`).
        adaptive_p, adaptive_c: the adaptive weight's ``p >= 0`` and ``c > 0``.
        generator: draws the noise and the times. noise: ``(B, *data_shape)`` override for ``ε``.
        t, r: ``(B,)`` or scalar overrides for the times (``0 <= r <= t <= 1``); ``t`` alone sets ``r = t``,
            ``r`` alone is an error. cond: conditioning for ``net`` (e.g. ``{"y": labels}``).

    Returns:
        ``(loss, logs)`` with detached scalars ``loss`` (weighted), ``mse`` (unweighted mean ``‖Δ‖²`` per
        sample) and ``unequal`` (fraction of pairs with ``r < t``).

    Raises:
        ValueError / TypeError: naming a bad ``x``, ``noise``, ``t``, ``r`` (``r > t``), option or ``cond``.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    ratio_unequal = check_float("ratio_unequal", ratio_unequal, min=0.0, max=1.0)
    time_dist, time_loc, time_scale = _check_time_law(time_dist, time_loc, time_scale)
    adaptive_p = check_float("adaptive_p", adaptive_p, min=0.0)
    adaptive_c = check_float("adaptive_c", adaptive_c, min=0.0, min_open=True)
    cond = check_cond(cond)
    generator = check_generator(generator)
    if r is not None and t is None:
        raise ValueError("r was given without t: pass t (and r) or neither")
    if noise is None:
        eps = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        eps = check_tensor("noise", noise, shape=tuple(x.shape), floating=True).to(x)
    if t is None:  # drawn times satisfy 0 <= r <= t <= 1 by construction: no check, no host sync
        r, t = sample_times(x.shape[0], ratio_unequal=ratio_unequal, time_dist=time_dist, time_loc=time_loc,
                            time_scale=time_scale, generator=generator, device=x.device, dtype=x.dtype)
    else:
        r, t = _check_times(x, t if r is None else r, t)
    tt = append_dims(t, x.ndim)  # (B, 1, ..., 1)
    z = (1.0 - tt) * x + tt * eps
    v = eps - x
    if not callable(net):
        raise TypeError(f"net must be callable as net(z, r, t, **cond), got {type(net).__name__}")
    u, target = _target(net, z, r, t, v, cond)
    sq = (u - target).square().flatten(1).sum(dim=1)  # (B,)
    value = (adaptive_weight(sq, p=adaptive_p, c=adaptive_c) * sq).mean()
    return value, {"loss": value.detach(), "mse": sq.detach().mean(), "unequal": (r < t).to(x.dtype).mean()}


def step(z: torch.Tensor, u: torch.Tensor, r: Any, t: Any) -> torch.Tensor:
    """One MeanFlow step from ``t`` back to ``r``: ``z_r = z_t - (t - r) u(z_t, r, t)`` (eq. 4, Alg. 2).

    Args:
        z: ``(B, ...)`` points at time ``t``. u: ``(B, ...)`` average velocity over ``[r, t]``.
        r, t: numbers, 0-dim or ``(B,)`` tensors (tensors are not range-checked: no host sync).

    Returns:
        ``(B, ...)`` points at time ``r``.
    """
    check_tensor("z", z, floating=True)
    check_tensor("u", u, shape=tuple(z.shape), floating=True)
    if not isinstance(r, torch.Tensor) and not isinstance(t, torch.Tensor):
        r, t = check_float("r", r), check_float("t", t)
        if r > t:
            raise ValueError(f"r must be <= t, got r={r}, t={t}")
    dt = batch_time(t, z, "t") - batch_time(r, z, "r")  # (B,)
    return z - append_dims(dt, z.ndim) * u


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int = 1,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw samples with ``steps`` network calls on the uniform grid ``t_i = 1 - i/steps`` (Geng et al. Alg. 2).

    ``z_{t_{i+1}} = z_{t_i} - (t_i - t_{i+1}) u_θ(z_{t_i}, t_{i+1}, t_i)`` from ``z_1 = ε``; one step is
    ``z_0 = ε - u_θ(ε, 0, 1)``.

    Args:
        net: average-velocity network ``net(z, r, t, **cond)`` (any callable).
        shape: ``(B, *data_shape)``. steps: number of steps (= network calls), ``>= 1``.
        generator: draws the initial noise. cond: conditioning for ``net``.
        callback: called as ``callback(dict(i=..., r=..., t=..., x=...))`` after each step (``x`` at time ``r``).
        noise: ``(B, *data_shape)`` initial ``z_1``; sets device / dtype unless given explicitly.
        device, dtype: where to sample; default: ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples at ``t = 0``.

    Raises:
        ValueError / TypeError: naming a bad ``shape``, ``steps``, ``noise``, ``net``, ``cond`` or ``dtype``.
    """
    steps = check_int("steps", steps, min=1)
    cond = check_cond(cond)
    generator = check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    z = initial_noise(net, shape, noise, generator, device, dtype)
    ts = torch.linspace(1.0, 0.0, steps + 1, device=z.device, dtype=z.dtype)  # (steps + 1,)
    for i in range(steps):
        t, r = ts[i].expand(z.shape[0]), ts[i + 1].expand(z.shape[0])  # (B,), (B,)
        u = net(z, r, t, **cond)
        if not isinstance(u, torch.Tensor) or u.shape != z.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"net must return an average velocity shaped like z {tuple(z.shape)}, got {got}")
        z = step(z, u, r, t)
        if callback is not None:
            callback(dict(i=i, r=r, t=t, x=z))
    return z
