"""The command line for the one-step and few-step generators: train from data or from a ``--teacher`` run,
sample with ``--steps 1``, evaluate; the teacher's weights travel in the student's checkpoint; a teacher of
the wrong family, or a distillation without a teacher, exits with status 2 and a message naming ``teacher``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edifice.cli import main
from edifice.train import fit, load

QUIET = ["--no-progress", "--batch-size", "32", "--eval-n", "64", "--option", "hidden=16", "--option", "depth=1"]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Tiny teacher runs (a few steps: the wiring is under test here, not the quality)."""
    root = tmp_path_factory.mktemp("teachers")
    small = {"hidden": 16, "depth": 1}
    kw = dict(steps=3, batch_size=32, progress=False, plots=False)
    fit("edm", "moons", out=root / "edm", options=small, **kw)
    fit("ddpm", "moons", out=root / "ddpm", options={**small, "schedule": "cosine", "target": "v"}, **kw)
    fit("flow_matching", "moons", out=root / "fm", options=small, **kw)
    return root


@pytest.mark.parametrize("family", ["consistency", "interpolant", "shortcut", "meanflow", "rectified_flow"])
def test_train_sample_eval_without_teacher(tmp_path, family):
    run = tmp_path / family
    assert _run("train", family, "--data", "moons", "--steps", 3, "--out", run, *QUIET) == 0
    assert np.isfinite(_metrics(run)["w2"])
    out = tmp_path / "s"
    assert _run("sample", run, "--n", 16, "--out", out, "--steps", 1) == 0
    x = np.load(f"{out}.npy")
    assert x.shape == (16, 2) and np.isfinite(x).all()
    assert _run("eval", run, "--n", 32, "--steps", 2, "--no-nll") == 0
    assert _metrics(run)["steps"] == 2


def test_consistency_distillation_from_edm_and_ddpm(tmp_path, teachers):
    for name in ("edm", "ddpm"):
        run = tmp_path / name
        assert _run("train", "consistency", "--data", "moons", "--teacher", teachers / name, "--steps", 3,
                    "--out", run, *QUIET) == 0
        cfg = json.loads((run / "checkpoint.json").read_text())
        assert cfg["options"]["teacher"]["family"] == name
        assert cfg["options"]["settings"]["teacher"] == str((teachers / name).resolve())
    # From EDM the student starts from the teacher's backbone and takes its sigma_data.
    edm_cfg = json.loads((teachers / "edm" / "checkpoint.json").read_text())
    assert cfg_of(tmp_path / "edm")["options"]["build"]["sigma_data"] == edm_cfg["options"]["build"]["sigma_data"]


def cfg_of(run) -> dict:
    return json.loads((run / "checkpoint.json").read_text())


def test_teacher_weights_travel_with_the_student(tmp_path, teachers):
    src = tmp_path / "edm-copy"
    shutil.copytree(teachers / "edm", src)
    run = tmp_path / "cd"
    assert _run("train", "consistency", "--data", "moons", "--teacher", src, "--steps", 2, "--out", run,
                *QUIET, "--no-eval") == 0
    teacher_nets, _ = load(src)
    shutil.rmtree(src)  # the student's run no longer needs the teacher's folder
    nets, _ = load(run)
    for a, b in zip(nets.teacher.net.state_dict().values(), teacher_nets.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in nets.teacher.parameters())
    assert _run("sample", run, "--n", 8, "--out", tmp_path / "s", "--steps", 1) == 0


def test_rectified_flow_reflow_then_distill(tmp_path, teachers):
    reflow, distill = tmp_path / "reflow", tmp_path / "distill"
    assert _run("train", "rectified_flow", "--data", "moons", "--teacher", teachers / "fm", "--steps", 3,
                "--out", reflow, *QUIET, "--option", "n_pairs=64", "--option", "pair_steps=2") == 0
    assert _run("train", "rectified_flow", "--data", "moons", "--teacher", reflow, "--variant", "distill",
                "--steps", 3, "--out", distill, *QUIET, "--option", "n_pairs=64", "--option", "pair_steps=2",
                "--eval-steps", 1) == 0
    assert _metrics(distill)["steps"] == 1 and np.isfinite(_metrics(distill)["w2"])
    nets, _ = load(reflow)
    assert int(nets.pairs.filled) == 1 and nets.pairs.x1.shape == (64, 2)
    assert torch.isfinite(nets.pairs.x1).all() and not torch.equal(nets.pairs.x0, nets.pairs.x1)


