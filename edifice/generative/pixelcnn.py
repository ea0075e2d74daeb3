r"""PixelCNN: an exact-likelihood autoregressive model of quantised (or binarised) single-channel images.

An image with pixels ``x_1..x_N`` (``N = H W``, raster order: row by row, left to right) is modelled as a
product of categorical conditionals (van den Oord et al. 2016a, eq. 1)::

    p(x | y) = ∏_{i=1}^{N} p(x_i | x_1, ..., x_{i-1}, y),      p(x_i | x_{<i}, y) = softmax(f_θ(x_{<i}, y)_i),

where ``f_θ`` returns ``L`` logits per pixel (``L = levels``: 2 for binarised images, up to 256 for 8-bit
ones) and sees only the pixels before ``i``. One forward pass gives every conditional (training and
:func:`log_prob` are parallel); :func:`sample` draws the pixels one at a time (``H W`` network calls).

**Data.** Images live in model space ``[-1, 1]``. With ``levels = 2`` a pixel is binarised as ``x > 0`` (code
1) and a code ``c`` maps back to ``2c - 1 ∈ {-1, 1}``; with ``L > 2`` levels ``c = round((x + 1)/2 · (L - 1))``
and ``x = 2c / (L - 1) - 1`` (:func:`to_codes`, :func:`from_codes`).

**Architectures** (``arch``), all built from :mod:`edifice.blocks.masked`:

* ``"gated"`` — the gated PixelCNN (van den Oord et al. 2016b): vertical and horizontal stacks with
  ``tanh ⊙ σ`` gates and no blind spot; the label enters every layer as a bias (their eq. 4).
* ``"pixelcnn"`` — the original plain stack (2016a, Sec. 3.5): a mask-``"A"`` ``first_kernel`` convolution,
  then ``layers - 1`` residual blocks ``x + W_1x1 ReLU(MaskedConv_B ReLU(x))`` (mask ``"B"``), a ReLU-1x1-ReLU-1x1
  head. Causal, but with the blind spot above-right of each pixel.
* ``"transformer"`` — a decoder-only causal transformer over the raster-flattened image.

Example:
    >>> import torch
    >>> from edifice.generative import pixelcnn
    >>> net = pixelcnn.build(data_shape=(1, 4, 4), hidden=8, layers=2)
    >>> x = torch.rand(3, 1, 4, 4) * 2 - 1
    >>> pixelcnn.log_prob(net, x).shape
    torch.Size([3])
    >>> pixelcnn.sample(net, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0)).unique().tolist()
    [-1.0, 1.0]

References:
    Pixel Recurrent Neural Networks. van den Oord, Kalchbrenner, Kavukcuoglu, 2016. arXiv:1601.06759.
    Conditional Image Generation with PixelCNN Decoders. van den Oord, Kalchbrenner, Vinyals, Espeholt,
    Graves, Kavukcuoglu, 2016. arXiv:1606.05328.
    Attention Is All You Need. Vaswani et al., 2017. arXiv:1706.03762.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand,
)
from edifice.blocks.embedding import LabelEmbedding
from edifice.blocks.masked import CausalTransformerPrior, GatedPixelCNN, MaskedConv2d
from edifice.generative._common import resolve_device_dtype

__all__ = ["ARCHS", "PixelCNN", "PlainPixelCNN", "build", "to_codes", "from_codes", "log_prob", "loss", "sample"]

ARCHS = ("gated", "pixelcnn", "transformer")
"""Architectures accepted by :func:`build`."""


# ------------------------------------------------------------------------------------------------ quantisation


def to_codes(x: torch.Tensor, levels: int, *, quantize: bool = True, name: str = "x") -> torch.Tensor:
    """Model-space values in ``[-1, 1]`` -> integer codes in ``{0..L-1}`` (same shape, long).

    ``L = 2``: ``c = 1[x > 0]``. ``L > 2``: ``c = clamp(round((x + 1)/2 · (L - 1)), 0, L - 1)``. With
    ``quantize=False`` the input must already lie on the grid ``{2c/(L - 1) - 1}`` (``{-1, 1}`` when binary).

    Raises:
        TypeError: ``x`` not a floating tensor.
        ValueError: ``quantize=False`` and ``x`` off the grid (names ``name``).
    """
    check_tensor(name, x, floating=True)
    levels = check_int("levels", levels, min=2)
    if levels == 2:
        codes = (x > 0).long()
    else:
        codes = torch.round((x.double() + 1.0) / 2.0 * (levels - 1)).clamp_(0, levels - 1).long()
    if not quantize and x.numel() and not bool(torch.isclose(from_codes(codes, levels, dtype=x.dtype), x,
                                                                 rtol=0.0, atol=1e-5).all()):
        grid = "{-1, 1}" if levels == 2 else f"the grid 2c/{levels - 1} - 1, c in 0..{levels - 1}"
        raise ValueError(f"{name} must hold values on {grid} when quantize/binarize is False, got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}] off the grid")
    return codes


def from_codes(codes: torch.Tensor, levels: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes ``{0..L-1}`` -> model-space values ``2c/(L - 1) - 1`` (``2c - 1`` when binary)."""
    levels = check_int("levels", levels, min=2)
    return codes.to(dtype) * (2.0 / (levels - 1)) - 1.0


