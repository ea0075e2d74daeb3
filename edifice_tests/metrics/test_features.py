"""Feature nets: shipped accuracy, weight integrity, determinism of training, informative features,
caching, devices, and every input error."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

from edifice import data
from edifice.metrics import features as feat
from edifice.metrics.features import (
    FEATURE_NETS, WEIGHTS_DIR, FeatureNet, class_accuracy, feature_net, for_data, train_feature_net,
)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Reference FD between Gaussians fitted to two feature sets (float64, symmetric eigh)."""
    a, b = a.double(), b.double()
    c1, c2 = torch.cov(a.T), torch.cov(b.T)
    e, v = torch.linalg.eigh(c1)
    s1 = (v * e.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(s1 @ c2 @ s1).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).square().sum() + c1.trace() + c2.trace() - 2 * cross)


# -- shipped weights ------------------------------------------------------------------------------

def test_shipped_digits_net_is_accurate(digits):
    net = feature_net("digits")
    assert net.name == "digits" and net.input_shape == (1, 8, 8)
    assert net.num_classes == 10 and net.feature_dim == 64
    r = class_accuracy(net, digits.test_x, digits.test_y)
    assert r["accuracy"] >= 0.97
    assert sorted(r["per_class"]) == list(range(10))
    assert all(0.8 <= v <= 1.0 for v in r["per_class"].values())
    assert r["accuracy"] == pytest.approx(net.info["test_accuracy"], abs=1.5 / 297)  # the record is honest


def test_shipped_mnist_net_is_accurate():
    try:
        mnist = data.load("mnist")
    except FileNotFoundError as e:
        pytest.skip(f"MNIST not available ({e})")
    net = feature_net("mnist")
    assert net.input_shape == (1, 28, 28)
    r = class_accuracy(net, mnist.test_x, mnist.test_y)
    assert r["accuracy"] >= 0.99
    assert r["accuracy"] == pytest.approx(net.info["test_accuracy"], abs=5 / 10000)


@pytest.mark.parametrize("name", FEATURE_NETS)
def test_shipped_files_match_their_record(name):
    wpath = WEIGHTS_DIR / f"feature_{name}.safetensors"
    info = json.loads((WEIGHTS_DIR / f"feature_{name}.json").read_text())
    blob = wpath.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == info["sha256"]
    assert len(blob) == info["size_bytes"] < 500_000
    for key in ("procedure", "steps", "batch_size", "lr", "seed", "test_accuracy", "train_time_s", "torch_version"):
        assert key in info, key
    assert info["name"] == name and info["seed"] == 0
    assert info["test_accuracy"] >= (0.97 if name == "digits" else 0.99)
    net = feature_net(name)
    assert net.info == info
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_feature_net_is_cached_per_device():
    a = feature_net("digits")
    assert feature_net("digits", device="cpu") is a
    assert for_data("digits") is a
    assert feature_net("mnist") is not a
    assert for_data("moons") is None and for_data("fashion_mnist") is None and for_data("npz:x.npz") is None


def test_tampered_or_missing_weights_are_refused(tmp_path):
    for name in ("feature_digits.safetensors", "feature_digits.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    w = tmp_path / "feature_digits.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-1] ^= 1  # one flipped bit in the last weight
    w.write_bytes(bytes(blob))
    with pytest.raises(RuntimeError, match="sha256"):
        feature_net("digits", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="feature_mnist.safetensors"):
        feature_net("mnist", weights_dir=tmp_path)


# -- features -------------------------------------------------------------------------------------

def test_features_shape_dtype_batching_and_device(digits, device):
    net = feature_net("digits", device=device)
    assert next(net.parameters()).device.type == device.type
    x = digits.test_x[:50].double().to(device)
    f = net.features(x)
    assert f.shape == (50, 64) and f.dtype == torch.float32 and f.device == x.device
    torch.testing.assert_close(net.features(x, batch_size=7), f)
    torch.testing.assert_close(net.features(x[:1]), f[:1])
    assert f.std(0).min() > 0  # every one of the 64 units varies (no dead units)
    logits = net(x.float())
    assert logits.shape == (50, 10)
    torch.testing.assert_close(net.head(f), logits)  # features are the head's input
    assert torch.equal(net.predict(x), logits.argmax(1))


