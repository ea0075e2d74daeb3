"""Discrete, autoregressive and energy-based models: likelihoods, sample quality and sampling cost.

Every model is trained through :func:`edifice.train.fit` with its recipe and read back with
:func:`edifice.train.load`, exactly as ``edifice train`` / ``edifice eval`` do (unconditional models:
``conditional=false``; AdamW with a cosine schedule, EMA 0.999, weights of the EMA). Four parts, one table each:

* **(a) bits per dimension on binarised MNIST** (``x > 0.5``, 28x28; from ``../shared/data/mnist.npz`` via
  ``edifice.data.load("mnist", data_dir=...)``; when it is absent the part falls back to the 8x8 digits,
  binarised the same way, and says so): the plain PixelCNN (mask-A 7x7 then mask-B 3x3 residual blocks; the
  gated stack costs about 3x more per step on a CPU) and MADE beside it at the same steps and batch. Exact
  test NLL (nats per image) and bits per binary pixel on the first ``nll_images`` test images, beside the
  independent-pixel model (pixel marginals of the training set).
* **(b) energy-based models and RBMs**: an EBM (SGLD with a replay buffer, Du & Mordatch 2019) on
  "8gaussians": modes covered and the high-quality fraction (:func:`edifice.metrics.mode_coverage`: within 3
  std of a centre; a mode is covered when it holds >= 1% of the high-quality samples) and exact W2 to
  held-out points, sampled from the replay buffer (the recipe's default) and from fresh uniform noise; RBMs
  trained with PCD-1 on binarised digits: the exact test NLL (``log Z`` by enumerating ``2^H`` hidden states;
  only for ``H <= 20``), the pseudo-NLL (Besag), and sample quality (below); an image EBM on the same digits
  (samples binarised at 0).
* **(c) D3PM against PixelCNN on binarised 8x8 digits at the same budget** (steps, batch, learning rate): the
  gated PixelCNN's exact NLL beside the absorbing-state D3PM's variational bound (``T`` terms, one draw of
  ``x_t`` per term), sample quality, training and sampling wall time. Sample quality on digits, for every
  digits model: the mean Hamming distance (pixels of 64) from each sample to its nearest held-out digit, and
  the unbiased MMD² (Gaussian kernels on the 0/1 vectors, bandwidths 0.5 / 1 / 2 times the median pairwise
  distance of the held-out digits) to the held-out digits; ``(training images)`` is the floor (real digits
  against the held-out ones; NN Hamming rewards copying training images, MMD also sees diversity).
* **(d) sampling time against sequence length**: PixelCNN (gated), the causal transformer and MADE draw one
  pixel per network call (``H W`` calls), D3PM makes ``T`` calls whatever the size. Networks with random
  weights (timing only), ``H = W`` in the sizes listed; network calls counted by hooks, never assumed;
  milliseconds per sample for a batch of ``timing_batch``, median of interleaved repeats.

Run: ``python benchmarks/discrete_models.py`` (default ``--threads 1``; about 10-15 min on one busy core;
``--quick``: tiny nets, a few steps, seconds, numbers mean nothing; ``--parts a,c`` runs some parts only;
``--no-mnist`` forces the digits fallback of part (a); ``--data-dir`` where mnist.npz is looked up).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

from edifice.data import DataSource, load as load_data, toy2d
from edifice.metrics import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD, mmd, mode_coverage, w2
from edifice.train import fit, get_recipe, load

NAME = "discrete_models"
PARTS = ("a", "b", "c", "d")
LN2 = math.log(2.0)


def _settings(args: Any) -> dict[str, Any]:
    if args.quick:
        s = dict(
            a=dict(steps=8, batch=16, lr=2e-3, nll_images=64, made_long_steps=30,
                   pixelcnn={"arch": "pixelcnn", "hidden": 8, "layers": 2}, made={"hidden": 32, "depth": 1}),
            ebm2d=dict(steps=15, batch=64, lr=2e-3, n=200, options={"hidden": 16, "depth": 1, "buffer_size": 200}),
            rbm=dict(steps=20, batch=50, lr=1e-2, hidden=[8, 24], options={"chains": 50}),
            ebm_img=dict(steps=3, batch=16, lr=1e-3, sample_steps=5,
                         options={"base_channels": 4, "hidden": 8, "buffer_size": 64, "sgld_steps": 2}),
            c=dict(steps=8, batch=16, lr=2e-3, pixelcnn={"hidden": 8, "layers": 2},
                   d3pm={"base_channels": 8, "T": 8}),
            n_samples=40,
            d=dict(sizes=[4, 8], T=[4, 8], batch=2, repeats=2,
                   pixelcnn={"hidden": 8, "layers": 2}, transformer={"hidden": 8, "layers": 1, "heads": 2},
                   made={"hidden": 16, "depth": 1}, d3pm={"base_channels": 8}),
        )
    else:
        s = dict(
            a=dict(steps=1500, batch=32, lr=2e-3, nll_images=2000, made_long_steps=15000,
                   pixelcnn={"arch": "pixelcnn", "hidden": 32, "layers": 5}, made={"hidden": 512, "depth": 1}),
            ebm2d=dict(steps=1000, batch=128, lr=2e-3, n=2000, options={}),
            rbm=dict(steps=3000, batch=100, lr=1e-2, hidden=[16, 64], options={"chains": 100}),
            ebm_img=dict(steps=400, batch=64, lr=1e-3, sample_steps=100, options={"base_channels": 16}),
            c=dict(steps=1000, batch=64, lr=2e-3, pixelcnn={"hidden": 32, "layers": 4},
                   d3pm={"base_channels": 16, "T": 100}),
            n_samples=297,
            d=dict(sizes=[4, 8, 16], T=[10, 100], batch=16, repeats=3,
                   pixelcnn={"hidden": 32, "layers": 4}, transformer={"hidden": 32, "layers": 2, "heads": 4},
                   made={"hidden": 256, "depth": 1}, d3pm={"base_channels": 16}),
        )
    if args.steps is not None:
        for key in ("a", "ebm2d", "rbm", "ebm_img", "c"):
            s[key]["steps"] = args.steps
        s["a"]["made_long_steps"] = args.steps
    return s


# --------------------------------------------------------------------------------------------- helpers


def _params(nets: Any) -> int:
    mods = nets if isinstance(nets, tuple) else (nets,)
    return sum(p.numel() for m in mods for p in m.parameters())


def _train(root: Path, tag: str, family: str, data: Any, t: dict[str, Any], options: dict[str, Any],
           data_dir: str | None = None) -> dict[str, Any]:
    """Train through the recipe; return the run folder, wall seconds, networks and config (EMA weights)."""
    out = root / tag
    t0 = time.perf_counter()
    fit(family, data, steps=t["steps"], batch_size=t["batch"], lr=t["lr"], out=out, options=options,
        progress=False, plots=False, seed=0, data_dir=data_dir, device="cpu")
    seconds = time.perf_counter() - t0
    nets, config = load(out)
    return {"run": out, "seconds": seconds, "nets": nets, "config": config, "recipe": get_recipe(family),
            "params": _params(nets)}


@torch.no_grad()
def _nll(m: dict[str, Any], x: torch.Tensor, chunk: int = 250) -> float:
    """Mean exact test NLL (nats per image) through the recipe's ``log_prob``."""
    opts = m["config"]["options"]
    lps = [m["recipe"].log_prob(m["nets"], x[i:i + chunk], options=opts) for i in range(0, x.shape[0], chunk)]
    return float(-torch.cat(lps).double().mean())


