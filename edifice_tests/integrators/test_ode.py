"""Tests for edifice.integrators.ode: exact solutions, convergence order, gradients, backwards time, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.integrators import ADAPTIVE, METHODS, STEPPERS, network_field, odeint

FIXED = sorted(STEPPERS)
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def _rotation(omega: float):
    A = torch.tensor([[0.0, -omega], [omega, 0.0]], dtype=torch.float64)
    return lambda t, x: x @ A.T


def _rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    R = torch.tensor([[c, -s], [s, c]], dtype=x.dtype)
    return x @ R.T


@pytest.mark.parametrize("method", FIXED + ["dopri5"])
def test_exponential_decay_exact(method, f64):
    x0 = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.1, -1.0]])
    ts = torch.linspace(0.0, 1.5, 201)
    x1 = odeint(lambda t, x: -0.8 * x, x0, ts, method=method, rtol=1e-9, atol=1e-9)
    exact = x0 * math.exp(-0.8 * 1.5)
    tol = {"euler": 5e-3, "midpoint": 1e-5, "heun": 1e-5, "rk4": 1e-10, "dopri5": 1e-7}[method]
    torch.testing.assert_close(x1, exact, rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_rotation_exact(method, f64):
    x0 = torch.tensor([[1.0, 0.0], [0.3, -0.7]])
    ts = torch.linspace(0.0, 2.0, 101)
    x1 = odeint(_rotation(1.3), x0, ts, method=method, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x1, _rotate(x0, 1.3 * 2.0), rtol=0, atol=1e-8)
    # norm is conserved by the exact flow
    torch.testing.assert_close(x1.norm(dim=1), x0.norm(dim=1), rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", FIXED)
def test_convergence_order(method, f64):
    """dx/dt = -2 t x^2, x(0) = 1 has x(t) = 1 / (1 + t^2): log-log slope of the error is the order."""
    f = lambda t, x: -2.0 * t * x**2  # noqa: E731
    x0 = torch.ones(1, 1)
    exact = 1.0 / (1.0 + 2.0**2)
    steps = [8, 16, 32, 64] if method != "euler" else [32, 64, 128, 256]
    errors = [abs(odeint(f, x0, torch.linspace(0.0, 2.0, n + 1), method=method).item() - exact) for n in steps]
    slope = np.polyfit(np.log(2.0 / np.array(steps)), np.log(errors), 1)[0]
    assert abs(slope - ORDER[method]) < 0.3, (method, slope, errors)


@given(a=st.floats(-3.0, 3.0), dt=st.floats(-0.5, 0.5), x=st.floats(-10.0, 10.0))
def test_steps_match_taylor_on_linear_field(a, dt, x):
    """On dx/dt = a x an order-p Runge-Kutta step multiplies x by the degree-p Taylor polynomial of e^{a dt}."""
    for name, p in ORDER.items():
        got = STEPPERS[name](lambda t, y: a * y, torch.tensor(0.0, dtype=torch.float64),
                             torch.tensor([x], dtype=torch.float64), torch.tensor(dt, dtype=torch.float64))
        want = x * sum((a * dt) ** k / math.factorial(k) for k in range(p + 1))
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("method", FIXED)
def test_gradcheck_through_fixed_step_solve(method, f64):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 3, generator=g)
    x0 = torch.randn(2, 3, generator=g, requires_grad=True)
    theta = torch.randn(3, generator=g, requires_grad=True)
    ts = torch.linspace(0.0, 1.0, 6)

    def solve(x0, theta):
        return odeint(lambda t, x: torch.tanh(x @ W) * theta - t * x, x0, ts, method=method)

    assert torch.autograd.gradcheck(solve, (x0, theta))


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_backwards_integration_returns_to_start(method, f64):
    f = lambda t, x: torch.sin(x) * (1 + t) - 0.3 * x  # noqa: E731
    x0 = torch.tensor([[0.5, -1.0], [2.0, 0.1]])
    ts = torch.linspace(0.0, 1.0, 41)
    x1 = odeint(f, x0, ts, method=method, rtol=1e-10, atol=1e-10)
    back = odeint(f, x1, ts.flip(0), method=method, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, x0, rtol=0, atol=1e-8)
    # and backwards on a known solution: x(0) = e^{-a} x(1) for dx/dt = a x
    x_end = odeint(lambda t, x: 0.7 * x, x0, torch.linspace(1.0, 0.0, 41), method=method, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x_end, x0 * math.exp(-0.7), rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_error_falls_with_tolerance(method, f64):
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ts = torch.tensor([0.0, 3.0])
    errors = []
    for tol in (1e-3, 1e-5):
        x1 = odeint(_rotation(1.0), x0, ts, method=method, rtol=tol, atol=tol)
        errors.append((x1 - _rotate(x0, 3.0)).abs().max().item())
    # local error control: the global error is a method-dependent multiple of the tolerance
    assert errors[1] < errors[0] and errors[1] < 1e-2, (method, errors)


def test_dopri5_atol_level_accuracy(f64):
    x0 = torch.tensor([[1.0, -1.0]])
    for tol in (1e-4, 1e-6, 1e-8):
        x1 = odeint(lambda t, x: -x, x0, torch.tensor([0.0, 1.0]), method="dopri5", rtol=tol, atol=tol)
        assert (x1 - x0 * math.exp(-1.0)).abs().max().item() < 10 * tol


@pytest.mark.parametrize("method", ["heun", "dopri5"])
def test_callback_sees_every_step(method, f64):
    seen = []
    ts = torch.linspace(0.0, 1.0, 5)
    out = odeint(lambda t, x: -x, torch.ones(2, 2), ts, method=method, callback=seen.append)
    assert [d["i"] for d in seen] == [0, 1, 2, 3]
    assert [d["t"].item() for d in seen] == pytest.approx(ts[1:].tolist())
    assert torch.equal(seen[-1]["x"], out)


def test_dtypes_and_time_types():
    x0 = torch.ones(3, 2)  # float32 state
    out = odeint(lambda t, x: -x, x0, torch.linspace(0, 1, 11, dtype=torch.float64), method="rk4")
    assert out.dtype == torch.float32
    seen_t = []
    odeint(lambda t, x: seen_t.append(t) or -x, x0, torch.arange(3), method="euler")  # integer ts
    assert all(t.ndim == 0 and t.dtype == torch.float32 for t in seen_t)


def test_network_field_adapts_net_and_cond(f64):
    calls = []

    def net(x, t, *, y):
        calls.append((t.shape, t.dtype, y))
        return -x * y[:, None]

    y = torch.tensor([1.0, 2.0])
    f = network_field(net, cond={"y": y})
    out = odeint(f, torch.ones(2, 3), torch.linspace(0.0, 1.0, 21), method="rk4")
    torch.testing.assert_close(out, torch.exp(-y)[:, None].expand(2, 3), rtol=0, atol=1e-6)
    assert calls[0][0] == (2,) and calls[0][1] == torch.float64 and calls[0][2] is y
    module = torch.nn.Linear(3, 3)
    out = odeint(network_field(lambda x, t: module(x) * t[:, None]), torch.ones(4, 3), torch.linspace(0, 1, 3))
    assert out.shape == (4, 3)


def test_no_host_sync_on_accelerator(device):
    if device.type != "cuda":
        pytest.skip("host-sync detection needs CUDA")
    x0 = torch.ones(8, 4, device=device)
    ts = torch.linspace(0.0, 1.0, 11, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for method in FIXED:
            odeint(lambda t, x: -x * t, x0, ts, method=method, callback=lambda d: None)
        odeint(network_field(lambda x, t: -x * t[:, None]), x0, ts, method="rk4")
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_errors():
    x0 = torch.ones(2, 2)
    ts = torch.linspace(0, 1, 3)
    f = lambda t, x: -x  # noqa: E731
    names = ", ".join(repr(m) for m in METHODS)
    with pytest.raises(ValueError, match=f"method must be one of {names}; got 'rk5'"):
        odeint(f, x0, ts, method="rk5")
    assert "'dopri5'" in names and "'euler'" in names
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        odeint(f, [1.0], ts)
    with pytest.raises(TypeError, match="x0 must be a floating-point tensor"):
        odeint(f, torch.ones(2, dtype=torch.long), ts)
    with pytest.raises(ValueError, match="ts must have 1 dimensions"):
        odeint(f, x0, ts[None])
    with pytest.raises(ValueError, match="ts must hold at least 2 times"):
        odeint(f, x0, ts[:1])
    with pytest.raises(TypeError, match="callback must be callable"):
        odeint(f, x0, ts, callback=3)
    with pytest.raises(ValueError, match="rtol must be in"):
        odeint(f, x0, ts, method="dopri5", rtol=0.0)
    with pytest.raises(ValueError, match="atol must be in"):
        odeint(f, x0, ts, method="dopri5", atol=-1.0)
    with pytest.raises(ValueError, match="strictly increasing or strictly decreasing"):
        odeint(f, x0, torch.tensor([0.0, 1.0, 0.5]), method="dopri5")
    with pytest.raises(TypeError, match="net must be callable"):
        network_field(3)
    with pytest.raises(TypeError, match="cond must be a mapping"):
        network_field(lambda x, t: x, cond=[1])
