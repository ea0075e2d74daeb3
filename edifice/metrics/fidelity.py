r"""Distances between sets of features: Fréchet distance, kernel distance, precision/recall, density/coverage.

These are the sample-quality metrics of image generative models, computed on features of a
network (edifice's own feature networks, :mod:`edifice.metrics.features`, or any ``(N, D)``
features a user supplies). Computed on edifice's networks the Fréchet distance is reported as
``fd``, never as "FID": FID means Inception-v3 features, and numbers on other features are not
comparable with published FIDs.

* :func:`frechet_distance` — the 2-Wasserstein distance, squared, between the Gaussians fitted to
  two feature sets (Heusel et al. 2017); :func:`feature_stats` and
  :func:`gaussian_frechet_distance` are its two halves.
* :func:`kernel_distance` — the unbiased squared MMD with a cubic polynomial kernel ("KID",
  Bińkowski et al. 2018), preferred to FD at small sample sizes.
* :func:`precision_recall` — fidelity and diversity from k-NN balls (Kynkäänniemi et al. 2019).
* :func:`density_coverage` — their outlier-robust variants (Naeem et al. 2020).
* :func:`fidelity_metrics` — all of them as python floats, in one call (used by ``edifice eval``).

Like :mod:`edifice.metrics.distances`, every function takes tensors ``(N, ...)`` and ``(M, ...)``,
flattens each sample to a vector ``(N, D)``, computes in float64 on the first set's device and
returns a 0-dim float64 tensor (precision/recall and density/coverage: dicts of python floats).
Pairwise computations run in blocks of rows, so memory stays ``O(block x N)``, not ``O(N^2)``.
They are evaluation metrics; no gradient is promised through them.

Example:
    >>> import torch
    >>> from edifice.metrics.fidelity import frechet_distance, precision_recall
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(500, 4, generator=g)
    >>> round(float(frechet_distance(x, x + torch.tensor([3.0, 0.0, 0.0, 4.0]))), 6)  # |shift|^2
    25.0
    >>> precision_recall(x, x, k=3)
    {'precision': 1.0, 'recall': 1.0}
"""

from __future__ import annotations

import warnings

import torch

from edifice._checks import check_generator, check_int, check_tensor
from edifice.metrics.distances import _DIRECT_MAX_DIM, _F64, _pair, _points, _sq_dists

__all__ = [
    "FrechetSampleWarning",
    "feature_stats",
    "gaussian_frechet_distance",
    "frechet_distance",
    "kernel_distance",
    "precision_recall",
    "density_coverage",
    "fidelity_metrics",
]

_BLOCK = 1024  # rows per block in pairwise computations: a (1024, N) float64 matrix at a time
_PSD_RTOL = 1e-3  # eigenvalues above -_PSD_RTOL * (largest |eigenvalue|) count as round-off and are clamped
_ROUNDOFF = 1e-12  # k-NN balls: relative round-off of matrix-product distances counted as a tie
_KID_FULL_MAX = 5000  # fidelity_metrics: the exact U-statistic up to this many points per set, subsets above
_KID_SUBSETS, _KID_SUBSET_SIZE = 100, 1000  # ... and then Bińkowski et al.'s 100 subsets of 1000


class FrechetSampleWarning(UserWarning):
    """A Fréchet distance was computed from fewer samples than feature dimensions (``N <= D``)."""


# ------------------------------------------------------------------------------------ helpers


def _real_fake(real: object, fake: object, *, min_real: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``real (N, ...)`` and ``fake (M, ...)`` (as ``_pair`` does, with their own names)."""
    real, fake = _points("real", real, min_n=min_real), _points("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake must have the same number of features per point, got {real.shape[1]} and {fake.shape[1]}"
        )
    return real, fake.to(real.device)


def _centred(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets minus the real mean when distances come from matrix products (``D > 8``).

    Distances do not change, but the round-off of ``|a|^2 + |b|^2 - 2 a.b`` scales with the norms,
    and features (e.g. ReLU activations) often share a large common offset.
    """
    if real.shape[1] <= _DIRECT_MAX_DIM:
        return real, fake  # exact differences: leave the coordinates (and their ties) untouched
    mean = real.mean(0)
    return real - mean, fake - mean


def _blocks(n: int):
    for start in range(0, n, _BLOCK):
        yield start, min(start + _BLOCK, n)


def _block_sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor | None) -> torch.Tensor:
    """``_sq_dists(a, b)`` ``(A, B)``; for ``D > 8`` fused into one ``addmm`` with ``b``'s squared norms given.

    The same formula as :func:`edifice.metrics.distances._sq_dists`, without its temporaries: the
    ``(A, B)`` blocks here are large and each extra pass over them costs as much as the product.
    """
    if b_sq is None:
        return _sq_dists(a, b)
    d2 = torch.addmm(b_sq[None, :], a, b.T, alpha=-2.0)  # |b|^2 - 2 a.b, (A, B)
    return d2.add_(a.pow(2).sum(1)[:, None]).clamp_min_(0.0)


