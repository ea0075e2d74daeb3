r"""Consistency models (Song et al. 2023; Song & Dhariwal 2023): one-step and few-step generation.

**Time convention:** EDM's noise level ``σ``; ``x_σ = x_0 + σ n`` with ``n ~ N(0, I)``, ``σ ∈ [σ_min, σ_max]``
(``σ_min = ε = 0.002``, ``σ_max = T = 80``). Networks are called ``net(x, sigma (B,), **cond)`` and return the
**consistency function** ``f_θ(x_σ, σ) ≈`` the end point at ``σ_min`` of the probability-flow ODE
``dx/dσ = (x - D(x, σ))/σ`` through ``x_σ`` (Karras et al. eq. 3).

Parameterisation (Song et al. eq. 5 and Appendix C), enforcing the boundary condition ``f(x, σ_min) = x``::

    f_θ(x, σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x, c_noise(σ)),
    c_skip = σ_d² / ((σ - σ_min)² + σ_d²),   c_out = σ_d (σ - σ_min) / √(σ² + σ_d²),
    c_in = 1 / √(σ² + σ_d²),                c_noise = ¼ ln σ

(``c_skip(σ_min) = 1`` and ``c_out(σ_min) = 0`` exactly in floating point, so ``f(x, σ_min) == x`` bit for bit).

Training, on the ascending Karras discretisation ``σ_min = σ_1 < ... < σ_N = σ_max`` (:func:`sigmas`), minimises
``E λ(σ_i) d(f_θ(x + σ_{i+1} z, σ_{i+1}), f_{θ⁻}(x̂_i, σ_i))`` (Song et al. eq. 7 / 10) where

- consistency **training** (:func:`loss`, improved CT of Song & Dhariwal 2023, no teacher): ``x̂_i = x + σ_i z``
  with the same ``z``, ``θ⁻ = stopgrad(θ)`` (no EMA target), the Pseudo-Huber metric (Sec. 3.3),
  ``λ(σ_i) = 1/(σ_{i+1} - σ_i)`` (Sec. 3.1), the doubling curriculum ``N(k)`` (:func:`curriculum`, Sec. 3.4) and
  the log-normal index distribution (:func:`index_probs`, Sec. 3.5);
- consistency **distillation** (:func:`distillation_loss`, Song et al. Algorithm 2): ``x̂_i`` is one step of a
  teacher's ODE solver (Euler or Heun, :func:`edifice.generative.edm.euler_step` / ``heun_step``) from
  ``σ_{i+1}`` to ``σ_i``.

Sampling (:func:`sample`, Song et al. Algorithm 1): ``x = f(σ_max z, σ_max)`` in one network call, then for each
further level ``σ``: :func:`renoise` ``x_σ = x + √(σ² - σ_min²) z`` and ``x = f(x_σ, σ)``.

Example (the exact consistency function of a point mass at 3 is the constant 3 for ``σ > σ_min``; one step
lands on it):
    >>> import torch
    >>> from edifice.generative import consistency as cm
    >>> x = cm.sample(lambda x, sigma: torch.full_like(x, 3.0), (2, 1), generator=torch.Generator().manual_seed(0))
    >>> x
    tensor([[3.],
            [3.]])

References:
    Consistency Models. Song, Dhariwal, Chen, Sutskever, 2023. arXiv:2303.01469.
    Improved Techniques for Training Consistency Models. Song, Dhariwal, 2023. arXiv:2310.14189.
    Elucidating the Design Space of Diffusion-Based Generative Models. Karras, Aittala, Aila, Laine, 2022.
    arXiv:2206.00364.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_time, check_choice, check_cond, check_float, check_generator, check_int, check_tensor, randn,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import call_net, initial_noise
from edifice.generative.edm import euler_step, heun_step
from edifice.schedules import check_sigma_range, karras_sigmas

__all__ = [
    "METRICS", "SOLVERS", "boundary_scalings", "ConsistencyModel", "build", "sigmas", "curriculum", "index_probs",
    "pseudo_huber", "DEFAULT_TOTAL_STEPS", "loss", "distillation_loss", "renoise", "sample",
]

METRICS = ("pseudo_huber", "l2")
SOLVERS = ("heun", "euler")
_T_SCALE = 250.0  # as EDM: c_noise = ln(σ)/4 ∈ [-1.55, 1.1] for σ ∈ [0.002, 80]
DEFAULT_TOTAL_STEPS = 10_000  # loss()'s default training length for the curriculum (only N(step) depends on it)


# --------------------------------------------------------------------------------------------- network


def _sigma_data(v: Any) -> float:
    return check_float("sigma_data", v, min=0.0, min_open=True)


def _boundary(sigma: torch.Tensor, sigma_min: float, sd: float) -> tuple[torch.Tensor, torch.Tensor]:
    d = sigma - torch.full_like(sigma, sigma_min)  # σ_min rounded like σ was: exactly 0 at σ = σ_min
    # c_skip = σ_d²/(d² + σ_d²) written as 1/(1 + (d/σ_d)²): a tensor reciprocal, exactly 1 at d = 0
    return (1.0 + (d / sd).square()).reciprocal(), sd * d / (sigma.square() + sd * sd).sqrt()


def boundary_scalings(sigma: torch.Tensor, *, sigma_min: float = 0.002, sigma_data: float = 0.5,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` of Song et al. (Appendix C), shaped like ``sigma``.

    ``c_skip = σ_d² / ((σ - σ_min)² + σ_d²)`` and ``c_out = σ_d (σ - σ_min) / √(σ² + σ_d²)``: ``c_skip(σ_min) = 1``
    and ``c_out(σ_min) = 0`` exactly, so ``f(x, σ_min) = x`` (the boundary condition, eq. 5).

    Args:
        sigma: floating tensor of levels (not range-checked: no host sync).
        sigma_min: ``σ_min > 0``. sigma_data: ``σ_d > 0``.

    Raises:
        ValueError / TypeError: for a non-tensor ``sigma`` or bad ``sigma_min`` / ``sigma_data``.
    """
    check_tensor("sigma", sigma, floating=True)
    return _boundary(sigma, check_float("sigma_min", sigma_min, min=0.0, min_open=True), _sigma_data(sigma_data))


