r"""Score-based generative modelling through SDEs (Song et al. 2021): VP, VE and sub-VP diffusions.

**Time convention:** ``t ∈ [eps, 1]``, data at ``t = 0``, the prior at ``t = 1``; the network returns the
SCORE ``s_θ(x, t) ≈ ∇_x log p_t(x)``, called ``net(x_t, t, **cond)`` with ``t`` a ``(B,)`` float.

A forward SDE ``dx = f(x, t) dt + g(t) dW`` (:mod:`edifice.schedules.sde`) has Gaussian kernels
``p_0t(x_t | x_0) = N(scale(t) x_0, std(t)² I)``. Its time reversal and its probability-flow ODE are
(Song et al. eqs. 6 and 13)::

    dx = [f(x, t) - g(t)² ∇log p_t(x)] dt + g(t) dW̄,        dx/dt = f(x, t) - ½ g(t)² ∇log p_t(x).

The score is learned by denoising score matching (eq. 7) with ``t ~ U(eps, 1)``, ``x_t = scale x_0 + std z``::

    L = E_t λ(t) ‖s_θ(x_t, t) + z / std(t)‖²,   λ = std² ("variance"), g² ("likelihood"), 1 ("none").

Sampling follows a grid ``linspace(1, eps, steps + 1)``: ``"pc"`` alternates a predictor step (reverse
diffusion or Euler-Maruyama) with Langevin corrector steps (Algorithm 1), ``"em"`` is Euler-Maruyama alone,
``"ode"`` integrates the probability flow with any method of :mod:`edifice.integrators`. A final Tweedie
step ``x_0 = (x + std² s) / scale`` at ``t = eps`` removes the remaining noise. ``log_prob`` integrates the
probability flow from ``eps`` to 1 with the instantaneous change of variables (Appendix D.2).

Discretisation: Song et al. discretise on ``N`` fixed levels (``sde.discretize``: DDPM for VP, SMLD for
VE), which breaks down for VP when ``N ≤ β_max`` (``β_i ≥ 1``). The samplers here use the exact transition
kernel between consecutive grid times ``t_next < t``: ``x_t = a x_{t_next} + G z`` with
``a = scale(t) / scale(t_next)``, ``G² = std(t)² - a² std(t_next)²`` — SMLD over the grid for VE, respaced
DDPM (``β = 1 - a²``) for VP, and equal to ``sde.discretize`` to first order in the step for all three. The
Langevin step-size factor is ``α = a²`` (Song's ``α_i = 1 - β_i`` for VP, 1 for VE).

Example (the VP SDE keeps ``N(0, I)`` data at ``N(0, I)``, whose score is ``-x`` at every ``t``; the
probability flow is then zero and the log-density is ``-ln 2π`` at the origin):
    >>> import torch
    >>> from edifice.generative import score_sde
    >>> score = lambda x, t: -x
    >>> score_sde.sample(score, (3, 2), sde="vp", steps=5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
    >>> round(float(score_sde.log_prob(score, torch.zeros(1, 2), sde="vp", steps=4)), 4)
    -1.8379

References:
    Score-Based Generative Modeling through Stochastic Differential Equations. Song, Sohl-Dickstein, Kingma,
    Kumar, Ermon, Poole, 2021. arXiv:2011.13456.
    A Connection Between Score Matching and Denoising Autoencoders. Vincent, 2011 (denoising score matching).
    Maximum Likelihood Training of Score-Based Diffusion Models. Song, Durkan, Murray, Ermon, 2021.
    arXiv:2101.09258 (likelihood weighting).
    Improved Denoising Diffusion Probabilistic Models. Nichol, Dhariwal, 2021. arXiv:2102.09672 (respacing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from edifice._checks import (
    append_dims, batch_time, check_choice, check_cond, check_float, check_generator, check_int, check_tensor,
    rand, randn,
)
from edifice.blocks import backbone as _backbone
from edifice.generative._common import call_net, initial_noise
from edifice.integrators import DIVERGENCES, METHODS, auto_divergence, cnf_log_prob, odeint
from edifice.integrators.sde import langevin_step, langevin_step_size
from edifice.schedules import SDE, VESDE, VPSDE, SubVPSDE, make_sde

__all__ = [
    "SDE_NAMES", "WEIGHTINGS", "PREDICTORS", "CORRECTORS", "SAMPLERS", "ScoreNet", "build", "get_sde", "loss",
    "reverse_sde_drift", "transition", "euler_maruyama_step", "reverse_diffusion_step", "langevin_corrector_step",
    "denoise_step", "probability_flow", "sample", "log_prob", "bits_per_dim",
]

SDE_NAMES = ("vp", "ve", "subvp")
WEIGHTINGS = ("variance", "likelihood", "none")
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")
SAMPLERS = ("pc", "em", "ode")


class ScoreNet(nn.Module):
    """Score network ``s(x, t, y) = -backbone(x, c(t), y) / std(t)`` (noise prediction scaled by ``1/std``).

    Song et al.'s continuous parameterisation (DDPM++ / NCSN++ with ``scale_by_sigma``, their Appendix H): the
    backbone predicts the unit noise ``z``; its time input is ``c(t) = t`` (VP / sub-VP) or ``ln σ(t)`` (VE).

    Args:
        backbone: any module ``backbone(x, c (B,), y=None)`` with output shaped like ``x``.
        sde: the SDE (an :class:`~edifice.schedules.SDE` or its name).

    Attributes:
        backbone, sde, config (the options of :func:`build`, empty when constructed directly).
    """

    def __init__(self, backbone: nn.Module, sde: SDE | str = "vp") -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone, self.sde = backbone, _sde_arg(sde)
        self.config: dict[str, Any] = {}

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """``c(t)``: ``t`` for VP / sub-VP, ``ln σ(t)`` for VE; ``(B,)``."""
        return self.sde.sigma(t).log() if isinstance(self.sde, VESDE) else t

    def forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """Score at ``x (B, ...)``, ``t (B,)`` in ``(0, 1]``; returns ``(B, ...)``."""
        t = batch_time(t, x)  # (B,)
        c = self.time_input(t)  # (B,)
        out = self.backbone(x, c) if y is None else self.backbone(x, c, y=y)  # (B, ...)
        return -out / append_dims(self.sde.std(t), x.ndim)


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    sde: str = "vp",
    beta_min: float = 0.1, beta_max: float = 20.0,
    sigma_min: float = 0.01, sigma_max: float = 50.0,
    hidden: int = 256, depth: int = 3,
    base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
    dropout: float = 0.0,
    time_features: str | None = None,
    backbone: str = "auto",
    dit_preset: str | None = None,
    patch_size: int | None = None,
) -> ScoreNet:
    """Build a :class:`ScoreNet` over :func:`edifice.blocks.backbone` (ResMLP for ``(D,)``, UNet for images).

    Time features: ``None`` picks the SDE's default, sinusoidal features of ``1000 t`` for VP / sub-VP and
    Gaussian Fourier features (scale 16) of ``ln σ(t)`` for VE (Song's NCSN++). Explicit choices: Fourier
    features always see ``c(t)`` unscaled; sinusoidal features see ``1000 t`` (VP / sub-VP) or
    ``1000 ln σ(t) / ln(σ_max / σ_min)`` (VE: the same span of 1000 over ``t ∈ [0, 1]``).

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``. num_classes: labels for class conditioning, or None.
        sde: ``"vp"``, ``"ve"`` or ``"subvp"``. beta_min, beta_max: VP / sub-VP parameters;
            sigma_min, sigma_max: VE parameters (both pairs are validated whatever the SDE).
        hidden, depth, base_channels, channel_mults, num_res_blocks, dropout: as for the backbone.
        time_features: ``None``, ``"sinusoidal"`` or ``"fourier"``.
        backbone, dit_preset, patch_size: the network (``"auto"``, ``"mlp"``, ``"unet"`` or ``"dit"``), see
            :func:`edifice.blocks.backbone`.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    check_choice("sde", sde, SDE_NAMES)
    check_choice("time_features", time_features, (None, "sinusoidal", "fourier"))
    vp, ve = VPSDE(beta_min, beta_max), VESDE(sigma_min, sigma_max)
    the_sde = ve if sde == "ve" else (SubVPSDE(beta_min, beta_max) if sde == "subvp" else vp)
    features = time_features or ("fourier" if sde == "ve" else "sinusoidal")
    t_scale = 1.0 if features == "fourier" else 1000.0 / (math.log(sigma_max / sigma_min) if sde == "ve" else 1.0)
    net = ScoreNet(_backbone(data_shape, t_scale=t_scale, time_features=features, num_classes=num_classes,
                             hidden=hidden, depth=depth, base_channels=base_channels, channel_mults=channel_mults,
                             num_res_blocks=num_res_blocks, dropout=dropout, arch=backbone, dit_preset=dit_preset,
                             patch_size=patch_size), the_sde)
    net.config = dict(data_shape=tuple(data_shape), num_classes=num_classes, sde=sde, beta_min=float(beta_min),
                      beta_max=float(beta_max), sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                      hidden=hidden, depth=depth, base_channels=base_channels, channel_mults=tuple(channel_mults),
                      num_res_blocks=num_res_blocks, dropout=float(dropout), time_features=time_features)
    return net


def get_sde(net: Any, sde: SDE | str | None = None) -> SDE:
    """The SDE a loss or sampler uses: ``sde`` if given (name or instance), else ``net.sde``.

    Raises:
        ValueError: ``sde`` missing for a callable without an ``.sde``, an unknown name, or an ``sde`` that
            contradicts the network's own. TypeError: ``sde`` neither a name nor an SDE.
    """
    own = net if isinstance(net, SDE) else getattr(net, "sde", None)
    own = own if isinstance(own, SDE) else None
    if sde is None and own is None:
        raise ValueError("sde must be given for a plain callable (one of 'vp', 've', 'subvp' or an SDE), got None")
    if sde is None:
        return own
    if not isinstance(sde, (str, SDE)):
        raise TypeError(f"sde must be a name, an SDE or None, got {type(sde).__name__}")
    if isinstance(sde, str):
        check_choice("sde", sde, SDE_NAMES)
    resolved = make_sde(sde)
    if own is not None and resolved != own:
        raise ValueError(f"sde={resolved!r} contradicts the network's own {own!r}; pass sde=None")
    return resolved


def _check_eps(eps: Any) -> float:
    return check_float("eps", eps, min=0.0, max=1.0, min_open=True, max_open=True)


def _check_batch(name: str, x: Any) -> torch.Tensor:
    check_tensor(name, x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    return x


def _score(net: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    return call_net(net, x, t, cond, "a score")


def loss(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    sde: SDE | str | None = None,
    weighting: str = "variance",
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None, t: torch.Tensor | float | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Denoising score matching (Song et al. eq. 7) with ``t ~ U(eps, 1)``.

    Per sample, summed over dimensions and then averaged over the batch (Song's ``reduce_mean=False``
    without its factor ½): ``"variance"`` ``‖std s + z‖²`` (λ = std²), ``"likelihood"`` ``g² ‖s + z/std‖²``
    (λ = g², Song, Durkan et al. 2021: ½ of it bounds the negative log-likelihood up to a constant),
    ``"none"`` ``‖s + z/std‖²``.

    Args:
        net: score network ``net(x_t, t, **cond)``. x: ``(B, *data_shape)`` data.
        sde: name or SDE; ``None`` uses ``net.sde``. weighting: see above. eps: smallest time, in ``(0, 1)``.
        generator: draws ``t`` and ``z``. noise: ``(B, ...)`` override for ``z``.
        t: ``(B,)`` or scalar override for the times, in ``[eps, 1]``. cond: conditioning for ``net``.

    Returns:
        ``(loss, {"loss": loss.detach()})``.
    """
    sde = get_sde(net, sde)
    check_choice("weighting", weighting, WEIGHTINGS)
    eps = _check_eps(eps)
    x = _check_batch("x", x)
    cond, generator = check_cond(cond), check_generator(generator)
    t = (eps + (sde.T - eps) * rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype)
         if t is None else sde.check_time(t, x, eps=eps))
    noise = (randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if noise is None
             else check_tensor("noise", noise, shape=tuple(x.shape), floating=True).to(x))
    std = append_dims(sde.std(t), x.ndim)  # (B, 1, ..., 1)
    s = _score(net, sde.perturb(x, t, noise), t, cond)
    residual = std * s + noise if weighting == "variance" else s + noise / std
    per_sample = residual.flatten(1).square().sum(1)  # (B,)
    if weighting == "likelihood":
        per_sample = per_sample * sde.diffusion(t).square()
    value = per_sample.mean()
    return value, {"loss": value.detach()}


# ----------------------------------------------------------------------------- step functions


def _sde_arg(sde: Any) -> SDE:
    if isinstance(sde, (str, SDE)):
        return make_sde(sde)
    raise TypeError(f"sde must be a name or an SDE, got {type(sde).__name__}")


def _step_args(sde: Any, x: Any, t: Any, score: Any, noise: Any) -> tuple[SDE, torch.Tensor]:
    sde = _sde_arg(sde)
    check_tensor("x", x, floating=True)
    check_tensor("score", score, shape=tuple(x.shape), floating=True)
    if noise is not None:
        check_tensor("noise", noise, shape=tuple(x.shape), floating=True)
    return sde, batch_time(t, x)


def reverse_sde_drift(sde: SDE | str, x: torch.Tensor, t: Any, score: torch.Tensor) -> torch.Tensor:
    """Drift of the reverse-time SDE, ``f(x, t) - g(t)² s`` (Song et al. eq. 6); shaped like ``x``."""
    sde, t = _step_args(sde, x, t, score, None)
    return sde.drift(x, t) - append_dims(sde.diffusion(t).square(), x.ndim) * score


def transition(sde: SDE | str, t: Any, t_next: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact forward transition from ``t_next`` to ``t > t_next``: ``x_t = a x_{t_next} + G z``.

    ``a = scale(t) / scale(t_next)`` and ``G = sqrt(std(t)² - a² std(t_next)²)``, both ``(B,)`` (``t`` and
    ``t_next`` are numbers, 0-dim or ``(B,)``, broadcast against ``like``'s batch).
    """
    sde = _sde_arg(sde)
    t, t_next = batch_time(t, like), batch_time(t_next, like, name="t_next")
    a = sde.scale(t) / sde.scale(t_next)
    return a, (sde.std(t).square() - (a * sde.std(t_next)).square()).clamp_min(0.0).sqrt()


def euler_maruyama_step(sde: SDE | str, x: torch.Tensor, t: Any, dt: Any, score: torch.Tensor,
                        noise: torch.Tensor | None) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE: ``x + (f - g² s) dt + g sqrt(-dt) z``.

    ``dt < 0`` (time runs backwards; a number, 0-dim or ``(B,)``; python numbers are checked). ``noise=None``
    returns the mean of the step.
    """
    drift = reverse_sde_drift(sde, x, t, score)
    if isinstance(dt, (int, float)) and not isinstance(dt, bool):
        check_float("dt", dt, max=0.0, max_open=True)
    dt = append_dims(batch_time(dt, x, name="dt"), x.ndim)  # (B, 1, ..., 1)
    mean = x + drift * dt
    g = append_dims(_sde_arg(sde).diffusion(batch_time(t, x)), x.ndim)
    return mean if noise is None else mean + g * (-dt).sqrt() * noise


def reverse_diffusion_step(sde: SDE | str, x: torch.Tensor, t: Any, score: torch.Tensor,
                           noise: torch.Tensor | None, N: int | None = None, *, t_next: Any = None) -> torch.Tensor:
    """Reverse-diffusion predictor: ``x - f + G² s + G z`` for a forward discretisation ``x + f + G z``.

    Exactly one of ``N`` (Song's ``sde.discretize(x, t, N)`` over ``N`` levels: DDPM for VP, SMLD for VE,
    Euler for sub-VP; ``t`` selects level ``floor(t (N - 1))``) or ``t_next`` (the exact :func:`transition`
    from ``t_next`` to ``t``, ``f = (a - 1) x``; what :func:`sample` uses). ``noise=None`` returns the mean.
    """
    sde, tb = _step_args(sde, x, t, score, noise)
    if (N is None) == (t_next is None):
        raise ValueError(f"give exactly one of N and t_next, got N={N!r}, t_next={t_next!r}")
    if N is not None:
        f, g = sde.discretize(x, tb, check_int("N", N, min=2))
    else:
        a, g = transition(sde, tb, t_next, x)
        f = append_dims(a - 1.0, x.ndim) * x
    g = append_dims(g, x.ndim)
    mean = x - f + g.square() * score
    return mean if noise is None else mean + g * noise


def langevin_corrector_step(sde: SDE | str, x: torch.Tensor, t: Any, score: torch.Tensor, noise: torch.Tensor,
                            *, snr: float, N: int | None = None, alpha: Any = None) -> torch.Tensor:
    """Langevin corrector (Song et al. Algorithms 4-5): ``x + ε s + sqrt(2ε) z``, ``ε = 2α (r ‖z‖ / ‖s‖)²``.

    Norms are averaged over the batch as in Song's code (per-sample ratios ``‖z‖/‖s‖`` have an infinite mean
    in two dimensions and make the step explode); a zero score gives no step. ``α``: ``alpha`` if given (a number
    or ``(B,)``); else 1 for VE and, for VP / sub-VP, Song's ``α_i = 1 - β_i`` of the DDPM discretisation over
    ``N`` levels (``N > β_max``) at level ``floor(t (N - 1))``. :func:`sample` passes ``α = a²`` of the grid step.
    """
    sde, tb = _step_args(sde, x, t, score, noise)
    snr = check_float("snr", snr, min=0.0, min_open=True)
    if alpha is None and isinstance(sde, VESDE):
        alpha = 1.0
    elif alpha is None:
        if N is None:
            raise ValueError(f"N or alpha must be given for the {sde.name} SDE")
        if check_int("N", N, min=2) <= sde.beta_max:
            raise ValueError(f"N must exceed beta_max={sde.beta_max} so that every β_i < 1, got {N}")
        alpha = 1.0 - VPSDE.discretize(sde, x, tb, N)[1].square()  # DDPM's 1 - β_i, also for sub-VP
    return langevin_step(x, score, langevin_step_size(score, noise, snr, alpha=alpha), noise)


def denoise_step(sde: SDE | str, x: torch.Tensor, t: Any, score: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula ``E[x_0 | x_t] = (x + std² s) / scale`` (Song's final noise removal)."""
    sde, tb = _step_args(sde, x, t, score, None)
    return (x + append_dims(sde.std(tb).square(), x.ndim) * score) / append_dims(sde.scale(tb), x.ndim)


def probability_flow(net: Callable[..., torch.Tensor], sde: SDE | str | None = None,
                     cond: Mapping[str, Any] | None = None, *, eps: float = 0.0
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The probability-flow field ``f(t, x) = f(x, t) - ½ g(t)² s(x, t)`` (Song et al. eq. 13).

    ``t`` (0-dim or ``(B,)``) is clamped to ``[eps, 1]``: adaptive solvers (dopri5) evaluate slightly beyond
    the end of the interval, where the kernel std would be NaN or 0.
    """
    if not callable(net):
        raise TypeError(f"net must be callable, got {type(net).__name__}")
    sde, kwargs = get_sde(net, sde), check_cond(cond)
    lo = check_float("eps", eps, min=0.0, max=1.0, max_open=True)

    def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tb = batch_time(t, x).clamp(lo, sde.T)  # (B,)
        g2 = append_dims(sde.diffusion(tb).square(), x.ndim)
        return sde.drift(x, tb) - 0.5 * g2 * _score(net, x, tb, kwargs)

    return field


# ----------------------------------------------------------------------------- samplers and likelihood


@torch.no_grad()
def sample(
    net: Callable[..., torch.Tensor],
    shape: tuple[int, ...],
    *,
    sde: SDE | str | None = None,
    sampler: str = "pc", steps: int = 500, eps: float = 1e-3,
    predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16, corrector_steps: int = 1,
    method: str = "rk4", rtol: float = 1e-5, atol: float = 1e-5,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    noise: torch.Tensor | None = None, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sample from ``x_1 = prior_std · noise`` down the grid ``linspace(1, eps, steps + 1)``.

    ``"pc"``: per step, one ``predictor`` step from ``t`` to ``t_next`` then ``corrector_steps`` Langevin steps
    at ``t_next`` (Algorithm 1; predictor-only with ``corrector="none"``, corrector-only with
    ``predictor="none"``). ``"em"``: Euler-Maruyama alone. ``"ode"``: the probability flow with ``method``.
    Song's code uses ``linspace(1, eps, steps)`` and steps past ``eps`` on its last iteration; here the grid
    ends at ``eps`` and ``denoise`` applies Tweedie's formula there. Network calls: ``steps · (1 +
    corrector_steps)`` for pc (``steps`` for em; the method's evaluations for ode), plus 1 if ``denoise``.

    Args:
        net: score network ``net(x, t, **cond)`` (any callable). shape: ``(B, *data_shape)``.
        sde: name or SDE; ``None`` uses ``net.sde``. sampler, predictor, corrector: see above (``predictor``,
            ``corrector``, ``snr``, ``corrector_steps`` apply to ``"pc"``; ``method``, ``rtol``, ``atol`` to ``"ode"``).
        steps: grid intervals, >= 1. eps: last time, in ``(0, 1)`` (Song: 1e-3 VP / sub-VP, 1e-5 VE).
        snr: Langevin signal-to-noise ratio ``r > 0``. denoise: final Tweedie step at ``eps``.
        generator: draws all noise. cond: conditioning for ``net``. callback: ``callback(dict(i, t=t_next, x))``.
        noise: standard normal start ``(B, ...)``; device, dtype: default ``noise``'s, else the net's, else cpu
            / float32.

    Returns:
        ``(B, *data_shape)`` samples (under ``torch.no_grad()``; the loop makes no host sync).
    """
    sde = get_sde(net, sde)
    for name, value, choices in (("sampler", sampler, SAMPLERS), ("predictor", predictor, PREDICTORS),
                                 ("corrector", corrector, CORRECTORS), ("method", method, METHODS)):
        check_choice(name, value, choices)
    steps, eps = check_int("steps", steps, min=1), _check_eps(eps)
    corrector_steps = check_int("corrector_steps", corrector_steps, min=1)
    snr, rtol, atol = (check_float(k, v, min=0.0, min_open=True) for k, v in (("snr", snr), ("rtol", rtol),
                                                                                ("atol", atol)))
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be a bool, got {type(denoise).__name__}")
    cond, generator = check_cond(cond), check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if sampler == "pc" and predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none' for sampler='pc'")
    x = initial_noise(net, shape, noise, generator, device, dtype) * sde.prior_std()
    ts = torch.linspace(sde.T, eps, steps + 1, device=x.device, dtype=x.dtype)  # (steps + 1,)
    if sampler == "ode":
        x = odeint(probability_flow(net, sde, cond, eps=eps), x, ts, method=method, rtol=rtol, atol=atol,
                   callback=callback)
    else:
        pred, corr = (predictor, corrector) if sampler == "pc" else ("euler_maruyama", "none")
        x = _sde_loop(net, sde, x, ts, cond, pred, corr, snr, corrector_steps, generator, callback)
    if denoise:
        t = ts[-1].expand(x.shape[0])
        x = denoise_step(sde, x, t, _score(net, x, t, cond))
    return x


def _sde_loop(net, sde, x, ts, cond, predictor, corrector, snr, corrector_steps, generator, callback):
    """Predictor-corrector loop over the grid ``ts`` (see :func:`sample`); no host sync."""
    b = x.shape[0]
    for i in range(ts.shape[0] - 1):
        t, t_next = ts[i].expand(b), ts[i + 1].expand(b)  # (B,) each
        if predictor != "none":
            s = _score(net, x, t, cond)
            z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if predictor == "euler_maruyama":
                x = euler_maruyama_step(sde, x, t, t_next - t, s, z)
            else:
                x = reverse_diffusion_step(sde, x, t, s, z, t_next=t_next)
        if corrector != "none":
            alpha = transition(sde, t, t_next, x)[0].square()  # (B,) α = a², 1 for VE
            for _ in range(corrector_steps):
                s = _score(net, x, t_next, cond)
                z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = langevin_corrector_step(sde, x, t_next, s, z, snr=snr, alpha=alpha)
        if callback is not None:
            callback(dict(i=i, t=ts[i + 1], x=x))
    return x


def log_prob(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    sde: SDE | str | None = None,
    eps: float = 1e-5,
    method: str = "rk4", steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
    divergence: str | None = "exact", n_probes: int = 1, dist: str = "rademacher",
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Log-density (nats) of the probability-flow model at ``x``, read as data at time ``eps``.

    ``log p_eps(x) = log p_prior(x_1) + ∫_eps^1 ∇·f(x_t, t) dt`` with ``f`` the probability flow, integrated on
    ``linspace(eps, 1, steps + 1)`` by :func:`edifice.integrators.cnf_log_prob` (Song et al. Appendix D.2).

    Args:
        net, sde, cond: as in :func:`sample`. x: ``(B, *data_shape)``. eps: data time, in ``(0, 1)``.
        method, steps, rtol, atol: the ODE solver (``steps`` fixed steps, or the output grid of adaptive ones).
        divergence: ``"exact"``, ``"hutchinson"`` or ``None`` (exact up to 16 dimensions per sample).
        n_probes, dist, generator: Hutchinson probes (drawn once per solve).

    Returns:
        ``(B,)`` log-densities; no gradient flows back.
    """
    sde = get_sde(net, sde)
    x = _check_batch("x", x)
    eps = _check_eps(eps)
    steps = check_int("steps", steps, min=1)
    check_choice("divergence", divergence, (None, *DIVERGENCES))
    ts = torch.linspace(eps, sde.T, steps + 1, device=x.device, dtype=x.dtype)
    return cnf_log_prob(probability_flow(net, sde, cond, eps=eps), x, ts, prior_log_prob=sde.prior_log_prob,
                        method=method, rtol=rtol, atol=atol, divergence=divergence or auto_divergence(x),
                        n_probes=n_probes, dist=dist, generator=check_generator(generator))


def bits_per_dim(
    net: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    sde: SDE | str | None = None,
    n_dequant: int = 1,
    eps: float = 1e-5,
    method: str = "rk4", steps: int = 100, rtol: float = 1e-5, atol: float = 1e-5,
    divergence: str | None = None, n_probes: int = 1, dist: str = "rademacher",
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Bits per dimension of 8-bit data ``x ∈ {0, 1/255, ..., 1}`` under a model of ``[-1, 1]`` data.

    Uniform dequantisation (Theis et al. 2016): for integer data ``k = 255 x``, ``y = (k + u) / 256`` with
    ``u ~ U(0, 1)^D`` and model input ``z = 2y - 1``. The discrete model ``P(k)``, the integral of the density
    ``p_Y`` over the cube ``[k, k + 1) / 256`` of volume ``256^{-D}``, obeys by Jensen
    ``log P(k) ≥ E_u[log p_Z(z)] + D ln 2 - D ln 256`` (``D ln 2`` = log-Jacobian of ``y ↦ z``), so

        bpd = -(E_u log p_Z(z) + D ln 2 - D ln 256) / (D ln 2) = -E_u log p_Z(z) / (D ln 2) + 7,

    an upper bound (Song et al.'s offset of 7), estimated with ``n_dequant`` draws of ``u`` (averaged).

    Args:
        net, sde, cond: as in :func:`log_prob`. x: ``(B, *data_shape)`` in ``[0, 1]``, multiples of 1/255.
        n_dequant: draws of ``u`` per sample. eps, method, steps, rtol, atol, n_probes, dist: as in
            :func:`log_prob`. divergence: ``None`` (default) = exact up to 16 dimensions, else Hutchinson.
        generator: draws ``u`` (and the Hutchinson probes).

    Returns:
        ``(B,)`` bits per dimension.
    """
    x = _check_batch("x", x)
    n_dequant = check_int("n_dequant", n_dequant, min=1)
    generator = check_generator(generator)
    k = x * 255.0
    if not bool(((x >= 0) & (x <= 1) & ((k - k.round()).abs() <= 1e-3)).all()):
        raise ValueError(f"x must hold 8-bit values in [0, 1] (multiples of 1/255), got values in "
                         f"[{float(x.min()):g}, {float(x.max()):g}]")
    d = x[0].numel()
    opts = dict(sde=sde, eps=eps, method=method, steps=steps, rtol=rtol, atol=atol, divergence=divergence,
                n_probes=n_probes, dist=dist, generator=generator, cond=cond)
    total = x.new_zeros(x.shape[0])
    for _ in range(n_dequant):
        u = rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        total = total + log_prob(net, (k.round() + u) / 256.0 * 2.0 - 1.0, **opts)  # z = 2 y - 1
    return -(total / n_dequant) / (d * math.log(2.0)) + 7.0
