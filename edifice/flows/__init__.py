"""Normalizing flows: the :class:`~edifice.flows.base.Flow` container and the flow families.

``base`` holds the container and the shared layers (:class:`Permute`, :class:`Reverse`,
:class:`ActNorm`); ``coupling`` the NICE, RealNVP and Glow coupling flows.
"""

from .base import ActNorm, Flow, Permute, Reverse
from .coupling import (
    AdditiveCoupling, AffineCoupling, Compose, ConvAffineCoupling, DiagonalScaling, InvConv1x1, MultiScale, Reshape,
    Squeeze, glow, nice, realnvp,
)

__all__ = [
    "Flow", "Permute", "Reverse", "ActNorm",
    "AffineCoupling", "ConvAffineCoupling", "AdditiveCoupling", "DiagonalScaling", "Squeeze", "Reshape", "Compose",
    "MultiScale", "InvConv1x1", "realnvp", "nice", "glow",
]
