r"""Latent diffusion (Rombach et al. 2022): an autoencoder, then diffusion or flow matching on its latents.

**Two stages.** A convolutional autoencoder ``E, D`` compresses images ``x (B, C, H, H)`` (model space
``[-1, 1]``) into latent maps ``z (B, c, h, h)`` with ``h = H / 2**len(ae_channels)``; a denoiser is then
trained on ``s · z``, where the **latent scale factor** ``s = 1 / std(z)`` (estimated once from a data
batch) gives the latents unit variance, as the noise schedules assume. Sampling draws ``s · z`` with the
objective's sampler and decodes ``D(z / s)``.

Autoencoders (``autoencoder=``):

* ``"vae"`` — KL-regularised: a Gaussian posterior per latent pixel, ``q(z|x) = N(μ(x), diag σ²(x))``,
  trained with ``L = E_q ‖x - D(z)‖² + w_KL · KL(q(z|x) ‖ N(0, I))`` summed per example and averaged over
  the batch (LDM's normalisation, so the paper's tiny ``w_KL = 1e-6`` means the same thing here). The KL term
  only keeps the latent space from drifting; its scale is fixed afterwards by ``s``. The denoiser sees the
  posterior mean ``μ(x)`` (with ``w_KL = 1e-6`` the posterior spread is negligible).
* ``"vqvae"`` — VQ-regularised: ``L = ‖x - D(z_e + sg[z_q - z_e])‖² + β ‖z_e - sg[z_q]‖²`` (means, as in
  :func:`edifice.generative.vqvae.loss`; EMA codebook and dead-code restarts by default). Following Rombach et
  al. ("VQ-reg ... a vector quantization layer within the decoder"), the **codebook lives in the decoder**
  (``nets.decoder.quantizer``): the encoder returns the un-quantised map ``z_e``, the denoiser is trained on
  it, and :func:`decode` snaps any latent (a sample included) to its nearest codes before decoding.

Denoisers (``backbone=``, all ``net(z, t, y=None, context=None)`` on latent maps): a
:class:`~edifice.blocks.ResMLP` on the flattened latent (``"mlp"``), a :class:`~edifice.blocks.UNet` on the
latent map (``"unet"``), or :class:`LatentTransformer`, self- and **cross-attention** over the ``h·h``
latent tokens (``"transformer"``; required for ``context_dim``, the conditioning of Rombach et al. Sec. 3.3:
``Attention(Q = W_q φ(z_t), K = W_k τ(c), V = W_v τ(c))`` with a context ``c`` of shape ``(B, L, context_dim)``).
``"auto"`` picks the transformer when ``context_dim`` is set, else the MLP for latent maps smaller than
4x4 and the U-Net otherwise. Class labels ``cond={"y": labels}`` reach the denoiser (the autoencoder is
unconditional, as in LDM); ``num_classes`` is the null label for classifier-free guidance.

Objectives (``objective=``): ``"ddpm"`` (:func:`edifice.generative.ddpm.loss`, integer steps, ``t_scale=1``;
sampled by DDPM or DDIM) or ``"flow_matching"`` (:func:`edifice.generative.flow_matching.loss`,
``t ∈ [0, 1]`` with noise at 0, ``t_scale=1000``; sampled by any ODE method).

The scale factor is the buffer ``nets.denoiser.latent_scale``, 0 until :func:`estimate_latent_scale` sets it
— the one function here that touches module state, by design (it is saved with the denoiser's
``state_dict``). :func:`denoiser_loss` refuses an unestimated scale; :func:`encode`, :func:`decode`,
:func:`sample` and the joint :func:`loss` read an unestimated scale as 1 (raw latent units).

Training recipe (two phases): :func:`autoencoder_loss` for the first steps, then
:func:`estimate_latent_scale` on a fixed batch, then :func:`denoiser_loss` (the encoder is frozen: latents
are computed under ``no_grad``). :func:`loss` adds both terms (the denoiser term on detached latents) for
single-loop use and the contract tests.

Example:
    >>> import torch
    >>> from edifice.generative import latent_diffusion as ldm
    >>> nets = ldm.build(data_shape=(1, 8, 8), ae_channels=(8, 16), denoiser_hidden=32, denoiser_depth=1)
    >>> ldm.latent_shape(nets)
    (4, 2, 2)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    >>> ae, logs = ldm.autoencoder_loss(nets, x, generator=g); sorted(logs)
    ['kl', 'loss', 'recon']
    >>> s = ldm.estimate_latent_scale(nets, x)        # sets nets.denoiser.latent_scale
    >>> round(float(ldm.encode(nets, x).detach().std()), 4)
    1.0
    >>> value, logs = ldm.denoiser_loss(nets, x, generator=g)
    >>> ldm.sample(nets, (3, 1, 8, 8), steps=5, generator=g).shape
    torch.Size([3, 1, 8, 8])

References:
    High-Resolution Image Synthesis with Latent Diffusion Models. Rombach, Blattmann, Lorenz, Esser, Ommer,
    2022. arXiv:2112.10752.
    Auto-Encoding Variational Bayes. Kingma, Welling, 2014. arXiv:1312.6114.
    Neural Discrete Representation Learning. van den Oord, Vinyals, Kavukcuoglu, 2017. arXiv:1711.00937.
    Denoising Diffusion Probabilistic Models. Ho, Jain, Abbeel, 2020. arXiv:2006.11239.
    Flow Matching for Generative Modeling. Lipman, Chen, Ben-Hamu, Nickel, Le, 2023. arXiv:2210.02747.
    Score-based Generative Modeling in Latent Space. Vahdat, Kreis, Kautz, 2021. arXiv:2106.05931.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    batch_time, check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor,
)
from edifice.blocks.adaln import AdaLNZero
from edifice.blocks.attention import CrossAttention, SelfAttention
from edifice.blocks.conv import ConvDecoder, ConvEncoder, bottom_size, check_channels
from edifice.blocks.embedding import LabelEmbedding, TimestepEmbedding, condition_vector
from edifice.blocks.mlp import ResMLP
from edifice.blocks.unet import UNet
from edifice.generative import ddim, ddpm, flow_matching, vae, vqvae
from edifice.integrators import METHODS

__all__ = [
    "AUTOENCODERS", "OBJECTIVES", "BACKBONES", "KLEncoder", "VQEncoder", "LatentDecoder", "LatentTransformer",
    "LatentDenoiser", "LatentDiffusionNets", "build", "latent_shape", "encode", "decode", "estimate_latent_scale",
    "autoencoder_loss", "denoiser_loss", "loss", "sample",
]

AUTOENCODERS = ("vae", "vqvae")
"""Autoencoders of :func:`build`: KL-regularised (``"vae"``) or VQ-regularised (``"vqvae"``)."""
OBJECTIVES = ("ddpm", "flow_matching")
"""Latent objectives of :func:`build`."""
BACKBONES = ("auto", "mlp", "unet", "transformer")
"""Latent denoiser architectures of :func:`build`."""

_T_SCALE = {"ddpm": 1.0, "flow_matching": 1000.0}
_LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance, as in LDM's DiagonalGaussianDistribution


# ------------------------------------------------------------------------------------------------ networks


class KLEncoder(nn.Module):
    """``x (B, C, H, H) -> (μ, log σ²)``, each ``(B, c, h, h)``: a Gaussian posterior per latent pixel.

    A :class:`~edifice.blocks.conv.ConvEncoder` with a map head of ``2c`` channels; the log-variance is clamped
    to ``[-30, 20]`` (LDM). Built by :func:`build`, whose options are in ``self.config``.
    """

    def __init__(self, in_channels: int, image_size: int, *, channels: tuple[int, ...], latent_channels: int,
                 res_blocks: int) -> None:
        super().__init__()
        self.net = ConvEncoder(in_channels, image_size, channels=channels, out_channels=2 * latent_channels,
                               res_blocks=res_blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=1)  # 2 x (B, c, h, h)
        return mu, logvar.clamp(*_LOGVAR_RANGE)


class VQEncoder(nn.Module):
    """``x (B, C, H, H) -> z_e (B, c, h, h)``, the un-quantised map (the decoder holds the codebook)."""

    def __init__(self, in_channels: int, image_size: int, *, channels: tuple[int, ...], latent_channels: int,
                 res_blocks: int) -> None:
        super().__init__()
        self.net = ConvEncoder(in_channels, image_size, channels=channels, out_channels=latent_channels,
                               res_blocks=res_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, c, h, h)


class LatentDecoder(nn.Module):
    """``z (B, c, h, h) -> x̂ (B, C, H, H)``; with a ``quantizer`` (VQ-reg) ``z`` is first snapped to its codes.

    ``forward`` quantises with the straight-through estimator (:func:`~edifice.generative.vqvae.straight_through`),
    so it stays differentiable in ``z``. ``quantizer`` is a :class:`~edifice.generative.vqvae.VectorQuantizer`
    or None (KL autoencoder).
    """

    def __init__(self, out_channels: int, image_size: int, *, channels: tuple[int, ...], latent_channels: int,
                 res_blocks: int, quantizer: vqvae.VectorQuantizer | None = None) -> None:
        super().__init__()
        self.net = ConvDecoder(out_channels, image_size, channels=tuple(reversed(channels)),
                               in_channels=latent_channels, res_blocks=res_blocks)
        self.quantizer = quantizer

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` snapped to the nearest code vectors (straight-through); the identity without a quantizer."""
        if self.quantizer is None:
            return z
        codes = vqvae.nearest_codes(z, self.quantizer.embed)  # (B, h, h)
        return vqvae.straight_through(z, self.quantizer.lookup(codes).to(z.dtype))  # (B, c, h, h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.quantize(z))  # (B, C, H, H)


