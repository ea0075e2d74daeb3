"""Feature networks for image Fréchet distance: small deterministic CNN classifiers that ship with
the package, one for scikit-learn's 8x8 digits and one for MNIST.

The Fréchet Inception Distance (Heusel et al. 2017) compares Gaussians fitted to the penultimate
activations of an ImageNet classifier. Inception is meaningless on 8x8 or 28x28 grey digits, so —
as is common for MNIST-scale work — each dataset gets its own small classifier, and the distance is
computed on its 64-wide penultimate layer (:meth:`FeatureNet.features`). The same nets give the
per-label accuracy of class-conditional samples (:func:`class_accuracy`).

Architecture (``"M"`` = 2x2 max pooling, every conv is 3x3 with padding 1 and a ReLU)::

    digits (1, 8, 8):   conv 32, conv 32, M, conv 64, M  -> (64, 2, 2) -> linear 256 -> 64, ELU
    mnist (1, 28, 28):  conv 16, M, conv 32, M, conv 64, M -> (64, 3, 3) -> linear 576 -> 64, ELU
    both:               the 64 ELU activations are the features; linear 64 -> 10 gives the logits

The penultimate layer uses an ELU rather than a ReLU: with a ReLU about half of the 64 units were
dead (constant zero on the whole test set), leaving a feature covariance of rank ~30; with the
ELU every unit varies.

Inputs are images in DATA UNITS ``[0, 1]`` (``DataSource.test_x``, or model-space samples mapped
back with ``DataSource.to_unit``); the nets map them to ``[-1, 1]`` themselves. There is no dropout
or batch norm, so train and eval mode compute the same function.

Training procedure (:func:`train_feature_net`, re-run with
``python -m edifice.metrics.features train digits|mnist [--out DIR]``):

1. one CPU thread, ``torch.use_deterministic_algorithms(True)``, one ``torch.Generator`` seeded with
   ``seed`` (default 0) that draws everything below; the global RNG is never used;
2. He-uniform weights (bound ``sqrt(6 / fan_in)``) and zero biases;
3. batches from consecutive random permutations of the training split (epochs without
   replacement); each image is rotated by a random angle in ``[-10, 10]`` degrees and zoomed by a
   random factor in ``[0.9, 1.1]`` (bilinear, zero fill), then shifted by a random integer offset
   in ``[-s, s]`` pixels per axis: ``s = 1`` for digits, ``s = 2`` for MNIST;
4. Adam (betas 0.9, 0.999) on the cross-entropy with label smoothing 0.1, a cosine learning-rate
   decay from ``lr`` to 0 over a fixed number of steps: digits 3000 steps of 64 images (128
   epochs), lr 2e-3; MNIST 3000 steps of 128 images (6.4 epochs), lr 2e-3;
5. the test accuracy is measured on the official test split (digits: the last 297 images).

Same seed, same torch build and CPU -> bitwise the same weights. The sidecar JSON
(``weights/feature_<name>.json``, available as :attr:`FeatureNet.info`) records the procedure,
hyper-parameters, test accuracy, training time, torch version and the SHA-256 of the weights file,
which :func:`feature_net` checks on load.

Example:
    >>> from edifice import data
    >>> from edifice.metrics.features import feature_net, class_accuracy
    >>> digits = data.load("digits")
    >>> net = feature_net("digits")
    >>> net.features(digits.test_x).shape
    torch.Size([297, 64])
    >>> class_accuracy(net, digits.test_x, digits.test_y)["accuracy"] >= 0.97
    True

References:
    GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
    (Heusel et al., 2017), arXiv:1706.08500 — the Fréchet distance on classifier features.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import check_choice, check_int

__all__ = ["FEATURE_NETS", "FeatureNet", "feature_net", "for_data", "train_feature_net", "class_accuracy",
           "WEIGHTS_DIR"]

FEATURE_NETS: tuple[str, ...] = ("digits", "mnist")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_FORMAT = 1
_FEATURE_DIM = 64
_NUM_CLASSES = 10
_RANGE_TOL = 0.5  # inputs must lie in [-0.5, 1.5]: catches model-space [-1, 1] or [0, 255] images


@dataclass(frozen=True)
class _Recipe:
    input_shape: tuple[int, int, int]
    layers: tuple[int | str, ...]  # conv output channels, or "M" for 2x2 max pooling
    steps: int
    batch_size: int
    lr: float
    max_shift: int  # integer pixel shift per axis, in [-max_shift, max_shift]
    max_rotation: float  # degrees, uniform in [-max_rotation, max_rotation]
    max_scale: float  # relative zoom, uniform in [1 - max_scale, 1 + max_scale]
    label_smoothing: float


_RECIPES: dict[str, _Recipe] = {
    "digits": _Recipe((1, 8, 8), (32, 32, "M", 64, "M"), steps=3000, batch_size=64, lr=2e-3, max_shift=1,
                      max_rotation=10.0, max_scale=0.1, label_smoothing=0.1),
    "mnist": _Recipe((1, 28, 28), (16, "M", 32, "M", 64, "M"), steps=3000, batch_size=128, lr=2e-3, max_shift=2,
                     max_rotation=10.0, max_scale=0.1, label_smoothing=0.1),
}


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {', '.join(map(repr, FEATURE_NETS))}; got {type(name).__name__}")
    return check_choice("name", name, FEATURE_NETS)


class FeatureNet(nn.Module):
    """A small CNN classifier whose 64-wide penultimate layer serves as image features.

    Build one with :func:`feature_net` (the shipped weights) or :func:`train_feature_net`;
    ``FeatureNet(name)`` alone gives the architecture with PyTorch's default initialisation.

    Attributes:
        name: ``"digits"`` or ``"mnist"``.
        input_shape: ``(1, 8, 8)`` or ``(1, 28, 28)``.
        num_classes: 10.
        feature_dim: 64.
        info: the training record (the sidecar JSON); empty for an untrained net.

    Args:
        name: one of :data:`FEATURE_NETS`.
        info: the training record to attach.
    """

    def __init__(self, name: str, *, info: dict[str, Any] | None = None):
        super().__init__()
        name = _check_name(name)
        recipe = _RECIPES[name]
        self.name = name
        self.input_shape = recipe.input_shape
        self.num_classes = _NUM_CLASSES
        self.feature_dim = _FEATURE_DIM
        self.info = dict(info or {})
        layers: list[nn.Module] = []
        c, h, w = recipe.input_shape
        for spec in recipe.layers:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, spec, 3, padding=1), nn.ReLU()]
                c = spec
        self.conv = nn.Sequential(*layers)
        self.hidden = nn.Linear(c * h * w, _FEATURE_DIM)
        self.head = nn.Linear(_FEATURE_DIM, _NUM_CLASSES)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"

    # -- unchecked internals ------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x * 2.0 - 1.0)  # (N, 1, H, W) in [0, 1] -> (N, 64, h, w)
        return F.elu(self.hidden(h.flatten(1)))  # (N, 64 * h * w) -> (N, 64)

    def _batched(self, x: torch.Tensor, fn, batch_size: int) -> torch.Tensor:
        device = next(self.parameters()).device
        outs = []
        with torch.no_grad():
            for chunk in x.split(batch_size):
                outs.append(fn(chunk.to(device=device, dtype=torch.float32)).to(x.device))
        return torch.cat(outs)

    def _check_x(self, x: Any) -> torch.Tensor:
        want = "(N, " + ", ".join(map(str, self.input_shape)) + ")"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of images of shape {want}, got {type(x).__name__}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"x must have shape {want} for the {self.name!r} feature net, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of images in [0, 1], got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one image, got shape {tuple(x.shape)}")
        finite = torch.isfinite(x.detach())
        if not bool(finite.all()):
            raise ValueError(f"x must be finite, got {int((~finite).sum())} NaN or inf values")
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
            raise ValueError(
                f"x must be images in data units [0, 1] (tolerance {_RANGE_TOL}), got values in [{lo:.4g}, {hi:.4g}];"
                " map model-space samples with DataSource.to_unit"
            )
        return x

    # -- public -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (differentiable, one batch).

        Args:
            x: images ``(N, *input_shape)`` in data units ``[0, 1]``, on the net's device.

        Returns:
            Logits ``(N, 10)``.

        Raises:
            ValueError: wrong shape, non-float dtype, non-finite values or values far outside [0, 1].
        """
        x = self._check_x(x)
        return self.head(self._features(x))  # (N, 64) -> (N, 10)

    def features(self, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Penultimate activations, computed without gradients in batches of ``batch_size``.

        Args:
            x: images ``(N, *input_shape)`` in data units ``[0, 1]``, any float dtype and device.
            batch_size: images per forward pass (bounds memory).

        Returns:
            Features ``(N, 64)``, float32, on ``x``'s device.

        Raises:
            ValueError: wrong shape, non-float dtype, non-finite values or values far outside [0, 1].
        """
        x = self._check_x(x)
        batch_size = check_int("batch_size", batch_size, min=1)
        return self._batched(x, self._features, batch_size)

    def predict(self, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Predicted classes ``(N,)`` long on ``x``'s device (argmax of the logits, no gradients)."""
        x = self._check_x(x)
        batch_size = check_int("batch_size", batch_size, min=1)
        return self._batched(x, lambda c: self.head(self._features(c)).argmax(dim=1), batch_size)


# -- loading ------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, str, str], FeatureNet] = {}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _empty_net(name: str) -> FeatureNet:
    """The architecture with uninitialised storage, built without touching the global RNG."""
    with torch.device("meta"):
        net = FeatureNet(name)
    return net.to_empty(device="cpu")


def feature_net(
    name: str, *, device: str | torch.device | None = None, weights_dir: str | os.PathLike | None = None
) -> FeatureNet:
    """The shipped feature net ``name``: eval mode, ``requires_grad`` off, cached per device.

    Repeated calls return the same module (do not train or modify it; ``copy.deepcopy`` it first).

    Args:
        name: one of :data:`FEATURE_NETS`.
        device: where to put it (default CPU).
        weights_dir: load ``feature_<name>.safetensors`` / ``.json`` from this folder instead of
            the package's ``weights/`` (e.g. the ``--out`` of a re-training run).

    Returns:
        The :class:`FeatureNet`, with :attr:`FeatureNet.info` read from the JSON sidecar.

    Raises:
        ValueError: unknown name (the message lists :data:`FEATURE_NETS`).
        FileNotFoundError: the weights are missing.
        RuntimeError: the weights file does not match the SHA-256 or the architecture in its JSON.
    """
    name = _check_name(name)
    device = torch.device("cpu" if device is None else device)
    folder = WEIGHTS_DIR if weights_dir is None else Path(weights_dir).expanduser().resolve()
    key = (name, str(device), str(folder))
    if key in _CACHE:
        return _CACHE[key]
    wpath, jpath = folder / f"feature_{name}.safetensors", folder / f"feature_{name}.json"
    for p in (wpath, jpath):
        if not p.is_file():
            raise FileNotFoundError(
                f"feature net weights not found: {str(p)!r}; re-create them with "
                f"`python -m edifice.metrics.features train {name}`"
            )
    info = json.loads(jpath.read_text())
    data = wpath.read_bytes()
    if _sha256(data) != info.get("sha256"):
        raise RuntimeError(
            f"{str(wpath)!r} does not match the sha256 recorded in {str(jpath)!r} "
            f"(file {_sha256(data)}, recorded {info.get('sha256')}); re-create the weights with "
            f"`python -m edifice.metrics.features train {name}`"
        )
    if info.get("name") != name or list(info.get("layers", [])) != list(_RECIPES[name].layers):
        raise RuntimeError(
            f"{str(jpath)!r} describes the net {info.get('name')!r} with layers {info.get('layers')}, "
            f"expected {name!r} with layers {list(_RECIPES[name].layers)}"
        )
    from safetensors.torch import load

    net = _empty_net(name)
    net.load_state_dict(load(data))
    net.info = info
    net = net.to(device).eval().requires_grad_(False)
    _CACHE[key] = net
    return net


def for_data(data_name: str, *, device: str | torch.device | None = None) -> FeatureNet | None:
    """The feature net for a dataset: ``"digits"`` and ``"mnist"`` have one, anything else ``None``."""
    if not isinstance(data_name, str):
        raise TypeError(f"data_name must be a str, got {type(data_name).__name__}")
    return feature_net(data_name, device=device) if data_name in FEATURE_NETS else None


def class_accuracy(net: FeatureNet, x: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1024) -> dict:
    """How often the feature net classifies images as their requested labels.

    For a class-conditional model, ``x`` are samples generated for ``labels``.

    Args:
        net: a :class:`FeatureNet`.
        x: images ``(N, *net.input_shape)`` in data units ``[0, 1]``.
        labels: ``(N,)`` integer class labels in ``[0, net.num_classes)``.
        batch_size: images per forward pass.

    Returns:
        ``{"accuracy": float, "per_class": {class: float}}``; ``per_class`` holds only the classes
        that occur in ``labels`` (python int keys, ascending).

    Raises:
        ValueError: bad ``x`` (see :meth:`FeatureNet.features`), labels of the wrong shape or
            dtype, labels out of range, or a different number of labels and images.
    """
    if not isinstance(net, FeatureNet):
        raise TypeError(f"net must be a FeatureNet, got {type(net).__name__}")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] != labels.shape[0]:
        raise ValueError(
            f"x and labels must hold the same number of samples, got {x.shape[0]} images and {labels.shape[0]} labels"
        )
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= net.num_classes):
        raise ValueError(
            f"labels must lie in [0, {net.num_classes}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    pred = net.predict(x, batch_size=batch_size)  # validates x
    labels = labels.to(device=pred.device, dtype=torch.long)
    hit = (pred == labels).double()
    per_class = {int(c): float(hit[labels == c].mean()) for c in torch.unique(labels).tolist()}
    return {"accuracy": float(hit.mean()), "per_class": per_class}


# -- training -----------------------------------------------------------------------------------

def _init_(net: FeatureNet, generator: torch.Generator) -> None:
    """He-uniform weights (bound sqrt(6 / fan_in)) and zero biases, drawn from ``generator``."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = math.sqrt(6.0 / fan_in)
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.zero_()


def _random_affine(x: torch.Tensor, max_rotation: float, max_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Rotate each image about its centre by a random angle and zoom by a random factor (bilinear, zero fill)."""
    if max_rotation == 0 and max_scale == 0:
        return x
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_rotation)  # (B,)
    zoom = 1 + (torch.rand(b, generator=generator) * 2 - 1) * max_scale  # (B,)
    cos, sin, zero = torch.cos(angle) / zoom, torch.sin(angle) / zoom, torch.zeros(b)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2): output -> input coordinates
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, H, W)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own integer offset in ``[-max_shift, max_shift]`` per axis (zero fill)."""
    if max_shift == 0:
        return x
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s)
    dy = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(c)[None, :, None, None]
    return padded[bi, ci, rows, cols]  # (B, C, H, W)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _procedure_text(recipe: _Recipe) -> str:
    r, z = f"{recipe.max_rotation:g}", recipe.max_scale
    return (
        "1 CPU thread, torch.use_deterministic_algorithms(True), one torch.Generator seeded with `seed` draws "
        "everything (global RNG unused); He-uniform weights (bound sqrt(6/fan_in)), zero biases; batches from "
        f"consecutive random permutations of the train split; each image rotated by U[-{r}, {r}] degrees and zoomed by "
        f"U[{1 - z:g}, {1 + z:g}] (bilinear, zero fill), then shifted by a random integer offset in "
        f"[-{recipe.max_shift}, {recipe.max_shift}] px per axis (zero fill); Adam (0.9, 0.999) on cross-entropy with "
        f"label smoothing {recipe.label_smoothing:g}, "
        "cosine lr decay from `lr` to 0 over `steps`; accuracy on the official test split. Re-create with "
        "`python -m edifice.metrics.features train NAME`."
    )


def train_feature_net(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    steps: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> tuple[FeatureNet, dict]:
    """Train a feature net with the documented deterministic procedure (see the module docstring).

    Runs on the CPU with one thread and deterministic algorithms (both restored afterwards); the
    same seed gives bitwise the same weights on the same torch build.

    Args:
        name: one of :data:`FEATURE_NETS`; the dataset of the same name is loaded.
        data_dir: where to find MNIST (see :func:`edifice.data.find_data_file`).
        steps: optimiser steps (default: the shipped recipe's, 3000).
        seed: seed of the one generator behind initialisation, batches and augmentation.
        out: a folder to write ``feature_<name>.safetensors`` and ``feature_<name>.json`` into
            (atomically: temporary file then ``os.replace``; the JSON last). ``None`` writes nothing.

    Returns:
        ``(net, info)``: the trained net in eval mode (``requires_grad`` off) and its training
        record (also ``net.info``), which includes ``test_accuracy``, ``train_time_s`` and the
        ``sha256`` of the serialised weights.
    """
    from safetensors import __version__ as st_version
    from safetensors.torch import save

    from edifice import data as edata

    name = _check_name(name)
    recipe = _RECIPES[name]
    steps = recipe.steps if steps is None else check_int("steps", steps, min=1)
    seed = check_int("seed", seed, min=0)
    src = edata.load(name, data_dir=data_dir)
    xtr, ytr = src.train_x.float().contiguous(), src.train_y.long()
    xte, yte = src.test_x.float(), src.test_y.long()

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        g = torch.Generator().manual_seed(seed)
        net = _empty_net(name)
        _init_(net, g)
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, betas=(0.9, 0.999))
        perm = torch.empty(0, dtype=torch.long)
        losses = []
        t0 = time.perf_counter()
        for step in range(steps):
            while perm.numel() < recipe.batch_size:
                perm = torch.cat([perm, torch.randperm(xtr.shape[0], generator=g)])
            idx, perm = perm[: recipe.batch_size], perm[recipe.batch_size:]
            xb = _random_affine(xtr[idx], recipe.max_rotation, recipe.max_scale, g)
            xb = _random_shift(xb, recipe.max_shift, g)
            lr = 0.5 * recipe.lr * (1.0 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(net.head(net._features(xb)), ytr[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        train_time = time.perf_counter() - t0
        net.eval().requires_grad_(False)
        acc = class_accuracy(net, xte, yte)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)

    blob = save({k: v.contiguous() for k, v in net.state_dict().items()})
    info = {
        "format": _FORMAT,
        "name": name,
        "input_shape": list(recipe.input_shape),
        "num_classes": _NUM_CLASSES,
        "feature_dim": _FEATURE_DIM,
        "layers": list(recipe.layers),
        "input_units": "[0, 1] (mapped to [-1, 1] inside the net)",
        "features": "ELU activations of the 64-wide penultimate linear layer",
        "procedure": _procedure_text(recipe),
        "data": name,
        "train_n": int(xtr.shape[0]),
        "test_n": int(xte.shape[0]),
        "steps": steps,
        "batch_size": recipe.batch_size,
        "optimizer": "Adam",
        "betas": [0.9, 0.999],
        "lr": recipe.lr,
        "lr_schedule": "cosine from lr to 0",
        "max_shift": recipe.max_shift,
        "max_rotation_deg": recipe.max_rotation,
        "max_scale": recipe.max_scale,
        "label_smoothing": recipe.label_smoothing,
        "seed": seed,
        "threads": 1,
        "deterministic_algorithms": True,
        "final_train_loss": sum(losses[-100:]) / len(losses[-100:]),
        "test_accuracy": acc["accuracy"],
        "test_per_class": {str(k): v for k, v in acc["per_class"].items()},
        "train_time_s": round(train_time, 2),
        "torch_version": torch.__version__,
        "safetensors_version": st_version,
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "size_bytes": len(blob),
        "sha256": _sha256(blob),
    }
    net.info = info
    if out is not None:
        folder = Path(out).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / f"feature_{name}.safetensors", blob)
        _atomic_write(folder / f"feature_{name}.json", (json.dumps(info, indent=2) + "\n").encode())
        for key in [k for k in _CACHE if k[0] == name and k[2] == str(folder.resolve())]:
            del _CACHE[key]  # a later feature_net() reads the new files
    return net, info


def main(argv: list[str] | None = None) -> int:
    """``python -m edifice.metrics.features train digits|mnist [--out DIR] [--steps N] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m edifice.metrics.features",
                                     description="Re-create the shipped feature-net weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a feature net with the documented deterministic procedure")
    p.add_argument("name", choices=FEATURE_NETS)
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder (default: the package's weights/)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="where to find MNIST")
    args = parser.parse_args(argv)
    _, info = train_feature_net(args.name, data_dir=args.data_dir, steps=args.steps, seed=args.seed, out=args.out)
    print(json.dumps({k: info[k] for k in ("name", "steps", "test_accuracy", "train_time_s", "size_bytes", "sha256")},
                     indent=2))
    print(f"wrote {args.out}/feature_{args.name}.safetensors and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
