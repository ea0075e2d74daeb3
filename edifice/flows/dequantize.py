r"""Image preprocessing for flows: uniform and variational dequantisation, the logit transform, bits per dim.

A density model on discrete pixels ``k ∈ {0, ..., B-1}^D`` is trained on continuous ``y = (k + u) / B``
with ``u ∈ [0, 1)^D``. For any density ``q(u | k)`` (Theis et al. 2016; Ho et al. 2019, eq. 11-12)::

    log P(k) ≥ E_{u ~ q(·|k)} [ log p(y) - D log B - log q(u | k) ],        y = (k + u) / B,

with equality iff ``q`` is the model's posterior. **Uniform dequantisation** takes ``q = U[0, 1)^D``
(``log q = 0``, :func:`uniform_dequantize`); **variational dequantisation** (Flow++, Ho et al. 2019) learns
``q(u | k)`` as a conditional flow (:class:`VariationalDequantizer`): ``ε ~ N(0, I)``, affine couplings on
``ε`` whose scale and shift see ``k`` through a small conv net, then ``u = sigmoid(ε_K)``.

The **logit transform** (Dinh et al. 2017, Sec. 4.1) maps ``x ∈ [0, 1]`` to the real line away from the
boundary::

    p = α + (1 - 2α) x,   y = logit(p) = log p - log(1 - p),
    log |dy/dx| = log(1 - 2α) - log p - log(1 - p)            (summed over the dimensions).

:func:`bits_per_dim` converts a model's ``log p(y)`` on ``[0, 1]^D`` data into bits per dimension of the
discrete data, adding the ``D log B`` of the dequantisation bound (it is :func:`edifice.metrics.bits_per_dim`
on ``-log_prob``).

Example:
    >>> import torch
    >>> from edifice.flows.base import Flow
    >>> from edifice.flows.dequantize import LogitTransform, bits_per_dim, uniform_dequantize
    >>> k = torch.tensor([[[[0, 255], [17, 128]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    >>> y = uniform_dequantize(k, generator=torch.Generator().manual_seed(0))
    >>> bool(((y * 256).floor() == k).all())
    True
    >>> flow = Flow([LogitTransform(alpha=0.05)], shape=(1, 2, 2))
    >>> flow.log_prob(y).shape
    torch.Size([1])
    >>> float(bits_per_dim(torch.zeros(3), 784, bins=256))  # a uniform density on [0, 1]^D: 8 bits
    8.0

References:
    A note on the evaluation of generative models. Theis, van den Oord, Bethge, 2016. arXiv:1511.01844.
    Density Estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2017. arXiv:1605.08803.
    Flow++: Improving Flow-Based Generative Models with Variational Dequantization and Architecture
    Design. Ho, Chen, Srinivas, Duan, Abbeel, 2019. arXiv:1902.00275.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randn
from edifice.flows.base import check_transform_input, standard_normal_log_prob
from edifice.metrics import bits_per_dim as _metrics_bits_per_dim

__all__ = ["uniform_dequantize", "LogitTransform", "VariationalDequantizer", "bits_per_dim"]


def _to_bins(x: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.dtype]:
    """Pixel indices ``k`` (float, exact integers) and the output dtype from integer or ``[0, 1]`` input.

    Integer ``x`` holds ``k ∈ [0, bins - 1]``; floating ``x ∈ [0, 1]`` holds ``k / (bins - 1)`` (what
    ``torchvision``'s ``ToTensor`` gives for 8-bit images) and is rounded to the nearest level.
    """
    check_tensor("x", x)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must be an integer or floating tensor, got dtype {x.dtype}")
    if x.is_floating_point():
        if bool(torch.isnan(x).any()) or bool((x < 0).any()) or bool((x > 1).any()):
            raise ValueError(f"x (floating) must lie in [0, 1], got values in [{x.min().item()}, {x.max().item()}]")
        return torch.round(x * (bins - 1)), x.dtype
    if bool((x < 0).any()) or bool((x > bins - 1).any()):
        raise ValueError(f"x (integer) must lie in [0, bins - 1] = [0, {bins - 1}], got values in "
                         f"[{x.min().item()}, {x.max().item()}]")
    dtype = torch.get_default_dtype()
    return x.to(dtype), dtype


def uniform_dequantize(x: torch.Tensor, *, bins: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation ``y = (k + u) / bins``, ``u ~ U[0, 1)`` elementwise, so ``y ∈ [0, 1)``.

    Args:
        x: ``(B, ...)`` pixel levels: an integer tensor (e.g. ``uint8``) with values in ``[0, bins - 1]``, or a
            floating tensor in ``[0, 1]`` holding ``k / (bins - 1)``.
        bins: number of levels ``B`` (256 for 8-bit images), ``>= 2``.
        generator: draws ``u``.

    Returns:
        ``y`` shaped like ``x``, with ``floor(y · bins) = k``: ``x``'s dtype if floating, else the default dtype.

    Raises:
        ValueError: values out of range or ``bins < 2``. TypeError: a non-tensor ``x`` or bad ``generator``.
    """
    bins = check_int("bins", bins, min=2)
    check_generator(generator)
    k, dtype = _to_bins(x, bins)
    u = rand(tuple(x.shape), generator=generator, device=x.device, dtype=dtype)
    return (k + u) / bins


class LogitTransform(nn.Module):
    """The logit transform ``y = logit(α + (1 - 2α) x)`` of ``x ∈ [0, 1]`` with its exact log-det (a flow transform).

    Args:
        alpha: boundary margin ``α ∈ [0, 0.5)`` (RealNVP uses 0.05 on CIFAR-10, 1e-6 on MNIST); with
            ``α = 0`` the input must lie in the open interval ``(0, 1)``.

    Shapes:
        ``forward(x (B, ...)) -> (y (B, ...), logdet (B,))``; ``inverse(y) -> (x, logdet)`` with the inverse's
        log-det ``-log(1 - 2α) + log σ(y) + log σ(-y)`` per dimension.

    Raises:
        ValueError: ``alpha`` out of range; in ``forward``, values outside the domain (never a silent NaN).
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = check_float("alpha", alpha, min=0.0, max=0.5, max_open=True)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, ...) in [0, 1]`` -> ``(y, log|det ∂y/∂x| (B,))``."""
        x = check_transform_input("x", x)
        if self.alpha > 0:
            bad = torch.isnan(x) | (x < 0) | (x > 1)
            domain = "[0, 1]"
        else:
            bad = torch.isnan(x) | (x <= 0) | (x >= 1)
            domain = "(0, 1) (alpha = 0)"
        if bool(bad.any()):
            raise ValueError(f"x must lie in {domain} for the logit transform, got values in "
                             f"[{x.min().item()}, {x.max().item()}]")
        p = self.alpha + (1 - 2 * self.alpha) * x
        log_p, log_1mp = torch.log(p), torch.log1p(-p)
        y = log_p - log_1mp
        logdet = (math.log1p(-2 * self.alpha) - log_p - log_1mp).flatten(1).sum(1)  # (B,)
        return y, logdet

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y (B, ...)`` real -> ``(x in [0, 1], log|det ∂x/∂y| (B,))``."""
        y = check_transform_input("y", y)
        if bool(torch.isnan(y).any()):
            raise ValueError("y must not contain NaN")
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        logdet = (F.logsigmoid(y) + F.logsigmoid(-y) - math.log1p(-2 * self.alpha)).flatten(1).sum(1)  # (B,)
        return x, logdet


def _checkerboard(shape: tuple[int, int, int], parity: int) -> torch.Tensor:
    c, h, w = shape
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return ((ij + parity) % 2 == 0).to(torch.get_default_dtype()).expand(c, h, w).clone()  # (C, H, W)


class VariationalDequantizer(nn.Module):
    """Variational dequantisation (Flow++): a conditional flow ``q(u | k)`` on ``u ∈ (0, 1)^{C×H×W}``.

    ``ε_0 ~ N(0, I)``; ``layers`` affine couplings with alternating checkerboard masks ``m``,
    ``ε_{i+1} = m ε_i + (1 - m)(ε_i e^{s} + t)`` with ``(s, t) = net_i(m ε_i, h(k))`` and ``s`` bounded by
    ``tanh``; ``u = sigmoid(ε_K)``. ``h(k)`` is a two-layer conv embedding of ``k / (bins - 1) - 1/2``. Then
    ``log q(u | k) = log N(ε_0; 0, I) - Σ_i Σ (1 - m) s - Σ log σ'(ε_K)``.

    Args:
        shape: ``(C, H, W)``, the image shape.
        bins: number of pixel levels ``B``.
        hidden: channels of the conv nets.
        layers: number of affine couplings, ``>= 2`` so every pixel is transformed.

    Use ``y, log_q = deq(k, generator=g)`` and the bound ``model.log_prob(y) - D log B - log_q`` (or pass
    ``model.log_prob(y) - log_q`` to :func:`bits_per_dim` with ``bins=B``).

    Raises:
        ValueError: a bad ``shape`` / size; inputs of the wrong shape or out of range.
    """

    def __init__(self, shape: Sequence[int], *, bins: int = 256, hidden: int = 16, layers: int = 2) -> None:
        super().__init__()
        shape = check_shape_tuple("shape", tuple(shape) if isinstance(shape, list) else shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        self.shape = shape
        self.bins = check_int("bins", bins, min=2)
        hidden = check_int("hidden", hidden, min=1)
        layers = check_int("layers", layers, min=2)
        c = shape[0]
        self.embed = nn.Sequential(
            nn.Conv2d(c, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU()
        )
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c + hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 2 * c, 3, padding=1))
            for _ in range(layers)
        )
        self.register_buffer("masks", torch.stack([_checkerboard(shape, i % 2) for i in range(layers)]),
                             persistent=False)  # (layers, C, H, W)

    def _levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.shape))}), got {got}")
        k, _ = _to_bins(x, self.bins)
        k = k.to(next(self.parameters()).dtype)  # computed in the parameters' dtype
        return k, self.embed(k / (self.bins - 1) - 0.5)  # (B, C, H, W), (B, hidden, H, W)

    def _st(self, i: int, eps: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.masks[i].to(eps.dtype)
        s, t = self.nets[i](torch.cat([eps * m, h], dim=1)).chunk(2, dim=1)  # (B, C, H, W) each
        return torch.tanh(s) * (1 - m), t * (1 - m)

    def sample(self, x: torch.Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``u ~ q(· | k)``: returns ``(u (B, C, H, W) in (0, 1), log q(u | k) (B,))``."""
        check_generator(generator)
        k, h = self._levels(x)
        eps = randn(tuple(k.shape), generator=generator, device=k.device, dtype=k.dtype)  # (B, C, H, W)
        log_q = standard_normal_log_prob(eps)
        for i in range(len(self.nets)):
            s, t = self._st(i, eps, h)
            eps = eps * torch.exp(s) + t
            log_q = log_q - s.flatten(1).sum(1)
        log_q = log_q - (F.logsigmoid(eps) + F.logsigmoid(-eps)).flatten(1).sum(1)
        return torch.sigmoid(eps), log_q

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantise: ``(y = (k + u) / bins (B, C, H, W), log q(u | k) (B,))`` with ``u ~ q(· | k)``."""
        u, log_q = self.sample(x, generator=generator)
        k, _ = _to_bins(x, self.bins)
        return (k.to(u.dtype) + u) / self.bins, log_q

    def log_q(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``log q(u | k)`` ``(B,)`` of given ``u (B, C, H, W) in (0, 1)`` (the couplings inverted)."""
        k, h = self._levels(x)
        check_tensor("u", u, shape=(k.shape[0], *self.shape), floating=True)
        if bool(torch.isnan(u).any()) or bool((u <= 0).any()) or bool((u >= 1).any()):
            raise ValueError("u must lie in the open interval (0, 1)")
        eps = torch.log(u) - torch.log1p(-u)
        log_q = -(F.logsigmoid(eps) + F.logsigmoid(-eps)).flatten(1).sum(1)
        for i in reversed(range(len(self.nets))):
            s, t = self._st(i, eps, h)  # the net sees the masked part, unchanged by the coupling
            eps = (eps - t) * torch.exp(-s)
            log_q = log_q - s.flatten(1).sum(1)
        return log_q + standard_normal_log_prob(eps)


def bits_per_dim(log_prob: torch.Tensor, num_dims: int, *, bins: int | None = 256, scale: float = 1.0) -> torch.Tensor:
    """Bits per dimension of discrete data from ``log p(y)`` (nats, ``(B,)``) of its dequantised version.

    ``bpd = (-mean log p(y) / D - log scale + log bins) / log 2``: :func:`edifice.metrics.bits_per_dim` on
    ``-log_prob`` with ``dequant_bins=bins``. ``y`` must be on ``[0, 1]^D`` (``scale = 1``) or on an interval
    of width ``scale``; pass ``bins=None`` for continuous data. For variational dequantisation pass the bound
    ``log p(y) - log q(u | k)``.

    Raises:
        ValueError: NaN input, ``num_dims < 1``, ``bins < 2``, ``scale <= 0``.
    """
    check_tensor("log_prob", log_prob, floating=True)
    return _metrics_bits_per_dim(-log_prob, num_dims, dequant_bins=bins, scale=scale)