def _sample(m: dict[str, Any], n: int, seed: int = 1000, options: dict | None = None,
            steps: int | None = None) -> tuple[torch.Tensor, float]:
    opts = m["config"]["options"] if options is None else options
    t0 = time.perf_counter()
    with torch.no_grad():
        x = m["recipe"].sample(m["nets"], n, options=opts, steps=steps, generator=torch.Generator().manual_seed(seed))
    return x, time.perf_counter() - t0


def _bits(x: torch.Tensor) -> torch.Tensor:
    return (x > 0).flatten(1).double()


class DigitsQuality:
    """NN Hamming distance and MMD² of binarised samples against the held-out binarised digits."""

    def __init__(self, test_x: torch.Tensor):
        self.ref = _bits(test_x)
        d = torch.cdist(self.ref, self.ref)
        med = float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)].median())
        self.bandwidths = [0.5 * med, med, 2.0 * med]

    def __call__(self, samples: torch.Tensor) -> dict[str, float]:
        b = _bits(samples)
        ham = float(torch.cdist(b, self.ref, p=1).min(dim=1).values.mean())
        return {"nn_hamming": ham, "mmd2": float(mmd(b, self.ref, bandwidths=self.bandwidths))}


def _independent(train_x: torch.Tensor, test_x: torch.Tensor, n: int) -> dict[str, Any]:
    """The independent-pixel model: pixel marginals of the stored training set (``[0, 1]``, binarised at 0.5;
    clamped to ``[1e-3, 1 - 1e-3]``); its NLL on the model-space ``test_x`` and ``n`` samples."""
    p = (train_x > 0.5).double().mean(0).flatten().clamp(1e-3, 1 - 1e-3)
    b = _bits(test_x)
    nll = float(-(b * p.log() + (1 - b) * (1 - p).log()).sum(1).mean())
    g = torch.Generator().manual_seed(7)
    samples = (torch.rand(n, p.numel(), generator=g, dtype=torch.float64) < p).double() * 2 - 1
    return {"nll": nll, "samples": samples}


