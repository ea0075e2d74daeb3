"""Score-sampler overhead: DPM-Solver++ and Karras Euler / Heun loops against diffusers' schedulers.

On one DDPM-style eps network (a ResMLP on 2-D points; linear betas 1e-4..0.02, T = 1000) and the same
starting noise, under ``torch.no_grad()``, for each pair

* ``dpm_solver`` in diffusers' ``DPMSolverMultistepScheduler`` mode (DPM-Solver++ 2M, linspace integer
  timesteps, final sigma 0, lower-order final steps) against that scheduler with its default config;
* ``edm.sample(edm.vp_denoiser(net, schedule), sampler="euler", sigmas=edm.vp_sigmas(schedule, N))``
  against ``EulerDiscreteScheduler``;
* the same with ``sampler="heun"`` (N steps = 2N - 1 network calls) against ``HeunDiscreteScheduler``,

this times, interleaved across variants (``common.time_interleaved``):

* **bare** — the same number of ``net(x, t)`` calls with the same shapes, nothing else;
* **edifice** — the edifice sampler;
* **diffusers** — the usual loop: ``x = noise * sched.init_noise_sigma``; for ``t`` in
  ``sched.timesteps``: ``eps = net(sched.scale_model_input(x, t), t)``;
  ``x = sched.step(eps, t, x).prev_sample``.

Reported: ms per network call (median [min, max]); ``edifice / bare`` (target <= 1.10) and
``edifice / diffusers`` (< 1 means edifice is faster), medians of per-round ratios; the loops' own
cost in µs per network call, driving an identity eps network ``x -> x`` (CPU time of this process on
the CPU); and ``max|Δ|`` between the edifice and diffusers samples (same timesteps and noise, so only
float32 rounding separates them).

Run: ``python benchmarks/sampler_overhead_score.py`` (``--quick``: tiny net, few steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import common
import torch
from sampler_overhead import _bare

NAME = "sampler_overhead_score"
CASES = ("dpm_solver_pp", "euler", "heun")
PEERS = {"dpm_solver_pp": "DPMSolverMultistepScheduler", "euler": "EulerDiscreteScheduler",
         "heun": "HeunDiscreteScheduler"}


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(mlp=dict(hidden=32, depth=1), batch=64, repeats=2, warmup=1,
                    steps={"dpm_solver_pp": 4, "euler": 4, "heun": 3})
    # The recipes' default step counts (edifice.train.recipes: ddpm sampler "dpm_solver_pp" 20, "euler" 50,
    # "heun" 25 = 49 calls).
    return dict(mlp=dict(hidden=256, depth=3), batch=1024, repeats=9, warmup=2,
                steps={"dpm_solver_pp": 20, "euler": 50, "heun": 25})


def _calls(case: str, steps: int) -> int:
    return 2 * steps - 1 if case == "heun" else steps


def _schedule():
    from edifice.schedules import make_schedule

    return make_schedule("linear", 1000)


def edifice_fn(case: str, net: Callable, noise: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
    """The edifice sampler for ``case`` on ``net`` from ``noise``."""
    from edifice.generative import dpm_solver, edm

    schedule = _schedule()
    shape = tuple(noise.shape)
    if case == "dpm_solver_pp":
        return lambda: dpm_solver.sample_discrete(net, shape, schedule=schedule, steps=steps, target="eps",
                                                  noise=noise)
    den = edm.vp_denoiser(net, schedule, target="eps")
    sigmas = edm.vp_sigmas(schedule, steps)
    return lambda: edm.sample(den, shape, sampler=case, sigmas=sigmas, noise=noise)


def diffusers_fn(case: str, net: Callable, noise: torch.Tensor, steps: int) -> Callable[[], torch.Tensor] | None:
    """diffusers' scheduler loop for ``case`` driving ``net``, or None without diffusers."""
    try:
        import diffusers
    except ImportError:
        return None
    sched = getattr(diffusers, PEERS[case])(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                           beta_end=0.02)
    batch = noise.shape[0]

    def run() -> torch.Tensor:
        sched.set_timesteps(steps, device=noise.device)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = net(sched.scale_model_input(x, t), t.to(noise.dtype).expand(batch))  # our nets take t (B,)
            x = sched.step(eps, t, x).prev_sample
        return x

    return run


