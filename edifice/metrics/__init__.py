"""Metrics for generative models: sample-based distances, feature-space fidelity, likelihood summaries, OOD detection.

* :mod:`~edifice.metrics.distances` — exact W2 (Hungarian assignment), sliced W2, kernel MMD,
  energy distance; two point sets in, a 0-dim float64 tensor out.
* :mod:`~edifice.metrics.fidelity` — Fréchet distance (on any features; closed form for Gaussians),
  KID, precision / recall and density / coverage.
* :mod:`~edifice.metrics.features` — edifice's own feature networks for the 8x8 digits and MNIST
  (weights shipped with the package), on which ``edifice eval`` computes its image metrics.
* :mod:`~edifice.metrics.likelihood` — bits per dimension and NLL summaries with standard errors.
* :mod:`~edifice.metrics.modes` — modes covered and high-quality samples on mixtures with known centres.
* :mod:`~edifice.metrics.ood` — AUROC, FPR at 95% recall and ROC curves of anomaly scores.
"""

from edifice.metrics.distances import energy_distance, mmd, sliced_wasserstein, w2
from edifice.metrics.fidelity import (
    FrechetSampleWarning,
    density_coverage,
    feature_stats,
    fidelity_metrics,
    frechet_distance,
    gaussian_frechet_distance,
    kernel_distance,
    precision_recall,
)
from edifice.metrics.likelihood import bits_per_dim, nll_summary
from edifice.metrics.modes import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD, mode_coverage
from edifice.metrics.ood import auroc, detection_report, fpr_at_recall, roc_curve

__all__ = ["w2", "sliced_wasserstein", "mmd", "energy_distance", "bits_per_dim", "nll_summary", "mode_coverage",
           "EIGHT_GAUSSIANS_CENTRES", "EIGHT_GAUSSIANS_STD", "frechet_distance", "gaussian_frechet_distance",
           "feature_stats", "kernel_distance", "precision_recall", "density_coverage", "fidelity_metrics",
           "FrechetSampleWarning", "auroc", "fpr_at_recall", "roc_curve", "detection_report"]
