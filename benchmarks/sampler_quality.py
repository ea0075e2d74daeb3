"""Sampler quality against network calls: W2 to held-out 8gaussians data at 5 to 100 calls.

One table, rows = (network, sampler), columns = network-call budgets (5, 10, 20, 50, 100). The cell is
the exact W2 (:func:`edifice.metrics.w2`) between ``n`` samples and the ``n`` held-out points of
``edifice.data.load("8gaussians").test_set()``. Two parts:

* **exact** — 8gaussians is a Gaussian mixture (8 equal modes ``c_k`` of std ``s = 0.5 / 1.414``), so
  the score of every noised marginal is closed form: data ``Σ_k N(c_k, s² I) / 8`` noised as
  ``a x_0 + σ z`` is the mixture ``Σ_k N(a c_k, (a² s² + σ²) I) / 8``. The samplers are driven by that
  exact score (float64): no training error, only solver error (and the sampler's own noise).
* **trained** — the same samplers on trained networks (budget in the notes): a DDPM eps network
  (linear betas, T = 1000) for DDIM, Euler / Heun (``edm.vp_denoiser`` + ``edm.vp_sigmas``, diffusers'
  discrete ladder), DPM-Solver-3 (singlestep) and DPM-Solver++ (2M) with the discrete schedule
  (logSNR-uniform steps, as the recipes use them; 2M also time-uniform), and DPM-Solver++ (2M) in
  diffusers' ``DPMSolverMultistepScheduler`` mode (``dpm_solver.sample_discrete``); a score-SDE VP
  network for PC, EM, the probability-flow ODE and DPM-Solver(++) (logSNR) with the continuous VP SDE;
  an EDM denoiser for Euler / Heun on the Karras ladder (EDM's own setting).

Network calls are counted by wrapping the network in a counter, never assumed: each sampler gets the
largest step count whose counted calls fit the budget (Heun with N steps makes 2N - 1 calls; PC with
one corrector step 2 per step; score-SDE samplers add 1 for the final denoising step; DPM-Solver
singlestep splits the budget into orders like Lu et al.'s reference). A cell whose sampler cannot use
the whole budget shows the calls it made in parentheses.

Reference rows: W2 between fresh 8gaussians samples and the held-out set (the floor at this ``n``, mean ±
std over several draws: W2 of two finite samples is itself noisy, so a sampler can land a little below
the mean) and between ``N(0, I)`` and the held-out set.

Run: ``python benchmarks/sampler_quality.py`` (``--quick``: two budgets, 200 points, tiny nets).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import common
import torch

NAME = "sampler_quality"
DATA = "8gaussians"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(budgets=[5, 10], n=200, floor_draws=3,
                    train=dict(steps=30, batch=64, lr=2e-3, hidden=32, depth=1))
    return dict(budgets=[5, 10, 20, 50, 100], n=2000, floor_draws=10,
                train=dict(steps=3000, batch=256, lr=2e-3, hidden=128, depth=3))


# ----------------------------------------------------------------------------- exact 8gaussians scores


class Mixture:
    """An equal-weight isotropic Gaussian mixture ``Σ_k N(c_k, s² I) / K``, float64."""

    def __init__(self, centres: torch.Tensor, std: float):
        self.centres = centres.to(torch.float64)  # (K, D)
        self.std = float(std)

    def score(self, x: torch.Tensor, a: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Score of the marginal of ``a x_0 + σ z`` at ``x`` ``(B, D)``; ``a``, ``σ`` ``(B,)``."""
        x = x.to(torch.float64)
        a, sigma = a.to(torch.float64), sigma.to(torch.float64)
        v = a.square() * self.std**2 + sigma.square()  # (B,)
        d = x[:, None, :] - a[:, None, None] * self.centres[None]  # (B, K, D)
        r = torch.softmax(-d.square().sum(-1) / (2 * v[:, None]), dim=1)  # (B, K) posterior of the mode
        return -(r[..., None] * d).sum(1) / v[:, None]  # (B, D)


def eight_gaussians() -> Mixture:
    """``edifice.data.toy2d``'s 8gaussians: centres ``4 (cos kπ/4, sin kπ/4) / 1.414``, std ``0.5 / 1.414``."""
    angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return Mixture(4.0 * torch.stack([angle.cos(), angle.sin()], dim=1) / 1.414, 0.5 / 1.414)


