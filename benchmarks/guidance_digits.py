"""Classifier-free guidance on the 8x8 digits (and MNIST when ../shared/data/mnist.npz exists): accuracy vs quality.

One class-conditional flow-matching model per data set (a ResMLP on the flattened images, trained with label
dropout 0.15 so it is also an unconditional model), sampled with :func:`edifice.guidance.cfg` at guidance
scales 0, 1, 2, 3, 5 (the same initial noise at every scale, 20 Euler steps). For each scale:

* **conditional accuracy**: the fraction of samples drawn for label k that a classifier (an MLP trained on the
  train split, its test accuracy reported) assigns to k; chance is 10%;
* **pixel MMD²** (RBF mixture, bandwidths fixed from the test set's median pairwise distance) between all
  samples and the same number of test images; the floor is the MMD² of as many train images;
* **per-class diversity**: mean pairwise distance of the samples of one label divided by that of the test
  images of that label, averaged over labels (1 = as diverse as the data; guidance is expected to shrink it);
* the classifier's mean confidence in the requested label, and sampling time (one batched network call per
  step for ``scale ∉ {0, 1}``, one plain call for 0 and 1).

Run: ``python benchmarks/guidance_digits.py`` (``--quick``: digits only, a few steps; ``--steps`` overrides the
training steps; ``--no-mnist`` skips MNIST).
"""

from __future__ import annotations

import time
from typing import Any

import common
import torch
import torch.nn.functional as F

NAME = "guidance_digits"
SCALES = (0.0, 1.0, 2.0, 3.0, 5.0)


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"digits": dict(steps=60, batch=64, lr=2e-3, hidden=64, depth=1, per_class=10, sample_steps=5,
                               clf_steps=40, scales=(0.0, 1.0, 3.0))}
    return {
        "digits": dict(steps=3000, batch=128, lr=2e-3, hidden=256, depth=3, per_class=50, sample_steps=20,
                       clf_steps=300, scales=SCALES),
        "mnist": dict(steps=1200, batch=128, lr=1e-3, hidden=512, depth=3, per_class=50, sample_steps=20,
                      clf_steps=400, scales=SCALES),
    }


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1) * 2.0 - 1.0  # [0, 1] images -> [-1, 1] vectors


