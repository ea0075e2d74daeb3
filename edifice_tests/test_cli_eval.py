"""``edifice eval``: every metric that applies (FD / KID / precision / recall on image features, the
real-data floor, class accuracy, precision / recall on points), ``--nll``, ``--features``, ``--ood`` and
``edifice train --holdout-class``; their argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edifice.cli import main
from edifice.train import evaluate
from edifice.train.checkpoint import read_meta

IMAGE_KEYS = {"fd", "fd_real", "kid", "precision", "recall", "density", "coverage", "features", "feature_dim"}


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


def _train(out: Path, family: str, data: str, steps: int, *extra) -> Path:
    code = _run("train", family, "--data", data, "--steps", steps, "--out", out, "--no-progress", "--threads", 1,
                *extra)
    assert code == 0
    return out


@pytest.fixture(scope="module")
def vae_runs(tmp_path_factory) -> tuple[Path, Path]:
    """A VAE on the 8x8 digits after 1 and after 600 steps (about 5 s on one core)."""
    base = tmp_path_factory.mktemp("eval")
    tiny = ["--batch-size", 64, "--option", "latent_dim=8", "--no-eval"]
    return (_train(base / "vae1", "vae", "digits", 1, *tiny), _train(base / "vae600", "vae", "digits", 600, *tiny))


def test_image_eval_writes_feature_metrics_and_training_lowers_fd(vae_runs, capsys):
    untrained, trained = (evaluate(run, n=297, nll=False) for run in vae_runs)
    for m in (untrained, trained):
        assert IMAGE_KEYS <= set(m), sorted(IMAGE_KEYS - set(m))
        assert m["features"] == "digits" and m["feature_dim"] == 64
        assert m["fd_real"] is not None and m["fd_real"] >= 0
    # The same real-data floor for both (it depends on the data and n only).
    assert trained["fd_real"] == pytest.approx(untrained["fd_real"])
    # Measured: untrained 18.9, after 600 steps 10.9 (blurry VAE samples), real floor 1.9; recall 0.23 -> 0.78.
    assert trained["fd"] < 0.7 * untrained["fd"], (trained["fd"], untrained["fd"])
    assert trained["fd_real"] < 0.3 * trained["fd"]
    assert trained["recall"] > untrained["recall"] + 0.3
    saved = json.loads((vae_runs[1] / "metrics.json").read_text())
    assert saved["fd"] == pytest.approx(trained["fd"])
    assert _run("eval", vae_runs[1], "--no-nll", "--n", 100) == 0
    out = capsys.readouterr().out
    for key in ("fd ", "fd_real", "kid", "precision", "recall", "coverage"):
        assert key in out


def test_class_conditional_eval_reports_class_accuracy(tmp_path):
    run = _train(tmp_path / "cvae", "vae", "digits", 400, "--variant", "cvae", "--batch-size", 64, "--no-eval")
    m = evaluate(run, n=200, nll=False)
    assert set(m["class_accuracy_per_label"]) == {str(k) for k in range(10)}
    # A conditional VAE that ignored its label would score about 0.1 (chance).
    assert m["class_accuracy"] > 0.3, m["class_accuracy"]


def test_user_feature_network_runs_the_same_metrics(vae_runs):
    def pixels(x: torch.Tensor) -> torch.Tensor:  # any callable [0, 1] images -> (N, D)
        return x.flatten(1)

    m = evaluate(vae_runs[1], n=200, nll=False, write=False, features=pixels)
    assert m["features"] == "function" and m["feature_dim"] == 64 and m["fd"] > 0
    assert "class_accuracy" not in m
    with pytest.raises(ValueError, match="feature network must map"):
        evaluate(vae_runs[1], n=50, nll=False, write=False, features=lambda x: x.sum())
    with pytest.raises(TypeError, match="features must be"):
        evaluate(vae_runs[1], n=50, nll=False, write=False, features=3)


def test_small_n_warns_that_fd_is_biased(vae_runs):
    with pytest.warns(UserWarning, match="biased"):
        m = evaluate(vae_runs[1], n=40, nll=False, write=False)  # 40 samples < 64 feature dimensions
    assert "fd_warning" in m


def test_points_eval_reports_precision_and_recall(tmp_path):
    run = _train(tmp_path / "fm", "flow_matching", "moons", 300, "--batch-size", 128, "--option", "hidden=32",
                 "--no-eval")
    m = evaluate(run, n=500, nll=False, write=False)
    assert {"precision", "recall", "w2"} <= set(m) and "fd" not in m
    assert 0.5 < m["precision"] <= 1 and 0.5 < m["recall"] <= 1


def test_nll_required_for_a_family_without_likelihood(tmp_path, capsys):
    run = _train(tmp_path / "gan", "gan", "moons", 2, "--batch-size", 32, "--no-eval")
    with pytest.raises(ValueError, match="'gan' has none"):
        evaluate(run, nll=True, write=False)
    assert _run("eval", run, "--nll") == 2
    assert "'gan' has none" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()


def test_ood_report_and_holdout_class(tmp_path, capsys):
    run = _train(tmp_path / "vae", "vae", "digits", 300, "--holdout-class", 3, "--batch-size", 64, "--no-eval",
                 "--option", "nll_k=16")  # a cheaper importance-sampled NLL score
    assert read_meta(run)["data"]["holdout_class"] == 3
    assert _run("eval", run, "--ood") == 0
    printed = capsys.readouterr().out
    report = json.loads((run / "ood.json").read_text())
    assert (run / "ood_hist.png").stat().st_size > 0
    assert "holdout_class" in report["scores"]["reconstruction"] and "AUROC" in printed
    # Noise images are trivially out of distribution for any model of digits worth its name.
    assert report["scores"]["reconstruction"]["noise"]["auroc"] > 0.9


@pytest.mark.parametrize("argv, message", [
    (["--ood", "--sampler", "ddim"], "--sampler does not apply with --ood"),
    (["--score", "nll"], "--score applies with --ood"),
    (["--features", "nocolon"], "MODULE:NAME"),
    (["--features", "edifice.nowhere:net"], "cannot import"),
    (["--nll", "--no-nll"], "not allowed with"),
])
def test_bad_eval_arguments_exit_2(vae_runs, capsys, argv, message):
    assert _run("eval", vae_runs[0], *argv) == 2
    assert message in capsys.readouterr().err


def test_holdout_class_errors(tmp_path, capsys):
    assert _run("train", "flow_matching", "--data", "moons", "--steps", 1, "--out", tmp_path / "a",
                "--holdout-class", 1, "--no-progress") == 2
    assert "holdout_class" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert _run("train", "vae", "--data", "digits", "--steps", 1, "--out", tmp_path / "b", "--holdout-class", 10,
                "--no-progress") == 2
    assert "holdout_class" in capsys.readouterr().err