class _TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the context, MLP: each a residual; time/label enter by AdaLN-Zero.

    The self-attention and MLP sub-layers are :class:`~edifice.blocks.adaln.AdaLNZero` blocks (modulated by the
    time + label vector ``c``); the cross-attention is a pre-LN residual ``h + CrossAttn(LN(h), context)``
    (Stable Diffusion's ``BasicTransformerBlock`` order), skipped when ``context`` is None.
    """

    def __init__(self, dim: int, cond_dim: int, heads: int, context_dim: int | None) -> None:
        super().__init__()
        self.attn = AdaLNZero(dim, cond_dim, SelfAttention(dim, heads=heads))
        self.cross_norm = nn.LayerNorm(dim) if context_dim is not None else None
        self.cross = CrossAttention(dim, context_dim, heads=heads) if context_dim is not None else None
        mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.mlp = AdaLNZero(dim, cond_dim, mlp)

    def forward(self, h: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self.attn(h, c)  # (B, N, D)
        if context is not None and self.cross is not None:
            h = h + self.cross(self.cross_norm(h), context)  # (B, N, D)
        return self.mlp(h, c)  # (B, N, D)


class LatentTransformer(nn.Module):
    r"""A small transformer over latent tokens with cross-attention to a context: ``net(z, t, y=None, context=None)``.

    Each of the ``h·w`` latent pixels is a token: ``Linear(c, hidden)`` plus a learned position embedding;
    ``depth`` blocks of self-attention, cross-attention (``context`` ``(B, L, context_dim)``) and an MLP;
    ``LN -> Linear(hidden, c)`` back to a latent map. Time (``t_scale`` as in the objective) and labels are
    summed into one vector that modulates the blocks by AdaLN-Zero. ``context=None`` skips the
    cross-attention (the unconditional path).

    Args:
        latent_channels: ``c``. side: ``h`` (square maps). hidden: token width. depth: blocks. heads: attention heads.
        t_scale: time multiplier (1 for DDPM steps, 1000 for flow-matching times).
        num_classes: labels (``y=None`` = null label), or None. context_dim: context width, or None.

    References:
        High-Resolution Image Synthesis with Latent Diffusion Models. Rombach et al., 2022. arXiv:2112.10752.
        Scalable Diffusion Models with Transformers. Peebles, Xie, 2023. arXiv:2212.09748.

    Example:
        >>> net = LatentTransformer(4, 2, hidden=16, depth=1, heads=2, context_dim=8)
        >>> net(torch.randn(3, 4, 2, 2), torch.rand(3), context=torch.randn(3, 5, 8)).shape
        torch.Size([3, 4, 2, 2])
    """

    def __init__(self, latent_channels: int, side: int, *, hidden: int = 128, depth: int = 3, heads: int = 4,
                 t_scale: float = 1.0, num_classes: int | None = None, context_dim: int | None = None) -> None:
        super().__init__()
        self.latent_channels = check_int("latent_channels", latent_channels, min=1)
        self.side = check_int("side", side, min=1)
        check_int("hidden", hidden, min=1)
        check_int("depth", depth, min=1)
        self.context_dim = None if context_dim is None else check_int("context_dim", context_dim, min=1)
        self.time_embed = TimestepEmbedding(hidden, t_scale=t_scale)
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.inp = nn.Linear(latent_channels, hidden)
        self.pos = nn.Parameter(0.02 * torch.randn(side * side, hidden))  # (N, hidden)
        self.blocks = nn.ModuleList(_TransformerBlock(hidden, hidden, heads, context_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, latent_channels))

    def forward(self, z: torch.Tensor, t: Any, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """``z (B, c, h, h)``, ``t (B,)``, ``y (B,)``, ``context (B, L, context_dim)`` -> ``(B, c, h, h)``."""
        s = self.side
        check_tensor("z", z, shape=(None, self.latent_channels, s, s), floating=True)
        if context is not None and self.context_dim is None:
            raise ValueError("context was given but the denoiser was built with context_dim=None")
        t = batch_time(t, z)  # (B,)
        c = condition_vector(self.time_embed, self.label_embed, t, y)  # (B, hidden)
        h = self.inp(z.flatten(2).transpose(1, 2)) + self.pos  # (B, N, hidden)
        for block in self.blocks:
            h = block(h, c, context)
        return self.out(h).transpose(1, 2).reshape(z.shape)  # (B, c, h, h)


class LatentDenoiser(nn.Module):
    """The latent denoiser ``net(z, t, y=None, context=None)`` on latent maps, and the ``latent_scale`` buffer.

    Wraps the backbone: a ResMLP sees the flattened latent ``(B, c·h·h)``, a U-Net the map, the transformer the
    map and the context. ``latent_scale`` (0-dim, 0 = not estimated) is set by :func:`estimate_latent_scale`.
    """

    def __init__(self, net: nn.Module, latent_shape: tuple[int, int, int], kind: str) -> None:
        super().__init__()
        self.net = net
        self.latent_shape = tuple(latent_shape)
        self.kind = kind
        self.register_buffer("latent_scale", torch.zeros(()))

    def forward(self, z: torch.Tensor, t: Any, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("z", z, shape=(None, *self.latent_shape), floating=True)
        if self.kind == "transformer":
            return self.net(z, t, y=y, context=context)
        if context is not None:
            raise ValueError(f"context was given but the denoiser was built with context_dim=None "
                             f"(backbone {self.kind!r}); build with context_dim=... for cross-attention")
        if self.kind == "mlp":
            return self.net(z.flatten(1), t, y=y).reshape(z.shape)  # (B, c·h·h) -> (B, c, h, h)
        return self.net(z, t, y=y)  # (B, c, h, h)


class LatentDiffusionNets(NamedTuple):
    """``encoder`` (:class:`KLEncoder` / :class:`VQEncoder`), ``decoder`` (:class:`LatentDecoder`, holding the VQ
    codebook) and ``denoiser`` (:class:`LatentDenoiser`, holding ``latent_scale``). Options: ``encoder.config``."""

    encoder: nn.Module
    decoder: nn.Module
    denoiser: nn.Module


def build(
    *,
    data_shape: tuple[int, ...],
    autoencoder: str = "vae",
    latent_channels: int = 4,
    ae_channels: Any = None,
    ae_res_blocks: int = 1,
    codebook_size: int = 64,
    vq_ema: bool = True,
    objective: str = "ddpm",
    backbone: str = "auto",
    denoiser_hidden: int = 128,
    denoiser_depth: int = 3,
    denoiser_heads: int = 4,
    base_channels: int = 32,
    channel_mults: Any = None,
    num_classes: int | None = None,
    context_dim: int | None = None,
) -> LatentDiffusionNets:
    """Build the autoencoder and the latent denoiser for images ``(C, H, H)``.

    Args:
        data_shape: ``(C, H, H)``; ``H`` divisible by ``2**len(ae_channels)``.
        autoencoder: ``"vae"`` (KL-regularised) or ``"vqvae"`` (VQ-regularised, codebook in the decoder).
        latent_channels: ``c``, channels of the latent map.
        ae_channels: the encoder's stride-2 stage widths (the decoder mirrors them); default ``(32, 64)``
            (8x8 digits -> 2x2 latents, 28x28 MNIST -> 7x7).
        ae_res_blocks: residual blocks at the lowest resolution of each autoencoder network.
        codebook_size: ``K`` codes (``"vqvae"`` only).
        vq_ema: EMA codebook updates (True) or a codebook loss (``"vqvae"`` only).
        objective: ``"ddpm"`` or ``"flow_matching"``; fixes the denoiser's ``t_scale`` (1 or 1000).
        backbone: ``"auto"``, ``"mlp"``, ``"unet"`` or ``"transformer"`` (see the module docstring).
        denoiser_hidden, denoiser_depth: width and blocks of the ResMLP / transformer.
        denoiser_heads: attention heads of the transformer.
        base_channels, channel_mults: U-Net widths; ``channel_mults`` default ``(1, 2)`` for an even latent side,
            ``(1,)`` for an odd one.
        num_classes: labels for a class-conditional denoiser (``y=None`` = null label), or None.
        context_dim: width of a cross-attention context ``(B, L, context_dim)``, or None (needs the transformer).

    Returns:
        :class:`LatentDiffusionNets` ``(encoder, decoder, denoiser)``; ``encoder.config`` holds the resolved
        options, so ``build(**nets.encoder.config)`` rebuilds the architecture.

    Raises:
        ValueError / TypeError: naming the offending option (``data_shape`` for a non-image shape or a size the
        stages do not divide; ``context_dim`` with a backbone without cross-attention).
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
        raise ValueError(f"data_shape must be an image shape (C, H, H) with H == W (latent diffusion encodes "
                         f"images into latent maps), got {data_shape}")
    check_choice("autoencoder", autoencoder, AUTOENCODERS)
    latent_channels = check_int("latent_channels", latent_channels, min=1)
    ae_channels = check_channels("ae_channels", (32, 64) if ae_channels is None else ae_channels)
    side = bottom_size(data_shape[1], len(ae_channels))
    ae_res_blocks = check_int("ae_res_blocks", ae_res_blocks, min=0)
    codebook_size = check_int("codebook_size", codebook_size, min=2)
    if not isinstance(vq_ema, bool):
        raise TypeError(f"vq_ema must be true or false, got {vq_ema!r}")
    check_choice("objective", objective, OBJECTIVES)
    check_choice("backbone", backbone, BACKBONES)
    denoiser_hidden = check_int("denoiser_hidden", denoiser_hidden, min=1)
    denoiser_depth = check_int("denoiser_depth", denoiser_depth, min=1)
    denoiser_heads = check_int("denoiser_heads", denoiser_heads, min=1)
    base_channels = check_int("base_channels", base_channels, min=1)
    if channel_mults is not None:
        channel_mults = check_shape_tuple("channel_mults", channel_mults)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, min=1)
    if context_dim is not None:
        context_dim = check_int("context_dim", context_dim, min=1)
    kind = backbone
    if kind == "auto":
        kind = "transformer" if context_dim is not None else ("mlp" if side < 4 else "unet")
    if context_dim is not None and kind != "transformer":
        raise ValueError(f"context_dim needs the cross-attention backbone 'transformer' (or 'auto'), "
                         f"got backbone={backbone!r}")
    if kind == "transformer" and denoiser_hidden % denoiser_heads:
        raise ValueError(f"denoiser_heads must divide denoiser_hidden, got denoiser_hidden={denoiser_hidden}, "
                         f"denoiser_heads={denoiser_heads}")
    config: dict[str, Any] = dict(
        data_shape=data_shape, autoencoder=autoencoder, latent_channels=latent_channels, ae_channels=ae_channels,
        ae_res_blocks=ae_res_blocks, codebook_size=codebook_size, vq_ema=vq_ema, objective=objective,
        backbone=backbone, denoiser_hidden=denoiser_hidden, denoiser_depth=denoiser_depth,
        denoiser_heads=denoiser_heads, base_channels=base_channels, channel_mults=channel_mults,
        num_classes=num_classes, context_dim=context_dim)
    c, H = data_shape[0], data_shape[1]
    ae = dict(channels=ae_channels, latent_channels=latent_channels, res_blocks=ae_res_blocks)
    if autoencoder == "vae":
        encoder: nn.Module = KLEncoder(c, H, **ae)
        decoder = LatentDecoder(c, H, **ae)
    else:
        encoder = VQEncoder(c, H, **ae)
        decoder = LatentDecoder(c, H, **ae, quantizer=vqvae.VectorQuantizer(codebook_size, latent_channels,
                                                                            ema=vq_ema))
    shape = (latent_channels, side, side)
    t_scale = _T_SCALE[objective]
    if kind == "mlp":
        net: nn.Module = ResMLP(math.prod(shape), hidden=denoiser_hidden, depth=denoiser_depth, t_scale=t_scale,
                                num_classes=num_classes)
    elif kind == "unet":
        mults = channel_mults if channel_mults is not None else ((1, 2) if side % 2 == 0 else (1,))
        net = UNet(latent_channels, image_size=side, base_channels=base_channels, channel_mults=mults,
                   t_scale=t_scale, num_classes=num_classes)
    else:
        net = LatentTransformer(latent_channels, side, hidden=denoiser_hidden, depth=denoiser_depth,
                                heads=denoiser_heads, t_scale=t_scale, num_classes=num_classes,
                                context_dim=context_dim)
    denoiser = LatentDenoiser(net, shape, kind)
    for m in (encoder, decoder, denoiser):
        m.config = dict(config)
    return LatentDiffusionNets(encoder, decoder, denoiser)


