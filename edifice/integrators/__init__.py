"""Pure numerics: ODE and SDE integrators and divergence estimators.

- :mod:`.ode`: fixed-step ``euler`` / ``midpoint`` / ``heun`` / ``rk4`` over one loop, adaptive methods via
  torchdiffeq, and :func:`network_field` (``net(x, t, **cond)`` -> ``f(t, x)``).
- :mod:`.sde`: Euler-Maruyama with an explicit generator and a corrector hook.
- :mod:`.divergence`: exact and Hutchinson divergence for the instantaneous change of variables.
- :mod:`.cnf`: log-likelihood of any ODE flow by the instantaneous change of variables.
"""

from edifice.integrators.cnf import DIVERGENCES, auto_divergence, cnf_log_prob
from edifice.integrators.divergence import (
    PROBE_DISTRIBUTIONS,
    divergence_exact,
    divergence_hutchinson,
    hutchinson_probes,
)
from edifice.integrators.ode import (
    ADAPTIVE,
    METHODS,
    STEPPERS,
    euler_step,
    heun_step,
    midpoint_step,
    network_field,
    odeint,
    rk4_step,
)
from edifice.integrators.sde import SDE_STEPPERS, euler_maruyama_step, langevin_step, langevin_step_size, sdeint

__all__ = [
    "odeint", "network_field", "euler_step", "midpoint_step", "heun_step", "rk4_step", "STEPPERS", "ADAPTIVE",
    "METHODS", "sdeint", "euler_maruyama_step", "SDE_STEPPERS", "langevin_step", "langevin_step_size", "divergence_exact", "divergence_hutchinson",
    "hutchinson_probes", "PROBE_DISTRIBUTIONS", "cnf_log_prob", "DIVERGENCES", "auto_divergence",
]
