"""Mode coverage of samples from a mixture with known centres ("modes" and "high-quality samples").

The measure of the unrolled-GAN and VEEGAN papers for the 2-D ring / grid of Gaussians: each sample is
assigned to its nearest centre; it is **high quality** when that distance is at most ``radius`` (3)
standard deviations of the mixture's components; a mode is **covered** when it holds at least ``min_share``
(1%) of the high-quality samples. (With ``N`` high-quality samples and a uniform mixture of ``K`` modes a
covered mode holds about ``N / K``; the 1% threshold ignores modes reached by a few stray points only.)
The shares of the modes also show imbalance: a perfect sampler gives ``1 / K`` each.

Example:
    >>> import torch
    >>> from edifice.metrics.modes import mode_coverage, EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_STD
    >>> from edifice.data import toy2d
    >>> x = toy2d.sample("8gaussians", 2000, generator=torch.Generator().manual_seed(0))
    >>> r = mode_coverage(x, EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)
    >>> r["modes"], r["high_quality"] > 0.98
    (8, True)
    >>> mode_coverage(torch.zeros(10, 2), EIGHT_GAUSSIANS_CENTRES, std=EIGHT_GAUSSIANS_STD)["modes"]
    0

References:
    Unrolled Generative Adversarial Networks. Metz, Poole, Pfau, Sohl-Dickstein, 2017. arXiv:1611.02163.
    VEEGAN: Reducing Mode Collapse in GANs using Implicit Variational Learning. Srivastava, Valkov, Russell,
    Gutmann, Sutton, 2017. arXiv:1705.07761.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from edifice._checks import check_float, check_tensor

__all__ = ["mode_coverage", "EIGHT_GAUSSIANS_CENTRES", "EIGHT_GAUSSIANS_STD"]

#: Centres of ``edifice.data.toy2d``'s "8gaussians": ``4 (cos kπ/4, sin kπ/4) / 1.414``, ``k = 0..7`` (float64).
EIGHT_GAUSSIANS_CENTRES = torch.tensor(
    [[4.0 * math.cos(k * math.pi / 4) / 1.414, 4.0 * math.sin(k * math.pi / 4) / 1.414] for k in range(8)],
    dtype=torch.float64)
#: Standard deviation of each component of "8gaussians": ``0.5 / 1.414``.
EIGHT_GAUSSIANS_STD = 0.5 / 1.414


def mode_coverage(
    samples: torch.Tensor,
    centres: torch.Tensor,
    *,
    std: float,
    radius: float = 3.0,
    min_share: float = 0.01,
) -> dict[str, Any]:
    """Count the modes covered by ``samples`` and the fraction of high-quality samples.

    Args:
        samples: ``(N, D)`` points (non-finite rows count as low quality).
        centres: ``(K, D)`` mode centres.
        std: the components' standard deviation (> 0).
        radius: a sample is high quality within ``radius * std`` of its nearest centre (> 0).
        min_share: a mode is covered when it holds at least this fraction of the high-quality samples
            (in ``(0, 1]``).

    Returns:
        ``{"modes": int, "high_quality": float, "shares": (K,) float64 tensor}``: the number of covered
        modes, the fraction of samples that are high quality, and each mode's share of the high-quality
        samples (zeros when there are none).

    Raises:
        ValueError / TypeError: bad shapes (``samples`` and ``centres`` must be 2-D with the same ``D``,
            at least one of each), non-floating tensors, ``std`` / ``radius`` <= 0, ``min_share`` outside (0, 1].
    """
    check_tensor("samples", samples, ndim=2, floating=True)
    check_tensor("centres", centres, ndim=2, floating=True)
    if samples.shape[0] < 1 or centres.shape[0] < 1:
        raise ValueError(f"samples and centres must hold at least one point each, got {tuple(samples.shape)} "
                         f"and {tuple(centres.shape)}")
    if samples.shape[1] != centres.shape[1]:
        raise ValueError(f"samples must have centres' dimension {centres.shape[1]}, got shape {tuple(samples.shape)}")
    std = check_float("std", std, min=0.0, min_open=True)
    radius = check_float("radius", radius, min=0.0, min_open=True)
    min_share = check_float("min_share", min_share, min=0.0, max=1.0, min_open=True)
    x = samples.detach().to(torch.float64)
    c = centres.detach().to(device=x.device, dtype=torch.float64)
    dist = torch.cdist(x, c)  # (N, K)
    dist = torch.where(torch.isfinite(dist), dist, torch.full_like(dist, math.inf))
    nearest_d, nearest = dist.min(dim=1)  # (N,), (N,)
    good = nearest_d <= radius * std  # (N,)
    n_good = int(good.sum())
    counts = torch.bincount(nearest[good], minlength=c.shape[0]).to(torch.float64)  # (K,)
    shares = counts / n_good if n_good else counts
    modes = int((shares >= min_share).sum()) if n_good else 0
    return {"modes": modes, "high_quality": n_good / x.shape[0], "shares": shares.cpu()}