def _sq_norms(x: torch.Tensor) -> torch.Tensor | None:
    """Squared row norms ``(N,)`` when distances come from matrix products (``D > 8``), else None."""
    return x.pow(2).sum(1) if x.shape[1] > _DIRECT_MAX_DIM else None


def _knn_sq_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance of each row of ``x (N, D)`` to its ``k``-th nearest other row, shape ``(N,)``.

    The point itself is the 0-th neighbour (its distance is set to exactly 0), so the radius is the
    ``(k+1)``-th smallest distance of the row; duplicated points count as neighbours at distance 0.
    """
    out, x_sq = [], _sq_norms(x)
    for start, stop in _blocks(x.shape[0]):
        d2 = _block_sq_dists(x[start:stop], x, x_sq)  # (B, N)
        rows = torch.arange(stop - start, device=x.device)
        d2[rows, rows + start] = 0.0
        out.append(d2.topk(k + 1, dim=1, largest=False).values[:, k])  # (B,)
    return torch.cat(out)


def _ball_hits(
    points: torch.Tensor, centres: torch.Tensor, sq_radii: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which closed balls ``B(centres_i, radius_i)`` hold which points.

    Returns:
        ``(counts (P,), covered (C,))``: the number of balls that hold each point, and whether each
        ball holds at least one point.
    """
    counts = []
    covered = torch.zeros(centres.shape[0], dtype=torch.bool, device=centres.device)
    c_sq, p_sq = _sq_norms(centres), _sq_norms(points)
    if c_sq is not None:
        # Distances from matrix products carry round-off of order eps * (|p|^2 + |c|^2), and a
        # point's distance to a centre need not round as the centre's distance to it did when the
        # radius was measured: count points within that round-off of the sphere as on it (the balls
        # are closed), so that a ball always holds the neighbour that defined its radius.
        sq_radii = sq_radii + _ROUNDOFF * c_sq
    for start, stop in _blocks(points.shape[0]):
        d2 = _block_sq_dists(points[start:stop], centres, c_sq)  # (B, C)
        if p_sq is not None:
            d2.sub_(_ROUNDOFF * p_sq[start:stop, None])
        inside = d2 <= sq_radii[None, :]  # (B, C)
        counts.append(inside.sum(1))
        covered |= inside.any(0)
    return torch.cat(counts), covered


def _check_k(k: object, n: int, what: str) -> int:
    k = check_int("k", k, min=1)
    if k >= n:
        raise ValueError(f"k must be smaller than the number of {what} points, got k={k} with {n} {what} points")
    return k


# ---------------------------------------------------------------------------------- Fréchet


