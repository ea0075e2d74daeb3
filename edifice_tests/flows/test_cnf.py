"""Tests of the continuous normalizing flow (FFJORD) transform: closed-form oracles, estimators, adjoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edifice.data import toy2d
from edifice.flows.base import Flow
from edifice.flows.cnf import CNF, ODEField, ffjord
from edifice_tests.flows.cases_cnf import CASES

DT = torch.float64


class Linear(nn.Module):
    """``f(t, x) = x Aᵀ + c``: the flow map is ``expm(t A)`` (c = 0), ``tr ∂f/∂x = tr A``, ``‖∂f/∂x‖_F² = ‖A‖_F²``."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor | None = None) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.c = nn.Parameter(torch.zeros(a.shape[0], dtype=a.dtype) if c is None else c.clone())

    def forward(self, t, x):
        return x @ self.a.T + self.c


def _x(n=6, d=2, seed=0):
    return torch.randn(n, d, dtype=DT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cases_round_trip_and_jacobian(case):
    _, builder, shape, atol = case
    flow = builder()
    x = _x(4, shape[0])
    z, ld = flow(x)
    xr, ldi = flow.inverse(z)
    assert torch.allclose(xr, x, atol=atol, rtol=0)
    assert torch.allclose(ld, -ldi, atol=atol, rtol=0)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[0])  # (2, 2)
    assert abs(torch.linalg.slogdet(jac)[1].item() - ld[0].item()) < atol


@pytest.mark.parametrize("method,options", [("dopri5", {"rtol": 1e-10, "atol": 1e-10}), ("rk4", {"steps": 40})])
def test_linear_field_matches_matrix_exponential(method, options):
    a = torch.tensor([[0.3, -1.0], [0.7, -0.2]], dtype=DT)
    cnf = CNF(Linear(a), t1=0.8, method=method, **options)
    x = _x()
    z, ld = cnf(x)
    assert torch.allclose(z, x @ torch.linalg.matrix_exp(0.8 * a).T, atol=1e-8)
    assert torch.allclose(ld, torch.full_like(ld, 0.8 * float(a.trace())), atol=1e-9)
    xr, ldi = cnf.inverse(z)
    assert torch.allclose(xr, x, atol=1e-8) and torch.allclose(ldi, -ld, atol=1e-9)


def test_regularizers_closed_form():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=DT)
    c = torch.tensor([1.5, -2.0], dtype=DT)
    cnf = CNF(Linear(a, c), t1=2.0, method="rk4", steps=4, kinetic=0.5)
    z, ld, reg = cnf.regularized_forward(_x())
    assert torch.allclose(reg, torch.full_like(reg, 0.5 * 2.0 * 6.25), atol=1e-12)  # k · t1 · ‖c‖²
    assert torch.equal(reg, cnf.last_regularization)
    # Jacobian norm: one Gaussian probe per sample is unbiased for t1 · ‖A‖_F²; average many rows.
    a = torch.tensor([[0.5, -1.0], [2.0, 0.1]], dtype=DT)
    cnf = CNF(Linear(a), t1=1.0, method="rk4", steps=2, jacobian_norm=1.0)
    cnf.generator = torch.Generator().manual_seed(3)
    z, ld = cnf(torch.zeros(20000, 2, dtype=DT))
    reg = cnf.last_regularization
    se = reg.std() / math.sqrt(reg.numel())
    assert abs(reg.mean() - a.square().sum()) < 4 * se
    # no regularisation requested: zeros, and the penalty backpropagates when it is
    assert torch.equal(CNF(Linear(a), method="rk4")(_x())[1] * 0, CNF(Linear(a), method="rk4").forward(_x())[1] * 0)
    field = ODEField(2, hidden=8, depth=1).double()
    cnf = CNF(field, method="rk4", steps=4, kinetic=1.0, jacobian_norm=1.0)
    _, _, reg = cnf.regularized_forward(_x(), generator=torch.Generator().manual_seed(0))
    reg.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())