# ------------------------------------------------------------------------------------------------ functions


def _check_nets(nets: Any) -> LatentDiffusionNets:
    if not isinstance(nets, LatentDiffusionNets):
        raise TypeError(f"nets must be the LatentDiffusionNets returned by latent_diffusion.build, "
                        f"got {type(nets).__name__}")
    return nets


def _config(nets: LatentDiffusionNets) -> dict[str, Any]:
    return nets.encoder.config


def latent_shape(nets: LatentDiffusionNets) -> tuple[int, int, int]:
    """The shape ``(c, h, h)`` of one latent map."""
    return tuple(_check_nets(nets).denoiser.latent_shape)


def _check_x(nets: LatentDiffusionNets, x: Any) -> torch.Tensor:
    shape = tuple(_config(nets)["data_shape"])
    check_tensor("x", x, floating=True)
    if tuple(x.shape[1:]) != shape or x.ndim != 1 + len(shape):
        raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}) to match the autoencoder's "
                         f"data_shape {shape}, got {tuple(x.shape)}")
    return x


def _check_z(nets: LatentDiffusionNets, z: Any) -> torch.Tensor:
    shape = latent_shape(nets)
    check_tensor("z", z, floating=True)
    if tuple(z.shape[1:]) != shape or z.ndim != 1 + len(shape):
        raise ValueError(f"z must have the latent shape (B, {', '.join(map(str, shape))}) of this autoencoder, "
                         f"got {tuple(z.shape)}")
    return z


