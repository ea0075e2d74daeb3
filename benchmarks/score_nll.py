"""Test NLL of score-SDE (VP) and EDM models on the 2-D toy sets, against the sets' entropy floors.

For each of moons, 8gaussians and checkerboard this trains, with one stated budget, a score-SDE VP
network, an EDM denoiser and (as a reference) a flow-matching velocity network (``edifice.train.fit``:
ResMLP, AdamW, cosine learning rate, EMA weights), then evaluates the negative log-likelihood in nats
of the held-out points through each family's ``log_prob`` (the probability-flow ODE / the flow, with
the exact divergence: two backward passes per evaluation in 2-D), with two solver settings: the
recipe's default (what ``edifice train`` reports) and a fine one (RK4 with many steps), so that the
solver's share of the number is visible.

The floor is the differential entropy of the data (FFJORD's scalings; ``../shared/FACTS.md``): moons
2.394, 8gaussians 2.834, checkerboard ln 32 = 3.466 nats. The test NLL is a cross-entropy, so
``NLL - floor`` estimates ``KL(data || model) >= 0`` up to sampling error (± the standard error shown)
and solver error; a value clearly below the floor means a bug.

Run: ``python benchmarks/score_nll.py`` (``--quick``: 30 training steps, 100 points, coarse solvers).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import common
import torch

from edifice.train import RECIPES

NAME = "score_nll"
FLOORS = {"moons": 2.394, "8gaussians": 2.834, "checkerboard": math.log(32)}
FAMILIES = ("score_sde", "edm", "flow_matching")
LABELS = {"score_sde": "score SDE (VP)", "edm": "EDM", "flow_matching": "flow matching (reference)"}


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(datasets=["moons", "8gaussians", "checkerboard"], n_test=100, nll_batch=100,
                    train=dict(steps=30, batch=64, lr=2e-3, hidden=32, depth=1),
                    solvers={"default": None, "fine": dict(method="rk4", steps=4)})
    return dict(datasets=["moons", "8gaussians", "checkerboard"], n_test=2000, nll_batch=1000,
                train=dict(steps=3000, batch=256, lr=2e-3, hidden=128, depth=3),
                solvers={"default": None, "fine": dict(method="rk4", steps=200)})


# The recipes' NLL solvers (edifice.train.recipes): what `edifice train` / `edifice evaluate` report.
DEFAULT_SOLVER = {name: dict(method=RECIPES[name].settings["nll_method"], steps=RECIPES[name].settings["nll_steps"])
                  for name in ("score_sde", "edm", "flow_matching")}
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


_TRAINED: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}


def train(family: str, data: Any, t: dict[str, Any], device: torch.device, *, options: dict | None = None,
          seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train ``family`` on ``data`` with budget ``t`` (steps, batch, lr, hidden, depth); return the EMA net.

    Used by the other score benchmarks too, so that every trained number in them has the same recipe:
    ``edifice.train.fit`` (AdamW, cosine learning rate, gradient clipping 1, EMA 0.999), no files. Within one
    process (``run_all.py``) a network with the same family, data set name, budget, options and seed is
    trained once and shared (the nets are only evaluated, never changed); ``info["reused"]`` says so.
    """
    from edifice.train import fit

    name = data if isinstance(data, str) else getattr(data, "name", None)
    key = repr((family, name, sorted(t.items()), sorted((options or {}).items()), seed, str(device)))
    if isinstance(data, str) and key in _TRAINED:
        net, info = _TRAINED[key]
        return net, {**info, "reused": True}
    t0 = time.perf_counter()
    res = fit(family, data, steps=t["steps"], batch_size=t["batch"], lr=t["lr"], lr_schedule="cosine", seed=seed,
              out=None, options={"hidden": t["hidden"], "depth": t["depth"], **(options or {})}, progress=False,
              plots=False, device=device)
    net = res.ema_nets.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    last = res.history[-1] if res.history else {}
    info = {"family": family, "steps": res.step, "seconds": time.perf_counter() - t0,
            "final_loss": float(last.get("loss", math.nan)), "options": res.config["options"], "reused": False}
    if isinstance(data, str):
        _TRAINED[key] = (net, info)
    return net, info


def log_prob(family: str, net: torch.nn.Module, x: torch.Tensor, solver: dict[str, Any]) -> torch.Tensor:
    """``(B,)`` log-density in nats through the family's ``log_prob`` with the exact divergence."""
    from edifice.generative import edm, flow_matching, score_sde

    if family == "score_sde":
        return score_sde.log_prob(net, x, eps=1e-5, divergence="exact", **solver)
    if family == "edm":
        return edm.log_prob(net, x, divergence="exact", **solver)
    return flow_matching.log_prob(net, x, divergence="exact", **solver)