def check_labels(cond: Mapping[str, Any] | None, num_classes: int | None, batch: int) -> torch.Tensor | None:
    """``cond["y"]`` as a ``(batch,)`` long tensor, or None; ValueError for unknown keys / an unconditional net."""
    cond = check_cond(cond)
    unknown = set(cond) - {"y"}
    if unknown:
        raise ValueError(f"cond may only hold 'y' (class labels), got keys {sorted(unknown)}")
    y = cond.get("y")
    if y is None:
        return None
    if num_classes is None:
        raise ValueError("cond['y'] was given but the network was built without num_classes")
    check_tensor("cond['y']", y, shape=(batch,))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"cond['y'] must be an integer tensor of labels, got dtype {y.dtype}")
    return y.long()


# ------------------------------------------------------------------------------------------------ networks


class PlainPixelCNN(nn.Module):
    """The plain PixelCNN stack of masked convolutions (van den Oord et al. 2016a, Sec. 3.5 / Table 1).

    Codes ``(B, H, W)`` -> embedding -> mask-``"A"`` ``first_kernel`` conv -> ``layers - 1`` residual blocks
    ``h + W_1x1 ReLU(MaskedConv_B(ReLU h))`` -> ReLU, 1x1, ReLU, 1x1 -> logits ``(B, L, H, W)``. A label adds a
    learned bias after every layer. Mask ``"B"`` layers and 1x1 convs keep the causal structure set by the
    first mask-``"A"`` layer (the output at ``i`` sees only pixels before ``i``).

    Args:
        num_codes: ``L``.
        hidden: channels.
        layers: masked layers (>= 1).
        kernel_size: odd kernel of the mask-``"B"`` layers.
        first_kernel: odd kernel of the mask-``"A"`` layer (7 in the paper).
        num_classes: labels for a conditional model (``y = num_classes`` is the null label), or None.
    """

    def __init__(self, num_codes: int, *, hidden: int = 64, layers: int = 4, kernel_size: int = 3,
                 first_kernel: int = 7, num_classes: int | None = None) -> None:
        super().__init__()
        self.num_codes = check_int("num_codes", num_codes, min=2)
        hidden = check_int("hidden", hidden, min=1)
        layers = check_int("layers", layers, min=1)
        self.embed = nn.Embedding(num_codes, hidden)
        self.first = MaskedConv2d(hidden, hidden, first_kernel, mask_type="A")
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.ReLU(), MaskedConv2d(hidden, hidden, kernel_size, mask_type="B"), nn.ReLU(),
                          nn.Conv2d(hidden, hidden, 1)) for _ in range(layers - 1)])
        self.label = LabelEmbedding(num_classes, hidden * layers) if num_classes is not None else None
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_codes, 1))

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` long -> ``(B, H, W, C)`` input embeddings (what :meth:`forward_embedded` takes)."""
        return self.embed(codes)

    def forward_embedded(self, e: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, L, H, W)`` from embedded codes ``e: (B, H, W, C)``."""
        h = self.first(e.permute(0, 3, 1, 2))  # (B, C, H, W)
        biases: list[Any] = [0.0] * (len(self.blocks) + 1)
        if self.label is not None:
            y = torch.full((e.shape[0],), self.label.null_label, device=e.device) if y is None else y
            biases = list(self.label(y)[:, :, None, None].chunk(len(self.blocks) + 1, dim=1))  # each (B, C, 1, 1)
        h = h + biases[0]
        for block, bias in zip(self.blocks, biases[1:]):
            h = h + block(h) + bias  # (B, C, H, W)
        return self.head(h)  # (B, L, H, W)

    def forward(self, codes: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_embedded(self.embed_codes(codes), y)


class PixelCNN(nn.Module):
    """An autoregressive image model: codes ``(B, H, W)`` (and labels ``y``) -> logits ``(B, L, H, W)``.

    Wraps one of the raster-order networks of :mod:`edifice.blocks.masked` (or :class:`PlainPixelCNN`);
    ``config`` records the build options. ``forward_embedded`` exposes the network on continuous input
    embeddings so that causality can be checked by autograd.
    """

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.config = config

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` long -> ``(B, H, W, C)``."""
        return self.net.embed_codes(codes)

    def forward_embedded(self, e: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, W, C)`` embeddings -> logits ``(B, L, H, W)``."""
        return self.net.forward_embedded(e, y)

    def forward(self, codes: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``codes (B, H, W)`` long in ``{0..L-1}``, ``y (B,)`` or None -> logits ``(B, L, H, W)``."""
        return self.net(codes, y)


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    levels: int = 2,
    arch: str = "gated",
    hidden: int = 64,
    layers: int = 4,
    kernel_size: int = 3,
    first_kernel: int = 7,
    heads: int = 4,
) -> PixelCNN:
    """Build a PixelCNN over single-channel images ``(1, H, W)`` with ``levels`` values per pixel.

    Args:
        data_shape: ``(1, H, W)``.
        num_classes: labels for class conditioning (``cond={"y": labels}``), or None.
        levels: ``L``, values per pixel in ``[2, 256]`` (2: binarised images).
        arch: ``"gated"`` (default), ``"pixelcnn"`` (plain masked-conv stack) or ``"transformer"``.
        hidden: channels / model width.
        layers: masked layers, gated layers or transformer blocks (>= 1).
        kernel_size: odd kernel of the gated layers and of the plain stack's mask-``"B"`` layers.
        first_kernel: odd kernel of the plain stack's first (mask-``"A"``) layer.
        heads: attention heads (transformer; must divide ``hidden``).

    Returns:
        :class:`PixelCNN`; ``net.config`` records the options.

    Raises:
        ValueError / TypeError: naming the offending option (``data_shape`` unless it is ``(1, H, W)``).
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) != 3 or data_shape[0] != 1:
        raise ValueError(f"data_shape must be a single-channel image shape (1, H, W), got {data_shape}")
    if num_classes is not None:
        check_int("num_classes", num_classes, min=1)
    levels = check_int("levels", levels, min=2, max=256)
    check_choice("arch", arch, ARCHS)
    check_int("hidden", hidden, min=1)
    check_int("layers", layers, min=1)
    for name, k in (("kernel_size", kernel_size), ("first_kernel", first_kernel)):
        if check_int(name, k, min=1) % 2 == 0:
            raise ValueError(f"{name} must be an odd int, got {k}")
    check_int("heads", heads, min=1)
    map_shape = data_shape[1:]
    if arch == "gated":
        net: nn.Module = GatedPixelCNN(levels, map_shape, hidden=hidden, layers=layers, kernel_size=kernel_size,
                                       num_classes=num_classes)
    elif arch == "pixelcnn":
        net = PlainPixelCNN(levels, hidden=hidden, layers=layers, kernel_size=kernel_size, first_kernel=first_kernel,
                            num_classes=num_classes)
    else:
        if hidden % heads:
            raise ValueError(f"hidden must be divisible by heads={heads}, got hidden={hidden}")
        net = CausalTransformerPrior(levels, map_shape, hidden=hidden, layers=layers, heads=heads,
                                     num_classes=num_classes)
    config = dict(data_shape=data_shape, num_classes=num_classes, levels=levels, arch=arch, hidden=hidden,
                  layers=layers, kernel_size=kernel_size, first_kernel=first_kernel, heads=heads)
    return PixelCNN(net, config)


