r"""DiT: DDPM training and sampling with a Diffusion Transformer, optionally with a learned variance.

The family of Peebles & Xie (2023): the network is a :class:`~edifice.blocks.transformer.DiT` and the
objective is DDPM's, with the improved-DDPM (Nichol & Dhariwal 2021) learned variance when the network is
built with ``learn_sigma=True``. **Time convention:** DDPM's integer steps ``t ∈ {0, ..., T-1}``, ``t = 0``
least noisy; the network is called ``net(x_t, t.float(), y=...)`` and embeds time with ``t_scale = 1``.

With a learned variance the network returns ``2C`` channels ``[ε_θ | v_θ]`` and the reverse-step variance
interpolates, in the log domain, between the two DDPM extremes (Nichol & Dhariwal eq. 15)::

    log σ²_θ(x_t, t) = f log β_{t|s} + (1 - f) log β̃_{t|s},     f = (v_θ + 1) / 2

The hybrid loss (their Sec. 3.1) is ``L_simple + λ L_vlb`` with ``λ`` = ``vlb_weight`` = 0.001. Per sample
``L_vlb`` is estimated by ``T L_t`` at the drawn step ``t``, where ``L_t = KL(q(x_{t-1}|x_t,x_0) ‖
p_θ(x_{t-1}|x_t))`` for ``t > 0`` and the discretised-Gaussian decoder NLL ``-log p_θ(x_0|x_1)`` at
``t = 0`` (256 bins over ``[-1, 1]``), in bits per dimension; the mean of ``p_θ`` is computed from a
**stop-gradient** ``ε_θ``, so ``L_vlb`` trains only the variance (their Sec. 3.1). With ``T = 1000`` and
``λ = 0.001`` this is guided-diffusion's / DiT's ``mse + vb``.

A network without a learned variance (a DiT with ``learn_sigma=False``, or any ``net(x, t, **cond)``)
makes :func:`loss` and :func:`sample` exactly :func:`edifice.generative.ddpm.loss` /
:func:`~edifice.generative.ddpm.sample` (or :func:`~edifice.generative.ddim.sample`). A DiT drops into
the other families unchanged once built with their ``t_scale`` (flow matching and VP score SDEs 1000, EDM
250 on ``c_noise``); see the guide ``guides/transformers_and_guidance.md``.

Example:
    >>> import torch
    >>> from edifice.generative import dit
    >>> g = torch.Generator().manual_seed(0)
    >>> net = dit.build(data_shape=(1, 8, 8), preset="tiny", num_classes=10, learn_sigma=True)
    >>> x, y = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 3])
    >>> value, logs = dit.loss(net, x, cond={"y": y}, generator=g)
    >>> sorted(logs)
    ['loss', 'mse', 'vlb']
    >>> dit.sample(net, (2, 1, 8, 8), steps=10, cond={"y": torch.tensor([3, 3])}, generator=g).shape
    torch.Size([2, 1, 8, 8])

References:
    Scalable Diffusion Models with Transformers. Peebles, Xie, 2023. arXiv:2212.09748.
    Improved Denoising Diffusion Probabilistic Models. Nichol, Dhariwal, 2021. arXiv:2102.09672.
    Denoising Diffusion Probabilistic Models. Ho, Jain, Abbeel, 2020. arXiv:2006.11239.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from edifice._checks import check_choice, check_cond, check_float, check_int, check_tensor
from edifice.blocks.transformer import DIT_PRESETS, DiT, dit_preset
from edifice.generative import ddim, ddpm
from edifice.generative._common import resolve_device_dtype
from edifice.generative.ddpm import (
    _c, _check_clip, _gather_ab, _posterior, _reverse_chain, _schedule, _start, _x0_eps, timesteps,
)
from edifice.schedules import NoiseSchedule

__all__ = ["SAMPLERS", "PRESETS", "build", "learned_log_variance", "normal_kl",
           "discretized_gaussian_log_likelihood", "loss", "sample"]

SAMPLERS = ("ddpm", "ddim")
PRESETS = tuple(DIT_PRESETS)


def build(
    *,
    data_shape: tuple[int, ...],
    preset: str = "tiny",
    patch_size: int | None = None,
    hidden: int | None = None,
    depth: int | None = None,
    heads: int | None = None,
    mlp_ratio: float = 4.0,
    num_classes: int | None = None,
    learn_sigma: bool = False,
) -> DiT:
    """Build a DDPM :class:`~edifice.blocks.transformer.DiT` ``net(x_t, t, y=None)`` (``t`` in steps, ``t_scale=1``).

    Args:
        data_shape: ``(C, H, W)``.
        preset: a key of :data:`~edifice.blocks.transformer.DIT_PRESETS` (``"tiny"`` for 8x8, ``"small28"``
            for 28x28, the paper's ``"S/2"`` ... ``"XL/8"``).
        patch_size, hidden, depth, heads: override the preset's value when given.
        mlp_ratio: MLP width / ``hidden``.
        num_classes: labels for class conditioning (null label ``num_classes``), or None.
        learn_sigma: also output the variance interpolation (``2C`` channels).

    Raises:
        ValueError / TypeError: naming the offending option (``preset``, ``patch_size``, ...).
    """
    check_choice("preset", preset, PRESETS)
    overrides = {k: v for k, v in dict(patch_size=patch_size, hidden=hidden, depth=depth, heads=heads).items()
                 if v is not None}
    return dit_preset(preset, data_shape=data_shape, mlp_ratio=mlp_ratio, num_classes=num_classes,
                      learn_sigma=learn_sigma, t_scale=1.0, **overrides)


def _learns_sigma(net: Any) -> bool:
    return getattr(net, "learn_sigma", False) is True


def _split(out: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ε, v)`` halves of a learned-variance output ``(B, 2C, ...)``; ValueError naming ``net`` otherwise."""
    want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"net has learn_sigma=True and must return shape {want} ([eps | v]), got {got}")
    return out[:, : x.shape[1]], out[:, x.shape[1]:]


