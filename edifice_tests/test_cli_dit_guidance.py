"""The command line for transformers, guidance and latent diffusion.

``edifice train dit`` (class-conditional on the digits by default), ``--backbone dit`` for the other
diffusion families, ``--class-cond`` / ``--p-uncond``, ``edifice sample --label K --guidance-scale W``,
and ``edifice train latent_diffusion`` (autoencoder first, then the latent denoiser). Bad arguments exit
with status 2 and a message naming them, before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edifice.cli import main

QUIET = ["--no-progress", "--batch-size", "16", "--eval-n", "16", "--eval-sampler", "ddim", "--eval-steps", "3"]
DIT_TINY = ["--option", "hidden=16", "--option", "depth=1", "--option", "heads=2"]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("dit_cli")
    specs = {
        "dit": ("dit", ["--class-cond", "--p-uncond", "0.2", *DIT_TINY]),
        "ddpm_dit": ("ddpm", ["--backbone", "dit", "--option", "patch_size=4"]),
        "ldm": ("latent_diffusion", ["--option", "ae_channels=[8,16]", "--option", "denoiser_hidden=16",
                                     "--option", "latent_channels=2", "--option", "scale_batch=64"]),
    }
    out = {}
    for name, (family, extra) in specs.items():
        run = tmp / name
        assert _run("train", family, "--data", "digits", "--steps", 4, "--out", run, *QUIET, *extra) == 0, name
        out[name] = run
    return out


def _config(run: Path) -> dict:
    return json.loads((run / "checkpoint.json").read_text())["options"]


def test_flags_reach_the_options(runs):
    opts = _config(runs["dit"])
    assert opts["settings"]["conditional"] is True and opts["settings"]["label_dropout"] == 0.2
    assert opts["build"]["num_classes"] == 10 and opts["build"]["preset"] == "tiny"
    ddpm = _config(runs["ddpm_dit"])["build"]
    assert ddpm["backbone"] == "dit" and ddpm["patch_size"] == 4


@pytest.mark.parametrize("name", ["dit", "ddpm_dit", "ldm"])
def test_guided_sampling_of_a_label(runs, tmp_path, name):
    out = tmp_path / name
    assert _run("sample", runs[name], "--n", 4, "--label", 7, "--guidance-scale", 2.5, "--sampler", "ddim",
                "--steps", 3, "--out", out) == 0
    x = np.load(tmp_path / f"{name}.npy")
    assert x.shape == (4, 1, 8, 8) and np.isfinite(x).all()


def test_eval_records_the_guidance_scale(runs):
    assert _run("eval", runs["dit"], "--n", 16, "--sampler", "ddim", "--steps", 3, "--guidance-scale", 3) == 0
    m = json.loads((runs["dit"] / "metrics.json").read_text())
    assert m["guidance_scale"] == 3.0 and m["mmd"] is not None


def test_latent_diffusion_trains_both_phases(runs):
    log = [json.loads(line) for line in (runs["ldm"] / "log.jsonl").read_text().splitlines()]
    assert "loss_autoencoder" in log[0] and "loss_denoiser" in log[-1]
    m = json.loads((runs["ldm"] / "metrics.json").read_text())
    assert m["latent_scale"] > 0 and np.isfinite(m["recon_mse"])


@pytest.mark.parametrize("argv,needle", [
    (["sample", "{moons}", "--n", "2", "--guidance-scale", "2"], "unconditional"),
    (["train", "vae", "--data", "digits", "--backbone", "dit"], "--backbone"),
    (["train", "ddpm", "--data", "moons", "--backbone", "dit"], "backbone"),
    (["train", "dit", "--data", "digits", "--option", "patch_size=3"], "patch_size"),
    (["train", "dit", "--data", "moons"], "data_shape"),
    (["train", "latent_diffusion", "--data", "moons"], "data_shape"),
    (["train", "ddpm", "--data", "digits", "--p-uncond", "1.5"], "label_dropout"),
    (["train", "ddpm", "--data", "digits", "--class-cond", "--option", "conditional=false"], "--class-cond"),
    (["sample", "{dit}", "--n", "2", "--label", "10"], "label"),
    (["sample", "{dit}", "--n", "2", "--guidance-scale", "-1"], "guidance_scale"),
])
def test_bad_arguments_exit_2(runs, tmp_path, capsys, argv, needle):
    moons = tmp_path / "moons"
    if "{moons}" in argv:
        assert _run("train", "ddpm", "--data", "moons", "--steps", 1, "--out", moons, "--no-eval", "--no-progress",
                    "--option", "hidden=8", "--option", "depth=1") == 0
    argv = [a.replace("{moons}", str(moons)).replace("{dit}", str(runs["dit"])) for a in argv]
    out = tmp_path / "out"
    extra = ["--steps", "1", "--out", out, "--no-progress"] if argv[0] == "train" else ["--out", out]
    capsys.readouterr()
    assert _run(*argv, *extra) == 2
    assert needle in capsys.readouterr().err
    assert not (out / "checkpoint.json").exists() and not Path(f"{out}.npy").exists()
