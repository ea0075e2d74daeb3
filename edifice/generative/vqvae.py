r"""VQ-VAE: a convolutional autoencoder with a discrete codebook bottleneck and an autoregressive prior.

**Data convention:** images ``(C, H, W)`` with ``H == W`` in model space ``[-1, 1]``; no time variable. The
encoder maps ``x`` to a feature map ``z_e(x)`` of shape ``(B, D, h, w)`` (``h = H / 2**len(channels)``), each
of its ``h w`` vectors is replaced by its nearest codebook entry ``e_k``, ``k ∈ {0..K-1}``, and the decoder
maps the quantised map back to an image. The index map ``c ∈ {0..K-1}^{h×w}`` is the discrete latent.

Training (van den Oord et al. 2017, eq. 3), ``sg`` = stop-gradient::

    L = ‖x - D(z_e + sg[z_q - z_e])‖² + ‖sg[z_e] - z_q‖² + β ‖z_e - sg[z_q]‖² + λ · (-log p_ψ(sg[c] | y)) / (h w)

The first term reaches the encoder through the **straight-through** estimator (:func:`straight_through`): the
decoder's gradient at ``z_q`` is copied unchanged onto ``z_e``. The codebook term moves the codes towards the
encoder outputs; with ``ema=True`` it is replaced by exponential moving averages of the assigned vectors
(their App. A.1, :func:`ema_codebook_update`), which is the documented exception to "losses do not touch
state". Codes that go unused are restarted on random encoder outputs of the batch (:func:`restart_dead_codes`,
as in Jukebox, Dhariwal et al. 2020). Each position's terms are means over its entries (MSE), not sums.

The prior ``p_ψ(c | y) = ∏_i p_ψ(c_i | c_{<i}, y)`` (raster order) is a gated PixelCNN (as in the paper) or
a small causal transformer (:mod:`edifice.blocks.masked`). Unlike the paper, which fits the prior after the
autoencoder, :func:`loss` trains it jointly, in one loop, on the *detached* current codes: the prior chases a
moving target while the codebook settles, and a cosine learning-rate decay lets both settle together. Set
``prior_weight=0`` for the two-stage recipe (train the autoencoder first, then the prior on frozen codes).

Example:
    >>> import torch
    >>> from edifice.generative import vqvae
    >>> nets = vqvae.build(data_shape=(1, 8, 8), codebook_size=8, code_dim=4, channels=(8,), prior_hidden=8,
    ...                    prior_layers=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    >>> loss, logs = vqvae.loss(nets, x, generator=g)
    >>> vqvae.encode(nets, x).shape, sorted(logs)[:3]
    (torch.Size([4, 4, 4]), ['codebook', 'commitment', 'perplexity'])
    >>> vqvae.sample(nets, (2, 1, 8, 8), generator=g).shape
    torch.Size([2, 1, 8, 8])

References:
    Neural Discrete Representation Learning. van den Oord, Vinyals, Kavukcuoglu, 2017. arXiv:1711.00937.
    Generating Diverse High-Fidelity Images with VQ-VAE-2. Razavi, van den Oord, Vinyals, 2019.
    arXiv:1906.00446.
    Jukebox: A Generative Model for Music. Dhariwal, Jun, Payne, Kim, Radford, Sutskever, 2020.
    arXiv:2005.00341 (random restarts of dead codes).
    Conditional Image Generation with PixelCNN Decoders. van den Oord et al., 2016. arXiv:1606.05328.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randint,
)
from edifice.blocks.conv import ConvDecoder, ConvEncoder, bottom_size, check_channels
from edifice.blocks.masked import CausalTransformerPrior, GatedPixelCNN, check_codes

__all__ = [
    "VectorQuantizer", "VQVAENets", "PRIORS", "nearest_codes", "straight_through", "vq_losses", "perplexity",
    "ema_codebook_update", "restart_dead_codes", "build", "loss", "encode", "decode_codes", "reconstruct",
    "prior_log_prob", "sample_codes", "sample", "codebook_usage",
]

PRIORS = ("pixelcnn", "transformer")
"""Autoregressive priors over the code map accepted by :func:`build`."""


# ----------------------------------------------------------------------------------------------- quantiser


class VectorQuantizer(nn.Module):
    r"""A codebook of ``K`` vectors of size ``D`` and the nearest-neighbour lookup.

    With ``ema=False`` the codebook ``embed`` is an ``nn.Parameter`` trained by the codebook loss. With
    ``ema=True`` it is a buffer updated by :func:`ema_codebook_update` from the buffers ``cluster_size``
    ``(K,)`` (``N_k``) and ``embed_avg`` ``(K, D)`` (``m_k``); no gradient reaches it. Either way the buffer
    ``usage`` ``(K,)`` holds an exponential moving average (rate ``decay``) of how many vectors each code
    received per training update; :func:`restart_dead_codes` restarts the codes whose usage is below
    ``dead_threshold``. ``usage`` starts at 0, so the first training update restarts every code on the
    batch's encoder outputs — a data-dependent initialisation.

    Args:
        codebook_size: ``K >= 2``.
        code_dim: ``D >= 1``.
        ema: train the codebook by exponential moving averages instead of gradients.
        decay: ``γ ∈ [0, 1)`` of the moving averages (codebook and usage).
        eps: Laplace smoothing ``ε > 0`` of the cluster sizes.
        dead_threshold: a code whose usage (vectors per update, moving average) is below this is restarted;
            0 disables restarts.

    Example:
        >>> vq = VectorQuantizer(4, 2)
        >>> z_q, codes = vq(torch.zeros(1, 2, 3, 3)); z_q.shape, codes.shape
        (torch.Size([1, 2, 3, 3]), torch.Size([1, 3, 3]))
    """

    def __init__(self, codebook_size: int, code_dim: int, *, ema: bool = False, decay: float = 0.99,
                 eps: float = 1e-5, dead_threshold: float = 1.0) -> None:
        super().__init__()
        self.codebook_size = check_int("codebook_size", codebook_size, min=2)
        self.code_dim = check_int("code_dim", code_dim, min=1)
        if not isinstance(ema, bool):
            raise TypeError(f"ema must be true or false, got {ema!r}")
        self.ema = ema
        self.decay = check_float("decay", decay, min=0.0, max=1.0, max_open=True)
        self.eps = check_float("eps", eps, min=0.0, min_open=True)
        self.dead_threshold = check_float("dead_threshold", dead_threshold, min=0.0)
        k = codebook_size
        init = torch.empty(k, code_dim).uniform_(-1.0 / k, 1.0 / k)
        if ema:
            self.register_buffer("embed", init)
            self.register_buffer("cluster_size", torch.zeros(k))
            self.register_buffer("embed_avg", init.clone())
        else:
            self.embed = nn.Parameter(init)
        self.register_buffer("usage", torch.zeros(k))

    @property
    def codebook(self) -> torch.Tensor:
        """The ``(K, D)`` codebook (a parameter or a buffer)."""
        return self.embed

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors of an index map: ``(B, h, w)`` long -> ``(B, D, h, w)`` (differentiable in the codebook)."""
        return F.embedding(codes, self.embed).movedim(-1, 1)  # (B, D, h, w)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise ``z_e: (B, D, h, w)``: returns the straight-through ``z_q`` ``(B, D, h, w)`` and codes ``(B, h, w)``.

        Touches no state; training updates go through :func:`ema_codebook_update` / :func:`restart_dead_codes`.
        """
        codes = nearest_codes(z_e, self.embed)  # (B, h, w)
        return straight_through(z_e, self.lookup(codes)), codes

    def extra_repr(self) -> str:
        return (f"codebook_size={self.codebook_size}, code_dim={self.code_dim}, ema={self.ema}, decay={self.decay}, "
                f"dead_threshold={self.dead_threshold}")


def nearest_codes(z_e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    r"""Index of the nearest codebook vector (squared Euclidean distance) at every position.

    ``k(i) = argmin_k ‖z_i - e_k‖² = argmin_k (‖e_k‖² - 2 z_i·e_k)``; ties go to the lowest index. No gradient.

    Args:
        z_e: ``(B, D, *spatial)`` encoder outputs, channels second (``(B, D, h, w)`` maps or ``(B, D)``).
        codebook: ``(K, D)``.

    Returns:
        ``(B, *spatial)`` long codes.

    Raises:
        ValueError / TypeError: if the shapes do not match or the tensors are not floating point.
    """
    check_tensor("codebook", codebook, ndim=2, floating=True)
    check_tensor("z_e", z_e, floating=True)
    if z_e.ndim < 2 or z_e.shape[1] != codebook.shape[1]:
        raise ValueError(f"z_e must have shape (B, {codebook.shape[1]}, ...) to match the codebook "
                         f"{tuple(codebook.shape)}, got {tuple(z_e.shape)}")
    with torch.no_grad():
        flat = z_e.movedim(1, -1).reshape(-1, codebook.shape[1])  # (N, D)
        e = codebook.to(flat.dtype)
        dist = (e * e).sum(1)[None, :] - 2.0 * flat @ e.t()  # (N, K), ‖z‖² dropped: constant per row
        codes = dist.argmin(dim=1)  # first minimum: ties -> lowest index
    return codes.reshape(z_e.shape[:1] + z_e.shape[2:])  # (B, *spatial)


def straight_through(z_e: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """``z_e + sg[z_q - z_e]``: the value of ``z_q``, the gradient of the identity onto ``z_e`` (Bengio et al. 2013)."""
    return z_e + (z_q - z_e).detach()


def vq_losses(z_e: torch.Tensor, z_q: torch.Tensor, *, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The codebook and commitment losses of van den Oord et al. (2017, eq. 3), as means over all entries.

    ``codebook = mean ‖sg[z_e] - z_q‖²`` (moves the codes), ``commitment = β mean ‖z_e - sg[z_q]‖²``
    (keeps the encoder near its codes). ``z_q`` is the looked-up codebook vectors (not straight-through).

    Raises:
        ValueError: if ``beta < 0`` or the shapes differ.
    """
    beta = check_float("beta", beta, min=0.0)
    check_tensor("z_q", z_q, shape=tuple(z_e.shape))
    return F.mse_loss(z_q, z_e.detach()), beta * F.mse_loss(z_e, z_q.detach())


