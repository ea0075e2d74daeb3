"""DPM-Solver / DPM-Solver++: schedule view, adapters, step functions, samplers and closed-form Gaussian oracles.

The oracle: data ``N(μ, Σ)`` (2-D, one narrow direction), whose VP marginal at ``t`` is ``N(α μ, C_t)`` with
``C_t = α² Σ + σ² I``; the exact noise prediction is ``ε = σ C_t^{-1} (x - α μ)`` and the probability-flow ODE
maps ``x_1`` to ``x_t = α_t μ + C_t^{1/2} C_1^{-1/2} (x_1 - α_1 μ)`` (all ``C_t`` commute), so every solver is
compared with the exact solution from the same noise, in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.generative import ddim, dpm_solver as dpm
from edifice.schedules import VESDE, VPSDE, NoiseSchedule, SubVPSDE, make_schedule

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
_L = torch.tensor([[0.6, 0.0], [0.3, 0.1]], dtype=F64)
SIGMA = _L @ _L.T
EIG, Q = torch.linalg.eigh(SIGMA)
DISCRETE = make_schedule("linear", 1000)
SCHEDULES = {"vp": VPSDE(), "discrete": DISCRETE}


def oracle(schedule, kind="eps"):
    """The exact network of ``kind`` for the Gaussian data, called at the schedule's model time."""
    view = dpm.NoiseScheduleVP(schedule)
    n = None if not view.discrete else view.log_alpha_table.numel()

    def net(x, tm, **cond):
        t = tm.to(F64) if n is None else (tm.to(F64) + 1.0) / n
        a, s = view.alpha(t)[:, None], view.sigma(t)[:, None]
        c = a[:, :, None] ** 2 * SIGMA + s[:, :, None] ** 2 * torch.eye(2, dtype=F64)
        eps = s * torch.linalg.solve(c, (x.to(F64) - a * MU).unsqueeze(-1)).squeeze(-1)
        x0 = (x - s * eps) / a
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}[kind]
        return out.to(x.dtype) + cond.get("shift", 0.0)

    return net


def exact_flow(schedule, x1, t):
    view = dpm.NoiseScheduleVP(schedule)
    tt = torch.tensor([t, 1.0], dtype=F64)
    a, s = view.alpha(tt), view.sigma(tt)
    f = ((a[0] ** 2 * EIG + s[0] ** 2) / (a[1] ** 2 * EIG + s[1] ** 2)).sqrt()
    return a[0] * MU + ((x1 - a[1] * MU) @ Q) * f @ Q.T


