"""Coupling flows: NICE, RealNVP (vectors and multi-scale images) and Glow.

A coupling layer splits its input by a fixed mask into a conditioning part ``x_a`` (passed through
unchanged) and a transformed part ``x_b``, and applies an element-wise bijection to ``x_b`` whose
parameters are any function of ``x_a`` (Dinh et al. 2015; 2017):

    z_a = x_a,    z_b = x_b · exp(s(x_a)) + t(x_a),    log|det ∂z/∂x| = Σ s(x_a).

The Jacobian is triangular, so the log-det is the sum of the log-scales and the inverse
``x_b = (z_b - t(z_a)) · exp(-s(z_a))`` costs one network pass. NICE's additive coupling is
``s = 0`` (log-det 0) followed by one learned diagonal scaling. The raw log-scale is bounded:
``scale="tanh"`` gives ``s = bound · tanh(a / bound)``, ``scale="softclamp"`` gives
``s = a / (1 + |a| / bound)`` (zuko's ``MonotonicAffineTransform`` with ``bound = -log(slope)``).

Images use checkerboard masks (alternating pixels) and channel masks (halves of the channels)
with :class:`Squeeze` (space-to-depth, ``(C, H, W) -> (4C, H/2, W/2)``) between them. The
multi-scale architecture factors out half of the channels after each squeeze and sends only the
other half through the deeper scales; :class:`MultiScale` implements one scale and un-squeezes
its output again, so every transform maps a shape to itself and the base is ``N(0, I)`` over the
data shape (a product of per-scale Gaussians, exactly the factored base of Dinh et al.).

Glow (Kingma & Dhariwal 2018) repeats *steps of flow* — :class:`~edifice.flows.base.ActNorm`, an
invertible 1x1 convolution :class:`InvConv1x1` and a channel-split affine coupling — after each
squeeze. The 1x1 convolution's weight is kept LU-decomposed, ``W = P · L · (U + diag(sign · exp(log_s)))``
with ``P`` a fixed permutation, ``L`` unit lower- and ``U`` strictly upper-triangular, so
``log|det W| = Σ log_s`` and the layer's log-det is ``H · W · Σ log_s``.

Example:
    >>> import torch
    >>> from edifice.flows.coupling import realnvp
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> flow = realnvp((2,), blocks=4, hidden=16, depth=2)
    >>> x = torch.randn(5, 2)
    >>> z, logdet = flow(x)
    >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
    True
    >>> flow.sample(3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])

References:
    NICE: Non-linear Independent Components Estimation. Dinh, Krueger, Bengio, 2015.
    arXiv:1410.8516.
    Density Estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2017. arXiv:1605.08803.
    Glow: Generative Flow with Invertible 1x1 Convolutions. Kingma, Dhariwal, 2018.
    arXiv:1807.03039.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import check_choice, check_float, check_generator, check_int, check_shape_tuple, randn
from .base import ActNorm, Flow, check_transform_input

__all__ = [
    "SCALES", "AffineCoupling", "ConvAffineCoupling", "AdditiveCoupling", "DiagonalScaling", "Squeeze",
    "Reshape", "Compose", "MultiScale", "InvConv1x1", "bound_log_scale", "checkerboard_mask",
    "realnvp", "nice", "glow",
]

#: Bounded log-scale parametrisations accepted by ``scale=``.
SCALES = ("tanh", "softclamp")


def bound_log_scale(a: torch.Tensor, scale: str, bound: float) -> torch.Tensor:
    """Map a raw network output ``a`` to a log-scale in ``(-bound, bound)`` (``"tanh"`` or ``"softclamp"``)."""
    if scale == "tanh":
        return bound * torch.tanh(a / bound)
    return a / (1.0 + a.abs() / bound)


def _check_mask(mask: Any, features: int) -> torch.Tensor:
    if isinstance(mask, torch.Tensor):
        m = mask
    elif isinstance(mask, (list, tuple)):
        m = torch.tensor(mask)
    else:
        raise TypeError(f"mask must be a sequence of bools or a bool tensor, got {type(mask).__name__}")
    if m.dtype != torch.bool:
        if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask must hold bools (True = conditioning side), got {m.tolist()}")
        m = m.bool()
    if m.ndim != 1 or m.numel() != features:
        raise ValueError(f"mask must have shape ({features},), got {tuple(m.shape)}")
    if bool(m.all()) or not bool(m.any()):
        raise ValueError(f"mask must mark at least one feature True and one False, got {m.int().tolist()}")
    return m


def _mlp(d_in: int, d_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def _conv_net(c_in: int, c_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = c_in
    for i in range(depth):
        k = 3 if i == 0 else 1  # Glow's conv3x3 -> conv1x1 -> ... -> conv3x3
        layers += [nn.Conv2d(c, hidden, k, padding=k // 2), nn.ReLU()]
        c = hidden
    layers.append(nn.Conv2d(c, c_out, 3, padding=1))
    return nn.Sequential(*layers)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _zero_last(net: nn.Sequential) -> None:
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)


class _VectorCoupling(nn.Module):
    """Shared mask bookkeeping of the vector couplings (mask True = conditioning side ``x_a``)."""

    def __init__(self, features: int, mask: Any, hidden: int, depth: int, params: int) -> None:
        super().__init__()
        self.features = check_int("features", features, min=2)
        hidden = check_int("hidden", hidden, min=1)
        depth = check_int("depth", depth, min=0)
        m = _check_mask(mask, features)
        self.register_buffer("mask", m)
        self.register_buffer("idx_a", m.nonzero().squeeze(-1))
        self.register_buffer("idx_b", (~m).nonzero().squeeze(-1))
        self.params = params
        self.net = _mlp(self.idx_a.numel(), self.idx_b.numel() * params, hidden, depth)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.idx_a], x[:, self.idx_b]

    def _merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = a.new_empty(a.shape[0], self.features)
        out[:, self.idx_a] = a
        out[:, self.idx_b] = b
        return out

    def _params(self, a: torch.Tensor) -> torch.Tensor:
        return self.net(a).unflatten(-1, (-1, self.params))  # (B, D_b, params)


class AffineCoupling(_VectorCoupling):
    """RealNVP affine coupling for vectors ``(B, D)``: ``z_b = x_b · exp(s(x_a)) + t(x_a)``.

    The conditioner is an MLP ``D_a -> hidden (× depth, ReLU) -> 2 · D_b`` whose output is read as
    ``(t, a)`` pairs per transformed feature and ``s = bound_log_scale(a)``; with
    ``scale="softclamp"``, ``bound = -log(1e-3)``, ``hidden=64, depth=2`` it is zuko's coupling layer.

    Args:
        features: ``D >= 2``.
        mask: ``(D,)`` bools, True for the conditioning features ``x_a`` (both sides non-empty).
        hidden: width of the conditioner's hidden layers.
        depth: number of hidden layers.
        scale: ``"tanh"`` or ``"softclamp"`` bounding of the log-scale.
        bound: the log-scale lies in ``(-bound, bound)``.
        zero_init: zero the conditioner's last layer so the coupling starts as the identity (Glow).

    Raises:
        ValueError: on a bad ``features``, ``mask``, ``hidden``, ``depth``, ``scale`` or ``bound``.
    """

    def __init__(self, features: int, *, mask: Any, hidden: int = 64, depth: int = 2, scale: str = "softclamp",
                 bound: float = 3.0, zero_init: bool = False) -> None:
        super().__init__(features, mask, hidden, depth, 2)
        self.scale = check_choice("scale", scale, SCALES)
        self.bound = check_float("bound", bound, min=0.0, min_open=True)
        if _check_bool("zero_init", zero_init):
            _zero_last(self.net)

    def _st(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._params(a)
        return bound_log_scale(p[..., 1], self.scale, self.bound), p[..., 0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D) -> z (B, D)``, ``logdet (B,) = Σ s``."""
        x = check_transform_input("x", x, channels=self.features)
        a, b = self._split(x)
        s, t = self._st(a)
        return self._merge(a, b * torch.exp(s) + t), s.sum(-1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_b = (z_b - t) · exp(-s)``, ``logdet (B,) = -Σ s``."""
        z = check_transform_input("z", z, channels=self.features)
        a, b = self._split(z)
        s, t = self._st(a)
        return self._merge(a, (b - t) * torch.exp(-s)), -s.sum(-1)


class AdditiveCoupling(_VectorCoupling):
    """NICE additive coupling for vectors ``(B, D)``: ``z_b = x_b + m(x_a)``, log-det 0.

    Args:
        features: ``D >= 2``.
        mask: ``(D,)`` bools, True for the conditioning features ``x_a``.
        hidden: width of the MLP ``m``'s hidden layers.
        depth: number of hidden layers.
    """

    def __init__(self, features: int, *, mask: Any, hidden: int = 64, depth: int = 2) -> None:
        super().__init__(features, mask, hidden, depth, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D) -> z (B, D)``, logdet zeros ``(B,)``."""
        x = check_transform_input("x", x, channels=self.features)
        a, b = self._split(x)
        return self._merge(a, b + self._params(a)[..., 0]), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_b = z_b - m(z_a)``, logdet zeros ``(B,)``."""
        z = check_transform_input("z", z, channels=self.features)
        a, b = self._split(z)
        return self._merge(a, b - self._params(a)[..., 0]), z.new_zeros(z.shape[0])


class DiagonalScaling(nn.Module):
    """NICE's final layer: ``z = x · exp(log_scale)`` per feature / channel, ``logdet = Σ log_scale · H·W``.

    Args:
        num_features: size of dim 1.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features, min=1)
        self.log_scale = nn.Parameter(torch.zeros(num_features))

    def _s(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return (self.log_scale.to(x.dtype).sum() * math.prod(x.shape[2:])).expand(x.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, ...) -> x · exp(log_scale)``, ``logdet (B,)``."""
        x = check_transform_input("x", x, channels=self.num_features)
        return x * torch.exp(self._s(x)), self._logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z · exp(-log_scale)``, ``logdet (B,)`` = minus the forward one."""
        z = check_transform_input("z", z, channels=self.num_features)
        return z * torch.exp(-self._s(z)), -self._logdet(z)


def checkerboard_mask(h: int, w: int, parity: int, *, device: Any = None, dtype: Any = None) -> torch.Tensor:
    """``(1, 1, h, w)`` mask, 1 where ``(i + j + parity)`` is even (the conditioning pixels)."""
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return ((i + j + parity) % 2 == 0).to(dtype or torch.get_default_dtype()).view(1, 1, h, w)


class ConvAffineCoupling(nn.Module):
    """RealNVP / Glow affine coupling for images ``(B, C, H, W)`` with a checkerboard or channel mask.

    ``mask="checkerboard"``: the conditioner sees ``x · m`` and the transformed pixels are
    ``1 - m`` (``m`` from :func:`checkerboard_mask` with ``parity``). ``mask="channel"``: the first
    ``C/2`` channels condition the last ``C/2`` (``parity=1`` swaps the halves); ``C`` must be even.
    The conditioner is a small CNN (conv3x3, then ``depth - 1`` conv1x1, ReLU, conv3x3 out).

    Args:
        channels: ``C``.
        mask: ``"checkerboard"`` or ``"channel"``.
        parity: 0 or 1, which half conditions.
        hidden: conditioner channels.
        depth: number of hidden conv layers (>= 1).
        scale: ``"tanh"`` or ``"softclamp"``.
        bound: the log-scale lies in ``(-bound, bound)``.
        zero_init: zero the conditioner's last conv so the coupling starts as the identity (Glow).
    """

    def __init__(self, channels: int, *, mask: str = "checkerboard", parity: int = 0, hidden: int = 32,
                 depth: int = 1, scale: str = "tanh", bound: float = 3.0, zero_init: bool = False) -> None:
        super().__init__()
        self.channels = check_int("channels", channels, min=1)
        self.mask = check_choice("mask", mask, ("checkerboard", "channel"))
        self.parity = check_choice("parity", parity, (0, 1))
        hidden = check_int("hidden", hidden, min=1)
        depth = check_int("depth", depth, min=1)
        self.scale = check_choice("scale", scale, SCALES)
        self.bound = check_float("bound", bound, min=0.0, min_open=True)
        if mask == "channel":
            if channels % 2:
                raise ValueError(f"channels must be even for a channel mask, got {channels}")
            half = channels // 2
            self.net = _conv_net(half, 2 * half, hidden, depth)
        else:
            self.net = _conv_net(channels, 2 * channels, hidden, depth)
        if _check_bool("zero_init", zero_init):
            _zero_last(self.net)

    def _check(self, name: str, x: Any) -> torch.Tensor:
        x = check_transform_input(name, x, min_ndim=4, channels=self.channels)
        if x.ndim != 4:
            raise ValueError(f"{name} must have shape (B, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.mask == "checkerboard" and x.shape[2] * x.shape[3] < 2:
            raise ValueError(f"{name} must have at least 2 pixels for a checkerboard mask, got {tuple(x.shape)}")
        return x

    def _st(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, raw = self.net(a).chunk(2, dim=1)
        return bound_log_scale(raw, self.scale, self.bound), t

    def _couple(self, x: torch.Tensor, sign: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mask == "checkerboard":
            m = checkerboard_mask(x.shape[2], x.shape[3], self.parity, device=x.device, dtype=x.dtype)
            s, t = self._st(x * m)
            s, t = s * (1 - m), t * (1 - m)
            y = x * torch.exp(s) + t if sign > 0 else (x - t) * torch.exp(-s)
            return x * m + (1 - m) * y, sign * s.flatten(1).sum(1)
        a, b = x.chunk(2, dim=1)
        if self.parity:
            a, b = b, a
        s, t = self._st(a)
        b = b * torch.exp(s) + t if sign > 0 else (b - t) * torch.exp(-s)
        out = torch.cat([b, a] if self.parity else [a, b], dim=1)
        return out, sign * s.flatten(1).sum(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W) -> z (B, C, H, W)``, ``logdet (B,)``."""
        return self._couple(self._check("x", x), +1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse, ``logdet (B,)`` = minus the forward one."""
        return self._couple(self._check("z", z), -1)

    def extra_repr(self) -> str:
        return f"{self.channels}, mask={self.mask!r}, parity={self.parity}, scale={self.scale!r}"


def _check_image(name: str, x: Any) -> torch.Tensor:
    x = check_transform_input(name, x, min_ndim=4)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    return x


class Squeeze(nn.Module):
    """Space-to-depth ``(B, C, H, W) -> (B, 4C, H/2, W/2)`` (``pixel_unshuffle``), log-det 0."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W) -> (B, 4C, H/2, W/2)``, logdet zeros ``(B,)``; H and W must be even."""
        x = _check_image("x", x)
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"x must have even height and width to squeeze, got {tuple(x.shape)}")
        return F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0])  # (B, 4C, H/2, W/2)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, 4C, H, W) -> (B, C, 2H, 2W)``, logdet zeros ``(B,)``."""
        z = _check_image("z", z)
        if z.shape[1] % 4:
            raise ValueError(f"z must have a multiple of 4 channels to unsqueeze, got {tuple(z.shape)}")
        return F.pixel_shuffle(z, 2), z.new_zeros(z.shape[0])  # (B, C/4, 2H, 2W)


class Reshape(nn.Module):
    """Reshape per-sample ``in_shape -> out_shape`` (same number of elements), log-det 0."""

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
        super().__init__()
        self.in_shape = check_shape_tuple("in_shape", tuple(in_shape))
        self.out_shape = check_shape_tuple("out_shape", tuple(out_shape))
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"out_shape must have as many elements as in_shape, got {self.in_shape} -> "
                             f"{self.out_shape}")

    def _check(self, name: str, x: Any, shape: tuple[int, ...]) -> torch.Tensor:
        x = check_transform_input(name, x)
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{name} must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, *in_shape) -> (B, *out_shape)``, logdet zeros ``(B,)``."""
        x = self._check("x", x, self.in_shape)
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z (B, *out_shape) -> (B, *in_shape)``, logdet zeros ``(B,)``."""
        z = self._check("z", z, self.out_shape)
        return z.reshape(z.shape[0], *self.in_shape), z.new_zeros(z.shape[0])


