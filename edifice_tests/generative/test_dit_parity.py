"""Parity of edifice's DiT with diffusers' ``DiTTransformer2DModel`` (weights copied, outputs compared).

The architectures coincide except for three details of diffusers, handled here and documented in the guide:

* every diffusers block owns a copy of the time + label embedding (``norm1.emb``) and the output layer
  reuses block 0's; edifice has one shared embedding, so it is copied into every diffusers block;
* diffusers' DiT time features divide the frequency exponent by ``half - 1`` (``downscale_freq_shift=1``)
  where the DiT repository (and edifice) divide by ``half``: set to 0 on the diffusers side for parity;
* diffusers' MLP LayerNorm uses ``norm_eps`` (default 1e-5) where DiT uses 1e-6: built with 1e-6 here.

diffusers also drops labels at random in training mode (``class_dropout_prob=0.1``, global RNG); edifice leaves
label dropout to the recipe, so the comparison runs in eval mode.
"""

from __future__ import annotations

import pytest
import torch

from edifice.blocks.embedding import sinusoidal_embedding
from edifice.blocks.transformer import DiT

diffusers = pytest.importorskip("diffusers")
from diffusers.models.transformers.dit_transformer_2d import DiTTransformer2DModel  # noqa: E402


def diffusers_dit(*, channels: int, size: int, patch: int, hidden: int, depth: int, heads: int,
                  num_classes: int, learn_sigma: bool) -> DiTTransformer2DModel:
    """A diffusers DiT with edifice's conventions (see the module docstring)."""
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=channels,
        out_channels=2 * channels if learn_sigma else channels, num_layers=depth, sample_size=size,
        patch_size=patch, num_embeds_ada_norm=num_classes, norm_eps=1e-6)
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    return model


def float64_time_features(model: DiTTransformer2DModel) -> None:
    """diffusers computes the time features in float32 whatever the model's dtype; for a float64 comparison use
    edifice's (equal to diffusers' with ``downscale_freq_shift=0`` in float32: ``test_time_features_match``)."""
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.forward = lambda t: sinusoidal_embedding(t, 256)


@torch.no_grad()
def copy_edifice_to_diffusers(src: DiT, dst: DiTTransformer2DModel) -> None:
    """Copy every weight of an edifice DiT into a diffusers DiT of the same configuration."""
    p, c = src.patch_size, src.in_channels
    d = src.x_embed.weight.shape[0]
    # patch embedding: Linear over (p1 p2 c) tokens == Conv2d(kernel=stride=p) with weight (D, C, p, p)
    dst.pos_embed.proj.weight.copy_(src.x_embed.weight.reshape(d, p, p, c).permute(0, 3, 1, 2))
    dst.pos_embed.proj.bias.copy_(src.x_embed.bias)
    for mine, theirs in zip(src.blocks, dst.transformer_blocks):
        emb = theirs.norm1.emb
        emb.timestep_embedder.linear_1.load_state_dict(src.time_embed.mlp[0].state_dict())
        emb.timestep_embedder.linear_2.load_state_dict(src.time_embed.mlp[2].state_dict())
        emb.class_embedder.embedding_table.weight.copy_(src.label_embed.table.weight)
        # diffusers' Linear(D, 6D) = [shift, scale, gate]_msa ++ [shift, scale, gate]_mlp
        theirs.norm1.linear.weight.copy_(torch.cat([mine.attn.modulation[1].weight, mine.mlp.modulation[1].weight]))
        theirs.norm1.linear.bias.copy_(torch.cat([mine.attn.modulation[1].bias, mine.mlp.modulation[1].bias]))
        q, k, v = mine.attn.fn.qkv.weight.chunk(3)
        qb, kb, vb = mine.attn.fn.qkv.bias.chunk(3)
        for lin, w, b in ((theirs.attn1.to_q, q, qb), (theirs.attn1.to_k, k, kb), (theirs.attn1.to_v, v, vb)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        theirs.attn1.to_out[0].load_state_dict(mine.attn.fn.proj.state_dict())
        theirs.ff.net[0].proj.load_state_dict(mine.mlp.fn.fc1.state_dict())
        theirs.ff.net[2].load_state_dict(mine.mlp.fn.fc2.state_dict())
    dst.proj_out_1.load_state_dict(src.final.modulation[1].state_dict())
    dst.proj_out_2.load_state_dict(src.final.linear.state_dict())


def _randomise(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every parameter (the zero-initialised ones too) a random value so the comparison means something."""
    with torch.no_grad():
        for prm in net.parameters():
            prm.copy_(0.2 * torch.randn(prm.shape, generator=gen, dtype=prm.dtype))


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("channels,size,patch", [(1, 8, 2), (3, 16, 4)])
def test_outputs_match_diffusers(learn_sigma, channels, size, patch, gen):
    cfg = dict(hidden=32, depth=2, heads=4)
    ours = DiT((channels, size, size), patch_size=patch, num_classes=10, learn_sigma=learn_sigma, **cfg).double()
    _randomise(ours, gen)
    theirs = diffusers_dit(channels=channels, size=size, patch=patch, num_classes=10, learn_sigma=learn_sigma,
                           **cfg).double().eval()
    copy_edifice_to_diffusers(ours, theirs)
    float64_time_features(theirs)
    shared = [p for n, p in theirs.named_parameters() if ".norm1.emb." not in n or n.startswith("transformer_blocks.0.")]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in shared)  # same weights, once each
    x = torch.randn(5, channels, size, size, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0, 17.0, 500.0, 999.0], dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 10, 5])  # 10 = the null label in both libraries
    with torch.no_grad():
        want = theirs(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y=y)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_position_code_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    from edifice.blocks.transformer import sincos_pos_embed_2d

    for dim, grid in ((32, 4), (64, 7), (16, 1)):
        want = get_2d_sincos_pos_embed(dim, grid, base_size=grid, output_type="pt").double()
        torch.testing.assert_close(sincos_pos_embed_2d(dim, grid), want, rtol=0, atol=1e-6)  # diffusers: float32


def test_time_features_match():
    """Edifice's ``[cos | sin]`` features equal diffusers' DiT time projection once its exponent shift is 0."""
    model = diffusers_dit(channels=1, size=4, patch=2, hidden=16, depth=1, heads=2, num_classes=3, learn_sigma=False)
    t = torch.tensor([0.0, 1.0, 10.0, 250.0, 999.0])
    want = model.transformer_blocks[0].norm1.emb.time_proj(t)
    torch.testing.assert_close(sinusoidal_embedding(t, 256), want, rtol=0, atol=1e-4)  # float32 sin of ~1000 rad
    shifted = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=1,
                                    sample_size=4, num_embeds_ada_norm=3)
    assert not torch.allclose(shifted.transformer_blocks[0].norm1.emb.time_proj(t), want)  # the default differs
