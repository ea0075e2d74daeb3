"""Contract cases for the coupling flows (NICE, RealNVP, Glow), collected by ``test_contract_flows.py``.

Each case is ``(id, builder () -> Flow, data_shape, atol)``; builders seed themselves and return float64
flows. All coupling inverses are closed-form, so the inverse tolerance is 1e-6 throughout.
"""

from __future__ import annotations

import torch

from edifice.flows.base import ActNorm, Flow, Permute, Reverse
from edifice.flows.coupling import InvConv1x1, glow, nice, realnvp


def _seeded(fn):
    def build():
        torch.manual_seed(0)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return fn().double()
        finally:
            torch.set_default_dtype(old)
    return build


CASES = [
    ("base-layers", _seeded(lambda: Flow([ActNorm(3), Permute([2, 0, 1]), InvConv1x1(3, generator=torch.Generator()
                                          .manual_seed(0)), Reverse()], (3,))), (3,), 1e-6),
    ("realnvp-vector", _seeded(lambda: realnvp((2,), blocks=4, hidden=16, depth=2)), (2,), 1e-6),
    ("realnvp-vector-tanh-actnorm", _seeded(lambda: realnvp((2,), blocks=3, hidden=16, scale="tanh", actnorm=True)),
     (2,), 1e-6),
    ("realnvp-vector-odd", _seeded(lambda: realnvp((3,), blocks=2, hidden=8)), (3,), 1e-6),
    ("realnvp-image-2scales", _seeded(lambda: realnvp((1, 4, 4), blocks=2, hidden=8, depth=1, scales=2)),
     (1, 4, 4), 1e-6),
    ("realnvp-image-actnorm", _seeded(lambda: realnvp((2, 4, 4), blocks=2, hidden=8, depth=2, scales=2,
                                                      actnorm=True)), (2, 4, 4), 1e-6),
    ("realnvp-image-1scale", _seeded(lambda: realnvp((1, 4, 4), blocks=2, hidden=8, depth=1, scales=1)),
     (1, 4, 4), 1e-6),
    ("nice-vector", _seeded(lambda: nice((2,), blocks=4, hidden=16)), (2,), 1e-6),
    ("nice-image", _seeded(lambda: nice((1, 4, 4), blocks=4, hidden=16)), (1, 4, 4), 1e-6),
    ("glow-vector", _seeded(lambda: glow((2,), steps=3, hidden=16)), (2,), 1e-6),
    ("glow-image", _seeded(lambda: glow((2, 4, 4), steps=2, levels=2, hidden=8, depth=2)), (2, 4, 4), 1e-6),
    ("glow-image-1level", _seeded(lambda: glow((1, 4, 4), steps=2, levels=1, hidden=8, depth=1)), (1, 4, 4), 1e-6),
]