def noise(n=64, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


def rms(a, b):
    return (a - b).square().sum(1).mean().sqrt().item()


def slopes(errors):
    return [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]


class Counter:
    def __init__(self, net):
        self.net, self.calls = net, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        return self.net(x, t, **cond)


# ----------------------------------------------------------------------------- schedule view


def test_continuous_view_matches_the_vpsde():
    sde = VPSDE(beta_min=0.2, beta_max=15.0)
    view = dpm.NoiseScheduleVP(sde)
    t = torch.linspace(1e-4, 1.0, 50, dtype=F64)
    torch.testing.assert_close(view.alpha(t), sde.scale(t), rtol=1e-14, atol=0)
    torch.testing.assert_close(view.sigma(t), sde.std(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(view.lambda_t(t), (sde.scale(t) / sde.std(t)).log(), rtol=1e-12, atol=1e-12)
    assert not view.discrete and view.t_eps == 1e-3
    assert torch.equal(view.model_time(t), t) and "VPSDE" in repr(view)


def test_discrete_view_hits_alpha_bar_at_the_knots():
    view = dpm.NoiseScheduleVP(DISCRETE)
    n = torch.arange(1000)
    t = (n + 1).to(F64) / 1000
    torch.testing.assert_close(view.alpha(t) ** 2, DISCRETE.alpha_bar, rtol=1e-12, atol=0)
    torch.testing.assert_close(view.model_time(t), n.to(F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(view.inverse_lambda(view.lambda_t(t)), t, rtol=1e-10, atol=0)
    assert view.discrete and view.t_eps == 1e-3 and "N=1000" in repr(view)
    mid = (t[:-1] + t[1:]) / 2  # piecewise linear in log alpha between the knots
    la = 0.5 * DISCRETE.alpha_bar.log()
    torch.testing.assert_close(view.log_alpha(mid), (la[:-1] + la[1:]) / 2, rtol=1e-12, atol=0)


@given(u=st.floats(0.0, 1.0), which=st.sampled_from(["vp", "discrete", "cosine"]))
def test_inverse_lambda_inverts_lambda(u, which):
    schedule = make_schedule("cosine", 50) if which == "cosine" else SCHEDULES[which]
    view = dpm.NoiseScheduleVP(schedule)
    t = torch.tensor([view.t_eps + u * (1.0 - view.t_eps)], dtype=F64)
    torch.testing.assert_close(view.inverse_lambda(view.lambda_t(t)), t, rtol=1e-9, atol=1e-12)
    assert bool(view.lambda_t(t + 1e-3 * (t < 1)) <= view.lambda_t(t))  # λ decreasing


def test_view_rejects_non_vp_schedules():
    for sde in (SubVPSDE(), VESDE()):
        with pytest.raises(ValueError, match=f"variance preserving.*'{sde.name}' SDE"):
            dpm.NoiseScheduleVP(sde)
        with pytest.raises(ValueError, match="variance preserving"):
            dpm.sample(oracle(VPSDE()), (2, 2), schedule=sde)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule or a VPSDE, got str"):
        dpm.NoiseScheduleVP("vp")
    with pytest.raises(ValueError, match="T >= 2"):
        dpm.NoiseScheduleVP(NoiseSchedule(torch.tensor([0.1])))


# ----------------------------------------------------------------------------- adapters, grids


@pytest.mark.parametrize("which", ["vp", "discrete"])
@pytest.mark.parametrize("kind", ["x0", "v", "score"])
def test_model_wrapper_converts_every_kind(which, kind):
    schedule, x, t = SCHEDULES[which], noise(8), torch.linspace(0.05, 1.0, 8, dtype=F64)
    for pred in ("eps", "x0"):
        ref = dpm.model_wrapper(oracle(schedule), schedule, prediction=pred)(x, t)
        got = dpm.model_wrapper(oracle(schedule, kind), schedule, model_kind=kind, prediction=pred)(x, t)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_model_wrapper_errors():
    with pytest.raises(ValueError, match="model_kind must be one of"):
        dpm.model_wrapper(oracle(VPSDE()), VPSDE(), model_kind="noise")
    with pytest.raises(ValueError, match="prediction must be one of"):
        dpm.model_wrapper(oracle(VPSDE()), VPSDE(), prediction="v")
    with pytest.raises(TypeError, match="net must be callable"):
        dpm.model_wrapper(3, VPSDE())
    with pytest.raises(TypeError, match="cond must be a mapping"):
        dpm.model_wrapper(oracle(VPSDE()), VPSDE(), cond=[1])


@pytest.mark.parametrize("which", ["vp", "discrete"])
def test_time_steps(which):
    view = dpm.NoiseScheduleVP(SCHEDULES[which])
    for skip in dpm.SKIP_TYPES:
        ts = dpm.time_steps(SCHEDULES[which], 7, skip_type=skip)
        assert ts.shape == (8,) and ts.dtype == F64 and bool((ts[1:] < ts[:-1]).all())
        torch.testing.assert_close(ts[[0, -1]], torch.tensor([1.0, view.t_eps], dtype=F64), rtol=1e-12, atol=0)
    lam = view.lambda_t(dpm.time_steps(SCHEDULES[which], 7, skip_type="logSNR", t_end=0.01))
    torch.testing.assert_close(lam.diff(), lam.diff()[:1].expand(7), rtol=1e-9, atol=0)
    sq = dpm.time_steps(SCHEDULES[which], 7, skip_type="time_quadratic").sqrt()
    torch.testing.assert_close(sq.diff(), sq.diff()[:1].expand(7), rtol=1e-12, atol=0)


def test_time_steps_errors():
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        dpm.time_steps(VPSDE(), 0)
    with pytest.raises(ValueError, match="skip_type must be one of"):
        dpm.time_steps(VPSDE(), 5, skip_type="uniform")
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"t_end must be in \(0.0, 1.0\)"):
            dpm.time_steps(VPSDE(), 5, t_end=bad)
    with pytest.raises(ValueError, match=r"t_end must be in \[0.001, 1.0\)"):
        dpm.time_steps(DISCRETE, 5, t_end=5e-4)


def test_singlestep_orders_follow_the_reference():
    assert dpm.singlestep_orders(6, 3) == [3, 2, 1]
    assert dpm.singlestep_orders(10, 3) == [3, 3, 3, 1]
    assert dpm.singlestep_orders(11, 3) == [3, 3, 3, 2]
    assert dpm.singlestep_orders(3, 3) == [2, 1]
    assert dpm.singlestep_orders(7, 2) == [2, 2, 2, 1] and dpm.singlestep_orders(4, 1) == [1] * 4
    for steps in range(3, 30):
        for order in (1, 2, 3):
            assert sum(dpm.singlestep_orders(steps, order)) == steps
    with pytest.raises(ValueError, match="steps must be >= order"):
        dpm.singlestep_orders(2, 3)
    with pytest.raises(ValueError, match="order must be an int <= 3, got 4"):
        dpm.singlestep_orders(8, 4)
    with pytest.raises(ValueError, match="order must be a positive int, got 0"):
        dpm.singlestep_orders(8, 0)


# ----------------------------------------------------------------------------- step functions


@given(ab_t=st.floats(0.01, 0.98), frac=st.floats(0.05, 0.95), seed=st.integers(0, 100))
def test_first_order_equals_ddim_in_both_parameterisations(ab_t, frac, seed):
    ab_s = ab_t + frac * (0.999 - ab_t)  # the target is less noisy
    g = torch.Generator().manual_seed(seed)
    x, eps = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    a_s, s_s, a_t, s_t = math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_s), math.sqrt(1 - ab_s)
    ref = ddim.ddim_step(x, eps, ab_t, ab_s)
    torch.testing.assert_close(dpm.dpm_solver_first_order(x, eps, a_s, s_s, a_t, s_t), ref, rtol=1e-10, atol=1e-10)
    x0 = (x - s_s * eps) / a_s
    torch.testing.assert_close(dpm.dpm_solver_pp_first_order(x, x0, a_s, s_s, a_t, s_t), ref, rtol=1e-10, atol=1e-10)
    out = dpm.multistep_step(x, [eps], [a_s, a_t], [s_s, s_t], algorithm="dpm_solver")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_pp_first_order_to_sigma_zero_returns_x0_and_accepts_batched_coefficients():
    x, x0 = noise(5), noise(5, seed=1)
    torch.testing.assert_close(dpm.dpm_solver_pp_first_order(x, x0, 0.3, math.sqrt(0.91), 1.0, 0.0), x0)
    a = torch.linspace(0.2, 0.9, 5, dtype=F64)
    out = dpm.dpm_solver_first_order(x, x0, a, (1 - a ** 2).sqrt(), a.sqrt(), (1 - a).sqrt())
    for i in range(5):
        ai = float(a[i])
        one = dpm.dpm_solver_first_order(x[i:i + 1], x0[i:i + 1], ai, math.sqrt(1 - ai ** 2), math.sqrt(ai),
                                         math.sqrt(1 - ai))
        torch.testing.assert_close(out[i:i + 1], one, rtol=1e-12, atol=1e-12)


def test_pp_2m_step_equals_the_generic_multistep_step():
    x, m0, m1 = noise(4), noise(4, 1), noise(4, 2)
    view = dpm.NoiseScheduleVP(VPSDE())
    t = torch.tensor([0.7, 0.5, 0.3], dtype=F64)  # s', s, target
    a, s, lam = view.alpha(t), view.sigma(t), view.lambda_t(t)
    mine = dpm.dpm_solver_pp_2m_step(x, m0, m1, lam[2] - lam[1], lam[1] - lam[0], a[2], s[2], s[1])
    ref = dpm.multistep_step(x, [m1, m0], list(a), list(s))
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    r = (lam[1] - lam[0]) / (lam[2] - lam[1])  # the formula written out (Lu et al. 2022b, Alg. 2)
    by_hand = s[2] / s[1] * x - a[2] * torch.expm1(lam[1] - lam[2]) * (m0 + (m0 - m1) / (2 * r))
    torch.testing.assert_close(mine, by_hand, rtol=1e-12, atol=1e-12)


def test_step_function_errors():
    x = noise(4)
    with pytest.raises(ValueError, match=r"eps must have shape \(4, 2\), got \(4, 3\)"):
        dpm.dpm_solver_first_order(x, torch.zeros(4, 3, dtype=F64), 0.5, 0.5, 0.6, 0.4)
    with pytest.raises(ValueError, match=r"sigma_t must be in \(0.0, inf\]"):
        dpm.dpm_solver_first_order(x, x, 0.5, 0.5, 0.6, 0.0)
    with pytest.raises(ValueError, match=r"alpha_s must be in \(0.0, inf\]"):
        dpm.dpm_solver_pp_first_order(x, x, -0.5, 0.5, 0.6, 0.4)
    with pytest.raises(ValueError, match=r"alpha_t must be a number, a 0-dim tensor or have shape \(4,\)"):
        dpm.dpm_solver_pp_first_order(x, x, 0.5, 0.5, torch.ones(3, dtype=F64), 0.4)
    with pytest.raises(TypeError, match="sigma_s must be a floating-point tensor"):
        dpm.dpm_solver_pp_first_order(x, x, 0.5, torch.tensor(1), 0.5, 0.4)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        dpm.dpm_solver_first_order([1.0], x, 0.5, 0.5, 0.6, 0.4)
    with pytest.raises(ValueError, match=r"h must be in \(0.0, inf\]"):
        dpm.dpm_solver_pp_2m_step(x, x, x, 0.0, 0.1, 0.9, 0.4, 0.5)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        dpm.multistep_step(x, [x], [0.5, 0.6], [0.5, 0.4], algorithm="pp")
    with pytest.raises(ValueError, match="outs must be a list of 1 to 3 tensors"):
        dpm.multistep_step(x, [x] * 4, [0.5] * 5, [0.5] * 5)
    with pytest.raises(ValueError, match=r"sigmas must be a list of len\(outs\) \+ 1 = 3 values"):
        dpm.multistep_step(x, [x, x], [0.5, 0.6, 0.7], [0.5, 0.4])
    with pytest.raises(ValueError, match=r"sigmas\[2\] must be in \(0.0, inf\]"):
        dpm.multistep_step(x, [x, x], [0.5, 0.6, 1.0], [0.8, 0.7, 0.0])


def test_singlestep_step_errors():
    model, x = dpm.model_wrapper(oracle(VPSDE()), VPSDE()), noise(4)
    with pytest.raises(ValueError, match=r"r1 must be in \(0.0, 1.0\)"):
        dpm.dpm_solver_second_order(model, x, 0.5, 0.4, VPSDE(), r1=1.0)
    with pytest.raises(ValueError, match="r1 must be < r2, got r1=0.6, r2=0.5"):
        dpm.dpm_solver_third_order(model, x, 0.5, 0.4, VPSDE(), r1=0.6, r2=0.5)
    with pytest.raises(ValueError, match=r"r2 must be in \(0.0, 1.0\)"):
        dpm.dpm_solver_third_order(model, x, 0.5, 0.4, VPSDE(), r2=0.0)
    with pytest.raises(ValueError, match="s and t must satisfy 0 < t < s <= 1, got s=0.4, t=0.5"):
        dpm.dpm_solver_second_order(model, x, 0.4, 0.5, VPSDE())
    with pytest.raises(ValueError, match=r"t must be in \(0.0, inf\]"):
        dpm.dpm_solver_second_order(model, x, 0.4, 0.0, VPSDE())
    with pytest.raises(TypeError, match="model must be callable"):
        dpm.dpm_solver_second_order(None, x, 0.5, 0.4, VPSDE())
    with pytest.raises(ValueError, match=r"model_s must have shape \(4, 2\)"):
        dpm.dpm_solver_third_order(model, x, 0.5, 0.4, VPSDE(), model_s=x[:2])
    with pytest.raises(ValueError, match="algorithm must be one of"):
        dpm.dpm_solver_second_order(model, x, 0.5, 0.4, VPSDE(), algorithm="dpm")
    with pytest.raises(ValueError, match="variance preserving"):
        dpm.dpm_solver_second_order(model, x, 0.5, 0.4, VESDE())


def _uniform_lambda_solve(order, windows, algorithm="dpm_solver", schedule=DISCRETE):
    """Fixed-order singlestep solve over ``windows`` windows uniform in λ, with the public step functions."""
    view, x = dpm.NoiseScheduleVP(schedule), noise()
    model = dpm.model_wrapper(oracle(schedule), schedule, prediction="eps" if algorithm == "dpm_solver" else "x0")
    ts = dpm.time_steps(schedule, windows, skip_type="logSNR", t_end=0.01)
    for s, t in zip(ts[:-1].tolist(), ts[1:].tolist()):
        if order == 1:
            m = model(x, torch.full((x.shape[0],), s, dtype=F64))
            a, sg = view.alpha(torch.tensor([s, t], dtype=F64)), view.sigma(torch.tensor([s, t], dtype=F64))
            step = dpm.dpm_solver_first_order if algorithm == "dpm_solver" else dpm.dpm_solver_pp_first_order
            x = step(x, m, a[0], sg[0], a[1], sg[1])
        else:
            step = dpm.dpm_solver_second_order if order == 2 else dpm.dpm_solver_third_order
            x = step(model, x, s, t, schedule, algorithm=algorithm)
    return rms(x, exact_flow(schedule, noise(), 0.01))


@pytest.mark.parametrize("algorithm", dpm.ALGORITHMS)
def test_singlestep_step_functions_have_their_order(algorithm):
    # DPM-Solver++(3S) is pre-asymptotic below 16 windows here (its error changes sign), hence more windows.
    for order, (lo, hi) in {1: (0.8, 1.2), 2: (1.7, 2.4), 3: (2.4, 3.6)}.items():
        errors = [_uniform_lambda_solve(order, k, algorithm) for k in ((8, 16, 32) if order < 3 else (16, 32, 64))]
        assert all(lo < v < hi for v in slopes(errors)), (order, errors, slopes(errors))


def test_singlestep_step_with_per_sample_times():
    model, x = dpm.model_wrapper(oracle(VPSDE()), VPSDE()), noise(3)
    s, t = torch.tensor([0.9, 0.6, 0.3], dtype=F64), torch.tensor([0.5, 0.4, 0.1], dtype=F64)
    out = dpm.dpm_solver_third_order(model, x, s, t, VPSDE())
    for i in range(3):
        one = dpm.dpm_solver_third_order(model, x[i:i + 1], float(s[i]), float(t[i]), VPSDE())
        torch.testing.assert_close(out[i:i + 1], one, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- samplers

CONFIGS = [("dpm_solver", "singlestep", 1), ("dpm_solver", "singlestep", 2), ("dpm_solver", "singlestep", 3),
           ("dpm_solver_pp", "multistep", 2), ("dpm_solver_pp", "multistep", 3), ("dpm_solver", "multistep", 3),
           ("dpm_solver_pp", "singlestep", 3)]


@pytest.mark.parametrize("which", ["vp", "discrete"])
@pytest.mark.parametrize("algorithm, method, order", CONFIGS)
def test_sampler_recovers_the_data_distribution(which, algorithm, method, order):
    schedule = SCHEDULES[which]
    steps = {1: 100, 2: 40, 3: 20}[order] if method == "singlestep" else 20
    x = dpm.sample(oracle(schedule), (4000, 2), schedule=schedule, steps=steps, algorithm=algorithm, method=method,
                   order=order, skip_type="logSNR", noise=noise(4000, 1))
    assert x.dtype == F64 and x.shape == (4000, 2)
    assert (x.mean(0) - MU).abs().max() < 0.04  # MC standard error ≈ 0.01
    assert (x.T.cov() - SIGMA).abs().max() < 0.04  # MC standard error ≈ 0.01
    exact = exact_flow(schedule, noise(4000, 1), dpm.NoiseScheduleVP(schedule).t_eps)  # same noise, no MC error
    assert (x.mean(0) - exact.mean(0)).abs().max() < 0.01 and (x.T.cov() - exact.T.cov()).abs().max() < 0.03


@pytest.mark.parametrize("which", ["vp", "discrete"])
def test_pp_2m_at_10_and_20_calls_is_close_to_a_1000_step_reference(which):
    schedule, x1 = SCHEDULES[which], noise()
    run = lambda steps, **kw: dpm.sample(oracle(schedule), (64, 2), schedule=schedule, steps=steps,  # noqa: E731
                                         skip_type="logSNR", noise=x1, **kw)
    ref = run(1000, algorithm="dpm_solver_pp")
    assert rms(ref, exact_flow(schedule, x1, 1e-3)) < 2e-5  # the reference itself is the exact ODE solution
    # Stated tolerances (RMS over the batch; data std ≈ 0.67 and 0.094): measured 0.022 and 0.0087.
    for steps, tol in ((10, 0.03), (20, 0.012)):
        err = rms(run(steps, algorithm="dpm_solver_pp"), ref)
        ddim_err = rms(run(steps, algorithm="dpm_solver", order=1), ref)  # DPM-Solver-1 = DDIM
        assert err < tol and err < 0.25 * ddim_err, (steps, err, ddim_err)


def test_sampler_orders_are_visible():
    schedule, x1 = VPSDE(), noise()
    exact = exact_flow(schedule, x1, 1e-3)
    err = lambda steps, **kw: rms(dpm.sample(oracle(schedule), (64, 2), schedule=schedule, steps=steps,  # noqa: E731
                                             skip_type="logSNR", noise=x1, **kw), exact)
    first = [err(n, order=1) for n in (12, 24, 48)]
    second = [err(n, algorithm="dpm_solver_pp") for n in (12, 24, 48)]
    third = [err(n, order=3) for n in (11, 23, 47)]  # steps % 3 == 2: every window of order >= 2
    assert all(0.8 < v < 1.2 for v in slopes(first)), first
    assert all(1.5 < v < 2.4 for v in slopes(second)), second
    assert all(v > 2.7 for v in slopes(third)), third
    assert third[-1] < second[-1] < first[-1]


def test_singlestep_sample_is_the_loop_of_step_functions():
    schedule, x1 = VPSDE(), noise(8)
    model = dpm.model_wrapper(oracle(schedule), schedule)
    got = dpm.sample(oracle(schedule), (8, 2), schedule=schedule, steps=10, skip_type="logSNR", noise=x1)
    ts, x = dpm.time_steps(schedule, 4, skip_type="logSNR"), x1  # orders [3, 3, 3, 1]
    for k, (s, t) in enumerate(zip(ts[:-1].tolist(), ts[1:].tolist())):
        if k < 3:
            x = dpm.dpm_solver_third_order(model, x, s, t, schedule)
        else:
            view = dpm.NoiseScheduleVP(schedule)
            tt = torch.tensor([s, t], dtype=F64)
            a, sg = view.alpha(tt), view.sigma(tt)
            x = dpm.dpm_solver_first_order(x, model(x, tt[:1].expand(8)), a[0], sg[0], a[1], sg[1])
    torch.testing.assert_close(got, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm, method, order", CONFIGS + [("dpm_solver", "multistep", 1)])
@pytest.mark.parametrize("steps", [1, 2, 5, 12])
def test_network_calls_equal_steps(algorithm, method, order, steps):
    if method == "singlestep" and steps < order:
        with pytest.raises(ValueError, match="steps must be >= order"):
            dpm.sample(oracle(VPSDE()), (2, 2), schedule=VPSDE(), steps=steps, algorithm=algorithm, method=method,
                       order=order)
        return
    net, seen = Counter(oracle(VPSDE())), []
    dpm.sample(net, (2, 2), schedule=VPSDE(), steps=steps, algorithm=algorithm, method=method, order=order,
               dtype=F64, callback=seen.append)
    assert net.calls == steps
    assert len(seen) == (steps if method == "multistep" else len(dpm.singlestep_orders(steps, order)))
    assert [d["i"] for d in seen] == list(range(len(seen))) and seen[0]["t"] == 1.0
    assert ("x0" in seen[0]) == (algorithm == "dpm_solver_pp")


@pytest.mark.parametrize("which", ["vp", "discrete"])
@pytest.mark.parametrize("kind", ["x0", "v", "score"])
@pytest.mark.parametrize("algorithm", dpm.ALGORITHMS)
def test_every_model_kind_gives_the_same_samples(which, kind, algorithm):
    schedule, x1 = SCHEDULES[which], noise(8)
    ref = dpm.sample(oracle(schedule), (8, 2), schedule=schedule, steps=6, algorithm=algorithm, noise=x1)
    got = dpm.sample(oracle(schedule, kind), (8, 2), schedule=schedule, model_kind=kind, steps=6,
                     algorithm=algorithm, noise=x1)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_defaults_are_dpm_solver_3_singlestep_and_pp_2m():
    x1, net = noise(4), oracle(VPSDE())
    run = lambda **kw: dpm.sample(net, (4, 2), schedule=VPSDE(), steps=7, noise=x1, **kw)  # noqa: E731
    torch.testing.assert_close(run(), run(method="singlestep", order=3), rtol=0, atol=0)
    pp = run(algorithm="dpm_solver_pp")
    torch.testing.assert_close(pp, run(algorithm="dpm_solver_pp", method="multistep", order=2), rtol=0, atol=0)
    assert not torch.allclose(pp, run(algorithm="dpm_solver_pp", order=3))


def test_multistep_lower_order_final():
    schedule, x1 = VPSDE(), noise(8)
    run = lambda **kw: dpm.sample(oracle(schedule), (8, 2), schedule=schedule, algorithm="dpm_solver_pp",  # noqa
                                  order=3, noise=x1, **kw)
    assert not torch.allclose(run(steps=8), run(steps=8, lower_order_final=False))
    torch.testing.assert_close(run(steps=12), run(steps=12, lower_order_final=False), rtol=0, atol=0)


def test_score_net_with_an_sde_attribute_needs_no_schedule():
    class ScoreNet:  # like score_sde.ScoreNet: forward returns the score, .sde is its SDE
        def __init__(self, sde):
            self.sde, self.net = sde, oracle(sde if sde.name == "vp" else VPSDE(), "score")

        def __call__(self, x, t):
            return self.net(x, t)

    x1 = noise(8)
    got = dpm.sample(ScoreNet(VPSDE()), (8, 2), model_kind="score", steps=8, noise=x1)
    ref = dpm.sample(oracle(VPSDE()), (8, 2), schedule=VPSDE(), steps=8, noise=x1)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="variance preserving"):
        dpm.sample(ScoreNet(VESDE()), (8, 2), model_kind="score", steps=8)


def test_default_schedule_is_ddpm_linear_1000_and_cond_reaches_the_net():
    x1 = noise(4)
    ref = dpm.sample(oracle(DISCRETE), (4, 2), schedule=DISCRETE, steps=5, noise=x1)
    torch.testing.assert_close(dpm.sample(oracle(DISCRETE), (4, 2), steps=5, noise=x1), ref, rtol=0, atol=0)
    shifted = dpm.sample(oracle(DISCRETE), (4, 2), steps=5, noise=x1, cond={"shift": 0.1})
    assert not torch.allclose(shifted, ref)


def test_dtype_device_and_generator():
    net = oracle(VPSDE())
    a = dpm.sample(net, (3, 2), schedule=VPSDE(), steps=4, generator=torch.Generator().manual_seed(3))
    b = dpm.sample(net, (3, 2), schedule=VPSDE(), steps=4, generator=torch.Generator().manual_seed(3))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    c = dpm.sample(net, (3, 2), schedule=VPSDE(), steps=4, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert c.dtype == F64 and (c.float() - a).abs().max() < 1e-4
    module = torch.nn.Linear(2, 2).double()
    out = dpm.sample(lambda x, t: module(x), (3, 2), steps=3, device="cpu", dtype=F64)
    assert out.dtype == F64 and out.device.type == "cpu"


def test_sample_errors():
    net, vp = oracle(VPSDE()), VPSDE()
    bad = [({"algorithm": "dpm"}, ValueError, "algorithm must be one of"),
           ({"method": "adaptive"}, ValueError, "method must be one of"),
           ({"skip_type": "logsnr"}, ValueError, "skip_type must be one of"),
           ({"model_kind": "noise"}, ValueError, "model_kind must be one of"),
           ({"order": 4}, ValueError, "order must be an int <= 3, got 4"),
           ({"order": 0}, ValueError, "order must be a positive int, got 0"),
           ({"order": 2.0}, TypeError, "order must be an int"),
           ({"steps": 0}, ValueError, "steps must be a positive int, got 0"),
           ({"steps": 2, "order": 3}, ValueError, "steps must be >= order for the singlestep solver"),
           ({"schedule": SubVPSDE()}, ValueError, "variance preserving"),
           ({"schedule": VESDE()}, ValueError, "variance preserving"),
           ({"schedule": "vp"}, TypeError, "schedule must be a NoiseSchedule or a VPSDE"),
           ({"t_end": 1.5}, ValueError, "t_end must be in"),
           ({"noise": torch.zeros(3, 2)}, ValueError, r"noise must have shape \(2, 2\)"),
           ({"cond": 3}, TypeError, "cond must be a mapping"),
           ({"dtype": torch.int64}, TypeError, "dtype must be a floating torch.dtype")]
    for kwargs, err, match in bad:
        with pytest.raises(err, match=match):
            dpm.sample(net, (2, 2), **{"schedule": vp, **kwargs})
    with pytest.raises(TypeError, match="net must be callable"):
        dpm.sample("net", (2, 2), schedule=vp)
    with pytest.raises(ValueError, match="shape must be a non-empty tuple"):
        dpm.sample(net, (), schedule=vp)


# ----------------------------------------------------------------------------- diffusers-compatible mode


def test_sample_discrete_calls_and_final_step():
    net, seen = Counter(oracle(DISCRETE)), []
    x = dpm.sample_discrete(net, (4, 2), steps=7, order=3, noise=noise(4), callback=seen.append)
    assert net.calls == 7 and [d["t"] for d in seen] == dpm.discrete_timesteps(1000, 7).tolist()
    torch.testing.assert_close(x, seen[-1]["x0"], rtol=0, atol=0)  # final sigma 0: the last step returns x̂_0
    assert isinstance(seen[0]["t"], int)


@pytest.mark.parametrize("target", ["x0", "v"])
def test_sample_discrete_targets_agree(target):
    ref = dpm.sample_discrete(oracle(DISCRETE), (6, 2), steps=9, noise=noise(6))
    kind = oracle(DISCRETE, target)
    torch.testing.assert_close(dpm.sample_discrete(kind, (6, 2), steps=9, target=target, noise=noise(6)), ref,
                               rtol=1e-9, atol=1e-9)


def test_sample_discrete_and_discrete_timesteps_errors():
    net = oracle(DISCRETE)
    for kwargs, err, match in [({"steps": 1000}, ValueError, "steps must be an int <= 999, got 1000"),
                               ({"steps": 0}, ValueError, "steps must be a positive int"),
                               ({"order": 4}, ValueError, "order must be an int <= 3"),
                               ({"target": "score"}, ValueError, "target must be one of"),
                               ({"spacing": "uniform"}, ValueError, "spacing must be one of"),
                               ({"schedule": VPSDE()}, TypeError, "schedule must be a NoiseSchedule or None"),
                               ({"cond": []}, TypeError, "cond must be a mapping")]:
        with pytest.raises(err, match=match):
            dpm.sample_discrete(net, (2, 2), **kwargs)
    with pytest.raises(ValueError, match="T must be an int >= 2, got 1"):
        dpm.discrete_timesteps(1, 1)
