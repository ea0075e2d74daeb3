"""Parity of the DDPM / DDIM steps and timestep spacings with diffusers' schedulers.

diffusers keeps ``alphas_cumprod`` in float32, so steps agree to about 1e-6, not 1e-12 (FACTS.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edifice.generative import ddim, ddpm
from edifice.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

T = 1000
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
STEP_COUNTS = (1, 2, 3, 7, 10, 25, 50, 100, 250, 999, 1000)


def _ddim_scheduler(spacing="leading", target="eps", clip=False):
    return diffusers.DDIMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=clip,
        clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0, timestep_spacing=spacing,
        prediction_type=PREDICTION[target],
    )


def _ddpm_scheduler(spacing="leading", target="eps", variance="small", clip=False):
    return diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=clip,
        clip_sample_range=1.0, variance_type=f"fixed_{variance}", timestep_spacing=spacing, steps_offset=0,
        prediction_type=PREDICTION[target],
    )


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_schedule_equals_diffusers_alphas_cumprod():
    ours = make_schedule("linear", T).alpha_bar
    theirs = _ddpm_scheduler().alphas_cumprod.double()
    assert ((ours - theirs).abs() / ours).max() < 2e-6


def test_timesteps_equal_diffusers(spacing, steps):
    for scheduler in (_ddim_scheduler(spacing), _ddpm_scheduler(spacing)):
        scheduler.set_timesteps(steps)
        assert torch.equal(ddim.timesteps(T, steps, spacing=spacing), scheduler.timesteps.long())


def test_trailing_drops_the_stray_point_diffusers_keeps():
    # np.arange(1000, 0, -1000/61) has 62 points because of rounding; diffusers then ends on t = -1.
    scheduler = _ddim_scheduler("trailing")
    scheduler.set_timesteps(61)
    ours = ddim.timesteps(T, 61, spacing="trailing")
    assert len(ours) == 61 and len(scheduler.timesteps) == 62 and int(scheduler.timesteps[-1]) == -1
    assert torch.equal(ours, scheduler.timesteps[:61].long())


def _close(mine, ref, tol=1e-6):
    """Agree to ``tol`` relative to the tensor's scale (random network outputs make x0 reach ~100)."""
    assert mine.dtype == ref.dtype and mine.shape == ref.shape
    err = (mine - ref).abs().max().item()
    print(err / (1.0 + ref.abs().max().item()))
    assert err <= tol * (1.0 + ref.abs().max().item()), err


def _inputs(seed, shape=(4, 3, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))


@pytest.mark.parametrize("target", ddpm.TARGETS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_equals_diffusers(target, eta, clip):
    steps = 20
    scheduler = _ddim_scheduler("leading", target, clip)
    scheduler.set_timesteps(steps)
    alpha_bar = scheduler.alphas_cumprod.double()  # the same (float32) values, so only the step formula differs
    x, out, z = _inputs(0)
    for t in scheduler.timesteps.tolist():
        prev = t - T // steps  # diffusers' previous step; -1 -> alpha_bar = 1 (set_alpha_to_one)
        ab_t = alpha_bar[t]
        ab_prev = alpha_bar[prev] if prev >= 0 else 1.0
        ref = scheduler.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        eps = ddpm.convert_prediction(out, x, ab_t, target=target)[1]
        mine = ddim.ddim_step(x, eps, ab_t, ab_prev, eta=eta, noise=z if eta > 0 else None,
                              clip_x0=1.0 if clip else None)
        _close(mine, ref)


@pytest.mark.parametrize("target", ddpm.TARGETS)
@pytest.mark.parametrize("variance", ddpm.VARIANCES)
@pytest.mark.parametrize("steps", [None, 50])
def test_ddpm_step_equals_diffusers(target, variance, steps):
    """Full chain (t -> t-1) and respaced chains (t -> previous timestep), with diffusers' own noise draw."""
    schedule = make_schedule("linear", T)
    scheduler = _ddpm_scheduler("trailing", target, variance)
    if steps is None:
        ts = [999, 998, 500, 1, 0]
    else:
        scheduler.set_timesteps(steps)
        ts = scheduler.timesteps.tolist()
    x, out, _ = _inputs(1, (3, 2))
    for i, t in enumerate(ts):
        prev = t - 1 if steps is None else (ts[i + 1] if i + 1 < len(ts) else -1)
        ref = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=x.dtype)
        mine = ddpm.ancestral_step(x, t, out, schedule, t_prev=prev, target=target, variance=variance, noise=z)
        _close(mine, ref)


def test_ddpm_clip_equals_diffusers():
    schedule = make_schedule("linear", T)
    scheduler = _ddpm_scheduler(clip=True)
    x, out, _ = _inputs(2, (3, 2))
    for t in (900, 10, 0):
        ref = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        mine = ddpm.ancestral_step(x, t, out, schedule, clip_x0=1.0, noise=z)
        _close(mine, ref)


def test_q_sample_and_velocity_equal_diffusers():
    schedule = make_schedule("linear", T)
    scheduler = _ddpm_scheduler()
    x0, noise, _ = _inputs(3, (4, 2))
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(ddpm.q_sample(x0, t, noise, schedule), scheduler.add_noise(x0, noise, t),
                               rtol=1e-6, atol=1e-6)
    ab = schedule.alpha_bar[t]
    torch.testing.assert_close(ddpm.prediction_target(x0, noise, ab, target="v"),
                               scheduler.get_velocity(x0, noise, t), rtol=1e-6, atol=1e-6)
