"""Training throughput: steps/s of the DDPM UNet on 1x28x28 at batch 64, against diffusers' UNet2DModel.

Both sides run the usual DDPM training step (epsilon prediction, linear betas 1e-4..0.02, T = 1000)
with Adam (lr 2e-4) on the same pre-drawn batches (MNIST from ``../shared/data/mnist.npz`` or
``$EDIFICE_DATA_DIR/mnist.npz`` when present, scaled to [-1, 1]; random data otherwise — the speed
does not depend on the pixels):

* **edifice** — ``net = ddpm.build(data_shape=(1, 28, 28), base_channels=32, channel_mults=(1, 2))``;
  ``loss, _ = ddpm.loss(net, x0, schedule=schedule, generator=g)``; ``zero_grad``; ``backward``; ``step``.
* **diffusers** — ``UNet2DModel`` with the same widths (``block_out_channels=(32, 64)``, one ResNet
  per level, attention at the lowest level and in the middle, GroupNorm(8), 4 heads);
  ``DDPMScheduler.add_noise``; ``F.mse_loss(unet(x_t, t).sample, noise)``; the same optimiser calls.

Parameter counts of both are reported (the configurations are chosen to be within ~20%). Each
timed round runs ``steps_per_round`` optimiser steps of one side, rounds alternate between the
sides, after a warm-up step each.

Run: ``python benchmarks/train_throughput.py`` (``--quick`` for a seconds-long smoke run).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
import torch.nn.functional as F

NAME = "train_throughput"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(image=(1, 8, 8), batch=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                    lr=2e-4, steps_per_round=1, repeats=2, warmup=1, pool=2)
    return dict(image=(1, 28, 28), batch=64, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                lr=2e-4, steps_per_round=2, repeats=3, warmup=1, pool=8)


def _mnist_path() -> Path | None:
    for folder in (os.environ.get("EDIFICE_DATA_DIR"), common.ROOT.parent / "shared" / "data"):
        if folder and (Path(folder) / "mnist.npz").is_file():
            return Path(folder) / "mnist.npz"
    return None


def _batches(s: dict[str, Any], device: torch.device) -> tuple[list[torch.Tensor], str]:
    """``pool`` batches of shape (batch, *image) in [-1, 1], shared by both sides."""
    g = torch.Generator().manual_seed(0)
    n = s["pool"] * s["batch"]
    path = _mnist_path()
    if path is not None and tuple(s["image"]) == (1, 28, 28):
        import numpy as np

        with np.load(path) as f:
            x_all = f["x_train"]
        idx = torch.randint(0, x_all.shape[0], (n,), generator=g).numpy()
        x = torch.from_numpy(x_all[idx]).float().div(127.5).sub(1.0).unsqueeze(1)  # (n, 1, 28, 28)
        source = f"MNIST ({path.name})"
    else:
        x = torch.rand((n, *s["image"]), generator=g) * 2 - 1
        source = "uniform random"
    return list(x.to(device).split(s["batch"])), source


def _edifice_side(s: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, Callable[[torch.Tensor], Any]]:
    from edifice.generative import ddpm
    from edifice.schedules import make_schedule

    torch.manual_seed(0)
    net = ddpm.build(data_shape=tuple(s["image"]), base_channels=s["base_channels"],
                     channel_mults=tuple(s["channel_mults"]), num_res_blocks=s["num_res_blocks"]).to(device)
    schedule = make_schedule("linear", 1000)
    if hasattr(schedule, "to"):
        schedule = schedule.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
    g = torch.Generator(device=device).manual_seed(1)

    def step(x0: torch.Tensor) -> torch.Tensor:
        loss, _ = ddpm.loss(net, x0, schedule=schedule, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return net, step


def diffusers_config(s: dict[str, Any]) -> dict[str, Any]:
    """A ``UNet2DModel`` config with the widths of edifice's UNet (see the module docstring)."""
    widths = tuple(s["base_channels"] * m for m in s["channel_mults"])
    levels = len(widths)
    return dict(
        sample_size=s["image"][1], in_channels=s["image"][0], out_channels=s["image"][0],
        block_out_channels=widths, layers_per_block=s["num_res_blocks"],
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        norm_num_groups=8, attention_head_dim=widths[-1] // 4,
    )


