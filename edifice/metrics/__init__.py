"""Metrics for generative models: sample-based distances and likelihood summaries.

* :mod:`~edifice.metrics.distances` — exact W2 (Hungarian assignment), sliced W2, kernel MMD,
  energy distance; two point sets in, a 0-dim float64 tensor out.
* :mod:`~edifice.metrics.likelihood` — bits per dimension and NLL summaries with standard errors.
* :mod:`~edifice.metrics.modes` — modes covered and high-quality samples on mixtures with known centres.
"""

from edifice.metrics.distances import energy_distance, mmd, sliced_wasserstein, w2
from edifice.metrics.likelihood import bits_per_dim, nll_summary
from edifice.metrics.modes import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD, mode_coverage

__all__ = ["w2", "sliced_wasserstein", "mmd", "energy_distance", "bits_per_dim", "nll_summary", "mode_coverage",
           "EIGHT_GAUSSIANS_CENTRES", "EIGHT_GAUSSIANS_STD"]
