"""The training loop: one function that trains any family from its recipe, resumably.

:func:`fit` runs AdamW with gradient clipping and an EMA of the weights, shows a tqdm progress
bar, appends periodic logs to ``log.jsonl``, and writes atomic checkpoints (see
:mod:`edifice.train.checkpoint`). The same code runs alone or under ``torchrun`` data-parallel (each
rank draws ``batch_size / world_size`` examples; gradients are averaged; only rank 0 writes).

**Exact resume.** The randomness of step ``k`` on rank ``r`` comes from generators seeded with a
hash of ``(seed, k, r)`` (one stream for the data, one for the loss, and the global RNG for
dropout), so no RNG state needs saving: running to step 10 and then, with the same command and
``steps=20``, on to step 20 gives bit-identical weights to an uninterrupted 20-step run (on the
same device and software). A run killed mid-way resumes from its last checkpoint the same way.

**Several networks.** A recipe may split a training step into phases (:class:`~edifice.train.recipes.Phase`),
each with its own optimiser over some of the networks, repeated ``n`` times (a GAN's discriminator and
generator, ``n_critic``). Under ``torchrun`` the gradients are averaged over ranks after each backward and
rank 0's buffers are broadcast after each step, which is what DDP does, on the plain modules.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .._checks import check_choice, check_float, check_int
from . import checkpoint as ckpt
from . import distributed as D
from .ema import EMA
from .recipes import Recipe, get_recipe

__all__ = ["fit", "load", "FitResult", "NonFiniteLossError", "step_seed", "LOG_FILE"]

LOG_FILE = "log.jsonl"
LR_SCHEDULES = ("cosine", "constant")
LOSS_PLOT = "loss.png"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed derived from ``(seed, step, rank, stream)`` by hashing (BLAKE2b)."""
    digest = hashlib.blake2b(f"edifice:{seed}:{step}:{rank}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        nets: the trained networks (plain modules, not DDP-wrapped).
        ema_nets: their exponential moving average (use these for sampling).
        config: the run configuration, as saved in ``checkpoint.json``.
        step: the number of optimiser steps done in total.
        start_step: the step training (re)started from (0 for a fresh run).
        history: the log entries of this call (``{"step", "loss", ...}``).
        run_dir: the run folder, or None when ``out`` was None.
        wall_time: seconds spent in this call.
    """

    nets: Any
    ema_nets: Any
    config: dict
    step: int
    start_step: int
    history: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    wall_time: float = 0.0


def _load_data(data: Any, data_dir: str | None, holdout_class: int | None = None) -> Any:
    from .. import data as data_mod

    if isinstance(data, str):
        if holdout_class is None:
            return data_mod.load(data, data_dir=data_dir)
        return data_mod.load(data, data_dir=data_dir, holdout_class=holdout_class)
    if holdout_class is not None:
        raise ValueError("holdout_class applies to a dataset name; a DataSource carries its own "
                         f"(data.load(..., holdout_class=...)), got holdout_class={holdout_class!r} with a DataSource")
    if not all(hasattr(data, a) for a in ("name", "kind", "data_shape", "num_classes", "train_batch")):
        raise TypeError(f"data must be a dataset name or a DataSource, got {type(data).__name__}")
    return data


def _nets_like(nets: Any, modules: list) -> Any:
    return modules[0] if isinstance(nets, torch.nn.Module) else type(nets)(*modules)


def _make_config(recipe: Recipe, data: Any, data_dir: str | None, options: dict, train: dict) -> dict:
    import edifice

    return {
        "family": recipe.name,
        "data": {"name": data.name, "kind": data.kind, "data_shape": list(data.data_shape),
                 "num_classes": data.num_classes, "data_dir": None if data_dir is None else str(data_dir),
                 "holdout_class": getattr(data, "holdout_class", None)},
        "options": options,
        "train": train,
        "edifice_version": edifice.__version__,
    }


def _check_same_run(saved: dict, config: dict, run_dir: Path) -> None:
    diffs = []
    for section in ("family", "data", "options", "train"):
        a, b = saved.get(section), config[section]
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k in ("data_dir",):
                    continue
                if a.get(k) != b.get(k):
                    diffs.append(f"{section}.{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}")
        elif a != b:
            diffs.append(f"{section}: checkpoint {a!r}, now {b!r}")
    if diffs:
        raise ValueError(
            f"{run_dir} holds a checkpoint of a different run ({'; '.join(diffs)}); "
            "use another --out folder, the same settings, or resume=False to start over")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a torn last line
    ckpt.atomic_write_bytes(path, ("\n".join(keep) + "\n").encode() if keep else b"")


def read_log(run_dir: str | os.PathLike) -> list[dict]:
    """The entries of ``run_dir/log.jsonl`` (torn lines skipped)."""
    path = Path(run_dir) / LOG_FILE
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def fit(
    family: str,
    data: Any,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    seed: int = 0,
    out: str | os.PathLike | None = None,
    options: dict[str, Any] | None = None,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    weight_decay: float = 0.0,
    log_every: int | None = None,
    ckpt_every: int | None = None,
    device: str | torch.device | None = None,
    data_dir: str | os.PathLike | None = None,
    holdout_class: int | None = None,
    resume: bool = True,
    progress: bool = True,
    plots: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train family ``family`` on ``data`` for ``steps`` optimiser steps in total.

    Args:
        family: a name of :data:`edifice.train.RECIPES` (``"ddpm"``, ``"flow_matching"``, ...).
        data: a dataset name of :mod:`edifice.data` (``"moons"``, ``"digits"``, ...) or a ``DataSource``.
        steps: total optimiser steps; a resumed run continues up to this number.
        batch_size: the GLOBAL batch; each of ``W`` DDP ranks draws ``batch_size / W``.
        lr, weight_decay: AdamW settings.
        lr_schedule: ``"cosine"`` (``lr · (1 + cos(π step / steps)) / 2``, decaying to 0 at ``steps``) or
            ``"constant"``. The cosine horizon is this call's ``steps``: a killed run resumed with the same
            ``steps`` is exact, while extending a finished cosine run to more steps restarts part of the decay.
        seed: seeds the initial weights and every step's randomness.
        out: run folder for checkpoints and logs (created); None trains in memory only.
        options: family options (build options such as ``hidden`` or settings such as ``coupling``);
            see :meth:`Recipe.resolve`.
        ema_decay: decay of the weight EMA (with warm-up), in ``[0, 1)``.
        grad_clip: max global gradient norm, or None for no clipping.
        log_every: steps between log lines (default: ``steps / 100`` clamped to ``[1, 100]``).
        ckpt_every: steps between checkpoints (default 500; one is always written at the end).
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available).
        data_dir: where image data sets are looked up (see :func:`edifice.data.load`).
        holdout_class: leave this class out of the training and test splits of a labelled image data
            set (its test images become an out-of-distribution set for ``edifice eval --ood``).
        resume: continue from ``out``'s checkpoint when there is one (same settings required).
        progress: show a tqdm progress bar (rank 0 only, when stderr is a terminal).
        plots: write ``loss.png`` at the end (needs matplotlib; skipped if it is missing).
        callback: called with each log entry (rank 0 and the others alike).

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError / TypeError: for bad arguments, before anything is written.
        NonFiniteLossError: if the loss becomes NaN or infinite (names the first such step).
    """
    t_start = time.perf_counter()
    recipe = get_recipe(family)
    steps = check_int("steps", steps, min=1)
    batch_size = check_int("batch_size", batch_size, min=1)
    lr = check_float("lr", lr, min=0.0, min_open=True)
    lr_schedule = check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    seed = check_int("seed", seed, min=0)
    ema_decay = check_float("ema_decay", ema_decay, min=0.0, max=1.0, max_open=True)
    if grad_clip is not None:
        grad_clip = check_float("grad_clip", grad_clip, min=0.0, min_open=True)
    weight_decay = check_float("weight_decay", weight_decay, min=0.0)
    log_every = max(1, min(100, steps // 100)) if log_every is None else check_int("log_every", log_every, min=1)
    ckpt_every = 500 if ckpt_every is None else check_int("ckpt_every", ckpt_every, min=1)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of family options, got {type(options).__name__}")
    run_dir = None if out is None else Path(out)
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"out must be a folder, but {str(run_dir)!r} is a file")
    data_dir = None if data_dir is None else str(data_dir)
    data = _load_data(data, data_dir, holdout_class)
    resolved = recipe.resolve(data, options)

    info = D.setup(device)
    try:
        if batch_size % info.world_size:
            raise ValueError(f"batch_size must be divisible by the world size {info.world_size}, got {batch_size}")
        train_cfg = {"batch_size": batch_size, "lr": lr, "lr_schedule": lr_schedule, "seed": seed, "ema_decay": ema_decay,
                     "grad_clip": grad_clip, "weight_decay": weight_decay, "world_size": info.world_size}
        config = _make_config(recipe, data, data_dir, resolved, train_cfg)
        return _fit(recipe, data, config, info, steps=steps, run_dir=run_dir, log_every=log_every,
                    ckpt_every=ckpt_every, resume=resume, progress=progress, plots=plots, callback=callback,
                    t_start=t_start)
    finally:
        D.teardown(info)


def _fit(recipe, data, config, info, *, steps, run_dir, log_every, ckpt_every, resume, progress, plots, callback,
         t_start) -> FitResult:
    options, train = config["options"], config["train"]
    device = info.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(train["seed"])
        nets = recipe.build(options)
    modules = ckpt.nets_to_dict(nets)
    for m in modules.values():
        m.to(device).eval()

    phases = recipe.train_phases()
    for ph in phases:
        unknown = [m for m in ph.modules if m not in modules]
        if unknown:
            raise ValueError(f"phase {ph.name!r} of {recipe.name!r} names modules {unknown} that the nets lack "
                             f"({', '.join(modules)})")
    settings = options["settings"]
    repeats = [check_int(f"repeats of phase {ph.name!r}", ph.repeats(settings), min=1) for ph in phases]

    # Dry run on a tiny batch (eval mode: no state changes): bad settings fail before anything is written.
    # Gradients stay enabled (a gradient penalty differentiates inside the loss) but nothing is stepped.
    x, y = data.train_batch(2, generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for ph in phases:
            if ph.start is not None:  # what the phase needs before its first loss (redone when it starts)
                ph.start(recipe, nets, data, settings)
            recipe.loss(nets, x.to(device), None if y is None else y.to(device), options=options,
                        generator=_gen(device, 0), phase=ph)
    for m in modules.values():
        m.zero_grad(set_to_none=True)
        m.train()

    start = 0
    saved = None
    if run_dir is not None and resume and ckpt.has_checkpoint(run_dir):
        tensors, saved = ckpt.load_checkpoint(run_dir)
        _check_same_run(saved, config, run_dir)
        start = int(saved["step"])

    # One optimiser per phase, over the parameters of its modules (all modules when it names none).
    phase_params, opts = [], []
    for ph in phases:
        names = ph.modules or tuple(modules)
        params = [p for n in names for p in modules[n].parameters() if p.requires_grad]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        kw = dict(ph.optim(settings, train["lr"]))
        opts.append(torch.optim.AdamW(params, weight_decay=train["weight_decay"], fused=fused or None, **kw))
        phase_params.append(params)
    base_lrs = [o.param_groups[0]["lr"] for o in opts]
    single = len(phases) == 1
    emas = {name: EMA(m, decay=train["ema_decay"]) for name, m in modules.items()}
    if saved is not None:
        ckpt.load_module_tensors("model", modules, tensors)
        for name, e in emas.items():
            ckpt.load_module_tensors("ema", {name: e.module}, tensors)
            e.num_updates = int(saved["ema"][name]["num_updates"])
        for ph, opt in zip(phases, opts):
            prefix = "optim" if single else f"optim/{ph.name}"
            meta = saved["optim"] if single else saved["optim"][ph.name]
            opt.load_state_dict(ckpt.unflatten_optimizer_state(tensors, meta, prefix=prefix))
        if saved["train"].get("world_size") != info.world_size and info.is_main:
            print(f"warning: resuming a run trained with world size {saved['train'].get('world_size')} on "
                  f"{info.world_size} processes; the data stream differs from an uninterrupted run")
    ema_nets = _nets_like(nets, [emas[n].module for n in modules])

    if run_dir is not None and info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(run_dir / LOG_FILE, start)
    D.barrier(info)

    def save(step: int) -> None:
        if run_dir is None or not info.is_main:
            return
        tensors = ckpt.module_tensors("model", modules)
        tensors.update(ckpt.module_tensors("ema", {n: e.module for n, e in emas.items()}))
        optim_json = {}
        for ph, opt in zip(phases, opts):
            prefix = "optim" if single else f"optim/{ph.name}"
            optim_tensors, optim_json[ph.name] = ckpt.flatten_optimizer_state(opt.state_dict(), prefix=prefix)
            tensors.update(optim_tensors)
        meta = dict(config, step=step, optim=optim_json[phases[0].name] if single else optim_json,
                    ema={n: {"num_updates": e.num_updates} for n, e in emas.items()})
        ckpt.save_checkpoint(run_dir, tensors, meta)

    # Data parallel across ranks by averaging gradients after each backward (D.average_gradients), not by
    # DDP-wrapping the modules: the families then see plain modules, and GAN phases and gradient penalties work.
    train_nets = nets
    all_modules = list(modules.values())
    per_rank = train["batch_size"] // info.world_size
    history: list[dict] = []
    pending: list[torch.Tensor] = []  # the first phase's loss per step ("loss" in the log)
    pending_norm: list[torch.Tensor] = []
    pending_logs: dict[str, list[torch.Tensor]] = {}
    bar = None
    if progress and info.is_main and start < steps:
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (log files get log.jsonl instead).
        bar = tqdm(total=steps, initial=start, desc=f"{recipe.name} on {data.name}", dynamic_ncols=True,
                   mininterval=0.5, disable=None)
    t_loop = time.perf_counter()
    rng_devices = [device] if device.type == "cuda" else []
    seed = train["seed"]
    try:
        with torch.random.fork_rng(devices=rng_devices):
            for step in range(start, steps):
                _seed_global_rng(step_seed(seed, step, info.rank, 2), device)  # e.g. dropout
                logged_main = False
                for k, (ph, opt, params, reps) in enumerate(zip(phases, opts, phase_params, repeats)):
                    if not ph.active(settings, step, steps):
                        continue
                    if ph.start is not None and (step == 0 or not ph.active(settings, step - 1, steps)):
                        with torch.random.fork_rng(devices=rng_devices):
                            ph.start(recipe, nets, data, settings)
                    for r in range(reps):
                        # Streams 0 (data) and 1 (loss) for the first pass; other passes get their own.
                        sub = "" if k == 0 and r == 0 else f":{ph.name}:{r}"
                        g_data = torch.Generator().manual_seed(step_seed(seed, step, info.rank, f"0{sub}"))
                        x, y = data.train_batch(per_rank, generator=g_data)
                        x = x.to(device, non_blocking=True)
                        y = None if y is None else y.to(device, non_blocking=True)
                        loss, logs = recipe.loss(train_nets, x, y, options=options, phase=ph, step=step,
                                                 total_steps=steps,
                                                 generator=_gen(device, step_seed(seed, step, info.rank, f"1{sub}")))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        D.average_gradients(params, info)
                        if train["grad_clip"] is not None and not logged_main:
                            pending_norm.append(torch.nn.utils.clip_grad_norm_(params, train["grad_clip"]).detach())
                        elif train["grad_clip"] is not None:
                            torch.nn.utils.clip_grad_norm_(params, train["grad_clip"])
                        for group in opt.param_groups:
                            group["lr"] = lr_at(base_lrs[k], train.get("lr_schedule", "constant"), step, steps)
                        opt.step()
                        if ph.after is not None:
                            ph.after(nets, settings)
                        if r == reps - 1:  # log the last pass of each phase
                            if not logged_main:  # "loss": the first phase that trained at this step
                                pending.append(loss.detach())
                                logged_main = True
                            if not single:
                                pending_logs.setdefault(f"loss_{ph.name}", []).append(loss.detach())
                            for key, v in logs.items():
                                if key != "loss" and isinstance(v, torch.Tensor) and v.numel() == 1:
                                    name = key if single else f"{ph.name}/{key}"
                                    pending_logs.setdefault(name, []).append(v.detach().float().reshape(()))
                if not logged_main:
                    raise RuntimeError(f"no training phase of {recipe.name!r} is active at step {step}")
                D.broadcast_buffers(all_modules, info)
                for name, e in emas.items():
                    e.update(modules[name])
                done = step + 1
                if done % log_every == 0 or done == steps or done % ckpt_every == 0:
                    entry = _flush(pending, pending_norm, done, info, t_loop, start)
                    entry.update(_flush_logs(pending_logs, info))
                    entry["ema_decay"] = round(next(iter(emas.values())).current_decay(), 6) if emas else None
                    history.append(entry)
                    if info.is_main and run_dir is not None:
                        with open(run_dir / LOG_FILE, "a") as f:
                            f.write(json.dumps(entry) + "\n")
                    if bar is not None:
                        bar.set_postfix(loss=f"{entry['loss']:.4g}")
                    if callback is not None:
                        callback(dict(entry))
                if done % ckpt_every == 0 or done == steps:
                    save(done)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    D.barrier(info)
    if run_dir is not None and info.is_main and plots:
        _plot_loss(run_dir, recipe.name, data.name)
    return FitResult(nets=nets, ema_nets=ema_nets, config=config, step=max(start, steps), start_step=start,
                     history=history, run_dir=run_dir, wall_time=time.perf_counter() - t_start)


def lr_at(lr: float, schedule: str, step: int, steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) out of ``steps`` under ``schedule``."""
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def _seed_global_rng(seed: int, device: torch.device) -> None:
    # torch.manual_seed would also queue lazy seeding of every accelerator type (costly per step).
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _gen(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _flush(pending, pending_norm, done, info, t_loop, start) -> dict:
    """Average the losses since the last log (over steps and ranks); raise on a non-finite one."""
    losses = D.all_reduce_mean(torch.stack(pending).float(), info).cpu()  # (n,)
    n = len(pending)
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        first = done - n + int(bad[0]) + 1
        raise NonFiniteLossError(
            f"the training loss became {float(losses[bad[0]])} at step {first}; lower --lr, enable "
            "gradient clipping, or check the data for NaN/inf values")
    entry = {"step": done, "loss": float(losses.mean())}
    if pending_norm:
        entry["grad_norm"] = float(torch.stack(pending_norm).float().mean())
    elapsed = time.perf_counter() - t_loop
    entry["time"] = round(elapsed, 3)
    entry["steps_per_s"] = round((done - start) / max(elapsed, 1e-9), 2)
    pending.clear()
    pending_norm.clear()
    return entry


def _flush_logs(pending_logs: dict[str, list[torch.Tensor]], info) -> dict[str, float | None]:
    """Means of the family's logged numbers since the last log line (over steps and ranks)."""
    out: dict[str, float | None] = {}
    for key in sorted(pending_logs):
        v = float(D.all_reduce_mean(torch.stack(pending_logs[key]).float(), info).mean())
        if key.startswith("loss_") and not math.isfinite(v):
            raise NonFiniteLossError(f"the training loss of phase {key[5:]!r} became {v}; lower --lr or the "
                                     "phase's learning rate, or check the data for NaN/inf values")
        out[key] = v if math.isfinite(v) else None
    pending_logs.clear()
    return out


def _plot_loss(run_dir: Path, family: str, data_name: str) -> None:
    try:
        from .plots import loss_curve

        log = [e for e in read_log(run_dir) if math.isfinite(e.get("loss", math.nan))]
        if log:
            loss_curve([e["step"] for e in log], [e["loss"] for e in log], run_dir / LOSS_PLOT,
                       title=f"{family} on {data_name}")
    except ImportError:
        pass


def load(run_dir: str | os.PathLike, *, ema: bool = True, device: str | torch.device | None = None) -> tuple[Any, dict]:
    """Rebuild the networks of a run from its checkpoint: ``nets, config = load("runs/demo")``.

    Args:
        run_dir: a run folder written by :func:`fit` (or ``edifice train``).
        ema: load the EMA weights (for sampling) instead of the last iterate.
        device: where to put the networks (default CPU).

    Returns:
        ``(nets, config)``: the networks in eval mode, and the checkpoint JSON (``config["options"]``
        holds the build options, ``config["step"]`` the step).

    Raises:
        FileNotFoundError: no such folder or no checkpoint in it.
        ValueError: a truncated / corrupted checkpoint, or an unknown family.
    """
    tensors, config = ckpt.load_checkpoint(run_dir)
    recipe = get_recipe(config["family"])
    nets = recipe.build(config["options"])
    ckpt.load_module_tensors("ema" if ema else "model", nets, tensors)
    for m in ckpt.nets_to_dict(nets).values():
        m.to("cpu" if device is None else device).eval()
    return nets, config
