r"""Neural spline flows: monotone rational-quadratic splines in coupling and autoregressive transforms.

A rational-quadratic spline (Durkan et al. 2019, Sec. 3.1, after Gregory & Delbourgo 1982) maps
``[-B, B]`` onto itself through ``K`` bins with knots ``(x^k, y^k)`` and positive knot derivatives ``δ^k``.
In bin ``k``, with ``ξ = (x - x^k) / w_k``, ``s_k = h_k / w_k`` (their eq. 4 and 5)::

    y = y^k + h_k (s_k ξ² + δ^k ξ(1-ξ)) / (s_k + (δ^{k+1} + δ^k - 2 s_k) ξ(1-ξ))
    dy/dx = s_k² (δ^{k+1} ξ² + 2 s_k ξ(1-ξ) + δ^k (1-ξ)²) / (s_k + (δ^{k+1} + δ^k - 2 s_k) ξ(1-ξ))²

and the inverse is the root of a quadratic in ``ξ`` (their eq. 6-8, taken in the cancellation-free form
``ξ = 2c / (-b - √(b² - 4ac))``). Outside ``[-B, B]`` the map is the identity ("linear tails"), and the
boundary derivatives are fixed to 1 so the map is C¹ there.

:func:`rq_spline` takes *unconstrained* parameters: widths and heights ``(..., K)`` go through a softmax
(plus a minimum bin size), the ``K - 1`` interior derivatives through ``min_derivative + softplus``.

* :class:`SplineCoupling` — the coupling version (RQ-NSF (C)): one half of the features is left unchanged
  and a network of it outputs the ``3K - 1`` spline parameters of each coordinate of the other half.
* :class:`SplineAutoregressive` — the autoregressive version (RQ-NSF (AR)): a MADE outputs the parameters;
  the density is one pass, sampling ``D`` passes.
* :func:`nsf` — a stack of either kind with alternating halves / orders.

Example:
    >>> import torch
    >>> from edifice.flows.spline import nsf, rq_spline
    >>> x = torch.linspace(-6, 6, 5, dtype=torch.float64)
    >>> p = torch.zeros(5, 4, dtype=torch.float64)
    >>> y, ladj = rq_spline(x, p, p, p[:, :3], bound=5.0)  # equal bins, unit-ish derivatives
    >>> y.shape, bool((y.diff() > 0).all())
    (torch.Size([5]), True)
    >>> flow = nsf((2,), transforms=2, bins=4, hidden=16).double()
    >>> z, logdet = flow(torch.randn(3, 2, dtype=torch.float64)); logdet.shape
    torch.Size([3])

References:
    Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019. arXiv:1906.04032.
    Piecewise rational quadratic interpolation to monotonic data. Gregory, Delbourgo, 1982. IMA J. Numer. Anal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_choice, check_float, check_int, check_tensor
from edifice.blocks.mlp import MLP
from edifice.flows.autoregressive import Autoregressive, _check_input, check_vector_shape
from edifice.flows.base import Flow

__all__ = ["rq_spline", "SplineCoupling", "SplineAutoregressive", "nsf"]


def _knots(raw: torch.Tensor, bound: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Knot positions ``(..., K+1)`` from ``-bound`` to ``bound`` and bin sizes ``(..., K)``."""
    k = raw.shape[-1]
    size = min_size + (1 - min_size * k) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(size, dim=-1), (1, 0))
    knots = 2 * bound * knots - bound
    knots = torch.cat([knots[..., :1] * 0 - bound, knots[..., 1:-1], knots[..., -1:] * 0 + bound], dim=-1)
    return knots, knots.diff(dim=-1)


