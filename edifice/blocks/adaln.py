"""Adaptive layer norm: ``modulate`` and the zero-initialised AdaLN-Zero residual block of DiT.

References:
    Scalable Diffusion Models with Transformers, Peebles & Xie, 2023, arXiv:2212.09748.
    FiLM: Visual Reasoning with a General Conditioning Layer, Perez et al., 2018, arXiv:1709.07871.
"""

from __future__ import annotations

import torch
from torch import nn

from edifice._checks import check_int, check_tensor

__all__ = ["modulate", "AdaLNZero"]


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B, D)`` to ``(B, 1, ..., 1, D)`` so it broadcasts over the token axes of ``x``."""
    return v.reshape(v.shape[0], *([1] * (x.ndim - 2)), v.shape[-1])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Feature-wise affine modulation :math:`x (1 + \mathrm{scale}) + \mathrm{shift}`.

    Args:
        x: features ``(B, D)`` or tokens ``(B, N, D)`` (any number of middle axes).
        shift: ``(B, D)``, broadcast over the middle axes of ``x``.
        scale: ``(B, D)``, same.

    Returns:
        tensor of ``x``'s shape.

    Raises:
        ValueError: if ``shift`` / ``scale`` are not ``(B, D)`` matching ``x``.

    Example:
        >>> x = torch.ones(2, 3, 4)
        >>> modulate(x, torch.zeros(2, 4), torch.ones(2, 4)).unique()
        tensor([2.])
    """
    want = (x.shape[0], x.shape[-1])
    for name, v in (("shift", shift), ("scale", scale)):
        if v.shape != want:
            raise ValueError(
                f"{name} must have shape {want} to match x of shape {tuple(x.shape)}, got {tuple(v.shape)}"
            )
    return x * (1 + _per_sample(scale, x)) + _per_sample(shift, x)


class AdaLNZero(nn.Module):
    r"""Residual block ``x + gate * fn(modulate(LN(x), shift, scale))`` conditioned on ``c``.

    .. math::
        (\mathrm{shift}, \mathrm{scale}, \mathrm{gate}) = W\,\mathrm{SiLU}(c) + b, \qquad
        y = x + \mathrm{gate} \odot f(\mathrm{LN}(x) (1 + \mathrm{scale}) + \mathrm{shift})

    ``LN`` has no affine parameters (the modulation supplies them). The modulation ``Linear(cond_dim,
    3*dim)`` is zero-initialised, so ``gate = 0`` and a freshly built block is exactly the identity
    — the "adaLN-Zero" initialisation of DiT (section 3.2).

    Args:
        dim: feature width ``D`` of ``x``.
        cond_dim: width of the conditioning vector ``c``.
        fn: the wrapped sub-layer (attention, MLP, ...), mapping ``(..., D) -> (..., D)``.

    Raises:
        TypeError: if ``fn`` is not an ``nn.Module``; TypeError / ValueError for bad widths.

    References:
        Scalable Diffusion Models with Transformers, Peebles & Xie, 2023, arXiv:2212.09748.

    Example:
        >>> block = AdaLNZero(8, 4, nn.Linear(8, 8))
        >>> x, c = torch.randn(2, 5, 8), torch.randn(2, 4)
        >>> torch.equal(block(x, c), x)
        True
    """

    def __init__(self, dim: int, cond_dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, min=1)
        self.cond_dim = check_int("cond_dim", cond_dim, min=1)
        if not isinstance(fn, nn.Module):
            raise TypeError(f"fn must be an nn.Module, got {type(fn).__name__}")
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.fn = fn
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 3 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` ``(B, ..., D)`` under conditioning ``c`` ``(B, cond_dim)``."""
        check_tensor("c", c, shape=(x.shape[0], self.cond_dim))
        shift, scale, gate = self.modulation(c).chunk(3, dim=-1)  # 3 x (B, D)
        h = self.fn(modulate(self.norm(x), shift, scale))  # (B, ..., D)
        return x + _per_sample(gate, x) * h