def _fmt(x: float | None, digits: int = 3) -> str:
    return common.fmt(x, digits)


# --------------------------------------------------------------------------------------------- (a)


def part_a(s: dict[str, Any], args: Any, root: Path, notes: list[str]) -> tuple[dict[str, Any], str]:
    t = s["a"]
    data, fallback = None, False
    if not args.quick and not args.no_mnist:
        try:
            data = load_data("mnist", data_dir=args.data_dir)
        except FileNotFoundError:
            notes.append("(a) MNIST not found (../shared/data/mnist.npz, or --data-dir): part (a) fell back to "
                         "the binarised 8x8 digits.")
            fallback = True
    if data is None:
        data = load_data("digits")
        if args.quick:
            notes.append("(a) quick mode: binarised 8x8 digits stand in for MNIST.")
        elif args.no_mnist:
            notes.append("(a) --no-mnist: part (a) ran on the binarised 8x8 digits.")
    label = f"{data.name} {data.data_shape[1]}x{data.data_shape[2]}"
    test_x = data.test_set()[0][: t["nll_images"]]
    d = math.prod(data.data_shape)
    pix = _train(root, "a-pixelcnn", "pixelcnn", data, t, {**t["pixelcnn"], "conditional": False}, args.data_dir)
    made = _train(root, "a-made", "made", data, t, {**t["made"], "conditional": False}, args.data_dir)
    long_t = {**t, "steps": t["made_long_steps"]}
    made_long = _train(root, "a-made-long", "made", data, long_t, {**t["made"], "conditional": False}, args.data_dir)
    ind = _independent(data.train_x, test_x, 2)
    rows = []
    archs = [("PixelCNN", pix, f"plain, hidden {t['pixelcnn']['hidden']}, {t['pixelcnn']['layers']} layers"),
             ("MADE", made, f"hidden {t['made']['hidden']} x {t['made']['depth']}, 1 mask"),
             ("MADE, longer", made_long, f"hidden {t['made']['hidden']} x {t['made']['depth']}, 1 mask")]
    for name, m, arch in archs:
        steps = t["made_long_steps"] if m is made_long else t["steps"]
        nll = _nll(m, test_x)
        rows.append({"model": name, "arch": arch, "params": m["params"], "steps": steps, "batch": t["batch"],
                     "train_s": m["seconds"], "nll": nll, "bpd": nll / (d * LN2)})
    rows.append({"model": "independent pixels", "arch": "train-set marginals", "params": d, "steps": None,
                 "batch": None, "train_s": None, "nll": ind["nll"], "bpd": ind["nll"] / (d * LN2)})
    rows.append({"model": "uniform (untrained)", "arch": "p = 1/2", "params": 0, "steps": None, "batch": None,
                 "train_s": None, "nll": d * LN2, "bpd": 1.0})
    table = common.markdown_table(
        ["(a) data", "model", "architecture", "params", "steps x batch", "train s", "test NLL (nats/img)",
         "bits/dim"],
        [[label, r["model"], r["arch"], r["params"], "" if r["steps"] is None else f"{r['steps']} x {r['batch']}",
          "" if r["train_s"] is None else f"{r['train_s']:.0f}", f"{r['nll']:.2f}", f"{r['bpd']:.4f}"]
         for r in rows])
    notes.append(f"(a) {label} binarised at 0.5; budget {t['steps']} steps x batch {t['batch']} "
                 f"({t['steps'] * t['batch']} images, {t['steps'] * t['batch'] / data.num_train:.2f} epochs), "
                 f"AdamW lr {t['lr']} cosine, EMA 0.999, for both models (MADE costs far less per step: "
                 f"\"MADE, longer\" gets {t['made_long_steps']} steps); NLL on the first {test_x.shape[0]} test "
                 "images. Published numbers (PixelCNN 81.3, MADE 88.0 nats on stochastically binarised MNIST, "
                 "trained for days) are not comparable: thresholded MNIST is easier and this budget is minutes.")
    return {"data": data.name, "fallback": fallback, "budget": {k: t[k] for k in ("steps", "batch", "lr")},
            "nll_images": int(test_x.shape[0]), "rows": rows}, table


