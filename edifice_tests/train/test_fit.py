"""The fit loop: exact resume (extended and interrupted runs), load(), logs, errors before writing."""

from __future__ import annotations

import json

import pytest
import torch

from edifice import data
from edifice.train import NonFiniteLossError, fit, load, step_seed
from edifice.train.checkpoint import load_checkpoint
from edifice.train.recipes import RECIPES, get_recipe

TINY = {"hidden": 16, "depth": 1, "dropout": 0.1}  # dropout: the global RNG must be reseeded per step too
KW = dict(batch_size=32, lr=3e-3, seed=3, options=TINY, progress=False, plots=False, log_every=1, ckpt_every=5)


def _tensors(run_dir):
    tensors, meta = load_checkpoint(run_dir)
    return tensors, meta


def _assert_same_checkpoint(a, b):
    ta, ma = _tensors(a)
    tb, mb = _tensors(b)
    assert sorted(ta) == sorted(tb)
    assert any(k.startswith("optim/state/") for k in ta) and any(k.startswith("ema/") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert ma["step"] == mb["step"] and ma["ema"] == mb["ema"]


@pytest.mark.parametrize("family", ["flow_matching", "ddpm"])
def test_resume_extends_run_bit_identically(tmp_path, family):
    # A constant learning rate: the cosine horizon is each call's `steps`, so only a constant rate extends exactly.
    kw = dict(KW, lr_schedule="constant")
    full = fit(family, "moons", steps=20, out=tmp_path / "full", **kw)
    first = fit(family, "moons", steps=10, out=tmp_path / "two", **kw)
    assert first.step == 10 and first.start_step == 0
    second = fit(family, "moons", steps=20, out=tmp_path / "two", **kw)
    assert second.start_step == 10 and second.step == 20
    _assert_same_checkpoint(tmp_path / "full", tmp_path / "two")
    for a, b in zip(full.ema_nets.parameters(), second.ema_nets.parameters()):
        assert torch.equal(a, b)


def test_resume_after_a_kill_continues_from_the_last_checkpoint(tmp_path):
    fit("flow_matching", "moons", steps=20, out=tmp_path / "full", **KW)

    def killer(entry):
        if entry["step"] == 12:
            raise KeyboardInterrupt  # killed after the step-10 checkpoint, before the next one

    with pytest.raises(KeyboardInterrupt):
        fit("flow_matching", "moons", steps=20, out=tmp_path / "killed", callback=killer, **KW)
    assert json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["step"] == 10
    resumed = fit("flow_matching", "moons", steps=20, out=tmp_path / "killed", **KW)
    assert resumed.start_step == 10
    _assert_same_checkpoint(tmp_path / "full", tmp_path / "killed")
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))  # lines 11-12 of the killed run were dropped, not duplicated


def test_load_rebuilds_networks_and_in_memory_fit(tmp_path):
    result = fit("flow_matching", "moons", steps=4, out=tmp_path, **KW)
    nets, config = load(tmp_path)
    assert config["family"] == "flow_matching" and config["step"] == 4
    assert config["options"]["build"] == {"data_shape": [2], "num_classes": None, **TINY}
    assert not nets.training
    for a, b in zip(nets.parameters(), result.ema_nets.parameters()):
        assert torch.equal(a, b)
    raw, _ = load(tmp_path, ema=False)
    for a, b in zip(raw.parameters(), result.nets.parameters()):
        assert torch.equal(a, b)
    mem = fit("flow_matching", "moons", steps=4, out=None, **KW)
    for a, b in zip(mem.nets.parameters(), result.nets.parameters()):
        assert torch.equal(a, b)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4] and all(e["loss"] > 0 for e in log)


def test_step_seed_is_a_deterministic_mix():
    assert step_seed(0, 1, 0) == step_seed(0, 1, 0)
    seeds = {step_seed(s, k, r, c) for s in range(2) for k in range(3) for r in range(2) for c in range(3)}
    assert len(seeds) == 36 and all(0 <= s < 2**63 for s in seeds)


class _NaNAfter:
    """A moons source whose training batches turn to NaN from the 4th call of the loop on."""

    def __init__(self):
        self._src = data.load("moons")
        self.name, self.kind, self.data_shape, self.num_classes = "moons", "points", (2,), None
        self.calls = 0

    def train_batch(self, batch_size, *, generator=None):
        x, y = self._src.train_batch(batch_size, generator=generator)
        if batch_size != 2:  # the dry run before training draws 2
            self.calls += 1
            if self.calls >= 4:
                x = x * float("nan")
        return x, y


