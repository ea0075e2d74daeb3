"""Latent against pixel diffusion at the same wall-clock training budget (digits, and MNIST when present).

Two models per data set, each trained for the same number of wall-clock seconds (``--budget``):

* ``pixel`` — a DDPM (ε-prediction, linear schedule, T = 1000) with a U-Net on the images
  (:func:`edifice.generative.ddpm.build`);
* ``latent`` — :mod:`edifice.generative.latent_diffusion`: a KL-regularised autoencoder (``kl_weight=1e-6``)
  trained for the first ``ae_fraction`` of the budget, the latent scale estimated on a fixed batch, then a
  latent DDPM with the same schedule for the rest of the budget.

Both are sampled with the same DDIM sampler (η = 0, 50 steps) and compared with the held-out set by

* the pixel MMD² (Gaussian kernels, median heuristic, :func:`edifice.metrics.mmd`);
* a classifier-feature Fréchet distance and MMD²: the penultimate layer (64 features) of an MLP classifier
  trained on the training split inside the benchmark (its test accuracy is reported);
* training steps per second (the latent model's two phases separately) and sampling time per image.

The "real" row compares training images with the test set: the best any model can score at that sample size.

Run: ``python benchmarks/latent_vs_pixel.py`` (``--quick``: digits only, seconds of training; ``--budget``
overrides the seconds per model; ``--no-mnist`` skips MNIST).
"""

from __future__ import annotations

import time
from typing import Any

import common
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NAME = "latent_vs_pixel"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"digits": dict(budget=1.5, batch=64, lr=2e-3, ae_fraction=0.4, n_samples=64, sample_steps=10,
                               clf_steps=40, pixel=dict(base_channels=16, channel_mults=(1, 2)),
                               latent=dict(ae_channels=(16, 32), ae_res_blocks=0, denoiser_hidden=64,
                                           denoiser_depth=2))}
    return {
        "digits": dict(budget=45.0, batch=64, lr=2e-3, ae_fraction=0.4, n_samples=297, sample_steps=50,
                       clf_steps=600, pixel=dict(base_channels=32, channel_mults=(1, 2)),
                       latent=dict(ae_channels=(32, 64), ae_res_blocks=1, denoiser_hidden=128, denoiser_depth=3)),
        "mnist": dict(budget=40.0, batch=32, lr=2e-3, ae_fraction=0.4, n_samples=200, sample_steps=20,
                      clf_steps=600, pixel=dict(base_channels=32, channel_mults=(1, 2)),
                      latent=dict(ae_channels=(32, 64), ae_res_blocks=1, base_channels=32)),
    }


# ------------------------------------------------------------------------------------------ feature metrics


