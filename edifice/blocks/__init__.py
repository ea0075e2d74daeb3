"""Shared building blocks, each defined once: embeddings, AdaLN, attention, MLPs, the U-Net, the DiT, conv stacks.

Families import these rather than defining their own, e.g. ``from edifice.blocks import ResMLP, UNet``.
"""

from edifice.blocks.adaln import AdaLNZero, modulate
from edifice.blocks.attention import CrossAttention, SelfAttention
from edifice.blocks.embedding import LabelEmbedding, TimestepEmbedding, condition_vector, sinusoidal_embedding
from edifice.blocks.mlp import ACTIVATIONS, MLP, ResMLP
from edifice.blocks.unet import UNet
from edifice.blocks.backbone import backbone
from edifice.blocks.two_time import TwoTimeNet
from edifice.blocks.conv import ConvDecoder, ConvEncoder, ResidualBlock
from edifice.blocks.transformer import DIT_PRESETS, DiT, DiTBlock, FinalLayer, dit_preset, patchify, sincos_pos_embed_2d, unpatchify

__all__ = [
    "TwoTimeNet",
    "sinusoidal_embedding", "TimestepEmbedding", "LabelEmbedding", "condition_vector",
    "modulate", "AdaLNZero",
    "SelfAttention", "CrossAttention",
    "ACTIVATIONS", "MLP", "ResMLP",
    "UNet", "backbone",
    "ConvEncoder", "ConvDecoder", "ResidualBlock",
    "patchify", "unpatchify", "sincos_pos_embed_2d", "DiTBlock", "FinalLayer", "DiT", "DIT_PRESETS", "dit_preset",
]