# --------------------------------------------------------------------------------------------- (b) 2-D EBM


def part_b_ebm2d(s: dict[str, Any], root: Path, notes: list[str]) -> tuple[dict[str, Any], str]:
    t = s["ebm2d"]
    n = t["n"]
    held = toy2d.sample("8gaussians", n, generator=torch.Generator().manual_seed(12345))
    m = _train(root, "b-ebm-8g", "ebm", "8gaussians", t, dict(t["options"]))

    def metrics(x: torch.Tensor) -> dict[str, Any]:
        x = x.double()
        finite = bool(torch.isfinite(x).all())
        cov = mode_coverage(x, EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)
        return {"modes": int(cov["modes"]), "high_quality": float(cov["high_quality"]),
                "w2": float(w2(x, held)) if finite else float("nan")}

    opts = m["config"]["options"]
    noise_opts = copy.deepcopy(opts)
    noise_opts["settings"]["from_buffer"] = False
    steps = m["recipe"].samplers["langevin"]
    rows = []
    x, sec = _sample(m, n)
    rows.append({"sampler": f"EBM, SGLD {steps} steps from the replay buffer", **metrics(x), "sample_s": sec})
    x, sec = _sample(m, n, options=noise_opts)
    rows.append({"sampler": f"EBM, SGLD {steps} steps from U[-4, 4] noise", **metrics(x), "sample_s": sec})
    torch.manual_seed(0)
    untrained = {**m, "nets": m["recipe"].build(opts)}
    x, sec = _sample(untrained, n, options=noise_opts)
    rows.append({"sampler": "untrained EBM, same SGLD from noise", **metrics(x), "sample_s": sec})
    rows.append({"sampler": "(data: a second sample)",
                 **metrics(toy2d.sample("8gaussians", n, generator=torch.Generator().manual_seed(99))),
                 "sample_s": None})
    table = common.markdown_table(
        ["(b) 8gaussians", "modes of 8", "high quality", "W2 to held-out", "sample s"],
        [[r["sampler"], r["modes"], f"{r['high_quality']:.3f}", _fmt(r["w2"]),
          "" if r["sample_s"] is None else f"{r['sample_s']:.1f}"] for r in rows])
    st = opts["settings"]
    notes.append(f"(b) EBM on 8gaussians: ResMLP energy {opts['build']['hidden']}x{opts['build']['depth']}, "
                 f"{t['steps']} steps x batch {t['batch']}, lr {t['lr']}, {st['sgld_steps']} SGLD steps per "
                 f"update (step {st['step_size']}, noise {st['noise_scale']}), buffer {opts['build']['buffer_size']}"
                 f"; trained in {m['seconds']:.0f} s; {n} samples against {n} held-out points.")
    return {"budget": {k: t[k] for k in ("steps", "batch", "lr")}, "train_s": m["seconds"], "n": n, "rows": rows}, table


# --------------------------------------------------------------------------------------------- (b) + (c) digits


