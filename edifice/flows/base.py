"""The flow container and the parameter-free / per-channel transforms every flow family shares.

A normalizing flow maps data ``x`` to a base variable ``z = f(x)`` through a composition of
invertible transforms ``f = f_K ∘ ... ∘ f_1`` and scores data by the change of variables

    log p(x) = log N(f(x); 0, I) + Σ_k log |det ∂f_k / ∂h_{k-1}|,

with ``h_0 = x``. Every transform here is an ``nn.Module`` with

* ``forward(x) -> (z, logdet)``: data side to base side, ``logdet (B,)`` = log |det ∂z/∂x|;
* ``inverse(z) -> (x, logdet)``: the inverse, ``logdet (B,)`` = log |det ∂x/∂z|,

log-dets computed in the input dtype. :class:`Flow` composes transforms over a standard-normal
base; :class:`Permute` and :class:`Reverse` reorder features (log-det 0); :class:`ActNorm` is
Glow's per-channel affine layer with data-dependent initialisation.

Example:
    >>> import torch
    >>> from edifice.flows.base import Flow, ActNorm, Reverse
    >>> flow = Flow([ActNorm(2), Reverse()], shape=(2,))
    >>> x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    >>> z, logdet = flow(x)
    >>> torch.allclose(flow.inverse(z)[0], x, atol=1e-5)
    True
    >>> flow.log_prob(x).shape, flow.sample(3, generator=torch.Generator().manual_seed(1)).shape
    (torch.Size([8]), torch.Size([3, 2]))

References:
    Variational Inference with Normalizing Flows. Rezende, Mohamed, 2015. arXiv:1505.05770.
    Density Estimation using Real NVP. Dinh, Sohl-Dickstein, Bengio, 2017. arXiv:1605.08803.
    Glow: Generative Flow with Invertible 1x1 Convolutions. Kingma, Dhariwal, 2018.
    arXiv:1807.03039.
    Normalizing Flows for Probabilistic Modeling and Inference. Papamakarios, Nalisnick,
    Rezende, Mohamed, Lakshminarayanan, 2021. arXiv:1912.02762.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_generator, check_int, check_shape_tuple, check_tensor, randn

__all__ = ["Flow", "Permute", "Reverse", "ActNorm", "check_transform_input", "standard_normal_log_prob"]

_LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Log-density of ``N(0, I)`` at ``z (B, *shape)``, summed over the non-batch dims: ``(B,)``."""
    return -0.5 * (z.pow(2) + _LOG_2PI).flatten(1).sum(1)


def check_transform_input(name: str, x: Any, *, min_ndim: int = 2, channels: int | None = None) -> torch.Tensor:
    """A floating tensor ``(B, C, ...)`` with at least ``min_ndim`` dims and, if given, ``C == channels``."""
    x = check_tensor(name, x, floating=True)
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions (B, C, ...), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} features/channels in dim 1, got shape {tuple(x.shape)}")
    return x


def _zeros_logdet(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0])


