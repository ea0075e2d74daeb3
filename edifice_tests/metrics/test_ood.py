"""AUROC, FPR at 95% recall and the ROC curve of edifice.metrics.ood: scikit-learn parity and hand checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.metrics.ood import auroc, detection_report, fpr_at_recall, roc_curve

sk = pytest.importorskip("sklearn.metrics")

# Scores from a small set of values, so that ties (within and across the two sets) are common.
_tied = st.lists(st.integers(-4, 4).map(float), min_size=1, max_size=40)
_real = st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=40)
_sets = st.one_of(st.tuples(_tied, _tied), st.tuples(_real, _real))


def _labelled(s_in, s_out):
    """OOD-positive labels and pooled scores, as scikit-learn takes them."""
    return np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]


@given(_sets)
def test_auroc_matches_sklearn(sets):
    s_in, s_out = sets
    y, s = _labelled(s_in, s_out)
    s64 = dict(dtype=torch.float64)
    got = auroc(torch.tensor(s_in, **s64), torch.tensor(s_out, **s64))
    assert got == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


@given(_sets)
def test_roc_curve_matches_sklearn_and_its_area_is_the_auroc(sets):
    s_in, s_out = sets
    y, s = _labelled(s_in, s_out)
    fpr, tpr, thr = roc_curve(s_in, s_out)
    fpr_sk, tpr_sk, thr_sk = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), fpr_sk, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), tpr_sk, atol=1e-12)
    np.testing.assert_array_equal(thr.numpy(), thr_sk)
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(auroc(s_in, s_out), abs=1e-12)


@given(_sets, st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99, 1.0]))
def test_fpr_at_recall_matches_sklearn_with_in_distribution_positive(sets, recall):
    # OpenOOD's FPR@95TPR: in-distribution is the positive class and a LOW anomaly score is "positive", so
    # scikit-learn sees labels 1 for ID and the negated scores; the answer is the FPR at the first threshold
    # whose TPR reaches the recall.
    s_in, s_out = sets
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    fpr_sk, tpr_sk, _ = sk.roc_curve(y, -np.r_[s_in, s_out], drop_intermediate=False)
    want = fpr_sk[np.searchsorted(tpr_sk, recall, side="left")]
    assert fpr_at_recall(s_in, s_out, recall) == pytest.approx(want, abs=1e-12)


def test_separable_reversed_and_identical_scores():
    s_in, s_out = torch.arange(10.0), 10.0 + torch.arange(5.0)
    assert auroc(s_in, s_out) == 1.0
    assert fpr_at_recall(s_in, s_out) == 0.0
    assert auroc(s_out, s_in) == 0.0
    assert fpr_at_recall(s_out, s_in) == 1.0
    assert auroc(s_in, s_in.clone()) == 0.5
    assert auroc(torch.ones(7), torch.ones(3)) == 0.5  # one big tie counts one half


def test_hand_computed_example():
    # Pairs (in, out) with out > in: 0.35 beats 0.1, 0.2, 0.3 (3 of 4); 0.5 and 0.6 beat all four: 11 / 12.
    # 95% of 4 in-scores needs all 4 accepted: tau = 0.4 also accepts 0.35, one OOD score in three.
    s_in, s_out = [0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6]
    assert auroc(s_in, s_out) == pytest.approx(11 / 12)
    assert fpr_at_recall(s_in, s_out) == pytest.approx(1 / 3)
    assert fpr_at_recall(s_in, s_out, recall=0.5) == 0.0  # tau = 0.2
    # a tie between sets counts one half: 0.3 vs 0.3
    assert auroc([0.1, 0.3], [0.3, 0.5]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    fpr, tpr, thr = roc_curve(s_in, s_out)
    assert thr.tolist() == [float("inf"), 0.6, 0.5, 0.4, 0.35, 0.3, 0.2, 0.1]
    assert fpr.tolist() == [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 1.0]
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])


def test_detection_report_and_infinite_scores():
    rep = detection_report(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([float("inf"), 5.0]))
    assert rep == {"auroc": 1.0, "fpr95": 0.0, "n_in": 3, "n_out": 2}
    assert auroc([float("-inf"), 0.0], [float("inf")]) == 1.0


def test_accepts_numpy_and_any_float_dtype():
    a = np.array([0.0, 1.0], dtype=np.float32)
    assert auroc(a, torch.tensor([2.0], dtype=torch.float16)) == 1.0


def test_nan_scores_raise_with_their_count():
    with pytest.raises(ValueError, match=r"scores_out contains 2 NaN score\(s\) of 3"):
        auroc(torch.zeros(4), torch.tensor([float("nan"), 1.0, float("nan")]))
    with pytest.raises(ValueError, match=r"scores_in contains 1 NaN"):
        detection_report([float("nan")], [1.0])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"scores_in must not be empty"):
        auroc(torch.zeros(0), torch.ones(2))
    with pytest.raises(ValueError, match=r"scores_out must be one score per example, shape \(N,\), got shape \(2, 2\)"):
        roc_curve(torch.zeros(3), torch.ones(2, 2))
    with pytest.raises(TypeError, match=r"scores_in must be a tensor, numpy array or sequence of numbers, got str"):
        auroc("0.5", [1.0])
    with pytest.raises(TypeError, match=r"scores_out must hold real numbers"):
        auroc([0.0], torch.tensor([True]))
    with pytest.raises(ValueError, match=r"recall"):
        fpr_at_recall([0.0], [1.0], recall=0.0)
    with pytest.raises(ValueError, match=r"recall"):
        fpr_at_recall([0.0], [1.0], recall=1.5)
