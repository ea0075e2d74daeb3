"""The cross-family leaderboard: every family on the 2-D sets, 8x8 digits and MNIST, with peers; a table per data set.

Every family of :data:`edifice.train.RECIPES` whose recipe takes the data is trained with
:func:`edifice.train.fit` at the budget stated below (its default options; the same steps, batch and
learning rate for every family of a data set, with the few per-family exceptions listed) and evaluated
with :func:`edifice.train.evaluate` (its default sampler; on images some step counts are capped, see
``IMAGE_STEP_CAPS``). The table shows whichever quality keys ``evaluate`` returns: W2 and NLL (and
precision / recall, modes) for points; Fréchet distance on edifice's own feature network (``fd``, never
called FID), KID, precision / recall, NLL / bits per dim for images, beside ``fd_real``, the same distance
between real training and test images. Also: **network calls per sample** (forward calls of the run's
top-level networks during one sampling call, counted with forward hooks on a batch of 4: an ODE / Heun
step counts each call), **training time** (wall seconds of ``fit``; progressive distillation adds its
teacher's), **sampling time** (``evaluate``'s, for the evaluated ``n``) and **peak memory** (each cell
runs in a child process, ``python benchmarks/leaderboard.py --cell FAMILY DATA``: its
``ru_maxrss`` on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA).

Peers in the same run, where they do the same job:

* diffusers' ``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` driving the same trained DDPM network
  (the loops of ``sampler_overhead.py`` / ``sampler_overhead_score.py``), beside edifice's DDIM and
  DPM-Solver++ at the same steps;
* zuko's NSF (``flows_nll.py``'s construction) on the 2-D sets, trained at the same step / batch budget;
* torchcfm's ``ConditionalFlowMatcher`` (its loss and coupling only) training edifice's flow-matching MLP,
  sampled with edifice's Euler sampler, on the 2-D sets, when ``torchcfm`` imports.

Writes ``<out-dir>/leaderboard.json`` (every cell, after each one, so ``--resume`` continues an
interrupted run), ``<out-dir>/leaderboard_<data>.png`` (a tile of samples per family) and
``benchmarks/RESULTS.md`` (not in ``--quick`` mode unless ``--write-results``).

Cells run ``--jobs`` at a time (default: CPU cores / ``--threads``, so two single-thread cells on the 2-core
development machine, where the full run takes about 40 minutes with nothing else running).

Run: ``python benchmarks/leaderboard.py`` (the full run; ``--datasets`` / ``--families`` pick a part,
``--resume`` keeps the cells already in the JSON, so a run can be done in chunks, ``--report-only`` re-writes
RESULTS.md and the pictures from the JSON; ``--quick``: three families and the two 2-D peers on moons and digits,
tiny budgets, well under a minute, the first cell in a child process and the rest in this one).
"""

from __future__ import annotations

import base64
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

import common
import torch

NAME = "leaderboard"
POINTS = ("moons", "8gaussians", "checkerboard")
IMAGES = ("digits", "mnist")
DATASETS = POINTS + IMAGES
PEERS = ("zuko_nsf", "torchcfm_cfm")  # extra cells on the 2-D sets (the diffusers peers live in the ddpm cell)
RESULTS_MD = common.ROOT / "benchmarks" / "RESULTS.md"

# Families left out entirely, and left out on some kind of data, with the reason printed in RESULTS.md.
EXCLUDED = {
    "mdn": "a conditional density p(y | x) (mixture density network) for Bishop's inverse_sine; it does not model "
           "the joint distribution of a data set, so it has no row here",
}
# Left out of the default plan for cost only: they run when named with --families.
EXPENSIVE = {
    ("pixelcnn", "mnist"): "left out of the default run for cost: its sampler makes 784 sequential network calls "
                           "(one per pixel) on every batch, and sampling 256 MNIST images had not finished after 10 "
                           "minutes on one core (run it with --families pixelcnn --datasets mnist)",
}
EXCLUDED_POINTS = {
    "made": "a model of binary vectors: on 2-D points it binarises each coordinate (x > 0), i.e. models 4 quadrant "
            "states, not the data",
}

# Budgets (the full run), chosen so that it takes about 40 minutes on the 2-core development machine (two cells at
# a time, one thread each; measured per-cell times in benchmarks/RESULTS.md). Every family of a data set gets the
# same steps / batch / lr unless overridden below. ``n``: samples evaluated; ``nll_n``: test examples of the NLL
# (None: evaluate()'s default, 64 for the ODE likelihoods and all n otherwise).
BUDGETS = {
    "points": {"steps": 1000, "batch": 256, "lr": 1e-3, "n": 1000, "nll_n": None},
    "digits": {"steps": 400, "batch": 128, "lr": 1e-3, "n": 297, "nll_n": None},
    "mnist": {"steps": 200, "batch": 32, "lr": 1e-3, "n": 128, "nll_n": 16},
}
QUICK_BUDGETS = {
    "points": {"steps": 20, "batch": 64, "lr": 1e-3, "n": 128, "nll_n": None},
    "digits": {"steps": 10, "batch": 32, "lr": 1e-3, "n": 96, "nll_n": 16},  # n > 64 features: no FD warning
    "mnist": {"steps": 5, "batch": 16, "lr": 1e-3, "n": 96, "nll_n": 8},
}
# Per-family exceptions: the learning rates the README gives these families (RBM: CD-1 at lr 0.01 on batches
# of 100; GAN: 2e-4, the usual GAN rate). Keyed by family, then "all" or a data kind / name.
OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "rbm": {"all": {"lr": 0.01, "batch": 100}},
    "gan": {"all": {"lr": 2e-4}},
}
# Images only: the default samplers keep their kind, but their steps (the ``steps`` passed to evaluate()) are capped
# where sampling would dominate the run: digits at about 100 network calls, MNIST (a UNet call on 128 images takes
# about 0.8 s on one core) at about 20.
IMAGE_STEP_CAPS = {
    "digits": {"ddpm": 100, "dit": 100, "latent_diffusion": 100, "score_sde": 50, "ncsn": 10},
    "mnist": {"ddpm": 20, "dit": 20, "latent_diffusion": 20, "score_sde": 10, "ncsn": 2, "flow_matching": 10,
              "edm": 10, "rectified_flow": 20, "interpolant": 10, "ebm": 100},
}
QUICK_STEP_CAPS = {"ddpm": 5, "dit": 5, "latent_diffusion": 5, "score_sde": 5, "ncsn": 2, "ebm": 5, "rbm": 5,
                   "flow_matching": 2, "edm": 2, "interpolant": 2, "rectified_flow": 2}
QUICK_FAMILIES = ("flow_matching", "ddpm", "vae")
QUICK_DATASETS = ("moons", "digits")
# The samplers of the ddpm cell's peer rows and their steps, per data set (edifice's and diffusers' alike).
DDPM_PEER_STEPS = {"default": {"ddim": 50, "dpm_solver_pp": 20}, "mnist": {"ddim": 20, "dpm_solver_pp": 10}}
COST_RANK = {"mnist": 3, "digits": 2}
PREVIEW_POINTS = 1000
PREVIEW_IMAGES = 16


def data_kind(data: str) -> str:
    return "points" if data in POINTS or data not in IMAGES else "images"