def perplexity(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    r"""``exp(H)`` of the empirical code histogram, ``H = -Σ_k p_k log p_k`` (nats; ``0 log 0 = 0``).

    ``K`` for a uniform histogram over ``K`` codes, 1 when one code takes everything: the effective number of
    codes in use. Returns a 0-dim float tensor.
    """
    codebook_size = check_int("codebook_size", codebook_size, min=1)
    check_tensor("codes", codes)
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size).float()  # (K,)
    p = counts / counts.sum().clamp_min(1.0)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum())


def _counts(codes: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.bincount(codes.reshape(-1), minlength=k).to(dtype)  # (K,)


def _flat(z_e: torch.Tensor) -> torch.Tensor:
    return z_e.detach().movedim(1, -1).reshape(-1, z_e.shape[1])  # (N, D)


def _check_quantizer_inputs(quantizer: Any, z_e: Any, codes: Any) -> None:
    if not isinstance(quantizer, VectorQuantizer):
        raise TypeError(f"quantizer must be a VectorQuantizer, got {type(quantizer).__name__}")
    check_tensor("z_e", z_e, floating=True)
    if z_e.ndim < 2 or z_e.shape[1] != quantizer.code_dim:
        raise ValueError(f"z_e must have shape (B, {quantizer.code_dim}, ...), got {tuple(z_e.shape)}")
    if codes is not None:
        check_tensor("codes", codes, shape=z_e.shape[:1] + z_e.shape[2:])


@torch.no_grad()
def ema_codebook_update(quantizer: VectorQuantizer, z_e: torch.Tensor, codes: torch.Tensor) -> None:
    r"""Move an EMA codebook towards the mean of the vectors assigned to each code (in place).

    van den Oord et al. (2017), App. A.1, with ``n_k`` vectors ``z_{k,j}`` assigned to code ``k`` this step::

        N_k ← γ N_k + (1 - γ) n_k,        m_k ← γ m_k + (1 - γ) Σ_j z_{k,j}
        Ñ_k = (N_k + ε) / (n + K ε) · n   (Laplace smoothing, n = Σ_k N_k),      e_k ← m_k / Ñ_k

    With ``γ = 0`` every used code becomes the mean of its vectors (up to ``ε``). This mutates the quantiser's
    buffers: the documented exception to "losses do not touch state". :func:`loss` calls it in training mode.

    Args:
        quantizer: a :class:`VectorQuantizer` built with ``ema=True``.
        z_e: ``(B, D, *spatial)`` encoder outputs (detached here).
        codes: ``(B, *spatial)`` their assigned codes.

    Raises:
        ValueError: if the quantiser is not an EMA one or the shapes do not match.
    """
    _check_quantizer_inputs(quantizer, z_e, codes)
    if not quantizer.ema:
        raise ValueError("quantizer must be built with ema=True for ema_codebook_update, got ema=False")
    k, g = quantizer.codebook_size, quantizer.decay
    flat = _flat(z_e).to(quantizer.embed.dtype)  # (N, D)
    counts = _counts(codes, k, flat.dtype)  # (K,)
    sums = torch.zeros_like(quantizer.embed).index_add_(0, codes.reshape(-1), flat)  # (K, D)
    quantizer.cluster_size.mul_(g).add_(counts, alpha=1 - g)
    quantizer.embed_avg.mul_(g).add_(sums, alpha=1 - g)
    n = quantizer.cluster_size.sum()
    smoothed = (quantizer.cluster_size + quantizer.eps) / (n + k * quantizer.eps) * n  # (K,)
    quantizer.embed.copy_(quantizer.embed_avg / smoothed[:, None])


@torch.no_grad()
def restart_dead_codes(quantizer: VectorQuantizer, z_e: torch.Tensor, *, codes: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Update the codes' usage and restart the dead ones on random encoder outputs of the batch (in place).

    ``usage ← γ usage + (1 - γ) n_k`` (``n_k``: vectors assigned to code ``k`` in this batch); every code with
    ``usage < dead_threshold`` gets a vector ``z`` drawn uniformly (with replacement, using ``generator``) from
    the batch's ``z_e``: ``e_k ← z``, and its usage (and, for an EMA codebook, ``N_k ← u``, ``m_k ← u z``) is
    set to ``u = 2 · dead_threshold``, a grace period of about ``ln 2 / (1 - γ)`` updates before it can be
    declared dead again. Jukebox (Dhariwal et al. 2020) restarts codes this way. No host sync.

    Args:
        quantizer: a :class:`VectorQuantizer` (``dead_threshold = 0`` only updates the usage).
        z_e: ``(B, D, *spatial)`` encoder outputs of the batch.
        codes: their codes ``(B, *spatial)``; computed when None.
        generator: the source of randomness for the replacement vectors.

    Returns:
        The number of codes restarted, a 0-dim long tensor.
    """
    _check_quantizer_inputs(quantizer, z_e, codes)
    check_generator(generator)
    if codes is None:
        codes = nearest_codes(z_e, quantizer.embed)
    k, g = quantizer.codebook_size, quantizer.decay
    flat = _flat(z_e).to(quantizer.embed.dtype)  # (N, D)
    quantizer.usage.mul_(g).add_(_counts(codes, k, quantizer.usage.dtype), alpha=1 - g)
    if quantizer.dead_threshold <= 0:
        return torch.zeros((), dtype=torch.long, device=quantizer.usage.device)
    dead = quantizer.usage < quantizer.dead_threshold  # (K,)
    pick = randint(0, flat.shape[0], (k,), generator=generator, device=flat.device)  # (K,)
    fresh = flat[pick]  # (K, D)
    u = 2.0 * quantizer.dead_threshold
    quantizer.embed.copy_(torch.where(dead[:, None], fresh, quantizer.embed))
    quantizer.usage.copy_(torch.where(dead, torch.full_like(quantizer.usage, u), quantizer.usage))
    if quantizer.ema:
        quantizer.cluster_size.copy_(torch.where(dead, torch.full_like(quantizer.cluster_size, u),
                                                 quantizer.cluster_size))
        quantizer.embed_avg.copy_(torch.where(dead[:, None], fresh * u, quantizer.embed_avg))
    return dead.sum()


# ------------------------------------------------------------------------------------------------- networks


class VQVAENets(NamedTuple):
    """The networks of a VQ-VAE: ``encoder`` (image -> ``(B, D, h, w)``), ``quantizer``, ``decoder`` and
    ``prior`` (codes ``(B, h, w)`` -> logits ``(B, K, h, w)``). The build options are ``encoder.config``."""

    encoder: nn.Module
    quantizer: VectorQuantizer
    decoder: nn.Module
    prior: nn.Module


def build(
    *,
    data_shape: tuple[int, ...],
    codebook_size: int = 64,
    code_dim: int = 16,
    channels: Any = None,
    res_blocks: int = 1,
    ema: bool = True,
    decay: float = 0.99,
    dead_threshold: float = 1.0,
    prior: str = "pixelcnn",
    prior_hidden: int = 64,
    prior_layers: int = 4,
    prior_heads: int = 4,
    num_classes: int | None = None,
) -> VQVAENets:
    """Build a VQ-VAE for images ``(C, H, H)`` and its autoregressive prior.

    Encoder: :class:`~edifice.blocks.conv.ConvEncoder` (one stride-2 stage per entry of ``channels``,
    ``res_blocks`` residual blocks, a 1x1 conv to ``code_dim``); decoder: the mirror
    :class:`~edifice.blocks.conv.ConvDecoder` (no output activation; the loss is MSE in ``[-1, 1]``).
    The code map is ``h x h`` with ``h = H / 2**len(channels)`` (8x8 digits with ``(32, 64)``: 2x2;
    28x28 MNIST: 7x7).

    Args:
        data_shape: ``(C, H, H)``. Vectors are refused: VQ-VAE quantises a feature map.
        codebook_size: ``K >= 2``.
        code_dim: ``D``.
        channels: encoder stage widths, default ``(32, 64)`` (the decoder uses them reversed).
        res_blocks: residual blocks at the lowest resolution of each network.
        ema: EMA codebook (True) or codebook loss (False).
        decay: EMA rate ``γ`` of the codebook and of the usage counts.
        dead_threshold: usage (moving average of vectors assigned per training batch) below which a code is
            restarted (0: never). Keep it well below the average ``B h w / K``, or codes churn.
        prior: ``"pixelcnn"`` (gated PixelCNN) or ``"transformer"`` (causal transformer).
        prior_hidden, prior_layers: width and depth of the prior.
        prior_heads: attention heads of the transformer prior.
        num_classes: labels for a class-conditional prior, or None.

    Returns:
        :class:`VQVAENets` ``(encoder, quantizer, decoder, prior)``; ``encoder.config`` records the options.

    Raises:
        ValueError / TypeError: naming the offending option (``data_shape`` for vectors or a size not
        divisible by ``2**len(channels)``).
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"data_shape must be an image shape (C, H, H) with H == W (VQ-VAE quantises a feature "
                         f"map), got {data_shape}")
    channels = check_channels("channels", (32, 64) if channels is None else channels)
    h = bottom_size(data_shape[1], len(channels))
    check_choice("prior", prior, PRIORS)
    if num_classes is not None:
        check_int("num_classes", num_classes, min=1)
    quantizer = VectorQuantizer(codebook_size, code_dim, ema=ema, decay=decay, dead_threshold=dead_threshold)
    encoder = ConvEncoder(data_shape[0], data_shape[1], channels=channels, out_channels=code_dim,
                          res_blocks=res_blocks)
    decoder = ConvDecoder(data_shape[0], data_shape[1], channels=tuple(reversed(channels)), in_channels=code_dim,
                          res_blocks=res_blocks)
    if prior == "pixelcnn":
        prior_net: nn.Module = GatedPixelCNN(codebook_size, (h, h), hidden=prior_hidden, layers=prior_layers,
                                             num_classes=num_classes)
    else:
        prior_net = CausalTransformerPrior(codebook_size, (h, h), hidden=prior_hidden, layers=prior_layers,
                                           heads=prior_heads, num_classes=num_classes)
    encoder.config = dict(data_shape=data_shape, codebook_size=codebook_size, code_dim=code_dim,
                          channels=channels, res_blocks=res_blocks, ema=ema, decay=float(decay),
                          dead_threshold=float(dead_threshold), prior=prior, prior_hidden=prior_hidden,
                          prior_layers=prior_layers, prior_heads=prior_heads, num_classes=num_classes)
    return VQVAENets(encoder, quantizer, decoder, prior_net)


# ------------------------------------------------------------------------------------------------ functions


def _check_nets(nets: Any) -> VQVAENets:
    if not isinstance(nets, VQVAENets):
        raise TypeError(f"nets must be the VQVAENets returned by vqvae.build, got {type(nets).__name__}")
    return nets


def _data_shape(nets: VQVAENets) -> tuple[int, ...]:
    return tuple(nets.encoder.config["data_shape"])


def _check_x(nets: VQVAENets, x: Any) -> torch.Tensor:
    shape = _data_shape(nets)
    check_tensor("x", x, floating=True)
    if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}) for this network, "
                         f"got {tuple(x.shape)}")
    return x


