r"""EDM (Karras et al. 2022): a preconditioned denoiser, its loss, and Heun / Euler / stochastic samplers.

**Time convention:** the noise level ``σ`` itself; ``x_σ = x_0 + σ n`` with ``n ~ N(0, I)``, data at
``σ = 0`` and (nearly) pure noise ``N(0, σ_max² I)`` at ``σ_max``. Networks are called
``net(x, sigma (B,), **cond)`` and return the **denoised** ``x`` (``D_θ ≈ E[x_0 | x_σ]``).

Preconditioning (Table 1): ``D(x, σ) = c_skip x + c_out F(c_in x, c_noise)`` with::

    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),  c_noise = ¼ ln σ

Training (eq. 2, Table 1): ``ln σ ~ N(P_mean, P_std²)`` and ``L = E λ(σ) ‖D(x + σ n, σ) - x‖²`` with
``λ = 1 / c_out² = (σ² + σ_d²) / (σ σ_d)²``, which makes the effective target of ``F`` unit-variance.

Sampling integrates the probability-flow ODE ``dx/dσ = (x - D(x, σ)) / σ`` (eq. 3 with ``s = 1``,
``σ(t) = t``) over the ladder ``σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ``, ``σ_N = 0``
(eq. 5): Algorithm 1 takes Heun steps with the second-order correction skipped on the last step to
``σ = 0`` (``2N - 1`` network calls for ``N`` steps); Algorithm 2 first "churns" ``x`` to the higher
level ``σ̂ = (1 + γ_i) σ_i`` with fresh noise, ``γ_i = min(S_churn / N, √2 - 1)`` for
``σ_i ∈ [S_tmin, S_tmax]``. :func:`log_prob` integrates the same ODE with the instantaneous change of
variables. :func:`vp_denoiser` turns a discrete DDPM network into a denoiser (``x = x_vp √(1+σ²)``,
``σ = √((1-ᾱ)/ᾱ)``), which is how diffusers' ``EulerDiscreteScheduler`` / ``HeunDiscreteScheduler`` work.

Example (the exact denoiser of a point mass at 3; the ODE is then linear in σ and every sampler lands on 3):
    >>> import torch
    >>> from edifice.generative import edm
    >>> g = torch.Generator().manual_seed(0)
    >>> x = edm.sample(lambda x, sigma: torch.full_like(x, 3.0), (2, 1), steps=5, generator=g)
    >>> torch.allclose(x, torch.full((2, 1), 3.0))
    True

References:
    Elucidating the Design Space of Diffusion-Based Generative Models. Karras, Aittala, Aila, Laine, 2022.
    arXiv:2206.00364.
    Score-Based Generative Modeling through Stochastic Differential Equations. Song, Sohl-Dickstein,
    Kingma, Kumar, Ermon, Poole, 2021. arXiv:2011.13456.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_time, check_choice, check_cond, check_float, check_int, check_tensor, randn,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import initial_noise
from edifice.generative.ddpm import TARGETS, _hi, _schedule
from edifice.integrators import METHODS, cnf_log_prob
from edifice.schedules import NoiseSchedule, check_sigma_range, karras_sigmas

__all__ = [
    "SAMPLERS", "TARGETS", "preconditioning", "EDMDenoiser", "build", "sample_sigma", "loss_weight", "loss",
    "euler_step", "heun_step", "churn", "sample", "probability_flow", "log_prob", "vp_denoiser", "vp_sigmas",
]

SAMPLERS = ("heun", "euler")
_T_SCALE = 250.0  # c_noise = ln(σ)/4 ∈ [-1.55, 1.1] for σ ∈ [0.002, 80]: ×250 spans ~660 sinusoidal "steps"


def _sigma_data(sigma_data: Any) -> float:
    return check_float("sigma_data", sigma_data, min=0.0, min_open=True)


def _precond(sigma: torch.Tensor, sd: float) -> tuple[torch.Tensor, ...]:
    var = sigma.square() + sd * sd
    return sd * sd / var, sigma * sd / var.sqrt(), var.rsqrt(), sigma.log() / 4


def preconditioning(sigma: torch.Tensor, sigma_data: float = 0.5) -> tuple[torch.Tensor, ...]:
    """Table 1's ``(c_skip, c_out, c_in, c_noise)``, four ``(B,)`` tensors, at ``(B,)`` levels ``sigma > 0``
    (not range-checked: no host sync) for data of standard deviation ``sigma_data > 0``."""
    check_tensor("sigma", sigma, floating=True)
    return _precond(sigma, _sigma_data(sigma_data))


class EDMDenoiser(nn.Module):
    """Preconditioned denoiser ``D(x, σ, y) = c_skip x + c_out F(c_in x, c_noise, y)`` (Karras et al., Table 1).

    ``F`` is :func:`edifice.blocks.backbone` (ResMLP for ``(D,)``, UNet for ``(C, H, H)``) with sinusoidal
    time features of ``250 c_noise = 62.5 ln σ``. The constructor options are recorded in ``self.config``
    (JSON-serialisable) so ``EDMDenoiser(**net.config)`` rebuilds it; see :func:`build` for their meaning.

    Attributes: ``sigma_data`` (``σ_d``), ``backbone`` (``F``), ``config``.

    References:
        Elucidating the Design Space of Diffusion-Based Generative Models. Karras et al., 2022. arXiv:2206.00364.
    """

    def __init__(self, *, data_shape: Sequence[int], num_classes: int | None = None, sigma_data: float = 0.5,
                 hidden: int = 256, depth: int = 3, base_channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
                 patch_size: int | None = None) -> None:
        super().__init__()
        self.sigma_data = _sigma_data(sigma_data)
        self.backbone = _backbone(data_shape, t_scale=_T_SCALE, num_classes=num_classes, hidden=hidden, depth=depth,
                                  base_channels=base_channels, channel_mults=channel_mults,
                                  num_res_blocks=num_res_blocks, dropout=dropout, arch=backbone,
                                  dit_preset=dit_preset, patch_size=patch_size)  # validates every option
        self.config: dict[str, Any] = dict(
            data_shape=list(data_shape), num_classes=num_classes, sigma_data=self.sigma_data, hidden=hidden,
            depth=depth, base_channels=base_channels, channel_mults=list(channel_mults),
            num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone, dit_preset=dit_preset,
            patch_size=patch_size)

    def forward(self, x: torch.Tensor, sigma: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise ``x (B, *data_shape)`` at levels ``sigma`` (``(B,)`` or a number) -> ``(B, *data_shape)``."""
        sigma = batch_time(sigma, x, "sigma")  # (B,)
        c_skip, c_out, c_in, c_noise = _precond(sigma, self.sigma_data)  # 4 x (B,)
        f = self.backbone(append_dims(c_in, x.ndim) * x, c_noise, y=y)  # (B, *data_shape)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f


