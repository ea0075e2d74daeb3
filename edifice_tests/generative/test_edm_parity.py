"""Parity of EDM's Euler / Heun samplers on a DDPM network with diffusers' Euler / Heun discrete schedulers.

diffusers runs a DDPM network through Karras et al.'s samplers as ``edm.sample(edm.vp_denoiser(net, schedule),
sigmas=edm.vp_sigmas(schedule, N))`` does: ladder ``σ = √((1-ᾱ)/ᾱ)`` interpolated at ``linspace(0, T-1, N)``,
model input ``x / √(σ² + 1)`` at the matching timestep, ``x_0 = x - σ ε`` (or the v / sample conversions).
Both loops get the same float64 model (exact Gaussian prediction plus a small random float64 network of
``(x, t)``) and the same initial noise.

diffusers computes in float32 in several places whatever the data's dtype: ``alphas_cumprod``, the ladder and the
timesteps, the input scale ``(σ² + 1) ** 0.5`` of a float32 ``σ``, and ``EulerDiscreteScheduler.step`` casts the
sample to float32. So float64 runs agree to ~5e-7 of the data scale, not 1e-12: within 1e-6 with diffusers'
``alphas_cumprod`` swapped for our float64 schedule (as in test_ddim_parity.py), 1e-5 with stock diffusers.
``N = 2, 3`` are left out of the loops: they jump to ``σ_0 ≈ 0.01`` from ``σ ≥ 2``, and Heun's correction, which
divides by ``σ_next``, amplifies diffusers' float32 rounding ~10³-10⁴-fold for the x0 / v targets (the formulas
still agree; the ladders are compared for those ``N`` too).

Not compared: diffusers' Euler ``s_churn`` evaluates the model *before* adding the churn noise (at ``σ``, not at
``σ̂``), which is not Algorithm 2 of Karras et al.; HeunDiscreteScheduler has no churn at all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edifice.generative import ddpm, edm
from edifice.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

F64 = torch.float64
T = 1000
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
BETAS = {"ddpm": (1e-4, 0.02), "heun_default": (0.00085, 0.012)}  # EulerDiscrete's / HeunDiscrete's defaults
STEP_COUNTS = (1, 12, 30)
CLASSES = {"euler": "EulerDiscreteScheduler", "heun": "HeunDiscreteScheduler"}

_g = torch.Generator().manual_seed(0)
MU = torch.tensor([0.5, -0.3, 0.2], dtype=F64)
_A = 0.4 * torch.randn(3, 3, generator=_g, dtype=F64)
COV = _A @ _A.T + 0.05 * torch.eye(3, dtype=F64)
W1, W_T = torch.randn(3, 16, generator=_g, dtype=F64), torch.randn(16, generator=_g, dtype=F64)
W2 = 0.05 * torch.randn(16, 3, generator=_g, dtype=F64)
NOISE = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)


def _schedule(betas: str):
    start, end = BETAS[betas]
    return make_schedule("linear", T, beta_start=start, beta_end=end)


def _model(schedule, target):
    """``net(x_vp, t)``: the exact Gaussian prediction at (fractional) ``t`` plus a small random network."""
    table = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt().numpy()
    eye = torch.eye(3, dtype=F64)

    def net(x, t):
        ab = 1 / (1 + torch.from_numpy(np.interp(t.numpy(), np.arange(T), table)) ** 2)  # (B,)
        cov = ab[:, None, None] * COV + (1 - ab)[:, None, None] * eye  # (B, 3, 3)
        eps = (1 - ab).sqrt()[:, None] * torch.linalg.solve(cov, (x - ab.sqrt()[:, None] * MU)[..., None])[..., 0]
        eps = eps + torch.tanh(x @ W1 + (t / 1000)[:, None] * W_T) @ W2
        x0 = (x - (1 - ab).sqrt()[:, None] * eps) / ab.sqrt()[:, None]
        return ddpm.prediction_target(x0, eps, ab, target=target)

    return net


def _scheduler(kind, betas, target, float64):
    start, end = BETAS[betas]
    s = getattr(diffusers, CLASSES[kind])(num_train_timesteps=T, beta_schedule="linear", beta_start=start,
                                          beta_end=end, prediction_type=PREDICTION[target])
    if float64:
        s.alphas_cumprod = _schedule(betas).alpha_bar.clone()
    return s


def _dedup(kind, v):
    """HeunDiscreteScheduler repeats every level but the first (and its timesteps likewise):
    ``[s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0]`` -> ``[s0, s1, ..., s_{N-1}, 0]``."""
    return v if kind == "euler" else torch.cat([v[:1], v[1::2]])


def _heun_states(xs):
    """Of the scheduler's ``2N - 1`` steps, the states after each second-order step and after the final Euler step."""
    return xs[1::2] + xs[-1:]