def feature_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and unbiased covariance of a feature set.

    .. math:: \mu = \frac1N \sum_i f_i, \qquad C = \frac{1}{N-1} \sum_i (f_i - \mu)(f_i - \mu)^\top

    Args:
        f: ``(N, ...)`` features, flattened to ``(N, D)``; ``N >= 2``.

    Returns:
        ``(mu (D,), cov (D, D))`` in float64; ``cov`` is exactly symmetric.

    Raises:
        ValueError: fewer than 2 points, non-finite values.
        TypeError: a non-tensor or non-real input.
    """
    f = _points("f", f, min_n=2)
    mu = f.mean(0)  # (D,)
    c = f - mu  # (N, D)
    cov = c.T @ c / (f.shape[0] - 1)  # (D, D)
    return mu, (cov + cov.T) / 2


def _gaussian(i: int, mu: object, cov: object) -> tuple[torch.Tensor, torch.Tensor]:
    mu = check_tensor(f"mu{i}", mu, ndim=1)
    cov = check_tensor(f"cov{i}", cov, shape=(mu.shape[0], mu.shape[0]))
    for name, t in ((f"mu{i}", mu), (f"cov{i}", cov)):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be a real-valued tensor, got dtype {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(t)).sum())} NaN or inf values")
    return mu.to(_F64), cov.to(_F64)


def _psd_sqrt(name: str, cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a covariance matrix from a symmetric eigendecomposition."""
    scale = float(cov.abs().max())
    if float((cov - cov.T).abs().max()) > _PSD_RTOL * scale:
        raise ValueError(f"{name} must be a symmetric matrix, got max |{name} - {name}.T| = "
                         f"{float((cov - cov.T).abs().max()):.3g} for entries up to {scale:.3g}")
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)  # (D,), (D, D)
    top = float(evals.abs().max())
    if float(evals.min()) < -_PSD_RTOL * top:
        raise ValueError(f"{name} must be positive semi-definite, got smallest eigenvalue {float(evals.min()):.3g} "
                         f"(largest {float(evals.max()):.3g})")
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T  # (D, D)


def gaussian_frechet_distance(
    mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor
) -> torch.Tensor:
    r"""Fréchet distance (squared 2-Wasserstein distance) between two Gaussians.

    .. math:: d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2}\big)

    Computed without a complex matrix square root: with symmetric square roots
    :math:`S_i = C_i^{1/2}` from eigendecompositions, :math:`\operatorname{tr}(C_1^{1/2} C_2
    C_1^{1/2})^{1/2}` is the sum of the singular values of :math:`S_1 S_2` (the nuclear norm), so

    .. math:: d^2 = \|\mu_1 - \mu_2\|^2 + \|S_1\|_F^2 + \|S_2\|_F^2 - 2\,\|S_1 S_2\|_*,

    which is ``>= 0`` in exact arithmetic (Hölder) and exactly ``|mu1 - mu2|^2`` up to round-off
    when ``C_1 = C_2``, even for rank-deficient covariances. Negative eigenvalues of round-off size
    (down to ``-1e-3`` times the largest) are clamped to 0, and so is a tiny negative result.

    Args:
        mu1: ``(D,)`` mean of the first Gaussian.
        cov1: ``(D, D)`` its covariance (symmetric positive semi-definite).
        mu2: ``(D,)`` mean of the second Gaussian.
        cov2: ``(D, D)`` its covariance.

    Returns:
        0-dim float64 tensor on ``mu1``'s device.

    Raises:
        ValueError: wrong shapes, different dimensions (naming both), non-finite values, a
            covariance that is not symmetric or clearly not positive semi-definite.
        TypeError: a non-tensor or non-real input.

    References:
        The Fréchet distance between multivariate normal distributions (Dowson & Landau, 1982),
        J. Multivariate Anal. 12. GANs Trained by a Two Time-Scale Update Rule Converge to a Local
        Nash Equilibrium (Heusel et al., 2017), arXiv:1706.08500.
    """
    mu1, cov1 = _gaussian(1, mu1, cov1)
    mu2, cov2 = _gaussian(2, mu2, cov2)
    if mu1.shape[0] != mu2.shape[0]:
        raise ValueError(f"mu1 and mu2 must have the same dimension, got {mu1.shape[0]} and {mu2.shape[0]}")
    device = mu1.device
    mu2, cov1, cov2 = mu2.to(device), cov1.to(device), cov2.to(device)
    s1, s2 = _psd_sqrt("cov1", cov1), _psd_sqrt("cov2", cov2)  # (D, D) each
    nuclear = torch.linalg.svdvals(s1 @ s2).sum()
    d2 = (mu1 - mu2).pow(2).sum() + s1.pow(2).sum() + s2.pow(2).sum() - 2.0 * nuclear
    return d2.clamp_min(0.0)