def test_hutchinson_mean_equals_exact_trace():
    torch.manual_seed(0)
    field = ODEField(3, hidden=16, depth=2).double()
    x = _x(1, 3).expand(4000, 3)  # one point, each row draws its own probe
    exact = CNF(field, method="rk4", steps=6)(x[:1])[1]
    hutch = CNF(field, method="rk4", steps=6, divergence="hutchinson")
    est = hutch(x, generator=torch.Generator().manual_seed(1))[1]
    se = est.std() / math.sqrt(est.numel())
    assert abs(est.mean() - exact[0]) < 4 * se and se > 0
    # the generator (argument or attribute) makes the estimate reproducible
    again = hutch(x, generator=torch.Generator().manual_seed(1))[1]
    hutch.generator = torch.Generator().manual_seed(1)
    assert torch.equal(est, again) and torch.equal(est, hutch(x)[1])
    # n_probes probes per sample average inside the field: still unbiased, variance divided by n_probes
    many = CNF(field, method="rk4", steps=6, divergence="hutchinson", n_probes=8)
    est8 = many(x[:500], generator=torch.Generator().manual_seed(2))[1]
    se8 = est8.std() / math.sqrt(est8.numel())
    assert abs(est8.mean() - exact[0]) < 4 * se8
    assert est8.std() < est.std() / 2


def test_adjoint_gradients_match_backprop():
    torch.manual_seed(0)
    field = ODEField(2, hidden=8, depth=1).double()
    x = _x(5)
    grads = []
    for adjoint in (False, True):
        field.zero_grad()
        flow = Flow([CNF(field, method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint)], (2,))
        flow.log_prob(x).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_ode_field_shapes_and_time_dependence():
    f = ODEField(3, hidden=8, depth=2)
    x = torch.randn(4, 3)
    assert f(torch.tensor(0.0), x).shape == (4, 3)
    assert not torch.equal(f(torch.tensor(0.0), x), f(torch.tensor(1.0), x))
    assert torch.equal(f(torch.tensor(0.5), x), f(torch.full((4,), 0.5), x))


def test_bad_input():
    f = ODEField(2, hidden=4, depth=1)
    with pytest.raises(TypeError, match="field"):
        CNF(lambda t, x: x)
    with pytest.raises(ValueError, match="method"):
        CNF(f, method="rk45")
    with pytest.raises(ValueError, match="divergence"):
        CNF(f, divergence="trace")
    with pytest.raises(ValueError, match="t1"):
        CNF(f, t1=0.0)
    with pytest.raises(ValueError, match="kinetic"):
        CNF(f, kinetic=-1.0)
    with pytest.raises(ValueError, match="steps"):
        CNF(f, steps=0)
    with pytest.raises(TypeError, match="adjoint"):
        CNF(f, adjoint=1)
    with pytest.raises(TypeError, match="generator"):
        CNF(f, method="rk4")(torch.randn(2, 2), generator=0)
    with pytest.raises(ValueError, match="x"):
        CNF(f, method="rk4")(torch.randn(2))
    with pytest.raises(ValueError, match="x"):
        f(torch.tensor(0.0), torch.randn(2, 3))
    with pytest.raises(ValueError, match="shape"):
        ffjord((1, 4, 4))
    with pytest.raises(ValueError, match="depth"):
        ODEField(2, depth=0)


def test_ffjord_learns_moons():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    train = toy2d.sample("moons", 2048, generator=g)
    test = toy2d.sample("moons", 1024, generator=g)
    flow = ffjord((2,), hidden=32, depth=2, method="rk4", steps=6)
    with torch.no_grad():
        untrained = -flow.log_prob(test).mean().item()
    opt = torch.optim.Adam(flow.parameters(), lr=2e-2)
    for step in range(150):
        idx = torch.randint(0, train.shape[0], (128,), generator=g)
        loss = -flow.log_prob(train[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = -flow.log_prob(test).mean().item()
    print(f"ffjord moons test NLL: untrained {untrained:.3f}, trained {trained:.3f} nats (floor 2.394)")
    assert trained < untrained - 0.8 and trained < 3.0


def test_adjoint_with_hutchinson_and_regularizers_backpropagates():
    torch.manual_seed(0)
    field = ODEField(2, hidden=8, depth=1).double()
    grads = []
    for adjoint in (False, True):
        field.zero_grad()
        cnf = CNF(field, method="dopri5", rtol=1e-9, atol=1e-9, divergence="hutchinson", adjoint=adjoint,
                  kinetic=0.1, jacobian_norm=0.1)
        z, ld, reg = cnf.regularized_forward(_x(4), generator=torch.Generator().manual_seed(5))
        (ld + reg).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    assert torch.isfinite(grads[1]).all() and grads[1].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