def build(*, data_shape: tuple[int, ...], num_classes: int | None = None, sigma_data: float = 0.5,
          hidden: int = 256, depth: int = 3, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2),
          num_res_blocks: int = 1, dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
          patch_size: int | None = None) -> EDMDenoiser:
    """Build an :class:`EDMDenoiser` ``D(x, σ, y=None)`` for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``. num_classes: labels for conditioning (``y=None`` = null label).
        sigma_data: ``σ_d > 0``, the data's standard deviation (0.5 in EDM for images in ``[-1, 1]``).
        hidden, depth: ResMLP width / blocks. base_channels, channel_mults, num_res_blocks, dropout: UNet options.
        backbone, dit_preset, patch_size: the network ``F`` (``"auto"``, ``"mlp"``, ``"unet"`` or ``"dit"``), see
            :func:`edifice.blocks.backbone`.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return EDMDenoiser(data_shape=data_shape, num_classes=num_classes, sigma_data=sigma_data, hidden=hidden,
                       depth=depth, base_channels=base_channels, channel_mults=channel_mults,
                       num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone, dit_preset=dit_preset,
                       patch_size=patch_size)


def sample_sigma(n: int, *, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Draw ``n`` training levels ``σ = exp(P_mean + P_std z)``, ``z ~ N(0, 1)`` (log-normal, Table 1) -> ``(n,)``.

    Raises ValueError / TypeError for a bad ``n``, ``p_mean``, ``p_std`` (``> 0``) or a non-floating ``dtype``.
    """
    n = check_int("n", n, min=1)
    p_mean = check_float("p_mean", p_mean)
    p_std = check_float("p_std", p_std, min=0.0, min_open=True)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return (p_mean + p_std * randn((n,), generator=generator, device=device, dtype=dtype)).exp()


def loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight ``λ(σ) = (σ² + σ_d²) / (σ σ_d)² = 1 / c_out²`` (Table 1), shaped like ``sigma``."""
    check_tensor("sigma", sigma, floating=True)
    sd = _sigma_data(sigma_data)
    return (sigma.square() + sd * sd) / (sigma * sd).square()


def loss(net: Callable[..., torch.Tensor], x: torch.Tensor, *, sigma_data: float | None = None,
         p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None,
         noise: torch.Tensor | None = None, sigma: Any = None, cond: Mapping[str, Any] | None = None,
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EDM loss ``mean λ(σ) ‖D(x + σ n, σ) - x‖²`` over batch and dimensions (Karras et al. eq. 2, Table 1).

    EDM's code sums over dimensions; the mean here differs by the constant factor ``D`` only.

    Args:
        net: denoiser ``net(x, sigma (B,), **cond)``. x: ``(B, *data_shape)`` clean data.
        sigma_data: ``σ_d`` of the weight; None = ``net.sigma_data`` (an :class:`EDMDenoiser`), else 0.5.
        p_mean, p_std: log-normal law of ``σ`` (see :func:`sample_sigma`); unused when ``sigma`` is given.
        generator: draws ``σ`` and ``n``. noise: ``(B, *data_shape)`` override for ``n``.
        sigma: ``(B,)`` or scalar override for ``σ`` (must be ``> 0``). cond: conditioning for ``net``.

    Returns ``(loss, {"loss": loss.detach()})``; raises ValueError / TypeError for a bad ``x``, ``sigma``
    (``<= 0``), ``noise`` shape, ``sigma_data``, ``p_std`` or ``cond``.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    sd = _sigma_data(getattr(net, "sigma_data", 0.5) if sigma_data is None else sigma_data)
    p_mean = check_float("p_mean", p_mean)
    p_std = check_float("p_std", p_std, min=0.0, min_open=True)
    cond = check_cond(cond)
    if sigma is None:
        sigma = sample_sigma(x.shape[0], p_mean=p_mean, p_std=p_std, generator=generator, device=x.device,
                             dtype=x.dtype)
    else:
        sigma = batch_time(sigma, x, "sigma")
        if not bool((sigma > 0).all()):  # host sync: losses are entry points
            raise ValueError(f"sigma must be > 0, got min {float(sigma.min())}")
    if noise is None:
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        noise = check_tensor("noise", noise, shape=tuple(x.shape), floating=True).to(x)
    s = append_dims(sigma, x.ndim)  # (B, 1, ..., 1)
    err = (net(x + s * noise, sigma, **cond) - x).square()  # (B, *data_shape)
    value = (append_dims(loss_weight(sigma, sd), x.ndim) * err).mean()
    return value, {"loss": value.detach()}


# --------------------------------------------------------------------------------------------- steps


def _as(v: Any, x: torch.Tensor) -> Any:
    """A number stays a number; a 0-dim or ``(B,)`` tensor is cast to ``x`` and shaped to broadcast."""
    return append_dims(v.to(x), x.ndim) if isinstance(v, torch.Tensor) else v


def _level(name: str, v: Any, x: torch.Tensor, positive: bool) -> Any:
    """Check a noise level: a number (``> 0`` or ``>= 0``), or a 0-dim / ``(B,)`` tensor (shape only: no sync)."""
    if isinstance(v, torch.Tensor):
        return append_dims(batch_time(v, x, name), x.ndim)
    return check_float(name, v, min=0.0, min_open=positive)


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: Any, sigma_next: Any) -> torch.Tensor:
    """Euler step of ``dx/dσ = (x - D)/σ``: ``x + (σ_next - σ) (x - D)/σ`` (Karras et al. Alg. 1, line 5).

    ``x``: ``(B, ...)`` at level ``σ``; ``denoised = D(x, σ)``; ``sigma > 0``, ``sigma_next >= 0``: numbers, 0-dim
    or ``(B,)`` tensors (not range-checked). Returns ``(B, ...)`` at ``σ_next`` (``denoised`` when ``σ_next = 0``).
    """
    check_tensor("x", x, floating=True)
    check_tensor("denoised", denoised, shape=tuple(x.shape), floating=True)
    s, sn = _level("sigma", sigma, x, True), _level("sigma_next", sigma_next, x, False)
    return x + (sn - s) * ((x - denoised) / s)


def heun_step(denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigma: Any,
              sigma_next: Any, denoised: torch.Tensor) -> torch.Tensor:
    """Heun step of ``dx/dσ = (x - D)/σ`` (Karras et al. Alg. 1, lines 5-8): Euler, then the trapezoid correction.

    The correction is skipped where ``σ_next = 0`` (the step is then Euler). For a python ``sigma_next``
    this is a branch; for a tensor it is a ``torch.where`` (no host sync), with ``denoise_fn`` called once
    more at ``σ`` instead of 0 where the result is discarded.

    ``denoise_fn(x, sigma (B,))`` is ``D``; ``x``, ``sigma``, ``sigma_next``, ``denoised = D(x, σ)`` are as in
    :func:`euler_step`. Returns ``(B, ...)`` at ``σ_next``.
    """
    if not callable(denoise_fn):
        raise TypeError(f"denoise_fn must be callable as denoise_fn(x, sigma), got {type(denoise_fn).__name__}")
    x_next = euler_step(x, denoised, sigma, sigma_next)  # validates the levels
    if not isinstance(sigma_next, torch.Tensor):
        if sigma_next == 0.0:
            return x_next
        return _correct(denoise_fn, x, x_next, denoised, _as(sigma, x), sigma_next, batch_time(sigma_next, x))
    s, sn = batch_time(sigma, x, "sigma"), batch_time(sigma_next, x, "sigma_next")
    safe = torch.where(sn > 0, sn, s)  # (B,)
    corrected = _correct(denoise_fn, x, x_next, denoised, append_dims(s, x.ndim), append_dims(safe, x.ndim), safe)
    return torch.where(append_dims(sn > 0, x.ndim), corrected, x_next)


def _correct(fn: Callable, x: torch.Tensor, x_next: torch.Tensor, den: torch.Tensor, s: Any, sn: Any,
             sn_b: torch.Tensor) -> torch.Tensor:
    """Heun's correction ``x + (σ_n - σ) (d + d')/2`` with ``d' = (x_next - D(x_next, σ_n))/σ_n``."""
    d = (x - den) / s
    d2 = (x_next - fn(x_next, sn_b)) / sn
    return x + (sn - s) * ((d + d2) / 2)


