"""GAN losses on 8gaussians: modes covered, high-quality samples, W2 and speed, one MLP GAN per loss.

Every row trains the same MLP pair (``gan.build(data_shape=(2,), hidden=64, depth=2)``, latent 8, batch
256) for the same number of generator iterations with its own training loop (two optimisers, ``n_critic``
critic steps per generator step), then draws 2000 samples and measures:

* **modes** covered and the **high-quality** fraction (``edifice.metrics.modes.mode_coverage``: a sample is
  high quality within 3 standard deviations of a centre; a mode is covered with >= 1% of them);
* **W2** between the 2000 samples and 2000 held-out points (``edifice.metrics.w2``; two fresh data samples
  score about 0.18-0.3 at this size, ``N(0, I)`` about 1.65 — a weak signal on 8gaussians, read it with
  the mode counts);
* training **iterations/s** (one iteration = ``n_critic`` critic steps + one generator step).

The losses and their settings (what the papers use, at the same learning rate where they use Adam):

| row | loss | regulariser | n_critic | optimiser |
|---|---|---|---|---|
| non_saturating | non-saturating | - | 1 | Adam 1e-3, (0.5, 0.999) |
| minimax | minimax | - | 1 | Adam 1e-3, (0.5, 0.999) |
| least_squares | least squares | - | 1 | Adam 1e-3, (0.5, 0.999) |
| hinge | hinge | - | 1 | Adam 1e-3, (0.5, 0.999) |
| wgan | wasserstein | weight clipping 0.01 | 5 | RMSprop 5e-5 (Arjovsky et al.) |
| wgan_gp | wasserstein | GP, λ = 10 | 5 | Adam 1e-3, (0.0, 0.9) (Gulrajani et al.'s betas) |
| r1 | non-saturating | R1, γ = 1 | 1 | Adam 1e-3, (0.5, 0.999) |

Run: ``python benchmarks/gan_losses.py`` (423 s measured on one thread of a busy 2-core box; default ``--threads 1``; ``--steps``, ``--seeds`` change the
budget; ``--quick``: 40 iterations, one seed, 200 points, seconds).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import common
import torch

from edifice.data import toy2d
from edifice.generative import gan
from edifice.metrics import w2
from edifice.metrics.modes import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD, mode_coverage

NAME = "gan_losses"

LOSS_SETTINGS: dict[str, dict[str, Any]] = {
    "non_saturating": dict(kind="non_saturating", n_critic=1, opt="adam", betas=(0.5, 0.999)),
    "minimax": dict(kind="minimax", n_critic=1, opt="adam", betas=(0.5, 0.999)),
    "least_squares": dict(kind="least_squares", n_critic=1, opt="adam", betas=(0.5, 0.999)),
    "hinge": dict(kind="hinge", n_critic=1, opt="adam", betas=(0.5, 0.999)),
    "wgan": dict(kind="wasserstein", n_critic=5, opt="rmsprop", lr=5e-5, clip=0.01),
    "wgan_gp": dict(kind="wasserstein", n_critic=5, opt="adam", betas=(0.0, 0.9), gp_weight=10.0),
    "r1": dict(kind="non_saturating", n_critic=1, opt="adam", betas=(0.5, 0.999), r1_weight=1.0),
}


def _settings(args: Any) -> dict[str, Any]:
    if args.quick:
        s = dict(steps=40, seeds=[0], batch=64, hidden=16, depth=1, lr=1e-3, n_eval=200)
    else:
        s = dict(steps=1000, seeds=[0, 1, 2], batch=256, hidden=64, depth=2, lr=1e-3, n_eval=2000)
    if args.steps is not None:
        s["steps"] = args.steps
    if args.seeds is not None:
        s["seeds"] = list(range(args.seeds))
    return s


def _optimiser(params: Any, cfg: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    if cfg["opt"] == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg["lr"])
    return torch.optim.Adam(params, lr=cfg.get("lr", lr), betas=cfg["betas"])


def train_and_eval(name: str, s: dict[str, Any], seed: int, device: torch.device,
                   held_out: torch.Tensor) -> dict[str, Any]:
    """Train one GAN with the settings of ``name`` and evaluate it."""
    cfg = LOSS_SETTINGS[name]
    torch.manual_seed(seed)  # the networks' initialisation
    g = torch.Generator().manual_seed(seed)
    nets = gan.build(data_shape=(2,), hidden=s["hidden"], depth=s["depth"])
    nets = gan.GANNets(nets.generator.to(device), nets.discriminator.to(device))
    opt_g = _optimiser(nets.generator.parameters(), cfg, s["lr"])
    opt_d = _optimiser(nets.discriminator.parameters(), cfg, s["lr"])
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(s["steps"]):
        for _ in range(cfg["n_critic"]):
            x = toy2d.sample("8gaussians", s["batch"], generator=g).to(device)
            loss, _ = gan.discriminator_objective(nets, x, kind=cfg["kind"], gp_weight=cfg.get("gp_weight", 0.0),
                                                  r1_weight=cfg.get("r1_weight", 0.0), generator=g)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            if "clip" in cfg:
                gan.clip_weights_(nets.discriminator, cfg["clip"])
        loss, _ = gan.generator_objective(nets, x, kind=cfg["kind"], generator=g)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
    common.sync(device)
    seconds = time.perf_counter() - t0
    nets.generator.eval()
    with torch.no_grad():
        samples = gan.sample(nets, (s["n_eval"], 2), generator=torch.Generator().manual_seed(1000 + seed),
                             device=device).cpu()
    cov = mode_coverage(samples, EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)
    finite = bool(torch.isfinite(samples).all())
    return {"seed": seed, "modes": cov["modes"], "high_quality": cov["high_quality"],
            "w2": float(w2(samples, held_out)) if finite else float("nan"), "seconds": seconds,
            "it_per_s": s["steps"] / seconds, "shares": [round(v, 4) for v in cov["shares"].tolist()]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="generator iterations per run (default 1000)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per loss (default 3)")
    p.set_defaults(threads=1)  # tiny MLPs: a second thread only adds synchronisation (and thrashes on a busy box)
    args = p.parse_args(argv)
    device = common.setup(args)
    s = _settings(args)
    held_out = toy2d.sample("8gaussians", s["n_eval"], generator=torch.Generator().manual_seed(12345))
    reference = toy2d.sample("8gaussians", s["n_eval"], generator=torch.Generator().manual_seed(54321))
    ref_cov = mode_coverage(reference, EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)
    floor = {"modes": ref_cov["modes"], "high_quality": ref_cov["high_quality"], "w2": float(w2(reference, held_out))}
    start = time.perf_counter()
    rows = []
    for name in LOSS_SETTINGS:
        runs = [train_and_eval(name, s, seed, device, held_out) for seed in s["seeds"]]
        cfg = LOSS_SETTINGS[name]
        row = {"loss": name, "settings": {k: v for k, v in cfg.items()}, "runs": runs,
               "modes": [r["modes"] for r in runs],
               "high_quality": statistics.mean(r["high_quality"] for r in runs),
               "w2": statistics.mean(r["w2"] for r in runs),
               "w2_range": [min(r["w2"] for r in runs), max(r["w2"] for r in runs)],
               "it_per_s": common.summary([r["it_per_s"] for r in runs])}
        rows.append(row)
        print(f"{name:15s} modes {row['modes']} high quality {row['high_quality']:.3f} W2 {row['w2']:.3f} "
              f"({row['it_per_s']['median']:.0f} it/s)", flush=True)

    def opt_name(cfg):
        if cfg["opt"] == "rmsprop":
            return f"RMSprop {cfg['lr']:g}"
        b = cfg["betas"]
        return f"Adam {cfg.get('lr', s['lr']):g} ({b[0]:g}, {b[1]:g})"

    def reg(cfg):
        if "clip" in cfg:
            return f"clip {cfg['clip']:g}"
        if "gp_weight" in cfg:
            return f"GP λ={cfg['gp_weight']:g}"
        if "r1_weight" in cfg:
            return f"R1 γ={cfg['r1_weight']:g}"
        return "-"

    table_rows = [[r["loss"], reg(r["settings"]), r["settings"]["n_critic"], opt_name(r["settings"]),
                   " / ".join(str(m) for m in r["modes"]), f"{r['high_quality']:.3f}",
                   f"{r['w2']:.3f} [{r['w2_range'][0]:.3f}, {r['w2_range'][1]:.3f}]",
                   common.fmt(r["it_per_s"]["median"])] for r in rows]
    table_rows.append(["(data vs data)", "-", "-", "-", str(floor["modes"]), f"{floor['high_quality']:.3f}",
                       f"{floor['w2']:.3f}", "-"])
    headers = ["loss", "regulariser", "n_critic", "optimiser", "modes of 8 (per seed)", "high quality (mean)",
               "W2 mean [min, max]", "it/s"]
    table = common.markdown_table(headers, table_rows)
    notes = [
        f"MLP pair hidden={s['hidden']}, depth={s['depth']}, latent 8; {s['steps']} generator iterations of batch "
        f"{s['batch']} per run; seeds {s['seeds']}; evaluation on {s['n_eval']} samples vs {s['n_eval']} held-out points.",
        "One iteration = n_critic critic steps + one generator step, so WGAN / WGAN-GP rows see 5x more critic "
        "updates and take about 4-6x longer per iteration.",
        "WGAN (clip) uses the paper's RMSprop 5e-5: at this budget it is far from converged, the price of "
        "clipping's small learning rate.",
        f"total {time.perf_counter() - start:.0f} s",
    ]
    payload = {"machine": common.machine_info(device), "settings": s, "floor": floor, "rows": rows}
    common.report(NAME, "GAN losses on 8gaussians (MLP pair, same nets and budget)", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