def test_progressive_distillation_rounds_halve_the_steps(tmp_path, teachers):
    first, second = tmp_path / "pd8", tmp_path / "pd4"
    assert _run("train", "progressive_distillation", "--data", "moons", "--teacher", teachers / "ddpm",
                "--steps", 2, "--out", first, *QUIET[:5], "--option", "student_steps=8") == 0
    assert _run("train", "progressive_distillation", "--data", "moons", "--teacher", first, "--steps", 2,
                "--out", second, *QUIET[:5]) == 0
    assert cfg_of(second)["options"]["settings"]["student_steps"] == 4
    assert _metrics(second)["steps"] == 4
    assert cfg_of(second)["options"]["settings"]["target"] == "v"  # from the first teacher, through the chain


@pytest.mark.parametrize("family,teacher,extra,needle", [
    ("rectified_flow", "edm", [], "teacher must be a run of flow_matching or rectified_flow"),
    ("consistency", "fm", [], "teacher must be a run of edm or ddpm"),
    ("progressive_distillation", "edm", [], "teacher must be a run of ddpm"),
    ("progressive_distillation", None, [], "needs option teacher"),
    ("rectified_flow", None, ["--variant", "distill"], "needs option teacher"),
    ("meanflow", "fm", [], "--teacher is an option of the distillation families"),
    ("progressive_distillation", "ddpm", ["--option", "target=eps"], "differs from the teacher"),
    ("consistency", "missing", [], "teacher='"),
])
def test_bad_teacher_exits_2(tmp_path, capsys, teachers, family, teacher, extra, needle):
    out = tmp_path / "run"
    argv = ["train", family, "--data", "moons", "--steps", 1, "--out", out, "--no-progress", *extra]
    if teacher is not None:
        argv += ["--teacher", teachers / teacher]
    assert _run(*argv) == 2
    assert needle in capsys.readouterr().err
    assert not (out / "checkpoint.json").exists()


def test_teacher_of_other_data_shape_is_refused(tmp_path, capsys, teachers):
    out = tmp_path / "run"
    assert _run("train", "consistency", "--data", "digits", "--teacher", teachers / "edm", "--steps", 1, "--out",
                out, "--no-progress") == 2
    assert "teacher" in capsys.readouterr().err


def test_guidance_on_a_class_conditional_rectified_flow(tmp_path):
    run = tmp_path / "rf"
    assert _run("train", "rectified_flow", "--data", "digits", "--class-cond", "--steps", 2, "--out", run,
                "--no-progress", "--batch-size", "16", "--no-eval", "--option", "base_channels=8") == 0
    assert _run("sample", run, "--n", 4, "--label", 3, "--guidance-scale", 2, "--steps", 2, "--out",
                tmp_path / "g") == 0
    assert np.isfinite(np.load(f"{tmp_path / 'g'}.npy")).all()


def test_distilled_runs_resume_exactly(tmp_path, teachers):
    """A reflow run stopped at step 2 and resumed to 4 ends with the weights of an uninterrupted 4-step run
    (the teacher is reloaded, the pairs come back from the checkpoint)."""
    opts = {"teacher": str(teachers / "fm"), "hidden": 16, "depth": 1, "n_pairs": 64, "pair_steps": 2}
    kw = dict(batch_size=16, progress=False, plots=False, lr_schedule="constant")
    fit("rectified_flow", "moons", steps=2, out=tmp_path / "a", options=opts, **kw)
    fit("rectified_flow", "moons", steps=4, out=tmp_path / "a", options=opts, **kw)
    fit("rectified_flow", "moons", steps=4, out=tmp_path / "b", options=opts, **kw)
    (a, _), (b, _) = load(tmp_path / "a", ema=False), load(tmp_path / "b", ema=False)
    for x, y in zip(a.student.state_dict().values(), b.student.state_dict().values()):
        assert torch.equal(x, y)
    assert torch.equal(a.pairs.x1, b.pairs.x1)
