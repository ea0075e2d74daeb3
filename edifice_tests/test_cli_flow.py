"""The command line for normalizing flows: ``edifice train flow --variant KIND``; eval reports the exact NLL
(nats on 2-D data, bits/dim on images, after uniform dequantisation); bad kinds exit with status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edifice.cli import main

QUIET = ["--no-progress", "--batch-size", "32", "--eval-n", "64", "--option", "hidden=8", "--option", "blocks=2"]


def _run(*argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


@pytest.mark.parametrize("variant", ["realnvp", "nsf", "maf", "glow", "ffjord"])
def test_train_and_eval_a_flow_on_moons(tmp_path, variant):
    run = tmp_path / variant
    extra = ["--option", "ode_steps=2"] if variant == "ffjord" else []
    assert _run("train", "flow", "--data", "moons", "--variant", variant, "--steps", 3, "--out", run, *QUIET,
                *extra) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["nll_kind"] == "density" and np.isfinite(m["nll"]) and np.isfinite(m["w2"])
    assert json.loads((run / "checkpoint.json").read_text())["options"]["build"]["kind"] == variant


def test_image_flow_reports_bits_per_dim(tmp_path):
    run = tmp_path / "img"
    assert _run("train", "flow", "--data", "digits", "--variant", "realnvp", "--steps", 3, "--out", run,
                *QUIET, "--option", "scales=1") == 0
    m = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(m["bpd"]) and m["bpd"] > 0


@pytest.mark.parametrize("argv,needle", [
    (["train", "flow", "--data", "moons", "--variant", "flowpp"], "variant"),
    (["train", "flow", "--data", "digits", "--variant", "maf"], "kind"),
    (["train", "flow", "--data", "digits", "--class-cond"], "num_classes"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert _run(*argv, "--steps", 1, "--out", out, "--no-progress") == 2
    assert needle in capsys.readouterr().err
    assert not (out / "checkpoint.json").exists()


def test_ffjord_regularisers_reach_the_loss_and_the_log(tmp_path):
    import torch

    from edifice.generative import normalizing_flow as nf
    from edifice.train import fit
    from edifice.train.fit import read_log

    flow = nf.build(data_shape=(2,), kind="ffjord", hidden=8, ode_steps=2, kinetic=0.5, jacobian_norm=0.5,
                    ode_divergence="hutchinson")
    g = torch.Generator().manual_seed(0)
    loss, logs = nf.loss(flow, torch.randn(16, 2, generator=g), generator=torch.Generator().manual_seed(1))
    assert float(logs["regularization"]) > 0
    assert float(loss.detach()) == pytest.approx(float(logs["nll"] + logs["regularization"]))
    again, _ = nf.loss(flow, torch.randn(16, 2, generator=torch.Generator().manual_seed(0)),
                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(loss, again)  # the Hutchinson probes come from the generator
    fit("flow", "moons", steps=2, batch_size=16, out=tmp_path / "r", progress=False, plots=False, log_every=1,
        options={"variant": "ffjord", "hidden": 8, "ode_steps": 2, "kinetic": 0.1})
    assert "regularization" in read_log(tmp_path / "r")[-1]
