"""Cost of the likelihood per sample: exact divergence against Hutchinson's estimator (1 and more probes).

The log-likelihood of a score-SDE (VP) model integrates the divergence of the probability-flow field
along the ODE (``score_sde.log_prob``; ``edifice.integrators.cnf_log_prob``). The exact divergence
costs one backward pass per data dimension and evaluation; Hutchinson's estimator ``ε^T J ε`` costs one
per probe, but adds variance. This benchmark measures both, on

* **moons** (2-D points; ResMLP), and
* **digits** (scikit-learn's 8x8 digits, ``edifice.data.load("digits")``, 64 dimensions, flattened to
  vectors in ``[-1, 1]`` for a ResMLP; a continuous density, no dequantisation),

with briefly trained networks (budget in the notes), the same solver for every variant, and reports:

* **time per sample** — seconds of one ``log_prob`` call on a batch, divided by the batch size, as the
  median [min, max] over timed rounds interleaved across the variants (``common.time_interleaved``);
  and the ratio to the exact divergence (median of per-round ratios);
* **NLL** — mean over the held-out points; for Hutchinson, over ``seeds`` probe draws: the mean of
  the set means, their std across seeds (the noise of a reported test NLL), the mean per-point std
  across seeds (the noise of one sample's NLL), and the bias against the exact value.

Run: ``python benchmarks/likelihood_cost.py`` (``--quick``: tiny nets, few points, coarse solver).
"""

from __future__ import annotations

import math
import time
from typing import Any

import common
import torch

NAME = "likelihood_cost"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(
            cases={"moons": dict(hidden=32, depth=1, steps=20, batch=64),
                   "digits": dict(hidden=32, depth=1, steps=20, batch=64)},
            probes=[1, 4], seeds=3, n_nll=32, time_batch=16, solver=dict(method="heun", steps=3), repeats=1, lr=2e-3)
    return dict(
        cases={"moons": dict(hidden=128, depth=3, steps=2000, batch=256),
               "digits": dict(hidden=256, depth=3, steps=2000, batch=128)},
        probes=[1, 4, 16], seeds=5, n_nll=297, time_batch=100, solver=dict(method="heun", steps=25), repeats=3,
        lr=2e-3)


def digits_points() -> Any:
    """The digits split as a ``points`` DataSource of flattened 64-vectors in ``[-1, 1]``."""
    from edifice.data import DataSource, load

    src = load("digits")
    flat = lambda x: (x * 2.0 - 1.0).reshape(x.shape[0], -1)  # noqa: E731  (N, 1, 8, 8) -> (N, 64)
    return DataSource("digits64", "points", (64,), None, train_x=flat(src.train_x), test_x=flat(src.test_x))


def _log_prob(net: torch.nn.Module, x: torch.Tensor, solver: dict[str, Any], divergence: str, n_probes: int,
              seed: int) -> torch.Tensor:
    from edifice.generative import score_sde

    g = torch.Generator(device=x.device).manual_seed(seed)
    kw = dict(divergence=divergence) if divergence == "exact" else dict(divergence="hutchinson", n_probes=n_probes,
                                                                          generator=g)
    return score_sde.log_prob(net, x, eps=1e-5, **solver, **kw)


def run_case(name: str, c: dict[str, Any], s: dict[str, Any], device: torch.device, repeats: int) -> dict[str, Any]:
    from edifice.data import load
    from score_nll import train

    data = digits_points() if name == "digits" else load(name)
    net, info = train("score_sde", data, dict(c, lr=s["lr"]), device, options={"sde": "vp"})
    x = data.test_set(s["n_nll"])[0].to(device)
    dims = x[0].numel()
    solver = s["solver"]
    variants = {"exact": ("exact", 1)} | {f"hutchinson × {k}": ("hutchinson", k) for k in s["probes"]}

    # NLL: exact once; each Hutchinson variant with `seeds` probe draws.
    t0 = time.perf_counter()
    nll = {}
    exact = -_log_prob(net, x, solver, "exact", 1, 0).to(torch.float64)  # (N,)
    nll["exact"] = {"mean": float(exact.mean()), "se": float(exact.std() / math.sqrt(exact.numel()))}
    for key, (div, k) in variants.items():
        if div == "exact":
            continue
        runs = torch.stack([-_log_prob(net, x, solver, div, k, 100 + seed).to(torch.float64)
                            for seed in range(s["seeds"])])  # (S, N)
        means = runs.mean(1)  # (S,)
        nll[key] = {"mean": float(means.mean()), "std_across_seeds": float(means.std()),
                    "per_point_std": float(runs.std(0).mean()), "bias_vs_exact": float(means.mean() - exact.mean()),
                    "seed_means": means.tolist()}
    nll_s = time.perf_counter() - t0

    # Timing: one log_prob call on `time_batch` points per variant and round, rounds interleaved.
    xb = x[: s["time_batch"]]
    fns = {key: (lambda d=div, k=k: _log_prob(net, xb, solver, d, k, 0)) for key, (div, k) in variants.items()}
    warm = {key: (lambda d=div, k=k: _log_prob(net, xb[:2], dict(solver, steps=1), d, k, 0))
            for key, (div, k) in variants.items()}
    times, _ = common.time_interleaved(fns, device=device, warmup=1, repeats=repeats, warmup_fns=warm)
    b = xb.shape[0]
    per_sample = {key: common.summary([v / b for v in vs]) for key, vs in times.items()}
    vs_exact = {key: common.summary(common.ratios(vs, times["exact"])) for key, vs in times.items()}
    evals = solver["steps"] * (2 if solver["method"] in ("heun", "midpoint") else 4 if solver["method"] == "rk4" else 1)
    backward = {key: evals * (dims if div == "exact" else k) for key, (div, k) in variants.items()}
    print(f"{name}: trained {info['seconds']:.0f} s; NLL runs {nll_s:.0f} s; "
          + ", ".join(f"{k} {v['median'] * 1e3:.2f} ms/sample" for k, v in per_sample.items()), flush=True)
    return {"data": name, "dims": dims, "train": info, "solver": solver, "n_nll": int(x.shape[0]),
            "time_batch": b, "repeats": repeats, "times_s": times, "per_sample_s": per_sample,
            "time_vs_exact": vs_exact, "backward_passes_per_sample": backward, "nll": nll, "nll_seconds": nll_s}