# ------------------------------------------------------------------------------------------------ functions


def _config(net: Any) -> dict[str, Any]:
    cfg = getattr(net, "config", None)
    if not callable(net) or not isinstance(cfg, dict) or "levels" not in cfg or "data_shape" not in cfg:
        raise TypeError(f"net must be the PixelCNN returned by pixelcnn.build (callable with a config), "
                        f"got {type(net).__name__}")
    return cfg


def _codes(net: Any, x: Any, quantize: bool) -> torch.Tensor:
    cfg = _config(net)
    shape = tuple(cfg["data_shape"])
    check_tensor("x", x, floating=True)
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, shape))}) for this network, "
                         f"got {tuple(x.shape)}")
    if not isinstance(quantize, bool):
        raise TypeError(f"quantize must be a bool, got {type(quantize).__name__}")
    return to_codes(x, cfg["levels"], quantize=quantize)[:, 0]  # (B, H, W)


def log_prob(net: Any, x: torch.Tensor, *, cond: Mapping[str, Any] | None = None,
             quantize: bool = True) -> torch.Tensor:
    r"""Exact ``log p(x | y) = Σ_i log softmax(f(x_{<i}, y)_i)[x_i]`` in nats (one network call).

    Args:
        net: from :func:`build`.
        x: ``(B, 1, H, W)`` model-space images; quantised by :func:`to_codes` (binarised as ``x > 0`` when
            ``levels = 2``).
        cond: ``{"y": (B,) labels}`` for a conditional model, or None (the null label).
        quantize: quantise ``x``; False requires ``x`` on the model's grid (``{-1, 1}`` when binary).

    Returns:
        ``(B,)`` log-probabilities of the quantised images (a log pmf: ``<= 0``).

    Raises:
        ValueError / TypeError: naming ``x``, ``net``, ``quantize`` or ``cond``.
    """
    codes = _codes(net, x, quantize)
    y = check_labels(cond, _config(net)["num_classes"], x.shape[0])
    logits = net(codes, y)  # (B, L, H, W)
    logp = F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=1)
    return logp.gather(1, codes[:, None]).flatten(1).sum(1)  # (B,)