def nll(family: str, net: torch.nn.Module, x: torch.Tensor, solver: dict[str, Any], batch: int) -> dict[str, Any]:
    """Mean NLL over ``x`` (in chunks of ``batch``), its standard error, and the seconds it took."""
    t0 = time.perf_counter()
    vals = torch.cat([-log_prob(family, net, x[i:i + batch], solver) for i in range(0, x.shape[0], batch)])
    vals = vals.to(torch.float64)
    finite = torch.isfinite(vals)
    v = vals[finite]
    return {"nll": float(v.mean()) if v.numel() else math.nan,
            "se": float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else math.nan,
            "non_finite": int((~finite).sum()), "seconds": time.perf_counter() - t0, **solver,
            "evals": solver["steps"] * EVALS_PER_STEP.get(solver["method"], 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    from edifice.data import load

    start = time.perf_counter()
    rows = []
    for data in s["datasets"]:
        x = load(data).test_set(s["n_test"])[0].to(device)
        for family in FAMILIES:
            net, info = train(family, data, s["train"], device)
            row: dict[str, Any] = {"data": data, "family": family, "floor": FLOORS[data], "train": info, "nll": {}}
            for key, solver in s["solvers"].items():
                solver = solver or DEFAULT_SOLVER[family]
                if args.quick and key == "default":
                    solver = dict(solver, steps=4)
                row["nll"][key] = nll(family, net, x, solver, s["nll_batch"])
            rows.append(row)
            d, f = row["nll"]["default"], row["nll"]["fine"]
            print(f"{data:12s} {family:14s} NLL {d['nll']:.3f} ({d['method']} {d['steps']}) / {f['nll']:.3f} "
                  f"({f['method']} {f['steps']}), floor {FLOORS[data]:.3f}; train {info['seconds']:.0f} s, "
                  f"NLL {d['seconds'] + f['seconds']:.0f} s", flush=True)

    table_rows = []
    for r in rows:
        d, f = r["nll"]["default"], r["nll"]["fine"]
        table_rows.append([
            r["data"], LABELS[r["family"]], common.fmt(r["floor"], 4),
            f"{d['nll']:.3f} ± {d['se']:.3f}", f"{d['method']} × {d['steps']}",
            f"{f['nll']:.3f} ± {f['se']:.3f}", f"{f['nll'] - r['floor']:+.3f}",
            common.fmt(r["train"]["final_loss"]), f"{r['train']['seconds']:.0f}",
            f"{d['seconds']:.1f} / {f['seconds']:.1f}",
        ])
    fine = s["solvers"]["fine"]
    headers = ["data", "model", "floor (nats)", "NLL, recipe solver", "recipe solver",
               f"NLL, {fine['method']} × {fine['steps']}", "gap to floor (fine)", "final train loss", "train s",
               "NLL s (recipe / fine)"]
    table = common.markdown_table(headers, table_rows)
    info = common.machine_info(device)
    t = s["train"]
    gaps = [r["nll"]["fine"]["nll"] - r["floor"] for r in rows if math.isfinite(r["nll"]["fine"]["nll"])]
    notes = [
        f"training (each row): edifice.train.fit, ResMLP hidden {t['hidden']} depth {t['depth']}, {t['steps']} AdamW "
        f"steps, batch {t['batch']}, cosine lr {t['lr']}, grad clip 1, EMA 0.999 (the EMA weights are evaluated), "
        "seed 0; every other option is the family's default (VP beta 0.1..20, variance weighting; EDM sigma_data 0.5, "
        "P_mean -1.2, P_std 1.2; flow matching sigma_min 0, uniform t).",
        f"NLL: mean ± standard error over the {s['n_test']} held-out points (edifice.data.load(name).test_set()), "
        "exact divergence; score SDE from t = 1e-5, EDM from sigma 0.002 to 80 (Karras ladder, rho 7), flow matching "
        "t in [0, 1]. 'recipe solver' = the family's default in edifice.train.recipes.",
        "floor = differential entropy of the data (moons 2.394, 8gaussians 2.834 (Monte Carlo, ± 0.005), "
        "checkerboard ln 32); NLL - floor estimates KL(data || model).",
        f"median gap to the floor (fine solver) over all rows: {statistics.median(gaps):+.3f} nats." if gaps else
        "no finite NLL.",
        f"total time {time.perf_counter() - start:.0f} s.",
    ]
    payload = {"machine": info, "settings": s, "rows": rows}
    common.report(NAME, "Test NLL (nats) of score-based models on 2-D toy data", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
