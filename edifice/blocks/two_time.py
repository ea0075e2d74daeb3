"""A backbone conditioned on two times: ``net(x, t, s, y=None)``.

Shortcut models condition the velocity on the step size ``d`` as well as on ``t`` (Frans et al. 2025);
MeanFlow's average velocity ``u(z, r, t)`` depends on two times (Geng et al. 2025, who embed ``t`` and
``t - r``). Both use this one block: the denoiser backbone of :func:`edifice.blocks.backbone`, with the
sinusoidal embedding of the second time ``s`` added to its conditioning vector (time + label), so every
layer that sees the time sees both.

Example:
    >>> import torch
    >>> net = TwoTimeNet((2,), t_scale=1000.0, s_scale=1000.0, hidden=32, depth=2)
    >>> net(torch.randn(4, 2), torch.rand(4), torch.rand(4)).shape
    torch.Size([4, 2])

References:
    One Step Diffusion via Shortcut Models. Frans, Hafner, Levine, Abbeel, 2025. arXiv:2410.12557.
    Mean Flows for One-step Generative Modeling. Geng, Deng, Bai, Kolter, He, 2025. arXiv:2505.13447.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edifice._checks import batch_time, check_float
from edifice.blocks.backbone import backbone
from edifice.blocks.embedding import TimestepEmbedding

__all__ = ["TwoTimeNet"]


class TwoTimeNet(nn.Module):
    """``net(x, t, s, y=None)``: :func:`~edifice.blocks.backbone` with a second time ``s`` in its conditioning.

    ``c = e_t(t) + e_s(s) + e_y(y)``, where ``e_s`` is a :class:`~edifice.blocks.TimestepEmbedding` of
    ``s · s_scale`` of the backbone's conditioning width.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``.
        t_scale, s_scale: factors applied to ``t`` and ``s`` before their sinusoidal embeddings.
        **options: the other options of :func:`~edifice.blocks.backbone` (``num_classes``, ``hidden``, ``depth``,
            ``base_channels``, ``channel_mults``, ``num_res_blocks``, ``dropout``, ``arch``, ``dit_preset``,
            ``patch_size``).

    Raises:
        ValueError / TypeError: naming a bad option.
    """

    def __init__(self, data_shape: Sequence[int], *, t_scale: float, s_scale: float, **options: Any) -> None:
        super().__init__()
        s_scale = check_float("s_scale", s_scale, min=0.0, min_open=True)
        self.backbone = backbone(tuple(data_shape), t_scale=t_scale, **options)
        self.s_embed = TimestepEmbedding(self.backbone.time_embed.dim, t_scale=s_scale)

    def forward(self, x: torch.Tensor, t: Any, s: Any, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, *data_shape)``, times ``t`` and ``s`` (``(B,)``, 0-dim or numbers) -> ``(B, *data_shape)``."""
        t = batch_time(t, x, "t")  # (B,)
        s = batch_time(s, x, "s")  # (B,)
        return self.backbone(x, t, y=y, emb=self.s_embed(s))  # (B, *data_shape)