def render_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of :func:`run_case` rows."""
    table_rows = []
    for r in rows:
        for key, stat in r["per_sample_s"].items():
            n = r["nll"][key]
            if key == "exact":
                nll_cell, noise_cell, bias_cell = f"{n['mean']:.3f} ± {n['se']:.3f} (SE)", "0", "0"
            else:
                nll_cell = f"{n['mean']:.3f} ± {n['std_across_seeds']:.3f}"
                noise_cell = common.fmt(n["per_point_std"])
                se = n["std_across_seeds"] / math.sqrt(len(n["seed_means"]))
                bias_cell = f"{n['bias_vs_exact']:+.3f} ± {se:.3f}"
            table_rows.append([
                f"{r['data']} ({r['dims']}-D)", key, common.fmt_stat(stat, 1e3),
                common.fmt(r["time_vs_exact"][key]["median"]), r["backward_passes_per_sample"][key],
                nll_cell, noise_cell, bias_cell,
            ])
    headers = ["data", "divergence", "ms / sample", "time vs exact", "backward passes per solve",
               "NLL (nats)", "per-point std", "bias vs exact (± SE)"]
    return common.markdown_table(headers, table_rows)


def make_notes(s: dict[str, Any], total_s: float) -> list[str]:
    """The notes printed under the table."""
    sv = s["solver"]
    budget = "; ".join(f"{k}: ResMLP hidden {c['hidden']} depth {c['depth']}, {c['steps']} steps, batch {c['batch']}"
                       for k, c in s["cases"].items())
    return [
        f"model: score SDE (VP, beta 0.1..20), trained with edifice.train.fit ({budget}; AdamW, cosine lr {s['lr']}, "
        "EMA weights). log_prob from t = 1e-5 to 1 with "
        f"{sv['method']} × {sv['steps']} steps for every variant (the solver is not the subject here).",
        f"ms / sample: one log_prob call on {s['time_batch']} held-out points divided by {s['time_batch']}, median "
        "[min, max] over interleaved rounds after a warm-up; 'time vs exact' = median of per-round ratios.",
        f"NLL: over the first {s['n_nll']} held-out points (digits: the 297-image test split); exact: mean ± standard "
        f"error over points; Hutchinson (Rademacher probes, fixed along each solve): mean over {s['seeds']} probe "
        "seeds ± the std of the set mean across seeds; per-point std = mean over points of the std across seeds; "
        "bias = Hutchinson mean - exact ± its standard error (std across seeds / sqrt(seeds)): the estimator is "
        "unbiased, so a bias within about 2 SE is noise. Every probe count uses the same probe seeds, so the rows' "
        "errors are correlated.",
        "digits: 8x8 images flattened to 64-vectors in [-1, 1], continuous density without dequantisation (not "
        "comparable with bits/dim in the literature).",
        f"total time {total_s:.0f} s.",
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    start = time.perf_counter()
    rows = [run_case(name, c, s, device, args.repeats or s["repeats"]) for name, c in s["cases"].items()]

    table = render_table(rows)
    info = common.machine_info(device)
    notes = make_notes(s, time.perf_counter() - start)
    payload = {"machine": info, "settings": s, "rows": rows}
    common.report(NAME, "Likelihood cost: exact divergence vs Hutchinson", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
