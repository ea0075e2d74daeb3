"""Time and label embeddings shared by every conditioned network.

The sinusoidal embedding follows the Transformer position encoding (Vaswani et al., 2017) as used
for diffusion time steps by Ho et al. (2020), with one fixed convention throughout the library:
**first half cosines, second half sines** (``[cos | sin]``, as in DiT / guided-diffusion).

``LabelEmbedding`` reserves one extra row for the "no label" class used by classifier-free
guidance (Ho & Salimans, 2022); ``condition_vector`` sums the time and label embeddings into the
single conditioning vector that the residual blocks of ``ResMLP`` / ``UNet`` consume.

References:
    Attention Is All You Need, Vaswani et al., 2017, arXiv:1706.03762.
    Denoising Diffusion Probabilistic Models, Ho et al., 2020, arXiv:2006.11239.
    Classifier-Free Diffusion Guidance, Ho & Salimans, 2022, arXiv:2207.12598.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_choice, check_float, check_int, check_tensor

__all__ = ["sinusoidal_embedding", "TimestepEmbedding", "LabelEmbedding", "condition_vector", "TIME_FEATURES"]

TIME_FEATURES = ("sinusoidal", "fourier")
"""Time features of :class:`TimestepEmbedding`."""


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    r"""Sinusoidal features of a batch of (possibly fractional) times.

    .. math::
        f_i = \exp(-\ln(P)\, i / h), \quad i = 0..h-1, \quad h = \lfloor dim/2 \rfloor

        \mathrm{emb}(t) = [\cos(t f_0), ..., \cos(t f_{h-1}), \sin(t f_0), ..., \sin(t f_{h-1})]

    with :math:`P` = ``max_period``. An odd ``dim`` gets one trailing zero column.

    Args:
        t: times, shape ``(B,)``; integer tensors are converted to floating point.
        dim: embedding width, an int >= 2.
        max_period: :math:`P`, the longest period (> 0).

    Returns:
        ``(B, dim)`` tensor in ``t``'s floating dtype (float32 for integer or half-precision ``t``,
        so that large times keep their precision).

    Raises:
        TypeError: if ``t`` is not a tensor or ``dim`` is not an int.
        ValueError: if ``t`` is not 1-D, ``dim < 2`` or ``max_period <= 0``.

    Example:
        >>> sinusoidal_embedding(torch.zeros(2), 4)
        tensor([[1., 1., 0., 0.],
                [1., 1., 0., 0.]])
    """
    check_tensor("t", t, ndim=1)
    check_int("dim", dim, min=2)
    max_period = check_float("max_period", max_period, min=0.0, min_open=True)
    dtype = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half
    )  # (half,)
    args = t.to(dtype)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


class TimestepEmbedding(nn.Module):
    r"""Learned time embedding: ``Linear(SiLU(Linear(sinusoidal(t * t_scale))))``.

    .. math::
        e(t) = W_2\, \mathrm{SiLU}(W_1\, \mathrm{emb}(s\,t) + b_1) + b_2

    DDPM networks use ``t_scale=1`` with integer steps ``t`` in ``0..T-1``; flow matching networks
    use ``t_scale=1000`` with ``t`` in ``[0, 1]`` so both see the same frequency range.

    ``features="fourier"`` replaces the fixed geometric frequencies by Gaussian random Fourier features
    ``[sin(2π W s t), cos(2π W s t)]`` with ``W ~ N(0, fourier_scale²)`` drawn once at construction and
    stored as a buffer (Tancik et al. 2020); score networks of VE SDEs use them on ``log σ``
    (Song et al. 2021, NCSN++ with ``fourier_scale = 16``).

    Args:
        dim: output width.
        freq_dim: width of the sinusoidal features (>= 2).
        t_scale: factor :math:`s` applied to ``t`` before the sinusoidal features (> 0).
        features: ``"sinusoidal"`` (default) or ``"fourier"``.
        fourier_scale: standard deviation of the random frequencies ``W`` (``features="fourier"``).

    Raises:
        TypeError / ValueError: for an invalid option.

    References:
        Denoising Diffusion Probabilistic Models, Ho et al., 2020, arXiv:2006.11239.
        Scalable Diffusion Models with Transformers, Peebles & Xie, 2023, arXiv:2212.09748.
        Fourier Features Let Networks Learn High Frequency Functions in Low Dimensional Domains,
        Tancik et al., 2020, arXiv:2006.10739.

    Example:
        >>> emb = TimestepEmbedding(16)
        >>> emb(torch.tensor([0.0, 10.0, 999.0])).shape
        torch.Size([3, 16])
    """

    def __init__(self, dim: int, *, freq_dim: int = 256, t_scale: float = 1.0, features: str = "sinusoidal",
                 fourier_scale: float = 16.0) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, min=1)
        self.freq_dim = check_int("freq_dim", freq_dim, min=2)
        self.t_scale = check_float("t_scale", t_scale, min=0.0, min_open=True)
        self.features = check_choice("features", features, TIME_FEATURES)
        fourier_scale = check_float("fourier_scale", fourier_scale, min=0.0, min_open=True)
        if features == "fourier":
            self.register_buffer("fourier_w", torch.randn(freq_dim // 2) * fourier_scale)  # (freq_dim // 2,)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times ``t`` of shape ``(B,)`` into ``(B, dim)``."""
        check_tensor("t", t, ndim=1)
        if self.features == "fourier":
            args = 2.0 * math.pi * (t * self.t_scale).to(self.fourier_w.dtype)[:, None] * self.fourier_w  # (B, F/2)
            freqs = F.pad(torch.cat([args.sin(), args.cos()], dim=-1), (0, self.freq_dim % 2))  # (B, freq_dim)
        else:
            freqs = sinusoidal_embedding(t * self.t_scale, self.freq_dim)  # (B, freq_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, dim)