def _cond(nets: LatentDiffusionNets, cond: Any) -> dict[str, Any]:
    cond = check_cond(cond)
    unknown = set(cond) - {"y", "context"}
    if unknown:
        raise ValueError(f"cond may only hold 'y' (class labels) and 'context' (cross-attention), "
                         f"got keys {sorted(unknown)}")
    return cond


def _scale(nets: LatentDiffusionNets, *, required: bool) -> torch.Tensor:
    """``latent_scale`` as a 0-dim tensor; an unestimated (0) scale is an error or 1."""
    s = nets.denoiser.latent_scale
    if bool(s == 0):
        if required:
            raise ValueError("latent_scale was never estimated (nets.denoiser.latent_scale == 0): call "
                             "latent_diffusion.estimate_latent_scale(nets, x) on a data batch after training the "
                             "autoencoder and before training the denoiser")
        return torch.ones_like(s)
    return s


def _raw_latents(nets: LatentDiffusionNets, x: torch.Tensor) -> torch.Tensor:
    """Unscaled latents the denoiser is trained on: the posterior mean (KL) or ``z_e`` (VQ), ``(B, c, h, h)``."""
    out = nets.encoder(x)
    return out[0] if isinstance(out, tuple) else out


def encode(nets: LatentDiffusionNets, x: torch.Tensor) -> torch.Tensor:
    """Latents of images in scaled units: ``s · μ(x)`` (KL) or ``s · z_e(x)`` (VQ), ``(B, C, H, H) -> (B, c, h, h)``.

    Differentiable (wrap in ``torch.no_grad()`` for a frozen encoder). An unestimated scale reads as 1.

    Raises:
        ValueError: if ``x`` does not have the autoencoder's data shape.
    """
    nets = _check_nets(nets)
    x = _check_x(nets, x)
    return _raw_latents(nets, x) * _scale(nets, required=False).to(x.dtype)


