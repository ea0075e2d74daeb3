"""Contract cases for the continuous normalizing flow (FFJORD), collected by ``test_contract_flows.py``.

Tolerances (float64, exact trace): ``rk4`` with 6-10 fixed steps inverts its own forward map to ~1e-10 on a
small random field (the backward solve is a different discretisation, so not to machine precision), and
``dopri5`` at ``rtol = atol = 1e-9`` to ~1e-8; both cases use the stated inverse ``atol = 1e-6``.
The log-det is the integrated exact trace, equal to the log |det| of the solver map's Jacobian up to the
same discretisation error.
"""

from __future__ import annotations

import torch

from edifice.flows.cnf import ffjord


def _build(seed: int, **options):
    def builder():
        torch.manual_seed(seed)
        return ffjord((2,), hidden=16, depth=2, **options).double()
    return builder


CASES = [
    ("ffjord-rk4-exact", _build(0, method="rk4", steps=10), (2,), 1e-6),
    ("ffjord-dopri5-exact", _build(1, method="dopri5", rtol=1e-9, atol=1e-9), (2,), 1e-6),
    ("ffjord-2blocks-rk4", _build(2, method="rk4", steps=6, blocks=2, t1=0.5), (2,), 1e-6),
]
