"""Normalizing flows on 2-D toy data: test NLL, W2, training and sampling speed, edifice vs zuko.

For moons and 8gaussians this trains every edifice flow kind (``normalizing_flow.build(data_shape=(2,),
kind=K, blocks=4, hidden=64)``; planar and radial, whose layers have a handful of parameters, get 32 layers;
FFJORD is RK4 with 8 steps and the exact divergence) and, where they do the same job, the zuko peers
(``zuko.flows.RealNVP``, ``MAF``, ``NSF``: 4 transforms, two hidden layers of 64, zuko's defaults otherwise)
with one budget: Adam, lr 3e-3 with a cosine schedule, batch 256, 600 steps (FFJORD: 200, its steps cost
~30 solver evaluations each). Training batches come from one seeded stream per data set, the same for every
row; the held-out points (2000) and the W2 reference come from separate seeds.

Per row: parameters, **test NLL** in nats (mean ``-log p`` of the held-out points, ± its standard error),
the data's **entropy floor** (moons 2.394, 8gaussians 2.834 nats: the project's own Monte Carlo numbers, as in
``score_nll.py``; ``NLL - floor`` estimates ``KL(data || model)``), **W2** between 2000 samples and the held-out
points (``edifice.metrics.w2``; the ``(data vs data)`` row is two fresh data samples), training **steps/s**
and **sampling ms per 1000 samples** (median of 5, after a warm-up). For the three matching kinds the notes
give ``edifice - zuko`` NLL and the edifice/zuko training-speed ratio from the same run.

Run: ``python benchmarks/flows_nll.py`` (default ``--threads 1``; ``--steps`` changes the budget;
``--quick``: tiny nets, 20 steps, 200 points, seconds).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import common
import torch

from edifice.data import toy2d
from edifice.generative import normalizing_flow as nf
from edifice.metrics import w2

NAME = "flows_nll"
FLOORS = {"moons": 2.394, "8gaussians": 2.834}
EDIFICE_KINDS = ("realnvp", "nice", "glow", "maf", "iaf", "nsf", "planar", "radial", "ffjord")
ZUKO_KINDS = {"realnvp": "RealNVP", "maf": "MAF", "nsf": "NSF"}


def _settings(args: Any) -> dict[str, Any]:
    if args.quick:
        s = dict(datasets=["moons", "8gaussians"], steps=20, ffjord_steps=5, batch=64, lr=3e-3, blocks=2,
                 planar_blocks=4, hidden=16, ode_steps=2, n_eval=200, n_sample_timing=200, sample_repeats=2)
    else:
        s = dict(datasets=["moons", "8gaussians"], steps=600, ffjord_steps=200, batch=256, lr=3e-3, blocks=4,
                 planar_blocks=32, hidden=64, ode_steps=8, n_eval=2000, n_sample_timing=1000, sample_repeats=5)
    if args.steps is not None:
        s["steps"] = args.steps
        s["ffjord_steps"] = max(1, args.steps // 3)
    return s


class _ZukoAdapter:
    """zuko's lazy flow seen through the three calls this benchmark makes."""

    def __init__(self, flow: torch.nn.Module):
        self.flow = flow

    def parameters(self):
        return self.flow.parameters()

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return -self.flow().log_prob(x)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # zuko samples from the global generator
        return self.flow().sample((n,))


class _EdificeAdapter:
    def __init__(self, flow: torch.nn.Module):
        self.flow = flow

    def parameters(self):
        return self.flow.parameters()

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return -nf.log_prob(self.flow, x)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        return nf.sample(self.flow, (n, 2), generator=torch.Generator().manual_seed(seed))


def _build(library: str, kind: str, s: dict[str, Any], device: torch.device):
    if library == "zuko":
        import zuko

        cls = getattr(zuko.flows, ZUKO_KINDS[kind])
        hidden = (s["hidden"],) * 2
        return _ZukoAdapter(cls(2, transforms=s["blocks"], hidden_features=hidden).to(device))
    blocks = s["planar_blocks"] if kind in ("planar", "radial") else s["blocks"]
    extra = dict(ode_method="rk4", ode_steps=s["ode_steps"]) if kind == "ffjord" else {}
    return _EdificeAdapter(nf.build(data_shape=(2,), kind=kind, blocks=blocks, hidden=s["hidden"], **extra).to(device))