class LabelEmbedding(nn.Module):
    """Class-label embedding table with an extra "no label" row for classifier-free guidance.

    The table has ``num_classes + 1`` rows; labels ``0..num_classes-1`` are the classes and
    ``null_label == num_classes`` is the unconditional class. Label dropout for CFG training is
    the loss's job (it draws with the caller's generator), not this module's.

    Args:
        num_classes: number of real classes (>= 1).
        dim: embedding width (>= 1).

    Raises:
        TypeError / ValueError: for an invalid option.

    References:
        Classifier-Free Diffusion Guidance, Ho & Salimans, 2022, arXiv:2207.12598.

    Example:
        >>> emb = LabelEmbedding(10, 8)
        >>> emb.null_label
        10
        >>> emb(torch.tensor([0, 9, emb.null_label])).shape
        torch.Size([3, 8])
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, min=1)
        self.dim = check_int("dim", dim, min=1)
        self.null_label = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Embed integer labels ``y`` of shape ``(B,)`` (``null_label`` allowed) into ``(B, dim)``.

        Raises:
            TypeError: if ``y`` is not an integer tensor.
            ValueError: if ``y`` is not 1-D or holds a label outside ``[0, num_classes]``.
        """
        check_tensor("y", y, ndim=1)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer (long) tensor of class labels, got dtype {y.dtype}")
        # Range check for a clear error (nn.Embedding would give an opaque IndexError). It reads the labels
        # back to the host, so it runs only for CPU tensors and outside torch.compile: on an accelerator it
        # would stall every sampler step (losses and samplers validate labels once, before their loops).
        check = y.device.type == "cpu" and not torch.compiler.is_compiling()
        if check and y.numel() and bool(((y < 0) | (y > self.num_classes)).any()):
            bad = y[(y < 0) | (y > self.num_classes)][0].item()
            raise ValueError(
                f"y must hold labels in [0, {self.num_classes - 1}] or the null label {self.null_label}, got {bad}"
            )
        return self.table(y.long())  # (B, dim)


def condition_vector(
    time_embed: TimestepEmbedding,
    label_embed: LabelEmbedding | None,
    t: torch.Tensor,
    y: torch.Tensor | None,
    emb: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum the time and label embeddings (and ``emb``) into one conditioning vector ``c`` of shape ``(B, D)``.

    ``y=None`` with a label table means the null label (unconditional); a ``y`` given to a network
    built without labels is an error rather than being silently ignored.

    Args:
        time_embed: embeds ``t``.
        label_embed: embeds ``y``, or ``None`` for an unconditional network.
        t: times, shape ``(B,)``.
        y: labels, shape ``(B,)`` long, or ``None``.
        emb: an extra ``(B, D)`` embedding to add (a second time, as in shortcut models and MeanFlow), or None.

    Raises:
        ValueError: if ``y`` is given without a label table, or its batch does not match ``t``, or ``emb`` is
            not ``(B, D)``.
    """
    c = time_embed(t)  # (B, D)
    if emb is not None:
        check_tensor("emb", emb, shape=tuple(c.shape), floating=True)
        c = c + emb.to(c.dtype)  # (B, D)
    if label_embed is None:
        if y is not None:
            raise ValueError("y was given but the network was built with num_classes=None (unconditional)")
        return c
    if y is None:
        y = torch.full((t.shape[0],), label_embed.null_label, dtype=torch.long, device=t.device)
    check_tensor("y", y, ndim=1)
    if y.shape[0] != t.shape[0]:
        raise ValueError(f"y must have shape ({t.shape[0]},) to match the batch of x, got {tuple(y.shape)}")
    return c + label_embed(y.to(t.device)).to(c.dtype)  # (B, D)
