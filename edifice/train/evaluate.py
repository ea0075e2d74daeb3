"""Sampling from and evaluating a trained run folder (what ``edifice sample`` / ``edifice eval`` do).

Samples are returned and saved in data units: 2-D points as they are, images as floats in
``[0, 1]`` of shape ``(N, C, H, W)``. :func:`evaluate` compares fresh samples with the held-out
test set — exact W2, sliced W2, MMD and energy distance for points, pixel MMD for images — and,
for families with a likelihood, the test NLL in nats (and bits/dim for images), then writes
``metrics.json`` (plus ``samples.png`` / ``samples.npy``) into the run folder.
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
    return data_mod.load(saved["name"], data_dir=data_dir if data_dir is not None else saved.get("data_dir"))


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
    nll: bool = True,
    nll_n: int | None = None,
    device: str | torch.device | None = None,
    data_dir: str | os.PathLike | None = None,
    write: bool = True,
    guidance_scale: float | None = None,
) -> dict[str, Any]:
    """Sample from a run and compare with held-out data; write ``metrics.json`` and the samples.

    Args:
        run_dir: a run folder with a checkpoint.
        n: number of samples (default 2000 for points, 256 for images; capped by the test set size).
        sampler, steps: sampler and its steps (defaults of the family's recipe).
        seed: seeds the sampler (and the Hutchinson probes).
        nll: also compute the test NLL for families with a likelihood.
        nll_n: test points for the NLL (default all ``n`` for points; for images the recipe's
            ``image_nll_n``: 64 for the ODE likelihoods, all ``n`` for the VAE, whose importance-sampled
            NLL is then on the same images as its ELBO).
        device: where to run (default: CUDA when available, else CPU).
        data_dir: override where image data is looked up.
        write: write ``metrics.json``, ``samples.png`` and ``samples.npy`` into ``run_dir``.
        guidance_scale: classifier-free guidance scale for a class-conditional model (None: none).

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
    n = (2000 if kind == "points" else 256) if n is None else check_int("n", n, min=2)
    data = load_data(config, data_dir)
    x_test, _ = data.test_set(n) if kind == "points" else data.test_set()
    x_test = x_test[:n]
    n = x_test.shape[0]
    samples, info = sample_run(run_dir, n, sampler=sampler, steps=steps, seed=seed, device=device, data=data,
                               guidance_scale=guidance_scale)
    ref = data.to_unit(x_test).float().cpu()
    out: dict[str, Any] = {"family": recipe.name, "data": config["data"]["name"], "step": config["step"],
                           "sampler": info["sampler"], "steps": info["steps"], "n": n, "seed": seed}
    if guidance_scale is not None:
        out["guidance_scale"] = guidance_scale
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
    else:
        out["mmd"] = _finite(M.mmd(samples.flatten(1), ref.flatten(1))) if finite else None
    if not finite:
        out["nonfinite_samples"] = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
    t2 = time.perf_counter()
    if nll and recipe.has_likelihood:
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
    # The map u = to_unit(x) is affine: u = offset + slope * x ([0, 1] pixels for images, identity for points).
    probe = torch.tensor([0.0, 0.5], dtype=torch.float64)
    offset = float(data.to_unit(probe[:1])[0]) if kind == "images" else 0.0
    slope = float((data.to_unit(probe[1:]) - data.to_unit(probe[:1]))[0] / 0.5) if kind == "images" else 1.0
    pmf = recipe.likelihood_kind(config["options"]) == "pmf"
    if kind == "images":
        k = (data.to_unit(x.double().cpu()) * 255).round()
        if pmf:  # a probability mass over the 256 pixel levels: evaluated on the 8-bit pixels themselves
            x = ((k / 255 - offset) / slope).to(device=device, dtype=x.dtype)
        else:  # uniform dequantisation of 8-bit pixels (Theis et al. 2016): k/255 -> (k + u)/256, u ~ U(0, 1)
            u = torch.rand(k.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            x = (((k + u) / 256 - offset) / slope).to(device=device, dtype=x.dtype)
    lp = recipe.log_prob(nets, x, options=config["options"], generator=g).double().cpu()  # (B,) model space
    if not pmf:
        # log p_unit(u) = log p_model(x) - D log|du/dx| for the affine map u = to_unit(x).
        lp = lp - d * math.log(abs(slope))
    if not bool(torch.isfinite(lp).all()):
        return {"nll": None, "nll_n": nll_n}
    summary = nll_summary(lp, num_dims=d, dequant_bins=256 if (kind == "images" and not pmf) else None)
    out = {"nll": _finite(summary["nll"]), "nll_se": _finite(summary["nll_se"]), "nll_n": nll_n,
           "nll_kind": "pmf" if pmf else "density"}
    if kind == "images":
        out["bpd"] = _finite(summary["bpd"])
    return out
