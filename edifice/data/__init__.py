"""Datasets behind one small interface, :class:`DataSource`, built by :func:`load`.

* 2-D toy sets (:mod:`~edifice.data.toy2d`): fresh i.i.d. draws for every training batch and a
  fixed held-out set drawn from a generator seeded apart from training.
* Images (:mod:`~edifice.data.images`): scikit-learn's 8x8 digits (offline), MNIST / Fashion-MNIST
  from a local ``.npz`` or IDX folder, any ``.npz`` (``"npz:PATH"``) or image folder
  (``"folder:PATH"``). Stored in ``[0, 1]``; the model sees ``[-1, 1]``; :meth:`DataSource.to_unit`
  maps model space back.

Example:
    >>> import torch
    >>> from edifice import data
    >>> src = data.load("moons")
    >>> x, y = src.train_batch(256, generator=torch.Generator().manual_seed(0))
    >>> x.shape, y, src.kind, src.data_shape, src.num_classes
    (torch.Size([256, 2]), None, 'points', (2,), None)
    >>> digits = data.load("digits")
    >>> xb, yb = digits.train_batch(8, generator=torch.Generator().manual_seed(0))
    >>> xb.shape, float(xb.min()) >= -1.0, digits.num_classes, digits.test_set()[0].shape[0]
    (torch.Size([8, 1, 8, 8]), True, 10, 297)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edifice._checks import check_float, check_int, randint
from edifice.data import images, toy2d

__all__ = ["DataSource", "load", "DATASETS", "images", "toy2d", "find_data_file"]

DATASETS: tuple[str, ...] = toy2d.NAMES + ("digits", "mnist", "fashion_mnist")

_TOY_TEST_SEED = 0x5EED_7E57  # held-out toy data: a generator seeded apart from any training seed
_TOY_TEST_N = 2000
_DIGITS_TEST = 297  # scikit-learn's digits have no official split: the last 297 images are the test set
_MNIST_STEMS = {"mnist": ("mnist",), "fashion_mnist": ("fashion_mnist", "fashion-mnist")}


@dataclass(frozen=True, eq=False)
class DataSource:
    """A dataset as the training loop sees it.

    Attributes:
        name: the name given to :func:`load`.
        kind: ``"points"`` (vectors, e.g. 2-D toy sets) or ``"images"`` (``(C, H, W)``).
        data_shape: shape of one sample, ``(2,)`` or ``(C, H, W)``.
        num_classes: number of class labels, or ``None`` for unlabelled data.
        train_x, train_y, test_x, test_y: stored arrays (images: ``[0, 1]``); ``None`` for the
            toy sets, which are generated on demand.
        holdout_class: the class left out of both splits (``load(..., holdout_class=K)``), or ``None``.
        ood_x, ood_y: the test images ``[0, 1]`` of the held-out class and their labels (all ``K``),
            an out-of-distribution set for :func:`edifice.train.ood.ood_report`; ``None`` without one.
    """

    name: str
    kind: str
    data_shape: tuple[int, ...]
    num_classes: int | None = None
    train_x: torch.Tensor | None = field(default=None, repr=False)
    train_y: torch.Tensor | None = field(default=None, repr=False)
    test_x: torch.Tensor | None = field(default=None, repr=False)
    test_y: torch.Tensor | None = field(default=None, repr=False)
    holdout_class: int | None = None
    ood_x: torch.Tensor | None = field(default=None, repr=False)
    ood_y: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in ("points", "images"):
            raise ValueError(f"kind must be one of 'points', 'images'; got {self.kind!r}")
        if self.train_x is None and (self.kind != "points" or self.name not in toy2d.NAMES):
            raise ValueError(f"train_x is required unless the source is a toy2d set, got name {self.name!r}")
        if self.train_x is not None and self.test_x is None:
            raise ValueError("test_x is required when train_x is given")
        if (self.holdout_class is None) != (self.ood_x is None):
            raise ValueError("holdout_class and ood_x go together (the held-out class and its test images), got "
                             f"holdout_class={self.holdout_class!r} and ood_x "
                             f"{'None' if self.ood_x is None else 'given'}")

    @property
    def num_train(self) -> int | None:
        """Number of stored training samples (``None``: the toy sets are unlimited)."""
        return None if self.train_x is None else int(self.train_x.shape[0])

    def train_batch(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch: fresh toy draws, or images picked uniformly with replacement.

        Under DDP each rank passes its own generator (seeded per rank by the fit loop), which is
        all the sharding needed for i.i.d. sampling.

        Args:
            batch_size: number of samples ``B``.
            generator: the source of randomness.

        Returns:
            ``x`` of shape ``(B, *data_shape)`` in model space (images in ``[-1, 1]``) and ``y``
            ``(B,)`` long labels or ``None``.
        """
        batch_size = check_int("batch_size", batch_size, min=1)
        if self.train_x is None:
            return toy2d.sample(self.name, batch_size, generator=generator), None
        idx = randint(0, self.train_x.shape[0], (batch_size,), generator=generator, device=self.train_x.device)
        y = None if self.train_y is None else self.train_y[idx]
        return self._to_model(self.train_x[idx]), y

    def test_set(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The held-out set in model space, identical on every call.

        Args:
            n: number of samples; default: 2000 for the toy sets, the whole test split for images.
                A smaller ``n`` gives the first ``n`` of the default set.

        Returns:
            ``x`` of shape ``(n, *data_shape)`` and ``y`` ``(n,)`` long or ``None``.
        """
        if n is not None:
            n = check_int("n", n, min=1)
        if self.test_x is None:
            g = torch.Generator().manual_seed(_TOY_TEST_SEED)
            pool = toy2d.sample(self.name, max(n or _TOY_TEST_N, _TOY_TEST_N), generator=g)
            return pool[: n or _TOY_TEST_N], None
        total = self.test_x.shape[0]
        if n is not None and n > total:
            raise ValueError(f"n must be <= the size of the test split ({total}), got {n}")
        n = total if n is None else n
        y = None if self.test_y is None else self.test_y[:n]
        return self._to_model(self.test_x[:n]), y

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 - 1.0 if self.kind == "images" else x

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Map model-space samples back to data units: ``[-1, 1] -> [0, 1]`` (clamped) for images,
        the identity for points."""
        if self.kind == "images":
            return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        return x


def _search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get("EDIFICE_DATA_DIR"):
        dirs.append(Path(os.environ["EDIFICE_DATA_DIR"]).expanduser())
    dirs.append(Path.cwd().parent / "shared" / "data")
    dirs.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    return list(dict.fromkeys(dirs))


def find_data_file(name: str, *, data_dir: str | os.PathLike | None = None) -> Path:
    """Locate MNIST-format data for ``name`` (``"mnist"`` or ``"fashion_mnist"``).

    Searched in order: ``data_dir`` alone if given (a file is used as is), else
    ``$EDIFICE_DATA_DIR``, ``../shared/data`` relative to the current directory, and
    ``../shared/data`` beside the repository. In each folder: ``<name>.npz``, a ``<name>/``
    folder, or the folder itself when it holds the IDX files.

    Raises:
        FileNotFoundError: nothing found; the message lists every place searched.
    """
    stems = _MNIST_STEMS[name]
    if data_dir is not None and Path(data_dir).expanduser().is_file():
        return Path(data_dir).expanduser()
    tried = []
    for d in _search_dirs(data_dir):
        for stem in stems:
            for cand in (d / f"{stem}.npz", d / stem):
                tried.append(str(cand))
                if cand.is_file() or (cand.is_dir() and images._find_idx(cand, "train-images-idx3-ubyte")):
                    return cand
        tried.append(str(d / "train-images-idx3-ubyte[.gz]"))
        if d.is_dir() and images._find_idx(d, "train-images-idx3-ubyte"):
            return d
    raise FileNotFoundError(
        f"{name} data not found; searched {tried}. Pass data_dir= or set EDIFICE_DATA_DIR."
    )


def _split(x, y, test_fraction: float, seed: int):
    n = x.shape[0]
    n_test = max(1, int(round(n * test_fraction)))
    if n_test >= n:
        raise ValueError(f"test_fraction {test_fraction} leaves no training data out of {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:-n_test], perm[-n_test:]
    return x[tr], None if y is None else y[tr], x[te], None if y is None else y[te]


def _image_source(name, xtr, ytr, xte, yte, num_classes=None, holdout_class=None) -> DataSource:
    if num_classes is None and ytr is not None:
        num_classes = int(max(int(ytr.max()), -1 if yte is None else int(yte.max()))) + 1
    if holdout_class is None:
        return DataSource(name, "images", tuple(xtr.shape[1:]), num_classes, xtr, ytr, xte, yte)
    if ytr is None or yte is None:
        raise ValueError(f"holdout_class needs labelled images, but {name!r} has no labels; got "
                         f"holdout_class={holdout_class!r}")
    k = check_int("holdout_class", holdout_class, min=0)
    if k >= num_classes:
        raise ValueError(f"holdout_class must be a class of {name!r}, in [0, {num_classes - 1}], got {k}")
    keep_tr, keep_te = ytr != k, yte != k
    if bool(keep_te.all()):
        raise ValueError(f"holdout_class={k} has no test images in {name!r}, so there is nothing to hold out")
    if not bool(keep_tr.any()) or not bool(keep_te.any()):
        raise ValueError(f"holdout_class={k} is the only class of {name!r}; nothing would be left to train on")
    # num_classes stays: labels keep their values, so a conditional model still has K label slots.
    return DataSource(name, "images", tuple(xtr.shape[1:]), num_classes, xtr[keep_tr], ytr[keep_tr], xte[keep_te],
                      yte[keep_te], holdout_class=k, ood_x=xte[~keep_te], ood_y=yte[~keep_te])


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    holdout_class: int | None = None,
) -> DataSource:
    """Build the :class:`DataSource` called ``name``.

    Args:
        name: one of :data:`DATASETS`, ``"npz:PATH"`` (any ``.npz``; ``x_train``/``x_test``
            keys give the split) or ``"folder:PATH"`` (class subfolders give labels).
        data_dir: where to look for MNIST-format data (see :func:`find_data_file`).
        size: resize images to this size (``"npz:"`` optional; ``"folder:"`` default 32).
        grayscale: ``"folder:"`` only: load one channel instead of RGB.
        test_fraction: held-out fraction for ``"npz:"`` / ``"folder:"`` sources without an
            official split (a fixed random permutation seeded by ``split_seed``).
        split_seed: seed of that permutation.
        holdout_class: labelled image data only: remove class ``K`` from BOTH the training and the test
            split; its test images become ``ood_x`` / ``ood_y`` (an out-of-distribution set: a model that never
            saw the class should find it atypical). ``num_classes`` is unchanged.

    Raises:
        ValueError: unknown name (the message lists :data:`DATASETS`), bad options, or a ``holdout_class``
            on unlabelled data / outside ``[0, num_classes)``.
        FileNotFoundError: the data files are missing.

    Example:
        >>> from edifice import data
        >>> src = data.load("digits", holdout_class=3)
        >>> src.holdout_class, int((src.train_y == 3).sum()), src.ood_x.shape, src.num_classes
        (3, 0, torch.Size([30, 1, 8, 8]), 10)
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    test_fraction = check_float("test_fraction", test_fraction, min=0.0, max=1.0, min_open=True, max_open=True)
    split_seed = check_int("split_seed", split_seed, min=0)
    if holdout_class is not None:
        holdout_class = check_int("holdout_class", holdout_class, min=0)
    if name in toy2d.NAMES:
        if holdout_class is not None:
            raise ValueError(f"holdout_class needs labelled image data, but {name!r} is an unlabelled 2-D toy set; "
                             f"got holdout_class={holdout_class}")
        return DataSource(name, "points", (2,), None)
    ho = holdout_class
    if name == "digits":
        x, y = images.load_digits()
        n = x.shape[0] - _DIGITS_TEST
        return _image_source(name, x[:n], y[:n], x[n:], y[n:], num_classes=10, holdout_class=ho)
    if name in _MNIST_STEMS:
        path = find_data_file(name, data_dir=data_dir)
        xtr, ytr = images.load_mnist(path, split="train")
        xte, yte = images.load_mnist(path, split="test")
        return _image_source(name, xtr, ytr, xte, yte, num_classes=10, holdout_class=ho)
    if name.startswith("npz:"):
        path = name[4:]
        keys = images._open_npz(images._existing(path, "npz file")).keys()
        if "x_train" in keys and "x_test" in keys:
            if ("y_train" in keys) != ("y_test" in keys):
                raise ValueError(f"{path!r}: labels must be given for both splits (y_train, y_test) or neither")
            labelled = "y_train" in keys
            xtr, ytr = images.load_npz(path, x_key="x_train", y_key="y_train" if labelled else None, size=size)
            xte, yte = images.load_npz(path, x_key="x_test", y_key="y_test" if labelled else None, size=size)
            if not labelled:
                ytr = yte = None
            return _image_source(name, xtr, ytr, xte, yte, holdout_class=ho)
        x, y = images.load_npz(path, size=size)
        return _image_source(name, *_split(x, y, test_fraction, split_seed), holdout_class=ho)
    if name.startswith("folder:"):
        x, y = images.load_folder(name[7:], size=32 if size is None else size, grayscale=grayscale)
        return _image_source(name, *_split(x, y, test_fraction, split_seed), holdout_class=ho)
    raise ValueError(
        f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}, 'npz:PATH', 'folder:PATH'"
    )
