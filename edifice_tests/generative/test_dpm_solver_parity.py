"""Parity of DPM-Solver(++) with diffusers 0.42.1's DPMSolverMultistepScheduler and DPMSolverSinglestepScheduler.

Every chain runs the same float64 eps function (the exact noise prediction of Gaussian data, or a small random
float64 network) from the same initial noise, and must agree within 1e-6 (relative to the data scale). diffusers
keeps its sigmas in float32 ("float32" below; "float64" swaps in our float64 values) and its multistep scheduler
casts the sample to float32 before every update, so multistep chains agree to ~5e-7, not 1e-12; the singlestep
scheduler has no such cast and agrees to ~1e-15.
"""

from __future__ import annotations

import pytest
import torch

from edifice.generative import dpm_solver as dpm
from edifice.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64
T = 1000
SCHEDULE = make_schedule("linear", T)
MU = torch.tensor([1.0, -0.5], dtype=F64)
_L = torch.tensor([[0.6, 0.0], [0.3, 0.1]], dtype=F64)
SIGMA = _L @ _L.T
TARGETS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
ALGORITHMS = {"dpm_solver": "dpmsolver", "dpm_solver_pp": "dpmsolver++"}


def gaussian_net(target="eps"):
    """Exact prediction of ``target`` for data ``N(μ, Σ)`` at (possibly fractional) DDPM steps ``t``."""
    view = dpm.NoiseScheduleVP(SCHEDULE)

    def net(x, t):
        tc = (t.to(F64) + 1.0) / T
        a, s = view.alpha(tc)[:, None], view.sigma(tc)[:, None]
        c = a[:, :, None] ** 2 * SIGMA + s[:, :, None] ** 2 * torch.eye(2, dtype=F64)
        eps = s * torch.linalg.solve(c, (x - a * MU).unsqueeze(-1)).squeeze(-1)
        x0 = (x - s * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[target]

    return net


def random_net():
    """A small random float64 network of ``(x, t)`` (an arbitrary smooth eps field)."""
    g = torch.Generator().manual_seed(7)
    w1, w2 = torch.randn(3, 16, generator=g, dtype=F64), 0.3 * torch.randn(16, 2, generator=g, dtype=F64)
    return lambda x, t: torch.tanh(torch.cat([x, (t.to(F64) / T)[:, None]], 1) @ w1) @ w2


def x_T(n=6):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


def scheduler(cls=None, *, final="zero", **kw):
    """A diffusers scheduler with num_train_timesteps=1000, linear betas and otherwise default options."""
    return (cls or diffusers.DPMSolverMultistepScheduler)(num_train_timesteps=T, beta_schedule="linear",
                                                          final_sigmas_type=final, **kw)


def set_timesteps(s, steps, precision):
    s.set_timesteps(steps)
    if precision == "float64":  # the same sigmas in float64, from our float64 alpha_bar
        ab = SCHEDULE.alpha_bar[s.timesteps]
        last = torch.zeros(1, dtype=F64) if s.config.final_sigmas_type == "zero" else \
            ((1 - SCHEDULE.alpha_bar[:1]) / SCHEDULE.alpha_bar[:1]).sqrt()
        s.sigmas = torch.cat([((1 - ab) / ab).sqrt(), last])
    return s


def run(s, net, x, **step_kw):
    for t in s.timesteps:
        x = s.step(net(x, t.expand(x.shape[0]).to(F64)), t, x, **step_kw).prev_sample
    return x


def close(mine, ref, tol):
    """Agree to ``tol`` relative to the data scale (a random eps field drives x̂_0 to ~400)."""
    assert mine.dtype == ref.dtype == F64 and mine.shape == ref.shape
    err = (mine - ref).abs().max().item()
    assert err <= tol * max(1.0, ref.abs().max().item()), err


@pytest.mark.parametrize("spacing", dpm.SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 20, 25, 50, 100, 999])
def test_discrete_timesteps_equal_diffusers(spacing, steps):
    s = scheduler(timestep_spacing=spacing)
    s.set_timesteps(steps)
    assert torch.equal(dpm.discrete_timesteps(T, steps, spacing), s.timesteps)


def test_trailing_drops_the_stray_point_diffusers_keeps():
    s = scheduler(timestep_spacing="trailing")
    s.set_timesteps(61)
    assert len(s.timesteps) == 62 and torch.equal(dpm.discrete_timesteps(T, 61, "trailing"), s.timesteps[:61])


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 14, 15, 20])
def test_sample_discrete_equals_diffusers_defaults(precision, order, steps):
    ref = run(set_timesteps(scheduler(solver_order=order), steps, precision), gaussian_net(), x_T())
    # One step lands on x̂_0 = (x - σ ε)/α from t = 999 (α ≈ 0.0064): float32 sigmas then cost ~1e-5.
    tol = 2e-5 if precision == "float32" and steps == 1 else 1e-6
    close(dpm.sample_discrete(gaussian_net(), (6, 2), steps=steps, order=order, noise=x_T()), ref, tol)


