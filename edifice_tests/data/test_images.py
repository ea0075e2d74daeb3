"""Image loaders on tiny files written by the tests (npz, IDX plain / gz, PNG folders) and their errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from edifice.data import images

MNIST_NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist.npz"


def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(dtype).tobytes()


def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> Path:
    data = _idx_bytes(arr, code)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _mnist_like(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


# ----------------------------------------------------------------------------------------- digits


def test_load_digits():
    pytest.importorskip("sklearn")
    x, y = images.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.shape == (1797,) and y.dtype == torch.long and set(y.tolist()) == set(range(10))
    # values were 0..16: every pixel is a multiple of 1/16
    torch.testing.assert_close(x * 16, (x * 16).round())


# ------------------------------------------------------------------------------------------ MNIST


def test_load_mnist_npz(tmp_path):
    xtr, ytr = _mnist_like(5, 0)
    xte, yte = _mnist_like(3, 1)
    path = tmp_path / "m.npz"
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    x, y = images.load_mnist(path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    torch.testing.assert_close(x[:, 0], torch.from_numpy(xtr).float() / 255)
    assert y.tolist() == ytr.tolist()
    x, y = images.load_mnist(str(path), split="test")
    assert x.shape == (3, 1, 28, 28) and y.tolist() == yte.tolist()


@pytest.mark.parametrize(("gz", "dotted"), [(False, False), (True, False), (False, True)])
def test_load_mnist_idx_folder(tmp_path, gz, dotted):
    xtr, ytr = _mnist_like(4, 0)
    xte, yte = _mnist_like(2, 1)
    suffix = ".gz" if gz else ""
    for stem, arr in [("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)]:
        name = stem.replace("-idx", ".idx") if dotted else stem
        _write_idx(tmp_path / (name + suffix), arr)
    x, y = images.load_mnist(tmp_path)
    torch.testing.assert_close(x[:, 0], torch.from_numpy(xtr).float() / 255)
    assert y.tolist() == ytr.tolist()
    x, y = images.load_mnist(tmp_path, split="test")
    assert x.shape == (2, 1, 28, 28) and y.tolist() == yte.tolist()


@pytest.mark.skipif(not MNIST_NPZ.is_file(), reason=f"{MNIST_NPZ} not present")
def test_real_mnist_file():
    x, y = images.load_mnist(MNIST_NPZ, split="test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert 0.0 <= float(x.min()) and float(x.max()) == 1.0 and set(y.tolist()) == set(range(10))


def test_load_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        images.load_mnist(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'; got 'val'"):
        images.load_mnist(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.*not found in"):
        images.load_mnist(tmp_path)
    np.savez(tmp_path / "a.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['y_train'\]"):
        images.load_mnist(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x_train=np.zeros((2, 1, 28, 28), np.uint8), y_train=np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match=r"MNIST images must have shape \(N, H, W\), got \(2, 1, 28, 28\)"):
        images.load_mnist(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        images.load_mnist(tmp_path / "c.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz.*is not a readable .npz archive"):
        images.load_mnist(tmp_path / "text.npz")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        images.load_mnist(3)


def test_read_idx_types_and_errors(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    out = images.read_idx(_write_idx(tmp_path / "f.idx", arr, code=0x0D))
    assert out.dtype == np.float32 and np.array_equal(out, arr)
    out = images.read_idx(_write_idx(tmp_path / "s.idx.gz", np.array([-3, 500]), code=0x0B))
    assert out.tolist() == [-3, 500]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad.*is not an IDX file \\(bad magic number"):
        images.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((2, 3), np.uint8))[:-1])
    with pytest.raises(ValueError, match=r"IDX header says shape \(2, 3\) \(6 bytes\) but the file holds 5"):
        images.read_idx(tmp_path / "short")
    (tmp_path / "trunc").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="truncated header"):
        images.read_idx(tmp_path / "trunc")
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="is not a readable IDX file"):
        images.read_idx(tmp_path / "x.gz")
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        images.read_idx(tmp_path / "missing.idx")


# ------------------------------------------------------------------------------------ generic npz


def test_load_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc, labels=np.array([0, 2, 1, 2]))
    x, y = images.load_npz(tmp_path / "a.npz")
    assert x.shape == (4, 3, 6, 5) and y.tolist() == [0, 2, 1, 2]
    torch.testing.assert_close(x, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255)

    nchw = rng.random((3, 1, 7, 7)).astype(np.float64)
    np.savez(tmp_path / "b.npz", foo=nchw)
    x, y = images.load_npz(tmp_path / "b.npz", x_key="foo")
    assert x.shape == (3, 1, 7, 7) and x.dtype == torch.float32 and y is None
    torch.testing.assert_close(x, torch.from_numpy(nchw).float())

    np.savez(tmp_path / "c.npz", x=np.full((2, 8, 8), 255, np.int32), t=np.array([1, 0]))
    x, y = images.load_npz(tmp_path / "c.npz", y_key="t", size=4)
    assert x.shape == (2, 1, 4, 4) and y.tolist() == [1, 0]
    torch.testing.assert_close(x, torch.ones(2, 1, 4, 4))
    x, _ = images.load_npz(tmp_path / "c.npz", size=(2, 6))
    assert x.shape == (2, 1, 2, 6)

    np.savez(tmp_path / "d.npz", np.zeros((2, 4, 4), np.bool_))  # stored as arr_0
    x, y = images.load_npz(tmp_path / "d.npz")
    assert x.shape == (2, 1, 4, 4) and y is None


def test_load_npz_errors(tmp_path):
    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(FileNotFoundError, match="npz file not found: .*missing.npz"):
        images.load_npz(tmp_path / "missing.npz")
    np.save(tmp_path / "single.npy", np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="single.npy.*is a single .npy array, not an .npz archive"):
        images.load_npz(tmp_path / "single.npy")
    p = save("k.npz", z=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"no image key among .*pass x_key \(keys: \['z'\]\)"):
        images.load_npz(p)
    with pytest.raises(ValueError, match="x_key 'w' not found in .*k.npz"):
        images.load_npz(p, x_key="w")
    with pytest.raises(ValueError, match="y_key 'w' not found"):
        images.load_npz(p, x_key="z", y_key="w")
    layouts = r"images must have shape \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\), got \(2, 9\)"
    with pytest.raises(ValueError, match=layouts):
        images.load_npz(save("flat.npz", x=np.zeros((2, 9))))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\].*got values in \[-1.0, 1.0\]"):
        images.load_npz(save("neg.npz", x=np.linspace(-1, 1, 18).reshape(2, 3, 3)))
    with pytest.raises(ValueError, match="float images must be finite"):
        images.load_npz(save("nan.npz", x=np.full((2, 3, 3), np.nan)))
    with pytest.raises(ValueError, match=r"integer images must lie in \[0, 255\], got values in \[0, 300\]"):
        images.load_npz(save("big.npz", x=np.array([[[0, 300]]])))
    with pytest.raises(ValueError, match="expected 1, 3 or 4 channels"):
        images.load_npz(save("ch.npz", x=np.zeros((2, 5, 6, 7), np.uint8)))
    with pytest.raises(ValueError, match="images must have an integer or float dtype, got <U1"):
        images.load_npz(save("str.npz", x=np.array([[["a"]]])))
    with pytest.raises(ValueError, match="the image array is empty"):
        images.load_npz(save("empty.npz", x=np.zeros((0, 3, 3), np.uint8)))
    p = save("lab.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="labels must have an integer dtype, got float64"):
        images.load_npz(p)
    p = save("lab2.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([-1, 1]))
    with pytest.raises(ValueError, match="labels must be non-negative, got minimum -1"):
        images.load_npz(p)
    with pytest.raises(ValueError, match=r"size must be a positive int or a pair \(H, W\) of positive ints, got 0"):
        images.load_npz(p, size=0)


# ----------------------------------------------------------------------------------------- folder


def _png(path: Path, size: tuple[int, int], value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_load_folder_classes(tmp_path):
    pytest.importorskip("PIL")
    _png(tmp_path / "dog" / "b.png", (10, 12), 255)
    _png(tmp_path / "cat" / "a.png", (5, 5), 0)
    _png(tmp_path / "cat" / "c.PNG", (9, 7), 255)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    x, y = images.load_folder(tmp_path, size=8)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1]  # cat (sorted first): a, c; then dog
    torch.testing.assert_close(x[0], torch.zeros(3, 8, 8))
    torch.testing.assert_close(x[2], torch.ones(3, 8, 8))
    x, _ = images.load_folder(str(tmp_path), size=(4, 6), grayscale=True)
    assert x.shape == (3, 1, 4, 6)


def test_load_folder_flat_and_errors(tmp_path):
    pytest.importorskip("PIL")
    flat = tmp_path / "flat"
    _png(flat / "one.png", (3, 3), 128)
    x, y = images.load_folder(flat, size=3)
    assert x.shape == (1, 3, 3, 3) and y is None
    torch.testing.assert_close(x, torch.full((1, 3, 3, 3), 128 / 255))

    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        images.load_folder(tmp_path / "nowhere", size=8)
    with pytest.raises(ValueError, match="path must be a folder of images, got the file .*one.png"):
        images.load_folder(flat / "one.png", size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images with extensions .* found in .*empty"):
        images.load_folder(tmp_path / "empty", size=8)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode image .*x.png"):
        images.load_folder(tmp_path / "broken", size=8)
    with pytest.raises(TypeError, match=r"size must be a positive int or a pair \(H, W\) of positive ints, got \(8,\)"):
        images.load_folder(flat, size=(8,))
    with pytest.raises(ValueError, match=r"size must be a positive int or a pair .* got \(8, -1\)"):
        images.load_folder(flat, size=(8, -1))