def test_forward_is_differentiable_in_the_input(digits):
    net = feature_net("digits")
    x = digits.test_x[:4].clone().requires_grad_(True)
    net(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_features_carry_information(digits):
    net = feature_net("digits")
    real_a = net.features(digits.test_x)  # (297, 64)
    real_b = net.features(digits.train_x)  # (1500, 64)
    g = torch.Generator().manual_seed(0)
    noise = net.features(torch.rand(digits.test_x.shape, generator=g))
    blurred = net.features(torch.nn.functional.avg_pool2d(digits.test_x, 3, 1, 1))
    fd_real, fd_noise, fd_blur = _frechet(real_a, real_b), _frechet(real_a, noise), _frechet(real_a, blurred)
    assert fd_real * 10 < min(fd_blur, fd_noise)  # measured: 1.5 vs 24 (blurred) and 21 (noise)
    mean_real = (real_a.mean(0) - real_b.mean(0)).norm()
    assert mean_real * 3 < (real_a.mean(0) - noise.mean(0)).norm()


def test_class_accuracy_counts_against_the_requested_labels(digits):
    net = feature_net("digits")
    x, y = digits.test_x, digits.test_y
    wrong = class_accuracy(net, x, (y + 1) % 10)
    assert wrong["accuracy"] < 0.1
    keep = y < 3
    r = class_accuracy(net, x[keep], y[keep].int())
    assert sorted(r["per_class"]) == [0, 1, 2]
    pred = net.predict(x[keep])
    assert r["accuracy"] == pytest.approx(float((pred == y[keep]).double().mean()))
    assert r["per_class"][1] == pytest.approx(float((pred[y[keep] == 1] == 1).double().mean()))


# -- training -------------------------------------------------------------------------------------

def test_training_is_deterministic_and_leaves_global_state_alone():
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    net_a, info_a = train_feature_net("digits", steps=30, seed=0)
    net_b, info_b = train_feature_net("digits", steps=30, seed=0)
    net_c, _ = train_feature_net("digits", steps=30, seed=1)
    sa, sb, sc = net_a.state_dict(), net_b.state_dict(), net_c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert info_a["sha256"] == info_b["sha256"] and info_a["test_accuracy"] == info_b["test_accuracy"]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
    assert info_a["steps"] == 30 and net_a.info is not None and not net_a.training


def test_training_learns_and_writes_loadable_files(tmp_path):
    untrained = FeatureNet("digits")
    assert untrained.info == {}
    net, info = train_feature_net("digits", steps=150, seed=0, out=tmp_path)
    assert info["test_accuracy"] > 0.8  # 150 steps already learn (chance is 0.1)
    blob = (tmp_path / "feature_digits.safetensors").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == info["sha256"]
    assert json.loads((tmp_path / "feature_digits.json").read_text()) == info
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    loaded = feature_net("digits", weights_dir=tmp_path)
    x = data.load("digits").test_x[:20]
    torch.testing.assert_close(loaded.features(x), net.features(x), rtol=0, atol=0)


def test_command_line_writes_weights(tmp_path, capsys):
    assert feat.main(["train", "digits", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert "test_accuracy" in capsys.readouterr().out
    assert (tmp_path / "feature_digits.safetensors").is_file() and (tmp_path / "feature_digits.json").is_file()


def test_augmentations():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 2:6, 2:6] = torch.rand(64, 1, 4, 4, generator=g)  # content away from the border
    shifted = feat._random_shift(x, 2, g)
    torch.testing.assert_close(shifted.sum((1, 2, 3)), x.sum((1, 2, 3)))  # nothing falls off
    for i in range(64):  # each image is its own integer shift of the input
        assert any(torch.equal(shifted[i], torch.roll(x[i], (dy, dx), (1, 2)))
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert len({tuple(s.nonzero()[0].tolist()) for s in shifted}) > 5  # offsets differ across the batch
    assert feat._random_shift(x, 0, g) is x
    assert torch.equal(feat._random_affine(x, 0.0, 0.0, g), x)
    torch.testing.assert_close(feat._random_affine(x, 1e-6, 1e-6, g), x, atol=1e-4, rtol=0)
    rotated = feat._random_affine(x, 30.0, 0.0, g)
    assert rotated.shape == x.shape and not torch.allclose(rotated, x, atol=1e-2)


# -- errors ---------------------------------------------------------------------------------------

def test_input_errors(digits):
    net = feature_net("digits")
    x = digits.test_x[:8]
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\).*got \(8, 1, 28, 28\)"):
        net.features(torch.rand(8, 1, 28, 28))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\).*got \(8, 8\)"):
        net(torch.rand(8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 28, 28\)"):
        feature_net("mnist").features(x)
    bad = x.clone()
    bad[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="x must be finite, got 1 NaN"):
        net.features(bad)
    with pytest.raises(ValueError, match="floating-point.*uint8"):
        net.features((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"data units \[0, 1\].*to_unit"):
        net.features(x * 2 - 1)  # model space
    with pytest.raises(ValueError, match=r"data units"):
        net.features(x * 255)
    with pytest.raises(ValueError, match="at least one image"):
        net.features(x[:0])
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net.features(x.numpy())
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        net.features(x, batch_size=0)


def test_name_errors():
    with pytest.raises(ValueError, match="name must be one of 'digits', 'mnist'; got 'cifar10'"):
        feature_net("cifar10")
    with pytest.raises(TypeError, match="name must be a str"):
        feature_net(3)
    with pytest.raises(ValueError, match="name must be one of"):
        train_feature_net("moons")
    with pytest.raises(ValueError, match="name must be one of"):
        FeatureNet("fashion_mnist")
    with pytest.raises(TypeError, match="data_name must be a str"):
        for_data(None)
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        train_feature_net("digits", steps=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        train_feature_net("digits", seed=-1)


def test_class_accuracy_errors(digits):
    net = feature_net("digits")
    x, y = digits.test_x[:10], digits.test_y[:10]
    with pytest.raises(ValueError, match="same number of samples, got 10 images and 9 labels"):
        class_accuracy(net, x, y[:9])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got values in \[\d, 10\]"):
        class_accuracy(net, x, torch.cat([y[:9], torch.tensor([10])]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        class_accuracy(net, x, y - 100)
    with pytest.raises(ValueError, match="labels must be an integer tensor, got dtype torch.float32"):
        class_accuracy(net, x, y.float())
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\), got \(10, 1\)"):
        class_accuracy(net, x, y[:, None])
    with pytest.raises(TypeError, match="labels must be a torch.Tensor"):
        class_accuracy(net, x, y.tolist())
    with pytest.raises(TypeError, match="net must be a FeatureNet"):
        class_accuracy("digits", x, y)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        class_accuracy(net, torch.rand(10, 1, 28, 28), y)