def rq_spline(
    x: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    *,
    bound: float = 5.0,
    inverse: bool = False,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline on ``[-bound, bound]`` with identity tails, elementwise.

    Args:
        x: inputs ``(...)`` (outputs ``y`` when ``inverse=True``).
        widths: unconstrained bin widths ``(..., K)``.
        heights: unconstrained bin heights ``(..., K)``.
        derivatives: unconstrained interior knot derivatives ``(..., K - 1)`` (the two boundary ones are 1).
        bound: the spline acts on ``[-bound, bound]``.
        inverse: apply the inverse map.
        min_bin_width, min_bin_height: each bin gets at least this fraction of the interval
            (0 allowed; ``K · min < 1``).
        min_derivative: ``δ = min_derivative + softplus(derivatives)`` (0 allowed).

    Returns:
        ``(y, logabsdet)``, both ``(...)``: the map and ``log|dy/dx|`` of the map applied (of the inverse when
        ``inverse=True``).

    Raises:
        ValueError / TypeError: on mismatched shapes or invalid options.
    """
    check_tensor("x", x, floating=True)
    check_tensor("widths", widths, shape=tuple(x.shape) + (None,), floating=True)
    k = widths.shape[-1]
    check_tensor("heights", heights, shape=tuple(x.shape) + (k,), floating=True)
    check_tensor("derivatives", derivatives, shape=tuple(x.shape) + (k - 1,), floating=True)
    bound = check_float("bound", bound, min=0.0, min_open=True)
    for name, v in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if check_float(name, v, min=0.0) * k >= 1:
            raise ValueError(f"{name} times the number of bins must be < 1, got {v} * {k}")
    min_derivative = check_float("min_derivative", min_derivative, min=0.0)

    xs, w = _knots(widths, bound, min_bin_width)  # (..., K+1), (..., K)
    ys, h = _knots(heights, bound, min_bin_height)
    d = F.pad(min_derivative + F.softplus(derivatives), (1, 1), value=1.0)  # (..., K+1)

    inside = (x >= -bound) & (x <= bound)
    xc = torch.where(inside, x, torch.zeros_like(x))
    knots_in = ys if inverse else xs
    idx = (xc[..., None] >= knots_in[..., 1:-1]).sum(-1, keepdim=True)  # bin index (..., 1) in [0, K-1]

    def take(t: torch.Tensor) -> torch.Tensor:
        return t.gather(-1, idx).squeeze(-1)

    x_k, w_k, y_k, h_k = take(xs), take(w), take(ys), take(h)
    d_k, d_k1 = take(d), take(d[..., 1:])
    s = h_k / w_k
    if inverse:
        dy = xc - y_k
        c1 = d_k + d_k1 - 2 * s
        a = h_k * (s - d_k) + dy * c1
        b = h_k * d_k - dy * c1
        c = -s * dy
        disc = (b.pow(2) - 4 * a * c).clamp(min=0)
        xi = (2 * c / (-b - disc.sqrt())).clamp(0, 1)
        out = x_k + xi * w_k
    else:
        xi = (xc - x_k) / w_k
        out = None
    one = xi * (1 - xi)
    den = s + (d_k + d_k1 - 2 * s) * one
    if out is None:
        out = y_k + h_k * (s * xi.pow(2) + d_k * one) / den
    ladj = 2 * torch.log(s) + torch.log(d_k1 * xi.pow(2) + 2 * s * one + d_k * (1 - xi).pow(2)) - 2 * torch.log(den)
    if inverse:
        ladj = -ladj
    return torch.where(inside, out, x), torch.where(inside, ladj, torch.zeros_like(ladj))


def _split(params: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return params[..., :bins], params[..., bins:2 * bins], params[..., 2 * bins:]


class SplineCoupling(nn.Module):
    """Rational-quadratic coupling layer (RQ-NSF (C), Durkan et al. 2019).

    The features where ``parity`` selects the *first* half (``parity=0``: ``x[:, :D//2]``, ``parity=1``:
    ``x[:, D//2:]``) pass unchanged and condition an :class:`~edifice.blocks.mlp.MLP` that outputs
    ``3K - 1`` spline parameters for each coordinate of the other half.

    Args:
        features: ``D >= 2``.
        bins: ``K``, the number of spline bins.
        bound: the spline interval ``[-bound, bound]`` (identity outside).
        hidden, depth: the conditioner MLP.
        parity: 0 or 1, which half conditions.
    """

    def __init__(self, features: int, *, bins: int = 8, bound: float = 5.0, hidden: int = 64, depth: int = 2,
                 parity: int = 0) -> None:
        super().__init__()
        self.features = check_int("features", features, min=1)
        if features < 2:
            raise ValueError(f"features must be >= 2 for a coupling layer (it splits them), got {features}")
        self.bins = check_int("bins", bins, min=2)
        self.bound = check_float("bound", bound, min=0.0, min_open=True)
        self.parity = check_choice("parity", parity, (0, 1))
        half = features // 2
        idx = torch.arange(features)
        cond = idx < half if parity == 0 else idx >= half
        self.register_buffer("cond_idx", idx[cond])
        self.register_buffer("trans_idx", idx[~cond])
        n_c, n_t = len(self.cond_idx), len(self.trans_idx)
        self.net = MLP(n_c, n_t * (3 * bins - 1), hidden=hidden, depth=depth, act="relu")

    def _couple(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        xc, xt = x[:, self.cond_idx], x[:, self.trans_idx]
        params = self.net(xc).unflatten(1, (len(self.trans_idx), 3 * self.bins - 1))  # (B, Dt, 3K-1)
        yt, ladj = rq_spline(xt, *_split(params, self.bins), bound=self.bound, inverse=inverse)
        y = x.clone()
        y[:, self.trans_idx] = yt
        return y, ladj.sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data ``x (B, D)`` -> ``z (B, D)`` and ``log|det ∂z/∂x| (B,)``."""
        return self._couple(_check_input("x", x, self.features), False)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``z (B, D)`` -> ``x (B, D)`` and ``log|det ∂x/∂z| (B,)``."""
        return self._couple(_check_input("z", z, self.features), True)


class SplineAutoregressive(Autoregressive):
    """Rational-quadratic autoregressive layer (RQ-NSF (AR)): a MADE gives each coordinate's ``3K - 1`` spline
    parameters from the coordinates before it; density one pass, sampling ``D`` passes.

    Args:
        features: ``D``.
        bins: ``K``.
        bound: the spline interval ``[-bound, bound]``.
        hidden, depth: the MADE.
        order: optional autoregressive order (a permutation).
    """

    def __init__(self, features: int, *, bins: int = 8, bound: float = 5.0, hidden: int = 64, depth: int = 2,
                 order: Sequence[int] | torch.Tensor | None = None) -> None:
        self.bins = check_int("bins", bins, min=2)
        self.params_per_feature = 3 * bins - 1
        super().__init__(features, hidden=hidden, depth=depth, order=order)
        self.bound = check_float("bound", bound, min=0.0, min_open=True)

    def _elementwise(self, x, params, inverse):
        return rq_spline(x, *_split(params, self.bins), bound=self.bound, inverse=inverse)


def nsf(shape: Sequence[int], *, transforms: int = 4, bins: int = 8, bound: float = 5.0, hidden: int = 64,
        depth: int = 2, kind: str = "coupling") -> Flow:
    """A neural spline flow on vectors ``(D,)``.

    Args:
        shape: ``(D,)`` (``D >= 2`` for ``kind="coupling"``).
        transforms: number of spline layers; halves (coupling) or orders (autoregressive) alternate.
        bins, bound: the splines.
        hidden, depth: the conditioner networks.
        kind: ``"coupling"`` (:class:`SplineCoupling`) or ``"autoregressive"`` (:class:`SplineAutoregressive`).

    Returns:
        A :class:`~edifice.flows.base.Flow`.
    """
    features = check_vector_shape("shape", shape)
    check_int("transforms", transforms, min=1)
    check_choice("kind", kind, ("coupling", "autoregressive"))
    layers: list[Any] = []
    for k in range(transforms):
        if kind == "coupling":
            layers.append(SplineCoupling(features, bins=bins, bound=bound, hidden=hidden, depth=depth, parity=k % 2))
        else:
            order = list(range(features)) if k % 2 == 0 else list(range(features - 1, -1, -1))
            layers.append(SplineAutoregressive(features, bins=bins, bound=bound, hidden=hidden, depth=depth,
                                               order=order))
    return Flow(layers, (features,))
