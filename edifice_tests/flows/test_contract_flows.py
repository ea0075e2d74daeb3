"""One contract test over every normalizing flow (zuko's checks, in float64).

Cases come from the ``edifice_tests/flows/cases_*.py`` modules, each defining
``CASES = [(id, builder () -> Flow, data_shape, atol)]`` (builders seed themselves, so two calls give the
same weights). For every case: ``inverse(forward(x)) == x`` within ``atol``; the forward log-det equals
``log|det|`` of the autograd Jacobian and the inverse log-det is its negative (within ``10 · atol``);
on 2-D data ``exp(log_prob)`` integrates to 1 over a grid within 1%; gradients of ``log_prob`` reach
every parameter; eval equals train after the first (initialising) forward; a ``state_dict`` round
trip reproduces ``log_prob``; sampling has the data shape and dtype and is deterministic under a seed.
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib

import pytest
import torch

from edifice.flows.base import Flow

_HERE = pathlib.Path(__file__).parent


def _collect() -> list:
    cases = []
    for path in sorted(_HERE.glob("cases_*.py")):
        spec = importlib.util.spec_from_file_location(f"_edifice_flow_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for case in module.CASES:
            cases.append(pytest.param(*case, id=f"{path.stem[6:]}-{case[0]}"))
    return cases


CASES = _collect()


def flow_contract(flow: Flow, x: torch.Tensor, *, atol: float) -> None:
    """Check the flow contract on ``x (B, *shape)`` (float64); the flow must already be float64."""
    flow.train()
    z, logdet = flow(x)  # initialising forward (ActNorm)
    shape = tuple(x.shape[1:])
    assert z.shape == x.shape and logdet.shape == (x.shape[0],)
    assert z.dtype == torch.float64 and logdet.dtype == torch.float64
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()

    # eval == train after initialisation
    z_again, logdet_again = flow(x)
    flow.eval()
    with torch.no_grad():
        z_eval, logdet_eval = flow(x)
    flow.train()
    torch.testing.assert_close(z_eval, z_again, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet_eval, logdet_again, atol=1e-12, rtol=1e-12)

    # inverse round trip and inverse log-det
    with torch.no_grad():
        x_back, logdet_inv = flow.inverse(z.detach())
    torch.testing.assert_close(x_back, x, atol=atol, rtol=0)
    torch.testing.assert_close(logdet_inv, -logdet.detach(), atol=10 * atol, rtol=1e-6)

    # log-det against the autograd Jacobian, per sample
    for i in range(min(2, x.shape[0])):
        def f(v: torch.Tensor) -> torch.Tensor:
            return flow(v.view(1, *shape))[0].flatten()
        jac = torch.autograd.functional.jacobian(f, x[i].flatten())
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(logdet[i].detach(), logabs, atol=10 * atol, rtol=1e-6)

    # gradients reach every parameter; checked at slightly perturbed weights, since a layer may be
    # initialised at the identity (e.g. a radial flow with beta = 0), where some gradients vanish
    probe = copy.deepcopy(flow)
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in probe.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    probe.log_prob(x).mean().backward()
    for name, p in probe.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient at {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    # sampling: shape, dtype, determinism
    s1 = flow.sample(3, generator=torch.Generator().manual_seed(1))
    s2 = flow.sample(3, generator=torch.Generator().manual_seed(1))
    assert s1.shape == (3, *shape) and s1.dtype == torch.float64
    assert torch.equal(s1, s2)


def _integral_2d(flow: Flow, *, half_width: float = 8.0, n: int = 121) -> float:
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    pts = torch.cartesian_prod(g, g)  # (n², 2)
    with torch.no_grad():
        dens = torch.cat([flow.log_prob(c).exp() for c in pts.split(8192)])
    return float(dens.sum() * (g[1] - g[0]) ** 2)


@pytest.mark.parametrize("case_id, builder, data_shape, atol", CASES)
def test_flow_contract(case_id, builder, data_shape, atol):
    torch.manual_seed(0)
    flow = builder()
    assert isinstance(flow, Flow)
    flow = flow.double()
    assert flow.shape == tuple(data_shape)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, *data_shape, generator=gen, dtype=torch.float64)
    flow_contract(flow, x, atol=atol)

    if tuple(data_shape) == (2,):
        mass = _integral_2d(flow)
        print(f"{case_id}: mass {mass:.5f}")
        assert abs(mass - 1.0) < 0.01, f"exp(log_prob) integrates to {mass}"

    # state_dict round trip into a perturbed fresh copy
    other = builder().double()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    other.load_state_dict(flow.state_dict())
    x2 = torch.randn(5, *data_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(other.log_prob(x2), flow.log_prob(x2), atol=1e-12, rtol=1e-12)


def test_cases_are_collected():
    ids = [c.id for c in CASES]
    assert any(i.startswith("coupling-") for i in ids)
    assert len(ids) == len(set(ids))
