"""Continuous-time diffusion SDEs of Song et al. (2021): VP, VE and sub-VP.

**Time convention:** ``t ∈ [0, T]`` with ``T = 1``; data at ``t = 0``, the prior at ``t = 1``. Samplers and
losses stop at a small ``eps`` (1e-3 for VP / sub-VP, 1e-5 for VE in the paper) because the score blows up
as ``t → 0``.

Each SDE ``dx = f(x, t) dt + g(t) dW`` has a Gaussian perturbation kernel
``p_0t(x_t | x_0) = N(scale(t) x_0, std(t)² I)``:

=========  =============================  ==========================================  ==============================
SDE        drift ``f(x, t)``               diffusion ``g(t)``                           ``scale(t)``, ``std(t)``
=========  =============================  ==========================================  ==============================
VP         ``-β(t) x / 2``                 ``sqrt(β(t))``                               ``e^{m(t)}``, ``sqrt(1 - e^{2m(t)})``
sub-VP     ``-β(t) x / 2``                 ``sqrt(β(t) (1 - e^{-2∫β}))``                 ``e^{m(t)}``, ``1 - e^{2m(t)}``
VE         ``0``                           ``σ(t) sqrt(2 ln(σ_max / σ_min))``            ``1``, ``σ(t)``
=========  =============================  ==========================================  ==============================

with ``β(t) = β_min + t (β_max - β_min)``, ``m(t) = -t² (β_max - β_min) / 4 - t β_min / 2`` (so
``∫_0^t β = -2 m(t)``) and ``σ(t) = σ_min (σ_max / σ_min)^t``. The priors are ``N(0, I)`` for VP / sub-VP and
``N(0, σ_max² I)`` for VE.

Values follow the dtype and device of ``t``; nothing here synchronises with the host, so the methods are
safe inside sampler loops. Public entry points validate ``t`` with :meth:`SDE.check_time`.

Example:
    >>> import torch
    >>> from edifice.schedules import make_sde
    >>> sde = make_sde("vp")
    >>> scale, std = sde.scale(torch.tensor([1.0])), sde.std(torch.tensor([1.0]))
    >>> round(float(scale), 5), round(float(std), 5)
    (0.00657, 0.99998)

References:
    Score-Based Generative Modeling through Stochastic Differential Equations. Song, Sohl-Dickstein,
    Kingma, Kumar, Ermon, Poole, 2021. arXiv:2011.13456 (eqs. 9-11, 29-34; Appendix B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from edifice._checks import append_dims, batch_time, check_choice, check_int, check_ordered, randn

__all__ = ["SDE", "VPSDE", "VESDE", "SubVPSDE", "SDES", "make_sde"]


class SDE:
    """Base class: the interface every continuous diffusion SDE offers (see the module docstring).

    Subclasses are frozen dataclasses of floats; ``t`` is always a ``(B,)`` floating tensor.
    """

    name: str = ""
    T: float = 1.0

    # -- coefficients ---------------------------------------------------------------------------
    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Drift ``f(x, t)``, shaped like ``x`` ``(B, ...)``."""
        raise NotImplementedError

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """Diffusion coefficient ``g(t)``, ``(B,)``."""
        raise NotImplementedError

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        """Mean coefficient of the perturbation kernel, ``(B,)``: ``E[x_t | x_0] = scale(t) x_0``."""
        raise NotImplementedError

    def std(self, t: torch.Tensor) -> torch.Tensor:
        """Standard deviation of the perturbation kernel, ``(B,)``."""
        raise NotImplementedError

    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std² I)`` at ``t = T``."""
        return 1.0

    # -- derived ---------------------------------------------------------------------------------
    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(B, ...)`` and std ``(B,)`` of ``p_0t(x_t | x_0)``."""
        return append_dims(self.scale(t), x0.ndim) * x0, self.std(t)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = scale(t) x_0 + std(t) noise`` (``noise`` standard normal, shaped like ``x0``)."""
        mean, std = self.marginal(x0, t)
        return mean + append_dims(std, x0.ndim) * noise

    def prior_sample(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                     device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Draw ``shape`` from the prior ``N(0, prior_std² I)``."""
        return self.prior_std() * randn(tuple(shape), generator=generator, device=device,
                                        dtype=dtype or torch.float32)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density ``(B,)`` in nats of the prior at ``z`` ``(B, ...)``."""
        d = z[0].numel()
        s2 = self.prior_std() ** 2
        return -0.5 * z.flatten(1).square().sum(1) / s2 - 0.5 * d * math.log(2.0 * math.pi * s2)

    def discretize(self, x: torch.Tensor, t: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete forward step ``x_{i+1} = x_i + f_i + G_i z`` over ``N`` uniform steps: ``(f (B, ...), G (B,))``.

        The default is Euler-Maruyama, ``f = f(x, t) / N``, ``G = g(t) / sqrt(N)``; VP and VE override it with
        DDPM's and SMLD's discretisations (Song et al. 2021, Appendix B), which the reverse-diffusion
        predictor uses.
        """
        dt = self.T / N
        return self.drift(x, t) * dt, self.diffusion(t) * math.sqrt(dt)

    def check_time(self, t: Any, like: torch.Tensor, *, name: str = "t", eps: float = 0.0) -> torch.Tensor:
        """``t`` as a ``(B,)`` tensor on ``like``'s device / dtype; ValueError unless ``eps <= t <= T``.

        Entry-point validation only (it reads ``t`` on the host).
        """
        t = batch_time(t, like, name=name)
        if not bool(torch.isfinite(t).all()) or bool((t < eps).any()) or bool((t > self.T).any()):
            raise ValueError(f"{name} must lie in [{eps:g}, {self.T:g}] for the {self.name} SDE, "
                             f"got values in [{float(t.min()):g}, {float(t.max()):g}]")
        return t


