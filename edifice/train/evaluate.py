"""Sampling from and evaluating a trained run folder (what ``edifice sample`` / ``edifice eval`` do).

Samples are returned and saved in data units: 2-D points as they are, images as floats in
``[0, 1]`` of shape ``(N, C, H, W)``. :func:`evaluate` compares fresh samples with the held-out
test set — exact W2, sliced W2, MMD, energy distance, precision and recall for points; pixel MMD and,
on the features of a feature network (edifice's own for ``digits`` / ``mnist``, or yours), the
Fréchet distance ``fd`` beside its real-data floor ``fd_real``, KID, precision / recall / density /
coverage and the class accuracy of class-conditional samples for images — and, for families with a
likelihood, the test NLL in nats (and bits/dim for images), then writes ``metrics.json`` (plus
``samples.png`` / ``samples.npy``) into the run folder. Out-of-distribution detection is
:func:`edifice.train.ood.ood_report` (``edifice eval --ood``).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .._checks import check_int
from . import checkpoint as ckpt
from .fit import load
from .recipes import get_recipe

__all__ = ["sample_run", "write_samples", "evaluate", "load_data", "METRICS_FILE"]

METRICS_FILE = "metrics.json"


def load_data(config: dict, data_dir: str | os.PathLike | None = None) -> Any:
    """The :class:`edifice.data.DataSource` a run was trained on (``data_dir`` overrides the saved one)."""
    from .. import data as data_mod

    saved = config["data"]
    data_dir = data_dir if data_dir is not None else saved.get("data_dir")
    if saved.get("holdout_class") is None:
        return data_mod.load(saved["name"], data_dir=data_dir)
    return data_mod.load(saved["name"], data_dir=data_dir, holdout_class=saved["holdout_class"])


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_unit(config: dict, x: torch.Tensor, data: Any) -> torch.Tensor:
    if data is not None:
        return data.to_unit(x)
    if config["data"]["kind"] != "images":
        return x
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)  # the DataSource convention: images live in [-1, 1]


def sample_run(
    run_dir: str | os.PathLike,
    n: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    label: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    data: Any = None,
    guidance_scale: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """Draw ``n`` samples from the EMA networks of ``run_dir``, in data units, returned on the CPU.

    ``device`` is where the networks run (default: CUDA when available, else CPU).

    Returns:
        ``(x, info)`` with ``x`` of shape ``(n, *data_shape)`` and ``info`` holding the sampler,
        steps, seed and wall time.

    Raises:
        ValueError: unknown sampler, bad steps, or a label on an unconditional model / out of range.
        FileNotFoundError: no checkpoint in ``run_dir``.
    """
    n = check_int("n", n, min=1)
    seed = check_int("seed", seed, min=0)
    config = ckpt.read_meta(run_dir)
    recipe = get_recipe(config["family"])
    sampler, steps = recipe.check_sampler(sampler, steps, config["options"])
    recipe.check_label(config["options"], label)
    recipe.check_guidance(config["options"], guidance_scale)
    device = _device(device)
    nets, config = load(run_dir, device=device)
    t0 = time.perf_counter()
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        x = recipe.sample(nets, n, options=config["options"], sampler=sampler, steps=steps, generator=g,
                          label=label, device=device, guidance_scale=guidance_scale)
    x = _to_unit(config, x.float().cpu(), data)
    return x, {"sampler": sampler, "steps": steps, "seed": seed, "n": n, "label": label,
               "guidance_scale": guidance_scale,
               "sample_time_s": round(time.perf_counter() - t0, 3)}


def write_samples(x: torch.Tensor, path: str | os.PathLike, *, kind: str, reference: torch.Tensor | None = None,
                  title: str | None = None) -> tuple[Path, Path]:
    """Save samples as ``PATH.png`` (scatter or image grid) and ``PATH.npy`` (raw float32 array).

    ``path`` may end in ``.png`` or ``.npy`` or have no such suffix; both files are written.
    """
    import numpy as np

    from .plots import save_image_grid, scatter_2d

    base = Path(path)
    if base.suffix in (".png", ".npy"):
        base = base.with_suffix("")
    png, npy = base.parent / (base.name + ".png"), base.parent / (base.name + ".npy")
    x = x.detach().float().cpu()
    if kind == "images":
        save_image_grid(x[:256], png)
    elif x.ndim == 2 and x.shape[1] == 2:
        scatter_2d(x, png, reference=reference, title=title)
    else:  # vector data of another width: plot the first two coordinates
        scatter_2d(x[:, :2], png, reference=None if reference is None else reference[:, :2], title=title)
    with open(npy, "wb") as f:
        np.save(f, x.numpy())
    return png, npy


def _finite(v: torch.Tensor | float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def evaluate(
    run_dir: str | os.PathLike,
    *,
    n: int | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    nll: bool | None = None,
    nll_n: int | None = None,
    device: str | torch.device | None = None,
    data_dir: str | os.PathLike | None = None,
    write: bool = True,
    guidance_scale: float | None = None,
    features: Any = None,
) -> dict[str, Any]:
    """Sample from a run and compare with held-out data; write ``metrics.json`` and the samples.

    Every metric that applies is computed: distances in data space, precision / recall /
    density / coverage (in data space for points, in feature space for images), and for images with
    a feature network the Fréchet distance ``fd`` and kernel distance ``kid`` on its features,
    beside ``fd_real``, the same distance between as many real training images and the test
    images (the floor a perfect model reaches at this ``n``), and for class-conditional models the
    feature classifier's accuracy on the samples of each requested class.

    Args:
        run_dir: a run folder with a checkpoint.
        n: number of samples (default 2000 for points, 256 for images; capped by the test set size).
        sampler, steps: sampler and its steps (defaults of the family's recipe).
        seed: seeds the sampler (and the Hutchinson probes).
        nll: ``None`` (default): the test NLL when the family has a likelihood; ``True``: the NLL is
            required (a family without a likelihood raises ``ValueError``); ``False``: skip it.
        nll_n: test points for the NLL (default all ``n`` for points; for images the recipe's
            ``image_nll_n``: 64 for the ODE likelihoods, all ``n`` for the VAE, whose importance-sampled
            NLL is then on the same images as its ELBO).
        device: where to run (default: CUDA when available, else CPU).
        data_dir: override where image data is looked up.
        write: write ``metrics.json``, ``samples.png`` and ``samples.npy`` into ``run_dir``.
        guidance_scale: classifier-free guidance scale for a class-conditional model (None: none).
        features: the feature network of the image metrics: ``None`` (edifice's own network for
            ``digits`` / ``mnist``, :func:`edifice.metrics.features.for_data`; none otherwise), a
            module with a ``features(x)`` method, or any callable mapping ``[0, 1]`` images
            ``(N, C, H, W)`` to ``(N, D)`` features. A module with ``num_classes`` and a ``forward``
            giving logits also scores the samples of a class-conditional model.

    Returns:
        The metrics dict (also the content of ``metrics.json``). Distances are in data units
        (``[0, 1]`` pixels for images); ``nll`` is in nats per example in data units, ``bpd`` in
        bits per dimension with 256-level dequantisation (images only).
    """
    from .. import metrics as M

    t0 = time.perf_counter()
    config = ckpt.read_meta(run_dir)
    recipe = get_recipe(config["family"])
    kind = config["data"]["kind"]
    if nll is not None and not isinstance(nll, bool):
        raise TypeError(f"nll must be None, True or False, got {type(nll).__name__}")
    if nll and not recipe.has_likelihood:
        from .recipes import RECIPES

        raise ValueError(f"nll=True asks for a likelihood, but family {recipe.name!r} has none; families with a "
                         f"likelihood: {', '.join(sorted(k for k, r in RECIPES.items() if r.has_likelihood))}")
    feature_net = _feature_net(features, config, kind)
    n = (2000 if kind == "points" else 256) if n is None else check_int("n", n, min=2)
    data = load_data(config, data_dir)
    x_test, _ = data.test_set(n) if kind == "points" else data.test_set()
    x_test = x_test[:n]
    n = x_test.shape[0]
    samples, info = sample_run(run_dir, n, sampler=sampler, steps=steps, seed=seed, device=device, data=data,
                               guidance_scale=guidance_scale)
    levels = recipe.image_levels(config["options"]) if kind == "images" else None
    ref = _quantise(data.to_unit(x_test).float().cpu(), levels)
    out: dict[str, Any] = {"family": recipe.name, "data": config["data"]["name"], "step": config["step"],
                           "sampler": info["sampler"], "steps": info["steps"], "n": n, "seed": seed}
    if guidance_scale is not None:
        out["guidance_scale"] = guidance_scale
    if levels is not None:
        out["reference_levels"] = levels  # the real images were quantised to the family's pixel levels
    t1 = time.perf_counter()
    finite = bool(torch.isfinite(samples).all())
    if kind == "points":
        if finite:
            g = torch.Generator().manual_seed(seed)
            out["w2"] = _finite(M.w2(samples, ref))
            out["sliced_wasserstein"] = _finite(M.sliced_wasserstein(samples, ref, generator=g))
            out["mmd"] = _finite(M.mmd(samples, ref))
            out["energy"] = _finite(M.energy_distance(samples, ref))
            if config["data"]["name"] == "8gaussians":  # modes covered / high-quality samples (unrolled GAN)
                cov = M.mode_coverage(samples, M.EIGHT_GAUSSIANS_CENTRES, std=M.EIGHT_GAUSSIANS_STD)
                out["modes"], out["high_quality"] = cov["modes"], round(cov["high_quality"], 4)
        else:
            out.update(w2=None, sliced_wasserstein=None, mmd=None, energy=None)
        if finite:
            from ..metrics.fidelity import precision_recall

            # precision and recall in data space (FD / KID on raw points would repeat W2 and MMD)
            out.update({k: _finite(v) for k, v in precision_recall(ref, samples).items()})
    else:
        out["mmd"] = _finite(M.mmd(samples.flatten(1), ref.flatten(1))) if finite else None
        if feature_net is not None and finite:
            out.update(_image_metrics(feature_net, samples, ref, data, config, seed, levels))
    if not finite:
        out["nonfinite_samples"] = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
    t2 = time.perf_counter()
    if nll is not False and recipe.has_likelihood:
        out.update(_nll(recipe, run_dir, config, data, x_test, kind, nll_n, seed, device))
    t3 = time.perf_counter()
    if recipe.eval_fn is not None:  # the family's own numbers (ELBO, codebook perplexity, ...)
        dev = _device(device)
        nets, _ = load(run_dir, device=dev)
        y_test = data.test_set(n)[1] if kind == "points" else data.test_set()[1]
        y_test = None if y_test is None else y_test[:n].to(dev)
        with torch.no_grad():
            extra = recipe.eval_fn(recipe, nets, x_test.to(dev), y_test, config["options"],
                                   torch.Generator(device=dev).manual_seed(seed))
        out.update({k: (_finite(v) if isinstance(v, (float, int, torch.Tensor)) and not isinstance(v, bool) else v)
                    for k, v in extra.items()})
        t3 = time.perf_counter()
    out["time_s"] = {"sample": info["sample_time_s"], "metrics": round(t2 - t1, 3), "nll": round(t3 - t2, 3),
                     "total": round(t3 - t0, 3)}
    if write:
        run_dir = Path(run_dir)
        write_samples(samples, run_dir / "samples", kind=kind, reference=ref if kind == "points" else None,
                      title=f"{recipe.name} on {config['data']['name']}, step {config['step']}, "
                            f"{info['sampler']} x {info['steps']}")
        text = json.dumps(out, indent=2, allow_nan=False) + "\n"
        ckpt.atomic_write_bytes(run_dir / METRICS_FILE, text.encode())
    return out


def _feature_net(features: Any, config: dict, kind: str) -> Any:
    """The feature network of the image metrics (see :func:`evaluate`), or None."""
    if features is None:
        if kind != "images":
            return None
        from ..metrics import features as F

        return F.for_data(config["data"]["name"])
    if kind != "images":
        raise ValueError(f"features applies to image runs; this run was trained on {config['data']['name']!r} "
                         f"({kind})")
    if not callable(features) and not hasattr(features, "features"):
        raise TypeError(f"features must be a module with a features(x) method or a callable, "
                        f"got {type(features).__name__}")
    return features


def _embed(net: Any, x: torch.Tensor) -> torch.Tensor:
    """Features ``(N, D)`` of ``[0, 1]`` images under ``net`` (its ``features`` method, else its call)."""
    fn = net.features if hasattr(net, "features") else net
    with torch.no_grad():
        f = fn(x)
    if not isinstance(f, torch.Tensor) or f.ndim < 2 or f.shape[0] != x.shape[0]:
        raise ValueError(f"the feature network must map {x.shape[0]} images to a ({x.shape[0]}, D) tensor, got "
                         f"{type(f).__name__ if not isinstance(f, torch.Tensor) else tuple(f.shape)}")
    return f.reshape(f.shape[0], -1).double().cpu()


def _quantise(u: torch.Tensor, levels: int | None) -> torch.Tensor:
    """``[0, 1]`` images quantised to ``levels`` evenly spaced values as the binary / discrete families see them."""
    if levels is None:
        return u
    from ..generative.d3pm import to_states

    return to_states(u * 2.0 - 1.0, levels).to(u.dtype) / (levels - 1)


def _image_metrics(net: Any, samples: torch.Tensor, ref: torch.Tensor, data: Any, config: dict,
                   seed: int, levels: int | None) -> dict[str, Any]:
    """FD, KID, precision / recall / density / coverage on features, the real-data floor and class accuracy."""
    from ..metrics.fidelity import fidelity_metrics, frechet_distance

    out: dict[str, Any] = {"features": getattr(net, "name", type(net).__name__)}
    dev = next((p.device for p in net.parameters()), torch.device("cpu")) if isinstance(net, torch.nn.Module) \
        else torch.device("cpu")
    f_real, f_fake = _embed(net, ref.to(dev)), _embed(net, samples.to(dev))
    out.update({k: _finite(v) for k, v in fidelity_metrics(f_real, f_fake).items()})  # warns itself when N <= D
    # The floor at this n: FD between as many real training images (a seeded draw) and the test images.
    if data.train_x is not None:
        idx = torch.randperm(data.train_x.shape[0], generator=torch.Generator().manual_seed(seed))[:ref.shape[0]]
        train = _quantise(data.train_x[idx].float(), levels)
        out["fd_real"] = _finite(frechet_distance(f_real, _embed(net, train.to(dev))))
    n, d = min(f_real.shape[0], f_fake.shape[0]), f_real.shape[1]
    if n <= d:  # recorded beside the numbers too (FrechetSampleWarning explains it when it is raised)
        out["fd_warning"] = (f"{n} samples for {d} feature dimensions: the covariances are rank-deficient and fd / "
                             "fd_real are biased upward; use n >= 10 x the dimensions or compare kid")
    out["feature_dim"] = int(f_real.shape[1])
    num_classes = config["options"]["build"].get("num_classes")
    if num_classes is not None and getattr(net, "num_classes", None) == num_classes:
        from ..metrics.features import class_accuracy

        labels = torch.arange(samples.shape[0]) % num_classes  # the labels Recipe.sample cycles through
        acc = class_accuracy(net, samples.to(dev), labels.to(dev))
        out["class_accuracy"] = _finite(acc["accuracy"])
        out["class_accuracy_per_label"] = {str(k): _finite(v) for k, v in acc["per_class"].items()}
    return out


def _nll(recipe, run_dir, config, data, x_test, kind, nll_n, seed, device) -> dict[str, Any]:
    """Test NLL in nats per example, in data units (the ``to_unit`` map is affine)."""
    from ..metrics import nll_summary

    device = _device(device)
    if nll_n is None:
        nll_n = x_test.shape[0] if (kind == "points" or recipe.image_nll_n is None) else recipe.image_nll_n
    else:
        nll_n = check_int("nll_n", nll_n, min=1)
    x = x_test[:nll_n].to(device)
    nets, _ = load(run_dir, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    d = x[0].numel()
    pmf = recipe.likelihood_kind(config["options"]) == "pmf"
    # Images: 8-bit quantised; a probability mass is evaluated on the levels, a density on uniformly
    # dequantised pixels, with the Jacobian of the affine map to data units (one helper for eval and --ood).
    from .ood import likelihood_inputs

    x, log_jac = likelihood_inputs(recipe, config["options"], x, generator=torch.Generator().manual_seed(seed),
                                   to_unit=data.to_unit if kind == "images" else None)
    lp = recipe.log_prob(nets, x, options=config["options"], generator=g).double().cpu() + log_jac  # (B,)
    if not bool(torch.isfinite(lp).all()):
        return {"nll": None, "nll_n": nll_n}
    summary = nll_summary(lp, num_dims=d, dequant_bins=256 if (kind == "images" and not pmf) else None)
    out = {"nll": _finite(summary["nll"]), "nll_se": _finite(summary["nll_se"]), "nll_n": nll_n,
           "nll_kind": "pmf" if pmf else "density"}
    if kind == "images":
        out["bpd"] = _finite(summary["bpd"])
    return out