class _Classifier(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(d, 256), nn.SiLU(), nn.Linear(256, 64), nn.SiLU())
        self.head = nn.Linear(64, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _train_classifier(data: Any, steps: int, device: torch.device) -> tuple[_Classifier, float]:
    torch.manual_seed(0)
    clf = _Classifier(int(np.prod(data.data_shape)), data.num_classes).to(device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = data.train_batch(128, generator=g)
        loss = F.cross_entropy(clf(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    xt, yt = data.test_set()
    with torch.no_grad():
        acc = float((clf(xt.to(device)).argmax(1).cpu() == yt).float().mean())
    return clf.eval(), acc


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2.0 * covmean.real))


def _metrics(x: torch.Tensor, ref: torch.Tensor, clf: _Classifier) -> dict[str, float]:
    from edifice.metrics import mmd

    with torch.no_grad():
        fa, fb = clf.features(x), clf.features(ref)
    return {"pixel_mmd": float(mmd(x.flatten(1).cpu(), ref.flatten(1).cpu())),
            "feature_fd": _frechet(fa.double().cpu().numpy(), fb.double().cpu().numpy()),
            "feature_mmd": float(mmd(fa.cpu(), fb.cpu()))}


# ------------------------------------------------------------------------------------------ models


def _train_for(seconds: float, step: Any, device: torch.device) -> tuple[int, float]:
    """Call ``step()`` until ``seconds`` of wall-clock time have passed; return (steps, seconds)."""
    n = 0
    common.sync(device)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    common.sync(device)
    return n, time.perf_counter() - t0


def _timed_sample(fn: Any, n: int, device: torch.device) -> tuple[torch.Tensor, float]:
    common.sync(device)
    t0 = time.perf_counter()
    x = fn()
    common.sync(device)
    return x, (time.perf_counter() - t0) / n


def run_pixel(data: Any, t: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from edifice.generative import ddim, ddpm

    torch.manual_seed(0)
    net = ddpm.build(data_shape=data.data_shape, **t["pixel"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=t["lr"])
    g = torch.Generator().manual_seed(0)

    def step():
        x, _ = data.train_batch(t["batch"], generator=g)
        loss, _ = ddpm.loss(net, x.to(device), generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    steps, seconds = _train_for(t["budget"], step, device)
    net.eval()
    n = t["n_samples"]
    with torch.no_grad():
        x, per = _timed_sample(lambda: ddim.sample(net, (n, *data.data_shape), steps=t["sample_steps"],
                                                   generator=torch.Generator().manual_seed(5), device=device),
                               n, device)
    return {"x": x, "steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "sample_s_per_image": per,
            "params": sum(p.numel() for p in net.parameters())}


def run_latent(data: Any, t: dict[str, Any], device: torch.device) -> dict[str, Any]:
    from edifice.generative import latent_diffusion as ldm

    torch.manual_seed(0)
    nets = ldm.build(data_shape=data.data_shape, **t["latent"])
    nets = ldm.LatentDiffusionNets(*[m.to(device) for m in nets])
    g = torch.Generator().manual_seed(0)
    ae_opt = torch.optim.Adam([*nets.encoder.parameters(), *nets.decoder.parameters()], lr=t["lr"])

    def ae_step():
        x, _ = data.train_batch(t["batch"], generator=g)
        loss, _ = ldm.autoencoder_loss(nets, x.to(device), generator=g)
        ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        ae_opt.step()

    ae_steps, ae_seconds = _train_for(t["budget"] * t["ae_fraction"], ae_step, device)
    fixed, _ = data.train_batch(512, generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    scale = ldm.estimate_latent_scale(nets, fixed.to(device))
    scale_seconds = time.perf_counter() - t0
    opt = torch.optim.Adam(nets.denoiser.parameters(), lr=t["lr"])

    def den_step():
        x, _ = data.train_batch(t["batch"], generator=g)
        loss, _ = ldm.denoiser_loss(nets, x.to(device), generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    den_steps, den_seconds = _train_for(t["budget"] - ae_seconds - scale_seconds, den_step, device)
    for m in nets:
        m.eval()
    n = t["n_samples"]
    xt = data.test_set(n)[0].to(device)
    with torch.no_grad():
        recon = float(F.mse_loss(ldm.decode(nets, ldm.encode(nets, xt)), xt))
        x, per = _timed_sample(lambda: ldm.sample(nets, (n, *data.data_shape), steps=t["sample_steps"],
                                                  sampler="ddim", generator=torch.Generator().manual_seed(5),
                                                  device=device), n, device)
    return {"x": x, "steps": den_steps, "seconds": ae_seconds + scale_seconds + den_seconds,
            "ae_steps": ae_steps, "ae_steps_per_s": ae_steps / ae_seconds, "steps_per_s": den_steps / den_seconds,
            "sample_s_per_image": per, "recon_mse": recon, "latent_scale": scale,
            "latent_shape": list(ldm.latent_shape(nets)), "backbone": nets.denoiser.kind,
            "params": sum(p.numel() for m in nets for p in m.parameters()),
            "denoiser_params": sum(p.numel() for p in nets.denoiser.parameters())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=None, help="training seconds per model (default: per data set)")
    p.add_argument("--no-mnist", action="store_true", help="skip MNIST even when it is present")
    args = p.parse_args(argv)
    device = common.setup(args)
    from edifice.data import load

    settings = _settings(args.quick)
    notes = common.data_sets(settings, no_mnist=args.no_mnist, override=("budget", args.budget))

    start = time.perf_counter()
    rows = []
    for name, t in settings.items():
        data = load(name)
        clf, acc = _train_classifier(data, t["clf_steps"], device)
        ref = data.test_set(t["n_samples"])[0].to(device)
        real = data.train_batch(t["n_samples"], generator=torch.Generator().manual_seed(7))[0].to(device)
        rows.append({"data": name, "model": "real (train images)", **_metrics(real, ref, clf),
                     "classifier_accuracy": acc})
        for label, fn in (("pixel", run_pixel), ("latent", run_latent)):
            r = fn(data, t, device)
            x = r.pop("x")
            row = {"data": name, "model": label, **_metrics(x, ref, clf), **r, "classifier_accuracy": acc}
            rows.append(row)
            print(f"{name:7s} {label:7s} pixel MMD {row['pixel_mmd']:.4f} feature FD {row['feature_fd']:.2f} "
                  f"{row['steps_per_s']:.1f} steps/s, {1e3 * row['sample_s_per_image']:.2f} ms/image", flush=True)

    headers = ["data", "model", "pixel MMD²", "feature FD", "feature MMD²", "train steps/s", "steps in budget",
               "sample ms/image", "recon MSE", "params"]

    def cell(r, key, digits=3, scale=1.0):
        return common.fmt(r[key] * scale, digits) if key in r else "-"

    table_rows = []
    for r in rows:
        steps_s = cell(r, "steps_per_s")
        steps = str(r.get("steps", "-"))
        if r["model"] == "latent":
            steps_s = f"AE {r['ae_steps_per_s']:.1f} / denoiser {r['steps_per_s']:.1f}"
            steps = f"{r['ae_steps']} + {r['steps']}"
        table_rows.append([r["data"], r["model"], cell(r, "pixel_mmd"), cell(r, "feature_fd"), cell(r, "feature_mmd"),
                           steps_s, steps, cell(r, "sample_s_per_image", scale=1e3), cell(r, "recon_mse"),
                           str(r.get("params", "-"))])
    table = common.markdown_table(headers, table_rows)
    for name, t in settings.items():
        lat = next(r for r in rows if r["data"] == name and r["model"] == "latent")
        acc = next(r for r in rows if r["data"] == name)["classifier_accuracy"]
        notes.append(
            f"{name}: {t['budget']:.0f} s of training per model (Adam lr {t['lr']}, batch {t['batch']}, seed 0); "
            f"pixel U-Net {t['pixel']}; latent: autoencoder {t['latent'].get('ae_channels')} for "
            f"{100 * t['ae_fraction']:.0f}% of the budget -> {'x'.join(map(str, lat['latent_shape']))} latents "
            f"(scale {lat['latent_scale']:.3f}), {lat['backbone']} denoiser; {t['n_samples']} samples by DDIM "
            f"({t['sample_steps']} steps) vs {t['n_samples']} test images; feature classifier test accuracy "
            f"{acc:.3f}.")
    notes += [
        "pixel MMD² on flattened images in [-1, 1]; feature FD / MMD² on the 64 penultimate features of the MLP "
        "classifier. 'real' = training images vs the test images (the floor at this sample size). recon MSE = "
        "the autoencoder's held-out reconstruction error, a floor on the latent model's sample quality.",
        "Both models share the wall-clock budget, so the latent model's faster steps buy more updates; its "
        "sample time includes the decoder.",
        f"total time {time.perf_counter() - start:.0f} s.",
    ]
    payload = {"machine": common.machine_info(device), "settings": settings, "rows": rows}
    common.report(NAME, "Latent vs pixel diffusion at the same training budget", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