def learned_log_variance(v: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    r"""``log σ²_θ = f log β_{t|s} + (1 - f) log β̃_{t|s}``, ``f = (v + 1)/2`` (Nichol & Dhariwal eq. 15).

    Respaced: ``β_{t|s} = 1 - ᾱ_t/ᾱ_s`` and ``β̃_{t|s} = β_{t|s} (1 - ᾱ_s)/(1 - ᾱ_t)``. On a step to the data
    (``ᾱ_s = 1``, where ``β̃ = 0`` and the samplers add no noise) ``log β̃`` is replaced by ``log β`` so the
    result stays finite.

    Args:
        v: raw network output ``(B, ...)``. alpha_bar_t, alpha_bar_prev: 0-dim or ``(B,)`` tensors.

    Returns:
        ``(B, ...)`` log-variance in ``v``'s dtype.
    """
    check_tensor("v", v, floating=True)
    _, _, var, beta = _posterior(alpha_bar_t, alpha_bar_prev)
    min_log = torch.where(alpha_bar_prev < 1, var, beta).log()
    frac = (v + 1) / 2
    return frac * _c(beta.log(), v) + (1 - frac) * _c(min_log, v)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    r"""Elementwise ``KL(N(μ₁, e^{ℓ₁}) ‖ N(μ₂, e^{ℓ₂})) = ½(ℓ₂ - ℓ₁ + e^{ℓ₁-ℓ₂} + (μ₁-μ₂)² e^{-ℓ₂} - 1)`` in nats."""
    return 0.5 * (logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2).square() * (-logvar2).exp() - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's tanh approximation of the standard normal CDF (kept for parity with DiT's loss)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of ``x`` in ``[-1, 1]`` under ``N(mean, e^{2 log_scale})`` binned into 256
    levels of width 2/255, the outermost bins extended to ±∞ (Ho et al. Sec. 3.3; guided-diffusion).

    Args:
        x, mean, log_scale: ``(B, ...)`` tensors of one shape (``log_scale`` = log standard deviation).
    """
    centered = x - mean
    inv_std = (-log_scale).exp()
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp(min=1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp(min=1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp(min=1e-12).log()
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def loss(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    schedule: NoiseSchedule | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    vlb_weight: float = 0.001,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPM ε-loss, plus the hybrid ``λ L_vlb`` term on the learned variance when ``net.learn_sigma`` is True.

    Without a learned variance this is :func:`edifice.generative.ddpm.loss` (``target="eps"``), draw for
    draw. With one, the same draws give ``L_simple`` on the first ``C`` output channels and
    ``vlb_weight * T * L_t`` (bits per dimension, mean over the batch) as described in the module docstring.

    Args:
        net: ``net(x_t, t.float(), **cond)``; ``(B, C, ...)`` output, or ``(B, 2C, ...)`` when
            ``net.learn_sigma`` is True. x: ``(B, C, ...)`` clean data (in ``[-1, 1]`` for the decoder term).
        schedule: default ``make_schedule("linear", 1000)``. generator: draws ``t`` and ``ε`` unless given.
        cond: extra keyword arguments for ``net`` (e.g. ``{"y": labels}``). noise, t: overrides.
        vlb_weight: ``λ >= 0``.

    Returns:
        ``(loss, logs)`` with ``logs["loss"]`` and, with a learned variance, ``logs["mse"]`` and ``logs["vlb"]``
        (the mean ``L_t`` in bits per dimension).

    Raises:
        ValueError / TypeError: as :func:`edifice.generative.ddpm.loss`, a bad ``vlb_weight``, or a
        learned-variance net whose output is not ``(B, 2C, ...)``.
    """
    vlb_weight = check_float("vlb_weight", vlb_weight, min=0.0)
    schedule = _schedule(schedule)
    kw = dict(schedule=schedule, target="eps", generator=generator, noise=noise, t=t, cond=cond)
    if not _learns_sigma(net):
        return ddpm.loss(net, x, **kw)
    check_tensor("x", x, floating=True)
    seen: dict[str, torch.Tensor] = {}

    def eps_net(x_t: torch.Tensor, t_in: torch.Tensor, **c: Any) -> torch.Tensor:
        eps, v = _split(net(x_t, t_in, **c), x_t)
        seen.update(x_t=x_t, t=t_in, eps=eps, v=v)
        return eps

    mse, _ = ddpm.loss(eps_net, x, **kw)
    x_t, steps, v = seen["x_t"], seen["t"].round().long(), seen["v"]
    ab_t, ab_s = _gather_ab(schedule, steps, x), _gather_ab(schedule, steps - 1, x)
    c1, c2, _, _ = _posterior(ab_t, ab_s)
    true_mean = _c(c1, x) * x + _c(c2, x) * x_t
    true_log_var = _c(schedule.posterior_log_variance_clipped.to(x.device)[steps], x)
    x0_pred = _x0_eps(seen["eps"].detach(), x_t, ab_t, "eps")[0]  # stop-gradient on the mean
    model_mean = _c(c1, x) * x0_pred + _c(c2, x) * x_t
    min_log = _c(schedule.posterior_log_variance_clipped.to(x.device)[steps], x)
    max_log = _c(schedule.betas.to(x.device)[steps].log(), x)
    frac = (v + 1) / 2
    model_log_var = frac * max_log + (1 - frac) * min_log
    dims = tuple(range(1, x.ndim))
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dims) / math.log(2.0)  # (B,)
    nll = -discretized_gaussian_log_likelihood(x, model_mean, 0.5 * model_log_var).mean(dims) / math.log(2.0)
    vb = torch.where(steps == 0, nll, kl)  # (B,)
    vlb = vb.mean()
    value = mse + vlb_weight * schedule.T * vlb
    return value, {"loss": value.detach(), "mse": mse.detach(), "vlb": vlb.detach()}


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    schedule: NoiseSchedule | None = None,
    sampler: str = "ddpm",
    eta: float = 0.0,
    spacing: str = "linspace",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sample with DDPM ancestral steps (learned variance when ``net.learn_sigma``) or DDIM.

    ``sampler="ddpm"``: without a learned variance exactly :func:`edifice.generative.ddpm.sample`
    (``variance="small"``); with one, the same loop with ``σ² = exp(log σ²_θ)`` from
    :func:`learned_log_variance` (respaced when ``steps < T``, as in improved DDPM). ``sampler="ddim"``:
    :func:`edifice.generative.ddim.sample` on the ``ε`` channels (a learned variance is ignored).

    Args:
        net: ``net(x, t (B,) float, **cond)``. shape: ``(B, C, ...)``.
        steps: network calls; ``None`` = all ``T`` for ``"ddpm"``, 50 for ``"ddim"``.
        schedule: default ``make_schedule("linear", 1000)``. sampler: ``"ddpm"`` or ``"ddim"``.
        eta: DDIM's ``η`` in ``[0, 1]`` (``"ddim"`` only). spacing: timestep spacing (see
            :func:`edifice.generative.ddpm.timesteps`). clip_x0: clamp the predicted ``x_0``.
        generator, cond, callback, noise, device, dtype: as in :func:`edifice.generative.ddpm.sample`.

    Returns:
        ``(B, C, ...)`` samples, computed under ``torch.no_grad()``.

    Raises:
        ValueError / TypeError: a bad ``sampler`` or any argument the underlying sampler rejects.
    """
    check_choice("sampler", sampler, SAMPLERS)
    eta = check_float("eta", eta, min=0.0, max=1.0)
    learned = _learns_sigma(net)
    common = dict(schedule=schedule, spacing=spacing, clip_x0=clip_x0, generator=generator, cond=cond,
                  callback=callback, noise=noise)
    if sampler == "ddim":
        if learned:
            device, dtype = resolve_device_dtype(net, noise, device, dtype)

            def eps_only(x: torch.Tensor, t: torch.Tensor, **c: Any) -> torch.Tensor:
                return _split(net(x, t, **c), x)[0]

            return ddim.sample(eps_only, shape, steps=50 if steps is None else steps, eta=eta, device=device,
                               dtype=dtype, **common)
        return ddim.sample(net, shape, steps=50 if steps is None else steps, eta=eta, device=device, dtype=dtype,
                           **common)
    if not learned:
        return ddpm.sample(net, shape, steps=steps, device=device, dtype=dtype, **common)
    schedule = _schedule(schedule)
    clip_x0 = _check_clip(clip_x0)
    cond = check_cond(cond)
    steps = schedule.T if steps is None else check_int("steps", steps, min=1, max=schedule.T)
    ts = timesteps(schedule.T, steps, spacing=spacing)
    x = _start(net, shape, noise, generator, device, dtype)

    def update(x, out, ab_t, ab_s, z):
        eps, v = _split(out, x)
        x0 = _x0_eps(eps, x, ab_t, "eps")[0]
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        c1, c2, _, _ = _posterior(ab_t, ab_s)
        mean = _c(c1, x) * x0 + _c(c2, x) * x
        if z is None:
            return mean, x0
        return mean + (0.5 * learned_log_variance(v, ab_t, ab_s)).exp() * z, x0

    return _reverse_chain(net, x, ts, schedule, cond, update, noisy=True, generator=generator, callback=callback)