def part_digits(s: dict[str, Any], parts: set[str], root: Path, notes: list[str]) -> tuple[dict[str, Any], str]:
    src = load_data("digits")
    test_x = src.test_set()[0]  # (297, 1, 8, 8) model space
    d = math.prod(src.data_shape)
    n = s["n_samples"]
    quality = DigitsQuality(test_x)
    rows: list[dict[str, Any]] = []

    g = torch.Generator().manual_seed(3)
    idx = torch.randperm(src.num_train, generator=g)[:n]
    rows.append({"part": "ref", "model": "(training images)", "budget": "", **quality(src.train_x[idx] * 2 - 1)})
    ind = _independent(src.train_x, test_x, n)
    rows.append({"part": "ref", "model": "independent pixels", "budget": "", "nll": ind["nll"],
                 "bpd": ind["nll"] / (d * LN2), **quality(ind["samples"])})

    if "c" in parts:
        t = s["c"]
        budget = f"{t['steps']} x {t['batch']}, lr {t['lr']}"
        pix = _train(root, "c-pixelcnn", "pixelcnn", src, t, {**t["pixelcnn"], "conditional": False})
        dm = _train(root, "c-d3pm", "d3pm", src, t, {**t["d3pm"], "conditional": False})
        nll = _nll(pix, test_x)
        x, sec = _sample(pix, n)
        rows.append({"part": "c", "model": f"(c) PixelCNN (gated, {t['pixelcnn']['hidden']} x "
                                           f"{t['pixelcnn']['layers']})",
                     "budget": budget, "train_s": pix["seconds"], "params": pix["params"], "nll": nll,
                     "bpd": nll / (d * LN2), "nll_kind": "exact", **quality(x), "sample_ms": 1e3 * sec / n,
                     "calls": d})
        ev = dm["recipe"].eval_fn(dm["recipe"], dm["nets"], test_x, None, dm["config"]["options"],
                                  torch.Generator().manual_seed(5))
        x, sec = _sample(dm, n)
        T = dm["config"]["options"]["build"]["T"]
        rows.append({"part": "c", "model": f"(c) D3PM (absorbing, T={T}, UNet {t['d3pm']['base_channels']} ch)",
                     "budget": budget, "train_s": dm["seconds"], "params": dm["params"], "nll": ev["nll_bound"],
                     "bpd": ev["bpd_bound"], "nll_kind": "bound", **quality(x), "sample_ms": 1e3 * sec / n,
                     "calls": T})
        c_note = (f"(c) PixelCNN and D3PM on binarised digits at the same budget: {t['steps']} steps x batch "
                  f"{t['batch']}, AdamW lr {t['lr']} cosine, EMA 0.999; D3PM's NLL is its variational bound "
                  f"(<=: an upper bound on its NLL, one x_t draw per term), PixelCNN's is exact; {n} samples "
                  f"each, metrics against the {test_x.shape[0]} held-out digits.")
    if "b" in parts:
        t = s["rbm"]
        for h in t["hidden"]:
            m = _train(root, f"b-rbm-{h}", "rbm", src, t, {**t["options"], "hidden": h})
            nll = _nll(m, test_x)
            with torch.no_grad():
                pseudo = m["recipe"].eval_fn(m["recipe"], m["nets"], test_x, None, m["config"]["options"], None)
            x, sec = _sample(m, n)
            steps = m["recipe"].samplers["gibbs"]
            exact = math.isfinite(nll)
            rows.append({"part": "b", "model": f"(b) RBM, H={h}, PCD-1",
                         "budget": f"{t['steps']} x {t['batch']}, lr {t['lr']}",
                         "train_s": m["seconds"], "params": m["params"], "nll": nll if exact else None,
                         "bpd": nll / (d * LN2) if exact else None, "nll_kind": "exact" if exact else None,
                         "pseudo_nll": pseudo["pseudo_nll"], **quality(x), "sample_ms": 1e3 * sec / n, "calls": steps})
        t = s["ebm_img"]
        m = _train(root, "b-ebm-digits", "ebm", src, t, {**t["options"], "conditional": False})
        x, sec = _sample(m, n, steps=t["sample_steps"])
        st = m["config"]["options"]["settings"]
        rows.append({"part": "b", "model": f"(b) EBM (conv {m['config']['options']['build']['base_channels']} ch), "
                                           f"SGLD from buffer", "budget": f"{t['steps']} x {t['batch']}, lr {t['lr']}",
                     "train_s": m["seconds"], "params": m["params"], **quality(x), "sample_ms": 1e3 * sec / n,
                     "calls": t["sample_steps"]})
        t_r = s["rbm"]
        notes.append(f"(b) RBMs: PCD-1 with {t_r['options']['chains']} persistent chains, {t_r['steps']} steps x "
                     f"batch {t_r['batch']}, lr {t_r['lr']}; exact NLL only for H <= 20 (log Z enumerates 2^H "
                     f"states); samples: {get_recipe('rbm').samplers['gibbs']} Gibbs sweeps "
                     f"from random bits. Image EBM: {st['sgld_steps']} SGLD steps per update (step "
                     f"{st['step_size']}, noise {st['noise_scale']}, clip {st['clip']}), samples {t['sample_steps']} "
                     "SGLD steps from the replay buffer, binarised at 0 for the metrics.")
    if "c" in parts:
        notes.append(c_note)
    for r in rows:
        for k in ("train_s", "params", "nll", "bpd", "nll_kind", "pseudo_nll", "sample_ms", "calls"):
            r.setdefault(k, None)

    def nll_cell(r: dict) -> str:
        if r["nll"] is None:
            return "—"
        return ("<= " if r["nll_kind"] == "bound" else "") + f"{r['nll']:.2f}"

    table = common.markdown_table(
        ["(b, c) binarised digits 8x8", "steps x batch", "train s", "test NLL (nats/img)", "bits/dim",
         "pseudo-NLL", "NN Hamming (of 64)", "MMD² x 1e3", "sample ms/img (calls)"],
        [[r["model"], r["budget"], "" if r["train_s"] is None else f"{r['train_s']:.0f}", nll_cell(r),
          "—" if r["bpd"] is None else ("<= " if r["nll_kind"] == "bound" else "") + f"{r['bpd']:.3f}",
          "—" if r["pseudo_nll"] is None else f"{r['pseudo_nll']:.2f}", f"{r['nn_hamming']:.2f}",
          f"{1e3 * r['mmd2']:.2f}",
          "" if r["sample_ms"] is None else f"{r['sample_ms']:.2f} ({r['calls']})"] for r in rows])
    return {"n_samples": n, "n_test": int(test_x.shape[0]), "mmd_bandwidths": quality.bandwidths, "rows": rows}, table


