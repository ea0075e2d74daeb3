"""Smoke test of the benchmark scripts: each runs in ``--quick`` mode and writes well-formed JSON.

This keeps ``benchmarks/`` from rotting as the library changes. It runs ``benchmarks/run_all.py
--quick`` once in a subprocess (one interpreter start and one import of torch / diffusers for all
the benchmarks) and checks the keys and that every timing, memory and distance is a positive
finite number. It never asserts a speed or a quality: quick-mode numbers mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
MACHINE_KEYS = {"date", "python", "torch", "threads", "cpu_count", "device"}
NAMES = ["sampler_overhead", "train_throughput", "main_job", "sampler_overhead_score", "score_nll", "sampler_quality",
         "likelihood_cost", "vqvae_digits", "vae_mnist", "gan_losses", "guidance_digits", "dit_throughput", "latent_vs_pixel", "flows_nll", "few_step", "discrete_models",
         "leaderboard"]


def _positive(value, what: str) -> None:
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{what} is not a number: {value!r}"
    assert math.isfinite(value) and value > 0, f"{what} must be positive and finite, got {value!r}"


def _stat(stat: dict, what: str) -> None:
    assert {"median", "min", "max", "spread", "n"} <= set(stat), f"{what} lacks summary keys: {stat}"
    for key in ("median", "min", "max"):
        _positive(stat[key], f"{what}.{key}")
    assert stat["min"] <= stat["median"] <= stat["max"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--threads", "1", "--device", "cpu",
         "--out-dir", str(out)],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"run_all.py --quick failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    loaded = {}
    for name in NAMES:
        path = out / f"{name}.json"
        assert path.is_file(), f"{name}.json was not written; output:\n{proc.stdout[-2000:]}"
        loaded[name] = json.loads(path.read_text())
    assert proc.stdout.count("### ") == len(NAMES) and "|---" in proc.stdout  # the markdown tables were printed
    return loaded


@pytest.mark.parametrize("name", NAMES)
def test_common_fields(results, name):
    r = results[name]
    assert r["name"] == name and r["quick"] is True
    assert MACHINE_KEYS <= set(r["machine"]), r["machine"]
    assert r["machine"]["threads"] == 1
    assert isinstance(r["settings"], dict) and r["table"].startswith("|")
    assert isinstance(r["notes"], list) and r["notes"]


def test_sampler_overhead(results):
    rows = results["sampler_overhead"]["rows"]
    assert [(row["sampler"], row["net"]) for row in rows] == [
        ("ddim", "ResMLP"), ("fm", "ResMLP"), ("ddim", "UNet"), ("fm", "UNet")]
    for row in rows:
        what = f"{row['sampler']}/{row['net']}"
        _positive(row["params"], f"{what}.params")
        for key in ("bare_s", "edifice_s", "overhead_ratio"):
            _stat(row[key], f"{what}.{key}")
        _positive(row["overhead_ratio_of_minima"], f"{what}.overhead_ratio_of_minima")
        for loop, stat in row["loop_us_per_step"].items():
            _stat(stat, f"{what}.loop_us_per_step.{loop}")
        if HAS_DIFFUSERS:
            for key in ("peer_s", "peer_over_bare", "peer_over_edifice"):
                _stat(row[key], f"{what}.{key}")
            _positive(row["peer_over_edifice_of_minima"], f"{what}.peer_over_edifice_of_minima")
            # same timesteps and start: the two loops compute the same samples (float32 rounding apart)
            assert 0 <= row["max_abs_diff_vs_peer"] < 1e-3, (what, row["max_abs_diff_vs_peer"])


def test_train_throughput(results):
    rows = {row["model"]: row for row in results["train_throughput"]["rows"]}
    assert "edifice" in rows and ("diffusers" in rows) == HAS_DIFFUSERS
    for name, row in rows.items():
        _positive(row["params"], f"{name}.params")
        _stat(row["steps_per_s"], f"{name}.steps_per_s")
        _stat(row["samples_per_s"], f"{name}.samples_per_s")
        assert math.isfinite(row["final_loss"])
    if HAS_DIFFUSERS:
        _stat(rows["edifice"]["speed_vs_peer"], "speed_vs_peer")
        assert 0.5 < rows["edifice"]["params_vs_peer"] < 2.0


def test_main_job(results):
    res = results["main_job"]["result"]
    for key in ("wall_s", "cpu_s", "peak_rss_mib", "w2"):
        _stat(res[key], key)
    run = results["main_job"]["runs"][0]
    assert "w2" in run["metrics"] and "flow_matching" in run["command"]


def test_sampler_overhead_score(results):
    rows = results["sampler_overhead_score"]["rows"]
    assert [row["case"] for row in rows] == ["dpm_solver_pp", "euler", "heun"]
    for row in rows:
        what = row["case"]
        assert row["network_calls"] == (2 * row["steps"] - 1 if what == "heun" else row["steps"])
        for key in ("bare", "edifice"):
            _stat(row["per_call_s"][key], f"{what}.per_call_s.{key}")
        _stat(row["overhead_ratio"], f"{what}.overhead_ratio")
        for loop, stat in row["loop_us_per_call"].items():
            _stat(stat, f"{what}.loop_us_per_call.{loop}")
        if HAS_DIFFUSERS:
            _stat(row["edifice_over_peer"], f"{what}.edifice_over_peer")
            # same timesteps, noise and network: only float32 rounding separates the two samples
            assert 0 <= row["max_abs_diff_vs_peer"] <= 1e-4 * max(1.0, row["max_abs_sample"]), row


def test_score_nll(results):
    rows = results["score_nll"]["rows"]
    assert {(r["data"], r["family"]) for r in rows} == {
        (d, f) for d in ("moons", "8gaussians", "checkerboard") for f in ("score_sde", "edm", "flow_matching")}
    for r in rows:
        _positive(r["floor"], "floor")
        _positive(r["train"]["seconds"], "train.seconds")
        for key in ("default", "fine"):
            n = r["nll"][key]
            assert math.isfinite(n["nll"]) and n["non_finite"] == 0, (r["data"], r["family"], key, n)
            _positive(n["se"], "nll.se")


def test_sampler_quality(results):
    res = results["sampler_quality"]
    _positive(res["floor_w2"], "floor_w2")
    _positive(res["prior_w2"], "prior_w2")
    budgets = res["settings"]["budgets"]
    rows = res["rows"]
    assert {r["part"] for r in rows} == {"exact", "trained"} and len(rows) == 28
    for r in rows:
        assert [c["budget"] for c in r["cells"]] == budgets
        for c in r["cells"]:
            # network calls are counted, never more than the budget and never far below it
            assert c["budget"] - 2 <= c["calls"] <= c["budget"], (r["sampler"], c)
            assert math.isnan(c["w2"]) or c["w2"] > 0
        if r["part"] == "exact":
            assert all(math.isfinite(c["w2"]) for c in r["cells"]), r


def test_likelihood_cost(results):
    rows = {r["data"]: r for r in results["likelihood_cost"]["rows"]}
    assert set(rows) == {"moons", "digits"} and rows["digits"]["dims"] == 64
    variants = {"exact"} | {f"hutchinson × {k}" for k in results["likelihood_cost"]["settings"]["probes"]}
    for name, r in rows.items():
        assert set(r["per_sample_s"]) == variants
        for key, stat in r["per_sample_s"].items():
            _stat(stat, f"{name}.{key}")
            assert math.isfinite(r["nll"][key]["mean"])
        for key, n in r["nll"].items():
            if key != "exact":
                _positive(n["per_point_std"], f"{name}.{key}.per_point_std")


def test_vqvae_digits(results):
    rows = results["vqvae_digits"]["rows"]
    assert rows
    for r in rows:
        for key in ("recon_mse", "perplexity", "steps_per_s", "data_variance"):
            _positive(r[key], f"vqvae_digits {key}")
        assert 0 < r["usage"] <= 1 and r["restarted_total"] >= 0


def test_vae_mnist(results):
    r = results["vae_mnist"]
    assert len(r["rows"]) == 4  # one and two stochastic layers, VAE and IWAE (digits when MNIST is absent)
    for row in r["rows"]:
        ev = row["eval"]
        assert math.isfinite(ev["elbo"]) and ev["elbo"] < 0 and math.isfinite(ev["log_px"]) and ev["log_px"] < 0
        _positive(row["train"]["steps"], "vae_mnist steps")


def test_gan_losses(results):
    r = results["gan_losses"]
    losses = {row["loss"] for row in r["rows"]}
    assert {"non_saturating", "least_squares", "hinge", "wgan", "wgan_gp"} <= losses
    for row in r["rows"]:
        assert all(0 <= m <= 8 for m in row["modes"]) and 0 <= row["high_quality"] <= 1
        _positive(row["w2"], f"gan_losses {row['loss']} w2")


def test_guidance_digits(results):
    rows = results["guidance_digits"]["rows"]
    assert {r["scale"] for r in rows} >= {0, 1}
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 < r["classifier_test_accuracy"] <= 1
        _positive(r["sample_s"], "guidance_digits sample_s")


def test_dit_throughput(results):
    rows = {r["model"]: r for r in results["dit_throughput"]["rows"]}
    assert set(rows) == {"edifice", "diffusers"}
    for r in rows.values():
        _positive(r["params"], "dit_throughput params")


def test_latent_vs_pixel(results):
    rows = results["latent_vs_pixel"]["rows"]
    models = {r["model"] for r in rows}
    assert {"pixel", "latent"} <= models and any(m.startswith("real") for m in models)
    for r in rows:
        _positive(r["pixel_mmd"] + 1e-12, "latent_vs_pixel pixel_mmd")
        if r["model"] in ("pixel", "latent"):
            _positive(r["steps_per_s"], "latent_vs_pixel steps_per_s")
            _positive(r["sample_s_per_image"], "latent_vs_pixel sample_s_per_image")


def test_flows_nll(results):
    rows = [r for r in results["flows_nll"]["rows"] if r.get("library") in ("edifice", "zuko")]
    assert {r["kind"] for r in rows if r["library"] == "edifice"} >= {"realnvp", "nsf", "maf", "ffjord"}
    for r in rows:
        assert math.isfinite(r["nll"])


def test_few_step(results):
    r = results["few_step"]
    rows = r["results"]["moons"]["rows"]
    methods = [row["method"] for row in rows]
    for needle in ("DDIM", "DPM-Solver++", "flow matching", "consistency training", "consistency distillation",
                   "2-RF", "interpolant", "shortcut", "MeanFlow", "progressive distillation"):
        assert any(needle in m for m in methods), (needle, methods)
    calls = r["settings"]["calls"]
    for row in rows:
        for k, cell in row["cells"].items():
            assert cell["calls"] <= int(k) and (math.isnan(cell["w2"]) or cell["w2"] > 0), (row["method"], k, cell)
        _positive(row["train_seconds"], f"{row['method']}.train_seconds")
        assert row["train_calls"]["student"] >= 1
    one_step = [row for row in rows if row["method"].startswith(("consistency", "shortcut", "MeanFlow"))]
    assert all(row["cells"][str(calls[0])]["calls"] == 1 for row in one_step)
    _positive(r["results"]["moons"]["floor_w2"], "floor_w2")


def test_discrete_models(results):
    r = results["discrete_models"]["results"]
    assert set(r) >= {"a", "b_ebm_8gaussians", "digits", "d"}
    a = r["a"]
    assert [row["model"] for row in a["rows"]][:2] == ["PixelCNN", "MADE"]
    for row in a["rows"]:
        _positive(row["nll"], f"a.{row['model']}.nll")
        _positive(row["bpd"], f"a.{row['model']}.bpd")
    for row in r["b_ebm_8gaussians"]["rows"]:
        assert 0 <= row["modes"] <= 8 and 0 <= row["high_quality"] <= 1
        _positive(row["w2"], "ebm w2")
    kinds = {row.get("nll_kind") for row in r["digits"]["rows"]}
    assert {"exact", "bound"} <= kinds
    for row in r["digits"]["rows"]:
        assert 0 <= row["nn_hamming"] <= 64 and math.isfinite(row["mmd2"])
    for row in r["d"]["rows"]:
        for size, cell in row["by_size"].items():
            if row["model"].startswith("D3PM"):  # T calls whatever the image size
                assert cell["calls"] == int(row["model"].split("T=")[1].rstrip(")")), (row["model"], size, cell)
            else:  # one call per pixel
                assert cell["calls"] == int(size) ** 2, (row["model"], size, cell)
            _stat(cell["s_per_sample"], f"{row['model']}.{size}")


def test_leaderboard(results):
    r = results["leaderboard"]
    cells = r["cells"]
    assert {"moons/flow_matching", "moons/ddpm", "moons/vae", "digits/flow_matching", "digits/ddpm",
            "digits/vae"} <= set(cells), sorted(cells)
    for key, cell in cells.items():
        assert "error" not in cell, f"{key}: {cell.get('error')}"
        _positive(cell["peak_mem_mb"], f"{key}.peak_mem_mb")
        for row in cell["rows"]:
            what = f"{key}/{row['label']}"
            m = row["metrics"]
            _positive(row["calls"], f"{what}.calls")
            # sample_s is rounded to milliseconds: a one-call sampler of 128 points can read 0.0
            assert math.isfinite(row["sample_s"]) and row["sample_s"] >= 0, f"{what}.sample_s = {row['sample_s']!r}"
            if cell["data"] == "digits":  # the image metrics of edifice eval, on the digits feature network
                for k in ("fd", "kid", "fd_real"):
                    assert isinstance(m.get(k), float) and math.isfinite(m[k]), f"{what}.{k} = {m.get(k)!r}"
                assert m["features"] == "digits"
            else:
                _positive(m["w2"], f"{what}.w2")
    labels = [row["label"] for cell in cells.values() for row in cell["rows"]]
    assert any("diffusers DDIM" in label for label in labels)  # the peer drives the same trained network
