"""Image data loaders: scikit-learn's 8x8 digits, MNIST (.npz or IDX files), generic .npz, folders.

Every loader returns ``(x, y)`` with ``x`` a float32 tensor of shape ``(N, C, H, W)`` and values in
``[0, 1]``, and ``y`` a ``(N,)`` long tensor of class labels or ``None``. Errors name the offending
path: a missing file raises ``FileNotFoundError``; a file of the wrong format, shape or dtype
raises ``ValueError``.

Example:
    >>> from edifice.data import images
    >>> x, y = images.load_digits()
    >>> x.shape, x.dtype, int(y.max())
    (torch.Size([1797, 1, 8, 8]), torch.float32, 9)
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edifice._checks import check_choice

__all__ = ["load_digits", "load_mnist", "load_npz", "load_folder", "read_idx", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# IDX type codes (http://yann.lecun.com/exdb/mnist/): big-endian payloads.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _existing(path: str | os.PathLike, what: str = "file") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {str(p)!r}")
    return p


def _to_unit_images(arr: np.ndarray, source: str, *, channels_last: bool | None = None) -> torch.Tensor:
    """Convert an image array to float32 ``(N, C, H, W)`` in [0, 1]; ``source`` names the file in errors."""
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{source}: images must have an integer or float dtype, got {arr.dtype}")
    if arr.ndim == 3:  # (N, H, W)
        arr = arr[:, None]  # (N, 1, H, W)
    elif arr.ndim == 4:
        if channels_last is None:
            # (N, H, W, C) when the last axis looks like channels and axis 1 does not (or is larger)
            c1, c_last = arr.shape[1], arr.shape[-1]
            channels_last = c_last in (1, 3, 4) and (c1 not in (1, 3, 4) or c_last < c1)
        if channels_last:
            arr = arr.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        if arr.shape[1] not in (1, 3, 4):
            raise ValueError(f"{source}: expected 1, 3 or 4 channels, got image array of shape {arr.shape}")
    else:
        raise ValueError(
            f"{source}: images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{source}: the image array is empty, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(arr)).float() / 255.0
    elif arr.dtype.kind in "ui":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{source}: integer images must lie in [0, 255], got values in [{lo}, {hi}]")
        x = torch.from_numpy(arr.astype(np.float32)) / 255.0
    else:
        if not np.isfinite(arr).all():
            raise ValueError(f"{source}: float images must be finite, found NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{source}: float images must lie in [0, 1] (or be uint8 in [0, 255]), got values in [{lo}, {hi}]"
            )
        x = torch.from_numpy(arr.astype(np.float32))
    return x.contiguous()


def _to_labels(arr: np.ndarray, n: int, source: str) -> torch.Tensor:
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{source}: labels must have shape ({n},) to match the images, got {arr.shape}")
    if arr.dtype.kind not in "ui":
        raise ValueError(f"{source}: labels must have an integer dtype, got {arr.dtype}")
    if n and int(arr.min()) < 0:
        raise ValueError(f"{source}: labels must be non-negative, got minimum {int(arr.min())}")
    return torch.from_numpy(arr.astype(np.int64))


def _resize(x: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    if size is None:
        return x
    hw = _check_size(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    out = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)  # (N, C, *hw)
    return out.clamp_(0.0, 1.0)


def _check_size(size) -> tuple[int, int]:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    hw = (size, size) if is_int(size) else size
    if not isinstance(hw, (tuple, list)) or len(hw) != 2 or not all(is_int(s) for s in hw):
        raise TypeError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    return int(hw[0]), int(hw[1])


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, offline), scaled from 0..16 to [0, 1].

    Returns:
        ``x`` of shape ``(1797, 1, 8, 8)`` float32 in ``[0, 1]`` and ``y`` of shape ``(1797,)`` long.

    References:
        UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, 1998), via
        ``sklearn.datasets.load_digits``.
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install 'edifice[data]'") from err
    bunch = _sk_load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return x.contiguous(), y


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzip-compressed.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.

    Returns:
        A numpy array with the file's shape and native-endian dtype.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: bad magic number, unknown type code or a size that does not match the header.
    """
    p = _existing(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{str(p)!r} is not a readable IDX file: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{str(p)!r} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{str(p)!r} is not an IDX file (truncated header, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{str(p)!r}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix in ("", ".gz"):
            p = folder / (name + suffix)
            if p.is_file():
                return p
    return None


def load_mnist(path: str | os.PathLike, *, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST (or any dataset in its format, e.g. Fashion-MNIST) from an ``.npz`` file or IDX folder.

    Args:
        path: an ``.npz`` file with keys ``x_train``, ``y_train``, ``x_test``, ``y_test`` (uint8
            images ``(N, 28, 28)``), or a folder holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
            (each optionally ``.gz``; ``train-images.idx3-ubyte`` spellings also work).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``x`` of shape ``(N, 1, H, W)`` float32 in ``[0, 1]`` and ``y`` of shape ``(N,)`` long.

    Raises:
        FileNotFoundError: ``path`` or one of the IDX files is missing.
        ValueError: unknown split, missing npz keys, or arrays of the wrong shape / dtype.
    """
    check_choice("split", split, ("train", "test"))
    p = _existing(path, "MNIST file or folder")
    if p.is_dir():
        img_stem, lbl_stem = _MNIST_FILES[split]
        found = [_find_idx(p, img_stem), _find_idx(p, lbl_stem)]
        missing = [s for s, f in zip((img_stem, lbl_stem), found) if f is None]
        if missing:
            raise FileNotFoundError(f"IDX file(s) {missing} (optionally .gz) not found in {str(p)!r}")
        images, labels = read_idx(found[0]), read_idx(found[1])
        source = str(found[0])
    else:
        arrays = _open_npz(p)
        keys = (f"x_{split}", f"y_{split}")
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ValueError(f"{str(p)!r} lacks key(s) {missing}; it holds {sorted(arrays)}")
        images, labels = arrays[keys[0]], arrays[keys[1]]
        source = f"{str(p)!r}[{keys[0]!r}]"
    if images.ndim != 3:
        raise ValueError(f"{source}: MNIST images must have shape (N, H, W), got {images.shape}")
    x = _to_unit_images(images, source)
    return x, _to_labels(labels, x.shape[0], source)


def _open_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        obj = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{str(p)!r} is not a readable .npz archive: {err}") from err
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise ValueError(f"{str(p)!r} is a single .npy array, not an .npz archive of named arrays")
    try:
        with obj:
            return {k: obj[k] for k in obj.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{str(p)!r} is not a readable .npz archive: {err}") from err


_X_KEYS = ("x", "images", "x_train", "data", "arr_0")
_Y_KEYS = ("y", "labels", "y_train", "targets", "arr_1")


def load_npz(
    path: str | os.PathLike,
    *,
    x_key: str | None = None,
    y_key: str | None = None,
    size: int | tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (and optional labels) from any ``.npz`` archive.

    Images may be ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with 1, 3 or 4 channels, as
    uint8 (divided by 255), other integers in ``[0, 255]``, or floats already in ``[0, 1]``. A 4-D
    array is read as ``(N, C, H, W)`` unless its last axis looks like channels (1, 3 or 4) and axis 1
    does not, or is larger (so ``(N, 32, 32, 3)`` and ``(N, 4, 4, 3)`` are channels-last).

    Args:
        path: the ``.npz`` file.
        x_key: key of the image array; default: the first present of
            ``x, images, x_train, data, arr_0``.
        y_key: key of the label array; default: the first present of
            ``y, labels, y_train, targets, arr_1`` (no labels if none is present).
        size: resize to ``size x size`` (int) or ``(H, W)`` with antialiased bilinear filtering.

    Returns:
        ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]`` and ``y`` long ``(N,)`` or ``None``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not an npz archive, missing key, wrong shape / dtype / value range, ``size < 1``.
        TypeError: ``size`` not an int or a pair of ints.
    """
    p = _existing(path, "npz file")
    if size is not None:
        _check_size(size)
    arrays = _open_npz(p)
    if x_key is None:
        x_key = next((k for k in _X_KEYS if k in arrays), None)
        if x_key is None:
            raise ValueError(f"{str(p)!r}: no image key among {_X_KEYS}; pass x_key (keys: {sorted(arrays)})")
    elif x_key not in arrays:
        raise ValueError(f"x_key {x_key!r} not found in {str(p)!r}; keys are {sorted(arrays)}")
    if y_key is None:
        y_key = next((k for k in _Y_KEYS if k in arrays and k != x_key), None)
    elif y_key not in arrays:
        raise ValueError(f"y_key {y_key!r} not found in {str(p)!r}; keys are {sorted(arrays)}")
    source = f"{str(p)!r}[{x_key!r}]"
    x = _resize(_to_unit_images(arrays[x_key], source), size)
    y = None if y_key is None else _to_labels(arrays[y_key], x.shape[0], f"{str(p)!r}[{y_key!r}]")
    return x, y


def load_folder(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int],
    grayscale: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images from a folder, every image resized to ``size``; class subfolders give labels.

    With subfolders (``path/cat/*.png``, ``path/dog/*.png``) the label of an image is the index of
    its subfolder in sorted order. Without subfolders the images directly in ``path`` are loaded
    and ``y`` is ``None``. Files are read in sorted order; extensions: :data:`IMAGE_EXTENSIONS`.

    Args:
        path: the folder.
        size: int ``S`` (``S x S``) or ``(H, W)``; images are resized with bilinear filtering.
        grayscale: convert to one channel (``"L"``); otherwise three (``"RGB"``).

    Returns:
        ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]`` with ``C`` 1 or 3, and ``y`` long ``(N,)`` or ``None``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a folder, holds no images, an image cannot be decoded, or ``size < 1``.
        TypeError: ``size`` not an int or a pair of ints.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("load_folder needs pillow: pip install 'edifice[plots]'") from err
    h, w = _check_size(size)
    p = _existing(path, "image folder")
    if not p.is_dir():
        raise ValueError(f"path must be a folder of images, got the file {str(p)!r}")

    def images_in(folder: Path) -> list[Path]:
        return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)

    classes = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files = [(f, label) for label, d in enumerate(classes) for f in images_in(d)]
    else:
        files = [(f, None) for f in images_in(p)]
    if not files:
        raise ValueError(f"no images with extensions {IMAGE_EXTENSIONS} found in {str(p)!r}")
    mode = "L" if grayscale else "RGB"
    arrays = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode).resize((w, h), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(im, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode image {str(f)!r}: {err}") from err
    stacked = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    x = _to_unit_images(stacked, str(p), channels_last=not grayscale)
    y = torch.tensor([label for _, label in files], dtype=torch.long) if classes else None
    return x, y
