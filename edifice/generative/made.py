r"""MADE as a density model over binary vectors and binarised images (Germain et al. 2015).

A binary vector ``b ∈ {0, 1}^D`` (an image is flattened) is modelled autoregressively in an order ``o`` (a
permutation; ``order[j]`` is the position of ``b_j``), with Bernoulli conditionals given by one masked
autoencoder pass (Germain et al. eq. 1, 4 and 12-13 for the masks)::

    p(b | y) = ∏_{j} p(b_j | b_{o < o(j)}, y),      p(b_j = 1 | ·) = σ(ℓ_j(b, y)),

where the masks of :class:`edifice.blocks.made.MADE` ensure ``ℓ_j`` depends only on the bits before ``j`` in
the order. The input to the network is the model-space vector ``2b - 1``.

**Several masks** (``num_masks = K > 1``, the paper's Sec. 3.3 / order-agnostic training): ``K`` input orders
(the first is ``order``, the others random permutations drawn from ``mask_seed``) share one set of weights.
:func:`loss` trains one mask per call, drawn with ``generator`` (as the paper samples a mask per minibatch);
:func:`log_prob` is the *ensemble* ``log (1/K) Σ_k p_k(b)`` — a mixture of normalised models, so still an
exact, normalised pmf — and :func:`sample` draws from that mixture (a mask per sample, then ``D`` sequential
calls). A label ``y`` (``num_classes``) adds a learned bias to the first hidden layer, which keeps the
autoregressive property (the label is not one of the modelled bits).

**Data.** Model space: binary images are ``{-1, 1}``; :func:`loss` and :func:`log_prob` binarise ``x > 0``
by default; :func:`sample` returns ``2b - 1``.

Example:
    >>> import torch
    >>> from edifice.generative import made
    >>> net = made.build(data_shape=(3,), hidden=8)
    >>> states = torch.tensor([[a, b, c] for a in (-1., 1.) for b in (-1., 1.) for c in (-1., 1.)])
    >>> round(float(made.log_prob(net, states).exp().sum()), 5)  # an exact, normalised pmf
    1.0

References:
    MADE: Masked Autoencoder for Distribution Estimation. Germain, Gregor, Murray, Larochelle, 2015.
    arXiv:1502.03509.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randint
from edifice.blocks.embedding import LabelEmbedding
from edifice.blocks.made import MADE, check_order
from edifice.generative._common import resolve_device_dtype
from edifice.generative.pixelcnn import check_labels, from_codes, to_codes

__all__ = ["BinaryMADE", "build", "log_prob", "loss", "sample"]


class BinaryMADE(nn.Module):
    """One MADE with ``K`` mask sets (one per input order, shared weights): Bernoulli logits for ``D`` bits.

    ``forward(x, y=None, *, mask=0)``: ``x (B, *data_shape)`` model-space input -> logits ``(B, *data_shape)``
    of ``p(b_j = 1 | b_{<j}, y)`` under mask ``mask``. ``orders`` is the ``(K, D)`` buffer of input orders.

    Args:
        data_shape: the shape of one data point (``D = prod(data_shape)``).
        hidden, depth: width and number of hidden layers.
        orders: ``K`` permutations of ``0..D-1``.
        num_classes: labels for class conditioning (``y = num_classes`` is the null label), or None.
    """

    def __init__(self, data_shape: tuple[int, ...], *, hidden: int, depth: int, orders: Sequence[torch.Tensor],
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.features = math.prod(self.data_shape)
        self.made = MADE(self.features, hidden, depth, out_per_feature=1, order=orders[0])
        # One set of weights, K sets of masks (Germain et al. Sec. 3.3): the masks of order k are those of a
        # MADE built with that order; stacked per layer as buffers (K, out, in).
        others = [MADE(self.features, hidden, depth, out_per_feature=1, order=o) for o in orders[1:]]
        linears = [i for i, layer in enumerate(self.made.net) if isinstance(layer, nn.Linear)]
        for n, i in enumerate(linears):
            self.register_buffer(f"masks_{n}", torch.stack([m.net[i].mask for m in [self.made, *others]]))
        self._linears = linears
        self.register_buffer("orders", torch.stack([self.made.order, *(m.order for m in others)]))  # (K, D)
        self.label = LabelEmbedding(num_classes, hidden) if num_classes is not None else None

    @property
    def num_masks(self) -> int:
        return self.orders.shape[0]

    def logits_flat(self, x: torch.Tensor, y: torch.Tensor | None = None, *, mask: int = 0) -> torch.Tensor:
        """``x (B, D)`` -> logits ``(B, D)`` under mask ``mask``."""
        h = x
        for n, i in enumerate(self._linears):
            layer = self.made.net[i]
            h = F.linear(h, layer.weight * getattr(self, f"masks_{n}")[mask], layer.bias)  # (B, width)
            if n == 0 and self.label is not None:
                y = torch.full((x.shape[0],), self.label.null_label, device=x.device) if y is None else y
                h = h + self.label(y)  # the label may reach every hidden unit
            if n < len(self._linears) - 1:
                h = F.relu(h)
        return h  # (B, D)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, mask: int = 0) -> torch.Tensor:
        """``x (B, *data_shape)`` -> logits ``(B, *data_shape)``."""
        return self.logits_flat(x.flatten(1), y, mask=mask).reshape(x.shape)


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    hidden: int = 128,
    depth: int = 2,
    num_masks: int = 1,
    order: Sequence[int] | torch.Tensor | None = None,
    mask_seed: int = 0,
) -> BinaryMADE:
    """Build a MADE density model over binary data of shape ``(D,)`` or ``(C, H, W)`` (flattened).

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)``.
        num_classes: labels for class conditioning, or None.
        hidden: width of each hidden layer (use ``hidden >= D - 1`` so every degree is present).
        depth: number of hidden layers.
        num_masks: ``K`` input orders sharing the weights (1: a single fixed order).
        order: the first order, a permutation of ``0..D-1`` (``order[j]`` = position of feature ``j``);
            default: raster order.
        mask_seed: seed of the private generator that draws the other ``K - 1`` orders (the global RNG is
            never used).

    Returns:
        :class:`BinaryMADE`; ``net.config`` records the options.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) not in (1, 3):
        raise ValueError(f"data_shape must be a vector shape (D,) or an image shape (C, H, W), got {data_shape}")
    if num_classes is not None:
        check_int("num_classes", num_classes, min=1)
    check_int("hidden", hidden, min=1)
    check_int("depth", depth, min=1)
    check_int("num_masks", num_masks, min=1)
    check_int("mask_seed", mask_seed, min=0)
    d = math.prod(data_shape)
    first = check_order("order", order, d)
    g = torch.Generator().manual_seed(mask_seed)
    orders = [first] + [torch.randperm(d, generator=g) for _ in range(num_masks - 1)]
    net = BinaryMADE(data_shape, hidden=hidden, depth=depth, orders=orders, num_classes=num_classes)
    net.config = dict(data_shape=data_shape, num_classes=num_classes, hidden=hidden, depth=depth,
                      num_masks=num_masks, order=None if order is None else first.tolist(), mask_seed=mask_seed)
    return net


