r"""Noise-conditional score networks (NCSN): denoising score matching at many noise levels, annealed Langevin.

**Time convention:** the noise level ``σ`` from a descending geometric ladder ``σ_1 > σ_2 > ... > σ_L``
(:func:`sigmas`); networks are called ``net(x, sigma, **cond)`` with ``sigma`` a ``(B,)`` float, ``σ > 0``,
and return the SCORE ``s_θ(x, σ) ≈ ∇_x log q_σ(x)`` of the data convolved with ``N(0, σ² I)``.

Training (Song & Ermon 2019, eq. 5-6), ``σ = σ_i`` with ``i`` uniform on ``{1..L}``, ``x̃ = x + σ z``::

    ℓ(θ; σ) = ½ E ‖s_θ(x̃, σ) + (x̃ - x) / σ²‖²,    λ(σ) = σ²,    λ(σ) ℓ(θ; σ) = ½ E ‖σ s_θ(x̃, σ) + z‖²

Sampling by annealed Langevin dynamics (their Algorithm 1): start from ``x ~ N(0, σ_1² I)`` (NCSNv2; the
2019 paper starts from uniform noise), then for each level ``i`` take ``T`` Langevin steps with
``α_i = ε σ_i² / σ_L²``::

    x ← x + α_i s_θ(x, σ_i) + √(2 α_i) z,        z ~ N(0, I)

and finally denoise once with Tweedie's formula ``x ← x + σ_L² s_θ(x, σ_L)`` (NCSNv2, Song & Ermon 2020).
The step is written as in the reference code and :func:`edifice.integrators.sde.langevin_step`; the paper's
Algorithm 1 writes ``x + (α_i/2) s + √α_i z``, i.e. its ``α_i`` is twice ours: with the same ``ε`` (2e-5 in
both) the code, and this module, take steps twice as long as the paper's formula.

The network (:class:`NCSNScore`) uses NCSNv2's output scaling ``s_θ(x, σ) = F_θ(x, ln σ) / σ`` (their
Technique 3): with ``λ = σ²`` the regression target of ``F_θ`` is ``-z`` at every level.

Example (data = a point mass at 0, whose noisy score is ``-x / σ²``: Tweedie's step lands on it exactly):
    >>> import torch
    >>> from edifice.generative import ncsn
    >>> score = lambda x, sigma: -x / sigma[:, None] ** 2
    >>> ncsn.sample(score, (2, 1), sigmas=[1.0, 0.5], steps_per_level=3, generator=torch.Generator().manual_seed(0))
    tensor([[0.],
            [0.]])
    >>> [round(s, 6) for s in ncsn.sigmas(ncsn.build(data_shape=(2,), hidden=16, depth=1, num_scales=3)).tolist()]
    [1.0, 0.1, 0.01]

References:
    Generative Modeling by Estimating Gradients of the Data Distribution. Song, Ermon, 2019. arXiv:1907.05600.
    Improved Techniques for Training Score-Based Generative Models. Song, Ermon, 2020. arXiv:2006.09011.
    A Connection Between Score Matching and Denoising Autoencoders. Vincent, 2011 (denoising score matching).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_steps, batch_time, check_cond, check_float, check_generator, check_int, check_shape_tuple,
    check_tensor, randint, randn,
)
from edifice.blocks import backbone
from edifice.generative._common import call_net, initial_noise
from edifice.integrators.sde import langevin_step
from edifice.schedules import check_sigma_range, geometric_sigmas

__all__ = ["NCSNScore", "build", "sigmas", "step_sizes", "loss", "annealed_langevin_step", "sample"]

_LADDER_KEYS = ("sigma_min", "sigma_max", "num_scales")
_LADDER_DEFAULTS = {"sigma_min": 0.01, "sigma_max": 1.0, "num_scales": 10}


class NCSNScore(nn.Module):
    r"""Noise-conditional score network ``s_θ(x, σ, y) = F_θ(x, ln σ, y) / σ`` (NCSNv2 output scaling).

    ``F_θ`` is the default :func:`~edifice.blocks.backbone` of the data shape (a ResMLP for ``(D,)``, a UNet
    for ``(C, H, H)``) fed ``ln σ`` through Gaussian random Fourier features (``time_features="fourier"``,
    ``t_scale=1``), so the network is defined for every ``σ > 0``, not only on its training ladder.
    The ladder's end points and size are kept as attributes and read by :func:`sigmas`, :func:`loss`
    and :func:`sample`. The options are recorded in ``self.config``, so ``NCSNScore(**net.config)``
    rebuilds the network.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``.
        num_classes: labels for class conditioning (``y=None`` means the null label), or None.
        sigma_min, sigma_max: end points of the geometric ladder, ``0 < sigma_min < sigma_max``. NCSNv2
            (Technique 1) takes ``σ_1`` about the largest distance between two training points and ``σ_L``
            small enough that ``N(x, σ_L² I)`` is indistinguishable from the data.
        num_scales: ``L``, the number of levels (``>= 1``).
        hidden, depth, base_channels, channel_mults, num_res_blocks, dropout: backbone options.

    Raises:
        ValueError / TypeError: naming the offending option.

    References:
        Improved Techniques for Training Score-Based Generative Models. Song, Ermon, 2020. arXiv:2006.09011.

    Example:
        >>> net = NCSNScore(data_shape=(2,), hidden=16, depth=1)
        >>> net(torch.randn(3, 2), torch.full((3,), 0.5)).shape
        torch.Size([3, 2])
    """

    def __init__(
        self,
        *,
        data_shape: tuple[int, ...],
        num_classes: int | None = None,
        sigma_min: float = 0.01,
        sigma_max: float = 1.0,
        num_scales: int = 10,
        hidden: int = 256,
        depth: int = 3,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
        num_scales = check_int("num_scales", num_scales, min=1)
        self.backbone = backbone(data_shape, t_scale=1.0, time_features="fourier", num_classes=num_classes,
                                 hidden=hidden, depth=depth, base_channels=base_channels,
                                 channel_mults=channel_mults, num_res_blocks=num_res_blocks, dropout=dropout)
        self.sigma_min, self.sigma_max, self.num_scales = sigma_min, sigma_max, num_scales
        self.config: dict[str, Any] = dict(
            data_shape=check_shape_tuple("data_shape", data_shape), num_classes=num_classes, sigma_min=sigma_min,
            sigma_max=sigma_max, num_scales=num_scales, hidden=hidden, depth=depth, base_channels=base_channels,
            channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks, dropout=float(dropout),
        )

    def forward(self, x: torch.Tensor, sigma: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """The score at noise level ``sigma``.

        Args:
            x: ``(B, *data_shape)``.
            sigma: ``(B,)`` noise levels ``> 0`` (a number or 0-dim tensor is broadcast; not range-checked,
                which would need a host sync in sampling loops).
            y: ``(B,)`` labels or None.

        Returns:
            ``(B, *data_shape)`` score ``F(x, ln σ, y) / σ``.
        """
        sigma = batch_time(sigma, x, "sigma")  # (B,)
        out = self.backbone(x, sigma.log(), y=y)  # (B, *data_shape)
        return out / append_dims(sigma, x.ndim)  # (B, *data_shape)


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    sigma_min: float = 0.01,
    sigma_max: float = 1.0,
    num_scales: int = 10,
    hidden: int = 256,
    depth: int = 3,
    base_channels: int = 32,
    channel_mults: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    dropout: float = 0.0,
) -> NCSNScore:
    """Build a noise-conditional score network :class:`NCSNScore` (see it for the options).

    The defaults ``sigma_min=0.01``, ``sigma_max=1``, ``num_scales=10`` suit 2-D points; images in
    ``[-1, 1]`` want a larger ``sigma_max`` (about the largest distance between two training images) and
    more levels (NCSNv2 Technique 2: ``σ_{i-1}/σ_i`` such that neighbouring noisy laws overlap).

    Returns:
        An :class:`NCSNScore` called ``net(x (B, *data_shape), sigma (B,), y=None)``.

    Raises:
        ValueError: for ``sigma_min >= sigma_max``, ``num_scales < 1`` or a bad backbone option.
        TypeError: for an option of the wrong type.
    """
    return NCSNScore(data_shape=data_shape, num_classes=num_classes, sigma_min=sigma_min, sigma_max=sigma_max,
                     num_scales=num_scales, hidden=hidden, depth=depth, base_channels=base_channels,
                     channel_mults=channel_mults, num_res_blocks=num_res_blocks, dropout=dropout)


def _has_ladder(net: Any) -> bool:
    return all(hasattr(net, k) for k in _LADDER_KEYS)


def sigmas(
    net_or_options: Any = None,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    num_scales: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The geometric ladder ``σ_i = σ_max (σ_min/σ_max)^{(i-1)/(L-1)}``, ``i = 1..L``, descending.

    Args:
        net_or_options: an :class:`NCSNScore` (or anything with ``sigma_min``, ``sigma_max`` and
            ``num_scales`` attributes, e.g. a compiled one), a mapping of build options (other keys are
            ignored, missing ones take :func:`build`'s defaults), or None (the defaults).
        sigma_min, sigma_max, num_scales: override the values of ``net_or_options`` (the network takes any
            ``σ > 0``, so a finer ladder with the trained end points is a valid sampling choice).
        device, dtype: of the result (float64 by default).

    Returns:
        ``(L,)`` descending noise levels (:func:`edifice.schedules.geometric_sigmas`).

    Raises:
        TypeError: if ``net_or_options`` is none of the above. ValueError: for a bad range or ``L < 1``.
    """
    if net_or_options is None:
        values = dict(_LADDER_DEFAULTS)
    elif _has_ladder(net_or_options):
        values = {k: getattr(net_or_options, k) for k in _LADDER_KEYS}
    elif isinstance(net_or_options, Mapping):
        values = {k: net_or_options.get(k, _LADDER_DEFAULTS[k]) for k in _LADDER_KEYS}
    else:
        raise TypeError(f"net_or_options must be an NCSNScore, a mapping of build options or None, "
                        f"got {type(net_or_options).__name__}")
    for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("num_scales", num_scales)):
        if value is not None:
            values[key] = value
    n = check_int("num_scales", values["num_scales"], min=1)
    return geometric_sigmas(n, sigma_min=values["sigma_min"], sigma_max=values["sigma_max"], device=device,
                            dtype=dtype)


