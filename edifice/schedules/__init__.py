"""Noise schedules: discrete beta schedules (DDPM / DDIM), continuous SDEs (score SDEs) and sigma ladders.

- :mod:`.discrete`: ``linear`` / ``cosine`` / ``sigmoid`` betas, ``alpha_bar``, SNR, :class:`NoiseSchedule`.
- :mod:`.sde`: the VP, VE and sub-VP SDEs of Song et al. (2021), :func:`make_sde`.
- :mod:`.sigmas`: the Karras (EDM) and geometric (NCSN) noise ladders.

All are computed in float64 (discrete schedules and ladders) or in the dtype of ``t`` (SDE coefficients)
and cast at use.
"""

from edifice.schedules.discrete import (
    BETA_SCHEDULES, NoiseSchedule, alpha_bar, beta_schedule, cosine_betas, linear_betas, make_schedule,
    sigmoid_betas, snr,
)
from edifice.schedules.sde import SDE, SDES, SubVPSDE, VESDE, VPSDE, make_sde
from edifice.schedules.sigmas import check_sigma_range, geometric_sigmas, karras_sigmas

__all__ = [
    "linear_betas", "cosine_betas", "sigmoid_betas", "beta_schedule", "alpha_bar", "snr", "NoiseSchedule",
    "make_schedule", "BETA_SCHEDULES", "SDE", "VPSDE", "VESDE", "SubVPSDE", "SDES", "make_sde",
    "karras_sigmas", "geometric_sigmas", "check_sigma_range",
]
