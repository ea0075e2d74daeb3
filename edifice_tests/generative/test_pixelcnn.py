"""PixelCNN family: quantisation, causality of all three architectures, exact normalisation by brute force,
sampling against the exact pmf, errors, and one learning test on binarised digits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import edifice.data
from edifice.generative import pixelcnn

TINY = dict(hidden=8, layers=2, first_kernel=3, heads=2)


def _net(arch, data_shape=(1, 2, 2), seed=0, dtype=torch.float64, **opts):
    torch.manual_seed(seed)  # parameter initialisation only
    return pixelcnn.build(data_shape=data_shape, arch=arch, **{**TINY, **opts}).to(dtype)


def _all_images(levels, h, w, dtype=torch.float64):
    codes = torch.tensor(list(itertools.product(range(levels), repeat=h * w))).reshape(-1, 1, h, w)
    return pixelcnn.from_codes(codes, levels, dtype=dtype)


# ------------------------------------------------------------------------------------------------ quantisation


@given(levels=st.integers(2, 256), seed=st.integers(0, 2**16))
def test_codes_round_trip(levels, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, levels, (50,), generator=g)
    x = pixelcnn.from_codes(codes, levels, dtype=torch.float64)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert torch.equal(pixelcnn.to_codes(x, levels, quantize=False), codes)
    assert torch.equal(pixelcnn.to_codes(x.float(), levels), codes)


def test_binary_codes_are_x_positive():
    x = torch.tensor([-1.0, -0.3, 0.0, 1e-6, 0.7, 1.0])
    assert pixelcnn.to_codes(x, 2).tolist() == [0, 0, 0, 1, 1, 1]
    assert pixelcnn.from_codes(torch.tensor([0, 1]), 2).tolist() == [-1.0, 1.0]


# ------------------------------------------------------------------------------------------------ causality


@settings(max_examples=20)
@given(arch=st.sampled_from(pixelcnn.ARCHS), h=st.integers(2, 5), w=st.integers(2, 5), pos=st.integers(0, 24),
       levels=st.sampled_from([2, 5]), conditional=st.booleans(), seed=st.integers(0, 2**16))
def test_logits_at_i_depend_only_on_pixels_before_i(arch, h, w, pos, levels, conditional, seed):
    pos = pos % (h * w)
    net = _net(arch, (1, h, w), seed=seed % 7, levels=levels, num_classes=3 if conditional else None)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, levels, (2, h, w), generator=g)
    y = torch.tensor([0, 2]) if conditional else None
    e = net.embed_codes(codes).detach().requires_grad_(True)  # (2, h, w, C)
    r, c = divmod(pos, w)
    net.forward_embedded(e, y)[:, :, r, c].sum().backward()
    grad = e.grad.abs().sum(-1).flatten(1)  # (2, h*w): sensitivity of the logits at pos to each input pixel
    assert torch.all(grad[:, pos:] == 0), f"{arch}: logits at {pos} see pixels >= {pos}"
    if pos > 0:  # and it does see the pixel just before it (left neighbour, or above at a row start)
        assert torch.all(grad[:, pos - 1 if c > 0 else pos - w] > 0)


# ------------------------------------------------------------------------------------------------ likelihood


@pytest.mark.parametrize("arch", pixelcnn.ARCHS)
@pytest.mark.parametrize("levels,h,w", [(2, 2, 3), (3, 2, 2)])
def test_log_prob_is_normalised_by_brute_force(arch, levels, h, w):
    net = _net(arch, (1, h, w), levels=levels, num_classes=2)
    x = _all_images(levels, h, w)  # every image: levels**(h w) of them
    for label in (0, 1):
        with torch.no_grad():
            lp = pixelcnn.log_prob(net, x, cond={"y": torch.full((x.shape[0],), label)}, quantize=False)
        assert float(torch.logsumexp(lp, 0)) == pytest.approx(0.0, abs=1e-10)
        assert torch.all(lp < 0)


@pytest.mark.parametrize("arch", pixelcnn.ARCHS)
def test_uniform_logits_give_log_levels_per_pixel(arch):
    net = _net(arch, (1, 3, 3), levels=4)
    head = net.net.head if isinstance(net.net.head, torch.nn.Linear) else net.net.head[-1]  # the last layer
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    x = torch.rand(5, 1, 3, 3, dtype=torch.float64) * 2 - 1
    assert torch.allclose(pixelcnn.log_prob(net, x), torch.full((5,), -9 * math.log(4), dtype=torch.float64))


def test_loss_is_the_mean_nll_and_bpd_its_per_pixel_bits():
    net = _net("gated", (1, 3, 4), levels=3)
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64) * 2 - 1
    loss, logs = pixelcnn.loss(net, x)
    lp = pixelcnn.log_prob(net, x)
    assert torch.allclose(loss, -lp.mean()) and torch.equal(logs["nll"], loss.detach())
    assert float(logs["bpd"]) == pytest.approx(float(-lp.mean()) / (12 * math.log(2)))
    assert not any(v.requires_grad for v in logs.values())


def test_quantize_false_accepts_the_grid_and_agrees():
    net = _net("pixelcnn", (1, 3, 3))
    x = (torch.rand(4, 1, 3, 3, dtype=torch.float64) > 0.5).double() * 2 - 1
    assert torch.equal(pixelcnn.log_prob(net, x, quantize=False), pixelcnn.log_prob(net, x))


def test_label_changes_the_model_and_defaults_to_null():
    net = _net("gated", (1, 3, 3), num_classes=3)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64) * 2 - 1
    a = pixelcnn.log_prob(net, x, cond={"y": torch.zeros(4, dtype=torch.long)})
    b = pixelcnn.log_prob(net, x, cond={"y": torch.ones(4, dtype=torch.long)})
    null = pixelcnn.log_prob(net, x, cond={"y": torch.full((4,), 3)})
    assert not torch.allclose(a, b)
    assert torch.equal(pixelcnn.log_prob(net, x), null)


# ------------------------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("arch", ["gated", "transformer"])
def test_samples_follow_the_exact_pmf(arch):
    net = _net(arch, (1, 2, 2), dtype=torch.float32)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # a far-from-uniform pmf
    states = _all_images(2, 2, 2, dtype=torch.float32)  # (16, 1, 2, 2)
    with torch.no_grad():
        pmf = pixelcnn.log_prob(net, states).exp()
    n = 4000
    x = pixelcnn.sample(net, (n, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    idx = pixelcnn.to_codes(x, 2).flatten(1) @ torch.tensor([8, 4, 2, 1])
    emp = torch.bincount(idx, minlength=16).double() / n
    tv = 0.5 * float((emp - pmf.double()).abs().sum())
    assert tv < 0.04, tv  # sampling noise alone: E[TV] ≈ 0.5 Σ sqrt(2 p (1-p) / (π n)) ≲ 0.03
    assert float(pmf.max()) > 2 / 16  # not the uniform pmf


def test_sample_values_determinism_callback_and_temperature():
    net = _net("gated", (1, 3, 3), levels=4, dtype=torch.float32)
    calls = []
    a = pixelcnn.sample(net, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0), callback=calls.append)
    b = pixelcnn.sample(net, (5, 1, 3, 3), generator=torch.Generator().manual_seed(0))
    c = pixelcnn.sample(net, (5, 1, 3, 3), generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 3, 3) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, pixelcnn.from_codes(pixelcnn.to_codes(a, 4), 4))  # on the 4-level grid
    assert [d["step"] for d in calls] == list(range(9)) and torch.equal(
        pixelcnn.from_codes(calls[-1]["codes"], 4)[:, None], a)
    # T -> 0 gives the greedy (argmax) image, the same for every seed
    g0, g1 = (pixelcnn.sample(net, (2, 1, 3, 3), temperature=1e-6, generator=torch.Generator().manual_seed(s))
              for s in (0, 1))
    assert torch.equal(g0, g1)
    d = pixelcnn.sample(net, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert d.dtype == torch.float64


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("opts,match", [
    (dict(data_shape=(0,)), "data_shape"),
    (dict(data_shape=(2, 3)), "data_shape"),
    (dict(data_shape=(3, 8, 8)), "data_shape must be a single-channel"),
    (dict(data_shape=(64,)), "data_shape"),
    (dict(levels=1), "levels must be an int >= 2"),
    (dict(levels=257), "levels must be an int <= 256"),
    (dict(arch="lstm"), "arch must be one of 'gated', 'pixelcnn', 'transformer'"),
    (dict(hidden=0), "hidden must be a positive int"),
    (dict(layers=0), "layers must be a positive int"),
    (dict(kernel_size=4), "kernel_size must be an odd int, got 4"),
    (dict(first_kernel=2), "first_kernel must be an odd int"),
    (dict(arch="transformer", hidden=10, heads=4), "hidden must be divisible by heads=4"),
    (dict(heads=0), "heads must be a positive int"),
    (dict(num_classes=0), "num_classes must be a positive int"),
])
def test_build_rejects_bad_options(opts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pixelcnn.build(**{"data_shape": (1, 4, 4), **opts})


def test_function_errors_name_the_argument():
    net = _net("gated", (1, 3, 3), dtype=torch.float32)
    x = torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 3, 3\)"):
        pixelcnn.loss(net, torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        pixelcnn.log_prob(net, torch.zeros(2, 1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must hold values on \{-1, 1\}"):
        pixelcnn.loss(net, x + 0.5, quantize=False)
    with pytest.raises(TypeError, match="quantize must be a bool"):
        pixelcnn.loss(net, x, quantize=1)
    with pytest.raises(ValueError, match="built without num_classes"):
        pixelcnn.loss(net, x, cond={"y": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match="cond may only hold 'y'"):
        pixelcnn.loss(net, x, cond={"t": x})
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        pixelcnn.loss(net, x, generator=0)
    with pytest.raises(TypeError, match="net must be the PixelCNN"):
        pixelcnn.log_prob(torch.nn.Identity(), x)
    with pytest.raises(ValueError, match=r"shape must be \(B, 1, 3, 3\)"):
        pixelcnn.sample(net, (2, 1, 4, 4))
    with pytest.raises(ValueError, match="temperature must be in"):
        pixelcnn.sample(net, (2, 1, 3, 3), temperature=0.0)
    with pytest.raises(TypeError, match="callback must be callable"):
        pixelcnn.sample(net, (2, 1, 3, 3), callback=3)
    cnet = _net("pixelcnn", (1, 3, 3), num_classes=2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"cond\['y'\] must have shape \(2\)"):
        pixelcnn.sample(cnet, (2, 1, 3, 3), cond={"y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(TypeError, match=r"cond\['y'\] must be an integer tensor"):
        pixelcnn.loss(cnet, x, cond={"y": torch.zeros(2)})
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        pixelcnn.to_codes(x, 1)


# ------------------------------------------------------------------------------------------------ learning


def test_learns_binarised_digits():
    """A small gated PixelCNN, 120 Adam steps on binarised 8x8 digits: test NLL (nats per image) drops far
    below an untrained model's (≈ 64 ln 2 = 44) and below the independent-Bernoulli baseline (pixel marginals
    fitted on 4000 training draws, ≈ 24.0)."""
    src = edifice.data.load("digits")
    g = torch.Generator().manual_seed(0)
    x_test, _ = src.test_set()
    b_test = (x_test > 0).double()
    x_train, _ = src.train_batch(4000, generator=g)
    p = (x_train > 0).double().mean(0).clamp(1e-3, 1 - 1e-3)
    baseline = float(-(b_test * p.log() + (1 - b_test) * (1 - p).log()).flatten(1).sum(1).mean())
    torch.manual_seed(0)
    net = pixelcnn.build(data_shape=(1, 8, 8), hidden=16, layers=3)
    with torch.no_grad():
        untrained = float(-pixelcnn.log_prob(net, x_test).mean())
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(120):
        x, _ = src.train_batch(64, generator=g)
        loss, _ = pixelcnn.loss(net, x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = float(-pixelcnn.log_prob(net, x_test).mean())
    print(f"pixelcnn digits NLL: untrained {untrained:.2f}, independent Bernoulli {baseline:.2f}, "
          f"trained {trained:.2f} nats")
    assert untrained > 40.0
    assert trained < baseline - 2.0 and trained < untrained - 20.0
