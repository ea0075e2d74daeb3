r"""Out-of-distribution detection metrics on anomaly scores (pure functions of two score sets).

**Convention:** a HIGHER score means MORE anomalous (``-log p(x)``, a reconstruction error, an energy).
``scores_in`` are the scores of in-distribution (held-out) data, ``scores_out`` those of shifted data.

* :func:`auroc` — the area under the ROC curve of "OOD = positive": the probability that a random OOD
  example scores higher than a random in-distribution one, ties counting one half. It is the
  Mann-Whitney statistic ``U / (n_in n_out)`` with ``U = Σ_{i, j} [s_out_j > s_in_i] + ½ [s_out_j = s_in_i]``,
  computed from mid-ranks in ``O(N log N)``. 1: perfect separation; 0.5: chance (or identical sets);
  0: perfectly reversed (the model finds the shifted data *more* typical).
* :func:`fpr_at_recall` — "FPR at 95% TPR" as OpenOOD reports it, with the IN-distribution data as the
  positive class: the threshold ``τ`` is the smallest score that accepts (``score <= τ``) at least
  ``recall`` of the in-distribution data; the result is the share of OOD data also accepted. 0: the OOD
  data are all rejected while 95% of the real data pass; lower is better.
* :func:`roc_curve` — the ROC points of "OOD = positive" at every distinct threshold (scikit-learn's
  ``roc_curve(labels, scores, drop_intermediate=False)`` with OOD labelled 1); its trapezoidal area is
  :func:`auroc`.
* :func:`detection_report` — ``{"auroc", "fpr95", "n_in", "n_out"}`` in one call.

Scores may be ``±inf`` (an out-of-support point has ``-log p = inf``); NaN scores are an error, reported
with their count. Everything is computed in float64 on the CPU.

Example:
    >>> import torch
    >>> from edifice.metrics.ood import auroc, fpr_at_recall, detection_report
    >>> s_in, s_out = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.35, 0.5, 0.6])
    >>> auroc(s_in, s_out)  # 11 of the 12 (in, out) pairs are ordered: 0.35 < 0.4 is the one miss
    0.9166666666666666
    >>> fpr_at_recall(s_in, s_out)  # accepting 95% of 4 in-scores needs all 4: tau = 0.4 lets 0.35 in
    0.3333333333333333
    >>> detection_report(s_in, s_out)["n_out"]
    3

References:
    The meaning and use of the area under a receiver operating characteristic (ROC) curve. Hanley, McNeil,
    Radiology 1982 (AUROC = the Mann-Whitney probability).
    A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks. Hendrycks,
    Gimpel, 2017. arXiv:1610.02136 (AUROC and FPR at 95% TPR for OOD detection).
    OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution Detection. Zhang et al., 2023. arXiv:2306.09301.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edifice._checks import check_float

__all__ = ["auroc", "fpr_at_recall", "roc_curve", "detection_report"]


def _scores(name: str, value: Any) -> torch.Tensor:
    """A 1-D float64 CPU tensor of scores; TypeError / ValueError naming ``name``."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, list, tuple)):
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a tensor or a sequence of numbers, got {type(value).__name__}") from e
    else:
        raise TypeError(f"{name} must be a tensor, numpy array or sequence of numbers, got {type(value).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"{name} must be one score per example, shape (N,), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    nan = int(torch.isnan(t).sum())
    if nan:
        raise ValueError(f"{name} contains {nan} NaN score(s) of {t.numel()}; anomaly scores must be numbers "
                         "(+inf is allowed for out-of-support points)")
    return t


def _midranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` ``(N,)``, tied values sharing their mean rank (float64)."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    end = counts.cumsum(0).to(torch.float64)  # (U,) last rank of each distinct value
    mid = end - (counts.to(torch.float64) - 1.0) / 2.0  # (U,) mean of ranks end-count+1 .. end
    return mid[inverse]


def auroc(scores_in: Any, scores_out: Any) -> float:
    """Area under the ROC curve of telling ``scores_out`` (positives) from ``scores_in``.

    ``U / (n_in n_out)``, the Mann-Whitney statistic: the share of (in, out) pairs with the OOD example
    scored higher, ties counting 1/2.

    Args:
        scores_in: ``(N_in,)`` anomaly scores of in-distribution data (higher = more anomalous).
        scores_out: ``(N_out,)`` anomaly scores of out-of-distribution data.

    Returns:
        A float in ``[0, 1]``.

    Raises:
        TypeError: a score set that is not a tensor / array / sequence of real numbers.
        ValueError: a set that is empty, not 1-D or holds NaN (the message gives the count).
    """
    s_in, s_out = _scores("scores_in", scores_in), _scores("scores_out", scores_out)
    n_in, n_out = s_in.numel(), s_out.numel()
    ranks = _midranks(torch.cat([s_in, s_out]))  # (n_in + n_out,)
    u = float(ranks[n_in:].sum()) - n_out * (n_out + 1) / 2.0
    return u / (n_in * n_out)


def fpr_at_recall(scores_in: Any, scores_out: Any, recall: float = 0.95) -> float:
    """Share of OOD data accepted at the threshold that accepts ``recall`` of the in-distribution data.

    In-distribution data are the positive class (OpenOOD's "FPR@95TPR"): an example is accepted when its
    score is ``<= τ``, with ``τ`` the ``k``-th smallest in-distribution score and ``k`` the smallest count with
    ``k / n_in >= recall``. OOD scores equal to ``τ`` are accepted.

    Args:
        scores_in: ``(N_in,)`` anomaly scores of in-distribution data.
        scores_out: ``(N_out,)`` anomaly scores of out-of-distribution data.
        recall: the share of in-distribution data to accept, in ``(0, 1]``.

    Returns:
        A float in ``[0, 1]`` (lower is better).

    Raises:
        TypeError / ValueError: as :func:`auroc`, and for ``recall`` outside ``(0, 1]``.
    """
    recall = check_float("recall", recall, min=0.0, max=1.0, min_open=True)
    s_in, s_out = _scores("scores_in", scores_in), _scores("scores_out", scores_out)
    n_in = s_in.numel()
    tpr = np.arange(1, n_in + 1, dtype=np.float64) / n_in  # accepted share after k = 1..n_in in-scores
    k = min(int(np.searchsorted(tpr, recall, side="left")), n_in - 1)  # 0-based index of tau
    tau = torch.sort(s_in).values[k]
    return float((s_out <= tau).to(torch.float64).mean())


def roc_curve(scores_in: Any, scores_out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ROC curve of "OOD = positive" at every distinct score, from the strictest threshold down.

    At threshold ``θ`` an example is flagged as OOD when its score is ``>= θ``: ``fpr`` is the share of
    in-distribution data flagged, ``tpr`` the share of OOD data flagged. The first point is ``(0, 0)`` at
    ``θ = +inf`` (scikit-learn's convention), then one point per distinct score in decreasing order, ending at
    ``(1, 1)``. ``torch.trapezoid(tpr, fpr)`` equals :func:`auroc`.

    Args:
        scores_in: ``(N_in,)`` anomaly scores of in-distribution data.
        scores_out: ``(N_out,)`` anomaly scores of out-of-distribution data.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``(K + 1,)`` float64 with ``K`` the number of distinct scores.

    Raises:
        TypeError / ValueError: as :func:`auroc`.
    """
    s_in, s_out = _scores("scores_in", scores_in), _scores("scores_out", scores_out)
    values = torch.unique(torch.cat([s_in, s_out]), sorted=True).flip(0)  # (K,) descending
    # flagged counts at each threshold: scores >= theta
    n_in_flag = s_in.numel() - torch.searchsorted(torch.sort(s_in).values, values, right=False)  # (K,)
    n_out_flag = s_out.numel() - torch.searchsorted(torch.sort(s_out).values, values, right=False)  # (K,)
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.cat([zero, n_in_flag.to(torch.float64) / s_in.numel()])
    tpr = torch.cat([zero, n_out_flag.to(torch.float64) / s_out.numel()])
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), values])
    return fpr, tpr, thresholds


def detection_report(scores_in: Any, scores_out: Any) -> dict[str, Any]:
    """AUROC and FPR at 95% in-distribution recall of two score sets, with their sizes.

    Args:
        scores_in: ``(N_in,)`` anomaly scores of in-distribution data.
        scores_out: ``(N_out,)`` anomaly scores of out-of-distribution data.

    Returns:
        ``{"auroc": float, "fpr95": float, "n_in": int, "n_out": int}``.

    Raises:
        TypeError / ValueError: as :func:`auroc`.
    """
    s_in, s_out = _scores("scores_in", scores_in), _scores("scores_out", scores_out)
    return {"auroc": auroc(s_in, s_out), "fpr95": fpr_at_recall(s_in, s_out, 0.95),
            "n_in": int(s_in.numel()), "n_out": int(s_out.numel())}
