"""The fit loop with several optimisers: GAN phases (n_critic, separate learning rates and betas, weight
clipping after each critic step), exact resume of a two-optimiser run, and the families' logs in log.jsonl."""

from __future__ import annotations

import json

import pytest
import torch

from edifice.train import fit
from edifice.train.fit import read_log
from edifice.train.checkpoint import load_checkpoint
from edifice.train.recipes import get_recipe

GAN_TINY = {"hidden": 16, "depth": 1}
KW = dict(batch_size=32, lr=2e-3, seed=5, progress=False, plots=False, log_every=1, ckpt_every=4,
          lr_schedule="constant")


def test_gan_resume_is_bit_identical_with_two_optimisers(tmp_path):
    opts = dict(GAN_TINY, variant="wgan_gp")
    fit("gan", "8gaussians", steps=8, out=tmp_path / "full", options=opts, **KW)
    fit("gan", "8gaussians", steps=4, out=tmp_path / "two", options=opts, **KW)
    fit("gan", "8gaussians", steps=8, out=tmp_path / "two", options=opts, **KW)
    ta, ma = load_checkpoint(tmp_path / "full")
    tb, mb = load_checkpoint(tmp_path / "two")
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim/discriminator/state/") for k in ta)
    assert any(k.startswith("optim/generator/state/") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert set(ma["optim"]) == {"discriminator", "generator"}
    # WGAN-GP's Adam betas (0, 0.9) reached both optimisers.
    assert ma["optim"]["discriminator"]["param_groups"][0]["betas"] == [0.0, 0.9]


def test_n_critic_steps_the_discriminator_n_times_per_step(tmp_path):
    result = fit("gan", "8gaussians", steps=3, out=tmp_path / "r", options=dict(GAN_TINY, n_critic=4), **KW)
    tensors, meta = load_checkpoint(tmp_path / "r")
    d_steps = [v for k, v in tensors.items() if k.startswith("optim/discriminator/state/") and k.endswith("/step")]
    g_steps = [v for k, v in tensors.items() if k.startswith("optim/generator/state/") and k.endswith("/step")]
    assert d_steps and g_steps
    assert all(float(v) == 12 for v in d_steps) and all(float(v) == 3 for v in g_steps)
    assert result.step == 3


def test_separate_learning_rates(tmp_path):
    fit("gan", "8gaussians", steps=2, out=tmp_path / "r", options=dict(GAN_TINY, lr_d=4e-3, lr_g=1e-3), **KW)
    _, meta = load_checkpoint(tmp_path / "r")
    assert meta["optim"]["discriminator"]["param_groups"][0]["lr"] == pytest.approx(4e-3)
    assert meta["optim"]["generator"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_wgan_clips_the_critic_after_every_step():
    result = fit("gan", "8gaussians", steps=3, options=dict(GAN_TINY, variant="wgan"), **KW)
    weights = torch.cat([p.detach().flatten() for p in result.nets.discriminator.parameters()])
    assert float(weights.abs().max()) <= 0.01 + 1e-7


def test_gan_logs_both_phases(tmp_path):
    fit("gan", "8gaussians", steps=2, out=tmp_path / "r", options=GAN_TINY, **KW)
    entry = read_log(tmp_path / "r")[-1]
    assert {"loss", "loss_discriminator", "loss_generator", "discriminator/d_real"} <= set(entry)
    assert entry["loss"] == entry["loss_discriminator"]


def test_family_logs_reach_log_jsonl(tmp_path):
    fit("vae", "moons", steps=2, out=tmp_path / "r", options={"hidden": 16, "depth": 1}, **KW)
    entry = read_log(tmp_path / "r")[-1]
    assert {"elbo", "kl"} <= set(entry) and all(isinstance(entry[k], float) for k in ("elbo", "kl"))


def test_variants_resolve_and_are_saved(tmp_path):
    from edifice import data

    recipe = get_recipe("gan")
    opts = recipe.resolve(data.load("8gaussians"), {"variant": "wgan_gp", "n_critic": 2})
    assert opts["variant"] == "wgan_gp"
    assert opts["settings"]["loss"] == "wasserstein" and opts["settings"]["gp_weight"] == 10.0
    assert opts["settings"]["n_critic"] == 2  # the user's option overrides the preset
    with pytest.raises(ValueError, match="variant"):
        recipe.resolve(data.load("8gaussians"), {"variant": "stylegan"})
    with pytest.raises(ValueError, match="variant"):
        get_recipe("ddpm").resolve(data.load("moons"), {"variant": "iwae"})
    fit("vae", "moons", steps=1, out=tmp_path / "v", options={"variant": "iwae", "hidden": 16, "depth": 1}, **KW)
    meta = json.loads((tmp_path / "v" / "checkpoint.json").read_text())
    assert meta["options"]["variant"] == "iwae" and meta["options"]["settings"]["k"] == 5


def test_phases_with_activity_windows_and_a_start_hook(tmp_path, monkeypatch):
    """A phase trains only inside its window; its start hook runs when it becomes active (and in the dry run
    before training, in eval mode, so that the phase's first loss can be checked before anything is written)."""
    import dataclasses

    from edifice.train import recipes as R

    calls = []
    base = R.get_recipe("gan")
    d_phase, g_phase = base.phases
    first_half = lambda s, step, steps: step < steps // 2  # noqa: E731
    second_half = lambda s, step, steps: step >= steps // 2  # noqa: E731

    def start(recipe, nets, data, settings):
        calls.append("train" if nets.generator.training else "dry run")

    phases = (dataclasses.replace(d_phase, active=first_half),
              dataclasses.replace(g_phase, active=second_half, start=start))
    monkeypatch.setitem(R.RECIPES, "gan", dataclasses.replace(base, phases=phases))
    fit("gan", "8gaussians", steps=6, out=tmp_path / "r", options=GAN_TINY, **KW)
    assert calls == ["dry run", "train"]
    tensors, meta = load_checkpoint(tmp_path / "r")
    d_steps = [float(v) for k, v in tensors.items() if k.startswith("optim/discriminator/state/") and k.endswith("/step")]
    g_steps = [float(v) for k, v in tensors.items() if k.startswith("optim/generator/state/") and k.endswith("/step")]
    assert set(d_steps) == {3.0} and set(g_steps) == {3.0}
    log = read_log(tmp_path / "r")
    assert [("loss_discriminator" in e, "loss_generator" in e) for e in log] == [(True, False)] * 3 + [(False, True)] * 3
    # Resuming past the switch does not call the hook in training again.
    fit("gan", "8gaussians", steps=6, out=tmp_path / "r", options=GAN_TINY, **KW)
    assert calls == ["dry run", "train", "dry run"]