def _diffusers_side(s: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, Callable[[torch.Tensor], Any]] | None:
    try:
        from diffusers.models.unets.unet_2d import UNet2DModel
        from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    except ImportError:
        return None
    torch.manual_seed(0)
    unet = UNet2DModel(**diffusers_config(s)).to(device)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    opt = torch.optim.Adam(unet.parameters(), lr=s["lr"])
    g = torch.Generator(device=device).manual_seed(1)

    def step(x0: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g, device=device)
        loss = F.mse_loss(unet(sched.add_noise(x0, noise, t), t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return unet, step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    repeats = args.repeats or s["repeats"]
    batches, source = _batches(s, device)
    k = s["steps_per_round"]

    def rounds(step: Callable[[torch.Tensor], Any]) -> Callable[[], Any]:
        state = {"i": 0}

        def run() -> Any:
            for _ in range(k):
                out = step(batches[state["i"] % len(batches)])
                state["i"] += 1
            return out

        return run

    nets: dict[str, torch.nn.Module] = {}
    fns: dict[str, Callable[[], Any]] = {}
    warm: dict[str, Callable[[], Any]] = {}
    for name, side in (("edifice", _edifice_side(s, device)), ("diffusers", _diffusers_side(s, device))):
        if side is None:
            continue
        nets[name], step = side
        fns[name] = rounds(step)
        warm[name] = (lambda st: (lambda: st(batches[0])))(step)
    times, outputs = common.time_interleaved(fns, device=device, warmup=s["warmup"], repeats=repeats,
                                             warmup_fns=warm)

    rows = []
    for name in fns:
        params = sum(p.numel() for p in nets[name].parameters())
        sps = [k / t for t in times[name]]
        rows.append({
            "model": name, "network": type(nets[name]).__name__, "params": params,
            "steps_per_s": common.summary(sps),
            "samples_per_s": common.summary([v * s["batch"] for v in sps]),
            "round_s": common.summary(times[name]), "times_s": times[name],
            "final_loss": float(outputs[name]),
        })
    if len(rows) == 2:
        e, d = rows
        speed = common.ratios([k / t for t in times["edifice"]], [k / t for t in times["diffusers"]])
        e["speed_vs_peer"] = common.summary(speed)
        e["params_vs_peer"] = e["params"] / d["params"]

    table = common.markdown_table(
        ["model", "network", "params", "steps/s", "samples/s", "vs diffusers"],
        [[r["model"], r["network"], f"{r['params']:,}", common.fmt_stat(r["steps_per_s"]),
          common.fmt(r["samples_per_s"]["median"]),
          common.fmt(r["speed_vs_peer"]["median"]) if "speed_vs_peer" in r else "1"] for r in rows],
    )
    info = common.machine_info(device)
    notes = [
        f"{'x'.join(map(str, s['image']))} images from {source}, batch {s['batch']}, Adam lr {s['lr']}, "
        f"eps-prediction DDPM loss, linear betas, T=1000; {repeats} rounds of {k} steps per side after "
        f"{s['warmup']} warm-up step(s); steps/s median [min, max]; {info['threads']} torch threads.",
        "edifice UNet: " + ", ".join(f"{key}={s[key]}" for key in ("base_channels", "channel_mults", "num_res_blocks"))
        + "; diffusers UNet2DModel: " + ", ".join(
            f"{key}={val}" for key, val in diffusers_config(s).items() if key not in ("in_channels", "out_channels")),
    ]
    if len(rows) == 2:
        notes.append(f"parameters edifice / diffusers = {rows[0]['params_vs_peer']:.3f}; "
                     "'vs diffusers' is the median per-round ratio of steps/s (> 1: edifice faster).")
    payload = {"machine": info, "settings": {**s, "data": source, "repeats": repeats}, "rows": rows}
    common.report(NAME, "Training throughput (DDPM UNet)", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
