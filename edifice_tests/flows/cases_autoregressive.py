"""Contract cases for the autoregressive, spline, planar and radial flows (collected by test_contract_flows).

Each case is ``(id, builder () -> Flow, data_shape, atol)``; builders seed themselves and return float64 flows.
Tolerances: 1e-6 for the affine autoregressive flows (MAF, IAF) and the radial flow (closed-form inverse radius);
a looser 1e-5 for the splines (closed-form quadratic root per bin, measured round-trip error ~1e-14) and for the
planar flow (iterative inverse: 100 bisection halvings + one Newton step, measured ~1e-15).
"""

from __future__ import annotations

import torch

from edifice.flows.autoregressive import iaf, maf, planar, radial
from edifice.flows.spline import nsf


def _seeded(fn):
    def build():
        torch.manual_seed(0)
        return fn().double()
    return build


CASES = [
    ("maf", _seeded(lambda: maf((2,), transforms=2, hidden=16)), (2,), 1e-6),
    ("iaf", _seeded(lambda: iaf((2,), transforms=2, hidden=16)), (2,), 1e-6),
    ("nsf_coupling", _seeded(lambda: nsf((2,), transforms=2, bins=4, hidden=16)), (2,), 1e-5),
    ("nsf_autoregressive", _seeded(lambda: nsf((2,), transforms=2, bins=4, hidden=16, kind="autoregressive")), (2,),
     1e-5),
    ("planar", _seeded(lambda: planar((2,), layers=4)), (2,), 1e-5),
    ("radial", _seeded(lambda: radial((2,), layers=4)), (2,), 1e-6),
    ("maf_3d", _seeded(lambda: maf((3,), transforms=2, hidden=16)), (3,), 1e-6),
    ("nsf_coupling_3d", _seeded(lambda: nsf((3,), transforms=3, bins=4, hidden=16)), (3,), 1e-5),
]
