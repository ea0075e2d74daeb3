"""Shortcut models (Frans et al. 2025): one network conditioned on the step size, sampled in 1 to M steps.

**Time convention:** flow matching's: ``t ∈ [0, 1]``, noise ``x0 ~ N(0, I)`` at ``t = 0``, data ``x1`` at
``t = 1``, on the straight path ``x_t = (1 - t) x0 + t x1``. The network is called ``net(x_t, t, d, y=None)``
with ``t`` and the step size ``d`` both ``(B,)`` floats in ``[0, 1]``, and returns a *shortcut*
``s(x_t, t, d)``: the direction such that ``x_t + d s(x_t, t, d)`` is the point of the flow at ``t + d``.
``d = 0`` is the instantaneous velocity of flow matching.

Training (Sec. 3 and Algorithm 1 of Frans et al.) mixes two regressions in one batch:

* **flow matching** (``1 - k`` of the batch): ``‖s(x_t, t, 0) - (x1 - x0)‖²`` with ``t ~ U[0, 1)``;
* **self-consistency** (a fraction ``k`` of the batch, ``k = 1/4`` in the paper): one step of size ``2d``
  must equal two steps of size ``d``::

      s_target = ( s(x_t, t, d) + s(x'_{t+d}, t + d, d) ) / 2,   x'_{t+d} = x_t + d s(x_t, t, d)
      ‖s(x_t, t, 2d) - stopgrad(s_target)‖²

  with ``d ∈ {1/M, 1/(M/2), ..., 1/2}`` (one of the ``log2 M`` levels, uniformly) and ``t`` uniform on the
  grid of multiples of ``2d`` below 1, ``t ∈ {0, 2d, 4d, ..., 1 - 2d}``, so ``t + 2d <= 1``: the grid on which
  a sampler with ``1/(2d)`` steps queries ``s(·, ·, 2d)`` (as the authors' code does).

**The smallest step size.** No term trains ``s(·, ·, 1/M)`` itself, so the level ``d = 1/M`` is identified
with the flow level ``d = 0``: the self-consistency targets for ``2d = 2/M`` take their two steps of size
``1/M`` with ``s(·, ·, 0)``, the flow-matching velocity (as Frans et al. do for the smallest step size), and
:func:`sample` with ``steps = M`` takes plain Euler steps of size ``1/M`` on ``s(·, ·, 0)``, the flow-matching
reference.

Sampling (Algorithm 2) with ``N`` steps: ``d = 1/N`` and ``x ← x + d s(x, t, d)`` for ``t = 0, d, ..., 1 - d``.
Step counts that are powers of two up to ``M`` are the trained ones; others query step sizes in between.

Example (the exact shortcut of a point mass at 3 is ``(3 - x)/(1 - t)`` for every ``d``: one step lands on it):
    >>> import torch
    >>> from edifice.generative import shortcut
    >>> s = lambda x, t, d: (3.0 - x) / (1.0 - t[:, None])
    >>> shortcut.sample(s, (2, 1), steps=1, generator=torch.Generator().manual_seed(0))
    tensor([[3.],
            [3.]])

References:
    One Step Diffusion via Shortcut Models. Frans, Hafner, Levine, Abbeel, 2025. arXiv:2410.12557.
    Flow Matching for Generative Modeling. Lipman, Chen, Ben-Hamu, Nickel, Le, 2023. arXiv:2210.02747.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_time, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor,
    rand, randint, randn,
)
from edifice.blocks import TwoTimeNet
from edifice.generative._common import hi_dtype, initial_noise

__all__ = ["ShortcutModel", "build", "check_max_steps", "shortcut_target", "loss", "shortcut_step", "sample"]

_T_SCALE = 1000.0  # t ∈ [0, 1], as flow matching
_D_SCALE = 1000.0  # d ∈ {0, 1/M, ..., 1}: d·1000 spans the same sinusoidal range as t


def check_max_steps(max_steps: Any) -> int:
    """Return ``max_steps`` if it is a power of two ``>= 2``; ValueError / TypeError naming it otherwise."""
    max_steps = check_int("max_steps", max_steps, min=2)
    if max_steps & (max_steps - 1):
        raise ValueError(f"max_steps must be a power of 2 (>= 2), got {max_steps}")
    return max_steps


class ShortcutModel(nn.Module):
    """Shortcut network ``s(x, t, d, y=None)``: a :class:`~edifice.blocks.TwoTimeNet` embedding ``t`` and ``d``.

    The constructor options are recorded in ``self.config`` (JSON-serialisable) so ``ShortcutModel(**net.config)``
    rebuilds it; see :func:`build` for their meaning.

    Attributes: ``max_steps`` (``M``, the finest step count, ``d_min = 1/M``), ``net`` (the TwoTimeNet), ``config``.

    References:
        One Step Diffusion via Shortcut Models. Frans, Hafner, Levine, Abbeel, 2025. arXiv:2410.12557.
    """

    def __init__(self, *, data_shape: Sequence[int], num_classes: int | None = None, max_steps: int = 128,
                 hidden: int = 256, depth: int = 3, base_channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
                 patch_size: int | None = None) -> None:
        super().__init__()
        self.max_steps = check_max_steps(max_steps)
        data_shape = check_shape_tuple("data_shape", data_shape)
        if not isinstance(channel_mults, (tuple, list)):
            raise TypeError(f"channel_mults must be a tuple of positive ints, got {type(channel_mults).__name__}")
        self.net = TwoTimeNet(data_shape, t_scale=_T_SCALE, s_scale=_D_SCALE, num_classes=num_classes, hidden=hidden,
                              depth=depth, base_channels=base_channels, channel_mults=tuple(channel_mults),
                              num_res_blocks=num_res_blocks, dropout=dropout, arch=backbone, dit_preset=dit_preset,
                              patch_size=patch_size)  # validates every option
        self.config: dict[str, Any] = dict(
            data_shape=list(data_shape), num_classes=num_classes, max_steps=self.max_steps, hidden=hidden,
            depth=depth, base_channels=base_channels, channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone, dit_preset=dit_preset,
            patch_size=patch_size)

    def forward(self, x: torch.Tensor, t: Any, d: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """``s(x, t, d)`` for ``x (B, *data_shape)`` and ``(B,)`` (or scalar) ``t``, ``d`` -> ``(B, *data_shape)``."""
        return self.net(x, batch_time(t, x, "t"), batch_time(d, x, "d"), y=y)  # (B, *data_shape)


def build(*, data_shape: tuple[int, ...], num_classes: int | None = None, max_steps: int = 128,
          hidden: int = 256, depth: int = 3, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
          num_res_blocks: int = 1, dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
          patch_size: int | None = None) -> ShortcutModel:
    """Build a :class:`ShortcutModel` ``s(x, t, d, y=None)`` for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``. num_classes: labels for conditioning (``y=None`` = null label).
        max_steps: ``M``, a power of two ``>= 2``: the finest step size is ``1/M`` (128 in the paper) and the
            trained step counts are ``1, 2, 4, ..., M``.
        hidden, depth: ResMLP width / blocks. base_channels, channel_mults, num_res_blocks, dropout: UNet options.
        backbone, dit_preset, patch_size: the network (``"auto"``, ``"mlp"``, ``"unet"`` or ``"dit"``), see
            :func:`edifice.blocks.backbone`.

    Returns:
        A :class:`ShortcutModel` mapping ``x (B, *data_shape)``, ``t (B,)``, ``d (B,)`` to ``(B, *data_shape)``.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return ShortcutModel(data_shape=data_shape, num_classes=num_classes, max_steps=max_steps, hidden=hidden,
                         depth=depth, base_channels=base_channels, channel_mults=channel_mults,
                         num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone, dit_preset=dit_preset,
                         patch_size=patch_size)