def exact_ddpm_eps(mix: Mixture, schedule: Any) -> Callable[..., torch.Tensor]:
    """The exact eps of the discrete schedule, ``net(x, t)`` for (fractional) steps ``t``.

    Between integer steps ``σ_t = sqrt((1 - ᾱ_t) / ᾱ_t)`` is interpolated linearly in ``t`` (diffusers'
    Euler / Heun convention, which ``edm.vp_denoiser`` inverts); ``ᾱ = 1 / (1 + σ²)``.
    """
    ab = schedule.alpha_bar.to(torch.float64)
    sig = ((1 - ab) / ab).sqrt()  # (T,)
    last = sig.shape[0] - 1

    def eps(x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        tt = t.to(torch.float64).clamp(0, last)
        lo = tt.floor().long().clamp(max=last - 1)
        w = tt - lo
        s = sig[lo] * (1 - w) + sig[lo + 1] * w  # (B,)
        a = (1 + s.square()).rsqrt()
        std = s * a
        return (-std[:, None] * mix.score(x, a, std)).to(x.dtype)

    return eps


def exact_vp_score(mix: Mixture, sde: Any) -> Callable[..., torch.Tensor]:
    """The exact score of the continuous VP SDE's marginals, ``net(x, t)``, ``t ∈ (0, 1]``."""

    def score(x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        t64 = t.to(torch.float64)
        return mix.score(x, sde.scale(t64), sde.std(t64)).to(x.dtype)

    return score


def exact_edm_denoiser(mix: Mixture) -> Callable[..., torch.Tensor]:
    """The exact EDM denoiser ``D(x, σ) = E[x_0 | x_0 + σ z = x] = x + σ² ∇ log p_σ(x)``."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        s64 = sigma.to(torch.float64)
        return (x.to(torch.float64) + s64.square()[:, None] * mix.score(x, torch.ones_like(s64), s64)).to(x.dtype)

    return denoise


# ----------------------------------------------------------------------------- samplers


class Counter:
    """Wraps a network and counts its calls."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn, self.calls = fn, 0
        # score_sde / dpm_solver look up the SDE of a ScoreNet; plain callables get it passed explicitly.

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        self.calls += 1
        return self.fn(x, t, **cond)


def samplers(schedule: Any, sde: Any) -> list[tuple[str, str, Callable[..., torch.Tensor]]]:
    """``(net kind, label, run(net, noise, steps, generator) -> x)`` for every row."""
    from edifice.generative import ddim, dpm_solver, edm, score_sde

    def shape(noise):
        return tuple(noise.shape)

    rows: list[tuple[str, str, Callable[..., torch.Tensor]]] = [
        ("ddpm", "DDIM (η = 0, linspace)",
         lambda f, z, n, g: ddim.sample(f, shape(z), steps=n, schedule=schedule, eta=0.0, noise=z)),
        ("ddpm", "Euler (diffusers ladder)",
         lambda f, z, n, g: edm.sample(edm.vp_denoiser(f, schedule), shape(z), sampler="euler",
                                       sigmas=edm.vp_sigmas(schedule, n), noise=z)),
        ("ddpm", "Heun (diffusers ladder)",
         lambda f, z, n, g: edm.sample(edm.vp_denoiser(f, schedule), shape(z), sampler="heun",
                                       sigmas=edm.vp_sigmas(schedule, n), noise=z)),
        ("ddpm", "DPM-Solver-3 (singlestep, logSNR)",
         lambda f, z, n, g: dpm_solver.sample(f, shape(z), schedule=schedule, model_kind="eps", steps=n,
                                              algorithm="dpm_solver", order=3, method="singlestep",
                                              skip_type="logSNR", noise=z)),
        ("ddpm", "DPM-Solver++ (2M, logSNR)",
         lambda f, z, n, g: dpm_solver.sample(f, shape(z), schedule=schedule, model_kind="eps", steps=n,
                                              algorithm="dpm_solver_pp", order=2, method="multistep",
                                              skip_type="logSNR", noise=z)),
        ("ddpm", "DPM-Solver++ (2M, time-uniform)",
         lambda f, z, n, g: dpm_solver.sample(f, shape(z), schedule=schedule, model_kind="eps", steps=n,
                                              algorithm="dpm_solver_pp", order=2, method="multistep",
                                              skip_type="time_uniform", noise=z)),
        ("ddpm", "DPM-Solver++ (2M, diffusers mode)",
         lambda f, z, n, g: dpm_solver.sample_discrete(f, shape(z), schedule=schedule, steps=n, target="eps",
                                                       noise=z)),
        ("vp", "PC (reverse diffusion + Langevin)",
         lambda f, z, n, g: score_sde.sample(f, shape(z), sde=sde, sampler="pc", steps=n, noise=z, generator=g)),
        ("vp", "EM (Euler-Maruyama)",
         lambda f, z, n, g: score_sde.sample(f, shape(z), sde=sde, sampler="em", steps=n, noise=z, generator=g)),
        ("vp", "PF ODE (Heun)",
         lambda f, z, n, g: score_sde.sample(f, shape(z), sde=sde, sampler="ode", method="heun", steps=n, noise=z)),
        ("vp", "DPM-Solver-3 (singlestep, logSNR)",
         lambda f, z, n, g: dpm_solver.sample(f, shape(z), schedule=sde, model_kind="score", steps=n,
                                              algorithm="dpm_solver", order=3, method="singlestep",
                                              skip_type="logSNR", noise=z)),
        ("vp", "DPM-Solver++ (2M, logSNR)",
         lambda f, z, n, g: dpm_solver.sample(f, shape(z), schedule=sde, model_kind="score", steps=n,
                                              algorithm="dpm_solver_pp", order=2, method="multistep",
                                              skip_type="logSNR", noise=z)),
        ("edm", "Euler (Karras ladder)",
         lambda f, z, n, g: edm.sample(f, shape(z), sampler="euler", steps=n, noise=z)),
        ("edm", "Heun (Karras ladder)",
         lambda f, z, n, g: edm.sample(f, shape(z), sampler="heun", steps=n, noise=z)),
    ]
    return rows


NET_LABELS = {"ddpm": "DDPM eps (discrete)", "vp": "VP score (SDE)", "edm": "EDM denoiser"}


def count_calls(run: Callable, net: Callable, steps: int, like: torch.Tensor) -> int:
    """Network calls ``run`` makes with ``steps`` steps (counted on a batch of 2)."""
    counter = Counter(net)
    with torch.no_grad():
        run(counter, like[:2].clone(), steps, torch.Generator().manual_seed(0))
    return counter.calls


def steps_for_budget(run: Callable, net: Callable, budget: int, like: torch.Tensor,
                     cache: dict[int, int]) -> tuple[int, int]:
    """The largest step count whose counted calls are ``<= budget``, and those calls."""

    def calls(n: int) -> int:
        if n not in cache:
            cache[n] = count_calls(run, net, n, like)
        return cache[n]

    lo, hi = 4, 6  # calls are affine in steps for every sampler here: fit, then check the neighbours
    slope = (calls(hi) - calls(lo)) / (hi - lo)
    n = max(1, int((budget - (calls(lo) - slope * lo)) // slope))
    while n > 1 and calls(n) > budget:
        n -= 1
    while calls(n + 1) <= budget:
        n += 1
    return n, calls(n)


def _w2(x: torch.Tensor, ref: torch.Tensor) -> float:
    from edifice.metrics import w2

    x = x.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(x).all()):
        return math.nan
    return float(w2(x, ref.to(torch.float64).cpu()))


def evaluate(part: str, nets: dict[str, Callable], schedule: Any, sde: Any, budgets: list[int],
             noise: torch.Tensor, ref: torch.Tensor) -> list[dict[str, Any]]:
    """W2 of every sampler at every budget for one part (``exact`` or ``trained``)."""
    rows = []
    for kind, label, run in samplers(schedule, sde):
        t0 = time.perf_counter()
        cache: dict[int, int] = {}
        cells = []
        for budget in budgets:
            steps, calls = steps_for_budget(run, nets[kind], budget, noise, cache)
            counter = Counter(nets[kind])
            g = torch.Generator(device=noise.device).manual_seed(1234)
            ts = time.perf_counter()
            with torch.no_grad():
                x = run(counter, noise, steps, g)
            sample_s = time.perf_counter() - ts
            cells.append(dict(budget=budget, steps=steps, calls=counter.calls, w2=_w2(x, ref), sample_s=sample_s))
            if counter.calls != calls:  # the counted calls do not depend on the batch size
                raise RuntimeError(f"{label}: {counter.calls} calls at batch {noise.shape[0]}, {calls} at batch 2")
        rows.append(dict(part=part, net=kind, net_label=NET_LABELS[kind], sampler=label, cells=cells))
        print(f"{part:8s} {NET_LABELS[kind]:20s} {label:34s} "
              + " ".join(f"{c['w2']:.3f}({c['calls']})" for c in cells) + f"  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return rows


def train_nets(s: dict[str, Any], device: torch.device) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """Train the DDPM, score-SDE (VP) and EDM networks on 8gaussians with the stated budget.

    Under ``run_all.py`` the score-SDE and EDM networks are the ones ``score_nll.py`` trained (same recipe and
    seed), reused rather than trained twice.
    """
    from score_nll import train

    nets, info = {}, {}
    for kind, family in (("ddpm", "ddpm"), ("vp", "score_sde"), ("edm", "edm")):  # score_sde's default sde is vp
        nets[kind], info[kind] = train(family, DATA, s["train"], device)
        print(f"trained {family} on {DATA}: {info[kind]['seconds']:.0f} s, final loss {info[kind]['final_loss']:.4g}"
              + (" (the same network as score_nll's, reused)" if info[kind]["reused"] else ""), flush=True)
    return nets, info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    from edifice.data import load, toy2d
    from edifice.schedules import VPSDE, make_schedule

    start = time.perf_counter()
    schedule, sde = make_schedule("linear", 1000), VPSDE()
    ref = load(DATA).test_set(s["n"])[0]  # (n, 2) held-out points
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(s["n"], 2, generator=g, dtype=torch.float64)
    floors = [_w2(toy2d.sample(DATA, s["n"], generator=torch.Generator().manual_seed(8 + k)), ref)
              for k in range(s["floor_draws"])]
    floor, floor_std = statistics.mean(floors), statistics.stdev(floors)
    prior = _w2(torch.randn(s["n"], 2, generator=g), ref)

    mix = eight_gaussians()
    exact = {"ddpm": exact_ddpm_eps(mix, schedule), "vp": exact_vp_score(mix, sde), "edm": exact_edm_denoiser(mix)}
    rows = evaluate("exact", exact, schedule, sde, s["budgets"], noise.to(device), ref)

    nets, train_info = train_nets(s, device)
    rows += evaluate("trained", nets, schedule, sde, s["budgets"], noise.to(device=device, dtype=torch.float32), ref)

    headers = ["part", "network", "sampler"] + [f"{b} calls" for b in s["budgets"]]
    floor_cell = f"{common.fmt(floor, 2)} ± {common.fmt(floor_std, 1)}"
    table_rows = [["reference", "-", "fresh data samples (floor)"] + [floor_cell] * len(s["budgets"]),
                  ["reference", "-", "N(0, I)"] + [common.fmt(prior)] * len(s["budgets"])]
    for r in rows:
        cells = []
        for c in r["cells"]:
            v = "diverged" if math.isnan(c["w2"]) else common.fmt(c["w2"])
            cells.append(v if c["calls"] == c["budget"] else f"{v} ({c['calls']})")
        table_rows.append([r["part"], r["net_label"], r["sampler"]] + cells)
    table = common.markdown_table(headers, table_rows)
    info = common.machine_info(device)
    t = s["train"]
    notes = [
        f"W2 (exact, Hungarian) between {s['n']} samples and the {s['n']} held-out {DATA} points; the same initial "
        "noise for every sampler (stochastic samplers: generator seed 1234).",
        f"floor: W2 of {s['floor_draws']} fresh {s['n']}-point data samples to the held-out set, mean ± std "
        f"(range {min(floors):.3f}..{max(floors):.3f}): differences smaller than about two of these stds are noise, "
        "and a converged sampler lands anywhere in that range.",
        "exact: the closed-form score / eps / denoiser of the noised 8-mode mixture (float64) — pure solver error "
        "(deterministic samplers share the initial noise, so they converge to the same W2).",
        f"trained: ResMLP hidden {t['hidden']} depth {t['depth']}, {t['steps']} AdamW steps, batch {t['batch']}, "
        f"cosine lr {t['lr']}, EMA 0.999 weights (edifice.train.fit; family defaults otherwise); "
        "float32 sampling.",
        "DDPM eps net: linear betas 1e-4..0.02, T = 1000; DDIM linspace spacing; Euler / Heun via edm.vp_denoiser on "
        "diffusers' default discrete ladder (edm.vp_sigmas); DPM-Solver(++) with the discrete schedule, "
        "logSNR-uniform steps as in edifice's recipes, or time-uniform (Lu et al.'s reference code: lower-order "
        "final steps only below 10 steps); 'diffusers mode' = dpm_solver.sample_discrete, "
        "DPMSolverMultistepScheduler's defaults (integer linspace timesteps, final sigma 0, order-1 last step, "
        "lower-order final steps below 15). VP: beta 0.1..20, sample eps 1e-3, PC snr 0.16 with 1 corrector step, "
        "final denoising step on (counted). EDM: sigma 0.002..80, rho 7.",
        "cells: W2 at that budget; '(k)' = the sampler made k calls (the largest step count within the budget).",
        f"total time {time.perf_counter() - start:.0f} s.",
    ]
    payload = {"machine": info, "settings": s, "floor_w2": floor, "floor_w2_std": floor_std, "floor_w2_draws": floors,
               "prior_w2": prior, "train": train_info, "rows": rows}
    common.report(NAME, f"Sampler quality against network calls ({DATA}, W2 to held-out data)", table, payload,
                  args, notes)
    return payload


if __name__ == "__main__":
    main()