class Compose(nn.Module):
    """Transforms applied in order (a sub-flow without a base); log-dets add."""

    def __init__(self, transforms: Sequence[nn.Module]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ld = t(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ld = t.inverse(z)
            logdet = logdet + ld
        return z, logdet


class MultiScale(nn.Module):
    """One scale of the multi-scale architecture: ``pre``, squeeze, ``post``, factor out half, recurse.

    ``x (C, H, W)`` goes through ``pre``, is squeezed to ``(4C, H/2, W/2)``, goes through ``post``;
    the first ``2C`` channels are factored out (sent to the base as they are) and the last ``2C``
    go through ``inner`` (the next scale; with ``inner=None`` nothing is factored out). The result
    is un-squeezed back to ``(C, H, W)`` so that the flow's base has the data shape.

    Args:
        pre: transforms at ``(C, H, W)``.
        post: transforms at ``(4C, H/2, W/2)``.
        inner: the deeper scales, a transform at ``(2C, H/2, W/2)``, or ``None``.
    """

    def __init__(self, pre: Sequence[nn.Module], post: Sequence[nn.Module], inner: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = Compose(pre)
        self.post = Compose(post)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _check_image("x", x)
        h, logdet = self.pre(x)
        if h.shape[2] % 2 or h.shape[3] % 2:
            raise ValueError(f"x must have even height and width to squeeze, got {tuple(x.shape)}")
        h = F.pixel_unshuffle(h, 2)  # (B, 4C, H/2, W/2)
        h, ld = self.post(h)
        logdet = logdet + ld
        if self.inner is not None:
            h1, h2 = h.chunk(2, dim=1)  # factor out h1 (B, 2C, H/2, W/2)
            h2, ld = self.inner(h2)
            logdet = logdet + ld
            h = torch.cat([h1, h2], dim=1)
        return F.pixel_shuffle(h, 2), logdet  # (B, C, H, W)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = _check_image("z", z)
        h = F.pixel_unshuffle(z, 2)  # (B, 4C, H/2, W/2)
        logdet = z.new_zeros(z.shape[0])
        if self.inner is not None:
            h1, h2 = h.chunk(2, dim=1)
            h2, ld = self.inner.inverse(h2)
            logdet = logdet + ld
            h = torch.cat([h1, h2], dim=1)
        h, ld = self.post.inverse(h)
        logdet = logdet + ld
        x, ld = self.pre.inverse(F.pixel_shuffle(h, 2))  # (B, C, H, W)
        return x, logdet + ld


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution with an LU-decomposed weight (a learned linear map on vectors).

    ``W = P · L · (U + diag(sign · exp(log_s)))``: ``P`` a fixed permutation, ``L`` unit lower- and
    ``U`` strictly upper-triangular (both learned), ``sign`` fixed. Initialised from a random
    rotation drawn with ``generator``. On ``(B, C, H, W)`` each pixel is multiplied by ``W``,
    ``logdet = H · W · Σ log_s``; on ``(B, C)`` it is ``x @ Wᵀ`` with ``logdet = Σ log_s``.

    Args:
        channels: ``C``.
        generator: source of the random rotation at initialisation.
    """

    def __init__(self, channels: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.channels = check_int("channels", channels, min=1)
        check_generator(generator)
        dtype = torch.get_default_dtype()
        q, _ = torch.linalg.qr(randn((channels, channels), generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("P", p.to(dtype))
        self.register_buffer("sign_s", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels, dtype=dtype), -1))
        self.L = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.U = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(s.abs()).to(dtype))

    def weight(self) -> torch.Tensor:
        """The ``(C, C)`` matrix ``W``."""
        eye = torch.eye(self.channels, dtype=self.L.dtype, device=self.L.device)
        lower = self.L * self.lower_mask + eye
        upper = self.U * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.P @ lower @ upper

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return (self.log_s.to(x.dtype).sum() * math.prod(x.shape[2:])).expand(x.shape[0])

    def _mul(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bj...->bi...", w.to(x.dtype), x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = W x`` per pixel (or per vector), ``logdet (B,)``."""
        x = check_transform_input("x", x, channels=self.channels)
        return self._mul(self.weight(), x), self._logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = W⁻¹ z``, ``logdet (B,)`` = minus the forward one."""
        z = check_transform_input("z", z, channels=self.channels)
        return self._mul(torch.linalg.inv(self.weight()), z), -self._logdet(z)

    def extra_repr(self) -> str:
        return f"{self.channels}"


def _alternating(features: int, i: int) -> torch.Tensor:
    return torch.arange(features) % 2 == i % 2


def _check_builder(shape: Any, blocks: int, hidden: int, depth: int, blocks_name: str = "blocks") -> tuple[int, ...]:
    shape = check_shape_tuple("shape", shape)
    if len(shape) not in (1, 3):
        raise ValueError(f"shape must be (D,) for vectors or (C, H, W) for images, got {shape}")
    if len(shape) == 1 and shape[0] < 2:
        raise ValueError(f"shape must have at least 2 features for a coupling split, got {shape}")
    check_int(blocks_name, blocks, min=1)
    check_int("hidden", hidden, min=1)
    check_int("depth", depth, min=1)
    return shape


def _check_scales(shape: tuple[int, ...], scales: int, name: str) -> None:
    check_int(name, scales, min=0)
    c, h, w = shape
    k = 2 ** scales
    if h % k or w % k:
        raise ValueError(f"{name}={scales} needs height and width divisible by {k}, got shape {shape}")


def realnvp(shape: Sequence[int], *, blocks: int = 4, hidden: int = 64, depth: int = 2, scale: str = "softclamp",
            bound: float = 3.0, actnorm: bool = False, scales: int = 2) -> Flow:
    """RealNVP (Dinh et al. 2017) for vectors ``(D,)`` or images ``(C, H, W)``.

    Vectors: ``blocks`` affine couplings with alternating masks (optionally each preceded by an
    :class:`ActNorm`). Images, the multi-scale architecture: each of the first ``scales - 1``
    scales is 3 checkerboard couplings, a squeeze, 3 channel couplings and factoring out half of
    the channels; the last scale is ``blocks`` checkerboard couplings (ActNorm before each coupling
    if ``actnorm``). ``H`` and ``W`` must be divisible by ``2 ** (scales - 1)``.

    Args:
        shape: ``(D,)`` with ``D >= 2`` or ``(C, H, W)``.
        blocks: couplings (vectors) / couplings of the last scale (images).
        hidden: conditioner width (MLP units or conv channels).
        depth: conditioner hidden layers.
        scale, bound: log-scale bounding (see :func:`bound_log_scale`).
        actnorm: insert an ActNorm before every coupling.
        scales: number of image scales (``scales - 1`` squeezes); ignored for vectors.

    Returns:
        A :class:`~edifice.flows.base.Flow` over ``shape``.
    """
    shape = _check_builder(shape, blocks, hidden, depth)
    check_choice("scale", scale, SCALES)
    if len(shape) == 1:
        d = shape[0]
        ts: list[nn.Module] = []
        for i in range(blocks):
            if actnorm:
                ts.append(ActNorm(d))
            ts.append(AffineCoupling(d, mask=_alternating(d, i), hidden=hidden, depth=depth, scale=scale, bound=bound))
        return Flow(ts, shape)
    check_int("scales", scales, min=1)
    _check_scales(shape, scales - 1, "scales")
    if (shape[1] * shape[2]) // 4 ** (scales - 1) < 2:
        raise ValueError(f"scales={scales} leaves fewer than 2 pixels for the last scale's checkerboard, "
                         f"got shape {shape}")

    def coupling(c: int, mask: str, i: int) -> list[nn.Module]:
        layer = ConvAffineCoupling(c, mask=mask, parity=i % 2, hidden=hidden, depth=depth, scale=scale, bound=bound)
        return [ActNorm(c), layer] if actnorm else [layer]

    def level(c: int, k: int) -> nn.Module:
        if k == scales - 1:
            return Compose([m for i in range(blocks) for m in coupling(c, "checkerboard", i)])
        pre = [m for i in range(3) for m in coupling(c, "checkerboard", i)]
        post = [m for i in range(3) for m in coupling(4 * c, "channel", i)]
        return MultiScale(pre, post, level(2 * c, k + 1))

    return Flow([level(shape[0], 0)], shape)


def nice(shape: Sequence[int], *, blocks: int = 4, hidden: int = 64, depth: int = 2) -> Flow:
    """NICE (Dinh et al. 2015): ``blocks`` additive couplings with alternating masks and a diagonal scaling.

    Images ``(C, H, W)`` are flattened to ``C·H·W`` features first (as in the paper) and reshaped back
    at the end, so the base has the data shape.

    Args:
        shape: ``(D,)`` with ``D >= 2`` or ``(C, H, W)``.
        blocks: number of additive couplings.
        hidden: MLP width.
        depth: MLP hidden layers.
    """
    shape = _check_builder(shape, blocks, hidden, depth)
    d = math.prod(shape)
    ts: list[nn.Module] = [Reshape(shape, (d,))] if len(shape) > 1 else []
    ts += [AdditiveCoupling(d, mask=_alternating(d, i), hidden=hidden, depth=depth) for i in range(blocks)]
    ts.append(DiagonalScaling(d))
    if len(shape) > 1:
        ts.append(Reshape((d,), shape))
    return Flow(ts, shape)


def glow(shape: Sequence[int], *, steps: int = 4, levels: int = 2, hidden: int = 64, depth: int = 2,
         scale: str = "tanh", bound: float = 3.0, zero_init: bool = True,
         generator: torch.Generator | None = None) -> Flow:
    """Glow (Kingma & Dhariwal 2018): steps of flow (ActNorm, invertible 1x1 conv / linear, affine coupling).

    Vectors ``(D,)``: ``steps`` steps with an LU linear map and couplings with alternating masks.
    Images ``(C, H, W)``: ``levels`` levels, each a squeeze, ``steps`` steps with channel-split
    couplings, and (except the last) factoring out half of the channels. ``H`` and ``W`` must be
    divisible by ``2 ** levels``.

    Args:
        shape: ``(D,)`` with ``D >= 2`` or ``(C, H, W)``.
        steps: steps of flow per level.
        levels: number of levels (images only).
        hidden: conditioner width.
        depth: conditioner hidden layers.
        scale, bound: log-scale bounding (see :func:`bound_log_scale`).
        zero_init: zero each coupling's last layer, so every step starts as ActNorm + 1x1 conv (Glow).
        generator: source of the 1x1 convolutions' random rotations.
    """
    shape = _check_builder(shape, steps, hidden, depth, "steps")
    check_choice("scale", scale, SCALES)
    check_generator(generator)
    if len(shape) == 1:
        d = shape[0]
        ts: list[nn.Module] = []
        for i in range(steps):
            ts += [ActNorm(d), InvConv1x1(d, generator=generator),
                   AffineCoupling(d, mask=_alternating(d, i), hidden=hidden, depth=depth, scale=scale, bound=bound,
                                  zero_init=zero_init)]
        return Flow(ts, shape)
    check_int("levels", levels, min=1)
    _check_scales(shape, levels, "levels")

    def level(c: int, k: int) -> nn.Module:
        post: list[nn.Module] = []
        for i in range(steps):
            post += [ActNorm(4 * c), InvConv1x1(4 * c, generator=generator),
                     ConvAffineCoupling(4 * c, mask="channel", parity=i % 2, hidden=hidden, depth=depth,
                                        scale=scale, bound=bound, zero_init=zero_init)]
        return MultiScale([], post, level(2 * c, k + 1) if k < levels - 1 else None)

    return Flow([level(shape[0], 0)], shape)