# ------------------------------------------------------------------------------------------------ functions


def _check_net(net: Any) -> BinaryMADE:
    if not isinstance(net, BinaryMADE):
        raise TypeError(f"net must be the BinaryMADE returned by made.build, got {type(net).__name__}")
    return net


def _bits(net: BinaryMADE, x: Any, binarize: bool) -> torch.Tensor:
    check_tensor("x", x, floating=True)
    if x.ndim != 1 + len(net.data_shape) or tuple(x.shape[1:]) != net.data_shape:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, net.data_shape))}) for this network, "
                         f"got {tuple(x.shape)}")
    if not isinstance(binarize, bool):
        raise TypeError(f"binarize must be a bool, got {type(binarize).__name__}")
    return to_codes(x, 2, quantize=binarize).flatten(1).to(x.dtype)  # (B, D) in {0, 1}


def _mask_log_probs(net: BinaryMADE, b: torch.Tensor, y: torch.Tensor | None, mask: int) -> torch.Tensor:
    logits = net.logits_flat(2.0 * b - 1.0, y, mask=mask)  # (B, D)
    return -F.binary_cross_entropy_with_logits(logits, b, reduction="none").sum(1)  # (B,)


def log_prob(net: BinaryMADE, x: torch.Tensor, *, cond: Mapping[str, Any] | None = None,
             binarize: bool = True, mask: int | None = None) -> torch.Tensor:
    r"""Exact log pmf of the binarised ``x``: ``log (1/K) Σ_k ∏_j p_k(b_j | b_{<j}, y)`` in nats.

    Args:
        net: from :func:`build`.
        x: ``(B, *data_shape)`` model-space data, binarised as ``x > 0``.
        cond: ``{"y": (B,) labels}`` or None (the null label).
        binarize: False requires ``x ∈ {-1, 1}``.
        mask: evaluate one mask's model only (default: the ensemble over all ``K``; ``K`` network calls).

    Returns:
        ``(B,)`` log-probabilities (``<= 0``).

    Raises:
        ValueError / TypeError: naming ``x``, ``binarize``, ``mask``, ``cond`` or ``net``.
    """
    net = _check_net(net)
    b = _bits(net, x, binarize)
    y = check_labels(cond, net.config["num_classes"], x.shape[0])
    if mask is not None:
        return _mask_log_probs(net, b, y, check_int("mask", mask, min=0, max=net.num_masks - 1))
    lps = torch.stack([_mask_log_probs(net, b, y, k) for k in range(net.num_masks)])  # (K, B)
    return torch.logsumexp(lps, dim=0) - math.log(net.num_masks)


