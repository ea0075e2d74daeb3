"""Run every benchmark and print their tables: ``python benchmarks/run_all.py [--quick] [...]``.

The benchmarks run one after another in this process (imports are paid once); each prints its
markdown table and writes ``<out-dir>/<name>.json``. Every option is passed on to each benchmark
(``--quick``, ``--device``, ``--threads``, ``--out-dir``, ``--repeats``). A benchmark that fails is
reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import sys
import time
import traceback

import common
import dit_throughput
import discrete_models
import few_step
import flows_nll
import gan_losses
import guidance_digits
import latent_vs_pixel
import leaderboard
import likelihood_cost
import main_job
import sampler_overhead
import sampler_overhead_score
import sampler_quality
import score_nll
import train_throughput
import vae_mnist
import vqvae_digits

BENCHMARKS = {
    "sampler_overhead": sampler_overhead.main,
    "train_throughput": train_throughput.main,
    "main_job": main_job.main,
    "sampler_overhead_score": sampler_overhead_score.main,
    "score_nll": score_nll.main,
    "sampler_quality": sampler_quality.main,
    "likelihood_cost": likelihood_cost.main,
    "vqvae_digits": vqvae_digits.main,
    "vae_mnist": vae_mnist.main,
    "gan_losses": gan_losses.main,
    "guidance_digits": guidance_digits.main,
    "dit_throughput": dit_throughput.main,
    "latent_vs_pixel": latent_vs_pixel.main,
    "flows_nll": flows_nll.main,
    "few_step": few_step.main,
    "discrete_models": discrete_models.main,
    "leaderboard": leaderboard.main,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common.parser(__doc__.splitlines()[0]).parse_args(argv)  # validate (and answer --help) once
    failed = []
    start = time.perf_counter()
    for name, fn in BENCHMARKS.items():
        print(f"\n## {name}\n", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            fn(argv)
        except Exception:  # noqa: BLE001 - report and carry on with the other benchmarks
            traceback.print_exc()
            failed.append(name)
        print(f"({name}: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU in this process)",
              flush=True)
    print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