@dataclass(frozen=True)
class VPSDE(SDE):
    """Variance-preserving SDE, the continuous limit of DDPM with linear betas (``N = 1000``: 1e-4 to 0.02).

    Args:
        beta_min, beta_max: ``β(0)`` and ``β(1)``, ``0 < beta_min < beta_max`` (defaults 0.1, 20).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def __post_init__(self) -> None:
        check_ordered("beta_min", self.beta_min, "beta_max", self.beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """``β(t) = β_min + t (β_max - β_min)``, ``(B,)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """``m(t) = log scale(t) = -t² (β_max - β_min) / 4 - t β_min / 2``, ``(B,)``."""
        return -0.25 * t.square() * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * append_dims(self.beta(t), x.ndim) * x

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta(t).sqrt()

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_mean_coeff(t).exp()

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return (-torch.expm1(2.0 * self.log_mean_coeff(t))).sqrt()

    def discretize(self, x: torch.Tensor, t: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM discretisation: ``β_i = (β_min + i (β_max - β_min) / (N - 1)) / N``, ``f = (sqrt(1 - β_i) - 1) x``.

        The level is ``i = floor(t (N - 1) / T)`` as in the reference code; ``N`` must exceed ``β_max`` so that
        every ``β_i < 1``.
        """
        N = check_int("N", N, min=2)
        if N <= self.beta_max:
            raise ValueError(f"N must exceed beta_max={self.beta_max} so that every β_i < 1, got {N}")
        i = (t * (N - 1) / self.T).floor()
        beta = (self.beta_min + i * (self.beta_max - self.beta_min) / (N - 1)) / N
        return append_dims((1.0 - beta).sqrt() - 1.0, x.ndim) * x, beta.sqrt()


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE: the VP drift with a smaller diffusion, so ``std(t)`` is below VP's at every ``t``.

    Args:
        beta_min, beta_max: as for :class:`VPSDE`.
    """

    name = "subvp"

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        discount = -torch.expm1(4.0 * self.log_mean_coeff(t))  # 1 - exp(-2 ∫_0^t β)
        return (self.beta(t) * discount).sqrt()

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.expm1(2.0 * self.log_mean_coeff(t))

    def discretize(self, x: torch.Tensor, t: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        return SDE.discretize(self, x, t, N)


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE, the continuous limit of SMLD / NCSN's geometric noise ladder.

    Args:
        sigma_min, sigma_max: ``σ(0)`` and ``σ(1)``, ``0 < sigma_min < sigma_max`` (defaults 0.01, 50).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name = "ve"

    def __post_init__(self) -> None:
        check_ordered("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``σ(t) = σ_min (σ_max / σ_min)^t``, ``(B,)``."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def std(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t)

    def prior_std(self) -> float:
        return self.sigma_max

    def discretize(self, x: torch.Tensor, t: torch.Tensor, N: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SMLD discretisation over ``σ_i = σ_min (σ_max / σ_min)^{i / (N - 1)}``: ``f = 0``, ``G = sqrt(σ_i² - σ_{i-1}²)``.

        The level is ``i = floor(t (N - 1) / T)`` as in the reference code.
        """
        N = check_int("N", N, min=2)
        i = (t * (N - 1) / self.T).floor()
        sigma = self.sigma(i / (N - 1))
        prev = torch.where(i > 0, self.sigma((i - 1).clamp(min=0) / (N - 1)), torch.zeros_like(sigma))
        return torch.zeros_like(x), (sigma.square() - prev.square()).sqrt()


SDES: dict[str, type[SDE]] = {"vp": VPSDE, "ve": VESDE, "subvp": SubVPSDE}
"""SDE classes by name."""


def make_sde(name: str | SDE = "vp", **kwargs: Any) -> SDE:
    """The SDE called ``name`` (``"vp"``, ``"ve"`` or ``"subvp"``) with its parameters; an SDE passes through.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or invalid parameters.
        TypeError: for parameters the SDE does not take.
    """
    if isinstance(name, SDE):
        if kwargs:
            raise TypeError(f"make_sde got an SDE instance and extra parameters {sorted(kwargs)}")
        return name
    check_choice("sde", name, tuple(SDES))
    cls = SDES[name]
    allowed = {"vp": ("beta_min", "beta_max"), "subvp": ("beta_min", "beta_max"),
               "ve": ("sigma_min", "sigma_max")}[name]
    for key in kwargs:
        if key not in allowed:
            raise TypeError(f"the {name} SDE takes parameters {allowed}, got {key!r}")
    return cls(**kwargs)

