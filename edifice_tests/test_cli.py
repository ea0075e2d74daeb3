"""The command line end to end (train -> sample -> eval) and its argument errors (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edifice.cli import main, parse_option

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--option", "hidden=16", "--option", "depth=1", "--batch-size", "64", "--no-progress"]
RUN_FILES = {"checkpoint.safetensors", "checkpoint.json", "log.jsonl", "loss.png", "samples.png", "samples.npy",
             "metrics.json"}


def _run(*argv: str) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "fm"
    assert _run("train", "flow_matching", "--data", "moons", "--steps", 30, "--out", out, "--eval-n", 200, *TINY) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "digits"
    code = _run("train", "flow_matching", "--data", "digits", "--steps", 3, "--out", out, "--batch-size", 8,
                "--option", "base_channels=8", "--option", "channel_mults=[1]", "--eval-n", 16, "--eval-steps", 4, "--no-progress")
    assert code == 0
    return out


def test_python_m_edifice_list():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "edifice", "list"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for word in ("ddpm", "flow_matching", "heun", "ddim", "moons", "digits"):
        assert word in proc.stdout


def test_edifice_script_is_the_same_cli():
    import shutil

    script = shutil.which("edifice")
    if script is None:
        pytest.skip("the edifice console script is not installed (pip install -e . installs it)")
    a = subprocess.run([script, "list"], capture_output=True, text=True, timeout=60)
    b = subprocess.run([sys.executable, "-m", "edifice", "list"], capture_output=True, text=True, timeout=60)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout


def test_train_writes_the_run_and_metrics(fm_run, capsys):
    assert RUN_FILES <= {p.name for p in fm_run.iterdir()}
    metrics = json.loads((fm_run / "metrics.json").read_text())
    for key in ("w2", "sliced_wasserstein", "mmd", "energy", "nll", "sampler", "steps", "time_s"):
        assert key in metrics
    assert metrics["step"] == 30 and metrics["n"] == 200 and metrics["w2"] > 0
    assert np.load(fm_run / "samples.npy").shape == (200, 2)


def test_sample_writes_png_and_npy(fm_run, tmp_path, capsys):
    assert _run("sample", fm_run, "--n", 50, "--sampler", "rk4", "--steps", 3, "--out", tmp_path / "s.png") == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (50, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    assert _run("sample", fm_run, "--n", 5, "--steps", 2, "--out", tmp_path / "sub" / "plain") == 0
    assert {p.name for p in (tmp_path / "sub").iterdir()} == {"plain.png", "plain.npy"}
    assert "wrote" in capsys.readouterr().out


def test_eval_prints_and_writes_metrics(fm_run, capsys):
    assert _run("eval", fm_run, "--n", 100, "--sampler", "euler", "--steps", 5, "--seed", 1, "--threads", 1) == 0
    out = capsys.readouterr().out
    assert "w2" in out and "nll" in out
    metrics = json.loads((fm_run / "metrics.json").read_text())
    assert (metrics["n"], metrics["sampler"], metrics["steps"], metrics["seed"]) == (100, "euler", 5, 1)


def test_ddpm_train_sample_eval(tmp_path):
    out = tmp_path / "ddpm"
    assert _run("train", "ddpm", "--data", "moons", "--steps", 30, "--out", out, "--eval-n", 50, *TINY,
                "--option", "T=50") == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"w2", "sliced_wasserstein", "mmd"} <= set(metrics) and "nll" not in metrics
    assert metrics["sampler"] == "ddpm" and metrics["steps"] is None
    assert _run("sample", out, "--n", 20, "--sampler", "ddim", "--steps", 5, "--out", tmp_path / "d") == 0
    assert np.load(tmp_path / "d.npy").shape == (20, 2)


def test_images_conditional_sample_and_eval(digits_run, tmp_path):
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert "mmd" in metrics and "bpd" in metrics and metrics["n"] == 16 and metrics["steps"] == 4
    assert _run("sample", digits_run, "--n", 6, "--steps", 2, "--label", 3, "--out", tmp_path / "three") == 0
    x = np.load(tmp_path / "three.npy")
    assert x.shape == (6, 1, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0
    assert (tmp_path / "three.png").stat().st_size > 0


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "nope", "--data", "moons", "--steps", "5"], "unknown family 'nope'"),
        (["train", "ddpm", "--data", "nope", "--steps", "5"], "unknown dataset 'nope'"),
        (["train", "ddpm", "--data", "moons", "--steps", "0"], "--steps must be a positive int, got 0"),
        (["train", "ddpm", "--data", "moons", "--steps", "x"], "invalid int value"),
        (["train", "ddpm", "--data", "moons", "--steps", "5", "--option", "hidden"], "must look like key=value"),
        (["train", "ddpm", "--data", "moons", "--steps", "5", "--option", "size=3"], "unknown option 'size'"),
        (["train", "ddpm", "--data", "moons", "--steps", "5", "--option", "schedule=wavy"], "schedule must be one of"),
        (["train", "ddpm", "--data", "moons", "--steps", "5", "--lr", "-1"], "lr must be in"),
        (["train", "ddpm", "--data", "moons", "--steps", "5", "--eval-sampler", "rk4"], "sampler must be one of"),
        (["train", "ddpm", "--data", "mnist", "--steps", "5", "--data-dir", "/nonexistent"], "mnist data not found"),
    ],
)
def test_bad_train_arguments_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    code = _run(*argv, "--out", tmp_path / "run", "--no-progress")
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "{fm}", "--n", "5", "--sampler", "ddim", "--out", "{tmp}/x"], "sampler must be one of"),
        (["sample", "{fm}", "--n", "5", "--label", "1", "--out", "{tmp}/x"], "the model is unconditional"),
        (["sample", "{digits}", "--n", "5", "--label", "10", "--out", "{tmp}/x"], "label must be an int <= 9"),
        (["sample", "{fm}", "--n", "0", "--out", "{tmp}/x"], "--n must be a positive int"),
        (["sample", "{fm}", "--n", "5", "--steps", "0", "--out", "{tmp}/x"], "--steps must be a positive int"),
        (["sample", "{tmp}/missing", "--n", "5", "--out", "{tmp}/x"], "does not exist"),
        (["sample", "{tmp}", "--n", "5", "--out", "{tmp}/x"], "no checkpoint in"),
        (["sample", "{fm}", "--n", "5", "--out", "{tmp}"], "is a folder"),
        (["eval", "{fm}", "--sampler", "nope"], "sampler must be one of"),
        (["eval", "{tmp}/missing"], "does not exist"),
        (["eval", "{fm}", "--device", "gpu7"], "--device must be cpu, cuda or cuda:N"),
        (["eval", "{fm}", "--threads", "0"], "--threads must be a positive int"),
    ],
)
def test_bad_sample_eval_arguments_exit_2_and_write_nothing(fm_run, digits_run, tmp_path, capsys, argv, message):
    before = {d: _snapshot(d) for d in (fm_run, digits_run, tmp_path)}
    argv = [a.format(fm=fm_run, digits=digits_run, tmp=tmp_path) for a in argv]
    assert _run(*argv) == 2
    assert message in capsys.readouterr().err
    assert {d: _snapshot(d) for d in before} == before


def test_parse_option():
    assert parse_option("hidden=64") == ("hidden", 64)
    assert parse_option("channel_mults=[1, 2]") == ("channel_mults", [1, 2])
    assert parse_option("conditional=false") == ("conditional", False)
    assert parse_option("clip_x0=null") == ("clip_x0", None)
    assert parse_option("coupling=ot") == ("coupling", "ot")