def train_and_eval(data: str, library: str, kind: str, s: dict[str, Any], device: torch.device,
                   held_out: torch.Tensor) -> dict[str, Any]:
    torch.manual_seed(0)  # initialisation
    model = _build(library, kind, s, device)
    params = sum(p.numel() for p in model.parameters())
    steps = s["ffjord_steps"] if kind == "ffjord" else s["steps"]
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(1)  # the same training stream for every row
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x = toy2d.sample(data, s["batch"], generator=g).to(device)
        loss = model.nll(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    common.sync(device)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        nll = model.nll(held_out.to(device)).double().cpu()
        finite = bool(torch.isfinite(nll).all())
        samples = model.sample(s["n_eval"], 1000).cpu()
        sample_times = []
        model.sample(s["n_sample_timing"], 7)  # warm-up
        for r in range(s["sample_repeats"]):
            common.sync(device)
            t1 = time.perf_counter()
            model.sample(s["n_sample_timing"], 8 + r)
            common.sync(device)
            sample_times.append(time.perf_counter() - t1)
    ok = bool(torch.isfinite(samples).all())
    return {
        "data": data, "library": library, "kind": kind, "params": params, "steps": steps,
        "nll": float(nll.mean()) if finite else float("nan"),
        "nll_se": float(nll.std() / math.sqrt(len(nll))) if finite else float("nan"),
        "floor": FLOORS.get(data),
        "w2": float(w2(samples, held_out)) if ok else float("nan"),
        "train_seconds": seconds, "steps_per_s": steps / seconds,
        "sample_ms_per_1000": statistics.median(sample_times) * 1000 * 1000 / s["n_sample_timing"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="Adam steps per flow (default 600; FFJORD a third)")
    p.add_argument("--no-zuko", action="store_true", help="skip the zuko rows")
    p.set_defaults(threads=1)  # tiny MLPs: a second thread only adds synchronisation
    args = p.parse_args(argv)
    device = common.setup(args)
    s = _settings(args)
    notes: list[str] = []
    libraries = ["edifice"]
    if not args.no_zuko:
        try:
            import zuko

            libraries.append("zuko")
            s["zuko"] = zuko.__version__
        except ImportError:
            notes.append("zuko not installed: its rows are skipped.")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    data_vs_data: dict[str, float] = {}
    for data in s["datasets"]:
        held_out = toy2d.sample(data, s["n_eval"], generator=torch.Generator().manual_seed(12345))
        reference = toy2d.sample(data, s["n_eval"], generator=torch.Generator().manual_seed(54321))
        data_vs_data[data] = float(w2(reference, held_out))
        for kind in EDIFICE_KINDS:
            for library in libraries:
                if library == "zuko" and kind not in ZUKO_KINDS:
                    continue
                row = train_and_eval(data, library, kind, s, device, held_out)
                rows.append(row)
                print(f"{data:10s} {library:7s} {kind:8s} NLL {row['nll']:.3f} W2 {row['w2']:.3f} "
                      f"{row['steps_per_s']:.0f} steps/s {row['sample_ms_per_1000']:.2f} ms/1000", flush=True)

    comparisons = []
    for data in s["datasets"]:
        for kind in ZUKO_KINDS:
            e = [r for r in rows if (r["data"], r["library"], r["kind"]) == (data, "edifice", kind)]
            z = [r for r in rows if (r["data"], r["library"], r["kind"]) == (data, "zuko", kind)]
            if e and z:
                e, z = e[0], z[0]
                comparisons.append({"data": data, "kind": kind, "nll_diff": e["nll"] - z["nll"],
                                    "train_speed_ratio": e["steps_per_s"] / z["steps_per_s"],
                                    "sample_speed_ratio": z["sample_ms_per_1000"] / e["sample_ms_per_1000"]})

    table_rows = []
    for data in s["datasets"]:
        for r in (r for r in rows if r["data"] == data):
            table_rows.append([data, r["library"], r["kind"], r["params"], r["steps"],
                               f"{r['nll']:.3f} ± {r['nll_se']:.3f}",
                               "-" if r["floor"] is None else f"{r['floor']:.3f}",
                               f"{r['w2']:.3f}", common.fmt(r["steps_per_s"]), common.fmt(r["sample_ms_per_1000"])])
        table_rows.append([data, "(data vs data)", "-", "-", "-", "-",
                           "-" if FLOORS.get(data) is None else f"{FLOORS[data]:.3f}",
                           f"{data_vs_data[data]:.3f}", "-", "-"])
    headers = ["data", "library", "kind", "params", "steps", "test NLL (nats) ± s.e.", "floor", "W2", "steps/s",
               "sample ms / 1000"]
    table = common.markdown_table(headers, table_rows)
    if comparisons:
        cmp_table = common.markdown_table(
            ["data", "kind", "NLL edifice - zuko", "train speed edifice/zuko", "sampling speed edifice/zuko"],
            [[c["data"], c["kind"], f"{c['nll_diff']:+.3f}", f"{c['train_speed_ratio']:.2f}",
              f"{c['sample_speed_ratio']:.2f}"] for c in comparisons])
        table = table + "\n\n" + cmp_table
    notes += [
        f"{s['steps']} Adam steps (FFJORD {s['ffjord_steps']}) of batch {s['batch']}, lr {s['lr']:g} cosine; "
        f"blocks {s['blocks']} (planar / radial {s['planar_blocks']}), hidden {s['hidden']} x 2; FFJORD RK4 "
        f"{s['ode_steps']} steps, exact divergence; one seed; NLL on {s['n_eval']} held-out points.",
        "floor = differential entropy of the data (the project's measurements, as in score_nll.py): NLL - floor "
        "estimates KL(data || model).",
        f"zuko rows: zuko.flows.RealNVP / MAF / NSF with {s['blocks']} transforms, hidden_features "
        f"({s['hidden']}, {s['hidden']}), zuko's defaults "
        "otherwise (zuko's NSF has more parameters than edifice's at the same bins). Speed ratios > 1 mean "
        "edifice is faster; both run the same loop in the same process, one after the other.",
        f"total {time.perf_counter() - start:.0f} s",
    ]
    payload = {"machine": common.machine_info(device), "settings": s, "rows": rows, "comparisons": comparisons,
               "data_vs_data_w2": data_vs_data}
    common.report(NAME, "Normalizing flows on 2-D toy data: test NLL, W2 and speed (edifice vs zuko)", table,
                  payload, args, notes)
    return {"name": NAME, "quick": bool(args.quick), **payload, "table": table, "notes": notes}


if __name__ == "__main__":
    main()