def budget(family: str, data: str, quick: bool) -> dict[str, Any]:
    """The training / evaluation budget of one cell."""
    kind = data_kind(data)
    table = QUICK_BUDGETS if quick else BUDGETS
    b = dict(table["points" if kind == "points" else data])
    for key in ("all", kind, data):
        b.update(OVERRIDES.get(family, {}).get(key, {}))
    if quick:
        b["batch"] = min(b["batch"], table["points" if kind == "points" else data]["batch"])
    return b


def eval_steps(family: str, data: str, quick: bool) -> int | None:
    """Sampler steps passed to evaluate() (None: the family's default)."""
    if quick:
        return QUICK_STEP_CAPS.get(family)
    return IMAGE_STEP_CAPS.get(data, {}).get(family)


def peer_steps(data: str, quick: bool) -> dict[str, int]:
    if quick:
        return {"ddim": 3, "dpm_solver_pp": 3}
    return DDPM_PEER_STEPS.get(data, DDPM_PEER_STEPS["default"])


# ============================================================================ the child: one cell


class CallCounter:
    """Counts the network calls of one sampling call.

    Forward calls of the top-level networks (every ``nn.Module`` of the run's ``nets``) are counted with
    forward pre-hooks. A family whose sampler never calls a top-level network's ``forward`` (MADE samples
    through ``logits_flat``, a flow through its ``sample`` method) is counted one level down: first the
    calls of the top-level networks' own public methods (outermost calls only), then, failing that, the
    largest number of forward calls of any submodule (zuko's flows: the calls of one transform's network).
    An RBM's Gibbs sampler uses its weights directly and counts nothing (``calls`` None).
    """

    def __init__(self, nets: Any):
        if isinstance(nets, torch.nn.Module):
            self.top = {"net": nets}
        else:
            items = nets._asdict().items() if hasattr(nets, "_asdict") else enumerate(nets)
            self.top = {str(k): m for k, m in items if isinstance(m, torch.nn.Module)}
        self.forward: dict[str, int] = {k: 0 for k in self.top}
        self.methods: dict[str, int] = {}
        self.sub: dict[str, int] = {}
        self._handles: list[Any] = []
        self._patched: list[tuple[Any, str]] = []
        self._depth = 0

    def __enter__(self) -> CallCounter:
        for name, m in self.top.items():
            self._handles.append(m.register_forward_pre_hook(self._top_hook(name)))
            for sub_name, sub in m.named_modules():
                if sub_name:
                    self._handles.append(sub.register_forward_pre_hook(self._sub_hook(f"{name}.{sub_name}")))
            for cls in type(m).__mro__:
                if cls in (torch.nn.Module, object) or not issubclass(cls, torch.nn.Module):
                    continue
                for attr, fn in vars(cls).items():
                    if attr.startswith("_") or attr in ("forward", "extra_repr", "train", "eval") or \
                            not callable(fn) or isinstance(fn, (type, staticmethod, classmethod)) or \
                            attr in m.__dict__:
                        continue
                    setattr(m, attr, self._wrap(f"{name}.{attr}", getattr(m, attr)))
                    self._patched.append((m, attr))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        for m, attr in self._patched:
            m.__dict__.pop(attr, None)

    def _top_hook(self, name: str):
        def hook(*_: Any) -> None:
            self.forward[name] += 1
        return hook

    def _sub_hook(self, name: str):
        def hook(*_: Any) -> None:
            self.sub[name] = self.sub.get(name, 0) + 1
        return hook

    def _wrap(self, name: str, fn: Any):
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.methods[name] = self.methods.get(name, 0) + 1
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
        return wrapped

    def result(self) -> tuple[int | None, str, dict[str, int]]:
        """``(calls, how they were counted, detail)``."""
        top = {k: v for k, v in self.forward.items() if v}
        if top:
            return sum(top.values()), "forward calls of the top-level networks", top
        if self.methods:
            return sum(self.methods.values()), "calls of the networks' methods", dict(self.methods)
        if self.sub:
            name = max(self.sub, key=self.sub.get)
            return self.sub[name], "passes (most forward calls of one submodule)", {name: self.sub[name]}
        return None, "no module call: the sampler uses the weights directly", {}


def count_calls(recipe: Any, nets: Any, options: dict, sampler: str | None, steps: int | None,
                device: torch.device) -> dict[str, Any]:
    """Network calls for one sampling call on a batch of 4 (the count per sample, as every sample of a batch
    goes through the same sequential calls)."""
    with CallCounter(nets) as counter, torch.no_grad():
        recipe.sample(nets, 4, options=options, sampler=sampler, steps=steps,
                      generator=torch.Generator(device=device).manual_seed(0), device=device)
    calls, how, detail = counter.result()
    return {"calls": calls, "calls_how": how, "calls_detail": detail}


def _preview(x: torch.Tensor, kind: str) -> dict[str, Any]:
    """A few samples (data units) for the montage, compactly: points as float16, images as 8-bit pixels."""
    import numpy as np

    x = x.detach().float().cpu()
    if kind == "points":
        a = x[:PREVIEW_POINTS].numpy().astype(np.float16)
    else:
        a = (x[:PREVIEW_IMAGES].clamp(0, 1) * 255).round().numpy().astype(np.uint8)
    a = np.nan_to_num(a, nan=0, posinf=0, neginf=0) if a.dtype != np.uint8 else a
    return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def _unpreview(p: dict[str, Any]):
    import numpy as np

    a = np.frombuffer(base64.b64decode(p["b64"]), dtype=p["dtype"]).reshape(p["shape"])
    return a.astype(np.float32) / (255.0 if p["dtype"] == "uint8" else 1.0)


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("time_s",)}


def _fit(family: str, data: str, b: dict[str, Any], out: Path, options: dict | None, device: torch.device) -> float:
    from edifice.train import fit

    common.sync(device)
    t0 = time.perf_counter()
    fit(family, data, steps=b["steps"], batch_size=b["batch"], lr=b["lr"], out=out, options=options or None,
        progress=False, plots=False, seed=0, device=device, resume=False)
    common.sync(device)
    return time.perf_counter() - t0


def _evaluate(run: Path, b: dict[str, Any], steps: int | None, device: torch.device, **kw: Any) -> dict[str, Any]:
    """evaluate(); a likelihood that fails is retried without it (the error is kept)."""
    from edifice.train import evaluate

    try:
        return evaluate(run, n=b["n"], steps=steps, seed=0, device=device, nll_n=b.get("nll_n"), **kw)
    except Exception as e:  # noqa: BLE001 - the NLL of a family may not apply to this data
        if kw.get("nll") is False:
            raise
        m = evaluate(run, n=b["n"], steps=steps, seed=0, device=device, nll=False, **kw)
        m["nll_error"] = f"{type(e).__name__}: {e}"
        return m


def _family_row(family: str, data: str, run: Path, b: dict[str, Any], steps: int | None, device: torch.device,
                train_s: float, kind: str) -> dict[str, Any]:
    import numpy as np

    from edifice.train import get_recipe, load

    nets, config = load(run, device=device)
    recipe = get_recipe(family)
    sampler, k = recipe.check_sampler(None, steps, config["options"])
    calls = count_calls(recipe, nets, config["options"], sampler, k, device)  # also warms the sampler up
    m = _evaluate(run, b, steps, device, write=True)
    samples = torch.from_numpy(np.load(run / "samples.npy"))
    return {"label": family, "family": family, "peer": None, "metrics": _clean(m), "sampler": m["sampler"],
            "sampler_steps": m["steps"], "train_s": train_s, "sample_s": m["time_s"]["sample"],
            "eval_s": m["time_s"]["total"], "n": m["n"], **calls, "preview": _preview(samples, kind)}