# --------------------------------------------------------------------------------------------- (d)


def _count_calls(family: str, nets: Any) -> tuple[list[int], Any]:
    """A counter of network calls made while sampling: a forward pre-hook (or MADE's ``logits_flat``)."""
    count = [0]
    if family == "made":
        orig = nets.logits_flat

        def wrapped(*a: Any, **k: Any) -> Any:
            count[0] += 1
            return orig(*a, **k)

        nets.logits_flat = wrapped
        return count, lambda: delattr(nets, "logits_flat")
    handle = nets.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count, handle.remove


def part_d(s: dict[str, Any], device: torch.device, notes: list[str]) -> tuple[dict[str, Any], str]:
    t = s["d"]
    b = t["batch"]
    models = [("PixelCNN (gated)", "pixelcnn", {**t["pixelcnn"], "arch": "gated"}),
              ("causal transformer", "pixelcnn", {**t["transformer"], "arch": "transformer"}),
              ("MADE", "made", dict(t["made"]))]
    models += [(f"D3PM (absorbing, T={T})", "d3pm", {**t["d3pm"], "T": T}) for T in t["T"]]
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name, _, _ in models}
    for size in t["sizes"]:
        shape = (1, size, size)
        fake = DataSource("random", "images", shape, None, torch.zeros(1, *shape), None, torch.zeros(1, *shape), None)
        fns, counts = {}, {}
        for name, family, opts in models:
            recipe = get_recipe(family)
            options = recipe.resolve(fake, opts)
            torch.manual_seed(0)
            nets = recipe.build(options)
            for mod in (nets if isinstance(nets, tuple) else (nets,)):
                mod.to(device).eval()

            def fn(recipe=recipe, nets=nets, options=options) -> torch.Tensor:
                with torch.no_grad():
                    return recipe.sample(nets, b, options=options, generator=torch.Generator(device).manual_seed(0),
                                         device=device)

            count, close = _count_calls(family, nets)
            fn()  # counts the calls and warms up
            close()
            counts[name] = count[0]
            fns[name] = fn
        times, _ = common.time_interleaved(fns, device=device, warmup=0, repeats=t["repeats"], warmup_fns={})
        for name in fns:
            st = common.summary([x / b for x in times[name]])
            results[name][size] = {"calls": counts[name], "s_per_sample": st,
                                   "ms_per_sample": 1e3 * st["median"],
                                   "ms_per_call": 1e3 * st["median"] * b / counts[name]}
    rows = []
    for name, family, opts in models:
        rows.append([name] + [f"{results[name][sz]['ms_per_sample']:.2f} ({results[name][sz]['calls']})"
                              for sz in t["sizes"]])
    table = common.markdown_table(["(d) sampler: ms / sample (network calls)"]
                                  + [f"{sz}x{sz} ({sz * sz} pixels)" for sz in t["sizes"]], rows)
    notes.append(f"(d) random weights (timing only): PixelCNN gated {t['pixelcnn']['hidden']} x "
                 f"{t['pixelcnn']['layers']}, transformer {t['transformer']['hidden']} x {t['transformer']['layers']} "
                 f"(no KV cache: every call runs the whole H·W sequence), MADE {t['made']['hidden']} x "
                 f"{t['made']['depth']}, D3PM UNet {t['d3pm']['base_channels']} ch; batch {b}, median of "
                 f"{t['repeats']} interleaved repeats, wall time / batch, on {device} (parts a-c train and evaluate "
                 "on the CPU). The autoregressive models make H·W calls (one per pixel), D3PM T calls at every size.")
    out_rows = [{"model": name, "family": family, "by_size": {str(sz): results[name][sz] for sz in t["sizes"]}}
                for name, family, _ in models]
    return {"batch": b, "sizes": t["sizes"], "T": t["T"], "rows": out_rows}, table


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (overrides the defaults)")
    p.add_argument("--parts", default="a,b,c,d", help="parts to run, comma-separated from a,b,c,d (default all)")
    p.add_argument("--no-mnist", action="store_true", help="part (a) on the binarised digits instead of MNIST")
    p.add_argument("--data-dir", default=None, help="where mnist.npz is looked up (default: edifice.data's search)")
    p.set_defaults(threads=1)  # small nets: a second thread only adds synchronisation
    args = p.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or not parts <= set(PARTS):
        p.error(f"--parts must name some of {', '.join(PARTS)}, got {args.parts!r}")
    device = common.setup(args)
    s = _settings(args)
    start = time.perf_counter()
    notes: list[str] = []
    tables: list[str] = []
    results: dict[str, Any] = {}
    wall: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edifice-discrete-") as tmp:
        root = Path(tmp)
        if "a" in parts:
            t0 = time.perf_counter()
            results["a"], table = part_a(s, args, root, notes)
            tables.append(table)
            wall["a"] = time.perf_counter() - t0
        if "b" in parts:
            t0 = time.perf_counter()
            results["b_ebm_8gaussians"], table = part_b_ebm2d(s, root, notes)
            tables.append(table)
            wall["b_ebm_8gaussians"] = time.perf_counter() - t0
        if parts & {"b", "c"}:
            t0 = time.perf_counter()
            results["digits"], table = part_digits(s, parts, root, notes)
            tables.append(table)
            wall["digits"] = time.perf_counter() - t0
    if "d" in parts:
        t0 = time.perf_counter()
        results["d"], table = part_d(s, device, notes)
        tables.append(table)
        wall["d"] = time.perf_counter() - t0
    table = "\n\n".join(tables)
    notes.append("wall s per part: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items())
                 + f"; total {time.perf_counter() - start:.0f} s")
    payload = {"machine": common.machine_info(device), "settings": {**s, "parts": sorted(parts)},
               "results": results, "wall_s": wall}
    common.report(NAME, "Discrete, autoregressive and energy-based models: bits/dim, sample quality, sampling time",
                  table, payload, args, notes)
    return {"name": NAME, "quick": bool(args.quick), **payload, "table": table, "notes": notes}


if __name__ == "__main__":
    main()