def _labels(nets: VQVAENets, cond: Mapping[str, Any] | None, batch: int) -> torch.Tensor | None:
    cond = check_cond(cond)
    unknown = set(cond) - {"y"}
    if unknown:
        raise ValueError(f"cond may only hold 'y' (class labels) for a VQ-VAE, got keys {sorted(unknown)}")
    y = cond.get("y")
    if y is None:
        return None
    if nets.encoder.config["num_classes"] is None:
        raise ValueError("cond['y'] was given but the network was built without num_classes")
    check_tensor("cond['y']", y, shape=(batch,))
    return y


def _map_shape(nets: VQVAENets) -> tuple[int, int]:
    cfg = nets.encoder.config
    h = cfg["data_shape"][1] // 2 ** len(cfg["channels"])
    return (h, h)


def loss(
    nets: VQVAENets,
    x: torch.Tensor,
    *,
    beta: float = 0.25,
    prior_weight: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""VQ-VAE objective plus the prior's NLL on the detached codes (see the module docstring).

    ``loss = recon + commitment + codebook (only when ema=False) + prior_weight · prior_nll``, with ``recon``
    the MSE of the reconstruction, ``commitment = β mean ‖z_e - sg[z_q]‖²`` and ``prior_nll`` the prior's
    cross-entropy in nats per code on ``sg[c]`` — so the prior is trained jointly in one loop: it sees the
    current codes, and the cosine learning-rate decay lets the codebook and the prior settle together.

    When ``nets.quantizer`` is in training mode this also updates its state after computing the loss: the EMA
    codebook (:func:`ema_codebook_update`, ``ema=True``) and usage / dead-code restarts
    (:func:`restart_dead_codes`, drawing from ``generator``). In eval mode nothing is changed.

    Args:
        nets: from :func:`build`.
        x: ``(B, C, H, W)`` images in ``[-1, 1]``.
        beta: commitment weight ``β >= 0`` (0.25 in the paper).
        prior_weight: ``λ >= 0``; 0 trains only the autoencoder (``prior_nll`` is still logged).
        generator: randomness for the dead-code restarts.
        cond: ``{"y": (B,) labels}`` for a conditional prior, or None (the null label).

    Returns:
        ``(loss, logs)`` with logs ``recon``, ``commitment``, ``codebook``, ``prior_nll`` (nats per code),
        ``perplexity``, ``usage`` (fraction of the codebook used in the batch) and ``restarted`` (codes
        restarted by this call).

    Raises:
        ValueError / TypeError: for a wrong ``x`` shape, ``beta < 0``, ``prior_weight < 0`` or bad ``cond``.
    """
    nets = _check_nets(nets)
    x = _check_x(nets, x)
    beta = check_float("beta", beta, min=0.0)
    prior_weight = check_float("prior_weight", prior_weight, min=0.0)
    check_generator(generator)
    y = _labels(nets, cond, x.shape[0])
    q = nets.quantizer
    z_e = nets.encoder(x)  # (B, D, h, w)
    codes = nearest_codes(z_e, q.embed)  # (B, h, w)
    z_q = q.lookup(codes)  # (B, D, h, w)
    codebook, commitment = vq_losses(z_e, z_q, beta=beta)
    x_rec = nets.decoder(straight_through(z_e, z_q))  # (B, C, H, W)
    recon = F.mse_loss(x_rec, x)
    prior_nll = F.cross_entropy(nets.prior(codes, y), codes)
    total = recon + commitment + prior_weight * prior_nll
    if not q.ema:
        total = total + codebook
    k = q.codebook_size
    used = _counts(codes, k, torch.float32)
    logs = {"recon": recon.detach(), "commitment": commitment.detach(), "codebook": codebook.detach(),
            "prior_nll": prior_nll.detach(), "perplexity": perplexity(codes, k),
            "usage": (used > 0).float().mean()}
    restarted = torch.zeros((), dtype=torch.long, device=x.device)
    if q.training:
        if q.ema:
            ema_codebook_update(q, z_e, codes)
        restarted = restart_dead_codes(q, z_e, codes=codes, generator=generator)
    logs["restarted"] = restarted.float()
    return total, logs


def encode(nets: VQVAENets, x: torch.Tensor) -> torch.Tensor:
    """Codes of images: ``x (B, C, H, W)`` -> ``(B, h, w)`` long."""
    nets = _check_nets(nets)
    return nearest_codes(nets.encoder(_check_x(nets, x)), nets.quantizer.embed)


def decode_codes(nets: VQVAENets, codes: torch.Tensor) -> torch.Tensor:
    """Images of codes: ``(B, h, w)`` long -> ``(B, C, H, W)`` (the decoder's mean, model space)."""
    nets = _check_nets(nets)
    codes = check_codes("codes", codes, nets.quantizer.codebook_size, _map_shape(nets))
    return nets.decoder(nets.quantizer.lookup(codes))


def reconstruct(nets: VQVAENets, x: torch.Tensor) -> torch.Tensor:
    """``decode_codes(encode(x))``: ``(B, C, H, W)`` -> ``(B, C, H, W)``."""
    return decode_codes(nets, encode(nets, x))


def prior_log_prob(nets: VQVAENets, codes: torch.Tensor, *, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """``log p_ψ(c | y) = Σ_i log p_ψ(c_i | c_{<i}, y)`` in nats: ``(B, h, w)`` long -> ``(B,)``."""
    nets = _check_nets(nets)
    codes = check_codes("codes", codes, nets.quantizer.codebook_size, _map_shape(nets))
    y = _labels(nets, cond, codes.shape[0])
    logp = F.log_softmax(nets.prior(codes, y), dim=1)  # (B, K, h, w)
    return logp.gather(1, codes[:, None]).flatten(1).sum(1)  # (B,)


def sample_codes(
    nets: VQVAENets,
    n: int,
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Ancestral sampling of ``n`` code maps from the prior in raster order (``h * w`` prior calls).

    Each code is drawn from ``softmax(logits / temperature)`` by the Gumbel-max trick, ``argmax(l - log(-log u))``
    with uniforms ``u`` from ``generator``. Uses the prior in whatever mode it is in.

    Args:
        nets: from :func:`build`.
        n: number of maps.
        generator: the source of randomness.
        cond: ``{"y": (n,) labels}`` for a conditional prior, or None (the null label).
        device: where to sample (default: the networks' device).
        temperature: ``T > 0``; below 1 sharpens the prior.

    Returns:
        ``(n, h, w)`` long codes.
    """
    nets = _check_nets(nets)
    n = check_int("n", n, min=1)
    temperature = check_float("temperature", temperature, min=0.0, min_open=True)
    check_generator(generator)
    y = _labels(nets, cond, n)
    device = torch.device(device) if device is not None else nets.quantizer.embed.device
    y = None if y is None else y.to(device)
    h, w = _map_shape(nets)
    codes = torch.zeros(n, h, w, dtype=torch.long, device=device)
    with torch.no_grad():
        for i in range(h):
            for j in range(w):
                logits = nets.prior(codes, y)[:, :, i, j].float() / temperature  # (n, K)
                u = rand(logits.shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
                codes[:, i, j] = (logits - torch.log(-torch.log(u))).argmax(dim=1)
    return codes


def sample(
    nets: VQVAENets,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Images from the model: :func:`sample_codes` (``h * w`` prior calls), then the decoder.

    Uses the nets in whatever mode they are in (call ``.eval()`` first).

    Args:
        nets: from :func:`build`.
        shape: ``(B, C, H, W)`` matching the network's data shape.
        generator: the source of randomness.
        cond: ``{"y": (B,) labels}`` for a conditional prior, or None (the null label).
        device: where to sample (default: the networks' device).
        temperature: ``T > 0`` of the prior.

    Returns:
        ``(B, C, H, W)`` float32 images in model space.
    """
    nets = _check_nets(nets)
    shape = check_shape_tuple("shape", shape)
    want = _data_shape(nets)
    if shape[1:] != want:
        raise ValueError(f"shape must be (B, {', '.join(map(str, want))}) for this network, got {shape}")
    codes = sample_codes(nets, shape[0], generator=generator, cond=cond, device=device, temperature=temperature)
    with torch.no_grad():
        x = nets.decoder(nets.quantizer.lookup(codes))  # (B, C, H, W)
    return x.float()


def codebook_usage(nets: VQVAENets, x: torch.Tensor, *, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Code statistics over a data set: ``perplexity`` (``exp`` of the code entropy: the effective number of
    codes) and ``usage`` (fraction of the ``K`` codes used at least once), 0-dim tensors."""
    nets = _check_nets(nets)
    x = _check_x(nets, x)
    batch_size = check_int("batch_size", batch_size, min=1)
    k = nets.quantizer.codebook_size
    counts = torch.zeros(k, device=x.device)
    with torch.no_grad():
        for chunk in x.split(batch_size):
            counts += _counts(encode(nets, chunk), k, counts.dtype)
    p = counts / counts.sum()
    return {"perplexity": torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()), "usage": (counts > 0).float().mean()}