def _patched_eval(run: Path, b: dict[str, Any], device: torch.device, samples_fn) -> dict[str, Any]:
    """evaluate()'s metrics on samples drawn by ``samples_fn(n) -> model-space x`` instead of the run's sampler
    (so a peer sampler is scored by exactly the same code as the families)."""
    import importlib

    ev = importlib.import_module("edifice.train.evaluate")
    original = ev.sample_run
    drawn: dict[str, Any] = {}

    def sample_run(run_dir, n, *, data=None, seed=0, **_: Any):
        common.sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = samples_fn(n)
        common.sync(device)
        seconds = time.perf_counter() - t0
        x = data.to_unit(x.float().cpu()) if data is not None else x.float().cpu()
        drawn["x"], drawn["s"] = x, seconds
        return x, {"sampler": "peer", "steps": None, "seed": seed, "n": n, "label": None, "guidance_scale": None,
                   "sample_time_s": round(seconds, 3)}

    ev.sample_run = sample_run
    try:
        m = ev.evaluate(run, n=b["n"], seed=0, device=device, nll=False, write=False)
    finally:
        ev.sample_run = original
    return {"metrics": _clean(m), "x": drawn["x"], "sample_s": drawn["s"]}


def _ddpm_peers(run: Path, data: str, b: dict[str, Any], device: torch.device, kind: str,
                train_s: float, quick: bool) -> list[dict[str, Any]]:
    """edifice's DDIM / DPM-Solver++ and diffusers' DDIMScheduler / DPMSolverMultistepScheduler on the ddpm net."""
    from edifice.train import get_recipe, load

    rows = []
    steps = peer_steps(data, quick)
    nets, config = load(run, device=device)
    recipe = get_recipe("ddpm")
    s = config["options"]["settings"]
    if (s.get("schedule"), s.get("T"), s.get("target")) != ("linear", 1000, "eps"):
        return [{"label": "ddpm + diffusers", "family": "ddpm", "peer": "diffusers",
                 "error": f"the peers assume ddpm's defaults (linear, T=1000, eps), got {s}"}]
    for sampler, k in steps.items():
        name = {"ddim": "DDIM", "dpm_solver_pp": "DPM-Solver++ (2M)"}[sampler]

        def draw_edifice(n: int, sampler: str = sampler, k: int = k) -> torch.Tensor:
            return recipe.sample(nets, n, options=config["options"], sampler=sampler, steps=k,
                                 generator=torch.Generator(device=device).manual_seed(0), device=device)

        calls = count_calls(recipe, nets, config["options"], sampler, k, device)  # also warms the sampler up
        out = _patched_eval(run, b, device, draw_edifice)
        rows.append({"label": f"ddpm + edifice {name} ({k} steps)", "family": "ddpm", "peer": "edifice sampler",
                     "metrics": out["metrics"], "sampler": sampler, "sampler_steps": k, "train_s": None,
                     "train_of": "ddpm", "sample_s": out["sample_s"], "n": out["metrics"]["n"], **calls,
                     "preview": _preview(out["x"], kind)})
    try:
        import diffusers

        from sampler_overhead import _diffusers_ddim
        from sampler_overhead_score import diffusers_fn
    except ImportError as e:
        rows.append({"label": "ddpm + diffusers", "family": "ddpm", "peer": "diffusers",
                     "error": f"diffusers not available: {e}"})
        return rows
    num_classes = config["options"]["build"].get("num_classes")

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The ddpm network as the scheduler loops call it; a class-conditional one gets the labels the recipe's
        sampler uses (0, 1, ..., K-1, 0, ... in turn), so both draw the same classes."""
        if num_classes is None:
            return nets(x, t)
        return nets(x, t, y=(torch.arange(x.shape[0]) % num_classes).to(x.device))

    shape = tuple(config["data"]["data_shape"])
    for sampler, k in steps.items():
        name = {"ddim": "DDIM", "dpm_solver_pp": "DPM-Solver++ (2M)"}[sampler]

        def draw(n: int, sampler: str = sampler, k: int = k) -> torch.Tensor:
            noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(1234)).to(device)
            run_fn = _diffusers_ddim(net, noise, k) if sampler == "ddim" else diffusers_fn("dpm_solver_pp", net,
                                                                                            noise, k)
            return run_fn()

        with CallCounter(nets) as counter, torch.no_grad():
            draw(4)  # also warms the scheduler up (diffusers imports it lazily)
        calls, how, detail = counter.result()
        out = _patched_eval(run, b, device, draw)
        cls = "DDIMScheduler" if sampler == "ddim" else "DPMSolverMultistepScheduler"
        rows.append({"label": f"ddpm + diffusers {name} ({k} steps)", "family": "ddpm", "peer": "diffusers",
                     "peer_detail": f"diffusers {diffusers.__version__} {cls}", "metrics": out["metrics"],
                     "sampler": f"diffusers {cls}", "sampler_steps": k, "train_s": None, "train_of": "ddpm",
                     "sample_s": out["sample_s"], "n": out["metrics"]["n"], "calls": calls, "calls_how": how,
                     "calls_detail": detail, "preview": _preview(out["x"], kind)})
    return rows


def _host_run(data: str, runs: Path, device: torch.device) -> Path:
    """A throw-away 1-step run on ``data`` whose evaluate() scores a peer's samples (see :func:`_patched_eval`):
    its own network is never used."""
    host = runs / "host"
    if not (host / "checkpoint.json").is_file():
        from edifice.train import fit

        fit("flow_matching", data, steps=1, batch_size=8, out=host, options={"hidden": 8, "depth": 1},
            progress=False, plots=False, seed=0, device=device, resume=False)
    return host


def _peer_metrics(data: str, runs: Path, b: dict[str, Any], device: torch.device, x: torch.Tensor,
                  nll: torch.Tensor | None) -> dict[str, Any]:
    """evaluate()'s point metrics of a peer's samples ``x`` (model space = data units for points), and the test NLL
    when given (``nll`` per held-out point)."""
    out = _patched_eval(_host_run(data, runs, device), b, device, lambda n: x[:n])["metrics"]
    out = {k: v for k, v in out.items() if k not in ("family", "step", "sampler", "steps")}
    if nll is not None:
        nll = nll.double()
        ok = bool(torch.isfinite(nll).all())
        out["nll"] = float(nll.mean()) if ok else None
        out["nll_se"] = float(nll.std() / math.sqrt(nll.numel())) if ok else None
    return out


def _train_loop(params: Any, loss_fn, b: dict[str, Any], data_source: Any, device: torch.device,
                after_step=None) -> float:
    """fit()'s optimiser for a peer: AdamW at the cell's lr with fit's cosine decay to 0, gradient clipping at 1."""
    params = list(params)
    opt = torch.optim.AdamW(params, lr=b["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / b["steps"])))
    g = torch.Generator().manual_seed(1)
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(b["steps"]):
        x, _ = data_source.train_batch(b["batch"], generator=g)
        loss = loss_fn(x.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if after_step is not None:
            after_step()
    common.sync(device)
    return time.perf_counter() - t0


def _zuko_row(data: str, b: dict[str, Any], device: torch.device, quick: bool, runs: Path) -> dict[str, Any]:
    """zuko's NSF (flows_nll.py's construction) at the cell's budget."""
    import zuko

    from edifice.data import load as load_data
    from flows_nll import _build

    ds = load_data(data)
    torch.manual_seed(0)
    arch = {"hidden": 16 if quick else 64, "blocks": 2 if quick else 4}
    model = _build("zuko", "nsf", arch, device)
    train_s = _train_loop(model.parameters(), lambda x: model.nll(x).mean(), b, ds, device)
    ref = ds.test_set(b["n"])[0]
    with torch.no_grad():
        nll = model.nll(ref.to(device)).cpu()
        with CallCounter(model.flow) as counter:  # also warms the sampler up
            model.sample(4, 1)
        common.sync(device)
        t0 = time.perf_counter()
        x = model.sample(b["n"], 1000).cpu()
        common.sync(device)
        sample_s = time.perf_counter() - t0
    sub = {k: v for k, v in counter.sub.items() if type(_get_sub(model.flow, k)).__name__ == "MaskedMLP"}
    calls = max(sub.values()) if sub else None
    params = sum(p.numel() for p in model.parameters())
    return {"label": "zuko NSF", "family": None, "peer": "zuko", "peer_detail":
            f"zuko {zuko.__version__} flows.NSF(2, transforms={arch['blocks']}, hidden_features=({arch['hidden']}, "
            f"{arch['hidden']})), {params} parameters; AdamW lr {b['lr']:g} cosine, clip 1, no EMA",
            "metrics": _peer_metrics(data, runs, b, device, x, nll), "sampler": "inverse", "sampler_steps": None,
            "train_s": train_s, "sample_s": sample_s, "n": b["n"], "calls": calls,
            "calls_how": "passes: most forward calls of one transform's MaskedMLP (an autoregressive inverse makes "
                         "one per dimension)", "calls_detail": sub, "preview": _preview(x, "points")}


def _get_sub(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    m = root
    for part in dotted.split(".")[1:]:
        m = getattr(m, part)
    return m


def torchcfm_status() -> tuple[bool, str]:
    """Whether torchcfm's ConditionalFlowMatcher imports, and its version or why not."""
    try:
        import torchcfm
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a missing dependency of torchcfm (POT)
        return False, f"{type(e).__name__}: {e}"
    import importlib.metadata as md

    try:
        version = md.version("torchcfm")
    except md.PackageNotFoundError:
        version = getattr(torchcfm, "__version__", "?")
    return True, version


def _torchcfm_row(data: str, b: dict[str, Any], device: torch.device, quick: bool, runs: Path) -> dict[str, Any]:
    """torchcfm's ConditionalFlowMatcher (sigma 0: the independent coupling) training edifice's flow-matching
    network (the family's default build for this data), with fit's optimiser and EMA; edifice's Euler sampler."""
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    from edifice.data import load as load_data
    from edifice.train import get_recipe
    from edifice.train.ema import EMA

    ok, version = torchcfm_status()
    ds = load_data(data)
    recipe = get_recipe("flow_matching")
    options = recipe.resolve(ds, {"hidden": 16, "depth": 1} if quick else {})
    torch.manual_seed(0)
    net = recipe.build(options).to(device)
    ema = EMA(net, decay=0.999)
    cfm = ConditionalFlowMatcher(sigma=0.0)
    g = torch.Generator().manual_seed(2)

    def loss_fn(x1: torch.Tensor) -> torch.Tensor:
        x0 = torch.randn(x1.shape, generator=g).to(device)
        t, xt, ut = cfm.sample_location_and_conditional_flow(x0, x1)
        return (net(xt, t) - ut).square().mean()

    train_s = _train_loop(net.parameters(), loss_fn, b, ds, device, after_step=lambda: ema.update(net))
    steps = 2 if quick else 50
    ref = ds.test_set(b["n"])[0]
    sampler_net = ema.module
    calls = count_calls(recipe, sampler_net, options, "euler", steps, device)  # also warms the sampler up
    common.sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = recipe.sample(sampler_net, b["n"], options=options, sampler="euler", steps=steps,
                          generator=torch.Generator(device=device).manual_seed(0), device=device).cpu()
    common.sync(device)
    sample_s = time.perf_counter() - t0
    lp = recipe.log_prob(sampler_net, ref.to(device), options=options,
                         generator=torch.Generator(device=device).manual_seed(0)).detach().cpu()
    return {"label": f"torchcfm CFM (edifice Euler, {steps} steps)", "family": None, "peer": "torchcfm",
            "peer_detail": f"torchcfm {version} ConditionalFlowMatcher(sigma=0) loss on edifice's flow-matching "
                           f"network {options['build']}; AdamW lr {b['lr']:g} cosine, clip 1, EMA 0.999",
            "metrics": _peer_metrics(data, runs, b, device, x, -lp), "sampler": "euler", "sampler_steps": steps,
            "train_s": train_s, "sample_s": sample_s, "n": b["n"], **calls, "preview": _preview(x, "points")}


def run_cell(family: str, data: str, args: Any, device: torch.device) -> dict[str, Any]:
    """Train and evaluate one (family, data) cell in this process; returns its rows and peak memory."""
    quick = args.quick
    kind = data_kind(data)
    b = budget(family, data, quick)
    runs = Path(args.keep_runs) / f"{data}-{family}"
    runs.mkdir(parents=True, exist_ok=True)
    steps = eval_steps(family, data, quick)
    cell: dict[str, Any] = {"family": family, "data": data, "budget": b, "eval_steps": steps}
    rows: list[dict[str, Any]] = []
    if family == "zuko_nsf":
        rows.append(_zuko_row(data, b, device, quick, runs))
    elif family == "torchcfm_cfm":
        rows.append(_torchcfm_row(data, b, device, quick, runs))
    elif family == "progressive_distillation":
        teacher = runs / "teacher"
        teacher_opts: dict[str, Any] = {"schedule": "cosine", "target": "v"}
        if quick and kind == "points":
            teacher_opts.update(hidden=16, depth=1)
        teacher_s = _fit("ddpm", data, b, teacher, teacher_opts, device)
        student = runs / "student"
        student_s = _fit(family, data, b, student, {"teacher": str(teacher)}, device)
        row = _family_row(family, data, student, b, steps, device, teacher_s + student_s, kind)
        row.update(teacher_s=teacher_s, teacher=f"ddpm {teacher_opts} at the same budget")
        rows.append(row)
    else:
        options = {"hidden": 16, "depth": 1} if quick and kind == "points" and family in QUICK_FAMILIES else None
        train_s = _fit(family, data, b, runs / "run", options, device)
        rows.append(_family_row(family, data, runs / "run", b, steps, device, train_s, kind))
        if family == "ddpm":
            rows += _ddpm_peers(runs / "run", data, b, device, kind, train_s, quick)
    if device.type == "cuda":
        cell["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        cell["mem_kind"] = "torch.cuda.max_memory_allocated"
    else:
        cell["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        cell["mem_kind"] = "ru_maxrss of the cell's process"
    cell["rows"] = rows
    return cell


def execute_cell(family: str, data: str, args: Any, device: torch.device) -> dict[str, Any]:
    """:func:`run_cell` with its failure, time, memory baseline and load recorded."""
    t0 = time.perf_counter()
    try:
        cell = run_cell(family, data, args, device)
    except Exception as e:  # noqa: BLE001 - the parent records the failure in the table
        traceback.print_exc()
        cell = {"family": family, "data": data, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:]}
    cell["cell_s"] = time.perf_counter() - t0
    cell["baseline_mem_mb"] = args._baseline_rss
    cell["date"] = common.machine_info(device)["date"]
    cell["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return cell


def child_main(args: Any) -> int:
    device = common.setup(args)
    family, data = args.cell
    cell = execute_cell(family, data, args, device)
    Path(args.cell_out).write_text(json.dumps(cell, allow_nan=True))
    return 0 if "error" not in cell else 1


# ============================================================================ the parent: cells, JSON, report


def applicable(family: str, data: str, source: Any) -> str | None:
    """None when ``family`` runs on ``data``, else the reason it does not."""
    if family in EXCLUDED:
        return EXCLUDED[family]
    if family in PEERS:
        return None if data_kind(data) == "points" else "a 2-D peer"
    if data_kind(data) == "points" and family in EXCLUDED_POINTS:
        return EXCLUDED_POINTS[family]
    from edifice.train import get_recipe

    recipe = get_recipe(family)
    if family == "progressive_distillation":
        recipe = get_recipe("ddpm")  # its networks are its teacher's
    try:
        recipe.build(recipe.resolve(source, {}))
    except (ValueError, TypeError) as e:
        return f"its networks do not take this data ({type(e).__name__}: {e})"
    return None


def plan(args: Any) -> tuple[list[tuple[str, str]], dict[str, dict[str, str]], list[str]]:
    """The cells to run, the (family, data) pairs left out with reasons, and notes."""
    from edifice.data import load
    from edifice.train import RECIPES

    notes: list[str] = []
    datasets = list(args.datasets or (QUICK_DATASETS if args.quick else DATASETS))
    families = list(args.families or (QUICK_FAMILIES if args.quick else (*RECIPES, *PEERS)))
    if args.quick and not args.families:
        families += list(PEERS)
    skipped: dict[str, dict[str, str]] = {}
    sources = {}
    for data in list(datasets):
        try:
            sources[data] = load(data)
        except FileNotFoundError as e:
            notes.append(f"{data} skipped: {e}")
            skipped.setdefault(data, {})["*"] = f"data not found: {e}"
            datasets.remove(data)
    ok_cfm, why = torchcfm_status()
    cells = []
    for data in datasets:
        for family in families:
            if family == "torchcfm_cfm" and not ok_cfm:
                skipped.setdefault(data, {})[family] = f"torchcfm does not import: {why}"
                continue
            reason = applicable(family, data, sources[data])
            if reason is None and (family, data) in EXPENSIVE and not args.families:
                reason = EXPENSIVE[(family, data)]
            if reason is None:
                cells.append((family, data))
            elif not (family in PEERS and data_kind(data) == "images"):
                skipped.setdefault(data, {})[family] = reason
    return cells, skipped, notes


def _child_cmd(family: str, data: str, args: Any, out: Path, runs: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", family, data, "--cell-out", str(out),
           "--keep-runs", str(runs), "--threads", str(args.threads)]
    if args.device:
        cmd += ["--device", args.device]
    if args.quick:
        cmd.append("--quick")
    return cmd


def run_child(family: str, data: str, args: Any, runs: Path, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(common.ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="edifice-cell-") as tmp:
        out = Path(tmp) / "cell.json"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(_child_cmd(family, data, args, out, runs), env=env, capture_output=True,
                                  text=True, timeout=timeout, cwd=str(common.ROOT))
        except subprocess.TimeoutExpired:
            return {"family": family, "data": data, "error": f"timed out after {timeout:.0f} s",
                    "cell_s": time.perf_counter() - t0}
        if out.is_file():
            cell = json.loads(out.read_text())
        else:
            tail = (proc.stderr or proc.stdout or "")[-2000:]
            cell = {"family": family, "data": data, "error": f"cell process exited {proc.returncode}: {tail}"}
        cell["wall_s"] = time.perf_counter() - t0
        return cell


def default_jobs(args: Any, device: torch.device) -> int:
    """Cells run at once: one per ``--threads`` cores on the CPU (2 on the 2-core box at 1 thread), 1 on CUDA."""
    if device.type == "cuda":
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // max(1, args.threads)))


def _load_json(path: Path) -> dict[str, Any] | None:
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None
    return None


def settings(quick: bool) -> dict[str, Any]:
    return {"budgets": QUICK_BUDGETS if quick else BUDGETS, "overrides": OVERRIDES,
            "image_step_caps": QUICK_STEP_CAPS if quick else IMAGE_STEP_CAPS, "ddpm_peer_steps": DDPM_PEER_STEPS,
            "excluded": EXCLUDED, "excluded_points": EXCLUDED_POINTS}


def reference_rows(datasets: list[str], quick: bool) -> dict[str, dict[str, float]]:
    """The W2 floor of each 2-D set: W2 between fresh data and the held-out points (3 draws)."""
    from edifice.data import load
    from edifice.metrics import w2

    out = {}
    for data in datasets:
        if data_kind(data) != "points":
            continue
        ds = load(data)
        n = (QUICK_BUDGETS if quick else BUDGETS)["points"]["n"]
        ref = ds.test_set(n)[0]
        draws = [float(w2(ds.train_batch(n, generator=torch.Generator().manual_seed(50 + i))[0], ref))
                 for i in range(3)]
        out[data] = {"w2": statistics.mean(draws), "w2_std": statistics.pstdev(draws), "n": n}
    return out


# ----------------------------------------------------------------------------- report


POINT_COLS = [("w2", "W2"), ("nll", "NLL (nats)"), ("modes", "modes"), ("precision", "precision"),
              ("recall", "recall")]
IMAGE_COLS = [("fd", "FD"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
              ("class_accuracy", "class acc."), ("nll", "NLL (nats)"), ("bpd", "bits/dim")]


def _fmt_metric(key: str, m: dict[str, Any]) -> str:
    v = m.get(key)
    if v is None:
        if key == "nll" and m.get("nll_error"):
            return "failed‡"
        if key == "nll" and m.get("nll_bound") is not None:
            return f"≤ {common.fmt(float(m['nll_bound']), 3)} (bound, pmf)"
        if key == "bpd" and m.get("bpd_bound") is not None:
            return f"≤ {common.fmt(float(m['bpd_bound']), 3)}"
        return "—"
    if key == "modes":
        return str(v)
    s = common.fmt(float(v), 3)
    if key == "nll" and m.get("nll_kind") == "pmf":
        s += " (pmf)"
    return s


def _fmt_mib(x: float | None) -> str:
    return "—" if x is None else f"{x:.0f}"


def _fmt_seconds(x: float | None) -> str:
    if x is None:
        return "—"
    return "<0.001" if x < 0.001 else common.fmt(x, 2)


def _rows_of(payload: dict[str, Any], data: str) -> list[dict[str, Any]]:
    rows = []
    for key, cell in payload.get("cells", {}).items():
        if cell.get("data") != data:
            continue
        if "error" in cell:
            rows.append({"label": cell["family"], "error": cell["error"], "cell": cell})
            continue
        for r in cell["rows"]:
            rows.append({**r, "cell": cell})
    order = {f: i for i, f in enumerate(payload.get("families_order", []))}
    rows.sort(key=lambda r: (order.get(r["cell"]["family"], 999), r.get("peer") is not None))
    return rows


def data_table(payload: dict[str, Any], data: str) -> tuple[str, list[str]]:
    """The markdown table of one data set, and its footnotes."""
    kind = data_kind(data)
    rows = _rows_of(payload, data)
    present = {k for r in rows for k in r.get("metrics", {})}
    present |= {"nll"} if "nll_bound" in present else set()
    present |= {"bpd"} if "bpd_bound" in present else set()
    cols = [(k, h) for k, h in (POINT_COLS if kind == "points" else IMAGE_COLS) if k in present or k in ("w2", "fd")]
    n = next((r["n"] for r in rows if "n" in r), None) or budget("", data, bool(payload.get("quick")))["n"]
    headers = ["family"] + [h for _, h in cols] + ["calls / sample", "sampler (steps)", "train s",
                                                  f"sample s ({n})", "peak MiB"]
    table: list[list[str]] = []
    notes: list[str] = []
    for r in rows:
        cell = r["cell"]
        if "error" in r:
            table.append([f"{r['label']} (failed†)"] + ["—"] * (len(headers) - 1))
            notes.append(f"† {r['label']}: {r['error'].splitlines()[0][:300]}")
            continue
        m = r.get("metrics", {})
        label = r["label"]
        if m.get("reference_levels"):
            label += f" (vs test images at {m['reference_levels']} levels)"
        if m.get("nll_error"):
            notes.append(f"‡ {r['label']}: NLL failed and was skipped: {m['nll_error'][:300]}")
        sampler = r.get("sampler") or "—"
        if r.get("sampler_steps") is not None:
            sampler += f" ({r['sampler_steps']})"
        if r.get("train_s") is None:
            train = f"({r.get('train_of', '')}'s)"
        else:
            train = f"{r['train_s']:.0f}"
            if r.get("teacher_s"):
                train += f" (teacher {r['teacher_s']:.0f})"
        calls = "—" if r.get("calls") is None else str(r["calls"])
        if r.get("calls") is None and r.get("family") == "rbm":
            calls = f"{r.get('sampler_steps')} Gibbs sweeps*"
        mem = "" if r.get("peer") in ("diffusers", "edifice sampler") else _fmt_mib(cell.get("peak_mem_mb"))
        table.append([label] + [_fmt_metric(k, m) for k, _ in cols]
                     + [calls, sampler, train, _fmt_seconds(r.get("sample_s")), mem])
    warnings = sorted({r["metrics"]["fd_warning"] for r in rows if r.get("metrics", {}).get("fd_warning")})
    notes += [f"evaluate() warned: {w}" for w in warnings]
    ref = payload.get("references", {}).get(data)
    if kind == "points" and ref:
        table.append(["(data: fresh sample vs test)", f"{common.fmt(ref['w2'])} ± {common.fmt(ref['w2_std'], 1)}"]
                     + ["—"] * (len(headers) - 2))
    if kind == "images":
        reals = [r["metrics"]["fd_real"] for r in rows if r.get("metrics", {}).get("fd_real") is not None
                 and not r["metrics"].get("reference_levels")]
        if reals:
            cell = common.fmt(statistics.median(reals))
            table.append(["real data (train vs test)", cell] + ["—"] * (len(headers) - 2))
    return common.markdown_table(headers, table), notes


def montage(payload: dict[str, Any], data: str, path: Path) -> Path | None:
    """One picture per data set: a tile of samples per row of its table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in _rows_of(payload, data) if "preview" in r]
    if not rows:
        return None
    kind = data_kind(data)
    cols = min(6, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 3.1 * nrows), squeeze=False)
    ref = None
    if kind == "points":
        from edifice.data import load

        ref = load(data).test_set(PREVIEW_POINTS)[0].numpy()
        lo, hi = np.percentile(ref, 0.5, axis=0), np.percentile(ref, 99.5, axis=0)
        pad = 0.25 * (hi - lo)
        lo, hi = lo - pad, hi + pad
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        a = _unpreview(r["preview"])
        m = r.get("metrics", {})
        if kind == "points":
            ax.scatter(ref[:, 0], ref[:, 1], s=1, c="0.85", linewidths=0)
            ax.scatter(a[:, 0], a[:, 1], s=2, c="C0", linewidths=0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal")
            q = f"W2 {common.fmt(m.get('w2'), 2)}"
        else:
            k = int(math.ceil(math.sqrt(a.shape[0])))
            c, h, w = a.shape[1:]
            grid = np.ones((k * (h + 1) - 1, k * (w + 1) - 1))
            for i, img in enumerate(a):
                y, x = divmod(i, k)
                grid[y * (h + 1):y * (h + 1) + h, x * (w + 1):x * (w + 1) + w] = img.mean(0)
            ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            q = f"FD {common.fmt(m.get('fd'), 3)}" if m.get("fd") is not None else ""
        label = "\n".join(textwrap.wrap(r["label"], 30))
        ax.set_title(f"{label}\n{q}", fontsize=7)
    fig.suptitle(f"{data}: samples of every family (grey: held-out data)" if kind == "points"
                 else f"{data}: samples of every family", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _budget_lines(payload: dict[str, Any]) -> list[str]:
    s = payload["settings"]
    lines = ["| data | training steps | batch | AdamW lr (cosine to 0) | samples evaluated (n) | NLL test examples |",
             "|---|---|---|---|---|---|"]
    for key, b in s["budgets"].items():
        what = "2-D sets (moons, 8gaussians, checkerboard)" if key == "points" else key
        nll_n = b.get("nll_n") or "evaluate()'s default (64 for ODE likelihoods, else all n)"
        lines.append(f"| {what} | {b['steps']} | {b['batch']} | {b['lr']:g} | {b['n']} | {nll_n} |")
    return lines


def results_markdown(payload: dict[str, Any], out_dir: Path, md_path: Path) -> str:
    s = payload["settings"]
    text = ["# Leaderboard: every family on the same footing", "",
            "Generated by `python benchmarks/leaderboard.py` (see its docstring) — do not edit by hand; "
            "`python benchmarks/leaderboard.py --report-only` rewrites this file and the pictures from "
            f"`{os.path.relpath(out_dir / 'leaderboard.json', md_path.parent)}`.", ""]
    if payload.get("quick"):
        text += ["**Quick mode: tiny budgets, the numbers mean nothing.**", ""]
    text += [common.machine_line(payload["machine"]), ""]
    text += ["## Budgets", "", *_budget_lines(payload), ""]
    ov = "; ".join(f"{f}: {', '.join(f'{k} {v}' for k, v in d.get('all', {}).items())}"
                   for f, d in s["overrides"].items())
    caps = s["image_step_caps"]
    if caps and isinstance(next(iter(caps.values())), dict):
        caps = "; ".join(f"{d}: " + ", ".join(f"{f} {k}" for f, k in c.items()) for d, c in caps.items())
    else:
        caps = ", ".join(f"{f} {k}" for f, k in caps.items())
    text += [
        f"* Every family: `edifice.train.fit` with its default options, seed 0, EMA 0.999, gradient clipping 1, the "
        f"budget above; exceptions (the learning rates the README gives): {ov}.",
        "* Evaluation: `edifice.train.evaluate` with the family's default sampler and steps, seed 0; on images the "
        f"step counts of the slowest default samplers are capped ({caps}: the `steps` passed to the sampler; "
        "score_sde's PC makes 2 calls per step, ncsn's steps are per noise level).",
        "* Progressive distillation trains its teacher in the same cell — a DDPM with `schedule=cosine, target=v` at "
        "the same budget — then one halving round with its defaults (`student_steps` 32); its `train s` is both, "
        "the teacher's in parentheses.",
        "* `calls / sample`: forward calls of the run's top-level networks during one sampling call (forward hooks, "
        "a batch of 4; every call of an ODE / Heun step counts; a latent model adds its decoder's call; a Langevin "
        "step's call also back-propagates through the network). MADE is counted through its `logits_flat` method "
        "(one call per dimension), a flow through its `sample` method (one inverse pass), zuko's NSF by the calls "
        "of one transform's network; *the RBM samples with its weights directly (Gibbs sweeps, no module call).",
        f"* Cells ran {payload.get('jobs', 1)} at a time, each in its own process with "
        f"{payload['machine'].get('threads')} torch thread(s); the budgets are small because everything runs on "
        "the CPU: read the tables as the state of each family after the same short training, not as converged "
        "results.",
        "* `train s`: wall seconds of `fit` (checkpoint writes included); `sample s`: drawing the evaluated n "
        "samples once; `peak MiB`: the maximum resident set size of the cell's process (it includes about "
        f"{common.fmt(payload.get('baseline_mem_mb'), 3)} MiB of Python, torch and edifice before any work; on "
        "CUDA it is `torch.cuda.max_memory_allocated`); a cell holds the family's row and the rows of the "
        "samplers driving the same network (left blank there).",
        "* Image quality is on edifice's own feature networks (`edifice.metrics.features`, trained on digits / "
        "MNIST): `FD` is a Fréchet distance on those features, not FID, and is comparable only within a table; "
        "`real data (train vs test)` is the same distance between real training and test images (the floor). "
        "Binary families (rbm, made, pixelcnn, d3pm) are scored against test images quantised to their levels, "
        "and their NLL `(pmf)` is a probability mass of binarised images — not comparable to the density NLLs. "
        "`class acc.` (class-conditional runs, which sample the classes 0, 1, ..., 9 in turn): the feature "
        "classifier's accuracy on the samples against the requested classes.",
        "* 2-D sets: `W2` is the exact Wasserstein-2 distance between n samples and n held-out points; the "
        "`(data: fresh sample vs test)` row is W2 between n fresh data points and the same held-out points, the "
        "floor at this n (mean ± std of 3 draws). W2 squares distances, so a handful of far-away samples raise it "
        "even when precision / recall look fine.",
    ]
    peer = payload.get("peers", {})
    text += ["", "## Peers", "",
             f"* diffusers: {peer.get('diffusers')}",
             f"* zuko: {peer.get('zuko')}",
             f"* torchcfm: {peer.get('torchcfm')}", ""]
    failures = []
    for data in payload.get("datasets", []):
        table, notes = data_table(payload, data)
        if not any(c.get("data") == data for c in payload.get("cells", {}).values()):
            continue
        text += [f"## {data}", "", table, ""]
        text += [f"- {n}" for n in notes]
        png = out_dir / f"{payload.get('stem', NAME)}_{data}.png"
        if png.is_file():
            text += ["", f"![{data} samples]({os.path.relpath(png, md_path.parent)})"]
        text += [""]
        failures += [f"{data}: {n}" for n in notes if n.startswith("†")]
    skipped = payload.get("skipped", {})
    if skipped:
        grouped: dict[tuple[str, str], list[str]] = {}
        for data, d in skipped.items():
            for fam, why in d.items():
                grouped.setdefault((fam, why), []).append(data)
        text += ["## Left out", ""]
        text += [f"* {fam} on {', '.join(ds)}: {why}" for (fam, why), ds in grouped.items()]
        text += [""]
    text += ["## Notes", ""] + [f"* {n}" for n in payload.get("notes", [])]
    return "\n".join(text) + "\n"


def write_report(payload: dict[str, Any], out_dir: Path, md_path: Path | None) -> str:
    for data in payload.get("datasets", []):
        montage(payload, data, out_dir / f"{payload.get('stem', NAME)}_{data}.png")
    md = results_markdown(payload, out_dir, md_path or RESULTS_MD)
    if md_path is not None:
        tmp = md_path.with_suffix(".md.tmp")
        tmp.write_text(md)
        os.replace(tmp, md_path)
        print(f"wrote {md_path}", flush=True)
    return md


def combined_table(payload: dict[str, Any]) -> str:
    """All data sets in one table (the printed summary and the JSON's ``table``)."""
    headers = ["data", "family", "quality", "calls / sample", "train s", "sample s", "peak MiB"]
    rows = []
    for data in payload.get("datasets", []):
        for r in _rows_of(payload, data):
            if "error" in r:
                rows.append([data, r["label"], "FAILED: " + r["error"].splitlines()[0][:80], "", "", "", ""])
                continue
            m = r.get("metrics", {})
            q = ", ".join(f"{k} {common.fmt(m[k])}" for k in ("w2", "nll", "fd", "kid", "bpd")
                          if m.get(k) is not None)
            rows.append([data, r["label"], q, "—" if r.get("calls") is None else r["calls"],
                         "—" if r.get("train_s") is None else f"{r['train_s']:.0f}", _fmt_seconds(r.get("sample_s")),
                         _fmt_mib(r["cell"].get("peak_mem_mb"))])
    return common.markdown_table(headers, rows)


def peer_info() -> dict[str, str]:
    info = {}
    try:
        import diffusers

        info["diffusers"] = (f"diffusers {diffusers.__version__}: DDIMScheduler (eta 0, no clipping) and "
                             "DPMSolverMultistepScheduler (its defaults: DPM-Solver++ 2M) driving the trained ddpm "
                             "eps network (linear betas, T = 1000) at "
                             + "; ".join(f"{d}: {v['ddim']} / {v['dpm_solver_pp']}" for d, v in DDPM_PEER_STEPS.items())
                             + " steps, beside edifice's DDIM / DPM-Solver++ at the "
                             "same steps (the loops of sampler_overhead.py / sampler_overhead_score.py); metrics by "
                             "evaluate() on their samples.")
    except ImportError:
        info["diffusers"] = "not installed: its rows are skipped."
    try:
        import zuko

        info["zuko"] = (f"zuko {zuko.__version__}: flows.NSF on the 2-D sets (flows_nll.py's construction: 4 "
                        "transforms, hidden (64, 64)), trained at the same steps / batch / lr with AdamW, cosine "
                        "decay and clipping (no EMA); W2 and NLL on the same held-out points.")
    except ImportError:
        info["zuko"] = "not installed: its rows are skipped."
    ok, why = torchcfm_status()
    info["torchcfm"] = (f"torchcfm {why}: ConditionalFlowMatcher(sigma=0) (its coupling and regression target only) "
                        "trains edifice's flow-matching network with fit's optimiser and EMA, sampled with edifice's "
                        "Euler sampler (50 steps); NLL with the flow-matching recipe's likelihood."
                        if ok else f"no rows: torchcfm does not import here ({why}). It installs with "
                        "`pip install --no-deps torchcfm pot` (POT is its one import-time dependency besides torch; "
                        "torchdyn is not needed).")
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=None, help="data sets (default: all)")
    p.add_argument("--families", nargs="+", default=None,
                   help=f"families and peers ({', '.join(PEERS)}); default: every applicable one")
    p.add_argument("--resume", action="store_true",
                   help="keep the cells already in <out-dir>/leaderboard.json (those that failed run again)")
    p.add_argument("--keep-runs", default=None, metavar="DIR", help="keep the run folders here (default: a temp dir)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite RESULTS.md and the pictures from <out-dir>/leaderboard.json; train nothing")
    p.add_argument("--write-results", action="store_true", help="with --quick: also write RESULTS.md")
    p.add_argument("--results-md", default=str(RESULTS_MD), help="where RESULTS.md goes")
    p.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default 1800; quick 120)")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells at once, each in its own process (default: CPU cores / --threads, at most 4; 1 on CUDA)")
    p.add_argument("--isolate", action="store_true",
                   help="with --quick: run every cell in its own process (default: only the first; the others run "
                        "in this process to save interpreter start-ups, and their memory is this process's)")
    p.add_argument("--cell", nargs=2, metavar=("FAMILY", "DATA"), default=None, help=argparse_suppress())
    p.add_argument("--cell-out", default=None, help=argparse_suppress())
    p.set_defaults(threads=1)  # small nets: a second thread only adds synchronisation
    args = p.parse_args(argv)
    if args.cell is not None:
        import edifice.train  # noqa: F401 - the baseline memory includes the library

        args._baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        raise SystemExit(child_main(args))
    from edifice.train import RECIPES

    args._baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = common.setup(args)
    out_dir = Path(args.out_dir)
    stem = NAME
    existing = _load_json(out_dir / f"{NAME}.json")
    if args.quick and existing is not None and not existing.get("quick") and not args.report_only:
        stem = f"{NAME}_quick"  # never overwrite a full run's results with quick ones
        print(f"{out_dir / NAME}.json holds a full run: --quick writes {stem}.json and {stem}_<data>.png", flush=True)
    json_path = out_dir / f"{stem}.json"
    md_path = Path(args.results_md) if (not args.quick or args.write_results) else None
    if args.report_only:
        payload = _load_json(json_path)
        if payload is None:
            raise SystemExit(f"--report-only: no readable {json_path}")
        write_report(payload, out_dir, md_path)
        return payload
    if args.families:
        unknown = sorted(set(args.families) - set(RECIPES) - set(PEERS))
        if unknown:
            raise SystemExit(f"--families: unknown {unknown}; choose from {sorted(RECIPES) + list(PEERS)}")
    start = time.perf_counter()
    cells, skipped, notes = plan(args)
    previous = _load_json(json_path) if args.resume else None
    payload: dict[str, Any] = {
        "name": stem, "stem": stem, "quick": bool(args.quick), "machine": common.machine_info(device),
        "settings": settings(args.quick),
        "families_order": [*RECIPES, *PEERS], "datasets": [], "cells": {}, "skipped": {}, "references": {},
        "peers": peer_info(), "notes": [],
    }
    if previous is not None and bool(previous.get("quick")) == bool(args.quick):
        payload["cells"] = {k: c for k, c in previous.get("cells", {}).items() if "error" not in c}
        payload["skipped"] = previous.get("skipped", {})
        payload["references"] = previous.get("references", {})
        payload["datasets"] = previous.get("datasets", [])
    for data, d in skipped.items():
        payload["skipped"].setdefault(data, {}).update(d)
    planned = [d for d in dict.fromkeys(d for _, d in cells)]
    payload["datasets"] = [d for d in DATASETS if d in set(payload["datasets"]) | set(planned)]
    payload["references"].update(reference_rows([d for d in planned if d not in payload["references"]], args.quick))
    timeout = args.cell_timeout or (120.0 if args.quick else 1800.0)
    tmp_runs = None
    if args.keep_runs:
        runs = Path(args.keep_runs)
    else:
        tmp_runs = tempfile.TemporaryDirectory(prefix="edifice-leaderboard-")
        runs = Path(tmp_runs.name)
    try:
        todo = [(f, d) for f, d in cells if f"{d}/{f}" not in payload["cells"]]
        todo.sort(key=lambda c: -COST_RANK.get(c[1], 0))  # the slowest data first: no long tail with --jobs
        print(f"{len(todo)} cells to run ({len(cells) - len(todo)} kept from {json_path})", flush=True)
        args.keep_runs = str(runs)
        jobs = args.jobs or default_jobs(args, device)
        done = 0

        def record(family: str, data: str, cell: dict[str, Any]) -> None:
            nonlocal done
            done += 1
            payload["cells"][f"{data}/{family}"] = cell
            status = ("FAILED " + cell["error"].splitlines()[0][:200]) if "error" in cell else \
                "; ".join(f"{r['label']}: " + ", ".join(f"{k} {common.fmt(r.get('metrics', {}).get(k))}"
                                                          for k in ("w2", "nll", "fd") if r.get("metrics", {}).get(k)
                                                          is not None) for r in cell.get("rows", []))
            print(f"[{done}/{len(todo)}] {data:12s} {family:24s} {cell.get('wall_s', 0):6.1f} s  {status}", flush=True)
            common.write_json(stem, payload, out_dir)

        if args.quick and not args.isolate:  # the first cell in a child process, the others here
            for i, (family, data) in enumerate(todo):
                if i == 0:
                    cell = run_child(family, data, args, runs, timeout)
                else:
                    t0 = time.perf_counter()
                    cell = execute_cell(family, data, args, device)
                    cell.update(wall_s=time.perf_counter() - t0, in_process=True)
                record(family, data, cell)
        else:
            from concurrent.futures import ThreadPoolExecutor, as_completed

            payload["jobs"] = jobs
            with ThreadPoolExecutor(max_workers=jobs) as pool:  # each job waits on its own child process
                futures = {pool.submit(run_child, f, d, args, runs, timeout): (f, d) for f, d in todo}
                for fut in as_completed(futures):
                    f, d = futures[fut]
                    record(f, d, fut.result())
    finally:
        if tmp_runs is not None:
            tmp_runs.cleanup()
    base = [c.get("baseline_mem_mb") for c in payload["cells"].values() if c.get("baseline_mem_mb")]
    payload["baseline_mem_mb"] = statistics.median(base) if base else None
    failed = [k for k, c in payload["cells"].items() if "error" in c]
    payload["notes"] = notes + [
        f"this invocation: {len(todo)} cells in {time.perf_counter() - start:.0f} s wall"
        + (f" ({len(cells) - len(todo)} kept from an earlier run)" if len(cells) != len(todo) else ""),
        f"cells' wall seconds (child process incl. start-up), all cells in the JSON: "
        f"{sum(c.get('wall_s', 0) for c in payload['cells'].values()):.0f} s",
    ] + ([f"failed cells: {', '.join(failed)}"] if failed else [])
    write_report(payload, out_dir, md_path)
    table = combined_table(payload)
    common.report(stem, "Leaderboard: every family on the 2-D sets, digits and MNIST (see benchmarks/RESULTS.md)",
                  table, payload, args, payload["notes"])
    if args.quick and failed:
        raise RuntimeError(f"leaderboard --quick: cells failed: {', '.join(failed)}")
    return payload


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
