r"""Autoregressive flows (MAF, IAF) and the planar and radial flows, as transforms for vectors ``(B, D)``.

Every transform maps data to noise with ``forward(x) -> (z, log|det ∂z/∂x|)`` and back with
``inverse(z) -> (x, log|det ∂x/∂z|)``.

**MAF** (Papamakarios et al. 2017, eq. 3-5): a MADE (:class:`~edifice.blocks.made.MADE`) gives a shift
``μ_i`` and a log-scale ``α_i`` from ``x_{<i}``::

    z_i = (x_i - μ_i(x_{<i})) exp(-α_i(x_{<i})),        log|det ∂z/∂x| = -Σ_i α_i

The density direction (``forward``) is one pass; sampling (``inverse``) is sequential, ``D`` passes of the
MADE. **IAF** (Kingma et al. 2016) is the mirror: the MADE reads the noise, ``x_i = z_i exp(α_i(z_{<i})) +
μ_i(z_{<i})``, so sampling is one pass and the density is sequential. :class:`InverseAutoregressive` is
exactly the inverse of an :class:`AffineAutoregressive`. The log-scale is soft-clamped,
``α = c · tanh(a / c)`` with ``c = 3``, so one layer never scales by more than ``e^3``.

**Planar flow** (Rezende & Mohamed 2015, eq. 10-12 and Appendix A.1), here in the density direction::

    z = x + û tanh(wᵀx + b),   log|det ∂z/∂x| = log|1 + ûᵀw (1 - tanh²(wᵀx + b))|
    û = u + (m(wᵀu) - wᵀu) w / ‖w‖²,   m(a) = -1 + softplus(a)

so ``wᵀû > -1`` and the map is invertible. Its inverse reduces to the scalar equation
``α + wᵀû tanh(α + b) = wᵀz`` for ``α = wᵀx`` (strictly increasing in ``α``); it is solved by 100 steps of
bisection on the bracket ``[wᵀz - |wᵀû| - 1, wᵀz + |wᵀû| + 1]`` (the bracket halves each step, so the root
is found to the float resolution: < 1e-12 absolute in float64), then one Newton step taken with the root
detached, which makes the result differentiable with the implicit-function gradient.

**Radial flow** (Rezende & Mohamed 2015, eq. 14 and Appendix A.2), in the density direction::

    z = x + β h(r) (x - x₀),   r = ‖x - x₀‖,   h(r) = 1 / (α + r),   α = softplus(a) > 0,  β = -α + softplus(b)
    log|det ∂z/∂x| = (D - 1) log(1 + β h) + log(1 + β h + β h'(r) r)

``β > -α`` makes it invertible. Its inverse solves ``ρ = ‖z - x₀‖ = r (1 + β / (α + r))`` for ``r``: this is
the quadratic ``r² + (α + β - ρ) r - αρ = 0`` with exactly one positive root, taken in closed form (with the
cancellation-free formula), so the inverse is exact to rounding.

Example:
    >>> import torch
    >>> from edifice.flows.autoregressive import maf
    >>> flow = maf((3,), transforms=2, hidden=16).double()
    >>> x = torch.randn(4, 3, dtype=torch.float64)
    >>> z, logdet = flow(x)
    >>> torch.allclose(flow.inverse(z)[0], x)
    True
    >>> flow.sample(5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 3])

References:
    Masked Autoregressive Flow for Density Estimation. Papamakarios, Pavlakou, Murray, 2017. arXiv:1705.07057.
    Improved Variational Inference with Inverse Autoregressive Flow. Kingma, Salimans, Jozefowicz, Chen,
    Sutskever, Welling, 2016. arXiv:1606.04934.
    Variational Inference with Normalizing Flows. Rezende, Mohamed, 2015. arXiv:1505.05770.
    MADE: Masked Autoencoder for Distribution Estimation. Germain, Gregor, Murray, Larochelle, 2015.
    arXiv:1502.03509.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_float, check_int, check_shape_tuple, check_tensor
from edifice.blocks.made import MADE
from edifice.flows.base import Flow

__all__ = [
    "Autoregressive", "AffineAutoregressive", "InverseAutoregressive", "Planar", "Radial",
    "maf", "iaf", "planar", "radial", "check_vector_shape",
]


def check_vector_shape(name: str, shape: Any) -> int:
    """Return ``D`` for a vector data shape ``(D,)``; these flows act on flat vectors only."""
    shape = check_shape_tuple(name, shape)
    if len(shape) != 1:
        raise ValueError(f"{name} must be a vector shape (D,), got {shape!r}; flatten images first")
    return shape[0]


def _check_input(name: str, x: Any, features: int) -> torch.Tensor:
    x = check_tensor(name, x, ndim=2, floating=True)
    if x.shape[1] != features:
        raise ValueError(f"{name} must have shape (B, {features}), got {tuple(x.shape)}")
    return x


class Autoregressive(nn.Module):
    """Base of the MADE-conditioned elementwise transforms (data -> noise in one pass, noise -> data in ``D``).

    Subclasses set ``params_per_feature`` and implement ``_elementwise(x, params, inverse) -> (y, ladj)``:
    the data-to-noise bijection of each coordinate given its parameters ``params (B, D, P)`` (``inverse=True``:
    its inverse), with the elementwise log|derivative| ``ladj (B, D)`` of the map it applied.
    """

    params_per_feature: int = 2

    def __init__(self, features: int, *, hidden: int = 64, depth: int = 2,
                 order: Sequence[int] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.features = check_int("features", features, min=1)
        self.made = MADE(features, hidden, depth, self.params_per_feature, order=order)

    def _elementwise(self, x: torch.Tensor, params: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x (B, D)`` -> noise ``z (B, D)`` and ``log|det ∂z/∂x| (B,)``, one MADE pass."""
        x = _check_input("x", x, self.features)
        z, ladj = self._elementwise(x, self.made(x), False)
        return z, ladj.sum(1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``z (B, D)`` -> data ``x (B, D)`` and ``log|det ∂x/∂z| (B,)``: ``D`` sequential MADE passes.

        After pass ``k`` the first ``k`` coordinates in the order are exact, so ``D`` passes suffice.
        """
        z = _check_input("z", z, self.features)
        x = torch.zeros_like(z)
        ladj = z.new_zeros(z.shape)
        for _ in range(self.features):
            x, ladj = self._elementwise(z, self.made(x), True)
        return x, ladj.sum(1)


class AffineAutoregressive(Autoregressive):
    """MAF layer: ``z_i = (x_i - μ_i) exp(-α_i)`` with ``(μ_i, α_i) = MADE(x)_i`` (Papamakarios et al. 2017).

    Args:
        features: ``D``.
        hidden: MADE hidden width.
        depth: MADE hidden layers.
        order: optional autoregressive order (a permutation, see :class:`~edifice.blocks.made.MADE`).
        max_log_scale: the soft clamp ``c`` on ``α = c tanh(a / c)``.
    """

    params_per_feature = 2

    def __init__(self, features: int, *, hidden: int = 64, depth: int = 2,
                 order: Sequence[int] | torch.Tensor | None = None, max_log_scale: float = 3.0) -> None:
        super().__init__(features, hidden=hidden, depth=depth, order=order)
        self.max_log_scale = check_float("max_log_scale", max_log_scale, min=0.0, min_open=True)

    def _elementwise(self, x, params, inverse):
        shift, raw = params.unbind(-1)  # (B, D) each
        c = self.max_log_scale
        log_scale = c * torch.tanh(raw / c)
        if inverse:
            return x * log_scale.exp() + shift, log_scale
        return (x - shift) * torch.exp(-log_scale), -log_scale


class InverseAutoregressive(nn.Module):
    """IAF layer (Kingma et al. 2016): the inverse of an :class:`AffineAutoregressive`.

    ``inverse(z)`` (sampling) is one MADE pass over the noise, ``x_i = z_i exp(α_i(z_{<i})) + μ_i(z_{<i})``;
    ``forward(x)`` (density) is sequential. Same arguments as :class:`AffineAutoregressive`.
    """

    def __init__(self, features: int, **kwargs: Any) -> None:
        super().__init__()
        self.maf = AffineAutoregressive(features, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x (B, D)`` -> noise ``z`` and ``log|det ∂z/∂x| (B,)`` (``D`` sequential passes)."""
        return self.maf.inverse(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``z (B, D)`` -> data ``x`` and ``log|det ∂x/∂z| (B,)`` (one pass)."""
        return self.maf.forward(z)


class Planar(nn.Module):
    """Planar flow ``z = x + û tanh(wᵀx + b)`` with the invertibility constraint ``wᵀû > -1`` (see module doc).

    Args:
        features: ``D``.
        bisection_steps: bisection steps of the iterative inverse (100 reaches float64 resolution).
    """

    def __init__(self, features: int, *, bisection_steps: int = 100) -> None:
        super().__init__()
        self.features = check_int("features", features, min=1)
        self.bisection_steps = check_int("bisection_steps", bisection_steps, min=1)
        bound = 1.0 / math.sqrt(features)
        self.u = nn.Parameter(torch.empty(features).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(features).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """The constrained ``û (D,)`` with ``wᵀû = -1 + softplus(wᵀu) > -1``."""
        wu = self.w @ self.u
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / self.w.pow(2).sum()

    def _logdet(self, a: torch.Tensor, wu: torch.Tensor) -> torch.Tensor:
        return torch.log1p(wu * (1 - torch.tanh(a + self.b).pow(2)))  # 1 + wᵀû h'(.) > 0 as wᵀû > -1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x (B, D)`` -> ``z = x + û tanh(wᵀx + b)`` and ``log|det ∂z/∂x| (B,)``."""
        x = _check_input("x", x, self.features)
        u = self.u_hat()
        a = x @ self.w  # (B,)
        z = x + torch.tanh(a + self.b)[:, None] * u  # (B, D)
        return z, self._logdet(a, self.w @ u)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``z (B, D)`` -> data ``x`` (bisection on ``α = wᵀx``, then a Newton step) and ``log|det ∂x/∂z|``."""
        z = _check_input("z", z, self.features)
        u = self.u_hat()
        wu, wz, b = self.w @ u, z @ self.w, self.b
        with torch.no_grad():
            lo, hi = wz - wu.abs() - 1, wz + wu.abs() + 1
            for _ in range(self.bisection_steps):
                mid = 0.5 * (lo + hi)
                above = mid + wu * torch.tanh(mid + b) > wz
                hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
            root = 0.5 * (lo + hi)
        # One Newton step from the detached root: same value, implicit-function gradient.
        g = root + wu * torch.tanh(root + b) - wz
        a = root - g / (1 + wu * (1 - torch.tanh(root + b).pow(2)))
        x = z - torch.tanh(a + b)[:, None] * u
        return x, -self._logdet(a, wu)


class Radial(nn.Module):
    """Radial flow ``z = x + β (x - x₀) / (α + ‖x - x₀‖)`` with ``β > -α`` (see module doc).

    Args:
        features: ``D``.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = check_int("features", features, min=1)
        self.x0 = nn.Parameter(torch.randn(features) * 0.1)
        self.raw_alpha = nn.Parameter(torch.zeros(()))
        self.raw_beta = nn.Parameter(torch.zeros(()))

    def alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``α = softplus(a) > 0`` and ``β = -α + softplus(b) > -α``."""
        alpha = F.softplus(self.raw_alpha)
        return alpha, -alpha + F.softplus(self.raw_beta)

    def _logdet(self, r: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        h = 1 / (alpha + r)
        bh = beta * h
        return (self.features - 1) * torch.log1p(bh) + torch.log1p(bh - beta * r * h.pow(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x (B, D)`` -> ``z`` and ``log|det ∂z/∂x| (B,)``."""
        x = _check_input("x", x, self.features)
        alpha, beta = self.alpha_beta()
        d = x - self.x0
        r = d.norm(dim=1)  # (B,)
        z = x + (beta / (alpha + r))[:, None] * d
        return z, self._logdet(r, alpha, beta)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``z (B, D)`` -> data ``x`` (closed-form radius) and ``log|det ∂x/∂z| (B,)``."""
        z = _check_input("z", z, self.features)
        alpha, beta = self.alpha_beta()
        y = z - self.x0
        rho = y.norm(dim=1)
        p = alpha + beta - rho  # r² + p r - αρ = 0, the positive root without cancellation:
        s = torch.sqrt(p.pow(2) + 4 * alpha * rho)
        r = torch.where(p > 0, 2 * alpha * rho / (p + s), (s - p) / 2)
        x = self.x0 + y / (1 + beta / (alpha + r))[:, None]
        return x, -self._logdet(r, alpha, beta)


def _autoregressive_flow(cls: type, shape: Any, transforms: int, **kwargs: Any) -> Flow:
    features = check_vector_shape("shape", shape)
    check_int("transforms", transforms, min=1)
    layers = []
    for k in range(transforms):
        order = list(range(features)) if k % 2 == 0 else list(range(features - 1, -1, -1))  # alternate orders
        layers.append(cls(features, order=order, **kwargs))
    return Flow(layers, (features,))


def maf(shape: Sequence[int], *, transforms: int = 5, hidden: int = 64, depth: int = 2,
        max_log_scale: float = 3.0) -> Flow:
    """A MAF: ``transforms`` :class:`AffineAutoregressive` layers whose orders alternate (forward, reversed).

    Args:
        shape: the vector data shape ``(D,)``.
        transforms: number of layers.
        hidden, depth: the MADE of each layer.
        max_log_scale: soft clamp on the log-scales.

    Returns:
        A :class:`~edifice.flows.base.Flow` (fast density, ``D``-pass sampling).
    """
    return _autoregressive_flow(AffineAutoregressive, shape, transforms, hidden=hidden, depth=depth,
                                max_log_scale=max_log_scale)


def iaf(shape: Sequence[int], *, transforms: int = 5, hidden: int = 64, depth: int = 2,
        max_log_scale: float = 3.0) -> Flow:
    """An IAF: ``transforms`` :class:`InverseAutoregressive` layers (fast sampling, ``D``-pass density).

    Same arguments as :func:`maf`.
    """
    return _autoregressive_flow(InverseAutoregressive, shape, transforms, hidden=hidden, depth=depth,
                                max_log_scale=max_log_scale)


def planar(shape: Sequence[int], layers: int = 8) -> Flow:
    """A stack of ``layers`` :class:`Planar` flows on vectors ``(D,)``."""
    features = check_vector_shape("shape", shape)
    check_int("layers", layers, min=1)
    return Flow([Planar(features) for _ in range(layers)], (features,))


def radial(shape: Sequence[int], layers: int = 8) -> Flow:
    """A stack of ``layers`` :class:`Radial` flows on vectors ``(D,)``."""
    features = check_vector_shape("shape", shape)
    check_int("layers", layers, min=1)
    return Flow([Radial(features) for _ in range(layers)], (features,))
