"""The command line for the latent-variable and adversarial families: VAE, VQ-VAE and GANs.

Each trains for a few steps (VAE and VQ-VAE on the 8x8 digits, GANs on 8gaussians), then samples and
evaluates: the VAE reports its test ELBO and an importance-sampled NLL (a probability mass over 8-bit
pixels, with bits/dim), the VQ-VAE its codebook perplexity, the GAN sample distances and modes covered.
Named variants set their presets; bad variants and options exit with status 2 before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edifice.cli import main

QUIET = ["--no-progress", "--batch-size", "32"]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lat_adv_cli")
    out = {}
    specs = {
        "vae": ("vae", "digits", ["--option", "nll_k=16", "--option", "hidden=32", "--option", "arch=mlp"]),
        "cvae": ("vae", "digits", ["--variant", "cvae", "--option", "nll_k=8", "--option", "hidden=32",
                                   "--option", "arch=mlp"]),
        "vqvae": ("vqvae", "digits", ["--option", "codebook_size=16", "--option", "prior_hidden=16"]),
        "wgan_gp": ("gan", "8gaussians", ["--variant", "wgan_gp", "--option", "hidden=16", "--option", "depth=1"]),
    }
    for name, (family, data, extra) in specs.items():
        run = tmp / name
        code = _run("train", family, "--data", data, "--steps", 6, "--out", run, "--eval-n", 64, *QUIET, *extra)
        assert code == 0, name
        out[name] = run
    return out


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_vae_eval_reports_elbo_and_importance_sampled_nll(runs):
    m = _metrics(runs["vae"])
    assert m["family"] == "vae" and np.isfinite(m["elbo"]) and np.isfinite(m["recon_mse"])
    assert m["nll_kind"] == "pmf" and np.isfinite(m["nll"]) and m["nll"] > 0  # a log-mass over 256^64 levels
    assert m["bpd"] == pytest.approx(m["nll"] / (64 * np.log(2)), rel=1e-6)
    # the importance-sampled estimate is a tighter bound than the ELBO (up to Monte-Carlo noise)
    assert m["nll_n"] == m["n"]  # the NLL is on the same test images as the ELBO
    assert -m["nll"] >= m["elbo"] - 2.0


def test_cvae_samples_a_requested_label(runs, tmp_path):
    assert json.loads((runs["cvae"] / "checkpoint.json").read_text())["options"]["build"]["num_classes"] == 10
    assert _run("sample", runs["cvae"], "--n", 6, "--label", 3, "--out", tmp_path / "three") == 0
    x = np.load(tmp_path / "three.npy")
    assert x.shape == (6, 1, 8, 8) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_unconditional_vae_refuses_a_label(runs, tmp_path, capsys):
    assert _run("sample", runs["vae"], "--n", 2, "--label", 1, "--out", tmp_path / "x") == 2
    assert "unconditional" in capsys.readouterr().err


def test_vae_mean_sampler(runs, tmp_path):
    assert _run("sample", runs["vae"], "--n", 4, "--sampler", "mean", "--out", tmp_path / "m") == 0
    assert np.load(tmp_path / "m.npy").shape == (4, 1, 8, 8)


def test_vqvae_eval_reports_codebook_usage(runs):
    m = _metrics(runs["vqvae"])
    assert 1.0 <= m["perplexity"] <= 16.0 and 0 < m["usage"] <= 1.0
    assert np.isfinite(m["recon_mse"]) and np.isfinite(m["prior_nll_per_code"]) and np.isfinite(m["mmd"])


def test_gan_eval_reports_distances_and_modes(runs):
    m = _metrics(runs["wgan_gp"])
    assert m["w2"] is not None and 0 <= m["modes"] <= 8 and 0 <= m["high_quality"] <= 1
    log = [json.loads(line) for line in (runs["wgan_gp"] / "log.jsonl").read_text().splitlines()]
    assert "loss_generator" in log[-1] and "discriminator/gp" in log[-1]


def test_list_shows_variants(capsys):
    assert _run("list") == 0
    out = capsys.readouterr().out
    assert "wgan_gp" in out and "beta_vae" in out and "vqvae" in out


@pytest.mark.parametrize("argv,needle", [
    (["train", "gan", "--data", "8gaussians", "--variant", "stylegan"], "variant"),
    (["train", "vae", "--data", "moons", "--option", "beta=-1"], "beta"),
    (["train", "vae", "--data", "moons", "--option", "k=0"], "k"),
    (["train", "vqvae", "--data", "digits", "--option", "codebook_size=1"], "codebook_size"),
    (["train", "vqvae", "--data", "moons"], "data_shape"),
    (["train", "gan", "--data", "moons", "--option", "loss=wasserstain"], "loss"),
    (["train", "gan", "--data", "moons", "--option", "n_critic=0"], "n_critic"),
    (["train", "ddpm", "--data", "moons", "--variant", "iwae"], "variant"),
    (["train", "gan", "--data", "moons", "--variant", "wgan", "--option", "variant=hinge"], "variant"),
])
def test_bad_arguments_exit_2_before_writing(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert _run(*argv, "--steps", 2, "--out", out, *QUIET) == 2
    assert needle in capsys.readouterr().err
    assert not (out / "checkpoint.json").exists()


GAN_IMAGE_TINY = {"channels": [8, 16], "latent_dim": 8, "hidden": 16, "depth": 1}


@pytest.mark.parametrize("family,variant", [
    *[("gan", v) for v in ("dcgan", "sngan", "cgan", "acgan", "infogan", "lsgan", "hinge", "wgan", "wgan_gp")],
    *[("vae", v) for v in ("beta_vae", "iwae", "cvae", "hvae")],
    *[("vqvae", v) for v in ("transformer_prior", "no_ema")],
])
def test_every_variant_trains_and_samples(family, variant):
    """Every named preset resolves, trains two steps on the digits and samples finite images."""
    import torch

    from edifice.train import fit, get_recipe

    opts = {"gan": GAN_IMAGE_TINY, "vae": {"hidden": 16, "depth": 1, "arch": "mlp", "latent_dim": 4},
            "vqvae": {"codebook_size": 8, "code_dim": 4, "prior_hidden": 8, "prior_layers": 1}}[family]
    result = fit(family, "digits", steps=2, batch_size=16, lr=1e-3, options={**opts, "variant": variant},
                 progress=False, plots=False)
    assert result.config["options"]["variant"] == variant
    recipe = get_recipe(family)
    for m in result.ema_nets:
        m.eval()
    with torch.no_grad():
        x = recipe.sample(result.ema_nets, 4, options=result.config["options"], generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
