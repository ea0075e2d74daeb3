r"""Diffusion Transformer (DiT) building blocks: patches, 2-D sin-cos positions, AdaLN-Zero blocks, the DiT.

A DiT (Peebles & Xie 2023) cuts an image ``(C, H, W)`` into ``N = (H/p)(W/p)`` non-overlapping ``p x p``
patches, embeds each linearly to a ``D``-dimensional token, adds a fixed 2-D sine-cosine position code,
runs ``depth`` transformer blocks conditioned on ``c = e_t(t) + e_y(y)`` and maps every token back to a
``p x p`` patch of ``C`` (or ``2C`` with a learned variance) channels::

    tokens = patchify(x, p) W_in + pos                                   (B, N, D)
    tokens <- tokens + g1 ⊙ Attn(LN(tokens)(1 + a1) + b1)                 (b1, a1, g1, b2, a2, g2) = W SiLU(c)
    tokens <- tokens + g2 ⊙ MLP(LN(tokens)(1 + a2) + b2)
    out    = unpatchify(Linear(LN(tokens)(1 + a) + b), p)                 (b, a) = W_f SiLU(c)

**Conventions** (those of the DiT repository, facebookresearch/DiT):

* patch layout: a token holds its patch's pixels in ``(p1 p2 c)`` order (row within the patch, column,
  channel), tokens in row-major order over the patch grid — ``"b c (h p1) (w p2) -> b (h w) (p1 p2 c)"``.
  Embedding these with a ``Linear`` equals DiT's ``Conv2d(kernel=stride=p)`` with its weight permuted to
  ``(D, p, p, C)``.
* position code: half of the channels encode the column index, the other half the row index, each as
  ``[sin(pos ω_0..ω_{d/2-1}), cos(pos ω_0..ω_{d/2-1})]`` with ``ω_k = 10000^{-k/(d/2)}`` (**[sin | cos]**
  order, computed in float64): :func:`sincos_pos_embed_2d`. Note the time embedding of the library is
  ``[cos | sin]`` (as in DiT's ``TimestepEmbedder``); only the position code is ``[sin | cos]``.
* AdaLN-Zero: the six modulation vectors of a block come from two zero-initialised
  :class:`~edifice.blocks.AdaLNZero` wrappers (shift / scale / gate for attention, then for the MLP), i.e.
  DiT's single ``Linear(D, 6D)`` split into its two row halves. The final layer's modulation and its
  output projection are zero-initialised too, so a fresh :class:`DiT` outputs exactly zeros.
* LayerNorms have no affine parameters and ``eps = 1e-6``; the MLP uses tanh-approximated GELU; other
  linear layers are Xavier-uniform initialised, label and time embeddings ``N(0, 0.02²)``, as in DiT.

Example:
    >>> net = dit_preset("tiny", data_shape=(1, 8, 8), num_classes=10)
    >>> x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 999.0]), torch.tensor([4, 10])
    >>> bool((net(x, t, y=y) == 0).all())  # AdaLN-Zero: a fresh DiT outputs zeros
    True
    >>> patchify(x, 2).shape
    torch.Size([2, 16, 4])

References:
    Scalable Diffusion Models with Transformers. Peebles, Xie, 2023. arXiv:2212.09748.
    An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale. Dosovitskiy et al., 2021.
    arXiv:2010.11929.
    Masked Autoencoders Are Scalable Vision Learners (2-D sin-cos position code). He et al., 2022.
    arXiv:2111.06377.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from edifice._checks import batch_time, check_choice, check_float, check_int, check_shape_tuple, check_tensor
from edifice.blocks.adaln import AdaLNZero, modulate
from edifice.blocks.attention import SelfAttention
from edifice.blocks.embedding import TIME_FEATURES, LabelEmbedding, TimestepEmbedding, condition_vector

__all__ = [
    "patchify", "unpatchify", "sincos_pos_embed_2d", "DiTMlp", "DiTBlock", "FinalLayer", "DiT",
    "DIT_PRESETS", "dit_preset",
]


def _check_patch(patch_size: Any, size: Sequence[int], shape_name: str, shape: Any) -> int:
    """``patch_size`` must be a positive int dividing every entry of ``size`` (the spatial sizes)."""
    p = check_int("patch_size", patch_size, min=1)
    if any(s % p for s in size):
        raise ValueError(
            f"patch_size must divide the image height and width; got patch_size={p}, {shape_name}={tuple(shape)}"
        )
    return p


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping ``p x p`` patches, one token per patch.

    Args:
        x: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``p = patch_size``.
        patch_size: ``p``, a positive int.

    Returns:
        ``(B, N, p*p*C)`` with ``N = (H/p)(W/p)`` tokens in row-major order over the patch grid, each holding
        its pixels in ``(p1 p2 c)`` order.

    Raises:
        TypeError / ValueError: ``x`` is not a 4-D tensor, or ``patch_size`` does not divide ``H`` and ``W``.

    Example:
        >>> patchify(torch.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
        tensor([0., 1., 4., 5.])
    """
    check_tensor("x", x, ndim=4)
    p = _check_patch(patch_size, x.shape[2:], "data_shape", x.shape[1:])
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)  # (B, N, p*p*C)