def _close(mine, ref, tol):
    assert mine.dtype == ref.dtype and mine.shape == ref.shape
    err = (mine - ref).abs().max().item()
    assert err <= tol * (1.0 + ref.abs().max().item()), err


@pytest.mark.parametrize("float64", [True, False], ids=["float64", "stock"])
@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_ladder_and_timesteps_equal_diffusers(kind, betas, float64):
    schedule = _schedule(betas)
    den = edm.vp_denoiser(lambda x, t: x, schedule)
    for steps in STEP_COUNTS + (2, 3, 18, 50, 999, 1000):
        s = _scheduler(kind, betas, "eps", float64)
        s.set_timesteps(steps)
        ref = _dedup(kind, s.sigmas).double()
        mine = edm.vp_sigmas(schedule, steps)
        rel = ((mine - ref).abs() / ref.clamp(min=1e-30)).max()
        # float32 rounding of σ and of the timesteps; stock diffusers' float32 ᾱ_0 = 1 - 1e-4 keeps ~4 digits of σ_0
        assert rel <= (5e-7 if float64 else 2e-4), (steps, rel)
        assert float(s.init_noise_sigma) == pytest.approx(float(mine[0]), rel=5e-7 if float64 else 2e-4)
        # the timesteps the network sees: exact inverse interpolation vs diffusers' float32 linspace
        ts = _dedup(kind, s.timesteps).double()
        torch.testing.assert_close(den.timestep(mine[:-1]), ts, rtol=0, atol=1e-4 if float64 else 0.05)


@pytest.mark.parametrize("float64", [True, False], ids=["float64", "stock"])
@pytest.mark.parametrize("betas", sorted(BETAS))
@pytest.mark.parametrize("target", ddpm.TARGETS)
@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_sampler_equals_diffusers(kind, target, betas, float64):
    schedule = _schedule(betas)
    net = _model(schedule, target)
    tol = 1e-6 if float64 else 1e-5
    for steps in STEP_COUNTS:
        s = _scheduler(kind, betas, target, float64)
        s.set_timesteps(steps)
        x, ref_states = NOISE * s.init_noise_sigma, []
        for t in s.timesteps:
            out = net(s.scale_model_input(x, t), t.to(F64).expand(x.shape[0]))
            x = s.step(out, t, x).prev_sample
            ref_states.append(x)
        ref_states = _heun_states(ref_states) if kind == "heun" else ref_states
        states = []
        mine = edm.sample(edm.vp_denoiser(net, schedule, target=target), NOISE.shape, sampler=kind,
                          sigmas=edm.vp_sigmas(schedule, steps), noise=NOISE, callback=states.append)
        assert len(states) == len(ref_states) == steps
        for state, ref in zip(states, ref_states):
            _close(state["x"], ref, tol)
        _close(mine, x, tol)


def test_heun_state_mapping():
    assert _heun_states(list(range(2 * 4 - 1))) == [1, 3, 5, 6] and _heun_states([0]) == [0]
    s = _scheduler("heun", "ddpm", "eps", False)
    s.set_timesteps(4)
    assert len(s.timesteps) == 7 and torch.equal(_dedup("heun", s.timesteps), s.timesteps[[0, 1, 3, 5]])