@pytest.mark.parametrize("target", ["x0", "v"])
@pytest.mark.parametrize("spacing", dpm.SPACINGS)
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_sample_discrete_targets_spacings_and_options_equal_diffusers(target, spacing, lower_order_final):
    s = scheduler(solver_order=3, prediction_type=TARGETS[target], timestep_spacing=spacing,
                  lower_order_final=lower_order_final)
    ref = run(set_timesteps(s, 12, "float32"), gaussian_net(target), x_T())
    mine = dpm.sample_discrete(gaussian_net(target), (6, 2), steps=12, order=3, target=target, spacing=spacing,
                               lower_order_final=lower_order_final, noise=x_T())
    close(mine, ref, 1e-6)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("steps", [4, 20])
def test_sample_discrete_with_a_random_network_equals_diffusers(precision, steps):
    ref = run(set_timesteps(scheduler(), steps, precision), random_net(), x_T())
    close(dpm.sample_discrete(random_net(), (6, 2), steps=steps, noise=x_T()), ref, 1e-6)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_multistep_step_formulas_equal_diffusers_per_step(algorithm, order):
    """Drive diffusers' chain; at each step our public step reproduces its update from the same state.

    diffusers multiplies the float32-cast sample by a 0-dim float64 coefficient, which PyTorch computes in
    float32, so even a float32-representable sample leaves a ~1e-7 difference per step.
    """
    s = set_timesteps(scheduler(solver_order=order, algorithm_type=ALGORITHMS[algorithm], final="sigma_min"), 9,
                      "float64")
    net, x, outs = random_net(), x_T(), []
    ab = torch.cat([SCHEDULE.alpha_bar[s.timesteps], SCHEDULE.alpha_bar[:1]])
    alphas, sigmas = ab.sqrt(), (1 - ab).sqrt()
    for i, t in enumerate(s.timesteps):
        eps = net(x, t.expand(6).double())
        outs = (outs + [eps if algorithm == "dpm_solver" else (x - sigmas[i] * eps) / alphas[i]])[-3:]
        k = 1 if i == 0 or i == 8 else 2 if order == 2 or i == 1 or i == 7 else 3  # diffusers' lower orders
        k = min(k, order)
        mine = dpm.multistep_step(x, outs[-k:], list(alphas[i + 1 - k:i + 2]), list(sigmas[i + 1 - k:i + 2]),
                                  algorithm=algorithm)
        x = s.step(eps, t, x).prev_sample
        close(mine, x, 1e-6)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [9, 27])
def test_continuous_time_multistep_sample_equals_diffusers(algorithm, order, steps):
    """``sample`` on the discrete schedule, time-uniform to ``t = 1/N``: diffusers' grid with final ``sigma_min``.

    ``linspace(999, 0, steps + 1)`` is integer for steps dividing 999; the reference's ``lower_order_final`` for
    ``steps < 10`` matches diffusers' for ``< 15`` at these step counts.
    """
    s = scheduler(solver_order=order, algorithm_type=ALGORITHMS[algorithm], final="sigma_min")
    ref = run(set_timesteps(s, steps, "float64"), gaussian_net(), x_T())
    mine = dpm.sample(gaussian_net(), (6, 2), schedule=SCHEDULE, steps=steps, algorithm=algorithm,
                      method="multistep", order=order, noise=x_T())
    close(mine, ref, 1e-6)


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("order, steps", [(1, 9), (1, 27), (2, 3), (2, 9), (2, 27), (2, 37)])
def test_singlestep_sample_equals_diffusers_singlestep_scheduler(algorithm, order, steps):
    """DPM-Solver-1/2 windows (orders [2, ..., 2, 1] for odd steps) equal diffusers' ``lower_order_final`` orders.

    Exact only where diffusers' rounded linspace timesteps are time-uniform: ``steps`` dividing 999 (all odd).

    Order 3 is not compared: diffusers' singlestep third order builds its second intermediate point with the
    ``midpoint`` second-order update instead of Lu et al.'s ``φ_22`` formula (Alg. 5), so the two differ at
    ``O(h³)`` per window by design.
    """
    s = scheduler(diffusers.DPMSolverSinglestepScheduler, solver_order=order, algorithm_type=ALGORITHMS[algorithm],
                  final="sigma_min")
    ref = run(set_timesteps(s, steps, "float64"), gaussian_net(), x_T())
    mine = dpm.sample(gaussian_net(), (6, 2), schedule=SCHEDULE, steps=steps, algorithm=algorithm,
                      method="singlestep", order=order, noise=x_T())
    close(mine, ref, 1e-12)