def decode(nets: LatentDiffusionNets, z: torch.Tensor) -> torch.Tensor:
    """Images of scaled latents: ``D(z / s)`` (VQ: snapped to the codebook first), ``(B, c, h, h) -> (B, C, H, H)``.

    Raises:
        ValueError: if ``z`` does not have the latent shape (:func:`latent_shape`).
    """
    nets = _check_nets(nets)
    z = _check_z(nets, z)
    return nets.decoder(z / _scale(nets, required=False).to(z.dtype))


@torch.no_grad()
def estimate_latent_scale(nets: LatentDiffusionNets, x: torch.Tensor) -> float:
    """Set ``nets.denoiser.latent_scale = 1 / std(latents of x)`` and return it (Rombach et al., Sec. 4.3.2 / App. G).

    The standard deviation is taken over every entry of the batch's raw latents (posterior means, or ``z_e``
    for VQ), so the denoiser's inputs :func:`encode` ``(x)`` have unit variance. This **mutates the denoiser's
    buffer** (the one function of the family that touches module state): call it once, after the autoencoder is
    trained, on a fixed data batch. It is saved with ``nets.denoiser.state_dict()``.

    Args:
        nets: from :func:`build`.
        x: ``(B, C, H, H)`` images; ``B · c · h · h >= 2`` entries.

    Returns:
        The scale ``s`` as a python float.

    Raises:
        ValueError: if ``x`` has the wrong shape or its latents are constant / not finite.
    """
    nets = _check_nets(nets)
    x = _check_x(nets, x)
    z = _raw_latents(nets, x).double()
    if z.numel() < 2:
        raise ValueError(f"x must give at least 2 latent entries to estimate a standard deviation, "
                         f"got {tuple(x.shape)}")
    std = float(z.std())
    if not math.isfinite(std) or std <= 0.0:
        raise ValueError(f"x gives latents with standard deviation {std}; cannot estimate latent_scale from it")
    nets.denoiser.latent_scale.fill_(1.0 / std)
    return 1.0 / std


