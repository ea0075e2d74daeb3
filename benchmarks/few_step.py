"""Few-step generation: W2 at 1, 2, 4 and 8 network calls for every one-/few-step method, beside DDIM,
DPM-Solver++ and flow matching at the same calls and at many calls; training cost of each.

Every model is trained through :func:`edifice.train.fit` with its recipe, exactly as ``edifice train`` does
(the distilled ones with ``teacher=`` a run folder, as ``--teacher``): ResMLP ``hidden=128, depth=3``, batch
256, AdamW with a cosine schedule, EMA 0.999, the same step budget for every model (the teachers and every
student; progressive distillation spends it on each of its rounds, which the cost column adds up). Rows:

* **teachers / baselines** — DDPM (cosine schedule, v-prediction) sampled with DDIM (η = 0, trailing steps)
  and DPM-Solver++(2M); flow matching with Euler; EDM with Euler and with Heun (``2N - 1`` calls for ``N``
  steps: the budget gets the largest ``N`` that fits; on the Karras ladder from σ = 80, Heun with 2-4 steps
  overshoots even with the exact denoiser, which its row shows).
* **one- and few-step methods** — consistency training (iCT) and consistency distillation from the EDM
  teacher; rectified flow (1-RF), 2-RF (reflow on 10,000 pairs of the 1-RF teacher) and its one-step
  distillation; stochastic interpolants (linear, velocity); shortcut models; MeanFlow; progressive
  distillation from the DDPM teacher (16 DDIM steps -> 8 -> 4 -> 2 -> 1, one run per halving; the cell at
  ``k`` calls samples the round whose student takes ``k`` steps).

Network calls are counted with a forward hook on the sampling network, never assumed. The cell is the exact
W2 (:func:`edifice.metrics.w2`) between ``n`` samples and ``n`` held-out points; ``(data)`` is W2 between
two fresh data samples (the floor at this ``n``), ``N(0, I)`` the untrained reference. "many" samples each
baseline at 100 calls (Heun: 99). Training cost: wall seconds of the model's own training, and of its
teachers (the whole chain), and the network forward calls per training step (student and teacher).

Image data (digits / MNIST Fréchet distance) waits for the evaluation-suite issue, which brings the
feature network it needs; this benchmark reports 2-D sets only.

Run: ``python benchmarks/few_step.py`` (default ``--threads 1``; ``--steps`` sets the budget;
``--quick``: tiny nets, 20 steps, 200 points, seconds).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

from edifice.data import toy2d
from edifice.metrics import w2
from edifice.train import fit, get_recipe, load
from edifice.train.teachers import student_of

NAME = "few_step"


def _settings(args: Any) -> dict[str, Any]:
    if args.quick:
        s = dict(datasets=["moons"], steps=20, batch=64, hidden=16, depth=1, n=200, calls=[1, 2], many=4,
                 n_pairs=128, pd_start=4)
    else:
        s = dict(datasets=["moons", "8gaussians"], steps=3000, batch=256, hidden=128, depth=3, n=2000,
                 calls=[1, 2, 4, 8], many=100, n_pairs=10_000, pd_start=16)
    if args.steps is not None:
        s["steps"] = args.steps
    return s


class Counter:
    """Counts forward calls of a module (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        self.handle.remove()


def _train(root: Path, name: str, family: str, data: str, s: dict[str, Any], options: dict[str, Any]) -> dict:
    out = root / f"{data}-{name}"
    base = {"hidden": s["hidden"], "depth": s["depth"]} if family != "progressive_distillation" else {}
    t0 = time.perf_counter()
    fit(family, data, steps=s["steps"], batch_size=s["batch"], out=out, options={**base, **options},
        progress=False, plots=False, seed=0)
    seconds = time.perf_counter() - t0
    nets, config = load(out)
    calls = _train_calls(family, data, config, nets)
    return {"run": out, "seconds": seconds, "train_calls": calls}


def _train_calls(family: str, data: str, config: dict, nets: Any) -> dict[str, int]:
    """Forward calls of the student (and teacher) in one training loss evaluation."""
    recipe = get_recipe(family)
    student = student_of(nets)
    counters = {"student": Counter(student)}
    if hasattr(nets, "teacher"):
        counters["teacher"] = Counter(nets.teacher.net)
    x = toy2d.sample(data, 8, generator=torch.Generator().manual_seed(0))
    try:
        recipe.loss(nets, x, None, options=config["options"], generator=torch.Generator().manual_seed(0),
                    step=1, total_steps=2)
    finally:
        for c in counters.values():
            c.close()
    return {k: c.calls for k, c in counters.items()}


def _sample(run: Path, n: int, sampler: str | None, steps: int | None, seed: int) -> tuple[torch.Tensor, int]:
    nets, config = load(run)
    recipe = get_recipe(config["family"])
    counter = Counter(student_of(nets))
    try:
        with torch.no_grad():
            x = recipe.sample(nets, n, options=config["options"], sampler=sampler, steps=steps,
                              generator=torch.Generator().manual_seed(seed))
    finally:
        counter.close()
    return x, counter.calls


def _cell(run: Path, held_out: torch.Tensor, sampler: str | None, steps: int | None) -> dict[str, Any]:
    x, calls = _sample(run, held_out.shape[0], sampler, steps, seed=1000)
    finite = bool(torch.isfinite(x).all())
    return {"calls": calls, "w2": float(w2(x, held_out)) if finite else float("nan")}


def _heun_steps(budget: int) -> int:
    return max(1, (budget + 1) // 2)


def run_data(data: str, s: dict[str, Any], root: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    held_out = toy2d.sample(data, s["n"], generator=torch.Generator().manual_seed(12345))
    rows: list[dict[str, Any]] = []
    t = {}
    t["ddpm"] = _train(root, "ddpm", "ddpm", data, s, {"schedule": "cosine", "target": "v"})
    t["fm"] = _train(root, "fm", "flow_matching", data, s, {})
    t["edm"] = _train(root, "edm", "edm", data, s, {})
    t["rf1"] = _train(root, "rf1", "rectified_flow", data, s, {})
    t["rf2"] = _train(root, "rf2", "rectified_flow", data, s, {"teacher": str(t["rf1"]["run"]),
                                                                 "n_pairs": s["n_pairs"]})
    t["rf2_distill"] = _train(root, "rf2d", "rectified_flow", data, s,
                              {"teacher": str(t["rf2"]["run"]), "method": "distill", "n_pairs": s["n_pairs"]})
    t["ct"] = _train(root, "ct", "consistency", data, s, {})
    t["cd"] = _train(root, "cd", "consistency", data, s, {"teacher": str(t["edm"]["run"])})
    t["si"] = _train(root, "si", "interpolant", data, s, {})
    t["shortcut"] = _train(root, "shortcut", "shortcut", data, s, {})
    t["meanflow"] = _train(root, "meanflow", "meanflow", data, s, {})
    pd_runs, prev, k = {}, t["ddpm"]["run"], s["pd_start"] // 2
    pd_seconds = 0.0
    while k >= 1:
        r = _train(root, f"pd{k}", "progressive_distillation", data, s, {"teacher": str(prev), "student_steps": k}
                   if prev == t["ddpm"]["run"] else {"teacher": str(prev)})
        pd_seconds += r["seconds"]
        r["chain_seconds"] = pd_seconds
        pd_runs[k] = r
        prev, k = r["run"], k // 2

    def row(method: str, sampler: str | None, cells: dict[int, dict], teacher_s: float, own: dict,
            many: dict | None = None) -> None:
        rows.append({"method": method, "sampler": sampler, "cells": cells, "many": many,
                     "train_seconds": own["seconds"], "teacher_seconds": teacher_s,
                     "train_calls": own["train_calls"]})

    calls = s["calls"]
    many = s["many"]
    # Baselines at the same calls and at many calls.
    row("DDIM (DDPM v, cosine)", "ddim", {k: _cell(t["ddpm"]["run"], held_out, "ddim", k) for k in calls},
        0.0, t["ddpm"], _cell(t["ddpm"]["run"], held_out, "ddim", many))
    row("DPM-Solver++(2M) (same DDPM)", "dpm_solver_pp",
        {k: _cell(t["ddpm"]["run"], held_out, "dpm_solver_pp", k) for k in calls}, 0.0, t["ddpm"],
        _cell(t["ddpm"]["run"], held_out, "dpm_solver_pp", many))
    row("flow matching, Euler", "euler", {k: _cell(t["fm"]["run"], held_out, "euler", k) for k in calls},
        0.0, t["fm"], _cell(t["fm"]["run"], held_out, "euler", many))
    row("EDM, Euler", "euler", {k: _cell(t["edm"]["run"], held_out, "euler", k) for k in calls},
        0.0, t["edm"], _cell(t["edm"]["run"], held_out, "euler", many))
    row("EDM, Heun", "heun", {k: _cell(t["edm"]["run"], held_out, "heun", _heun_steps(k)) for k in calls},
        0.0, t["edm"], _cell(t["edm"]["run"], held_out, "heun", _heun_steps(many)))
    # One- and few-step methods.
    for method, key, sampler, teacher_s in [
        ("consistency training (iCT)", "ct", None, 0.0),
        ("consistency distillation (EDM teacher)", "cd", None, t["edm"]["seconds"]),
        ("rectified flow 1-RF, Euler", "rf1", "euler", 0.0),
        ("2-RF (reflow), Euler", "rf2", "euler", t["rf1"]["seconds"]),
        ("2-RF distilled, Euler", "rf2_distill", "euler", t["rf1"]["seconds"] + t["rf2"]["seconds"]),
        ("stochastic interpolant (linear), Euler", "si", "euler", 0.0),
        ("shortcut model", "shortcut", None, 0.0),
        ("MeanFlow", "meanflow", None, 0.0),
    ]:
        row(method, sampler, {k: _cell(t[key]["run"], held_out, sampler, k) for k in calls}, teacher_s, t[key])
    pd_cells = {k: _cell(pd_runs[k]["run"], held_out, "ddim", k) for k in calls if k in pd_runs}
    last = pd_runs[min(pd_runs)]
    rows.append({"method": f"progressive distillation ({s['pd_start']} -> 1 DDIM steps)", "sampler": "ddim",
                 "cells": pd_cells, "many": None, "train_seconds": last["chain_seconds"],
                 "teacher_seconds": t["ddpm"]["seconds"], "train_calls": last["train_calls"]})
    floor = [float(w2(toy2d.sample(data, s["n"], generator=torch.Generator().manual_seed(50 + i)), held_out))
             for i in range(3)]
    prior = float(w2(torch.randn(s["n"], 2, generator=torch.Generator().manual_seed(7)), held_out))
    return rows, {"floor_w2": statistics.mean(floor), "floor_w2_std": statistics.pstdev(floor), "prior_w2": prior}


def _table_rows(data: str, rows: list[dict[str, Any]], ref: dict[str, Any], calls: list[int]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = []
        for k in calls:
            c = r["cells"].get(k)
            if c is None:
                cells.append("—")
            else:
                note = "" if c["calls"] == k else f" ({c['calls']})"
                cells.append(f"{common.fmt(c['w2'])}{note}")
        m = r["many"]
        many_cell = "—" if m is None else f"{common.fmt(m['w2'])} ({m['calls']})"
        tc = r["train_calls"]
        calls_cell = f"{tc['student']}" + (f" + {tc['teacher']} teacher" if "teacher" in tc else "")
        out.append([data, r["method"], *cells, many_cell, f"{r['train_seconds']:.1f}", f"{r['teacher_seconds']:.1f}",
                    calls_cell])
    floor = f"{common.fmt(ref['floor_w2'])} ± {common.fmt(ref['floor_w2_std'], 2)}"
    out.append([data, "(data: two samples)"] + [floor] * len(calls) + ["", "", "", ""])
    out.append([data, "(N(0, I))"] + [common.fmt(ref["prior_w2"])] * len(calls) + ["", "", "", ""])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (default 3000)")
    p.set_defaults(threads=1)  # tiny MLPs: a second thread only adds synchronisation
    args = p.parse_args(argv)
    device = common.setup(args)
    s = _settings(args)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    table_rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="edifice-few-step-") as tmp:
        for data in s["datasets"]:
            rows, ref = run_data(data, s, Path(tmp))
            results[data] = {"rows": rows, **ref}
            table_rows += _table_rows(data, rows, ref, s["calls"])
    headers = (["data", "method"] + [f"W2 @ {k} calls" for k in s["calls"]]
               + [f"W2 @ many (calls)", "train s", "teachers s", "net calls / train step"])
    table = common.markdown_table(headers, table_rows)
    notes = [
        f"Every model trained {s['steps']} steps (batch {s['batch']}, ResMLP {s['hidden']}x{s['depth']}, AdamW "
        "lr 1e-3 cosine, EMA 0.999) through edifice.train.fit; progressive distillation spends that on each "
        "halving round (its 'train s' is the whole chain).",
        "A cell shows the counted network calls in parentheses when they differ from the column's; W2 on "
        f"{s['n']} samples against {s['n']} held-out points, one seed.",
        "Fréchet distance on digits / MNIST waits for the evaluation-suite issue (its feature network).",
        "Progressive distillation's cells come from different rounds, but DDIM is deterministic and every round "
        "learns the same map from noise to sample (its teacher's), so the same seed gives nearly the same samples.",
        "Calls per training step count forward passes: MeanFlow's one call is a forward-mode JVP (about 2-4x a "
        "plain forward on CPU); reflow's teacher calls happen once, when its pairs are drawn (inside 'train s').",
        f"total {time.perf_counter() - start:.0f} s",
    ]
    payload = {"machine": common.machine_info(device), "settings": s, "results": results}
    common.report(NAME, "Few-step generation on 2-D data: W2 against network calls, and training cost", table,
                  payload, args, notes)
    return {"name": NAME, "quick": bool(args.quick), **payload, "table": table, "notes": notes}


if __name__ == "__main__":
    main()