def _warn_few(name: str, n: int, d: int, stacklevel: int) -> None:
    if n <= d:
        warnings.warn(
            f"Fréchet distance from {n} samples of {name} for {d} feature dimensions (N <= D): the sample "
            f"covariance has rank at most N - 1 = {n - 1} < D = {d}, so it misses variance in some directions "
            f"and the distance is biased upward and unstable. Use many more samples than dimensions "
            f"(N >= 10 D at least), compare distances only at equal N, or use kernel_distance, which is unbiased.",
            FrechetSampleWarning,
            stacklevel=stacklevel + 1,
        )


def _frechet(x: torch.Tensor, y: torch.Tensor, names: tuple[str, str], stacklevel: int) -> torch.Tensor:
    for name, t in zip(names, (x, y)):
        _warn_few(name, t.shape[0], t.shape[1], stacklevel + 1)
    return gaussian_frechet_distance(*feature_stats(x), *feature_stats(y))


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Fréchet distance between the Gaussians fitted to two feature sets.

    ``gaussian_frechet_distance(*feature_stats(x), *feature_stats(y))``: the means and covariances
    are plug-in estimates, so the result is biased upward, by roughly ``O(D / N)`` (Chong & Forsyth
    2020); compare numbers only at the same sample sizes, and calibrate against the distance
    between two sets of real data (``fd_real`` in ``edifice eval``). When either set has
    ``N <= D`` points its covariance is rank-deficient: the distance is still returned, with a
    :class:`FrechetSampleWarning`. On Inception-v3 features this is FID; on any other features it
    is not, and edifice calls it ``fd``.

    Args:
        x: ``(N, ...)`` features, ``N >= 2``.
        y: ``(M, ...)`` features with the same number of features per point, ``M >= 2``.

    Returns:
        0-dim float64 tensor, ``>= 0``, in squared feature units.

    Raises:
        ValueError: fewer than 2 points in a set, different feature counts (naming both), non-finite values.
        TypeError: a non-tensor or non-real input.

    Warns:
        FrechetSampleWarning: ``N <= D`` or ``M <= D``.

    References:
        GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
        (Heusel et al., 2017), arXiv:1706.08500. Effectively Unbiased FID and Inception Score and
        where to find them (Chong & Forsyth, 2020), arXiv:1911.07023.
    """
    x, y = _pair(x, y, min_n=2)
    return _frechet(x, y, ("x", "y"), stacklevel=2)


# ----------------------------------------------------------------------------------- kernel


def _poly_sum(a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    """``sum_ij (a_i . b_j / d + 1)^3`` over all pairs, in blocks of rows of ``a``."""
    total = a.new_zeros(())
    one = a.new_ones(1)
    for start, stop in _blocks(a.shape[0]):
        total = total + torch.addmm(one, a[start:stop], b.T, alpha=1.0 / d).pow_(3).sum()  # (B, M) -> ()
    return total


def _kid(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    kxx = _poly_sum(x, x, d) - (x.pow(2).sum(1) / d + 1.0).pow(3).sum()  # off-diagonal sums
    kyy = _poly_sum(y, y, d) - (y.pow(2).sum(1) / d + 1.0).pow(3).sum()
    return kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2.0 * _poly_sum(x, y, d) / (n * m)


def kernel_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    subsets: int | None = None,
    subset_size: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Kernel distance ("KID"): the unbiased squared MMD with a cubic polynomial kernel.

    .. math::
        k(a, b) = \Big(\frac{a^\top b}{D} + 1\Big)^3, \qquad
        \mathrm{MMD}^2_u = \frac{\sum_{i \ne j} k(x_i, x_j)}{N(N-1)} + \frac{\sum_{i \ne j} k(y_i, y_j)}{M(M-1)}
            - \frac{2}{NM} \sum_{i, j} k(x_i, y_j)

    The estimator is unbiased at every sample size, so unlike the Fréchet distance its expected
    value does not depend on ``N``, and it is near 0 (possibly negative) for two samples of the
    same distribution. Without ``subsets`` the U-statistic runs over all pairs (``O(N^2 D)`` time,
    in blocks of rows); with ``subsets=S`` it is the mean of ``S`` estimates on random subsets of
    ``subset_size`` points of each set, drawn without replacement (Bińkowski et al. use 100 subsets
    of 1000), which bounds the cost at large ``N``.

    Args:
        x: ``(N, ...)`` features, ``N >= 2``.
        y: ``(M, ...)`` features with the same number of features per point, ``M >= 2``.
        subsets: number of random subsets to average, or ``None`` for all points at once.
        subset_size: points per subset (``2 <= subset_size <= min(N, M)``); default
            ``min(N, M, 1000)``. Only with ``subsets``.
        generator: draws the subsets.

    Returns:
        0-dim float64 tensor (squared kernel-feature units; can be slightly negative).

    Raises:
        ValueError: fewer than 2 points, different feature counts, non-finite values, a bad
            ``subsets`` / ``subset_size``, or ``subset_size`` without ``subsets``.
        TypeError: non-int ``subsets`` / ``subset_size``, a bad ``generator``.

    References:
        Demystifying MMD GANs (Bińkowski, Sutherland, Arbel & Gretton, 2018), arXiv:1801.01401.
    """
    check_generator(generator)
    x, y = _pair(x, y, min_n=2)
    if subsets is None:
        if subset_size is not None:
            raise ValueError(f"subset_size is used only together with subsets, got subset_size={subset_size} "
                             "and subsets=None")
        return _kid(x, y)
    subsets = check_int("subsets", subsets, min=1)
    n, m = x.shape[0], y.shape[0]
    if subset_size is None:
        subset_size = min(n, m, _KID_SUBSET_SIZE)
    subset_size = check_int("subset_size", subset_size, min=2)
    if subset_size > min(n, m):
        raise ValueError(f"subset_size must be at most the size of the smaller set, got {subset_size} "
                         f"with {n} points in x and {m} in y")
    gdev = generator.device if generator is not None else torch.device("cpu")
    total = x.new_zeros(())
    for _ in range(subsets):
        ix = torch.randperm(n, generator=generator, device=gdev)[:subset_size].to(x.device)
        iy = torch.randperm(m, generator=generator, device=gdev)[:subset_size].to(x.device)
        total = total + _kid(x[ix], y[iy])
    return total / subsets