def churn(x: torch.Tensor, sigma: Any, gamma: Any, noise: torch.Tensor, s_noise: float = 1.0,
          ) -> tuple[torch.Tensor, Any]:
    """Churn (Karras et al. Alg. 2, lines 5-6): ``σ̂ = (1+γ) σ``, ``x̂ = x + √(σ̂² - σ²) S_noise z``.

    ``x``: ``(B, ...)`` at level ``σ`` (a number, 0-dim or ``(B,)`` tensor); ``gamma >= 0`` of the same kinds;
    ``noise``: ``z``, standard normal like ``x``; ``s_noise >= 0``. Returns ``(x̂, σ̂)``, ``σ̂`` of ``sigma``'s kind.
    """
    check_tensor("x", x, floating=True)
    check_tensor("noise", noise, shape=tuple(x.shape), floating=True)
    s_noise = check_float("s_noise", s_noise, min=0.0)
    _level("sigma", sigma, x, True)
    _level("gamma", gamma, x, False)
    return _churn(x, sigma, gamma, noise, s_noise)


def _churn(x: torch.Tensor, sigma: Any, gamma: Any, noise: torch.Tensor, s_noise: float) -> tuple[torch.Tensor, Any]:
    sigma_hat = sigma * (1 + gamma)
    step = (_as(sigma_hat, x) ** 2 - _as(sigma, x) ** 2) ** 0.5
    return x + step * (s_noise * noise), sigma_hat


# --------------------------------------------------------------------------------------------- samplers