def _ladder(ladder: Any, net: Any, like: torch.Tensor) -> torch.Tensor:
    """Resolve ``sigmas=`` (None = the net's ladder) to a checked ``(L,)`` tensor on ``like``'s device / dtype."""
    if ladder is None:
        if not _has_ladder(net):
            raise ValueError("sigmas must be given for a net without a ladder (a plain callable, not an NCSNScore)")
        return sigmas(net, device=like.device, dtype=like.dtype)
    if isinstance(ladder, (list, tuple)):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ladder):
            raise TypeError(f"sigmas must be a 1-D tensor or a sequence of numbers, got {ladder!r}")
        ladder = torch.tensor(ladder, dtype=torch.float64)
    elif not isinstance(ladder, torch.Tensor):
        raise TypeError(f"sigmas must be a 1-D tensor, a sequence of numbers or None, got {type(ladder).__name__}")
    if ladder.ndim != 1 or ladder.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D ladder, got shape {tuple(ladder.shape)}")
    if not ladder.is_floating_point():
        raise TypeError(f"sigmas must be floating point, got dtype {ladder.dtype}")
    # Host sync: entry points only.
    if not bool(torch.isfinite(ladder).all()) or not bool((ladder > 0).all()):
        raise ValueError(f"sigmas must be finite and positive, got {ladder.tolist()}")
    if not bool((ladder[1:] < ladder[:-1]).all()):
        raise ValueError(f"sigmas must be strictly descending, got {ladder.tolist()}")
    return ladder.to(device=like.device, dtype=like.dtype)


