"""Sampler overhead: how much a sampler loop costs beyond its network calls, and against diffusers.

For each case (50-step DDIM with eta = 0; 20-step Euler flow matching) and each network (the
ResMLP at batch 1024 on 2-D points; the UNet at batch 64 on 1x28x28 images) this times, under
``torch.no_grad()``, on the same network and the same starting noise:

* **bare** — a loop of the same number of ``net(x, t)`` calls with the same shapes, nothing else;
* **edifice** — ``ddim.sample(net, shape, steps=50, eta=0.0, noise=x_T)`` /
  ``flow_matching.sample(net, shape, steps=20, method="euler", noise=x_0)``;
* **diffusers** — the usual scheduler loop driving the same network:
  ``for t in sched.timesteps: eps = net(x, t); x = sched.step(eps, t, x, eta=0).prev_sample`` with
  ``DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
  beta_end=0.02, clip_sample=False)``; for flow matching ``FlowMatchEulerDiscreteScheduler`` on the
  same uniform grid (``set_timesteps(sigmas=1 - i/steps)``; diffusers' time is ``sigma = 1 - t``
  and its velocity points the other way, so the loop passes ``-net(x, 1 - sigma)``).

Reported: median [min, max] milliseconds per sample call; ``edifice / bare`` (the overhead ratio,
target <= 1.10) and ``diffusers / edifice`` (> 1 means edifice is faster), both as medians of
per-round ratios; and the largest difference between the edifice and diffusers results (same
timesteps: DDIM uses ``spacing="leading"`` like diffusers' default, so the two should agree up
to float32 rounding).

Run: ``python benchmarks/sampler_overhead.py`` (``--quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import common  # noqa: F401  (puts the checkout on sys.path)
import torch

NAME = "sampler_overhead"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(
            mlp=dict(hidden=32, depth=1), mlp_batch=64, mlp_repeats=2,
            unet=dict(base_channels=8, channel_mults=(1, 2)), image=(1, 8, 8), unet_batch=4, unet_repeats=1,
            ddim_steps=5, fm_steps=4, warmup=1,
        )
    return dict(
        mlp=dict(hidden=256, depth=3), mlp_batch=1024, mlp_repeats=9,
        # base_channels=16: on the 2-core development machine one call of the base-32 UNet at batch 64 takes
        # 0.5-4 s depending on load, and 50-step DDIM is 50 of them per round and variant.
        unet=dict(base_channels=16, channel_mults=(1, 2)), image=(1, 28, 28), unet_batch=64, unet_repeats=2,
        ddim_steps=50, fm_steps=20, warmup=2,
    )


def _bare(net: Callable, x: torch.Tensor, t_value: float, calls: int) -> Callable[[], torch.Tensor]:
    t = torch.full((x.shape[0],), t_value, device=x.device, dtype=x.dtype)

    def run() -> torch.Tensor:
        out = x
        for _ in range(calls):
            out = net(x, t)
        return out

    return run


def _diffusers_ddim(net: Callable, noise: torch.Tensor, steps: int) -> Callable[[], torch.Tensor] | None:
    try:
        from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    except ImportError:
        return None
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=False)
    batch = noise.shape[0]

    def run() -> torch.Tensor:
        sched.set_timesteps(steps, device=noise.device)
        x = noise
        for t in sched.timesteps:
            eps = net(x, t.to(noise.dtype).expand(batch))  # our nets take t of shape (B,)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
        return x

    return run


def _diffusers_fm(net: Callable, noise: torch.Tensor, steps: int) -> Callable[[], torch.Tensor] | None:
    try:
        from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
    except ImportError:
        return None
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    sigmas = [1.0 - i / steps for i in range(steps)]  # edifice's uniform grid, seen from diffusers' side
    batch = noise.shape[0]

    def run() -> torch.Tensor:
        sched.set_timesteps(sigmas=sigmas, device=noise.device)
        x = noise
        for t in sched.timesteps:
            # diffusers: x_sigma = (1 - sigma) data + sigma noise, model predicts noise - data.
            v = net(x, (1.0 - t / 1000.0).to(noise.dtype).expand(batch))
            x = sched.step(-v, t, x).prev_sample
        return x

    return run


def _edifice_ddim(net: Callable, noise: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
    from edifice.generative import ddim

    kwargs: dict[str, Any] = dict(steps=steps, eta=0.0, noise=noise)
    if "spacing" in inspect.signature(ddim.sample).parameters:
        kwargs["spacing"] = "leading"  # the timesteps of diffusers' default, so results are comparable
    return lambda: ddim.sample(net, tuple(noise.shape), **kwargs)


def _edifice_fm(net: Callable, noise: torch.Tensor, steps: int) -> Callable[[], torch.Tensor]:
    from edifice.generative import flow_matching as fm

    return lambda: fm.sample(net, tuple(noise.shape), steps=steps, method="euler", noise=noise)


def _net_label(kind: str, opts: dict[str, Any], params: int) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in opts.items())
    return f"{kind}({inner}) {params / 1e6:.2f}M"


def run_case(sampler: str, kind: str, s: dict[str, Any], device: torch.device, repeats: int) -> dict[str, Any]:
    """Time bare calls, the edifice sampler and the diffusers loop for one (sampler, network) pair."""
    from edifice.generative import ddpm
    from edifice.generative import flow_matching as fm

    data_shape = (2,) if kind == "ResMLP" else tuple(s["image"])
    opts = s["mlp"] if kind == "ResMLP" else s["unet"]
    batch = s["mlp_batch"] if kind == "ResMLP" else s["unet_batch"]
    steps = s["ddim_steps"] if sampler == "ddim" else s["fm_steps"]
    family = ddpm if sampler == "ddim" else fm
    torch.manual_seed(0)  # network initialisation only
    net = family.build(data_shape=data_shape, **opts).to(device).eval()
    params = sum(p.numel() for p in net.parameters())
    g = torch.Generator(device="cpu").manual_seed(1)
    noise = torch.randn((batch, *data_shape), generator=g).to(device)

    t_value = 500.0 if sampler == "ddim" else 0.5
    edifice_fn = _edifice_ddim if sampler == "ddim" else _edifice_fm
    peer_fn = _diffusers_ddim if sampler == "ddim" else _diffusers_fm
    peer_name = "diffusers DDIMScheduler" if sampler == "ddim" else "diffusers FlowMatchEulerDiscreteScheduler"

    def variants(n: int) -> dict[str, Callable[[], torch.Tensor]]:
        fns = {"bare": _bare(net, noise, t_value, n), "edifice": edifice_fn(net, noise, n)}
        peer = peer_fn(net, noise, n)
        if peer is not None:
            fns["diffusers"] = peer
        return fns

    fns = variants(steps)
    has_peer = "diffusers" in fns
    with torch.no_grad():
        # Warm up on 2-step versions of the same loops (a full UNet run would take half a minute).
        times, outputs = common.time_interleaved(fns, device=device, warmup=s["warmup"], repeats=repeats,
                                                 warmup_fns=variants(min(steps, 2)))
    diff = float((outputs["edifice"] - outputs["diffusers"]).abs().max()) if has_peer else None

    # The loops alone: the same samplers driving an identity "network" (x, t) -> x, so what is timed is
    # the per-step work of the loop (schedule gathers, casts, step arithmetic, tensor creation).
    def identity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x

    loops = {"edifice": edifice_fn(identity, noise, steps)}
    peer_loop = peer_fn(identity, noise, steps)
    if peer_loop is not None:
        loops["diffusers"] = peer_loop
    with torch.no_grad():
        # CPU time on the CPU (robust to other processes; these tiny ops run on this thread), wall time on a GPU.
        clock = time.process_time if device.type == "cpu" else time.perf_counter
        loop_times, _ = common.time_interleaved(loops, device=device, warmup=2, repeats=max(5, 2 * repeats + 1),
                                                clock=clock)
    per_step_us = {k: common.summary([v / steps * 1e6 for v in vs]) for k, vs in loop_times.items()}

    row: dict[str, Any] = {
        "case": f"{'DDIM' if sampler == 'ddim' else 'FM Euler'} {steps} steps",
        "sampler": sampler, "steps": steps, "network_calls": steps,
        "net": kind, "net_options": opts, "params": params, "batch": batch, "data_shape": list(data_shape),
        "repeats": repeats, "times_s": times,
        "bare_s": common.summary(times["bare"]),
        "edifice_s": common.summary(times["edifice"]),
        "overhead_ratio": common.summary(common.ratios(times["edifice"], times["bare"])),
        # On a busy machine the fastest round is the least disturbed one: the ratio of minima is reported too.
        "overhead_ratio_of_minima": min(times["edifice"]) / min(times["bare"]),
        "peer": peer_name if has_peer else None,
        "loop_us_per_step": per_step_us,
    }
    if has_peer:
        row["peer_s"] = common.summary(times["diffusers"])
        row["peer_over_bare"] = common.summary(common.ratios(times["diffusers"], times["bare"]))
        row["peer_over_edifice"] = common.summary(common.ratios(times["diffusers"], times["edifice"]))
        row["peer_over_edifice_of_minima"] = min(times["diffusers"]) / min(times["edifice"])
        row["max_abs_diff_vs_peer"] = diff
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    rows = []
    for kind in ("ResMLP", "UNet"):
        reps = args.repeats or (s["mlp_repeats"] if kind == "ResMLP" else s["unet_repeats"])
        for sampler in ("ddim", "fm"):
            t0 = time.perf_counter()
            rows.append(run_case(sampler, kind, s, device, reps))
            r = rows[-1]
            print(f"{r['case']} / {kind}: edifice/bare {r['overhead_ratio']['median']:.3f}, "
                  f"diffusers/edifice {r.get('peer_over_edifice', {}).get('median', float('nan')):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    ms = 1e3
    table_rows = []
    for r in rows:
        opts = r["net_options"]
        table_rows.append([
            r["case"], _net_label(r["net"], opts, r["params"]), r["batch"], r["repeats"],
            common.fmt_stat(r["bare_s"], ms), common.fmt_stat(r["edifice_s"], ms),
            f"{common.fmt(r['overhead_ratio']['median'])} ({common.fmt(r['overhead_ratio_of_minima'])})",
            common.fmt_stat(r["peer_s"], ms) if "peer_s" in r else "-",
            common.fmt(r["peer_over_bare"]["median"]) if "peer_s" in r else "-",
            f"{common.fmt(r['peer_over_edifice']['median'])} ({common.fmt(r['peer_over_edifice_of_minima'])})"
            if "peer_s" in r else "-",
            common.fmt(r.get("max_abs_diff_vs_peer"), 2),
            " / ".join(common.fmt(v["median"]) for v in r["loop_us_per_step"].values()),
        ])
    headers = ["sampler", "network", "batch", "rounds", "bare calls ms", "edifice ms", "edifice/bare",
               "diffusers ms", "diffusers/bare", "diffusers/edifice", "max|Δ| vs diffusers",
               "loop µs/step edifice / diffusers"]
    table = common.markdown_table(headers, table_rows)
    info = common.machine_info(device)
    notes = [
        "ms per sample call: median [min, max] over interleaved rounds after warm-up; ratios are medians of per-round "
        "ratios, in parentheses the ratio of the fastest rounds (the least disturbed on a busy machine).",
        "edifice/bare target <= 1.10; diffusers/edifice > 1 means edifice is faster.",
        "loop µs/step: the same loops driving an identity network x -> x (the loop's own per-step cost), median "
        "CPU time on the CPU (unaffected by other processes), wall time on a GPU.",
        f"all under torch.no_grad(); {info['threads']} torch threads; DDIM eta=0, 'leading' spacing, no clipping; "
        "FM diffusers loop on the same uniform grid.",
    ]
    payload = {"machine": info, "settings": s, "rows": rows}
    common.report(NAME, "Sampler overhead", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
