r"""MADE: a masked autoencoder whose outputs form an autoregressive model (Germain et al. 2015).

Every input ``x_j`` gets a degree ``m(j) ∈ {1..D}`` (its position in the autoregressive order), every
hidden unit ``k`` a degree ``m(k) ∈ {1..D-1}``. Weights are multiplied by binary masks built from the
degrees (their eq. 12 and 13)::

    hidden layers:   M[k, j] = 1[m(k) >= m(j)]
    output layer:    M[i, k] = 1[m_out(i) > m(k)]

so output ``i`` (with the degree of input ``i``) depends only on the inputs that come strictly before
it in the order: ``∂ y_i / ∂ x_j = 0`` whenever ``m(j) >= m(i)``. One forward pass gives every
conditional. Hidden degrees are assigned cyclically (deterministic, no RNG), which guarantees every
degree ``1..D-1`` is used when ``hidden >= D - 1``.

Example:
    >>> import torch
    >>> from edifice.blocks.made import MADE
    >>> made = MADE(3, hidden=16, depth=2, out_per_feature=2)
    >>> made(torch.randn(5, 3)).shape
    torch.Size([5, 3, 2])

References:
    MADE: Masked Autoencoder for Distribution Estimation. Germain, Gregor, Murray, Larochelle, 2015.
    arXiv:1502.03509.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_int, check_tensor

__all__ = ["MaskedLinear", "MADE", "check_order"]


def check_order(name: str, order: Sequence[int] | torch.Tensor | None, features: int) -> torch.Tensor:
    """Return an autoregressive order as a long tensor: a permutation of ``0..features-1``.

    ``order[j]`` is the position of feature ``j`` in the order (``None``: the identity, sequential).
    """
    if order is None:
        return torch.arange(features)
    if isinstance(order, torch.Tensor):
        order = order.tolist()
    if not isinstance(order, (list, tuple)) or any(isinstance(o, bool) or not isinstance(o, int) for o in order):
        raise TypeError(f"{name} must be a sequence of ints (a permutation), got {order!r}")
    if sorted(order) != list(range(features)):
        raise ValueError(f"{name} must be a permutation of 0..{features - 1}, got {list(order)!r}")
    return torch.tensor(order, dtype=torch.long)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed binary ``mask (out, in)`` (a buffer)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        check_tensor("mask", mask, shape=(out_features, in_features))
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)``."""
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder: ``x (B, D) -> params (B, D, out_per_feature)`` with ``params[:, i]`` a function of
    the inputs before ``i`` in the order only.

    Args:
        features: ``D``, the number of inputs (and of output groups).
        hidden: width of each hidden layer.
        depth: number of hidden layers (>= 1).
        out_per_feature: number of outputs per feature (e.g. 2 for a shift and a log-scale).
        order: optional permutation; ``order[j]`` is the position of input ``j`` in the autoregressive
            order (default: sequential ``0, 1, ..., D-1``).

    Raises:
        TypeError / ValueError: for an invalid option.
    """

    def __init__(
        self,
        features: int,
        hidden: int = 64,
        depth: int = 2,
        out_per_feature: int = 2,
        *,
        order: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        check_int("features", features, min=1)
        check_int("hidden", hidden, min=1)
        check_int("depth", depth, min=1)
        check_int("out_per_feature", out_per_feature, min=1)
        self.features, self.out_per_feature = features, out_per_feature
        order_t = check_order("order", order, features)
        self.register_buffer("order", order_t)
        deg_in = order_t + 1  # degrees 1..D
        # Hidden degrees cycle over 1..D-1 (all 1 when D == 1: then every output is a constant bias).
        deg_hidden = torch.arange(hidden) % max(1, features - 1) + 1
        layers: list[nn.Module] = []
        prev, width = deg_in, features
        for _ in range(depth):
            mask = (deg_hidden[:, None] >= prev[None, :]).float()
            layers += [MaskedLinear(width, hidden, mask), nn.ReLU()]
            prev, width = deg_hidden, hidden
        deg_out = deg_in.repeat_interleave(out_per_feature)  # output (i, p) -> flat index i * P + p
        layers.append(MaskedLinear(width, features * out_per_feature, (deg_out[:, None] > prev[None, :]).float()))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x (B, D)`` to ``(B, D, out_per_feature)``."""
        check_tensor("x", x, ndim=2, floating=True)
        if x.shape[1] != self.features:
            raise ValueError(f"x must have shape (B, {self.features}), got {tuple(x.shape)}")
        return self.net(x).unflatten(1, (self.features, self.out_per_feature))  # (B, D, P)
