"""Command line: ``edifice list | train | sample | eval``.

::

    edifice list
    edifice train flow_matching --data moons --steps 3000 --out runs/demo
    edifice sample runs/demo --n 1000 --sampler rk4 --steps 20 --out runs/demo/more
    edifice eval runs/demo --n 2000
    edifice eval runs/vae --ood

``train`` writes a checkpoint, ``log.jsonl``, ``loss.png``, then evaluates: ``samples.png``,
``samples.npy`` and ``metrics.json`` (every metric that applies: see :func:`edifice.train.evaluate`);
``eval --ood`` writes ``ood.json`` and ``ood_hist.png`` (:func:`edifice.train.ood.ood_report`). Running ``train`` again with the same settings and a larger
``--steps`` resumes the run. It also runs under ``torchrun --nproc_per_node=N -m edifice train ...``.

Bad arguments print a message and exit with status 2 before anything is written. This module
only parses arguments and calls :mod:`edifice.train`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "parse_option"]


class _ArgError(Exception):
    """A user error found while validating (exit status 2)."""


def parse_option(text: str) -> tuple[str, Any]:
    """Parse ``key=value``; the value is read as a JSON literal when possible (``3``, ``true``,
    ``[1, 2]``, ``null``), else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _ArgError(f"--option must look like key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _options(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, value = parse_option(item)
        if key in out:
            raise _ArgError(f"--option {key} given twice")
        out[key] = value
    return out


def _check_writable_dir(path: Path, what: str) -> None:
    """Raise unless ``path`` is (or can be created as) a writable folder."""
    if path.exists():
        if not path.is_dir():
            raise _ArgError(f"{what} {str(path)!r} exists and is not a folder")
        if not os.access(path, os.W_OK):
            raise _ArgError(f"{what} {str(path)!r} is not writable")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise _ArgError(f"cannot create {what} {str(path)!r}: {str(parent)!r} is not a writable folder")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise _ArgError(f"{name} must be a positive int, got {value}")


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise _ArgError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _ArgError(f"--device {device} was asked for but CUDA is not available")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise _ArgError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


SDE_CHOICES = ("vp", "ve", "subvp")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands ``list``, ``train``, ``sample``, ``eval``)."""
    p = argparse.ArgumentParser(prog="edifice", description="Train, sample and evaluate generative models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    lst = sub.add_parser("list", help="list families, their samplers, and data sets")
    lst.set_defaults(_parser=lst)

    t = sub.add_parser("train", help="train a family on a data set (resumes an existing run folder)")
    t.set_defaults(_parser=t)
    t.add_argument("family", help="model family, e.g. ddpm or flow_matching (see `edifice list`)")
    t.add_argument("--data", required=True, help="data set name (moons, digits, mnist, npz:PATH, folder:PATH, ...)")
    t.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    t.add_argument("--out", required=True, help="run folder (created; an existing run is resumed)")
    t.add_argument("--batch-size", type=int, default=256, help="global batch size (default 256)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over --steps (default cosine decay to 0)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights and of every step (default 0)")
    t.add_argument("--data-dir", default=None, help="folder holding image data sets (e.g. mnist.npz)")
    t.add_argument("--holdout-class", type=int, default=None, metavar="K",
                   help="leave class K out of a labelled image data set (an out-of-distribution set for eval --ood)")
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest for small nets on busy cores)")
    t.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    t.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the weights (default 0.999)")
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 disables (default 1)")
    t.add_argument("--log-every", type=int, default=None, help="steps between log lines")
    t.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints (default 500)")
    t.add_argument("--sde", choices=SDE_CHOICES, default=None,
                   help="SDE of score_sde: vp, ve or subvp (the same as --option sde=...; default vp)")
    t.add_argument("--class-cond", action="store_true",
                   help="train a class-conditional model on labelled data (the same as --option conditional=true)")
    t.add_argument("--p-uncond", type=float, default=None,
                   help="label dropout for classifier-free guidance (the same as --option label_dropout=P)")
    t.add_argument("--backbone", default=None,
                   help="network of the diffusion and flow families: unet, dit (or mlp for vectors; default: "
                        "by data shape); the same as --option backbone=...")
    t.add_argument("--teacher", default=None, metavar="RUN",
                   help="run folder of the teacher (consistency distillation from edm / ddpm, rectified_flow reflow "
                        "or distillation from flow_matching / rectified_flow, progressive_distillation from ddpm)")
    t.add_argument("--variant", default=None,
                   help="a named preset of the family (e.g. vae: beta_vae, iwae, cvae, hvae; gan: dcgan, wgan_gp, ...; "
                        "see `edifice list`); --option values override it")
    t.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="family option, repeatable, e.g. --option hidden=128 --option coupling=ot")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    t.add_argument("--eval-n", type=int, default=None, help="samples for the final evaluation")
    t.add_argument("--eval-sampler", default=None, help="sampler of the final evaluation (default: the family's)")
    t.add_argument("--eval-steps", type=int, default=None, help="sampler steps of the final evaluation")

    s = sub.add_parser("sample", help="draw samples from a trained run: FILE.png and FILE.npy")
    s.set_defaults(_parser=s)
    s.add_argument("run_dir", help="run folder written by `edifice train`")
    s.add_argument("--n", type=int, required=True, help="number of samples")
    s.add_argument("--out", required=True, help="output path; FILE.png (picture) and FILE.npy (array) are written")
    s.add_argument("--sampler", default=None, help="sampler name (default: the family's)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's)")
    s.add_argument("--label", type=int, default=None, help="class label (conditional models only)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale of a class-conditional model (1: none; 0: unconditional)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest for small nets on busy cores)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")

    e = sub.add_parser("eval", help="evaluate a trained run against held-out data; writes RUN_DIR/metrics.json")
    e.set_defaults(_parser=e)
    e.add_argument("run_dir", help="run folder written by `edifice train`")
    e.add_argument("--n", type=int, default=None, help="samples (default 2000 for points, 256 for images)")
    e.add_argument("--sampler", default=None, help="sampler name (default: the family's)")
    e.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    e.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale of a class-conditional model (1: none; 0: unconditional)")
    e.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest for small nets on busy cores)")
    e.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    e.add_argument("--data-dir", default=None, help="override where the run's image data set is looked up")
    nll = e.add_mutually_exclusive_group()
    nll.add_argument("--no-nll", action="store_true", help="skip the likelihood")
    nll.add_argument("--nll", action="store_true",
                     help="require the test NLL (an error for a family without a likelihood)")
    e.add_argument("--features", default=None, metavar="MODULE:NAME",
                   help="your own feature network for the image metrics: an importable callable returning a module "
                        "with features(x) (or mapping [0, 1] images to (N, D) features); default: edifice's own "
                        "network for digits and mnist")
    e.add_argument("--ood", action="store_true",
                   help="out-of-distribution detection instead: anomaly scores against shifted data; writes "
                        "RUN_DIR/ood.json and RUN_DIR/ood_hist.png")
    e.add_argument("--score", action="append", default=None, metavar="SCORE",
                   help="with --ood: anomaly score(s) to use (nll, reconstruction, energy; default: every one that applies)")
    return p


def _print_metrics(metrics: dict[str, Any]) -> None:
    keys = [k for k in ("w2", "sliced_wasserstein", "mmd", "energy", "nll", "nll_se", "bpd", "elbo", "recon_mse",
                        "perplexity", "usage", "prior_nll_per_code", "modes", "high_quality", "nll_bound", "bpd_bound",
                        "pseudo_nll", "conditional_nll", "fd", "fd_real", "kid", "precision", "recall", "density",
                        "coverage", "class_accuracy") if k in metrics]
    print(f"{metrics['family']} on {metrics['data']} (step {metrics['step']}; {metrics['sampler']} x "
          f"{metrics['steps']}; n={metrics['n']})")
    for k in keys:
        v = metrics[k]
        text = "n/a" if v is None else (str(v) if isinstance(v, int) else format(v, ".4f"))
        print(f"  {k:<20s} {text}")


def _cmd_list(args: argparse.Namespace) -> int:
    from . import data
    from .train import RECIPES

    print("families:")
    w = max(len(name) for name in RECIPES)
    for name, r in sorted(RECIPES.items()):
        samplers = ", ".join(f"{s}" + ("*" if s == r.default_sampler else "") for s in r.samplers)
        print(f"  {name:<{w}s} {r.summary}\n  {'':<{w}s} samplers: {samplers}  (* default)")
        if r.variants:
            print(f"  {'':<{w}s} variants: {', '.join(r.variants)}")
        if r.teachers:
            print(f"  {'':<{w}s} teacher (--teacher RUN): a run of {' or '.join(r.teachers)}")
    print("data sets:")
    print("  " + ", ".join(getattr(data, "DATASETS", ())) + ", npz:PATH, folder:PATH")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import RECIPES, evaluate, fit
    from .train.distributed import env_rank

    if args.family not in RECIPES:
        raise _ArgError(f"unknown family {args.family!r}; valid families: {', '.join(sorted(RECIPES))}")
    _positive("--steps", args.steps)
    _positive("--batch-size", args.batch_size)
    _positive("--log-every", args.log_every)
    _positive("--ckpt-every", args.ckpt_every)
    _positive("--eval-n", args.eval_n)
    _positive("--eval-steps", args.eval_steps)
    _check_device(args.device)
    RECIPES[args.family].check_sampler(args.eval_sampler, args.eval_steps)
    options = _options(args.option)
    if args.sde is not None:
        if "sde" not in RECIPES[args.family].build_keys():
            raise _ArgError(f"--sde is an option of score_sde, not of {args.family!r}")
        if options.get("sde", args.sde) != args.sde:
            raise _ArgError(f"--sde {args.sde} contradicts --option sde={options['sde']}")
        options["sde"] = args.sde
    for flag, key, value in (("--class-cond", "conditional", True if args.class_cond else None),
                             ("--p-uncond", "label_dropout", args.p_uncond), ("--backbone", "backbone", args.backbone),
                             ("--teacher", "teacher", args.teacher)):
        if value is None:
            continue
        if key in options and options[key] != value:
            raise _ArgError(f"{flag} contradicts --option {key}={options[key]}")
        if key == "backbone" and "backbone" not in RECIPES[args.family].build_keys():
            raise _ArgError(f"--backbone is an option of the diffusion and flow families, not of {args.family!r}")
        if key == "teacher" and not RECIPES[args.family].teachers:
            raise _ArgError(f"--teacher is an option of the distillation families, not of {args.family!r}")
        options[key] = value
    if args.variant is not None:
        if "variant" in options and options["variant"] != args.variant:
            raise _ArgError(f"--variant {args.variant} contradicts --option variant={options['variant']}")
        options["variant"] = args.variant
    out = Path(args.out)
    _check_writable_dir(out, "--out")
    t0 = time.perf_counter()
    result = fit(args.family, args.data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                 lr_schedule=args.lr_schedule, seed=args.seed,
                 out=out, options=options, ema_decay=args.ema_decay,
                 grad_clip=None if args.grad_clip == 0 else args.grad_clip, weight_decay=args.weight_decay,
                 log_every=args.log_every, ckpt_every=args.ckpt_every, device=args.device, data_dir=args.data_dir,
                 holdout_class=args.holdout_class, resume=not args.no_resume, progress=not args.no_progress)
    if env_rank() != 0:
        return 0
    train_time = time.perf_counter() - t0
    print(f"trained {args.family} on {args.data}: step {result.step} in {train_time:.1f} s -> {out}")
    if not args.no_eval:
        metrics = evaluate(out, n=args.eval_n, sampler=args.eval_sampler, steps=args.eval_steps,
                           data_dir=args.data_dir, device=args.device)
        _print_metrics(metrics)
        print(f"wrote {out / 'samples.png'}, {out / 'loss.png'}, {out / 'metrics.json'}; "
              f"total {time.perf_counter() - t0:.1f} s")
    return 0


def _check_run(run_dir: str) -> dict:
    from .train.checkpoint import read_meta

    return read_meta(run_dir)  # FileNotFoundError / CheckpointError name the folder


def _cmd_sample(args: argparse.Namespace) -> int:
    from .train import get_recipe, sample_run, write_samples

    _positive("--n", args.n)
    _positive("--steps", args.steps)
    _check_device(args.device)
    config = _check_run(args.run_dir)
    recipe = get_recipe(config["family"])
    recipe.check_sampler(args.sampler, args.steps)
    recipe.check_label(config["options"], args.label)
    out = Path(args.out)
    if out.is_dir():
        raise _ArgError(f"--out {str(out)!r} is a folder; give a file name such as {str(out / 'samples')!r}")
    _check_writable_dir(out.parent, "the folder of --out")
    recipe.check_guidance(config["options"], args.guidance_scale)
    x, info = sample_run(args.run_dir, args.n, sampler=args.sampler, steps=args.steps, label=args.label,
                         seed=args.seed, device=args.device, guidance_scale=args.guidance_scale)
    out.parent.mkdir(parents=True, exist_ok=True)
    png, npy = write_samples(x, out, kind=config["data"]["kind"],
                             title=f"{config['family']}, {info['sampler']} x {info['steps']}")
    print(f"wrote {png} and {npy} ({args.n} samples, {info['sampler']} x {info['steps']}, "
          f"{info['sample_time_s']:.1f} s)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate, get_recipe

    _positive("--n", args.n)
    _positive("--steps", args.steps)
    _check_device(args.device)
    config = _check_run(args.run_dir)
    if args.ood:
        from .train.ood import ood_report

        for flag, value in (("--nll", args.nll), ("--no-nll", args.no_nll), ("--features", args.features),
                            ("--sampler", args.sampler), ("--steps", args.steps),
                            ("--guidance-scale", args.guidance_scale)):
            if value not in (None, False):
                raise _ArgError(f"{flag} does not apply with --ood (it scores held-out and shifted data, no sampling)")
        report = ood_report(args.run_dir, n=args.n, scores=args.score, seed=args.seed, device=args.device,
                            data_dir=args.data_dir)
        _print_ood(report)
        print(f"wrote {Path(args.run_dir) / 'ood.json'} and {Path(args.run_dir) / 'ood_hist.png'}")
        return 0
    if args.score is not None:
        raise _ArgError("--score applies with --ood")
    get_recipe(config["family"]).check_sampler(args.sampler, args.steps)
    get_recipe(config["family"]).check_guidance(config["options"], args.guidance_scale)
    metrics = evaluate(args.run_dir, n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                       nll=False if args.no_nll else (True if args.nll else None), device=args.device,
                       data_dir=args.data_dir, guidance_scale=args.guidance_scale,
                       features=_load_features(args.features))
    _print_metrics(metrics)
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
    return 0


def _load_features(spec: str | None) -> Any:
    """``--features MODULE:NAME``: import ``NAME`` from ``MODULE`` and call it (a factory) unless it is a module."""
    if spec is None:
        return None
    import importlib

    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise _ArgError(f"--features must be MODULE:NAME (e.g. mypkg.nets:feature_net), got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise _ArgError(f"--features {spec!r}: cannot import {name!r} from {module!r} ({e})") from e
    import torch

    return obj if isinstance(obj, torch.nn.Module) else obj()


def _print_ood(report: dict[str, Any]) -> None:
    print(f"{report['family']} on {report['data']}: out-of-distribution detection (in-distribution n={report['in_n']}; "
          "AUROC, higher is better; FPR at 95% recall of in-distribution data, lower is better)")
    for score, shifts in report["scores"].items():
        for shift, r in shifts.items():
            auroc = "n/a" if r.get("auroc") is None else format(r["auroc"], ".4f")
            fpr = "n/a" if r.get("fpr95") is None else format(r["fpr95"], ".4f")
            print(f"  {score:<15s} {shift:<16s} AUROC {auroc}   FPR95 {fpr}   (n_out={r.get('n_out')})")


_COMMANDS = {"list": _cmd_list, "train": _cmd_train, "sample": _cmd_sample, "eval": _cmd_eval}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edifice`` script and of ``python -m edifice``; returns the exit status."""
    from .train import NonFiniteLossError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            _positive("--threads", args.threads)
            import torch

            torch.set_num_threads(args.threads)
        return _COMMANDS[args.command](args)
    except (_ArgError, ValueError, TypeError, FileNotFoundError) as e:
        args._parser.error(str(e))  # usage + message on stderr, exit status 2
    except NonFiniteLossError as e:
        print(f"edifice: error: {e}", file=sys.stderr)
        return 1
    return 0  # unreachable: sub.error exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
