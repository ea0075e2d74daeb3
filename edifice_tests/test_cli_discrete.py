"""The command line for the energy-based, autoregressive and discrete families and for mixture density
networks: ``edifice train ebm|rbm|pixelcnn|made|d3pm|mdn`` with their variants; ``eval`` reports ``nll`` /
``bpd`` where the likelihood is exact (PixelCNN, MADE, small RBMs), D3PM's bound and the MDN's conditional
NLL; bad options exit with status 2 naming the option."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edifice.cli import main

QUIET = ["--no-progress", "--batch-size", "32", "--eval-n", "64"]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("family,data,extra", [
    ("pixelcnn", "digits", ["--option", "hidden=8", "--option", "layers=2"]),
    ("pixelcnn", "digits", ["--variant", "transformer", "--option", "hidden=8", "--option", "layers=1",
                            "--option", "heads=2"]),
    ("made", "digits", ["--option", "hidden=16"]),
    ("rbm", "digits", ["--option", "hidden=4", "--option", "chains=32", "--variant", "cd"]),
])
def test_exact_likelihood_families_report_nll_and_bpd(tmp_path, family, data, extra):
    run = tmp_path / family
    assert _run("train", family, "--data", data, "--steps", 3, "--out", run, *QUIET, *extra) == 0
    m = _metrics(run)
    assert m["nll_kind"] == "pmf" and 0 < m["nll"] < 64 * np.log(2) * 1.5 and 0 < m["bpd"]
    samples = np.load(run / "samples.npy")
    assert np.isin(np.unique(samples), [0.0, 1.0]).all()  # binarised pixels, in [0, 1] units


def test_d3pm_reports_its_bound(tmp_path):
    run = tmp_path / "d3pm"
    assert _run("train", "d3pm", "--data", "digits", "--steps", 3, "--out", run, *QUIET, "--option", "T=4",
                "--option", "base_channels=8") == 0
    m = _metrics(run)
    assert m["nll_bound"] > 0 and m["bpd_bound"] > 0 and "nll" not in m


@pytest.mark.parametrize("variant", ["cd", "jem", "dsm", "nce", None])
def test_ebm_variants_train_and_sample(tmp_path, variant):
    run = tmp_path / str(variant)
    data = "digits" if variant == "jem" else "8gaussians"
    extra = ["--variant", variant] if variant else []
    opts = ["--option", "hidden=16", "--option", "depth=1", "--option", "buffer_size=64", "--option", "sgld_steps=2"]
    if data == "digits":
        opts += ["--option", "base_channels=4"]
    assert _run("train", "ebm", "--data", data, "--steps", 2, "--out", run, *QUIET, *extra, *opts,
                "--eval-steps", 3) == 0
    assert np.isfinite(np.load(run / "samples.npy")).all()


def test_mdn_on_the_inverse_problem(tmp_path):
    run = tmp_path / "mdn"
    assert _run("train", "mdn", "--data", "inverse_sine", "--steps", 3, "--out", run, *QUIET,
                "--option", "components=2") == 0
    m = _metrics(run)
    assert np.isfinite(m["conditional_nll"]) and np.isfinite(m["w2"])


@pytest.mark.parametrize("argv,needle", [
    (["train", "mdn", "--data", "inverse_sine", "--option", "components=0"], "components"),
    (["train", "ebm", "--data", "8gaussians", "--option", "buffer_size=8"], "buffer_size"),
    (["train", "ebm", "--data", "8gaussians", "--option", "objective=jem"], "jem"),
    (["train", "pixelcnn", "--data", "moons"], "data_shape"),
    (["train", "d3pm", "--data", "digits", "--option", "transition=bert"], "transition"),
    (["train", "rbm", "--data", "digits", "--class-cond"], "num_classes"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert _run(*argv, "--steps", 1, "--out", out, "--no-progress", "--batch-size", "32") == 2
    assert needle in capsys.readouterr().err
    assert not (out / "checkpoint.json").exists()
