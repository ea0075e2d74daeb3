"""Shared helpers for the benchmark scripts: set-up, timing, statistics, tables and JSON.

Every benchmark script builds on these so that all of them

* pin the thread count (``--threads``, default 2: the development machine has 2 cores) and pick
  CUDA when it is available (``--device``), synchronising around every timed region;
* warm up, then time several repeats *interleaved* across the variants being compared (variant A,
  B, C, then A, B, C again, with the order rotated each round), so slow drift of the machine
  affects every variant alike; ratios are taken per round and summarised by their median;
* print a markdown table and write ``benchmarks/results/<name>.json`` with the machine's
  description (torch version, threads, CPU count, device, date) and the settings used.

These are measurements, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# The benchmarks run from a checkout without installing: make `import edifice` find this one.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares: ``--quick``, ``--device``, ``--threads``, ``--out-dir``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny settings that finish in seconds (used by the smoke test; numbers mean nothing)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--out-dir", default=str(RESULTS), help="where <name>.json is written")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default: per benchmark)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Pin threads, choose the device and return it."""
    torch.set_num_threads(args.threads)
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Describe where the numbers come from."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        # Other work on the machine skews every number: record how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:  # diffusers is an optional peer
        info["diffusers"] = None
    return info


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    device: torch.device,
    warmup: int = 1,
    repeats: int = 5,
    warmup_fns: Mapping[str, Callable[[], Any]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Wall-clock seconds of each callable, ``repeats`` times, rounds interleaved across callables.

    First every callable in ``warmup_fns`` (default: ``fns`` itself; pass cheaper stand-ins that
    exercise the same code when a full call is slow) runs ``warmup`` times, untimed. Then, in each
    of ``repeats`` rounds, every callable runs once, in an order rotated by one position per round;
    the device is synchronised before and after each timed call. ``clock`` is wall-clock time by
    default; ``time.process_time`` (CPU seconds of this process) is robust to other work on a busy
    machine, but only meaningful on the CPU.

    Returns:
        ``({name: [seconds of round 0, round 1, ...]}, {name: value returned by its last call}).``
        Rounds are in the same order for every name, so per-round ratios pair measurements taken
        close together.
    """
    names = list(fns)
    for fn in (warmup_fns if warmup_fns is not None else fns).values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, Any] = {}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            t0 = clock()
            outputs[name] = fns[name]()
            sync(device)
            times[name].append(clock() - t0)
    return times, outputs


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread ``(max - min) / median`` of a list of numbers."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi, "spread": (hi - lo) / med if med else math.nan, "n": len(values)}


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-round ratios ``num[i] / den[i]``."""
    return [a / b for a, b in zip(num, den)]


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a table cell: ``digits`` significant digits, or ``-`` for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}g}"


def fmt_stat(s: Mapping[str, float], scale: float = 1.0, digits: int = 3) -> str:
    """``median [min, max]`` of a :func:`summary`, multiplied by ``scale``."""
    return f"{fmt(s['median'] * scale, digits)} [{fmt(s['min'] * scale, digits)}, {fmt(s['max'] * scale, digits)}]"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine, printed under every table."""
    where = info.get("gpu") or f"{info['processor']} CPU, {info['threads']} torch threads of {info['cpu_count']} cores"
    return (f"_{where}; torch {info['torch']}, diffusers {info.get('diffusers')}; {info['date']}; "
            f"load average (1 min) at the end: {info.get('loadavg_1m')}_")


def data_sets(settings: dict[str, dict[str, Any]], *, no_mnist: bool, override: tuple[str, Any] | None = None) -> list[str]:
    """Drop ``"mnist"`` from ``settings`` (per data set) when asked or absent; apply ``override = (key, value)``
    (e.g. a ``--steps`` given on the command line) to every data set. Returns notes for the report."""
    from edifice.data import load

    notes = []
    if "mnist" in settings and not no_mnist:
        try:
            load("mnist")
        except FileNotFoundError:
            notes.append("MNIST not found (../shared/data/mnist.npz): skipped.")
            del settings["mnist"]
    elif "mnist" in settings:
        del settings["mnist"]
    if override is not None and override[1] is not None:
        for t in settings.values():
            t[override[0]] = override[1]
    return notes


def write_json(name: str, payload: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``payload`` to ``<out_dir>/<name>.json`` atomically and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def report(name: str, title: str, table: str, payload: dict[str, Any], args: argparse.Namespace,
           notes: Sequence[str] = ()) -> Path:
    """Print ``title``, the table, the machine line and notes; save ``payload`` (with the table) as JSON."""
    payload = {"name": name, "quick": bool(args.quick), **payload, "table": table}
    text = [f"### {title}", "", table, "", machine_line(payload["machine"])]
    text += [f"- {n}" for n in notes]
    print("\n".join(text), flush=True)
    payload["notes"] = list(notes)
    path = write_json(name, payload, args.out_dir)
    print(f"\nwrote {path}", flush=True)
    return path
