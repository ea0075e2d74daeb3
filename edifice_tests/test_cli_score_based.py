"""The command line for the continuous-time families: score SDEs (``--sde``), EDM and NCSN.

Each family trains for a few steps on moons, then samples with every sampler its recipe lists and
evaluates; score SDE and EDM runs report a finite NLL. Argument errors exit with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edifice.cli import main
from edifice.train import get_recipe

TINY = ["--option", "hidden=16", "--option", "depth=1", "--batch-size", "64", "--no-progress"]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


def _train(tmp: Path, family: str, *extra) -> Path:
    out = tmp / family
    code = _run("train", family, "--data", "moons", "--steps", 20, "--out", out, "--eval-n", 100,
                "--eval-steps", 4, *TINY, *extra)
    assert code == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("score_cli")
    return {
        "score_sde": _train(tmp, "score_sde", "--sde", "ve"),
        "edm": _train(tmp, "edm"),
        "ncsn": _train(tmp, "ncsn", "--option", "num_scales=3"),
    }


@pytest.mark.parametrize("family", ["score_sde", "edm", "ncsn"])
def test_train_writes_metrics(runs, family):
    metrics = json.loads((runs[family] / "metrics.json").read_text())
    assert metrics["family"] == family and metrics["step"] == 20 and metrics["w2"] is not None
    if family in ("score_sde", "edm"):
        assert metrics["nll"] is not None and np.isfinite(metrics["nll"])
    else:
        assert "nll" not in metrics


def test_sde_flag_sets_the_build_option(runs):
    config = json.loads((runs["score_sde"] / "checkpoint.json").read_text())
    assert config["options"]["build"]["sde"] == "ve"


@pytest.mark.parametrize("family", ["score_sde", "edm", "ncsn"])
def test_every_sampler_of_the_recipe_samples(runs, family, tmp_path, capsys):
    samplers = [s for s in get_recipe(family).samplers if not s.startswith("dpm_solver")]  # ve run: no DPM-Solver
    for sampler in samplers:
        out = tmp_path / f"{sampler}.png"
        assert _run("sample", runs[family], "--n", 20, "--sampler", sampler, "--steps", 3, "--out", out) == 0
        x = np.load(tmp_path / f"{sampler}.npy")
        assert x.shape == (20, 2) and np.isfinite(x).all(), sampler


def test_dpm_solver_on_a_ve_run_is_a_clear_error(runs, tmp_path, capsys):
    assert _run("sample", runs["score_sde"], "--n", 4, "--sampler", "dpm_solver_pp", "--out", tmp_path / "x") == 2
    assert "vp SDE" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_vp_run_samples_with_dpm_solvers(tmp_path, capsys):
    run = _train(tmp_path, "score_sde", "--sde", "vp", "--no-eval")
    for sampler in ("dpm_solver", "dpm_solver_pp"):
        assert _run("sample", run, "--n", 10, "--sampler", sampler, "--steps", 6, "--out", tmp_path / sampler) == 0
        assert np.isfinite(np.load(tmp_path / f"{sampler}.npy")).all()


def test_ddpm_run_samples_with_the_fast_solvers(tmp_path, capsys):
    run = tmp_path / "ddpm"
    assert _run("train", "ddpm", "--data", "moons", "--steps", 10, "--out", run, "--no-eval", *TINY) == 0
    for sampler in ("dpm_solver", "dpm_solver_pp", "euler", "heun"):
        assert _run("sample", run, "--n", 10, "--sampler", sampler, "--steps", 6, "--out", tmp_path / sampler) == 0
        assert np.isfinite(np.load(tmp_path / f"{sampler}.npy")).all()


def test_eval_reports_nll(runs, capsys):
    assert _run("eval", runs["edm"], "--n", 50, "--steps", 3) == 0
    assert "nll" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["train", "ddpm", "--sde", "vp"], "--sde"),
    (["train", "score_sde", "--sde", "vpp"], "--sde"),
    (["train", "score_sde", "--sde", "ve", "--option", "sde=vp"], "contradicts"),
    (["train", "score_sde", "--option", "weighting=heavy"], "weighting"),
    (["train", "edm", "--option", "sigma_min=100"], "sigma_min"),
    (["train", "ncsn", "--option", "step_lr=0"], "step_lr"),
])
def test_bad_arguments_exit_2_and_write_nothing(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    code = _run(*argv, "--data", "moons", "--steps", 5, "--out", out, *TINY)
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_image_run_reports_bits_per_dim(tmp_path, capsys):
    out = tmp_path / "digits"
    code = _run("train", "score_sde", "--data", "digits", "--steps", 3, "--out", out, "--batch-size", 8,
                "--option", "base_channels=8", "--option", "channel_mults=[1]", "--eval-n", 8, "--eval-steps", 2,
                "--no-progress")
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # dequantised 8-bit pixels: a finite upper bound on the bits, positive for any model
    assert metrics["bpd"] is not None and metrics["bpd"] > 0 and metrics["nll_n"] == 64
