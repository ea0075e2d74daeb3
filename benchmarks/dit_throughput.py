"""DiT training throughput: edifice's DiT against diffusers' DiTTransformer2DModel at the same configuration.

Both networks are trained with the same code — edifice's DDPM eps-loss (``ddpm.loss``), class labels, AdamW —
only the network differs (diffusers' is wrapped as ``net(x, t, y)``). Same hidden width, depth, heads, patch
size, image size, batch and number of classes; parameter counts are reported (diffusers keeps one time + label
embedding per block, so it has more parameters at the same configuration). Timed rounds alternate between the
two sides (benchmarks/common.py). Then both are run under ``torch.compile`` on a smaller configuration, with
the compile time (first step) reported separately; a compile failure is recorded, not raised. Peak memory of
a few training steps is measured in a fresh subprocess per side (CPU: growth of the max RSS; CUDA:
``torch.cuda.max_memory_allocated``).

Usage: ``python benchmarks/dit_throughput.py [--quick] [--no-compile] [--device cuda]``; writes
``benchmarks/results/dit_throughput.json``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import torch  # noqa: E402

from edifice.blocks.transformer import DiT  # noqa: E402
from edifice.generative import ddpm  # noqa: E402

NAME = "dit_throughput"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(eager=dict(image=(1, 8, 8), patch=2, hidden=32, depth=1, heads=4, batch=8, classes=10),
                    compiled=dict(image=(1, 8, 8), patch=2, hidden=32, depth=1, heads=4, batch=8, classes=10),
                    rounds=2, steps_per_round=2, warmup=1, compile_steps=3, memory_steps=2)
    return dict(eager=dict(image=(4, 16, 16), patch=2, hidden=128, depth=4, heads=4, batch=32, classes=10),
                compiled=dict(image=(1, 8, 8), patch=2, hidden=64, depth=2, heads=4, batch=32, classes=10),
                rounds=5, steps_per_round=5, warmup=2, compile_steps=20, memory_steps=3)


def _build(side: str, c: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, Callable[..., torch.Tensor]]:
    """The network of ``side`` and a callable ``net(x, t, y)`` around it."""
    if side == "edifice":
        net = DiT(c["image"], patch_size=c["patch"], hidden=c["hidden"], depth=c["depth"], heads=c["heads"],
                  num_classes=c["classes"]).to(device)
        return net, net
    from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel

    net = DiTTransformer2DModel(num_attention_heads=c["heads"], attention_head_dim=c["hidden"] // c["heads"],
                                in_channels=c["image"][0], num_layers=c["depth"], sample_size=c["image"][1],
                                patch_size=c["patch"], num_embeds_ada_norm=c["classes"], norm_eps=1e-6).to(device)
    return net, lambda x, t, y: net(x, timestep=t, class_labels=y, return_dict=False)[0]


def _stepper(c: dict[str, Any], net: torch.nn.Module, fn: Callable[..., torch.Tensor], device: torch.device,
             seed: int = 0) -> Callable[[], float]:
    """One AdamW training step of the DDPM eps-loss on fixed random data; returns the loss."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c["batch"], *c["image"], generator=g).to(device)
    y = torch.randint(0, c["classes"], (c["batch"],), generator=g).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(seed)

    def step() -> float:
        value, _ = ddpm.loss(fn, x, cond={"y": y}, generator=gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        return value.detach()

    return step


def _rss_bytes() -> int:
    """The resident set size of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_probe(side: str, c: dict[str, Any], device_name: str, steps: int) -> dict[str, Any]:
    """Run in a child process: peak memory of building ``side`` and ``steps`` training steps.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the largest resident set size sampled every 0.5 ms by a
    thread while the network is built and trained, minus the size just before (so torch's import is not
    counted); a sampled peak can miss a spike shorter than the period, so it is a lower bound.
    """
    import threading

    device = torch.device(device_name)
    torch.set_num_threads(1)
    if side == "diffusers":
        importlib.import_module("diffusers.models.transformers.dit_transformer_2d")  # before the baseline
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    net, fn = _build(side, c, device)
    step = _stepper(c, net, fn, device)
    for _ in range(steps):
        step()
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    if device.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "kind": "cuda max_memory_allocated"}
    return {"peak_bytes": int(peak[0] - before), "kind": "sampled peak RSS growth (CPU)"}


def _memory(side: str, c: dict[str, Any], device: torch.device, steps: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--memory-probe", json.dumps(dict(side=side, config=c, device=str(device),
                                                                        steps=steps))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _compiled(side: str, c: dict[str, Any], device: torch.device, steps: int) -> dict[str, Any]:
    """Compile the network of ``side``; time the first step (compile) and then ``steps`` steps."""
    try:
        net, fn = _build(side, c, device)
        cnet = torch.compile(net)
        cfn = cnet if side == "edifice" else (lambda x, t, y: cnet(x, timestep=t, class_labels=y, return_dict=False)[0])
        step = _stepper(c, net, cfn, device)
        common.sync(device)
        t0 = time.perf_counter()
        step()
        common.sync(device)
        compile_s = time.perf_counter() - t0
        step()  # a second warm-up (recompiles for the backward's guards happen here, if any)
        common.sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        common.sync(device)
        return {"compile_s": compile_s, "steps_per_s": steps / (time.perf_counter() - t0)}
    except Exception as err:  # noqa: BLE001 - a failed compile is a result to report
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    p.add_argument("--memory-probe", default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.memory_probe:
        spec = json.loads(args.memory_probe)
        print(json.dumps(_memory_probe(spec["side"], spec["config"], spec["device"], spec["steps"])))
        return {}
    device = common.setup(args)
    s = _settings(args.quick)
    c, repeats, k = s["eager"], args.repeats or s["rounds"], s["steps_per_round"]
    sides = ["edifice", "diffusers"] if importlib.util.find_spec("diffusers") else ["edifice"]

    nets, fns, warm = {}, {}, {}
    for side in sides:
        net, fn = _build(side, c, device)
        step = _stepper(c, net, fn, device)
        nets[side] = net
        fns[side] = (lambda st: (lambda: [st() for _ in range(k)][-1]))(step)
        warm[side] = step
    times, _ = common.time_interleaved(fns, device=device, warmup=s["warmup"], repeats=repeats, warmup_fns=warm)

    compile_cfg = s["compiled"]
    rows = []
    for side in sides:
        sps = [k / t for t in times[side]]
        row: dict[str, Any] = {
            "model": side, "params": sum(q.numel() for q in nets[side].parameters()),
            "steps_per_s": common.summary(sps), "samples_per_s": common.summary([v * c["batch"] for v in sps]),
            "times_s": times[side],
            "memory": ({"error": "skipped (--quick)"} if args.quick else _memory(side, c, device, s["memory_steps"])),
        }
        if args.no_compile or (args.quick and device.type == "cpu"):
            row["compiled"] = {"error": "skipped (--no-compile or --quick on cpu)"}
        else:
            row["compiled"] = _compiled(side, compile_cfg, device, s["compile_steps"])
        rows.append(row)
    if len(rows) == 2:
        rows[0]["speed_vs_peer"] = common.summary(common.ratios([k / t for t in times["edifice"]],
                                                                [k / t for t in times["diffusers"]]))

    def mem(r):
        m = r["memory"]
        return f"{m['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in m else "-"

    def comp(r, key):
        cm = r["compiled"]
        return common.fmt(cm[key]) if key in cm else "-"

    table = common.markdown_table(
        ["model", "params", "eager steps/s", "vs diffusers", "peak memory", "compiled steps/s", "compile s"],
        [[r["model"], f"{r['params']:,}", common.fmt_stat(r["steps_per_s"]),
          common.fmt(r["speed_vs_peer"]["median"]) if "speed_vs_peer" in r else "1", mem(r),
          comp(r, "steps_per_s"), comp(r, "compile_s")] for r in rows])
    info = common.machine_info(device)

    def describe(cfg):
        return (f"{'x'.join(map(str, cfg['image']))} images, patch {cfg['patch']}, hidden {cfg['hidden']}, depth "
                f"{cfg['depth']}, heads {cfg['heads']}, batch {cfg['batch']}, {cfg['classes']} classes")

    notes = [
        f"eager: {describe(c)}; DDPM eps-loss (edifice's ddpm.loss for both), AdamW; {repeats} interleaved rounds of "
        f"{k} steps after {s['warmup']} warm-up steps; steps/s median [min, max]; {info['threads']} torch threads.",
        f"compiled: {describe(compile_cfg)}; torch.compile default mode; 'compile s' is the first training step; "
        f"then {s['compile_steps']} steps timed.",
        "peak memory: " + (rows[0]["memory"].get("kind", "") if rows else "") + f" over {s['memory_steps']} training "
        "steps in a fresh process (includes the model, AdamW state and activations).",
        "diffusers keeps a time + label embedding in every block (and recomputes it there), and drops labels with "
        "p=0.1 in training mode; edifice has one shared embedding and leaves label dropout to the recipe.",
    ]
    errors = [f"{r['model']} compile: {r['compiled']['error']}" for r in rows if "error" in r["compiled"]]
    notes += errors
    payload = {"machine": info, "settings": {**s, "repeats": repeats}, "rows": rows}
    common.report(NAME, "DiT training throughput (edifice DiT vs diffusers DiTTransformer2DModel)", table, payload,
                  args, notes)
    return payload


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
