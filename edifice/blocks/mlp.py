"""Multilayer perceptrons: a plain ``MLP`` and the time/label-conditioned residual ``ResMLP``.

``ResMLP`` is the denoiser / velocity network for vector data (2-D toy sets, flattened features):
pre-norm residual blocks (He et al., 2016; Ba et al., 2016) whose normalised activations are
modulated FiLM-style by one conditioning vector, the sum of a sinusoidal time embedding and an
optional class-label embedding (with a null class for classifier-free guidance).

References:
    Deep Residual Learning for Image Recognition, He et al., 2015, arXiv:1512.03385.
    Layer Normalization, Ba et al., 2016, arXiv:1607.06450.
    FiLM: Visual Reasoning with a General Conditioning Layer, Perez et al., 2018, arXiv:1709.07871.
    Denoising Diffusion Probabilistic Models, Ho et al., 2020, arXiv:2006.11239.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edifice._checks import batch_time, check_choice, check_float, check_int, check_tensor
from edifice.blocks.adaln import modulate
from edifice.blocks.embedding import TIME_FEATURES, LabelEmbedding, TimestepEmbedding, condition_vector

__all__ = ["ACTIVATIONS", "MLP", "ResMLP"]

#: Activation names accepted by ``MLP(act=...)``.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}


class MLP(nn.Module):
    r"""Fully connected network: ``depth`` hidden layers ``Linear -> act``, then a ``Linear`` output.

    .. math::
        h_0 = x, \quad h_{k} = \mathrm{act}(W_k h_{k-1} + b_k)\ (k = 1..\mathrm{depth}),
        \quad y = W_{\mathrm{out}} h_{\mathrm{depth}} + b_{\mathrm{out}}

    ``depth=0`` is a single linear map. The constructor options are recorded in ``self.config``.

    Args:
        in_dim: input width.
        out_dim: output width.
        hidden: width of each hidden layer.
        depth: number of hidden layers (>= 0); the network has ``depth + 1`` linear layers.
        act: activation name, one of ``ACTIVATIONS``.

    Raises:
        TypeError / ValueError: for an invalid option (an unknown ``act`` lists the valid names).

    Example:
        >>> MLP(3, 2, hidden=16)(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int = 256, depth: int = 2, act: str = "silu") -> None:
        super().__init__()
        check_int("in_dim", in_dim, min=1)
        check_int("out_dim", out_dim, min=1)
        check_int("hidden", hidden, min=1)
        check_int("depth", depth, min=0)
        check_choice("act", act, tuple(ACTIVATIONS))
        self.config: dict[str, Any] = dict(in_dim=in_dim, out_dim=out_dim, hidden=hidden, depth=depth, act=act)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[act]()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` ``(..., in_dim)`` to ``(..., out_dim)``."""
        return self.net(x)


class ResMLPBlock(nn.Module):
    """Pre-norm residual block ``h + FF(modulate(LN(h), shift, scale))`` with FiLM from ``c``.

    ``(shift, scale) = Linear(SiLU(c))`` and ``FF = Linear -> SiLU -> Dropout -> Linear``.
    """

    def __init__(self, hidden: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * hidden))
        self.ff = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.film(c).chunk(2, dim=-1)  # 2 x (B, hidden)
        return h + self.ff(modulate(self.norm(h), shift, scale))  # (B, hidden)


class ResMLP(nn.Module):
    r"""Time (and label) conditioned residual MLP for vector data: ``net(x, t, y=None)``.

    .. math::
        c = e_t(t) + e_y(y), \quad h_0 = W_{in} x, \quad
        h_k = h_{k-1} + \mathrm{FF}_k(\mathrm{LN}(h_{k-1}) (1 + \gamma_k(c)) + \beta_k(c)),
        \quad \mathrm{out} = W_{out}\, \mathrm{SiLU}(\mathrm{LN}(h_{depth}))

    The output layer keeps PyTorch's default initialisation (not zero), so a fresh network
    already depends on ``t`` and ``y``. The constructor options, with defaults resolved, are
    recorded in ``self.config`` (a JSON-serialisable dict) so ``ResMLP(**net.config)`` rebuilds it.

    Args:
        data_dim: width of ``x``.
        hidden: width of the residual stream.
        depth: number of residual blocks (>= 1).
        time_dim: width of the conditioning vector ``c``; ``None`` means ``hidden``.
        t_scale: factor applied to ``t`` before the sinusoidal embedding (1 for DDPM steps
            ``0..T-1``, 1000 for flow-matching times in ``[0, 1]``).
        time_features: ``"sinusoidal"`` or ``"fourier"`` (Gaussian random features, see ``TimestepEmbedding``).
        num_classes: number of classes for label conditioning, or ``None`` (unconditional).
            With labels, ``y=None`` in ``forward`` means the null ("no label") class.
        dropout: dropout probability inside each block, in ``[0, 1)``.

    Raises:
        TypeError / ValueError: for an invalid option.

    References:
        Deep Residual Learning for Image Recognition, He et al., 2015, arXiv:1512.03385.
        FiLM: Visual Reasoning with a General Conditioning Layer, Perez et al., 2018, arXiv:1709.07871.

    Example:
        >>> net = ResMLP(2, hidden=32, depth=2, num_classes=3)
        >>> net(torch.randn(4, 2), torch.rand(4), y=torch.tensor([0, 1, 2, 3])).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        data_dim: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int | None = None,
        t_scale: float = 1.0,
        time_features: str = "sinusoidal",
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("data_dim", data_dim, min=1)
        check_int("hidden", hidden, min=1)
        check_int("depth", depth, min=1)
        time_dim = hidden if time_dim is None else check_int("time_dim", time_dim, min=1)
        t_scale = check_float("t_scale", t_scale, min=0.0, min_open=True)
        check_choice("time_features", time_features, TIME_FEATURES)
        if num_classes is not None:
            check_int("num_classes", num_classes, min=1)
        dropout = check_float("dropout", dropout, min=0.0, max=1.0, max_open=True)
        self.config: dict[str, Any] = dict(
            data_dim=data_dim, hidden=hidden, depth=depth, time_dim=time_dim,
            t_scale=t_scale, time_features=time_features, num_classes=num_classes, dropout=dropout,
        )
        self.data_dim = data_dim
        self.num_classes = num_classes
        self.time_embed = TimestepEmbedding(time_dim, t_scale=t_scale, features=time_features)
        self.label_embed = LabelEmbedding(num_classes, time_dim) if num_classes is not None else None
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(ResMLPBlock(hidden, time_dim, dropout) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None = None, *,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate the network.

        Args:
            x: ``(B, data_dim)``.
            t: ``(B,)`` times (a python number or 0-dim tensor is broadcast to the batch).
            y: ``(B,)`` long labels in ``[0, num_classes]`` (``num_classes`` = null label) or ``None``.
            emb: ``(B, time_dim)`` extra conditioning added to ``c`` (e.g. a second time, see
                :class:`~edifice.blocks.TwoTimeNet`), or None.

        Returns:
            ``(B, data_dim)``.

        Raises:
            ValueError: on a shape mismatch of ``x`` / ``t`` / ``y``, labels out of range, or a ``y``
                given to an unconditional network.
        """
        check_tensor("x", x, shape=(None, self.data_dim), floating=True)
        t = batch_time(t, x)  # (B,)
        c = condition_vector(self.time_embed, self.label_embed, t, y, emb)  # (B, time_dim)
        h = self.inp(x)  # (B, hidden)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)  # (B, data_dim)