def _classifier(x: torch.Tensor, y: torch.Tensor, steps: int, g: torch.Generator) -> torch.nn.Module:
    from edifice.blocks import MLP

    clf = MLP(x.shape[1], 10, hidden=256, depth=1)
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=g, device=x.device)
        noisy = x[idx] + 0.05 * torch.randn(x[idx].shape, generator=g, device=x.device)
        loss = F.cross_entropy(clf(noisy), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval()


def _mean_pdist(x: torch.Tensor) -> float:
    n = x.shape[0]
    d = torch.cdist(x.double(), x.double())
    return float(d.sum() / (n * (n - 1)))


def run(name: str, t: dict[str, Any], device: torch.device, seed: int = 0) -> list[dict[str, Any]]:
    """Train the classifier and the conditional model on ``name``; return one row per guidance scale."""
    from edifice import guidance
    from edifice.data import load
    from edifice.generative import flow_matching as fm
    from edifice.metrics import mmd

    torch.manual_seed(seed)
    g = torch.Generator(device=device).manual_seed(seed)
    src = load(name)
    xtr, ytr = _flat(src.train_x).to(device), src.train_y.to(device)
    xte, yte = _flat(src.test_x).to(device), src.test_y.to(device)
    dim = xtr.shape[1]

    clf = _classifier(xtr, ytr, t["clf_steps"], g).to(device)
    with torch.no_grad():
        clf_acc = float((clf(xte).argmax(1) == yte).float().mean())

    net = fm.build(data_shape=(dim,), num_classes=10, hidden=t["hidden"], depth=t["depth"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=t["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t["lr"], total_steps=t["steps"], pct_start=0.1)
    common.sync(device)
    start = time.perf_counter()
    for _ in range(t["steps"]):
        idx = torch.randint(0, xtr.shape[0], (t["batch"],), generator=g, device=device)
        y = guidance.label_dropout(ytr[idx], 0.15, num_classes=10, generator=g)
        loss, _ = fm.loss(net, xtr[idx], cond={"y": y}, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    common.sync(device)
    train_s = time.perf_counter() - start

    k = t["per_class"]
    labels = torch.arange(10, device=device).repeat_interleave(k)  # (10 k,)
    n = labels.shape[0]
    ref = xte[:n] if xte.shape[0] >= n else xte
    with torch.no_grad():
        d_ref = torch.cdist(xte[:1000].double(), xte[:1000].double())
        med = float(d_ref[d_ref > 0].median())
    bandwidths = [0.5 * med, med, 2.0 * med]
    floor = float(mmd(xtr[:ref.shape[0]].double(), ref.double(), bandwidths=bandwidths))
    data_div = {c: _mean_pdist(xte[yte == c]) for c in range(10)}
    noise = torch.randn(n, dim, generator=g, device=device)

    rows = []
    for scale in t["scales"]:
        guided = guidance.cfg(net, scale)
        common.sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            x = fm.sample(guided, (n, dim), steps=t["sample_steps"], noise=noise, cond={"y": labels})
        common.sync(device)
        sample_s = time.perf_counter() - t0
        x = x.clamp(-1.0, 1.0)
        with torch.no_grad():
            prob = clf(x).softmax(1)
        acc = float((prob.argmax(1) == labels).float().mean())
        conf = float(prob.gather(1, labels[:, None]).mean())
        div = sum(_mean_pdist(x[labels == c]) / data_div[c] for c in range(10)) / 10
        rows.append(dict(data=name, scale=scale, accuracy=acc, confidence=conf,
                         mmd=float(mmd(x.double(), ref.double(), bandwidths=bandwidths)), mmd_floor=floor,
                         diversity=div, classifier_test_accuracy=clf_acc, sample_s=sample_s, train_s=train_s,
                         train_steps_per_s=t["steps"] / train_s, samples=n))
        print(f"{name:7s} scale {scale:3.1f}: accuracy {acc:.3f} (classifier {clf_acc:.3f}) mmd {rows[-1]['mmd']:.4f} "
              f"(floor {floor:.4f}) diversity {div:.3f}; sampling {sample_s:.2f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default: per data set)")
    p.add_argument("--no-mnist", action="store_true", help="skip MNIST even when it is present")
    args = p.parse_args(argv)
    device = common.setup(args)
    settings = _settings(args.quick)
    notes = common.data_sets(settings, no_mnist=args.no_mnist, override=("steps", args.steps))

    start = time.perf_counter()
    rows = []
    for name, t in settings.items():
        rows += run(name, t, device)

    headers = ["data", "scale", "cond. accuracy", "confidence", "pixel MMD²", "MMD² floor", "diversity",
               "sampling (s)"]
    table_rows = [[r["data"], f"{r['scale']:g}", f"{r['accuracy']:.3f}", f"{r['confidence']:.3f}",
                   common.fmt(r["mmd"], 3), common.fmt(r["mmd_floor"], 2), f"{r['diversity']:.3f}",
                   f"{r['sample_s']:.2f}"] for r in rows]
    table = common.markdown_table(headers, table_rows)
    for name, t in settings.items():
        r0 = next(r for r in rows if r["data"] == name)
        notes.append(
            f"{name}: flow matching, ResMLP (hidden {t['hidden']}, depth {t['depth']}) on flattened pixels in "
            f"[-1, 1], {t['steps']} Adam steps (one-cycle lr {t['lr']}), batch {t['batch']}, label dropout 0.15, "
            f"{r0['train_steps_per_s']:.1f} steps/s; {t['per_class']} samples per label, {t['sample_steps']} Euler "
            f"steps, the same noise at every scale; classifier (MLP 256) test accuracy "
            f"{r0['classifier_test_accuracy']:.3f}.")
    notes += [
        "scale 0 = the unconditional model (its accuracy is chance, 10%), 1 = the conditional model; larger "
        "scales trade diversity (per-class mean pairwise distance / the test set's) for classifier accuracy.",
        "pixel MMD² against as many test images, bandwidths (0.5, 1, 2) x the test set's median distance; the "
        "floor is the MMD² of as many train images.",
        f"total time {time.perf_counter() - start:.0f} s.",
    ]
    payload = {"machine": common.machine_info(device), "settings": settings, "rows": rows}
    common.report(NAME, "Classifier-free guidance: conditional accuracy and sample quality vs scale", table,
                  payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
