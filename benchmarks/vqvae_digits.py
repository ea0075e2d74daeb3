"""VQ-VAE on the 8x8 digits (and MNIST when ../shared/data/mnist.npz exists): EMA codebook and dead-code restarts.

Four quantiser variants with the same networks, data and budget:

* ``ema + restart`` — the library default (EMA codebook, van den Oord et al. 2017 App. A.1; Jukebox-style
  random restarts of codes whose usage falls below ``dead_threshold``);
* ``ema`` — EMA codebook, no restarts (``dead_threshold=0``);
* ``loss + restart`` — codebook trained by the codebook loss ``‖sg[z_e] - e‖²``, with restarts;
* ``loss`` — the paper's plain VQ-VAE (codebook loss, no restarts).

Each is trained with its own short loop (Adam, cosine learning rate, ``beta = 0.25``, the prior trained
jointly on the detached codes, ``prior_weight = 1``) and evaluated on held-out images: reconstruction MSE in
model space ``[-1, 1]`` (beside the data's mean per-pixel variance, the MSE of predicting the mean image),
codebook perplexity (``exp`` of the code entropy) and usage (fraction of codes used at least once), the
prior's NLL in nats per code (beside ``log K``, a uniform prior) and training steps per second.

Run: ``python benchmarks/vqvae_digits.py`` (``--quick``: digits only, a few steps; ``--steps`` overrides the
step count of every run; ``--no-mnist`` skips MNIST).
"""

from __future__ import annotations

import math
import time
from typing import Any

import common
import torch
import torch.nn.functional as F

NAME = "vqvae_digits"
VARIANTS = {
    "ema + restart": dict(ema=True, dead_threshold=1.0),
    "ema": dict(ema=True, dead_threshold=0.0),
    "loss + restart": dict(ema=False, dead_threshold=1.0),
    "loss": dict(ema=False, dead_threshold=0.0),
}


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"digits": dict(steps=15, batch=32, lr=2e-3, n_test=297,
                               net=dict(codebook_size=16, code_dim=8, channels=(16,), res_blocks=0,
                                        prior_hidden=16, prior_layers=2))}
    return {
        "digits": dict(steps=500, batch=64, lr=2e-3, n_test=297,
                       net=dict(codebook_size=64, code_dim=16, channels=(32,), res_blocks=1, prior_hidden=32,
                                prior_layers=2)),
        "mnist": dict(steps=300, batch=32, lr=2e-3, n_test=2000,
                      net=dict(codebook_size=64, code_dim=16, channels=(16, 32), res_blocks=1, prior_hidden=32,
                               prior_layers=3)),
    }


def run(data: Any, t: dict[str, Any], variant: dict[str, Any], device: torch.device, seed: int = 0) -> dict[str, Any]:
    """Train one VQ-VAE with budget ``t`` and quantiser ``variant``; return its test metrics."""
    from edifice.generative import vqvae

    torch.manual_seed(seed)
    nets = vqvae.build(data_shape=data.data_shape, **t["net"], **variant)
    nets = vqvae.VQVAENets(*[m.to(device) for m in nets])
    params = [p for m in nets for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=t["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, t["steps"])
    g = torch.Generator().manual_seed(seed)
    for m in nets:
        m.train()
    restarted = 0.0
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(t["steps"]):
        x, _ = data.train_batch(t["batch"], generator=g)
        loss, logs = vqvae.loss(nets, x.to(device), generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        restarted += float(logs["restarted"])
    common.sync(device)
    seconds = time.perf_counter() - t0
    for m in nets:
        m.eval()
    xt = data.test_set(t["n_test"])[0].to(device)
    with torch.no_grad():
        rec = torch.cat([vqvae.reconstruct(nets, c) for c in xt.split(500)])
        usage = vqvae.codebook_usage(nets, xt)
        codes = torch.cat([vqvae.encode(nets, c) for c in xt.split(500)])
        lp = torch.cat([vqvae.prior_log_prob(nets, c) for c in codes.split(500)])
    k = nets.quantizer.codebook_size
    return {
        "recon_mse": float(F.mse_loss(rec, xt)),
        "perplexity": float(usage["perplexity"]),
        "usage": float(usage["usage"]),
        "prior_nll": float(-lp.double().mean() / codes[0].numel()),
        "log_k": math.log(k),
        "restarted_total": restarted,
        "final_train_loss": float(loss.detach()),
        "steps": t["steps"],
        "seconds": seconds,
        "steps_per_s": t["steps"] / seconds,
        "map": list(codes.shape[1:]),
        "data_variance": float(xt.var(0).mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default: per data set)")
    p.add_argument("--no-mnist", action="store_true", help="skip MNIST even when it is present")
    args = p.parse_args(argv)
    device = common.setup(args)
    from edifice.data import load

    settings = _settings(args.quick)
    notes = common.data_sets(settings, no_mnist=args.no_mnist, override=("steps", args.steps))

    start = time.perf_counter()
    rows = []
    for name, t in settings.items():
        data = load(name)
        for label, variant in VARIANTS.items():
            r = run(data, t, variant, device)
            rows.append({"data": name, "variant": label, **variant, **r})
            print(f"{name:7s} {label:15s} mse {r['recon_mse']:.4f} perplexity {r['perplexity']:.1f} usage "
                  f"{r['usage']:.2f} prior {r['prior_nll']:.3f} / log K {r['log_k']:.3f}; "
                  f"{r['steps_per_s']:.1f} steps/s", flush=True)

    headers = ["data", "quantiser", "recon MSE", "data variance", "perplexity", "usage", "prior NLL (nats/code)",
               "log K", "codes restarted", "train steps/s"]
    table_rows = [[r["data"], r["variant"], common.fmt(r["recon_mse"], 3), common.fmt(r["data_variance"], 3),
                   f"{r['perplexity']:.1f}", f"{r['usage']:.2f}", f"{r['prior_nll']:.3f}", f"{r['log_k']:.3f}",
                   f"{r['restarted_total']:.0f}", f"{r['steps_per_s']:.1f}"] for r in rows]
    table = common.markdown_table(headers, table_rows)
    for name, t in settings.items():
        n = t["net"]
        notes.append(
            f"{name}: {t['steps']} Adam steps, batch {t['batch']}, cosine lr {t['lr']}, seed 0; encoder channels "
            f"{n['channels']} + {n['res_blocks']} residual block(s) -> a "
            f"{'x'.join(map(str, next(r['map'] for r in rows if r['data'] == name)))} map of K = "
            f"{n['codebook_size']} codes of size {n['code_dim']}; gated PixelCNN prior (hidden {n['prior_hidden']}, "
            f"{n['prior_layers']} layers) trained jointly; test set: {t['n_test']} held-out images.")
    notes += [
        "recon MSE in model space [-1, 1]; 'data variance' = mean per-pixel variance of the test images (the MSE "
        "of always predicting the mean image). perplexity = exp(entropy of the test codes' histogram), usage = "
        "fraction of the K codes used on the test set; prior NLL per code vs log K (a uniform prior).",
        "restart: a code whose usage (moving average, rate 0.99, of vectors assigned per batch) is below 1 is "
        "reset to a random encoder output of the batch; every code starts at usage 0, so the first step "
        "initialises the whole codebook from the data — the 'codes restarted' column counts those K too.",
        f"total time {time.perf_counter() - start:.0f} s.",
    ]
    payload = {"machine": common.machine_info(device), "settings": settings, "rows": rows}
    common.report(NAME, "VQ-VAE: EMA codebook and dead-code restarts", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