def unpatchify(tokens: torch.Tensor, patch_size: int, channels: int, size: int | Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: reassemble ``(B, N, p*p*C)`` tokens into ``(B, C, H, W)`` images.

    Args:
        tokens: ``(B, (H/p)(W/p), p*p*channels)``.
        patch_size: ``p``. channels: ``C``. size: ``H`` (square) or ``(H, W)``.

    Returns:
        ``(B, C, H, W)``.

    Raises:
        TypeError / ValueError: bad ``patch_size`` / ``channels`` / ``size``, ``patch_size`` not dividing the
        size, or ``tokens`` not shaped ``(B, N, p*p*C)``.
    """
    check_int("channels", channels, min=1)
    hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else check_shape_tuple("size", size)
    if len(hw) != 2:
        raise ValueError(f"size must be an int H or a pair (H, W), got {size!r}")
    check_int("size", hw[0], min=1)
    p = _check_patch(patch_size, hw, "size", hw)
    gh, gw = hw[0] // p, hw[1] // p
    check_tensor("tokens", tokens, shape=(None, gh * gw, p * p * channels))
    return rearrange(tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=gh, w=gw, p1=p, p2=p)  # (B, C, H, W)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """``[sin(pos ω), cos(pos ω)]`` with ``ω_k = 10000^{-k/(dim/2)}``, float64; ``pos (M,) -> (M, dim)``."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))  # (dim/2,)
    out = np.outer(pos.reshape(-1), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_pos_embed_2d(dim: int, grid: int | Sequence[int]) -> torch.Tensor:
    r"""The fixed 2-D sine-cosine position code of DiT / MAE, computed in float64.

    For the token at row ``i``, column ``j`` of a ``gh x gw`` grid (token index ``i gw + j``)::

        e = [sin(j ω), cos(j ω), sin(i ω), cos(i ω)],    ω_k = 10000^{-k / (dim/4)},  k = 0..dim/4-1

    i.e. the first half of the channels encodes the column, the second half the row, each in ``[sin | cos]``
    order (the DiT repository's ``get_2d_sincos_pos_embed``, also diffusers').

    Args:
        dim: embedding width, a positive multiple of 4.
        grid: ``g`` (a ``g x g`` grid) or ``(gh, gw)``.

    Returns:
        ``(gh * gw, dim)`` float64 tensor (cast at use).

    Raises:
        TypeError / ValueError: ``dim`` not a positive multiple of 4 or a bad ``grid``.

    Example:
        >>> sincos_pos_embed_2d(8, 2)[0]  # the token at (0, 0): sin 0 = 0, cos 0 = 1
        tensor([0., 0., 1., 1., 0., 0., 1., 1.], dtype=torch.float64)
    """
    check_int("dim", dim, min=1)
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for the 2-D sin-cos position code, got {dim}")
    gh, gw = (grid, grid) if isinstance(grid, int) and not isinstance(grid, bool) else check_shape_tuple("grid", grid)
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)  # (gh*gw, dim)
    return torch.from_numpy(emb)


class DiTMlp(nn.Module):
    """The transformer MLP ``Linear(D, rD) -> GELU(tanh) -> Linear(rD, D)`` on tokens ``(B, N, D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # (B, N, D)


class DiTBlock(nn.Module):
    r"""A DiT block: self-attention and an MLP, each wrapped in AdaLN-Zero (Peebles & Xie, Fig. 3).

    .. math::
        h = x + g_1 \odot \mathrm{Attn}(\mathrm{LN}(x)(1 + a_1) + b_1), \qquad
        y = h + g_2 \odot \mathrm{MLP}(\mathrm{LN}(h)(1 + a_2) + b_2)

    with the six vectors ``(b1, a1, g1)`` and ``(b2, a2, g2)`` from two zero-initialised
    ``Linear(SiLU(c))`` maps (:class:`~edifice.blocks.AdaLNZero`), so a fresh block is the identity.

    Args:
        dim: token width ``D`` (divisible by ``heads``).
        heads: attention heads.
        mlp_ratio: MLP hidden width ``round(mlp_ratio * D)`` (> 0).
        cond_dim: width of ``c``; default ``dim``.

    Raises:
        TypeError / ValueError: for an invalid option.

    References:
        Scalable Diffusion Models with Transformers. Peebles, Xie, 2023. arXiv:2212.09748.

    Example:
        >>> block = DiTBlock(16, 4)
        >>> x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
        >>> torch.equal(block(x, c), x)
        True
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, cond_dim: int | None = None) -> None:
        super().__init__()
        check_int("dim", dim, min=1)
        mlp_ratio = check_float("mlp_ratio", mlp_ratio, min=0.0, min_open=True)
        cond_dim = dim if cond_dim is None else check_int("cond_dim", cond_dim, min=1)
        self.attn = AdaLNZero(dim, cond_dim, SelfAttention(dim, heads=heads))
        self.mlp = AdaLNZero(dim, cond_dim, DiTMlp(dim, max(1, round(mlp_ratio * dim))))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Tokens ``x (B, N, D)`` under conditioning ``c (B, cond_dim)`` -> ``(B, N, D)``."""
        return self.mlp(self.attn(x, c), c)


class FinalLayer(nn.Module):
    """DiT's output layer: ``Linear(LN(x)(1 + a) + b)`` with ``(b, a) = W SiLU(c)``; all zero-initialised.

    Args:
        dim: token width ``D``. patch: patch size ``p``. out_channels: channels per output pixel.
        cond_dim: width of ``c``; default ``dim``.

    Returns (forward):
        ``(B, N, p*p*out_channels)`` tokens for :func:`unpatchify`.
    """

    def __init__(self, dim: int, patch: int, out_channels: int, *, cond_dim: int | None = None) -> None:
        super().__init__()
        check_int("dim", dim, min=1)
        check_int("patch", patch, min=1)
        check_int("out_channels", out_channels, min=1)
        cond_dim = dim if cond_dim is None else check_int("cond_dim", cond_dim, min=1)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        for layer in (self.modulation[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)  # 2 x (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, N, p*p*out)


class DiT(nn.Module):
    """Diffusion Transformer ``net(x, t, y=None)`` over images ``(C, H, W)`` (Peebles & Xie 2023).

    See the module docstring for the architecture and its conventions. With ``learn_sigma`` the output has
    ``2C`` channels: ``[:, :C]`` is the prediction (ε for DDPM) and ``[:, C:]`` the raw variance
    interpolation ``v`` of Nichol & Dhariwal (read by :mod:`edifice.generative.dit`). The constructor options
    are recorded in ``self.config`` (JSON-serialisable) so ``DiT(**net.config)`` rebuilds it.

    Args:
        data_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``patch_size``.
        patch_size: ``p``. hidden: token width ``D`` (a multiple of 4, divisible by ``heads``).
        depth: number of :class:`DiTBlock`. heads: attention heads. mlp_ratio: MLP width / ``D``.
        num_classes: labels for class conditioning (``y=None`` or ``num_classes`` = the null label), or None.
        learn_sigma: output ``2C`` channels (prediction and variance interpolation).
        t_scale: factor on ``t`` before the sinusoidal time features (1 for DDPM steps ``0..T-1``, 1000 for
            flow matching / score-SDE times in ``[0, 1]``, 250 for EDM's ``c_noise``).
        time_features: ``"sinusoidal"`` or ``"fourier"`` (see :class:`~edifice.blocks.TimestepEmbedding`).

    Raises:
        TypeError / ValueError: naming the offending option (e.g. ``patch_size`` not dividing ``data_shape``).

    References:
        Scalable Diffusion Models with Transformers. Peebles, Xie, 2023. arXiv:2212.09748.

    Example:
        >>> net = DiT((1, 8, 8), patch_size=2, hidden=32, depth=2, heads=4, learn_sigma=True)
        >>> net(torch.randn(3, 1, 8, 8), torch.tensor([0.0, 1.0, 2.0])).shape
        torch.Size([3, 2, 8, 8])
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        *,
        patch_size: int,
        hidden: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        learn_sigma: bool = False,
        t_scale: float = 1.0,
        time_features: str = "sinusoidal",
    ) -> None:
        super().__init__()
        data_shape = check_shape_tuple("data_shape", data_shape)
        if len(data_shape) != 3:
            raise ValueError(f"data_shape must be an image shape (C, H, W) for a DiT, got {data_shape}")
        c, h, w = data_shape
        p = _check_patch(patch_size, (h, w), "data_shape", data_shape)
        check_int("hidden", hidden, min=1)
        if hidden % 4:
            raise ValueError(f"hidden must be a multiple of 4 (2-D sin-cos position code), got {hidden}")
        check_int("depth", depth, min=1)
        check_int("heads", heads, min=1)
        if hidden % heads:
            raise ValueError(f"heads must divide hidden; got hidden={hidden}, heads={heads}")
        mlp_ratio = check_float("mlp_ratio", mlp_ratio, min=0.0, min_open=True)
        if num_classes is not None:
            check_int("num_classes", num_classes, min=1)
        if not isinstance(learn_sigma, bool):
            raise TypeError(f"learn_sigma must be a bool, got {type(learn_sigma).__name__} {learn_sigma!r}")
        t_scale = check_float("t_scale", t_scale, min=0.0, min_open=True)
        check_choice("time_features", time_features, TIME_FEATURES)

        self.config: dict[str, Any] = dict(
            data_shape=list(data_shape), patch_size=p, hidden=hidden, depth=depth, heads=heads,
            mlp_ratio=mlp_ratio, num_classes=num_classes, learn_sigma=learn_sigma, t_scale=t_scale,
            time_features=time_features)
        self.data_shape, self.patch_size, self.num_classes = tuple(data_shape), p, num_classes
        self.learn_sigma, self.in_channels = learn_sigma, c
        self.out_channels = 2 * c if learn_sigma else c
        self.grid = (h // p, w // p)

        self.x_embed = nn.Linear(p * p * c, hidden)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden, self.grid).float()[None], persistent=False)
        self.time_embed = TimestepEmbedding(hidden, t_scale=t_scale, features=time_features)
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden, p, self.out_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's ``initialize_weights``: Xavier linears, N(0, 0.02²) embeddings, zero AdaLN-Zero and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # DiT's patch embedding is a Conv2d whose weight is Xavier-initialised as a (D, p*p*C) matrix: the same.
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.table.weight, std=0.02)
        for block in self.blocks:
            for sub in (block.attn, block.mlp):
                nn.init.zeros_(sub.modulation[1].weight)
                nn.init.zeros_(sub.modulation[1].bias)
        for layer in (self.final.modulation[1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None = None, *,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the network.

        Args:
            x: ``(B, C, H, W)``. t: ``(B,)`` times (a number or 0-dim tensor is broadcast).
            y: ``(B,)`` long labels in ``[0, num_classes]`` (``num_classes`` = null label) or ``None``.
            emb: ``(B, hidden)`` extra conditioning added to the time embedding, or None.

        Returns:
            ``(B, C, H, W)``, or ``(B, 2C, H, W)`` with ``learn_sigma``.

        Raises:
            ValueError: shape mismatch of ``x`` / ``t`` / ``y``, labels out of range, or ``y`` given to an
            unconditional network.
        """
        check_tensor("x", x, shape=(None, *self.data_shape), floating=True)
        t = batch_time(t, x)  # (B,)
        c = condition_vector(self.time_embed, self.label_embed, t, y, emb)  # (B, D)
        h = self.x_embed(patchify(x, self.patch_size)) + self.pos_embed.to(x.dtype)  # (B, N, D)
        for block in self.blocks:
            h = block(h, c)  # (B, N, D)
        h = self.final(h, c)  # (B, N, p*p*out)
        return unpatchify(h, self.patch_size, self.out_channels, self.data_shape[1:])  # (B, out, H, W)


DIT_PRESETS: dict[str, dict[str, int]] = {
    **{f"{name}/{p}": dict(hidden=d, depth=n, heads=k, patch_size=p)
       for name, (d, n, k) in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16),
                               "XL": (1152, 28, 16)}.items()
       for p in (2, 4, 8)},
    "tiny": dict(hidden=64, depth=4, heads=4, patch_size=2),
    "small28": dict(hidden=128, depth=6, heads=4, patch_size=4),
}
"""Named DiT configurations: the paper's ``S/B/L/XL`` with patch 2, 4, 8 (Table 1 of Peebles & Xie) and two
small ones, ``"tiny"`` (8x8 images, 16 tokens) and ``"small28"`` (28x28 images, 49 tokens)."""


def dit_preset(name: str, *, data_shape: Sequence[int], **overrides: Any) -> DiT:
    """Build the :class:`DiT` preset ``name`` (a key of :data:`DIT_PRESETS`), e.g. ``dit_preset("XL/2", ...)``.

    Args:
        name: ``"S/2"``, ..., ``"XL/8"``, ``"tiny"`` or ``"small28"``.
        data_shape: ``(C, H, W)``.
        **overrides: any other :class:`DiT` option (``num_classes``, ``learn_sigma``, ``t_scale``, or a
            preset field such as ``patch_size``).

    Raises:
        ValueError: an unknown ``name`` (the message lists the presets) or an invalid option.

    Example:
        >>> net = dit_preset("S/8", data_shape=(4, 32, 32), num_classes=1000)
        >>> round(sum(p.numel() for p in net.parameters()) / 1e6, 1)  # the paper's 33M
        33.0
    """
    check_choice("name", name, tuple(DIT_PRESETS))
    return DiT(data_shape, **{**DIT_PRESETS[name], **overrides})