def _ladder(sigmas: Any) -> torch.Tensor:
    """Validate an explicit ladder: 1-D, finite, strictly descending, positive, ending at exactly 0."""
    if not isinstance(sigmas, torch.Tensor):
        if not isinstance(sigmas, (list, tuple)):
            raise TypeError(f"sigmas must be a 1-D tensor or a sequence of numbers, got {type(sigmas).__name__}")
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    check_tensor("sigmas", sigmas, ndim=1)
    lad = sigmas.detach().to("cpu", torch.float64)  # the one host sync, at entry
    if lad.numel() < 2 or not bool(torch.isfinite(lad).all()) or lad[-1] != 0 or not bool((lad[:-1] > 0).all()):
        raise ValueError(f"sigmas must be finite, positive and end with 0 (at least 2 values), got {lad.tolist()}")
    if not bool((lad[1:] < lad[:-1]).all()):
        raise ValueError(f"sigmas must be strictly descending, got {lad.tolist()}")
    return lad


@torch.no_grad()
def sample(net: Callable[..., torch.Tensor], shape: tuple[int, ...], *, steps: int = 18, sampler: str = "heun",
           sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, s_churn: float = 0.0,
           s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
           generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None,
           callback: Callable[[dict[str, Any]], None] | None = None, noise: torch.Tensor | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None, sigmas: Any = None,
           ) -> torch.Tensor:
    """EDM sampling: Algorithm 1 (deterministic, ``s_churn = 0``) or Algorithm 2 (stochastic) of Karras et al.

    Starts from ``x = σ_0 · noise`` and walks the ladder ``σ_0 > ... > σ_N = 0``: per step, churn (if
    ``γ_i > 0``), ``D = net(x̂, σ̂)``, an Euler step to ``σ_{i+1}``, and for ``"heun"`` the second-order
    correction unless ``σ_{i+1} = 0``. Network calls: ``N`` for ``"euler"``, ``2N - 1`` for ``"heun"``.

    Args:
        net: denoiser ``net(x, sigma (B,), **cond)`` (any callable).
        shape: ``(B, *data_shape)``. steps: ``N``, the number of noise levels before 0.
        sampler: ``"heun"`` or ``"euler"``.
        sigma_min, sigma_max, rho: Karras ladder (eq. 5); all ignored when ``sigmas`` is given.
        s_churn, s_tmin, s_tmax, s_noise: Algorithm 2: ``γ_i = min(S_churn/N, √2-1)`` for ``σ_i ∈ [S_tmin,
            S_tmax]`` else 0; churn noise ``N(0, S_noise² I)`` is drawn only for steps with ``γ_i > 0``.
        generator: draws the initial noise and the churn noise. cond: conditioning for ``net``.
        callback: ``callback(dict(i, t=σ_{i+1} (0-dim tensor), x, x0=D(x̂_i, σ̂_i)))`` after each step.
        noise: ``(B, *data_shape)`` standard-normal start; sets device / dtype unless given explicitly.
        device, dtype: default ``noise``'s, else the net's parameters', else cpu / float32.
        sigmas: explicit descending ladder ending at 0 (tensor or sequence), e.g. :func:`vp_sigmas`.

    Returns:
        ``(B, *data_shape)`` samples (under ``torch.no_grad()``); the loop makes no host sync.

    Raises:
        ValueError / TypeError: bad ``steps``, ``sampler``, ladder options or ``sigmas``, negative ``s_churn``
        / ``s_noise`` / ``s_tmin``, ``s_tmax < s_tmin``, ``shape``, ``noise`` shape, ``cond``, non-callable ``net``.
    """
    check_choice("sampler", sampler, SAMPLERS)
    steps = check_int("steps", steps, min=1)
    sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
    rho = check_float("rho", rho, min=0.0, min_open=True)
    s_churn = check_float("s_churn", s_churn, min=0.0)
    s_noise = check_float("s_noise", s_noise, min=0.0)
    s_tmin = check_float("s_tmin", s_tmin, min=0.0)
    if isinstance(s_tmax, bool) or not isinstance(s_tmax, (int, float)):
        raise TypeError(f"s_tmax must be a number, got {type(s_tmax).__name__} {s_tmax!r}")
    if not s_tmax >= s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin = {s_tmin} (inf allowed), got {s_tmax}")
    cond = check_cond(cond)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    lad = karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho) if sigmas is None else _ladder(sigmas)
    x = initial_noise(net, shape, noise, generator, device, dtype)
    n = lad.numel() - 1
    g_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    gammas = [g_max if s_tmin <= s <= s_tmax else 0.0 for s in lad[:-1].tolist()]
    heun = [sampler == "heun" and s > 0 for s in lad[1:].tolist()]
    sig = lad.to(device=x.device, dtype=x.dtype)  # (N + 1,)
    x = sig[0] * x
    b = x.shape[0]
    for i in range(n):
        s, s_next = sig[i], sig[i + 1]
        if gammas[i] > 0:
            z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x, s = _churn(x, s, gammas[i], z, s_noise)
        den = net(x, s.expand(b), **cond)
        x_next = x + (s_next - s) * ((x - den) / s)
        if heun[i]:
            x_next = _correct(lambda v, sb: net(v, sb, **cond), x, x_next, den, s, s_next, s_next.expand(b))
        x = x_next
        if callback is not None:
            callback(dict(i=i, t=s_next, x=x, x0=den))
    return x