class Flow(nn.Module):
    """A normalizing flow: transforms composed in order over a standard-normal base ``N(0, I)``.

    Args:
        transforms: modules with ``forward(x) -> (z, logdet)`` and ``inverse(z) -> (x, logdet)``,
            applied in order from the data side to the base side.
        shape: the per-sample data shape, e.g. ``(2,)`` or ``(C, H, W)``; the base has the same shape.

    Raises:
        TypeError: if ``transforms`` is not a sequence of ``nn.Module``.
        ValueError: if ``transforms`` is empty or ``shape`` is not a tuple of positive ints.
    """

    def __init__(self, transforms: Sequence[nn.Module], shape: Sequence[int]) -> None:
        super().__init__()
        if isinstance(transforms, nn.Module) or not isinstance(transforms, (list, tuple, nn.ModuleList)):
            raise TypeError(f"transforms must be a sequence of nn.Module, got {type(transforms).__name__}")
        if len(transforms) == 0:
            raise ValueError("transforms must be a non-empty sequence of nn.Module, got an empty one")
        for i, t in enumerate(transforms):
            if not isinstance(t, nn.Module):
                raise TypeError(f"transforms[{i}] must be an nn.Module, got {type(t).__name__}")
        self.transforms = nn.ModuleList(transforms)
        self.shape = check_shape_tuple("shape", tuple(shape) if isinstance(shape, list) else shape)

    def _check(self, name: str, x: Any) -> torch.Tensor:
        x = check_tensor(name, x, floating=True)
        if x.ndim != 1 + len(self.shape) or tuple(x.shape[1:]) != self.shape:
            want = "(B, " + ", ".join(str(s) for s in self.shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map data to the base: ``x (B, *shape) -> z (B, *shape)``, ``logdet (B,)`` = log|det ∂z/∂x|."""
        x = self._check("x", x)
        logdet = _zeros_logdet(x)
        for t in self.transforms:
            x, ld = t(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the base to data: ``z (B, *shape) -> x (B, *shape)``, ``logdet (B,)`` = log|det ∂x/∂z|."""
        z = self._check("z", z)
        logdet = _zeros_logdet(z)
        for t in reversed(self.transforms):
            z, ld = t.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|`` in nats, shape ``(B,)``."""
        z, logdet = self(x)
        return standard_normal_log_prob(z) + logdet

    def _dtype_device(self) -> tuple[torch.dtype, torch.device]:
        for p in self.parameters():
            return p.dtype, p.device
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype, b.device
        return torch.get_default_dtype(), torch.device("cpu")

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` samples ``(n, *shape)``: ``z ~ N(0, I)`` (from ``generator``) pushed through the inverse."""
        n = check_int("n", n, min=1)
        check_generator(generator)
        dtype, device = self._dtype_device()
        z = randn((n, *self.shape), generator=generator, device=device, dtype=dtype)
        return self.inverse(z)[0]


class Permute(nn.Module):
    """A fixed permutation of dim 1 (features of vectors, channels of images); log-det 0.

    Args:
        permutation: a permutation of ``0..D-1`` (sequence of ints or a 1-D integer tensor);
            ``forward`` returns ``x[:, permutation]``.

    Raises:
        ValueError: if ``permutation`` is not a permutation of ``0..D-1``.
    """

    def __init__(self, permutation: Sequence[int] | torch.Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(permutation) if not isinstance(permutation, torch.Tensor) else permutation
        if perm.ndim != 1 or perm.numel() == 0 or perm.is_floating_point() or perm.dtype == torch.bool:
            raise ValueError(f"permutation must be a non-empty 1-D sequence of ints, got {permutation!r}")
        perm = perm.long()
        if not torch.equal(torch.sort(perm).values, torch.arange(perm.numel())):
            raise ValueError(f"permutation must be a permutation of 0..{perm.numel() - 1}, got {perm.tolist()}")
        self.register_buffer("permutation", perm)
        self.register_buffer("inverse_permutation", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D, ...) -> x[:, permutation]``, log-det zeros ``(B,)``."""
        x = check_transform_input("x", x, channels=self.permutation.numel())
        return x[:, self.permutation], _zeros_logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse permutation, log-det zeros ``(B,)``."""
        z = check_transform_input("z", z, channels=self.permutation.numel())
        return z[:, self.inverse_permutation], _zeros_logdet(z)

    def extra_repr(self) -> str:
        return f"permutation={self.permutation.tolist()}"


class Reverse(nn.Module):
    """Reverse the order of dim 1 (features of vectors, channels of images); log-det 0. Self-inverse."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, D, ...) -> x.flip(1)``, log-det zeros ``(B,)``."""
        x = check_transform_input("x", x)
        return x.flip(1), _zeros_logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z.flip(1)``, log-det zeros ``(B,)``."""
        z = check_transform_input("z", z)
        return z.flip(1), _zeros_logdet(z)


class ActNorm(nn.Module):
    """Per-channel affine ``z = (x + loc) · exp(log_scale)`` with data-dependent initialisation (Glow).

    Channels are dim 1: the features of a vector ``(B, D)`` or the channels of an image
    ``(B, C, H, W)``. On the first ``forward`` in training mode, ``loc`` and ``log_scale`` are set so
    that that batch's output has zero mean and unit variance per channel (statistics over the batch
    and spatial dims); the ``initialized`` buffer then records it, so eval and train agree afterwards
    and a state_dict round trip keeps the initialised values. The log-det is
    ``Σ_c log_scale_c · (H·W)`` (spatial size 1 for vectors).

    Args:
        num_features: the number of channels ``C`` (features ``D`` for vectors).
        eps: added to the batch standard deviation at initialisation.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions. Kingma, Dhariwal, 2018.
        arXiv:1807.03039.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features, min=1)
        self.eps = float(eps)
        self.loc = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # a host-side copy of the buffer: no device sync per forward

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def _view(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(self.num_features, -1)  # (C, B·H·W)
        mean = flat.mean(1)
        std = flat.std(1, unbiased=False) if flat.shape[1] > 1 else torch.ones_like(mean)
        self.loc.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        spatial = math.prod(x.shape[2:])
        return (self.log_scale.to(x.dtype).sum() * spatial).expand(x.shape[0])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (B, C, ...) -> z (B, C, ...)``, ``logdet (B,)``; initialises on the first training call."""
        x = check_transform_input("x", x, channels=self.num_features)
        if self.training and not self._initialized:
            self._initialize(x)
        z = (x + self._view(self.loc, x)) * torch.exp(self._view(self.log_scale, x))
        return z, self._logdet(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x = z · exp(-log_scale) - loc``, ``logdet (B,)`` = minus the forward one."""
        z = check_transform_input("z", z, channels=self.num_features)
        x = z * torch.exp(-self._view(self.log_scale, z)) - self._view(self.loc, z)
        return x, -self._logdet(z)

    def extra_repr(self) -> str:
        return f"{self.num_features}"