def test_nonfinite_loss_raises_naming_the_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        fit("flow_matching", _NaNAfter(), steps=10, out=tmp_path / "nan", **{**KW, "log_every": 5})
    assert not (tmp_path / "nan" / "checkpoint.json").exists()  # never checkpoints NaN weights


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(family="nope"), ValueError, "unknown family 'nope'; valid families: .*ddpm, .*vqvae"),
        (dict(data="nope"), ValueError, "unknown dataset 'nope'"),
        (dict(steps=0), ValueError, "steps must be a positive int, got 0"),
        (dict(lr=-1.0), ValueError, "lr must be in"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
        (dict(ema_decay=1.0), ValueError, "ema_decay must be in"),
        (dict(options={"widht": 3}), ValueError, "unknown option 'widht' for family 'flow_matching'; valid options"),
        (dict(options={"data_shape": [3]}), ValueError, "option 'data_shape' is set by the data"),
        (dict(options={"coupling": "best"}), ValueError, "coupling must be one of"),
        (dict(options={"hidden": 0}), ValueError, "hidden must be a positive int"),
        (dict(options={"conditional": True}), ValueError, "conditional=true needs labelled data"),
        (dict(options="hidden=3"), TypeError, "options must be a dict"),
        (dict(data=3), TypeError, "data must be a dataset name or a DataSource"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path, kwargs, error, match):
    args = dict(family="flow_matching", data="moons", steps=2, out=tmp_path / "run")
    args.update(kwargs)
    family, dataset = args.pop("family"), args.pop("data")
    with pytest.raises(error, match=match):
        fit(family, dataset, progress=False, **args)
    assert not (tmp_path / "run").exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    fit("flow_matching", "moons", steps=2, out=tmp_path, **KW)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"different run \(train.lr: checkpoint 0.003, now 0.01\)"):
        fit("flow_matching", "moons", steps=4, out=tmp_path, **{**KW, "lr": 1e-2})
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(ValueError, match="out must be a folder"):
        fit("flow_matching", "moons", steps=2, out=tmp_path / "log.jsonl", **KW)


def test_recipes_table():
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.default_sampler in recipe.samplers
        assert {"conditional", "label_dropout"} <= set(recipe.settings)
    fm = get_recipe("flow_matching")
    assert set(fm.samplers) <= set(fm.family().METHODS) and fm.has_likelihood
    assert not get_recipe("ddpm").has_likelihood
    assert get_recipe("ddpm").check_sampler(None, None) == ("ddpm", None)
    assert get_recipe("ddpm").check_sampler("ddim", None) == ("ddim", 50)
    with pytest.raises(ValueError, match="sampler must be one of 'ddpm', 'ddim', .*; got 'pc'"):
        get_recipe("ddpm").check_sampler("pc", None)
    assert get_recipe("score_sde").has_likelihood and get_recipe("edm").has_likelihood
    assert not get_recipe("ncsn").has_likelihood
    assert get_recipe("score_sde").check_sampler(None, None) == ("pc", 500)
    digits = data.load("digits")
    opts = fm.resolve(digits, {"base_channels": 8})
    assert opts["build"]["num_classes"] == 10 and opts["settings"]["conditional"] is True
    assert fm.resolve(digits, {"conditional": False})["build"]["num_classes"] is None
    with pytest.raises(ValueError, match="label must be an int <= 9, got 10"):
        fm.check_label(opts, 10)
    with pytest.raises(ValueError, match="the model is unconditional"):
        fm.check_label(fm.resolve(data.load("moons")), 0)


def test_cosine_learning_rate_schedule():
    from edifice.train.fit import lr_at

    assert lr_at(1e-3, "constant", 7, 10) == 1e-3
    assert lr_at(1e-3, "cosine", 0, 10) == pytest.approx(1e-3)
    assert lr_at(1e-3, "cosine", 5, 10) == pytest.approx(5e-4)
    assert lr_at(1e-3, "cosine", 9, 10) < 3e-5
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        fit("flow_matching", "moons", steps=2, lr_schedule="step", progress=False, plots=False)


def test_edm_sigma_data_is_measured_on_the_data():
    recipe = get_recipe("edm")
    for name in ("moons", "8gaussians"):
        src = data.load(name)
        x, _ = src.train_batch(4096, generator=torch.Generator().manual_seed(0))
        assert recipe.resolve(src)["build"]["sigma_data"] == pytest.approx(float(x.double().std()), abs=1e-4)
    assert recipe.resolve(data.load("8gaussians"))["build"]["sigma_data"] > 1.5  # not the image default 0.5
    assert recipe.resolve(data.load("moons"), {"sigma_data": 0.3})["build"]["sigma_data"] == 0.3  # the user wins