def probability_flow(net: Callable[..., torch.Tensor], cond: Mapping[str, Any] | None = None) -> Callable:
    """The probability-flow field ``f(σ, x) = (x - D(x, σ)) / σ`` (Karras et al. eq. 3, ``σ(t) = t``) as
    ``f(sigma, x)``, ``sigma > 0`` a number, 0-dim or ``(B,)`` tensor, for :mod:`edifice.integrators`."""
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, sigma, **cond), got {type(net).__name__}")
    kwargs = check_cond(cond)

    def f(sigma: Any, x: torch.Tensor) -> torch.Tensor:
        s = batch_time(sigma, x, "sigma")  # (B,)
        return (x - net(x, s, **kwargs)) / append_dims(s, x.ndim)

    return f


def log_prob(net: Callable[..., torch.Tensor], x: torch.Tensor, *, sigma_min: float = 0.002,
             sigma_max: float = 80.0, steps: int = 50, method: str = "heun", rho: float = 7.0, rtol: float = 1e-5,
             atol: float = 1e-5, divergence: str = "exact", n_probes: int = 1, dist: str = "rademacher",
             generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Log-density (nats) at ``x`` of the model at level ``σ_min``, by the instantaneous change of variables.

    Integrates :func:`probability_flow` with ``dℓ/dσ = ∇·f`` over the reversed Karras ladder
    ``σ_min -> σ_max`` (``steps`` intervals, ``rho``) and scores the end point under the prior
    ``N(0, σ_max² I)`` (the true marginal there is ``p_data * N(0, σ_max² I)``; the prior ignores the data's
    own spread, a ``O(σ_d²/σ_max²)`` error). The data are taken to sit at ``σ_min``: for a Gaussian
    ``N(μ, Σ)`` the exact answer is ``log N(x; μ, Σ + σ_min² I)``.

    Args:
        net: denoiser ``net(x, sigma (B,), **cond)``, differentiable in ``x``. x: ``(B, *data_shape)``.
        sigma_min, sigma_max, rho, steps: the ladder. method, rtol, atol: any :data:`edifice.integrators.METHODS`.
        divergence, n_probes, dist, generator: as in :func:`edifice.integrators.cnf_log_prob`. cond: for ``net``.

    Returns ``(B,)`` log-densities (no gradient flows back); raises ValueError / TypeError for bad options.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
    steps = check_int("steps", steps, min=1)
    rho = check_float("rho", rho, min=0.0, min_open=True)
    check_choice("method", method, METHODS)
    d = x[0].numel()

    def prior(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * z.flatten(1).square().sum(1) / sigma_max**2 - 0.5 * d * math.log(2 * math.pi * sigma_max**2)

    ts = karras_sigmas(steps + 1, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, append_zero=False,
                       device=x.device, dtype=x.dtype).flip(0)  # (steps + 1,) ascending
    return cnf_log_prob(probability_flow(net, cond), x, ts, prior_log_prob=prior, method=method, rtol=rtol,
                        atol=atol, divergence=divergence, n_probes=n_probes, dist=dist, generator=generator)


# --------------------------------------------------------------------------------------------- DDPM networks


def _vp_table(schedule: NoiseSchedule) -> torch.Tensor:
    return ((1.0 - schedule.alpha_bar) / schedule.alpha_bar).sqrt().cpu()  # (T,) float64, ascending in t


class _VPDenoiser(nn.Module):
    """A discrete DDPM network seen as an EDM denoiser; see :func:`vp_denoiser`."""

    def __init__(self, eps_net: Callable[..., torch.Tensor], schedule: NoiseSchedule, target: str) -> None:
        super().__init__()
        self.eps_net = eps_net  # registered as a submodule when it is one (device / dtype follow it)
        self.target = target
        self._table = _vp_table(schedule)  # (T,) float64; not a buffer, so .to(dtype) cannot round it
        self._tables: dict[torch.device, torch.Tensor] = {}

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep whose linearly interpolated ``σ`` equals ``sigma``, clamped to ``[0, T-1]``."""
        table = self._tables.get(sigma.device)
        if table is None:
            table = self._tables[sigma.device] = self._table.to(sigma.device, _hi(sigma.device))
        s = sigma.to(table.dtype).contiguous()
        k = (torch.searchsorted(table, s, right=True) - 1).clamp(0, table.numel() - 2)  # (B,)
        lo, hi = table[k], table[k + 1]
        return (k + ((s - lo) / (hi - lo)).clamp(0.0, 1.0)).to(sigma.dtype)

    def forward(self, x: torch.Tensor, sigma: Any, **cond: Any) -> torch.Tensor:
        sigma = batch_time(sigma, x, "sigma")  # (B,)
        s = append_dims(sigma, x.ndim)
        out = self.eps_net(x / ((s**2 + 1) ** 0.5), self.timestep(sigma), **cond)  # x_vp = x √ᾱ
        if self.target == "eps":
            return x - s * out
        if self.target == "x0":
            return out
        return out * (-s / (s**2 + 1) ** 0.5) + x / (s**2 + 1)  # v: x0 = √ᾱ x_vp - √(1-ᾱ) v


def vp_denoiser(eps_net: Callable[..., torch.Tensor], schedule: NoiseSchedule | None = None, *,
                target: str = "eps") -> nn.Module:
    """Run a discrete DDPM network as an EDM denoiser ``D(x, sigma, **cond)`` (Karras et al. Table 1, VP column).

    With ``σ = √((1-ᾱ)/ᾱ)``, EDM's ``x = x_0 + σ n`` is ``x_vp / √ᾱ``. So ``D`` calls
    ``eps_net(x / √(1+σ²), t, **cond)`` at the fractional timestep ``t`` where the schedule's ``σ_t``, linearly
    interpolated between integer steps (as diffusers' ``np.interp``), equals ``σ`` (clamped to ``[0, T-1]``), and
    converts the output: ``"eps"``: ``x - σ ε``; ``"x0"``: as is; ``"v"``: ``x/(1+σ²) - σ v/√(1+σ²)``.

    Args:
        eps_net: ``net(x, t (B,) float, **cond)`` trained by :func:`edifice.generative.ddpm.loss`.
        schedule: its :class:`~edifice.schedules.NoiseSchedule` (default linear, ``T = 1000``).
        target: ``"eps"``, ``"x0"`` or ``"v"``.

    Returns an ``nn.Module`` ``D(x, sigma, **cond)`` holding ``eps_net`` (so device and dtype follow it), with
    ``D.timestep(sigma)``; raises ValueError / TypeError for a bad ``target``, ``schedule`` or ``eps_net``.
    """
    if not callable(eps_net):
        raise TypeError(f"eps_net must be callable as eps_net(x, t, **cond), got {type(eps_net).__name__}")
    check_choice("target", target, TARGETS)
    return _VPDenoiser(eps_net, _schedule(schedule), target)


def vp_sigmas(schedule: NoiseSchedule | None = None, steps: int = 50) -> torch.Tensor:
    """diffusers' default Euler / Heun ladder for a DDPM schedule: ``(steps + 1,)`` float64, descending, last 0.

    Timesteps ``linspace(0, T-1, steps)`` (descending; ``timestep_spacing="linspace"``), ``σ`` linearly
    interpolated from ``σ_t = √((1-ᾱ_t)/ᾱ_t)`` at those (fractional) steps, then 0. diffusers rounds the
    timesteps and the ladder to float32; this ladder stays float64. Raises for a bad ``schedule`` or ``steps``.
    """
    schedule = _schedule(schedule)
    steps = check_int("steps", steps, min=1)
    table = _vp_table(schedule).numpy()
    ts = np.linspace(0, schedule.T - 1, steps)[::-1]
    return torch.from_numpy(np.concatenate([np.interp(ts, np.arange(schedule.T), table), [0.0]]))