def step_sizes(ladder: Sequence[float] | torch.Tensor, step_lr: float) -> torch.Tensor:
    """Annealed Langevin step sizes ``α_i = ε σ_i² / σ_L²`` (Song & Ermon 2019, Algorithm 1; ``α_L = ε``).

    Args:
        ladder: ``(L,)`` descending positive noise levels (a tensor or a sequence of numbers).
        step_lr: ``ε > 0``.

    Returns:
        ``(L,)`` step sizes, in ``ladder``'s dtype (float64 for a sequence) and on its device.

    Raises:
        ValueError / TypeError: for a bad ladder or ``step_lr <= 0``.
    """
    step_lr = check_float("step_lr", step_lr, min=0.0, min_open=True)
    floating = isinstance(ladder, torch.Tensor) and ladder.is_floating_point()
    like = ladder if floating else torch.empty(0, dtype=torch.float64)
    ladder = _ladder(ladder, None, like)
    return step_lr * (ladder / ladder[-1]).square()


def _score(net: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    return call_net(net, x, sigma, cond, "a score")


def loss(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    sigma_index: Any = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Noise-conditional denoising score matching, ``λ(σ) = σ²`` (Song & Ermon 2019, eq. 5-6).

    ``i ~ U{1..L}``, ``z ~ N(0, I)``, ``x̃ = x + σ_i z`` and ``loss = mean_b ½ Σ_dims (σ_i s_θ(x̃, σ_i) + z)²``:
    summed over the data dimensions, averaged over the batch (as the reference code). Its minimiser is the
    exact score of the noisy data ``∇ log q_σ``; at it the loss equals ``½ E ‖σ ∇log q_σ(x̃) + z‖²`` (> 0).

    Args:
        net: score network ``net(x, sigma, **cond)`` (any callable).
        x: ``(B, ...)`` data batch.
        sigmas: ``(L,)`` descending ladder; None = the net's own (:func:`sigmas`), required for a plain callable.
        generator: draws the levels and the noise (levels first).
        noise: ``(B, ...)`` override for ``z``.
        sigma_index: ``(B,)`` integer tensor or an int in ``[0, L)`` overriding the drawn level indices.
        cond: conditioning keyword arguments for ``net``.

    Returns:
        ``(loss, {"loss": loss.detach()})``.

    Raises:
        ValueError / TypeError: for a bad ``x``, ladder, ``noise``, ``sigma_index``, ``cond`` or ``generator``,
        and when ``sigmas`` is missing for a plain callable.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    cond = check_cond(cond)
    generator = check_generator(generator)
    ladder = _ladder(sigmas, net, x)  # (L,)
    n = ladder.shape[0]
    if sigma_index is None:
        idx = randint(0, n, (x.shape[0],), generator=generator, device=x.device)  # (B,)
    else:
        idx = batch_steps(sigma_index, x, "sigma_index")
        if bool(((idx < 0) | (idx >= n)).any()):  # host sync: entry point
            raise ValueError(f"sigma_index must be in [0, {n}), got values in [{int(idx.min())}, {int(idx.max())}]")
    if noise is None:
        z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        z = check_tensor("noise", noise, shape=tuple(x.shape), floating=True).to(x)
    sigma = ladder[idx]  # (B,)
    sig = append_dims(sigma, x.ndim)  # (B, 1, ..., 1)
    s = _score(net, x + sig * z, sigma, cond)
    value = 0.5 * (sig * s + z).flatten(1).square().sum(dim=1).mean()
    return value, {"loss": value.detach()}


def annealed_langevin_step(
    x: torch.Tensor, score: torch.Tensor, step_size: torch.Tensor | float, noise: torch.Tensor
) -> torch.Tensor:
    """One Langevin step of Algorithm 1 (Song & Ermon 2019): ``x + α s + √(2α) z``.

    The same step as :func:`edifice.integrators.sde.langevin_step` (the reference code's convention; the
    paper writes ``x + (α/2) s + √α z``).

    Args:
        x: ``(B, ...)`` state. score: ``s_θ(x, σ_i)``, shaped like ``x``.
        step_size: ``α > 0``: a number, a 0-dim or a per-sample ``(B,)`` tensor (tensors are not
            range-checked, which would need a host sync).
        noise: standard normal ``z`` shaped like ``x``.

    Returns:
        The new state, shaped like ``x``.

    Raises:
        ValueError / TypeError: for mismatched shapes or a non-positive number ``step_size``.
    """
    check_tensor("x", x, floating=True)
    check_tensor("score", score, shape=tuple(x.shape), floating=True)
    check_tensor("noise", noise, shape=tuple(x.shape), floating=True)
    if isinstance(step_size, torch.Tensor):
        if step_size.ndim > 1 or (step_size.ndim == 1 and step_size.shape[0] != x.shape[0]):
            raise ValueError(f"step_size must be a number, a 0-dim tensor or have shape ({x.shape[0]},), "
                             f"got {tuple(step_size.shape)}")
    else:
        step_size = check_float("step_size", step_size, min=0.0, min_open=True)
    return langevin_step(x, score, step_size, noise)


def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    steps_per_level: int | None = None,
    step_lr: float = 2e-5,
    denoise: bool = True,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) with NCSNv2's start and final denoising.

    ``x = σ_1 · noise`` (``N(0, σ_1² I)``); for each level ``i = 1..L`` and ``T`` times:
    ``x ← x + α_i s(x, σ_i) + √(2α_i) z`` with ``α_i = ε σ_i²/σ_L²`` (:func:`step_sizes`); then, if
    ``denoise``, ``x ← x + σ_L² s(x, σ_L)`` (Tweedie). Network calls: ``L · T`` (+1 with ``denoise``).
    ``ε`` is the step of the last level: it must be small against the data's smallest variance
    (e.g. ``ε = 2e-5`` with ``σ_L = 0.01`` as in the paper's CIFAR-10 setup; NCSNv2 Technique 4 tunes it).

    Args:
        net: score network ``net(x, sigma, **cond)`` (any callable; ``sigma`` is ``(B,)``).
        shape: ``(B, *data_shape)``.
        sigmas: ``(L,)`` descending ladder; None = the net's own (:func:`sigmas`), required for a plain callable.
        steps_per_level: ``T >= 1`` Langevin steps per level (default 100).
        step_lr: ``ε > 0``.
        denoise: apply the final Tweedie step.
        steps: alias of ``steps_per_level`` (the common sampler keyword); give at most one of the two.
        generator: draws the initial noise (if not given) and one ``z`` per step, in that order.
        cond: conditioning for ``net``.
        callback: called after each Langevin step as ``callback(dict(i=..., level=..., t=σ_i, x=...))``,
            ``i`` counting steps from 0 and ``t`` the 0-dim noise level (the time of this family).
        noise: ``(B, *data_shape)`` standard normal start (scaled by ``σ_1`` here); sets device / dtype
            unless given explicitly.
        device, dtype: where to sample; default: ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples.

    Raises:
        ValueError / TypeError: for bad arguments (validated here, never inside the loop).
    """
    if steps is not None and steps_per_level is not None:
        raise ValueError(f"give steps or steps_per_level, not both; got steps={steps}, "
                         f"steps_per_level={steps_per_level}")
    t_name, t_val = ("steps", steps) if steps is not None else ("steps_per_level", steps_per_level)
    n_steps = 100 if t_val is None else check_int(t_name, t_val, min=1)
    step_lr = check_float("step_lr", step_lr, min=0.0, min_open=True)
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be a bool, got {type(denoise).__name__} {denoise!r}")
    cond = check_cond(cond)
    generator = check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    x = initial_noise(net, shape, noise, generator, device, dtype)
    ladder = _ladder(sigmas, net, x)  # (L,) in x's dtype
    alphas = step_lr * (ladder / ladder[-1]).square()  # (L,)
    b = x.shape[0]
    x = ladder[0] * x
    i = 0
    for level in range(ladder.shape[0]):
        sigma = ladder[level].expand(b)  # (B,)
        for _ in range(n_steps):
            z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = annealed_langevin_step(x, _score(net, x, sigma, cond), alphas[level], z)
            if callback is not None:
                callback({"i": i, "level": level, "t": ladder[level], "x": x})
            i += 1
    if denoise:
        sigma = ladder[-1].expand(b)  # (B,)
        x = x + ladder[-1].square() * _score(net, x, sigma, cond)
    return x
