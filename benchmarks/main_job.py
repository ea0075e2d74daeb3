"""The README's main job: wall time, peak memory and W2 to held-out data.

Runs ``python -m edifice train flow_matching --data moons --steps 3000 --out <tmp>`` (what
``make demo`` runs) as a child process, ``repeats`` times, each into a fresh folder, and reports:

* wall time of the whole command (interpreter start-up, imports, training, the final evaluation
  and the files it writes), and the child's CPU time (user + system);
* peak resident memory of the child, its ``ru_maxrss`` read with ``os.wait4`` (per child, so
  earlier children of this process cannot inflate it; it is the peak of the process itself);
* ``w2`` (and whatever else) from the run's ``metrics.json``: the exact W2 between generated
  samples and held-out data. Reference points: two fresh 2000-point moons
  samples are W2 ~= 0.15 apart with edifice's random-angle moons (FACTS.md's 0.09 is for scikit-learn's
  evenly spaced grid; see edifice_tests/data/test_toy2d.py), and N(0, I) is ~= 1.0 from moons.

The child runs with ``OMP_NUM_THREADS=<--threads>`` so that it uses the same number of threads as
the other benchmarks.

Run: ``python benchmarks/main_job.py`` (``--quick``: a tiny net, 20 steps, a 100-point evaluation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

NAME = "main_job"


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return dict(family="flow_matching", data="moons", steps=20, repeats=1,
                    extra=["--eval-n", "100", "--batch-size", "64", "--option", "hidden=32", "--option", "depth=1"])
    return dict(family="flow_matching", data="moons", steps=3000, extra=[], repeats=2)


def run_once(s: dict[str, Any], out_dir: Path, threads: int, device: torch.device) -> dict[str, Any]:
    """Run the job once into ``out_dir``; return wall time, CPU time, peak RSS and the metrics."""
    cmd = [sys.executable, "-m", "edifice", "train", s["family"], "--data", s["data"], "--steps", str(s["steps"]),
           "--out", str(out_dir), "--no-progress", "--device", device.type, *s["extra"]]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = str(threads)
    log_path = out_dir.parent / f"{out_dir.name}.log"
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(common.ROOT))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; tell Popen
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"main job failed with status {proc.returncode}: {' '.join(cmd)}\n{tail}")
    metrics = json.loads((out_dir / "metrics.json").read_text())
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss_mib = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": rss_mib,
            "metrics": metrics, "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    device = common.setup(args)
    s = _settings(args.quick)
    repeats = args.repeats or s["repeats"]
    runs = []
    with tempfile.TemporaryDirectory(prefix="edifice-main-job-") as tmp:
        for r in range(repeats):
            runs.append(run_once(s, Path(tmp) / f"run{r}", args.threads, device))
            print(f"run {r}: {runs[-1]['wall_s']:.1f} s, {runs[-1]['peak_rss_mib']:.0f} MiB, "
                  f"w2 {runs[-1]['metrics'].get('w2')}", flush=True)

    w2s = [r["metrics"].get("w2") for r in runs]
    result = {
        "wall_s": common.summary([r["wall_s"] for r in runs]),
        "cpu_s": common.summary([r["cpu_s"] for r in runs]),
        "peak_rss_mib": common.summary([r["peak_rss_mib"] for r in runs]),
        "w2": common.summary(w2s) if all(isinstance(w, (int, float)) for w in w2s) else None,
    }
    last = runs[-1]["metrics"]
    table = common.markdown_table(
        ["job", "runs", "wall s", "CPU s", "peak RSS MiB", "W2 to held-out", "other metrics (last run)"],
        [[f"train {s['family']} --data {s['data']} --steps {s['steps']}", repeats, common.fmt_stat(result["wall_s"]),
          common.fmt(result["cpu_s"]["median"]), common.fmt_stat(result["peak_rss_mib"]),
          common.fmt_stat(result["w2"]) if result["w2"] else "-",
          ", ".join(f"{k}={common.fmt(v)}" for k, v in last.items()
                    if k != "w2" and isinstance(v, (int, float)) and not isinstance(v, bool))]],
    )
    info = common.machine_info(device)
    notes = [
        f"command: python {runs[-1]['command']} (OMP_NUM_THREADS={args.threads}); median [min, max] over runs.",
        "wall time includes interpreter start-up, imports, training, the final evaluation and plots; "
        "peak RSS is the child's ru_maxrss (os.wait4).",
        "W2 reference on moons: ~0.15 between two fresh 2000-point data samples (random angles), ~1.0 for N(0, I).",
    ]
    payload = {"machine": info, "settings": {**s, "repeats": repeats}, "result": result, "runs": runs}
    common.report(NAME, "Main job (README)", table, payload, args, notes)
    return payload


if __name__ == "__main__":
    main()