def run_case(case: str, s: dict[str, Any], device: torch.device, repeats: int) -> dict[str, Any]:
    from edifice.generative import ddpm

    steps = s["steps"][case]
    calls = _calls(case, steps)
    torch.manual_seed(0)  # network initialisation only
    net = ddpm.build(data_shape=(2,), **s["mlp"]).to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    noise = torch.randn((s["batch"], 2), generator=torch.Generator().manual_seed(1)).to(device)

    def variants(n: int) -> dict[str, Callable[[], torch.Tensor]]:
        fns = {"bare": _bare(net, noise, 500.0, _calls(case, n)), "edifice": edifice_fn(case, net, noise, n)}
        peer = diffusers_fn(case, net, noise, n)
        if peer is not None:
            fns["diffusers"] = peer
        return fns

    fns = variants(steps)
    has_peer = "diffusers" in fns
    with torch.no_grad():
        times, outputs = common.time_interleaved(fns, device=device, warmup=s["warmup"], repeats=repeats,
                                                 warmup_fns=variants(min(steps, 3)))
    diff = float((outputs["edifice"] - outputs["diffusers"]).abs().max()) if has_peer else None
    scale = float(outputs["edifice"].abs().max())

    def identity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x

    loops = {"edifice": edifice_fn(case, identity, noise, steps)}
    peer_loop = diffusers_fn(case, identity, noise, steps)
    if peer_loop is not None:
        loops["diffusers"] = peer_loop
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    with torch.no_grad():
        loop_times, _ = common.time_interleaved(loops, device=device, warmup=2, repeats=max(5, 2 * repeats + 1),
                                                clock=clock)
    per_call_us = {k: common.summary([v / calls * 1e6 for v in vs]) for k, vs in loop_times.items()}

    row: dict[str, Any] = {
        "case": case, "steps": steps, "network_calls": calls, "net_options": s["mlp"], "params": params,
        "batch": s["batch"], "repeats": repeats, "times_s": times,
        "per_call_s": {k: common.summary([v / calls for v in vs]) for k, vs in times.items()},
        "overhead_ratio": common.summary(common.ratios(times["edifice"], times["bare"])),
        "overhead_ratio_of_minima": min(times["edifice"]) / min(times["bare"]),
        "peer": PEERS[case] if has_peer else None, "loop_us_per_call": per_call_us, "max_abs_sample": scale,
    }
    if has_peer:
        row["edifice_over_peer"] = common.summary(common.ratios(times["edifice"], times["diffusers"]))
        row["edifice_over_peer_of_minima"] = min(times["edifice"]) / min(times["diffusers"])
        row["peer_over_bare"] = common.summary(common.ratios(times["diffusers"], times["bare"]))
        row["max_abs_diff_vs_peer"] = diff
    return row


def _delta(r: dict[str, Any]) -> str:
    d = r.get("max_abs_diff_vs_peer")
    return "-" if d is None else f"{common.fmt(d, 2)} ({common.fmt(d / r['max_abs_sample'], 2)})"


LABELS = {"dpm_solver_pp": "DPM-Solver++ 2M", "euler": "Euler (vp_denoiser)", "heun": "Heun (vp_denoiser)"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    rows = []
    for case in CASES:
        t0 = time.perf_counter()
        rows.append(run_case(case, s, device, args.repeats or s["repeats"]))
        r = rows[-1]
        print(f"{case}: edifice/bare {r['overhead_ratio']['median']:.3f}, edifice/diffusers "
              f"{r.get('edifice_over_peer', {}).get('median', float('nan')):.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    ms = 1e3
    table_rows = []
    for r in rows:
        pc = r["per_call_s"]
        table_rows.append([
            f"{LABELS[r['case']]}, {r['steps']} steps", r["network_calls"], r.get("peer") or "-",
            common.fmt_stat(pc["bare"], ms), common.fmt_stat(pc["edifice"], ms),
            common.fmt_stat(pc["diffusers"], ms) if "diffusers" in pc else "-",
            f"{common.fmt(r['overhead_ratio']['median'])} ({common.fmt(r['overhead_ratio_of_minima'])})",
            f"{common.fmt(r['edifice_over_peer']['median'])} ({common.fmt(r['edifice_over_peer_of_minima'])})"
            if "edifice_over_peer" in r else "-",
            " / ".join(common.fmt(v["median"]) for v in r["loop_us_per_call"].values()),
            _delta(r),
        ])
    headers = ["sampler", "net calls", "diffusers peer", "bare ms/call", "edifice ms/call", "diffusers ms/call",
               "edifice/bare", "edifice/diffusers", "loop µs/call edifice / diffusers",
               "max|Δ| vs diffusers (relative)"]
    table = common.markdown_table(headers, table_rows)
    info = common.machine_info(device)
    m = s["mlp"]
    notes = [
        f"network: DDPM eps ResMLP (hidden {m['hidden']}, depth {m['depth']}, {rows[0]['params'] / 1e6:.2f}M "
        f"parameters, untrained) on 2-D points, batch {s['batch']}; linear betas 1e-4..0.02, T = 1000; diffusers "
        "schedulers with their default configs otherwise; all under torch.no_grad(); "
        f"{info['threads']} torch threads.",
        "ms per network call: median [min, max] over interleaved rounds after warm-up; ratios are medians of "
        "per-round ratios, in parentheses the ratio of the fastest rounds. edifice/bare target <= 1.10; "
        "edifice/diffusers < 1 means edifice is faster.",
        "loop µs/call: the same loops driving an identity eps network x -> x (the loop's own cost per network call), "
        "CPU time of the process on the CPU, wall time on a GPU.",
        "max|Δ|: largest absolute difference between the edifice and diffusers samples (float32), in parentheses "
        "divided by the largest |sample| (the untrained network's samples reach "
        + ", ".join(f"{r['max_abs_sample']:.3g}" for r in rows) + ").",
    ]
    payload = {"machine": info, "settings": s, "rows": rows}
    common.report(NAME, "Score-sampler overhead against diffusers", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