# -------------------------------------------------------------------------- k-NN manifolds


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> dict[str, float]:
    r"""Improved precision and recall from k-nearest-neighbour balls.

    Each set's manifold is estimated as the union of balls around its points, each with the
    radius of the point's ``k``-th nearest neighbour within its own set. Then

    .. math::
        \text{precision} = \frac1M \sum_j \mathbb 1\big[\hat f_j \in \mathrm{manifold}(\text{real})\big],
        \qquad
        \text{recall} = \frac1N \sum_i \mathbb 1\big[r_i \in \mathrm{manifold}(\text{fake})\big].

    Precision is the share of generated samples that look real (fidelity); recall is the share of
    the real data the generator reaches (diversity). A model that drops modes keeps its precision
    and loses recall; one that blurs between modes does the opposite. Balls are closed
    (``distance <= radius``). Both are sensitive to outliers, which inflate the balls; see
    :func:`density_coverage`.

    Args:
        real: ``(N, ...)`` real features.
        fake: ``(M, ...)`` generated features, same number of features per point.
        k: neighbour defining the radii; ``1 <= k < min(N, M)`` (3 in the paper).

    Returns:
        ``{"precision": float, "recall": float}``, each in ``[0, 1]``.

    Raises:
        ValueError: ``k >= N`` or ``k >= M``, different feature counts, non-finite values.
        TypeError: non-int ``k``, a non-tensor input.

    References:
        Improved Precision and Recall Metric for Assessing Generative Models (Kynkäänniemi,
        Karras, Laine, Lehtinen & Aila, 2019), arXiv:1904.06991.
    """
    real, fake = _real_fake(real, fake)
    k = _check_k(k, real.shape[0], "real")
    _check_k(k, fake.shape[0], "fake")
    real, fake = _centred(real, fake)
    fake_in, _ = _ball_hits(fake, real, _knn_sq_radii(real, k))
    real_in, _ = _ball_hits(real, fake, _knn_sq_radii(fake, k))
    return {"precision": float((fake_in > 0).double().mean()), "recall": float((real_in > 0).double().mean())}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, *, k: int = 5) -> dict[str, float]:
    r"""Density and coverage: precision and recall made robust to outliers.

    Only the real data defines balls, ``B(r_i, \mathrm{NND}_k(r_i))`` with the distance to the
    ``k``-th nearest real neighbour:

    .. math::
        \text{density} = \frac{1}{kM} \sum_j \sum_i \mathbb 1\big[f_j \in B(r_i, \mathrm{NND}_k(r_i))\big],
        \qquad
        \text{coverage} = \frac1N \sum_i \mathbb 1\big[\exists j: f_j \in B(r_i, \mathrm{NND}_k(r_i))\big].

    Density counts how many real neighbourhoods each sample falls in; it is 1 in expectation when
    the two distributions agree, and can exceed 1 when samples crowd around dense real regions.
    Coverage is the share of real neighbourhoods that hold a sample; for identical distributions
    and ``N = M`` its expectation is close to ``1 - 2^{-k}`` (0.97 at ``k = 5``). A lone fake
    outlier cannot inflate either, since fake points define no balls.

    Args:
        real: ``(N, ...)`` real features.
        fake: ``(M, ...)`` generated features, same number of features per point.
        k: neighbour defining the radii; ``1 <= k < N`` (5 in the paper).

    Returns:
        ``{"density": float, "coverage": float}``; density in ``[0, N / k]``, coverage in ``[0, 1]``.

    Raises:
        ValueError: ``k >= N``, different feature counts, non-finite values.
        TypeError: non-int ``k``, a non-tensor input.

    References:
        Reliable Fidelity and Diversity Metrics for Generative Models (Naeem, Oh, Uh, Choi & Yoo,
        2020), arXiv:2002.09797.
    """
    real, fake = _real_fake(real, fake)
    k = _check_k(k, real.shape[0], "real")
    real, fake = _centred(real, fake)
    counts, covered = _ball_hits(fake, real, _knn_sq_radii(real, k))
    return {
        "density": float(counts.double().sum()) / (k * fake.shape[0]),
        "coverage": float(covered.double().mean()),
    }