class ConsistencyModel(nn.Module):
    """Consistency function ``f(x, σ, y) = c_skip x + c_out F(c_in x, c_noise, y)`` (Song et al. eq. 5, App. C).

    ``F`` is :func:`edifice.blocks.backbone` with sinusoidal features of ``250 c_noise`` (as EDM); ``c_in`` and
    ``c_noise`` are EDM's. The constructor options are recorded in ``self.config`` (JSON-serialisable) so
    ``ConsistencyModel(**net.config)`` rebuilds it; see :func:`build` for their meaning.

    Attributes: ``sigma_min``, ``sigma_max``, ``sigma_data``, ``backbone`` (``F``), ``config``.

    References:
        Consistency Models. Song, Dhariwal, Chen, Sutskever, 2023. arXiv:2303.01469.
    """

    def __init__(self, *, data_shape: Sequence[int], num_classes: int | None = None, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, sigma_data: float = 0.5, hidden: int = 256, depth: int = 3,
                 base_channels: int = 32, channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
                 patch_size: int | None = None) -> None:
        super().__init__()
        self.sigma_min, self.sigma_max = check_sigma_range(sigma_min, sigma_max)
        self.sigma_data = _sigma_data(sigma_data)
        self.backbone = _backbone(data_shape, t_scale=_T_SCALE, num_classes=num_classes, hidden=hidden, depth=depth,
                                  base_channels=base_channels, channel_mults=channel_mults,
                                  num_res_blocks=num_res_blocks, dropout=dropout, arch=backbone,
                                  dit_preset=dit_preset, patch_size=patch_size)  # validates every option
        self.config: dict[str, Any] = dict(
            data_shape=list(data_shape), num_classes=num_classes, sigma_min=self.sigma_min, sigma_max=self.sigma_max,
            sigma_data=self.sigma_data, hidden=hidden, depth=depth, base_channels=base_channels,
            channel_mults=list(channel_mults), num_res_blocks=num_res_blocks, dropout=dropout, backbone=backbone,
            dit_preset=dit_preset, patch_size=patch_size)

    def forward(self, x: torch.Tensor, sigma: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x (B, *data_shape)`` at levels ``sigma`` (``(B,)`` or a number) to ``f(x, σ)`` ``(B, *data_shape)``."""
        sigma = batch_time(sigma, x, "sigma")  # (B,)
        c_skip, c_out = _boundary(sigma, self.sigma_min, self.sigma_data)  # 2 x (B,)
        var = sigma.square() + self.sigma_data**2
        f = self.backbone(append_dims(var.rsqrt(), x.ndim) * x, sigma.log() / 4, y=y)  # (B, *data_shape)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f


def build(*, data_shape: tuple[int, ...], num_classes: int | None = None, sigma_min: float = 0.002,
          sigma_max: float = 80.0, sigma_data: float = 0.5, hidden: int = 256, depth: int = 3,
          base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
          dropout: float = 0.0, backbone: str = "auto", dit_preset: str | None = None,
          patch_size: int | None = None) -> ConsistencyModel:
    """Build a :class:`ConsistencyModel` ``f(x, σ, y=None)`` for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``. num_classes: labels for conditioning (``y=None`` = null label).
        sigma_min, sigma_max: ``0 < σ_min < σ_max``, the boundary level (``f(x, σ_min) = x``) and the prior's level.
        sigma_data: ``σ_d > 0``, the data's standard deviation (0.5 for images in ``[-1, 1]``).
        hidden, depth: ResMLP width / blocks. base_channels, channel_mults, num_res_blocks, dropout: UNet options.
        backbone, dit_preset, patch_size: the network ``F`` (``"auto"``, ``"mlp"``, ``"unet"`` or ``"dit"``), see
            :func:`edifice.blocks.backbone`.

    Raises:
        ValueError / TypeError: naming the offending option (``sigma_min >= sigma_max`` names both).
    """
    return ConsistencyModel(data_shape=data_shape, num_classes=num_classes, sigma_min=sigma_min,
                            sigma_max=sigma_max, sigma_data=sigma_data, hidden=hidden, depth=depth,
                            base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                            dropout=dropout, backbone=backbone, dit_preset=dit_preset, patch_size=patch_size)


# --------------------------------------------------------------------------------------------- discretisation


def sigmas(n: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The ascending Karras discretisation ``σ_i = (σ_min^{1/ρ} + (i-1)/(n-1) (σ_max^{1/ρ} - σ_min^{1/ρ}))^ρ``,
    ``i = 1..n`` (Song et al. Sec. 5 / Song & Dhariwal Sec. 3.4) -> ``(n,)`` with ``σ_1 = σ_min``, ``σ_n = σ_max``.

    Raises ValueError / TypeError for ``n < 2``, ``sigma_min >= sigma_max`` or ``rho <= 0``.
    """
    n = check_int("n", n, min=2)
    return karras_sigmas(n, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, append_zero=False, device=device,
                         dtype=dtype).flip(0)


_sigmas = sigmas  # sample() has a ``sigmas`` argument


def curriculum(step: int, total_steps: int, *, s0: int = 10, s1: int = 1280) -> int:
    """Number of discretisation levels at training step ``k``: iCT's ``N(k) = min(s0 2^⌊k/K'⌋, s1) + 1`` with
    ``K' = ⌊K / (⌊log2(s1/s0)⌋ + 1)⌋`` (Song & Dhariwal Sec. 3.4; ``K = total_steps``; ``K'`` is at least 1).

    ``N`` doubles its intervals ``⌊log2(s1/s0)⌋`` times over training: ``s0 + 1`` levels at ``k = 0``, ``s1 + 1`` in
    the last stage (steps past ``K`` stay there).

    Raises ValueError / TypeError for ``step < 0``, ``total_steps < 1``, ``s0 < 1`` or ``s1 < s0``.
    """
    step = check_int("step", step, min=0)
    total_steps = check_int("total_steps", total_steps, min=1)
    s0 = check_int("s0", s0, min=1)
    s1 = check_int("s1", s1, min=1)
    if s1 < s0:
        raise ValueError(f"s1 must be >= s0, got s0={s0}, s1={s1}")
    stages = (s1 // s0).bit_length()  # ⌊log2(s1/s0)⌋ + 1, exactly (⌊log2 r⌋ = ⌊log2 ⌊r⌋⌋ for r >= 1)
    k_prime = max(total_steps // stages, 1)
    return min(s0 * 2 ** min(step // k_prime, stages), s1) + 1


def _ascending(sig: Any) -> torch.Tensor:
    check_tensor("sigmas", sig, ndim=1, floating=True)
    lad = sig.detach().to("cpu", torch.float64)  # host sync: entry points only
    if lad.numel() < 2 or not bool(torch.isfinite(lad).all()) or not bool((lad > 0).all()) \
            or not bool((lad[1:] > lad[:-1]).all()):
        raise ValueError(f"sigmas must be positive, finite and strictly ascending (at least 2), got {lad.tolist()}")
    return lad


def index_probs(sigmas: torch.Tensor, *, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT's distribution over the ``n - 1`` intervals ``[σ_i, σ_{i+1}]`` (Song & Dhariwal Sec. 3.5):
    ``p(i) ∝ erf((ln σ_{i+1} - P_mean)/(√2 P_std)) - erf((ln σ_i - P_mean)/(√2 P_std))``, the mass that the
    log-normal ``ln σ ~ N(P_mean, P_std²)`` puts on each interval, normalised.

    Args:
        sigmas: ``(n,)`` ascending levels, ``n >= 2`` (e.g. :func:`sigmas`). p_mean, p_std: the log-normal law.

    Returns ``(n - 1,)`` float64 probabilities on cpu, summing to 1.

    Raises ValueError / TypeError for bad ``sigmas`` (not 1-D, not positive and strictly ascending) or ``p_std <= 0``.
    """
    lad = _ascending(sigmas)
    p_mean = check_float("p_mean", p_mean)
    p_std = check_float("p_std", p_std, min=0.0, min_open=True)
    cdf = torch.erf((lad.log() - p_mean) / (math.sqrt(2.0) * p_std))  # (n,)
    p = cdf[1:] - cdf[:-1]  # (n - 1,)
    return p / p.sum()


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, *, c: float | None = None) -> torch.Tensor:
    """Pseudo-Huber distance ``√(‖a - b‖² + c²) - c`` per sample (Song & Dhariwal Sec. 3.3) -> ``(B,)``.

    ``a``, ``b``: ``(B, ...)`` of equal shape; ``c > 0``, default ``0.00054 √d`` with ``d`` the per-sample
    dimension. Raises ValueError / TypeError on a shape mismatch or a bad ``c``.
    """
    check_tensor("a", a, floating=True)
    check_tensor("b", b, shape=tuple(a.shape), floating=True)
    if a.ndim < 2:
        raise ValueError(f"a and b must be batches (B, ...), got shape {tuple(a.shape)}")
    return _pseudo_huber(a, b, _huber_c(c, a))


def _huber_c(c: Any, x: torch.Tensor) -> float:
    if c is None:
        return 0.00054 * math.sqrt(x[0].numel())
    return check_float("c", c, min=0.0, min_open=True)


def _pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    return ((a - b).flatten(1).square().sum(1) + c * c).sqrt() - c


def _distance(metric: str, a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    if metric == "l2":
        return (a - b).flatten(1).square().sum(1)  # (B,) squared l2, Song et al.'s d(x, y) = ‖x - y‖²
    return _pseudo_huber(a, b, c)


# --------------------------------------------------------------------------------------------- losses


def _check_x(x: Any) -> torch.Tensor:
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    return x


def _range(net: Any, sigma_min: Any, sigma_max: Any) -> tuple[float, float]:
    """``σ_min``, ``σ_max``: explicit, else the net's attributes (a :class:`ConsistencyModel`), else 0.002 / 80."""
    lo = getattr(net, "sigma_min", 0.002) if sigma_min is None else sigma_min
    hi = getattr(net, "sigma_max", 80.0) if sigma_max is None else sigma_max
    return check_sigma_range(lo, hi)


def _noise(noise: Any, x: torch.Tensor, generator: Any) -> torch.Tensor:
    if noise is None:
        return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return check_tensor("noise", noise, shape=tuple(x.shape), floating=True).to(x)


def _index(index: Any, probs: torch.Tensor, x: torch.Tensor, generator: Any) -> torch.Tensor:
    """``(B,)`` interval indices in ``[0, n - 2]``: drawn from ``probs`` with ``generator``, or the override."""
    b, m = x.shape[0], probs.numel()
    if index is None:
        check_generator(generator)
        dev = generator.device if generator is not None else x.device
        return torch.multinomial(probs.to(dev), b, replacement=True, generator=generator).to(x.device)
    if isinstance(index, int) and not isinstance(index, bool):
        index = torch.full((b,), index, dtype=torch.long)
    if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        got = getattr(index, "dtype", type(index).__name__)
        raise TypeError(f"index must be an int or an integer tensor, got {got}")
    if index.shape != (b,):
        raise ValueError(f"index must have shape ({b},) to match the batch of x, got {tuple(index.shape)}")
    if bool((index < 0).any()) or bool((index > m - 1).any()):  # host sync: losses are entry points
        raise ValueError(f"index must be in [0, {m - 1}] (the {m} intervals), got {index.tolist()}")
    return index.to(x.device, torch.long)


class _SameDropout:
    """Context in which ``net``'s random layers replay the same draws on the next call (see :func:`loss`).

    For a module in training mode the global RNG state of ``x``'s device is saved on entry and restored on exit,
    so the call made inside (the no-grad target) and the call made after (the online one) draw identical dropout
    masks, and the global RNG advances exactly as for one call. Nothing is saved for other callables.
    """

    def __init__(self, net: Any, x: torch.Tensor) -> None:
        self.on = isinstance(net, nn.Module) and net.training
        self.device = x.device
        self.ctx: Any = None

    def __enter__(self) -> None:
        if self.on:
            cpu = self.device.type == "cpu"
            self.ctx = torch.random.fork_rng(devices=[] if cpu else [self.device],
                                             device_type="cuda" if cpu else self.device.type)
            self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def loss(net: Callable[..., torch.Tensor], x: torch.Tensor, *, step: int = 0,
         total_steps: int = DEFAULT_TOTAL_STEPS, s0: int = 10, s1: int = 1280, p_mean: float = -1.1,
         p_std: float = 2.0, rho: float = 7.0, metric: str = "pseudo_huber", c: float | None = None,
         sigma_min: float | None = None, sigma_max: float | None = None, generator: torch.Generator | None = None,
         noise: torch.Tensor | None = None, index: Any = None, cond: Mapping[str, Any] | None = None,
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Improved consistency training (Song & Dhariwal 2023; Song et al. 2023 Algorithm 3 without EMA), no teacher.

    With ``N = curriculum(step, total_steps, s0, s1)`` levels ``σ_1 < ... < σ_N`` (:func:`sigmas`), an interval
    ``i ~`` :func:`index_probs` and ``z ~ N(0, I)`` shared by both points::

        L = mean_b λ(σ_i) d(f_θ(x + σ_{i+1} z, σ_{i+1}), stopgrad f_θ(x + σ_i z, σ_i)),  λ = 1/(σ_{i+1} - σ_i)

    The target is the *same* network under ``torch.no_grad()`` (``θ⁻ = stopgrad(θ)``, iCT Sec. 3.2). **Dropout:**
    when ``net`` is an ``nn.Module`` in training mode, both calls see the same dropout masks: the global RNG state
    of ``x``'s device is saved before the target call and restored after it (the RNG then advances as for a single
    call). This keeps ``f_θ`` and ``f_{θ⁻}`` the same function; iCT (Sec. 3.1) synchronises the dropout RNG of the
    student and teacher networks in the same way.

    ``total_steps`` defaults to ``DEFAULT_TOTAL_STEPS = 10_000``; only the curriculum reads ``step`` and
    ``total_steps`` (``step = 0`` gives ``N = s0 + 1 = 11``). Pass the run's real length when training.

    Args:
        net: consistency model ``net(x, sigma (B,), **cond)`` (e.g. :func:`build`). x: ``(B, *data_shape)`` data.
        step, total_steps, s0, s1: the curriculum (:func:`curriculum`). p_mean, p_std: :func:`index_probs`.
        rho: the Karras warping of :func:`sigmas`. metric: ``"pseudo_huber"`` (iCT) or ``"l2"`` (``‖·‖²``).
        c: Pseudo-Huber's ``c`` (default ``0.00054 √d``). sigma_min, sigma_max: default ``net``'s, else 0.002 / 80.
        generator: draws ``i`` and ``z``. noise: ``(B, *data_shape)`` override for ``z``. index: ``(B,)`` int
            override for ``i`` (0-based intervals, ``[0, N - 2]``). cond: conditioning for ``net``.

    Returns:
        ``(loss, logs)`` with logs ``"loss"``, ``"num_scales"`` (``N``) and ``"sigma"`` (mean ``σ_{i+1}``), detached.

    Raises:
        ValueError / TypeError: bad ``x``, ``noise`` shape, ``index``, ``metric``, ``c`` or curriculum / ladder
        options, or a ``net`` whose output is not shaped like ``x``.
    """
    x = _check_x(x)
    check_choice("metric", metric, METRICS)
    n = curriculum(step, total_steps, s0=s0, s1=s1)
    lo, hi = _range(net, sigma_min, sigma_max)
    lad = _sigmas(n, sigma_min=lo, sigma_max=hi, rho=rho)  # (N,) float64 cpu
    probs = index_probs(lad, p_mean=p_mean, p_std=p_std)
    cc = _huber_c(c, x)
    kwargs = check_cond(cond)
    i = _index(index, probs, x, generator)  # (B,)
    z = _noise(noise, x, generator)
    sig = lad.to(x.device, x.dtype)
    s_lo, s_hi = sig[i], sig[i + 1]  # (B,) each
    with _SameDropout(net, x), torch.no_grad():
        target = call_net(net, x + append_dims(s_lo, x.ndim) * z, s_lo, kwargs, "f(x, sigma)")
    online = call_net(net, x + append_dims(s_hi, x.ndim) * z, s_hi, kwargs, "f(x, sigma)")
    weight = 1.0 / (s_hi - s_lo)  # (B,)
    value = (weight * _distance(metric, online, target, cc)).mean()
    return value, {"loss": value.detach(), "num_scales": torch.tensor(float(n)), "sigma": s_hi.mean().detach()}


def distillation_loss(net: Callable[..., torch.Tensor], teacher: Callable[..., torch.Tensor], x: torch.Tensor, *,
                      n: int = 18, solver: str = "heun", rho: float = 7.0, metric: str = "l2",
                      c: float | None = None, target_net: Callable[..., torch.Tensor] | None = None,
                      sigma_min: float | None = None, sigma_max: float | None = None,
                      generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                      index: Any = None, cond: Mapping[str, Any] | None = None,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Consistency distillation (Song et al. 2023, Algorithm 2, ``λ ≡ 1``) from a teacher denoiser.

    With ``n`` levels ``σ_1 < ... < σ_n`` (:func:`sigmas`), an interval index uniform on ``{0, ..., n - 2}``
    (0-based: the pair ``σ_i < σ_{i+1}``) and ``z ~ N(0, I)``::

        x_{i+1} = x + σ_{i+1} z,   x̂_i = one teacher ODE step σ_{i+1} -> σ_i of dx/dσ = (x - D(x, σ))/σ,
        L = mean_b d(f_θ(x_{i+1}, σ_{i+1}), stopgrad f_{θ⁻}(x̂_i, σ_i))

    The step is :func:`edifice.generative.edm.euler_step` or ``heun_step`` (one or two teacher calls), made under
    ``torch.no_grad()``, as is the target ``f_{θ⁻} = (target_net or net)``. The paper's ``θ⁻`` is an EMA of ``θ``:
    pass it as ``target_net`` (with ``target_net=None`` the target is ``net`` itself, stop-gradient, as iCT found
    best). When ``target_net`` is None and ``net`` is a module in training mode, the target and online calls share
    dropout masks as in :func:`loss`.

    Args:
        net: consistency model ``net(x, sigma (B,), **cond)``. teacher: denoiser ``D(x, sigma (B,), **cond)`` (EDM
            convention, e.g. :func:`edifice.generative.edm.build` or :func:`edifice.generative.edm.vp_denoiser`).
        x: ``(B, *data_shape)`` data. n: number of levels ``>= 2`` (18 in Song et al. for CIFAR-10).
        solver: ``"heun"`` or ``"euler"``. rho: the Karras warping. metric: ``"l2"`` (``‖·‖²``) or ``"pseudo_huber"``.
        c: Pseudo-Huber's ``c`` (default ``0.00054 √d``). target_net: the ``θ⁻`` network (e.g. an EMA copy).
        sigma_min, sigma_max: default ``net``'s, else 0.002 / 80. generator: draws the index and ``z``.
        noise: ``(B, *data_shape)`` override for ``z``. index: ``(B,)`` int override, in ``[0, n - 2]``.
        cond: conditioning for ``net``, ``teacher`` and ``target_net``.

    Returns ``(loss, {"loss", "sigma" (mean σ_{i+1})})``, detached logs.

    Raises:
        ValueError / TypeError: bad ``x``, ``n``, ``solver``, ``metric``, ``c``, ``noise``, ``index``, a non-callable
        ``teacher`` / ``target_net``, or nets whose output is not shaped like ``x``.
    """
    x = _check_x(x)
    if not callable(teacher):
        raise TypeError(f"teacher must be callable as teacher(x, sigma, **cond), got {type(teacher).__name__}")
    if target_net is not None and not callable(target_net):
        raise TypeError(f"target_net must be callable as target_net(x, sigma, **cond) or None, "
                        f"got {type(target_net).__name__}")
    n = check_int("n", n, min=2)
    check_choice("solver", solver, SOLVERS)
    check_choice("metric", metric, METRICS)
    lo, hi = _range(net, sigma_min, sigma_max)
    lad = _sigmas(n, sigma_min=lo, sigma_max=hi, rho=rho)
    cc = _huber_c(c, x)
    kwargs = check_cond(cond)
    i = _index(index, torch.full((n - 1,), 1.0 / (n - 1), dtype=torch.float64), x, generator)  # (B,) uniform
    z = _noise(noise, x, generator)
    sig = lad.to(x.device, x.dtype)
    s_lo, s_hi = sig[i], sig[i + 1]  # (B,) each
    x_hi = x + append_dims(s_hi, x.ndim) * z
    tnet = net if target_net is None else target_net
    with torch.no_grad():
        den = call_net(teacher, x_hi, s_hi, kwargs, "a denoised x")
        if solver == "euler":
            x_lo = euler_step(x_hi, den, s_hi, s_lo)
        else:
            x_lo = heun_step(lambda v, s: call_net(teacher, v, s, kwargs, "a denoised x"), x_hi, s_hi, s_lo, den)
        with _SameDropout(net if target_net is None else None, x):
            target = call_net(tnet, x_lo, s_lo, kwargs, "f(x, sigma)")
    online = call_net(net, x_hi, s_hi, kwargs, "f(x, sigma)")
    value = _distance(metric, online, target, cc).mean()
    return value, {"loss": value.detach(), "sigma": s_hi.mean().detach()}


# --------------------------------------------------------------------------------------------- sampling


def renoise(x0: torch.Tensor, sigma: Any, noise: torch.Tensor, *, sigma_min: float = 0.002) -> torch.Tensor:
    """Multistep sampling's noise injection (Song et al. Algorithm 1, line 5): ``x0 + √(σ² - σ_min²) z``.

    ``x0``: ``(B, ...)`` current estimate; ``sigma``: the level ``σ >= σ_min`` to jump to (a number, 0-dim or
    ``(B,)`` tensor; tensors are not range-checked); ``noise``: ``z`` shaped like ``x0``. Returns ``x_σ (B, ...)``
    (``x0`` itself at ``σ = σ_min``). Raises ValueError / TypeError for bad shapes, ``sigma < sigma_min`` (numbers)
    or a bad ``sigma_min``.
    """
    check_tensor("x0", x0, floating=True)
    check_tensor("noise", noise, shape=tuple(x0.shape), floating=True)
    sigma_min = check_float("sigma_min", sigma_min, min=0.0, min_open=True)
    if isinstance(sigma, torch.Tensor):
        s = append_dims(batch_time(sigma, x0, "sigma"), x0.ndim)
        return x0 + (s.square() - sigma_min**2).clamp_min(0.0).sqrt() * noise
    sigma = check_float("sigma", sigma, min=sigma_min)
    return x0 + math.sqrt(sigma**2 - sigma_min**2) * noise


def _levels(levels: Any, lo: float, hi: float) -> torch.Tensor:
    if not isinstance(levels, torch.Tensor):
        if not isinstance(levels, (list, tuple)):
            raise TypeError(f"sigmas must be a 1-D tensor or a sequence of numbers, got {type(levels).__name__}")
        levels = torch.as_tensor(levels, dtype=torch.float64)
    check_tensor("sigmas", levels, ndim=1)
    lad = levels.detach().to("cpu", torch.float64)  # the one host sync, at entry
    ok = lad.numel() >= 1 and bool(torch.isfinite(lad).all()) and bool((lad >= lo).all()) and bool((lad <= hi).all())
    if not ok or not bool((lad[1:] < lad[:-1]).all()):
        raise ValueError(f"sigmas must be strictly descending levels in [sigma_min, sigma_max] = [{lo}, {hi}] "
                         f"(at least 1), got {lad.tolist()}")
    return lad


@torch.no_grad()
def sample(net: Callable[..., torch.Tensor], shape: tuple[int, ...], *, steps: int | None = None,
           sigmas: Any = None, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None,
           generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None,
           callback: Callable[[dict[str, Any]], None] | None = None, noise: torch.Tensor | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Consistency sampling (Song et al. Algorithm 1): exactly ``steps`` network calls.

    ``x = f(τ_1 z, τ_1)``, then for ``k = 2..steps``: ``x = f(renoise(x, τ_k), τ_k)`` with fresh noise, over the
    descending levels ``τ_1 > ... > τ_steps``. Default levels: the Karras ladder of ``steps + 1`` points from
    ``σ_max`` down to ``σ_min`` without its last point (``τ_1 = σ_max``; ``steps = 1`` is the one-step sampler).

    Args:
        net: consistency model ``net(x, sigma (B,), **cond)`` (any callable).
        shape: ``(B, *data_shape)``. steps: number of network calls (default 1, or ``len(sigmas)``).
        sigmas: explicit descending levels in ``[σ_min, σ_max]`` (tensor or sequence; e.g. iCT's two-step
            ``[80, 0.821]``); its length is the number of steps (``steps``, if also given, must equal it).
        rho: warping of the default ladder. sigma_min, sigma_max: default ``net``'s attributes, else 0.002 / 80.
        generator: draws the initial and the renoising noise. cond: conditioning for ``net``.
        callback: ``callback(dict(i, t=τ_i (0-dim tensor), x, x0))`` after each call (``x = x0 = f(·, τ_i)``).
        noise: ``(B, *data_shape)`` standard-normal start; sets device / dtype unless given explicitly.
        device, dtype: default ``noise``'s, else the net's parameters', else cpu / float32.

    Returns:
        ``(B, *data_shape)`` samples (under ``torch.no_grad()``); the loop makes no host sync.

    Raises:
        ValueError / TypeError: bad ``steps``, ``sigmas`` (not descending, outside ``[σ_min, σ_max]``, length
        ``!= steps``), ``rho``, ``shape``, ``noise`` shape, ``cond``, ``callback``, non-callable ``net``.
    """
    lo, hi = _range(net, sigma_min, sigma_max)
    rho = check_float("rho", rho, min=0.0, min_open=True)
    if steps is not None:
        steps = check_int("steps", steps, min=1)
    if sigmas is None:
        steps = 1 if steps is None else steps
        lad = karras_sigmas(steps + 1, sigma_min=lo, sigma_max=hi, rho=rho, append_zero=False)[:-1]  # (steps,)
    else:
        lad = _levels(sigmas, lo, hi)
        if steps is not None and steps != lad.numel():
            raise ValueError(f"steps must equal len(sigmas) = {lad.numel()} when both are given, got {steps}")
    kwargs = check_cond(cond)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    z = initial_noise(net, shape, noise, generator, device, dtype)
    sig = lad.to(device=z.device, dtype=z.dtype)  # (steps,)
    jump = (sig.square() - lo * lo).clamp_min(0.0).sqrt()  # (steps,) renoising scales
    b = z.shape[0]
    x = sig[0] * z
    for i in range(sig.numel()):
        if i > 0:
            x = x + jump[i] * randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = call_net(net, x, sig[i].expand(b), kwargs, "f(x, sigma)")
        if callback is not None:
            callback(dict(i=i, t=sig[i], x=x, x0=x))
    return x
