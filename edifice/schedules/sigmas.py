"""Noise-level ladders for sigma-parameterised samplers (EDM, NCSN, VE samplers).

**Convention:** ladders are descending, from the largest noise level to the smallest, as samplers
walk them. Values are float64 unless a dtype is given.

- :func:`karras_sigmas`: ``σ_i = (σ_max^{1/ρ} + i/(N-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ`` (Karras et al. 2022,
  eq. 5), with ``σ_N = 0`` appended by default; ``ρ = 7`` concentrates steps at low noise.
- :func:`geometric_sigmas`: ``σ_i = σ_max (σ_min / σ_max)^{i/(N-1)}``, the NCSN ladder (Song & Ermon 2019);
  it is Karras's ladder in the limit ``ρ → ∞``.

Example:
    >>> from edifice.schedules import karras_sigmas, geometric_sigmas
    >>> karras_sigmas(3, sigma_min=0.002, sigma_max=80.0).tolist()[-1]
    0.0
    >>> [round(s, 4) for s in geometric_sigmas(3, sigma_min=0.01, sigma_max=1.0).tolist()]
    [1.0, 0.1, 0.01]

References:
    Elucidating the Design Space of Diffusion-Based Generative Models. Karras, Aittala, Aila, Laine, 2022.
    arXiv:2206.00364.
    Generative Modeling by Estimating Gradients of the Data Distribution. Song & Ermon, 2019. arXiv:1907.05600.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from edifice._checks import check_float, check_int, check_ordered

__all__ = ["karras_sigmas", "geometric_sigmas", "check_sigma_range"]


def check_sigma_range(sigma_min: Any, sigma_max: Any) -> tuple[float, float]:
    """Validate ``0 < sigma_min < sigma_max``; return them as floats."""
    return check_ordered("sigma_min", sigma_min, "sigma_max", sigma_max)


def karras_sigmas(
    n: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    append_zero: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The EDM noise ladder of ``n`` levels from ``sigma_max`` down to ``sigma_min`` (eq. 5 of Karras et al.).

    Args:
        n: number of noise levels (``>= 1``; ``n = 1`` gives ``[sigma_max]``).
        sigma_min, sigma_max: end points, ``0 < sigma_min < sigma_max``.
        rho: warping exponent ``> 0`` (7 in EDM; 1 is a uniform ladder in σ).
        append_zero: append ``σ_N = 0`` so a sampler's last step lands on the data.
        device, dtype: of the result.

    Returns:
        ``(n + 1,)`` with a trailing zero, or ``(n,)``: descending noise levels.

    Raises:
        ValueError: for ``n < 1``, ``sigma_min >= sigma_max`` or ``rho <= 0``.
    """
    n = check_int("n", n, min=1)
    sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
    rho = check_float("rho", rho, min=0.0, min_open=True)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=dtype)


def geometric_sigmas(
    n: int,
    *,
    sigma_min: float = 0.01,
    sigma_max: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A geometric ladder of ``n`` levels from ``sigma_max`` down to ``sigma_min`` (NCSN's ``{σ_i}``).

    Args:
        n: number of levels (``>= 1``; ``n = 1`` gives ``[sigma_max]``).
        sigma_min, sigma_max: end points, ``0 < sigma_min < sigma_max``.
        device, dtype: of the result.

    Returns:
        ``(n,)`` descending levels with a constant ratio ``σ_{i+1} / σ_i``.

    Raises:
        ValueError: for ``n < 1`` or ``sigma_min >= sigma_max``.
    """
    n = check_int("n", n, min=1)
    sigma_min, sigma_max = check_sigma_range(sigma_min, sigma_max)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sigmas = torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max)))
    return sigmas.to(device=device, dtype=dtype)
