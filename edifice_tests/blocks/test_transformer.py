"""DiT blocks: patches, the 2-D sin-cos position code, AdaLN-Zero at init, the DiT network and its presets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.blocks.transformer import (
    DIT_PRESETS, DiT, DiTBlock, FinalLayer, dit_preset, patchify, sincos_pos_embed_2d, unpatchify,
)


@st.composite
def _images(draw):
    p = draw(st.integers(1, 4))
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(b, c, gh * p, gw * p, generator=torch.Generator().manual_seed(seed))
    return x, p


@given(_images())
def test_patchify_unpatchify_identity(case):
    x, p = case
    b, c, h, w = x.shape
    tokens = patchify(x, p)
    assert tokens.shape == (b, (h // p) * (w // p), p * p * c)
    assert torch.equal(unpatchify(tokens, p, c, (h, w)), x)
    assert torch.equal(patchify(unpatchify(tokens, p, c, (h, w)), p), tokens)


def test_patchify_layout():
    x = torch.arange(2 * 4 * 6.0).reshape(1, 2, 4, 6)  # C=2, H=4, W=6, p=2 -> 2x3 grid
    tokens = patchify(x, 2)
    # token 1 = grid row 0, column 1: pixels (0..1, 2..3), listed as (p1 p2 c)
    want = torch.stack([x[0, :, i, j] for i in (0, 1) for j in (2, 3)]).reshape(-1)
    assert torch.equal(tokens[0, 1], want)


def test_patch_size_errors():
    with pytest.raises(ValueError, match="patch_size must divide.*data_shape"):
        patchify(torch.zeros(1, 1, 6, 6), 4)
    with pytest.raises(ValueError, match="patch_size must divide.*data_shape"):
        DiT((1, 28, 28), patch_size=3, hidden=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="patch_size"):
        DiT((1, 8, 8), patch_size=0, hidden=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="patch_size must divide.*size"):
        unpatchify(torch.zeros(1, 4, 4), 2, 1, 5)
    with pytest.raises(ValueError, match="tokens must have shape"):
        unpatchify(torch.zeros(1, 5, 4), 2, 1, 4)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        patchify(torch.zeros(4, 4), 2)


def test_pos_embed_direct_formula():
    dim, gh, gw = 16, 3, 5
    emb = sincos_pos_embed_2d(dim, (gh, gw))
    assert emb.shape == (gh * gw, dim) and emb.dtype == torch.float64
    q = dim // 4
    for i in range(gh):
        for j in range(gw):
            row = []
            for pos in (j, i):  # first half: column, second half: row; each [sin | cos]
                row += [math.sin(pos / 10000 ** (k / q)) for k in range(q)]
                row += [math.cos(pos / 10000 ** (k / q)) for k in range(q)]
            torch.testing.assert_close(emb[i * gw + j], torch.tensor(row, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.equal(sincos_pos_embed_2d(8, 3), sincos_pos_embed_2d(8, (3, 3)))
    with pytest.raises(ValueError, match="dim must be a multiple of 4"):
        sincos_pos_embed_2d(6, 2)


def test_block_and_final_layer_at_init():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(3, 7, 32, generator=g), torch.randn(3, 32, generator=g)
    assert torch.equal(DiTBlock(32, 4)(x, c), x)
    assert torch.equal(DiTBlock(32, 4, mlp_ratio=2.0, cond_dim=8)(x, c[:, :8]), x)
    out = FinalLayer(32, 2, 3)(x, c)
    assert out.shape == (3, 7, 12) and bool((out == 0).all())


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_fresh_dit_outputs_zeros(learn_sigma):
    g = torch.Generator().manual_seed(0)
    net = DiT((3, 8, 12), patch_size=4, hidden=32, depth=2, heads=4, num_classes=5, learn_sigma=learn_sigma)
    out = net(torch.randn(4, 3, 8, 12, generator=g), torch.tensor([0.0, 5.0, 50.0, 999.0]), y=torch.tensor([0, 1, 4, 5]))
    assert out.shape == (4, 6 if learn_sigma else 3, 8, 12)
    assert bool((out == 0).all())


def test_gradients_reach_every_parameter_after_two_steps():
    g = torch.Generator().manual_seed(0)
    net = DiT((1, 8, 8), patch_size=2, hidden=32, depth=2, heads=4, num_classes=3, learn_sigma=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t = torch.randn(8, 1, 8, 8, generator=g), torch.rand(8, generator=g) * 999
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])  # 3 = the null label: its row gets a gradient too
    target = torch.randn(8, 2, 8, 8, generator=g)
    # AdaLN-Zero: at init only the output layer has a gradient, after one step also the gates and embeddings,
    # after two steps every parameter.
    for step in range(3):
        opt.zero_grad()
        (net(x, t, y=y) - target).square().mean().backward()
        if step < 2:
            opt.step()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not bool((p.grad != 0).any())]
    assert not missing


def test_labels_and_inputs_checked():
    net = DiT((1, 8, 8), patch_size=2, hidden=16, depth=1, heads=2, num_classes=10)
    x, t = torch.zeros(2, 1, 8, 8), torch.zeros(2)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 9\] or the null label 10, got 11"):
        net(x, t, y=torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="y must hold labels"):
        net(x, t, y=torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="y must be an integer"):
        net(x, t, y=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.zeros(2, 1, 6, 6), t)
    uncond = DiT((1, 8, 8), patch_size=2, hidden=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="num_classes=None"):
        uncond(x, t, y=torch.tensor([0, 1]))
    assert torch.equal(net(x, t), net(x, t, y=torch.tensor([10, 10])))  # y=None is the null label


@pytest.mark.parametrize("bad,match", [
    (dict(data_shape=(64,)), "data_shape must be an image shape"),
    (dict(hidden=30), "hidden must be a multiple of 4"),
    (dict(heads=3), "heads must divide hidden"),
    (dict(num_classes=0), "num_classes"),
    (dict(learn_sigma=1), "learn_sigma must be a bool"),
    (dict(t_scale=0.0), "t_scale"),
    (dict(time_features="nope"), "time_features"),
    (dict(mlp_ratio=0), "mlp_ratio"),
    (dict(depth=0), "depth"),
])
def test_bad_options(bad, match):
    kw = {**dict(data_shape=(1, 8, 8), patch_size=2, hidden=16, depth=1, heads=2), **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        DiT(kw.pop("data_shape"), **kw)


def test_config_rebuilds_and_state_dict_round_trip():
    net = dit_preset("tiny", data_shape=(1, 8, 8), num_classes=10, learn_sigma=True, t_scale=1000.0)
    clone = DiT(**net.config)
    assert "pos_embed" not in net.state_dict()  # fixed, recomputed at construction
    clone.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.1, 0.9])
    with torch.no_grad():
        for p in net.final.parameters():
            p.normal_()
        clone.load_state_dict(net.state_dict())
        assert torch.equal(net(x, t), clone(x, t))
    import json
    json.dumps(net.config)


# Table 1 of Peebles & Xie: parameters (M) and Gflops at 256x256 (32x32x4 latents).
PAPER = {"S/2": (33, 6.06), "B/2": (130, 23.01), "L/2": (458, 80.71), "XL/2": (675, 118.64),
         "S/8": (33, 0.36), "XL/4": (675, 29.05)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_presets(name):
    with torch.device("meta"):  # no memory, no init cost
        net = dit_preset(name, data_shape=(4, 32, 32), num_classes=1000, learn_sigma=True)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(params - PAPER[name][0]) / PAPER[name][0] < 0.02
    cfg = DIT_PRESETS[name]
    n, d = (32 // cfg["patch_size"]) ** 2, cfg["hidden"]
    pc = cfg["patch_size"] ** 2 * 4
    blocks = cfg["depth"] * (n * (12 * d * d + 2 * n * d) + 6 * d * d)  # tokens' linears + attention + AdaLN
    ends = n * pc * d + n * d * 2 * pc + 2 * d * d + 256 * d + d * d  # patch embed, final layer, time MLP
    gmacs = (blocks + ends) / 1e9  # multiply-adds (what the paper's table calls flops)
    assert abs(gmacs - PAPER[name][1]) / PAPER[name][1] < 0.03


def test_unknown_preset():
    with pytest.raises(ValueError, match="name must be one of .*'XL/2'.*'tiny'"):
        dit_preset("XXL/2", data_shape=(1, 8, 8))
    assert dit_preset("small28", data_shape=(1, 28, 28)).grid == (7, 7)
