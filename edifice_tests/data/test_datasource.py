"""DataSource / load(): toy sets, digits, MNIST path search, npz: and folder: sources, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edifice import data
from edifice.data import DataSource, images, toy2d

MNIST_NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist.npz"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny_mnist(path: Path, n_train: int = 6, n_test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=np.arange(n_train, dtype=np.uint8) % 10,
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test, dtype=np.uint8) % 10,
    )
    return path


def test_datasets_tuple():
    assert set(toy2d.NAMES) < set(data.DATASETS)
    assert {"digits", "mnist"} < set(data.DATASETS)


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_toy_source(name):
    src = data.load(name)
    assert (src.kind, src.data_shape, src.num_classes, src.num_train) == ("points", (2,), None, None)
    x, y = src.train_batch(64, generator=_gen(1))
    assert x.shape == (64, 2) and y is None
    assert torch.equal(x, src.train_batch(64, generator=_gen(1))[0])
    assert torch.equal(x, toy2d.sample(name, 64, generator=_gen(1)))
    xt, yt = src.test_set()
    assert xt.shape == (2000, 2) and yt is None
    assert torch.equal(xt, src.test_set()[0])  # fixed held-out set
    assert not torch.equal(xt[:64], x) and not torch.equal(xt, src.train_batch(2000, generator=_gen(0))[0])
    assert torch.equal(src.test_set(5)[0], xt[:5])
    assert src.to_unit(x) is x


def test_digits_source():
    pytest.importorskip("sklearn")
    src = data.load("digits")
    assert (src.kind, src.data_shape, src.num_classes, src.num_train) == ("images", (1, 8, 8), 10, 1500)
    x_all, y_all = images.load_digits()
    xt, yt = src.test_set()
    assert xt.shape == (297, 1, 8, 8)
    torch.testing.assert_close(src.to_unit(xt), x_all[-297:])
    assert torch.equal(yt, y_all[-297:])
    x, y = src.train_batch(32, generator=_gen(0))
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,) and y.dtype == torch.long
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0 and float(x.min()) == -1.0
    x2, y2 = src.train_batch(32, generator=_gen(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # every training batch row is one of the 1500 training images with its label
    flat = src.train_x.flatten(1)
    idx = torch.cdist(src.to_unit(x).flatten(1), flat).argmin(1)
    assert torch.equal(src.train_y[idx], y)
    torch.testing.assert_close(src.to_unit(torch.tensor([-3.0, 0.0, 3.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_mnist_from_data_dir_file_env_and_idx(tmp_path, monkeypatch):
    _tiny_mnist(tmp_path / "mnist.npz")
    for src in (data.load("mnist", data_dir=tmp_path), data.load("mnist", data_dir=tmp_path / "mnist.npz")):
        assert (src.kind, src.data_shape, src.num_classes, src.num_train) == ("images", (1, 28, 28), 10, 6)
        assert src.test_set()[0].shape == (4, 1, 28, 28)
    monkeypatch.setenv("EDIFICE_DATA_DIR", str(tmp_path))
    assert data.find_data_file("mnist") == tmp_path / "mnist.npz"
    assert data.load("mnist").num_train == 6
    # Fashion-MNIST in an IDX sub-folder
    fm = tmp_path / "fashion-mnist"
    fm.mkdir()
    rng = np.random.default_rng(1)
    for stem, n, shape in [("train-images-idx3-ubyte", 3, (28, 28)), ("train-labels-idx1-ubyte", 3, ()),
                           ("t10k-images-idx3-ubyte", 2, (28, 28)), ("t10k-labels-idx1-ubyte", 2, ())]:
        arr = rng.integers(0, 10 if not shape else 256, (n, *shape), dtype=np.uint8)
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        (fm / stem).write_bytes(header + arr.tobytes())
    src = data.load("fashion_mnist")  # found through $EDIFICE_DATA_DIR/fashion-mnist/
    assert (src.num_train, src.test_set()[0].shape, src.num_classes) == (3, (2, 1, 28, 28), 10)
    assert data.load("fashion_mnist", data_dir=fm).num_train == 3


def test_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist data not found; searched .*mnist.npz.*Pass data_dir="):
        data.load("mnist", data_dir=tmp_path)


@pytest.mark.skipif(not MNIST_NPZ.is_file(), reason=f"{MNIST_NPZ} not present")
def test_real_mnist_default_search(monkeypatch):
    monkeypatch.delenv("EDIFICE_DATA_DIR", raising=False)
    src = data.load("mnist")
    assert (src.num_train, src.data_shape, src.num_classes) == (60000, (1, 28, 28), 10)
    x, y = src.train_batch(16, generator=_gen(0))
    assert x.shape == (16, 1, 28, 28) and float(x.min()) >= -1 and float(x.max()) <= 1


def test_npz_source_with_and_without_split(tmp_path):
    path = _tiny_mnist(tmp_path / "m.npz")
    src = data.load(f"npz:{path}")
    assert (src.kind, src.data_shape, src.num_train, src.num_classes) == ("images", (1, 28, 28), 6, 6)
    assert data.load(f"npz:{path}", size=8).data_shape == (1, 8, 8)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "plain.npz", x=rng.random((20, 4, 4, 3)), y=np.arange(20) % 4)
    src = data.load(f"npz:{tmp_path / 'plain.npz'}", test_fraction=0.25, split_seed=3)
    assert (src.data_shape, src.num_train, src.num_classes) == ((3, 4, 4), 15, 4)
    xt, yt = src.test_set()
    assert xt.shape == (5, 3, 4, 4) and yt.shape == (5,)
    again = data.load(f"npz:{tmp_path / 'plain.npz'}", test_fraction=0.25, split_seed=3)
    assert torch.equal(again.test_set()[0], xt)
    other = data.load(f"npz:{tmp_path / 'plain.npz'}", test_fraction=0.25, split_seed=4)
    assert not torch.equal(other.test_set()[0], xt)
    np.savez(tmp_path / "nolab.npz", x=rng.random((10, 4, 4)))
    src = data.load(f"npz:{tmp_path / 'nolab.npz'}")
    assert src.num_classes is None and src.train_batch(3, generator=_gen())[1] is None
    zeros = np.zeros((2, 3, 3))
    np.savez(tmp_path / "half.npz", x_train=zeros, y_train=np.zeros(2, np.int64), x_test=zeros)
    with pytest.raises(ValueError, match=r"labels must be given for both splits \(y_train, y_test\) or neither"):
        data.load(f"npz:{tmp_path / 'half.npz'}")


def test_folder_source(tmp_path):
    from PIL import Image

    for cls, value in (("a", 0), ("b", 255)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (6, 6), (value, value, value)).save(tmp_path / cls / f"{i}.png")
    src = data.load(f"folder:{tmp_path}", size=4, test_fraction=0.2)
    assert (src.data_shape, src.num_train, src.num_classes) == ((3, 4, 4), 8, 2)
    x, y = src.train_batch(10, generator=_gen())
    torch.testing.assert_close(x.mean((1, 2, 3)), y.float() * 2 - 1)  # class a black, class b white
    assert data.load(f"folder:{tmp_path}", grayscale=True).data_shape == (1, 32, 32)


def test_errors(tmp_path):
    unknown = r"unknown dataset 'mnits'; valid names are: moons, .*digits, mnist.*'npz:PATH'"
    with pytest.raises(ValueError, match=unknown):
        data.load("mnits")
    with pytest.raises(TypeError, match="name must be a str, got int"):
        data.load(3)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0.0, 1.0\), got 0.0"):
        data.load("moons", test_fraction=0.0)
    with pytest.raises(ValueError, match="split_seed must be an int >= 0, got -1"):
        data.load("moons", split_seed=-1)
    src = data.load("moons")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        src.train_batch(0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        src.train_batch(4, generator=1)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        src.test_set(0)
    digits = data.load("digits")
    with pytest.raises(ValueError, match=r"n must be <= the size of the test split \(297\), got 300"):
        digits.test_set(300)
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="test_fraction 0.9 leaves no training data out of 2 samples"):
        data.load(f"npz:{tmp_path / 'two.npz'}", test_fraction=0.9)
    with pytest.raises(FileNotFoundError, match="npz file not found: .*absent.npz"):
        data.load(f"npz:{tmp_path / 'absent.npz'}")
    with pytest.raises(ValueError, match="kind must be one of 'points', 'images'; got 'audio'"):
        DataSource("moons", "audio", (2,))
    with pytest.raises(ValueError, match="train_x is required unless the source is a toy2d set, got name 'mine'"):
        DataSource("mine", "points", (2,))
    with pytest.raises(ValueError, match="test_x is required when train_x is given"):
        DataSource("mine", "points", (2,), train_x=torch.zeros(3, 2))