def autoencoder_loss(
    nets: LatentDiffusionNets,
    x: torch.Tensor,
    *,
    kl_weight: float | None = None,
    beta: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""The first-stage objective: reconstruction plus the KL or VQ regulariser (see the module docstring).

    KL: ``mean_B [Σ_pixels (x - D(z))² + w_KL · KL(q(z|x) ‖ N(0, I))]``, ``z = μ + σ ε`` drawn with
    ``generator`` (:func:`edifice.generative.vae.reparameterize`, :func:`~edifice.generative.vae.gaussian_kl`).
    VQ: ``mse(x, D(st(z_e, z_q))) + β mse(z_e, sg[z_q])`` (+ the codebook loss without EMA), with
    :func:`~edifice.generative.vqvae.nearest_codes` / :func:`~edifice.generative.vqvae.vq_losses`; when the
    quantizer is in training mode this also updates its EMA codebook and restarts dead codes (drawing from
    ``generator``), as :func:`edifice.generative.vqvae.loss` does. The autoencoder is unconditional (as in
    LDM): ``cond`` is checked and not used.

    Args:
        nets: from :func:`build`.
        x: ``(B, C, H, H)`` images in ``[-1, 1]``.
        kl_weight: ``w_KL >= 0`` (KL autoencoder only; default ``1e-6``, the paper's).
        beta: commitment weight ``β >= 0`` (VQ autoencoder only; default 0.25).
        generator: the posterior noise (KL) or the dead-code restarts (VQ).
        cond: ``{"y": ..., "context": ...}`` or None.

    Returns:
        ``(loss, logs)``: logs ``loss``, ``recon`` (mean squared error per pixel) and ``kl`` (nats per example)
        or ``commitment``, ``perplexity``, ``usage``.

    Raises:
        ValueError / TypeError: wrong ``x`` shape, a weight of the other autoencoder, negative weights, bad ``cond``.
    """
    nets = _check_nets(nets)
    x = _check_x(nets, x)
    check_generator(generator)
    _cond(nets, cond)
    kind = _config(nets)["autoencoder"]
    if kind == "vae":
        if beta is not None:
            raise ValueError(f"beta applies only to autoencoder='vqvae', got beta={beta!r} with 'vae'")
        kl_weight = check_float("kl_weight", 1e-6 if kl_weight is None else kl_weight, min=0.0)
        mu, logvar = nets.encoder(x)  # 2 x (B, c, h, h)
        z = vae.reparameterize(mu, logvar, generator=generator)  # (B, c, h, h)
        x_rec = nets.decoder(z)  # (B, C, H, H)
        sq = (x_rec - x).square()
        kl = vae.gaussian_kl(mu, logvar).mean()
        total = sq.flatten(1).sum(1).mean() + kl_weight * kl
        return total, {"loss": total.detach(), "recon": sq.mean().detach(), "kl": kl.detach()}
    if kl_weight is not None:
        raise ValueError(f"kl_weight applies only to autoencoder='vae', got kl_weight={kl_weight!r} with 'vqvae'")
    beta = check_float("beta", 0.25 if beta is None else beta, min=0.0)
    q = nets.decoder.quantizer
    z_e = nets.encoder(x)  # (B, c, h, h)
    codes = vqvae.nearest_codes(z_e, q.embed)  # (B, h, h)
    z_q = q.lookup(codes)  # (B, c, h, h)
    codebook, commitment = vqvae.vq_losses(z_e, z_q, beta=beta)
    recon = F.mse_loss(nets.decoder.net(vqvae.straight_through(z_e, z_q)), x)
    total = recon + commitment + (0.0 if q.ema else codebook)
    k = q.codebook_size
    logs = {"loss": total.detach(), "recon": recon.detach(), "commitment": commitment.detach(),
            "perplexity": vqvae.perplexity(codes, k),
            "usage": (torch.bincount(codes.reshape(-1), minlength=k) > 0).float().mean()}
    if q.training:
        if q.ema:
            vqvae.ema_codebook_update(q, z_e, codes)
        vqvae.restart_dead_codes(q, z_e, codes=codes, generator=generator)
    return total, logs


def _latent_objective(nets: LatentDiffusionNets, z: torch.Tensor, generator: Any, cond: dict, noise: Any,
                      t: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if noise is not None:
        check_tensor("noise", noise, shape=tuple(z.shape), floating=True)
    if _config(nets)["objective"] == "ddpm":
        return ddpm.loss(nets.denoiser, z, generator=generator, cond=cond, noise=noise, t=t)
    return flow_matching.loss(nets.denoiser, z, generator=generator, cond=cond, noise=noise, t=t)


def denoiser_loss(
    nets: LatentDiffusionNets,
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The second-stage objective: the objective's loss on the scaled latents ``s · E(x)`` of a frozen encoder.

    Encodes under ``torch.no_grad()`` (no gradient reaches the autoencoder), then calls
    :func:`edifice.generative.ddpm.loss` (ε-prediction, integer steps) or
    :func:`edifice.generative.flow_matching.loss` on the latents with the denoiser.

    Args:
        nets: from :func:`build`, with the scale estimated (:func:`estimate_latent_scale`).
        x: ``(B, C, H, H)`` images in ``[-1, 1]``.
        generator: draws the times and the noise.
        cond: ``{"y": (B,) labels, "context": (B, L, context_dim)}`` for the denoiser, or None.
        noise, t: overrides of the latent noise ``(B, c, h, h)`` and the times (the objective's units).

    Returns:
        ``(loss, logs)`` with logs ``loss`` and ``latent_std`` (std of the scaled latents of the batch).

    Raises:
        ValueError: if the scale was never estimated, or for a wrong ``x`` / ``noise`` / ``t`` / ``cond``.
    """
    nets = _check_nets(nets)
    x = _check_x(nets, x)
    scale = _scale(nets, required=True)
    return _denoiser_term(nets, x, scale, generator, cond, noise, t)


def _denoiser_term(nets: LatentDiffusionNets, x: torch.Tensor, scale: torch.Tensor, generator: Any, cond: Any,
                   noise: Any, t: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The denoiser's loss on ``scale ·`` latents of ``x`` computed under ``no_grad`` (a frozen encoder)."""
    cond = _cond(nets, cond)
    check_generator(generator)
    with torch.no_grad():
        z = _raw_latents(nets, x) * scale.to(x.dtype)  # (B, c, h, h)
    value, logs = _latent_objective(nets, z, generator, cond, noise, t)
    return value, {**logs, "latent_std": z.std()}


def loss(
    nets: LatentDiffusionNets,
    x: torch.Tensor,
    *,
    kl_weight: float | None = None,
    beta: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Both stages in one loss: :func:`autoencoder_loss` + the denoiser term on detached latents.

    The denoiser never back-propagates into the encoder, so the sum trains each network on its own objective
    (single-loop training; the two-phase recipe calls the two losses separately). An unestimated scale reads as
    1 here (raw latent units) instead of raising.

    Args:
        nets, x, kl_weight, beta, generator, cond: as in :func:`autoencoder_loss`.
        noise, t: as in :func:`denoiser_loss`.

    Returns:
        ``(loss, logs)``: the autoencoder's logs plus ``autoencoder_loss``, ``denoiser_loss``, ``latent_std``,
        and ``loss`` the sum.
    """
    ae, ae_logs = autoencoder_loss(nets, x, kl_weight=kl_weight, beta=beta, generator=generator, cond=cond)
    den, den_logs = _denoiser_term(nets, x, _scale(nets, required=False), generator, cond, noise, t)
    total = ae + den
    return total, {**ae_logs, "autoencoder_loss": ae.detach(), "denoiser_loss": den.detach(),
                   "latent_std": den_logs["latent_std"], "loss": total.detach()}


def sample(
    nets: LatentDiffusionNets,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    sampler: str | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample latents with the objective's sampler, then decode them: ``D(z / s)``.

    ``objective="ddpm"``: ``sampler`` ``"ddpm"`` (ancestral, default; ``steps=None`` = all ``T``, fewer steps are
    respaced) or ``"ddim"`` (η = 0; default 50 steps). ``objective="flow_matching"``: ``sampler`` is an ODE method
    of :mod:`edifice.integrators` (default ``"euler"``), ``steps`` default 20. Uses the nets in whatever mode they
    are in (call ``.eval()`` first) and runs under ``torch.no_grad()``.

    Args:
        nets: from :func:`build`.
        shape: ``(B, C, H, H)`` matching the data shape.
        steps, sampler: see above.
        generator: the source of randomness.
        cond: ``{"y": (B,) labels, "context": (B, L, context_dim)}`` for the denoiser (wrap the denoiser with
            :mod:`edifice.guidance` for classifier-free guidance), or None.
        device: where to sample (default: the networks' device).

    Returns:
        ``(B, C, H, H)`` float32 images in model space.

    Raises:
        ValueError / TypeError: ``shape`` not matching the data shape, an unknown ``sampler`` or bad ``steps``.
    """
    nets = _check_nets(nets)
    shape = check_shape_tuple("shape", shape)
    want = tuple(_config(nets)["data_shape"])
    if shape[1:] != want:
        raise ValueError(f"shape must be (B, {', '.join(map(str, want))}) for this network's data_shape {want}, "
                         f"got {shape}")
    cond = _cond(nets, cond)
    check_generator(generator)
    objective = _config(nets)["objective"]
    device = torch.device(device) if device is not None else nets.denoiser.latent_scale.device
    zshape = (shape[0], *latent_shape(nets))
    with torch.no_grad():
        if objective == "ddpm":
            sampler = check_choice("sampler", "ddpm" if sampler is None else sampler, ("ddpm", "ddim"))
            if sampler == "ddpm":
                z = ddpm.sample(nets.denoiser, zshape, steps=steps, generator=generator, cond=cond, device=device)
            else:
                z = ddim.sample(nets.denoiser, zshape, steps=50 if steps is None else steps, generator=generator,
                                cond=cond, device=device)
        else:
            sampler = check_choice("sampler", "euler" if sampler is None else sampler, METHODS)
            z = flow_matching.sample(nets.denoiser, zshape, steps=20 if steps is None else steps, method=sampler,
                                     generator=generator, cond=cond, device=device)
        x = decode(nets, z)  # (B, C, H, H)
    return x.float()