def fidelity_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    k: int = 3,
    density_k: int = 5,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """All the feature-space metrics of two sets, as python floats (the call behind ``edifice eval``).

    ``fd`` is :func:`frechet_distance` (with its :class:`FrechetSampleWarning` when a set has no
    more points than dimensions); ``kid`` is :func:`kernel_distance`, exact when both sets have at
    most 5000 points and otherwise the mean over 100 random subsets of 1000 drawn with
    ``generator``; ``precision`` / ``recall`` use ``k`` and ``density`` / ``coverage`` use
    ``density_k`` (the papers' 3 and 5).

    Args:
        real: ``(N, ...)`` real features (e.g. a feature network's ``features`` of test images).
        fake: ``(M, ...)`` generated features, same number of features per point.
        k: neighbour for precision and recall; ``k < min(N, M)``.
        density_k: neighbour for density and coverage; ``density_k < N``.
        generator: draws KID's subsets at large ``N`` (unused otherwise).

    Returns:
        ``{"fd", "kid", "precision", "recall", "density", "coverage"}``, python floats.

    Raises:
        ValueError: fewer than 2 points, ``k`` too large for the sets, different feature counts
            (naming both), non-finite values.
        TypeError: non-tensor inputs, non-int ``k``, a bad ``generator``.
    """
    check_generator(generator)
    real, fake = _real_fake(real, fake, min_real=2)
    if fake.shape[0] < 2:
        raise ValueError(f"fake must hold at least 2 points, got {fake.shape[0]}")
    k = _check_k(k, real.shape[0], "real")
    _check_k(k, fake.shape[0], "fake")
    density_k = check_int("density_k", density_k, min=1)
    if density_k >= real.shape[0]:
        raise ValueError(f"density_k must be smaller than the number of real points, got density_k={density_k} "
                         f"with {real.shape[0]} real points")
    fd = _frechet(real, fake, ("real", "fake"), stacklevel=2)
    if max(real.shape[0], fake.shape[0]) <= _KID_FULL_MAX:
        kid = kernel_distance(real, fake)
    else:
        size = min(real.shape[0], fake.shape[0], _KID_SUBSET_SIZE)
        kid = kernel_distance(real, fake, subsets=_KID_SUBSETS, subset_size=size, generator=generator)
    out = {"fd": float(fd), "kid": float(kid)}
    out.update(precision_recall(real, fake, k=k))
    out.update(density_coverage(real, fake, k=density_k))
    return out
