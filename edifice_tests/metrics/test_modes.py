"""Mode coverage: exact counts on hand-placed points, the 8gaussians constants, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edifice.data import toy2d
from edifice.metrics.modes import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD, mode_coverage

C = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)


def test_constants_match_the_toy_set():
    assert EIGHT_GAUSSIANS_CENTRES.shape == (8, 2) and EIGHT_GAUSSIANS_CENTRES.dtype == torch.float64
    radius = EIGHT_GAUSSIANS_CENTRES.norm(dim=1)
    torch.testing.assert_close(radius, torch.full((8,), 4 / 1.414, dtype=torch.float64))
    assert EIGHT_GAUSSIANS_STD == pytest.approx(0.5 / 1.414)
    x = toy2d.sample("8gaussians", 20000, generator=torch.Generator().manual_seed(0)).double()
    d, k = torch.cdist(x, EIGHT_GAUSSIANS_CENTRES).min(dim=1)
    # residuals from the nearest centre have the stated std per coordinate (2-D: E d² = 2 σ²)
    assert d.square().mean().sqrt().item() == pytest.approx(math.sqrt(2) * EIGHT_GAUSSIANS_STD, rel=0.02)
    r = mode_coverage(x, EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)
    assert r["modes"] == 8 and r["high_quality"] > 0.985  # P(chi_2 <= 9) = 1 - e^{-4.5} = 0.989
    torch.testing.assert_close(r["shares"], torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.01, rtol=0)


def test_hand_placed_points():
    x = torch.tensor([[0.1, 0.0], [0.0, -0.2], [10.0, 0.5], [5.0, 5.0], [0.0, 13.5]], dtype=torch.float64)
    r = mode_coverage(x, C, std=1.0)  # radius 3: [0, 13.5] is 3.5 away from (0, 10): low quality
    assert r["modes"] == 2 and r["high_quality"] == pytest.approx(3 / 5)
    torch.testing.assert_close(r["shares"], torch.tensor([2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    assert mode_coverage(x, C, std=1.0, radius=3.6)["modes"] == 3
    # the share rule: a mode needs min_share of the high-quality samples
    many = torch.cat([torch.zeros(199, 2, dtype=torch.float64), torch.tensor([[10.0, 0.0]], dtype=torch.float64)])
    assert mode_coverage(many, C, std=1.0)["modes"] == 1  # 1 / 200 = 0.5% < 1%
    assert mode_coverage(many, C, std=1.0, min_share=0.005)["modes"] == 2


def test_no_high_quality_samples_and_non_finite_rows():
    far = torch.full((4, 2), 100.0)
    r = mode_coverage(far, C, std=1.0)
    assert r["modes"] == 0 and r["high_quality"] == 0.0 and torch.equal(r["shares"], torch.zeros(3, dtype=torch.float64))
    x = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [float("inf"), 1.0], [10.0, 0.0]])
    r = mode_coverage(x, C, std=1.0)
    assert r["modes"] == 2 and r["high_quality"] == 0.5


@settings(max_examples=20, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=3, max_size=3), seed=st.integers(0, 1000))
def test_counts_match_a_brute_force(counts, seed):
    g = torch.Generator().manual_seed(seed)
    pts = [C[k] + 0.5 * torch.randn(n, 2, generator=g, dtype=torch.float64) for k, n in enumerate(counts)]
    x = torch.cat(pts + [torch.full((1, 2), 50.0, dtype=torch.float64)])
    r = mode_coverage(x, C, std=1.0, radius=4.0)
    # brute force: nearest centre by a python loop
    good = {k: 0 for k in range(3)}
    for p in x.tolist():
        dists = [math.dist(p, c) for c in C.tolist()]
        k = min(range(3), key=lambda i: dists[i])
        if dists[k] <= 4.0:
            good[k] += 1
    total = sum(good.values())
    assert r["high_quality"] == pytest.approx(total / len(x))
    assert r["modes"] == sum(1 for v in good.values() if total and v / total >= 0.01)


def test_errors():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"samples must have centres' dimension 2, got shape \(3, 3\)"):
        mode_coverage(torch.zeros(3, 3), C, std=1.0)
    with pytest.raises(ValueError, match="samples must have 2 dimensions"):
        mode_coverage(torch.zeros(3), C, std=1.0)
    with pytest.raises(TypeError, match="samples must be a floating-point tensor"):
        mode_coverage(torch.zeros(3, 2, dtype=torch.long), C, std=1.0)
    with pytest.raises(TypeError, match="centres must be a torch.Tensor"):
        mode_coverage(x, [[0.0, 0.0]], std=1.0)
    with pytest.raises(ValueError, match="at least one point each"):
        mode_coverage(torch.zeros(0, 2), C, std=1.0)
    with pytest.raises(ValueError, match=r"std must be in \(0.0, inf\], got 0.0"):
        mode_coverage(x, C, std=0.0)
    with pytest.raises(ValueError, match=r"radius must be in \(0.0, inf\], got -1.0"):
        mode_coverage(x, C, std=1.0, radius=-1.0)
    with pytest.raises(ValueError, match=r"min_share must be in \(0.0, 1.0\], got 1.5"):
        mode_coverage(x, C, std=1.0, min_share=1.5)