def loss(
    net: Any,
    x: torch.Tensor,
    *,
    quantize: bool = True,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood per image, ``-mean_b log p(x_b | y_b)`` in nats (maximum likelihood).

    Args:
        net: from :func:`build`.
        x: ``(B, 1, H, W)`` model-space images (quantised as in :func:`log_prob`).
        quantize: see :func:`log_prob`.
        generator: unused (the loss is deterministic); accepted for the common signature.
        cond: ``{"y": (B,) labels}`` or None.

    Returns:
        ``(loss, logs)`` with logs ``loss``, ``nll`` (nats per image) and ``bpd`` (bits per pixel,
        ``nll / (H W ln 2)``).
    """
    check_generator(generator)
    lp = log_prob(net, x, cond=cond, quantize=quantize)
    nll = -lp.mean()
    d = math.prod(x.shape[1:])
    return nll, {"loss": nll.detach(), "nll": nll.detach(), "bpd": nll.detach() / (d * math.log(2.0))}


def sample(
    net: Any,
    shape: tuple[int, ...],
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Ancestral sampling in raster order, one pixel per network call (``H W`` calls), under no_grad.

    Pixel ``i`` is drawn from ``softmax(f(x_{<i}, y)_i / T)`` by the Gumbel-max trick
    ``argmax(l - log(-log u))`` with uniforms ``u`` from ``generator``. Uses the net in whatever mode it is in.

    Args:
        net: from :func:`build`.
        shape: ``(B, 1, H, W)`` matching the data shape.
        temperature: ``T > 0`` (1: the model; below 1 sharpens each conditional).
        generator: the source of randomness.
        cond: ``{"y": (B,) labels}`` or None (the null label).
        callback: called after every pixel with ``{"step", "row", "col", "codes"}`` (codes ``(B, H, W)``, a copy).
        device, dtype: where / in what dtype to return (default: the network's).

    Returns:
        ``(B, 1, H, W)`` images in model space (``{-1, 1}`` when binary, the grid ``2c/(L-1) - 1`` otherwise).

    Raises:
        ValueError / TypeError: naming ``shape``, ``temperature``, ``cond``, ``net`` or ``callback``.
    """
    cfg = _config(net)
    shape = check_shape_tuple("shape", shape)
    want = tuple(cfg["data_shape"])
    if shape[1:] != want:
        raise ValueError(f"shape must be (B, {', '.join(map(str, want))}) for this network, got {shape}")
    temperature = check_float("temperature", temperature, min=0.0, min_open=True)
    check_generator(generator)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    device, dtype = resolve_device_dtype(net, None, device, dtype)
    b, (_, h, w) = shape[0], want
    y = check_labels(cond, cfg["num_classes"], b)
    y = None if y is None else y.to(device)
    codes = torch.zeros(b, h, w, dtype=torch.long, device=device)
    with torch.no_grad():
        for i in range(h):
            for j in range(w):
                logits = net(codes, y)[:, :, i, j].float() / temperature  # (B, L)
                u = rand(logits.shape, generator=generator, device=device).clamp_(1e-20, 1.0 - 1e-7)
                codes[:, i, j] = (logits - torch.log(-torch.log(u))).argmax(dim=1)
                if callback is not None:
                    callback({"step": i * w + j, "row": i, "col": j, "codes": codes.clone()})
    return from_codes(codes, cfg["levels"], dtype=dtype)[:, None]  # (B, 1, H, W)