def _call(net: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, d: torch.Tensor,
          cond: dict[str, Any]) -> torch.Tensor:
    out = net(x, t, d, **cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"net must return a shortcut shaped like x {tuple(x.shape)}, got {got}")
    return out


def _check_batch(name: str, x: Any) -> torch.Tensor:
    check_tensor(name, x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    return x


def _check_net(net: Any, name: str = "net") -> None:
    if not callable(net):
        raise TypeError(f"{name} must be callable as {name}(x, t, d, **cond), got {type(net).__name__}")


@torch.no_grad()
def shortcut_target(net: Callable[..., torch.Tensor], x_t: torch.Tensor, t: Any, d: Any, *,
                    cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Self-consistency target for ``s(x_t, t, 2d)``: the average of two shortcut steps of size ``d`` (Sec. 3).

    ``s_target = (s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2`` with ``x'_{t+d} = x_t + d s(x_t, t, d)``, so that
    ``x_t + 2d s_target`` is where two steps of size ``d`` land. Computed without gradient (the stop-gradient of
    the paper). Two network calls; a net in train mode draws independent dropout masks for them.

    Args:
        net: shortcut network ``net(x, t, d, **cond)`` (any callable).
        x_t: ``(B, *data_shape)`` points at time ``t``.
        t: ``(B,)`` or scalar times; ``t + 2d <= 1`` is the caller's to ensure (not checked: no host sync).
        d: ``(B,)`` or scalar step sizes of the two inner steps (the target is for ``2d``).
        cond: conditioning keyword arguments for ``net``.

    Returns:
        ``(B, *data_shape)`` detached target.

    Raises:
        TypeError / ValueError: for a bad ``net``, ``x_t``, ``t``, ``d`` or ``cond``, or a net output not shaped
        like ``x_t``.
    """
    _check_net(net)
    _check_batch("x_t", x_t)
    t = batch_time(t, x_t, "t")  # (B,)
    d = batch_time(d, x_t, "d")  # (B,)
    cond = check_cond(cond)
    s1 = _call(net, x_t, t, d, cond)  # (B, *data_shape)
    x_mid = x_t + append_dims(d, x_t.ndim) * s1
    s2 = _call(net, x_mid, t + d, d, cond)  # (B, *data_shape)
    return (0.5 * (s1 + s2)).detach()


class _FlowLevel:
    """``net`` with the smallest level ``d = 1/M`` queried at the flow level ``d = 0`` (the step keeps size ``d``)."""

    def __init__(self, net: Callable[..., torch.Tensor], d_min: float) -> None:
        self.net, self.d_min = net, d_min

    def __call__(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.net(x, t, torch.where(d <= self.d_min, torch.zeros_like(d), d), **cond)


def _slice_cond(cond: dict[str, Any], idx: slice, batch: int) -> dict[str, Any]:
    """Rows ``idx`` of every tensor in ``cond`` whose first dimension is the batch; other values unchanged."""
    return {k: v[idx] if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch else v
            for k, v in cond.items()}


def loss(net: Callable[..., torch.Tensor], x1: torch.Tensor, *, bootstrap_fraction: float = 0.25,
         max_steps: int | None = None, target_net: Callable[..., torch.Tensor] | None = None,
         generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
         cond: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Shortcut-model loss: flow matching at ``d = 0`` plus self-consistency on part of the batch (Algorithm 1).

    The first ``n_sc = floor(bootstrap_fraction · B)`` samples get a self-consistency target (a level
    ``d = 2^{-j}``, ``j`` uniform in ``{1, ..., log2 M}``, a time ``t = 2d · k`` with ``k`` uniform in
    ``{0, ..., 1/(2d) - 1}``, prediction ``s(x_t, t, 2d)``, target :func:`shortcut_target` at ``d``: two steps
    of size ``d``, for which the smallest level ``d = 1/M`` queries the network at ``d = 0``); the other
    ``B - n_sc`` get the flow-matching target ``x1 - x0`` at ``t ~ U[0, 1)``, ``d = 0``. All use
    ``x_t = (1 - t) x0 + t x1``, and the prediction is one network call over the whole batch (so batch
    statistics and ``cond`` stay aligned). The loss is the mean
    squared error over all samples and dimensions, i.e. the two parts weighted by their share of the batch.

    Args:
        net: shortcut network ``net(x, t, d, **cond)``, e.g. a :class:`ShortcutModel`.
        x1: ``(B, *data_shape)`` data batch.
        bootstrap_fraction: ``k ∈ [0, 1)``, the share of the batch trained for self-consistency (1/4 in the paper).
        max_steps: ``M``, a power of two ``>= 2``; None = ``net.max_steps`` if the net has it, else 128.
        target_net: network that computes the self-consistency targets (e.g. an EMA copy, as the authors' code
            allows); None = ``net`` itself under ``no_grad``.
        generator: draws the noise, times and levels. noise: ``(B, *data_shape)`` override for ``x0``.
        cond: conditioning keyword arguments for ``net``; tensors whose first dimension is ``B`` are sliced to the
            first ``n_sc`` rows for the target calls, other values are passed unchanged.

    Returns:
        ``(loss, logs)`` with detached ``logs["loss"]``, ``logs["loss_fm"]`` (mean over the flow-matching part)
        and ``logs["loss_sc"]`` (mean over the self-consistency part; 0 when ``n_sc = 0``).

    Raises:
        ValueError / TypeError: for a bad ``net``, ``x1``, ``bootstrap_fraction``, ``max_steps``, ``target_net``,
        ``noise`` shape, ``generator`` or ``cond``.
    """
    _check_net(net)
    _check_batch("x1", x1)
    bootstrap_fraction = check_float("bootstrap_fraction", bootstrap_fraction, min=0.0, max=1.0, max_open=True)
    m = check_max_steps(getattr(net, "max_steps", 128) if max_steps is None else max_steps)
    if target_net is not None:
        _check_net(target_net, "target_net")
    generator = check_generator(generator)
    cond = check_cond(cond)
    b, dev, dt = x1.shape[0], x1.device, x1.dtype
    if noise is None:
        x0 = randn(x1.shape, generator=generator, device=dev, dtype=dt)
    else:
        x0 = check_tensor("noise", noise, shape=tuple(x1.shape), floating=True).to(x1)
    n_sc = int(bootstrap_fraction * b)
    levels = m.bit_length() - 1  # log2 M
    t_fm = rand((b - n_sc,), generator=generator, device=dev, dtype=dt)  # (B - n_sc,)
    j = randint(1, levels + 1, (n_sc,), generator=generator, device=dev)  # (n_sc,) d = 2^-j
    hi = hi_dtype(dev)
    u = rand((n_sc,), generator=generator, device=dev, dtype=hi)  # (n_sc,)
    sections = torch.pow(2.0, (j - 1).to(hi))  # 1/(2d): number of 2d-steps in [0, 1]
    k = torch.minimum((u * sections).floor(), sections - 1)  # uniform in {0, ..., 1/(2d) - 1}
    d_sc = torch.pow(2.0, -j.to(hi))  # (n_sc,) powers of two: exact in any float dtype
    t_sc = (k / sections).to(dt)  # multiples of 2d, exact in binary
    t = torch.cat([t_sc, t_fm])  # (B,)
    d_in = torch.cat([(2.0 * d_sc).to(dt), torch.zeros_like(t_fm)])  # (B,) 2d for self-consistency, 0 for FM
    tt = append_dims(t, x1.ndim)
    x_t = (1.0 - tt) * x0 + tt * x1  # (B, *data_shape)
    target_fm = (x1 - x0)[n_sc:]
    if n_sc:
        teacher = net if target_net is None else target_net
        target_sc = shortcut_target(_FlowLevel(teacher, 1.0 / m), x_t[:n_sc], t_sc, d_sc.to(dt),
                                    cond=_slice_cond(cond, slice(0, n_sc), b))
        target = torch.cat([target_sc, target_fm])
    else:
        target = target_fm
    err = (_call(net, x_t, t, d_in, cond) - target).square().flatten(1).mean(1)  # (B,)
    value = err.mean()
    zero = err.new_zeros(())
    logs = {"loss": value.detach(),
            "loss_fm": err[n_sc:].mean().detach() if n_sc < b else zero,
            "loss_sc": err[:n_sc].mean().detach() if n_sc else zero}
    return value, logs


def shortcut_step(x: torch.Tensor, shortcut: torch.Tensor, d: Any) -> torch.Tensor:
    """One shortcut step ``x + d · s`` (Algorithm 2).

    Args:
        x: ``(B, *data_shape)`` state at ``t``. shortcut: ``(B, *data_shape)`` the network's ``s(x, t, d)``.
        d: step size: a number, a 0-dim or a ``(B,)`` tensor.

    Returns:
        ``(B, *data_shape)`` state at ``t + d``.
    """
    _check_batch("x", x)
    check_tensor("shortcut", shortcut, shape=tuple(x.shape), floating=True)
    d = batch_time(d, x, "d")
    return x + append_dims(d, x.ndim) * shortcut


@torch.no_grad()
def sample(net: Callable[..., torch.Tensor], shape: tuple[int, ...], *, steps: int = 1, max_steps: int | None = None,
           generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None,
           callback: Callable[[dict], None] | None = None, noise: torch.Tensor | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Draw samples with ``steps`` shortcut steps of size ``d = 1/steps`` from noise at ``t = 0`` (Algorithm 2).

    ``x ← x + d s(x, t, d)`` at ``t = 0, d, ..., 1 - d``: exactly ``steps`` network calls. With ``steps = M``
    (``= max_steps``) the model is queried at ``d = 0``, its flow-matching velocity (see the module docstring).

    Args:
        net: shortcut network ``net(x, t, d, **cond)`` (any callable).
        shape: ``(B, *data_shape)``.
        steps: number of steps in ``[1, M]``; powers of two are the step sizes the loss trains.
        max_steps: ``M``; None = ``net.max_steps`` if the net has it, else 128.
        generator: draws the initial noise. cond: conditioning for ``net``.
        callback: called as ``callback({"i": i, "t": t + d, "x": x})`` after each step.
        noise: ``(B, *data_shape)`` initial ``x0``; sets device / dtype unless given explicitly.
        device, dtype: where to sample; default: ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples at ``t = 1``.

    Raises:
        ValueError / TypeError: for a bad ``net``, ``shape``, ``steps``, ``max_steps``, ``noise``, ``generator``,
        ``cond``, ``callback`` or ``dtype``.
    """
    m = check_max_steps(getattr(net, "max_steps", 128) if max_steps is None else max_steps)
    steps = check_int("steps", steps, min=1, max=m)
    cond = check_cond(cond)
    generator = check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    x = initial_noise(net, shape, noise, generator, device, dtype)
    b = x.shape[0]
    d = torch.full((b,), 1.0 / steps, device=x.device, dtype=x.dtype)  # (B,)
    d_query = torch.zeros_like(d) if steps == m else d
    for i in range(steps):
        t = torch.full((b,), i / steps, device=x.device, dtype=x.dtype)  # (B,)
        x = shortcut_step(x, _call(net, x, t, d_query, cond), d)
        if callback is not None:
            callback({"i": i, "t": t + d, "x": x})
    return x
