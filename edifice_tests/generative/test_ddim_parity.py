"""Parity of the DDPM / DDIM steps and timestep spacings with diffusers' schedulers.

Each step is compared twice: against diffusers with its ``alphas_cumprod`` swapped for our float64 values
(the formulas must agree to ~1e-10), and against stock diffusers, whose float32 ``alphas_cumprod`` limits
agreement to ~1e-6 - 1e-5 of the data scale (FACTS.md) — and to ~1e-4 for the first few steps, where diffusers
forms ``beta_t = 1 - ᾱ_t / ᾱ_{t-1} ≈ 1e-4`` in float32.
"""

from __future__ import annotations

import pytest
import torch

from edifice.generative import ddim, ddpm
from edifice.schedules import make_schedule

diffusers = pytest.importorskip("diffusers")

T = 1000
PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
STEP_COUNTS = (1, 2, 3, 7, 10, 25, 50, 100, 250, 999, 1000)
SCHEDULE = make_schedule("linear", T)


def _tol(precision: str, t: int) -> float:
    if precision == "float64":
        return 1e-9  # not 1e-12: diffusers clamps the DDPM variance at 1e-20, so sigma >= 1e-10
    return 1e-5 if t >= 20 else 3e-4


def _scheduler(kind: str, precision: str, *, spacing="leading", target="eps", clip=False, **kw):
    cls = diffusers.DDIMScheduler if kind == "ddim" else diffusers.DDPMScheduler
    if kind == "ddim":
        kw.update(set_alpha_to_one=True)
    s = cls(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=clip,
            clip_sample_range=1.0, steps_offset=0, timestep_spacing=spacing, prediction_type=PREDICTION[target], **kw)
    if precision == "float64":
        s.alphas_cumprod = SCHEDULE.alpha_bar.clone()
        s.one = s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return s


def _close(mine: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Agree to ``tol`` relative to the tensor's scale (a random network output makes x̂_0 reach ~100)."""
    assert mine.dtype == ref.dtype and mine.shape == ref.shape
    err = (mine - ref).abs().max().item()
    assert err <= tol * (1.0 + ref.abs().max().item()), err


def _inputs(seed: int, shape=(4, 3, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


def test_schedule_equals_diffusers_alphas_cumprod():
    theirs = _scheduler("ddpm", "float32").alphas_cumprod.double()
    assert ((SCHEDULE.alpha_bar - theirs).abs() / SCHEDULE.alpha_bar).max() < 2e-6


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
@pytest.mark.parametrize("steps", STEP_COUNTS)
def test_timesteps_equal_diffusers(spacing, steps):
    for kind in ("ddim", "ddpm"):
        scheduler = _scheduler(kind, "float32", spacing=spacing)
        scheduler.set_timesteps(steps)
        assert torch.equal(ddim.timesteps(T, steps, spacing=spacing), scheduler.timesteps.long())


def test_trailing_drops_the_stray_point_diffusers_keeps():
    # np.arange(1000, 0, -1000/61) has 62 points because of rounding; diffusers then ends on t = -1.
    scheduler = _scheduler("ddim", "float32", spacing="trailing")
    scheduler.set_timesteps(61)
    ours = ddim.timesteps(T, 61, spacing="trailing")
    assert len(ours) == 61 and len(scheduler.timesteps) == 62 and int(scheduler.timesteps[-1]) == -1
    assert torch.equal(ours, scheduler.timesteps[:61].long())


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("target", ddpm.TARGETS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_equals_diffusers(precision, target, eta, clip):
    steps = 20
    scheduler = _scheduler("ddim", precision, target=target, clip=clip)
    scheduler.set_timesteps(steps)
    x, out, z = _inputs(0)
    for t in scheduler.timesteps.tolist():
        prev = t - T // steps  # diffusers' previous step ("leading" spacing); -1 means alpha_bar = 1
        ab_t = SCHEDULE.alpha_bar[t]
        ab_prev = SCHEDULE.alpha_bar[prev] if prev >= 0 else 1.0
        ref = scheduler.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        eps = ddpm.convert_prediction(out, x, ab_t, target=target)[1]
        mine = ddim.ddim_step(x, eps, ab_t, ab_prev, eta=eta, noise=z if eta > 0 else None,
                              clip_x0=1.0 if clip else None)
        _close(mine, ref, _tol(precision, t))


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("target", ddpm.TARGETS)
@pytest.mark.parametrize("variance", ddpm.VARIANCES)
def test_ddpm_full_chain_step_equals_diffusers(precision, target, variance):
    scheduler = _scheduler("ddpm", precision, target=target, variance_type=f"fixed_{variance}")
    x, out, _ = _inputs(1, (3, 2))
    for t in (999, 998, 700, 500, 100, 20, 19, 5, 2, 1, 0):
        ref = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)  # diffusers' draw
        mine = ddpm.ancestral_step(x, t, out, SCHEDULE, target=target, variance=variance, noise=z)
        _close(mine, ref, _tol(precision, t))


@pytest.mark.parametrize("spacing", ddim.SPACINGS)
@pytest.mark.parametrize("variance", ddpm.VARIANCES)
def test_ddpm_respaced_step_equals_diffusers(spacing, variance):
    scheduler = _scheduler("ddpm", "float64", spacing=spacing, variance_type=f"fixed_{variance}")
    scheduler.set_timesteps(50)
    ts = scheduler.timesteps.tolist()
    assert ts == ddim.timesteps(T, 50, spacing=spacing).tolist()
    x, out, _ = _inputs(2, (3, 2))
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        ref = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=x.dtype)
        mine = ddpm.ancestral_step(x, t, out, SCHEDULE, t_prev=prev, variance=variance, noise=z)
        if prev == -1 and t > 0 and variance == "large":
            # Known difference: diffusers adds noise whenever t > 0, so with "large" variance its last step
            # from t = 19 ("trailing") stays noisy; ours lands on the mean (no noise on the step to x_0).
            mean = ddpm.ancestral_step(x, t, out, SCHEDULE, t_prev=prev, variance=variance)
            _close(mine, mean, 0.0)
            _close(ref, mean + (1 - SCHEDULE.alpha_bar[t]).sqrt() * z, _tol("float64", t))
            continue
        _close(mine, ref, _tol("float64", t))


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_ddpm_clip_equals_diffusers(precision):
    scheduler = _scheduler("ddpm", precision, clip=True)
    x, out, _ = _inputs(3, (3, 2))
    for t in (900, 30, 0):
        ref = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(t), dtype=x.dtype)
        mine = ddpm.ancestral_step(x, t, out, SCHEDULE, clip_x0=1.0, noise=z)
        _close(mine, ref, _tol(precision, t))


def test_q_sample_and_velocity_equal_diffusers():
    scheduler = _scheduler("ddpm", "float64")
    x0, noise, _ = _inputs(4, (4, 2))
    t = torch.tensor([0, 10, 500, 999])
    _close(ddpm.q_sample(x0, t, noise, SCHEDULE), scheduler.add_noise(x0, noise, t), 1e-12)
    v = ddpm.prediction_target(x0, noise, SCHEDULE.alpha_bar[t], target="v")
    _close(v, scheduler.get_velocity(x0, noise, t), 1e-12)