def loss(
    net: BinaryMADE,
    x: torch.Tensor,
    *,
    binarize: bool = True,
    mask: int | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood per data point under one mask, ``-mean_b log p_k(b | y)`` (nats).

    Args:
        net: from :func:`build`.
        x: ``(B, *data_shape)`` model-space data, binarised as ``x > 0``.
        binarize: False requires ``x ∈ {-1, 1}``.
        mask: the mask ``k`` to train; default: 0 when ``K = 1``, else drawn uniformly with ``generator``
            (order-agnostic training, Germain et al. Sec. 3.3).
        generator: draws the mask.
        cond: ``{"y": (B,) labels}`` or None.

    Returns:
        ``(loss, logs)`` with logs ``loss``, ``nll`` (nats per data point), ``bpd`` (bits per dimension) and
        ``mask`` (the mask used).
    """
    net = _check_net(net)
    check_generator(generator)
    if mask is None:
        mask = 0 if net.num_masks == 1 else int(randint(0, net.num_masks, (1,), generator=generator))
    nll = -log_prob(net, x, cond=cond, binarize=binarize, mask=mask).mean()
    bpd = nll.detach() / (net.features * math.log(2.0))
    return nll, {"loss": nll.detach(), "nll": nll.detach(), "bpd": bpd, "mask": torch.tensor(mask)}


def sample(
    net: BinaryMADE,
    shape: tuple[int, ...],
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Ancestral sampling from the mask ensemble: a mask per sample, then ``D`` sequential network calls.

    Bit ``j`` (in the mask's order) is ``1[u_j < σ(ℓ_j / T)]`` with uniforms ``u`` drawn up front from
    ``generator`` (so a sample does not depend on how the batch is split among masks).

    Args:
        net: from :func:`build`.
        shape: ``(B, *data_shape)``.
        temperature: ``T > 0``.
        generator: the source of randomness.
        cond: ``{"y": (B,) labels}`` or None.
        callback: called after every step with ``{"step", "mask", "bits"}`` (bits ``(n_k, D)`` of the samples
            using that mask, a copy).
        device, dtype: where / in what dtype to return (default: the network's).

    Returns:
        ``(B, *data_shape)`` samples ``2b - 1 ∈ {-1, 1}`` (model space).

    Raises:
        ValueError / TypeError: naming ``shape``, ``temperature``, ``cond``, ``callback`` or ``net``.
    """
    net = _check_net(net)
    shape = check_shape_tuple("shape", shape)
    if shape[1:] != net.data_shape:
        raise ValueError(f"shape must be (B, {', '.join(map(str, net.data_shape))}) for this network, got {shape}")
    temperature = check_float("temperature", temperature, min=0.0, min_open=True)
    check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    device, dtype = resolve_device_dtype(net, None, device, dtype)
    n, d = shape[0], net.features
    y = check_labels(cond, net.config["num_classes"], n)
    y = None if y is None else y.to(device)
    pdtype = next(net.parameters()).dtype
    u = rand((n, d), generator=generator, device=device, dtype=pdtype)  # (B, D)
    ks = (randint(0, net.num_masks, (n,), generator=generator, device=device) if net.num_masks > 1
          else torch.zeros(n, dtype=torch.long, device=device))
    bits = torch.zeros(n, d, dtype=pdtype, device=device)
    with torch.no_grad():
        for k in range(net.num_masks):
            idx = (ks == k).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            bk, uk, yk = bits[idx], u[idx], None if y is None else y[idx]
            for step, j in enumerate(torch.argsort(net.orders[k]).tolist()):
                logit = net.logits_flat(2.0 * bk - 1.0, yk, mask=k)[:, j] / temperature  # (n_k,)
                bk[:, j] = (uk[:, j] < torch.sigmoid(logit)).to(pdtype)
                if callback is not None:
                    callback({"step": step, "mask": k, "bits": bk.clone()})
            bits[idx] = bk
    return from_codes(bits.long(), 2, dtype=dtype).reshape(shape)
