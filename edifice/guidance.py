r"""Guidance for conditional sampling: classifier-free guidance and classifier guidance.

Both turn a network into another callable with the network signature ``guided(x, t, y=None, **cond)``, so
EVERY sampler of the library (DDPM, DDIM, flow matching, score SDE, EDM, ...) samples the guided model
unchanged: pass the labels through the sampler's ``cond={"y": labels}``.

**Classifier-free guidance** (Ho & Salimans 2022). A network trained with label dropout (the null label
``num_classes`` replaces the label with probability ``p_uncond``) is both a conditional model ``f(x, t, y)``
and an unconditional one ``f(x, t, ∅)``. Guidance with scale ``w`` extrapolates from the second to the first::

    f_w(x, t, y) = f(x, t, ∅) + w (f(x, t, y) - f(x, t, ∅))

``w = 0`` is the unconditional model, ``w = 1`` the conditional one, ``w > 1`` sharpens ``p(y | x)``: for an
ε- or score-network, ``f_w`` is the score of ``p(x) p(y | x)^w`` (the implicit classifier
``p(y | x) ∝ p(x | y) / p(x)``). The output is linear in the network output, so the same formula guides an
ε, x₀, v, velocity, score or EDM-denoiser network alike. The two evaluations run as ONE batched call on
``[x; x]`` with labels ``[y; ∅]``: one kernel launch per layer instead of two, which is what makes guided
sampling cost ~1x (not 2x) wall time on an accelerator with headroom.

With ``interval=(t_lo, t_hi)`` guidance applies only where ``t_lo <= t <= t_hi``, **in the network's own time
units** (DDPM / DDIM integer steps, flow-matching ``t ∈ [0, 1]`` with noise at 0, score-SDE ``t ∈ [ε, 1]``,
EDM ``σ``), and the conditional output is returned elsewhere (Kynkäänniemi et al. 2024: guidance at high
noise collapses diversity, at low noise it does little; EDM2 used ``σ ∈ (0.28, 5.42]``).

**Classifier guidance** (Dhariwal & Nichol 2021). A classifier ``p_φ(y | x_t, t)`` trained on noisy data
(:func:`build_classifier`, :func:`classifier_loss`) steers any diffusion network, conditional or not, by the
gradient of its log-probability. In ε form (their Algorithm 2, used here for DDPM ancestral and DDIM steps)::

    ε' = ε - √(1 - ᾱ_t) · s · ∇_x log p_φ(y | x_t, t)

and for a score network ``score' = score + s ∇_x log p_φ(y | x_t, t)`` (Song et al. 2021, eq. 14). Since
``ε = -√(1-ᾱ) ∇ log p_t``, both say "add ``s ∇ log p(y | x)`` to the score": at ``s = 1`` an exact classifier
turns the unconditional score into the class-conditional one. The gradient is taken under
``torch.enable_grad()`` inside the wrapper, so it works in samplers that run under ``no_grad``.

Conventions: the null label is ``num_classes``; ``y=None`` means "no label" and ALWAYS returns the plain
unconditional (CFG) or unguided (classifier guidance) output — guidance never changes the unconditional path.
The wrappers are ``nn.Module`` s that hold the network (so ``.to()``, ``parameters()`` and the samplers'
device inference work) and forward unknown attributes to it (``net.sde``, ``net.sigma_data``, ...).

Example (a closed-form "network" whose conditional output is ``y`` and unconditional output is 0):
    >>> import torch
    >>> from edifice import guidance
    >>> def net(x, t, y=None):
    ...     return torch.where(y == 2, 0.0, y.double())[:, None].expand_as(x)
    >>> guided = guidance.cfg(net, 3.0, num_classes=2)
    >>> guided(torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2), y=torch.tensor([0, 1])).flatten().tolist()
    [0.0, 3.0]

References:
    Classifier-Free Diffusion Guidance. Ho, Salimans, 2022. arXiv:2207.12598.
    Diffusion Models Beat GANs on Image Synthesis (classifier guidance). Dhariwal, Nichol, 2021.
    arXiv:2105.05233.
    Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models.
    Kynkäänniemi, Aittala, Karras, Laine, Aila, Lehtinen, 2024. arXiv:2404.07724.
    Score-Based Generative Modeling through Stochastic Differential Equations (conditional score, eq. 14).
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, 2021. arXiv:2011.13456.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    append_dims, batch_steps, batch_time, check_float, check_generator, check_int, check_shape_tuple,
    check_tensor, rand, randint, randn,
)
from edifice.blocks.embedding import TIME_FEATURES, LabelEmbedding, TimestepEmbedding
from edifice.blocks.mlp import ResMLPBlock
from edifice.blocks.unet import ResBlock
from edifice.generative import ddpm
from edifice.generative._common import hi_dtype
from edifice.schedules import SDE, NoiseSchedule

__all__ = [
    "ClassifierFreeGuidance", "cfg", "label_dropout", "NoisyClassifier", "build_classifier", "classifier_loss",
    "ClassifierGuidance", "classifier_guided", "classifier_guided_score",
]


# ----------------------------------------------------------------------------- shared helpers


def _declared_num_classes(net: Any) -> tuple[bool, int | None]:
    """What ``net`` says about its labels: ``(found, num_classes)``.

    Looks at a ``num_classes`` attribute (ResMLP, UNet, DiT), then any :class:`LabelEmbedding` inside a module,
    then ``net.config["num_classes"]``. ``(False, None)`` for a plain callable that says nothing.
    """
    n = getattr(net, "num_classes", "missing")
    if n is None or (isinstance(n, int) and not isinstance(n, bool)):
        return True, n
    if isinstance(net, nn.Module):
        for m in net.modules():
            if isinstance(m, LabelEmbedding):
                return True, m.num_classes
    config = getattr(net, "config", None)
    if isinstance(config, dict) and "num_classes" in config:
        return True, config["num_classes"]
    if isinstance(net, nn.Module):
        return True, None  # a module with no label table, no num_classes: unconditional
    return False, None


def _check_labels(y: Any, x: torch.Tensor, num_classes: int, *, allow_null: bool) -> torch.Tensor:
    """``y`` as a ``(B,)`` integer tensor on ``x``'s device; range-checked on the CPU only (no host sync)."""
    check_tensor("y", y, ndim=1)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer (long) tensor of class labels, got dtype {y.dtype}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},) to match the batch of x, got {tuple(y.shape)}")
    hi = num_classes if allow_null else num_classes - 1
    if y.device.type == "cpu" and not torch.compiler.is_compiling() and y.numel():
        bad = (y < 0) | (y > hi)
        if bool(bad.any()):
            null = f" or the null label {num_classes}" if allow_null else ""
            raise ValueError(f"y must hold labels in [0, {num_classes - 1}]{null} (num_classes={num_classes}), "
                             f"got {int(y[bad][0])}")
    return y.to(device=x.device, dtype=torch.long)


def _double(v: Any, b: int) -> Any:
    """Repeat a per-sample conditioning tensor ``(B, ...)`` to ``(2B, ...)``; anything else passes unchanged."""
    if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == b:
        return torch.cat([v, v])
    return v


class _Wrapper(nn.Module):
    """An ``nn.Module`` around a network that forwards unknown attributes (``sde``, ``sigma_data``, ...) to it."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("net", "_net_fn"):
                raise
            return getattr(self._inner(), name)

    def _inner(self) -> Any:
        modules = self.__dict__.get("_modules", {})
        if "net" in modules:
            return modules["net"]
        fn = self.__dict__.get("_net_fn")
        if fn is None:
            raise AttributeError("net")
        return fn

    def _set_net(self, net: Any) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
        if isinstance(net, nn.Module):
            self.net = net
        else:  # a plain callable (closed-form oracle): not a submodule
            self.__dict__["_net_fn"] = net

    def _call_net(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._inner()(*args, **kwargs)


# ----------------------------------------------------------------------------- classifier-free guidance


class ClassifierFreeGuidance(_Wrapper):
    r"""A network guided by classifier-free guidance (see :func:`cfg`): ``guided(x, t, y=None, **cond)``.

    .. math::
        f_w(x, t, y) = f(x, t, \varnothing) + w\,(f(x, t, y) - f(x, t, \varnothing))

    Attributes: ``net`` (the wrapped network; plain callables are held but not registered), ``scale`` (``w``),
    ``num_classes`` (``∅ = num_classes``), ``interval`` (``(t_lo, t_hi)`` or None).
    """

    def __init__(self, net: Callable[..., torch.Tensor], scale: float, *, num_classes: int,
                 interval: tuple[float, float] | None = None) -> None:
        super().__init__()
        self._set_net(net)
        self.scale = scale
        self.num_classes = num_classes
        self.interval = interval

    def extra_repr(self) -> str:
        return f"scale={self.scale}, num_classes={self.num_classes}, interval={self.interval}"

    def _null(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)

    def forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None = None, **cond: Any) -> torch.Tensor:
        """Guided output at ``x (B, ...)``, ``t`` (``(B,)`` or a number, the network's units), ``y (B,)`` or None.

        ``y=None`` (or ``scale = 0`` without an interval) calls ``net(x, t, y=∅, **cond)`` once;
        ``scale = 1`` calls ``net(x, t, y=y, **cond)`` once; otherwise one batched call on ``[x; x]`` with
        ``[y; ∅]`` (per-sample tensors in ``cond`` are repeated along the batch too). Rows whose label is the
        null label get the unconditional output, rows outside the interval the conditional one. For a network
        with ``learn_sigma=True`` (a DiT whose output is ``[ε | v]``, ``2C`` channels) only the ``ε`` channels are
        guided and the variance channels come from the conditional branch (DiT's ``forward_with_cfg``).

        Returns:
            ``(B, ...)`` shaped like the network's output.

        Raises:
            ValueError / TypeError: ``y`` not a ``(B,)`` integer tensor, or (CPU tensors) a label outside
            ``[0, num_classes]``.
        """
        check_tensor("x", x, floating=True)
        if y is None:
            return self._call_net(x, t, y=self._null(x), **cond)
        y = _check_labels(y, x, self.num_classes, allow_null=True)
        if self.scale == 1.0:
            return self._call_net(x, t, y=y, **cond)
        if self.scale == 0.0 and self.interval is None:
            return self._call_net(x, t, y=self._null(x), **cond)
        b = x.shape[0]
        tb = batch_time(t, x)  # (B,)
        both = self._call_net(torch.cat([x, x]), torch.cat([tb, tb]), y=torch.cat([y, self._null(x)]),
                              **{k: _double(v, b) for k, v in cond.items()})  # (2B, ...)
        out_c, out_u = both[:b], both[b:]  # 2 x (B, ...)
        out = out_u + self.scale * (out_c - out_u)
        if getattr(self._inner(), "learn_sigma", False) is True:  # [ε | v] output: guide ε, keep v conditional
            c = x.shape[1]
            out = torch.cat([out[:, :c], out_c[:, c:]], dim=1)  # (B, 2C, ...)
        if self.interval is not None:
            lo, hi = self.interval
            inside = (tb >= lo) & (tb <= hi)  # (B,)
            out = torch.where(append_dims(inside, out.ndim), out, out_c)
        return torch.where(append_dims(y == self.num_classes, out.ndim), out_u, out)


def cfg(net: Callable[..., torch.Tensor], scale: float, *, num_classes: int | None = None,
        interval: tuple[float, float] | Sequence[float] | None = None) -> ClassifierFreeGuidance:
    r"""Wrap a class-conditional network for classifier-free guidance with scale ``w`` (Ho & Salimans 2022).

    ``guided(x, t, y=None, **cond) = f(x, t, ∅) + w (f(x, t, y) - f(x, t, ∅))`` with both terms from one
    batched call. Exact special cases: ``w = 1`` returns ``net(x, t, y=y)`` and ``w = 0`` (no interval) returns
    ``net(x, t, y=∅)`` bit for bit; ``y=None`` or rows labelled ``∅`` always get the unconditional output.
    Use it as the ``net`` of any sampler with ``cond={"y": labels}``.

    Args:
        net: a conditional network ``net(x, t, y=labels, **cond)`` whose label ``num_classes`` is the null label
            (any edifice family network built with ``num_classes``, a DiT, an ``EDMDenoiser``, a ``ScoreNet``,
            or a plain callable).
        scale: guidance scale ``w >= 0`` (Ho & Salimans' ``1 + w``; 1 = no guidance).
        num_classes: number of real classes; default: read from the network (its ``num_classes`` attribute or
            label table). Required for a plain callable.
        interval: ``(t_lo, t_hi)`` with ``t_lo <= t_hi``: guide only where ``t_lo <= t <= t_hi`` in the
            network's own time units (DDPM steps, flow-matching t, score-SDE t, EDM σ); conditional elsewhere.

    Returns:
        A :class:`ClassifierFreeGuidance` module (holding ``net``; forwards ``net``'s attributes).

    Raises:
        ValueError: a scale on an unconditional network (``num_classes=None``), a ``num_classes`` that
            contradicts the network's, a negative ``scale``, a bad ``interval``.
        TypeError: a non-callable ``net`` or wrongly typed options.

    Example:
        >>> import torch
        >>> from edifice.generative import ddpm
        >>> net = ddpm.build(data_shape=(2,), hidden=16, depth=1, num_classes=3)
        >>> guided = cfg(net, 2.0)
        >>> x = ddpm.sample(guided, (4, 2), steps=5, cond={"y": torch.tensor([0, 1, 2, 3])},
        ...                 generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([4, 2])
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, t, y=..., **cond), got {type(net).__name__}")
    scale = check_float("scale", scale, min=0.0)
    found, declared = _declared_num_classes(net)
    if found and declared is None:
        raise ValueError(f"scale (guidance scale {scale}) needs a class-conditional network, but net is "
                         "unconditional (built with num_classes=None); build it with num_classes=K and train it "
                         "with label dropout")
    if num_classes is None:
        if not found:
            raise ValueError("num_classes must be given for a network that does not declare it (a plain callable), "
                             "got None")
        num_classes = declared
    check_int("num_classes", num_classes, min=1)
    if found and declared != num_classes:
        raise ValueError(f"num_classes must match the network's num_classes={declared}, got {num_classes}")
    return ClassifierFreeGuidance(net, scale, num_classes=num_classes, interval=_check_interval(interval))


def _check_interval(interval: Any) -> tuple[float, float] | None:
    if interval is None:
        return None
    if isinstance(interval, (str, bytes)) or not isinstance(interval, Sequence) or len(interval) != 2:
        raise TypeError(f"interval must be a pair (t_lo, t_hi) or None, got {interval!r}")
    lo = check_float("interval[0]", interval[0])
    hi = check_float("interval[1]", interval[1])
    if lo > hi:
        raise ValueError(f"interval must have t_lo <= t_hi, got {tuple(interval)!r}")
    return lo, hi


def label_dropout(y: torch.Tensor, p: float, *, num_classes: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by the null label ``num_classes`` with probability ``p`` (CFG training).

    The training recipes do this before the family loss (their ``label_dropout`` setting); it is here for hand
    written loops. ``p = 0`` returns ``y`` unchanged and draws nothing.

    Args:
        y: ``(B,)`` integer labels. p: dropout probability in ``[0, 1]``. num_classes: the null label.
        generator: draws the ``(B,)`` uniforms.

    Returns:
        ``(B,)`` long labels.

    Example:
        >>> label_dropout(torch.tensor([0, 1, 2]), 1.0, num_classes=10).tolist()
        [10, 10, 10]
    """
    check_tensor("y", y, ndim=1)
    p = check_float("p", p, min=0.0, max=1.0)
    check_int("num_classes", num_classes, min=1)
    if p == 0.0:
        return y
    drop = rand(y.shape, generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


# ----------------------------------------------------------------------------- noise-conditional classifier


class NoisyClassifier(nn.Module):
    r"""A time-conditioned classifier ``classifier(x_t, t) -> logits (B, num_classes)`` for classifier guidance.

    Vector data ``(D,)``: ``Linear -> depth x`` FiLM-modulated residual blocks (the ResMLP block) ``-> LN -> SiLU
    -> Linear``. Images ``(C, H, H)``: the encoder half of the library's U-Net (time-modulated ``ResBlock`` s,
    strided-conv downsampling), then ``GroupNorm -> SiLU ->`` global average pool ``-> Linear`` (Dhariwal &
    Nichol's classifier uses attention pooling instead). ``t`` is in the units of the network it will guide
    (DDPM steps with ``t_scale=1``, score-SDE ``t ∈ [ε, 1]`` with ``t_scale=1000``).

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``. num_classes: number of classes (>= 2).
        hidden, depth: width and number of blocks (vectors). base_channels, channel_mults, num_res_blocks:
            widths per level and blocks per level (images). t_scale, time_features: of the time embedding.
        dropout: dropout probability in ``[0, 1)``.

    Attributes: ``config`` (the constructor options), ``num_classes``, ``data_shape``.

    References:
        Diffusion Models Beat GANs on Image Synthesis. Dhariwal, Nichol, 2021. arXiv:2105.05233.
    """

    def __init__(self, *, data_shape: Sequence[int], num_classes: int, hidden: int = 128, depth: int = 2,
                 base_channels: int = 32, channel_mults: Sequence[int] = (1, 2), num_res_blocks: int = 1,
                 t_scale: float = 1.0, time_features: str = "sinusoidal", dropout: float = 0.0) -> None:
        super().__init__()
        data_shape = check_shape_tuple("data_shape", data_shape)
        num_classes = check_int("num_classes", num_classes, min=2)
        check_int("hidden", hidden, min=1)
        check_int("depth", depth, min=1)
        check_int("base_channels", base_channels, min=1)
        mults = check_shape_tuple("channel_mults", channel_mults)
        check_int("num_res_blocks", num_res_blocks, min=1)
        t_scale = check_float("t_scale", t_scale, min=0.0, min_open=True)
        if time_features not in TIME_FEATURES:
            raise ValueError(f"time_features must be one of {TIME_FEATURES}; got {time_features!r}")
        dropout = check_float("dropout", dropout, min=0.0, max=1.0, max_open=True)
        self.config: dict[str, Any] = dict(
            data_shape=list(data_shape), num_classes=num_classes, hidden=hidden, depth=depth,
            base_channels=base_channels, channel_mults=list(mults), num_res_blocks=num_res_blocks, t_scale=t_scale,
            time_features=time_features, dropout=dropout)
        self.data_shape, self.num_classes = data_shape, num_classes
        if len(data_shape) == 1:
            self.time_embed = TimestepEmbedding(hidden, t_scale=t_scale, features=time_features)
            self.inp = nn.Linear(data_shape[0], hidden)
            self.blocks = nn.ModuleList(ResMLPBlock(hidden, hidden, dropout) for _ in range(depth))
            self.head = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, num_classes))
            return
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise ValueError(f"data_shape must be (D,) or a square image (C, H, H), got {data_shape}")
        widths = [base_channels * m for m in mults]
        groups = math.gcd(8, base_channels, *widths)
        emb = 4 * base_channels
        self.time_embed = TimestepEmbedding(emb, t_scale=t_scale, features=time_features)
        self.inp = nn.Conv2d(data_shape[0], base_channels, 3, padding=1)
        layers: list[nn.Module] = []
        ch = base_channels
        for level, w in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(ch, w, emb, dropout=dropout, groups=groups))
                ch = w
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks = nn.ModuleList(layers)
        self.head = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(ch, num_classes))

    def forward(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of ``p(y | x_t, t)`` at ``x (B, *data_shape)``, ``t`` ``(B,)`` or a number."""
        check_tensor("x", x, shape=(None, *self.data_shape), floating=True)
        c = self.time_embed(batch_time(t, x))  # (B, emb)
        h = self.inp(x)  # (B, hidden) or (B, base, H, W)
        for block in self.blocks:
            h = block(h, c) if isinstance(block, (ResMLPBlock, ResBlock)) else block(h)
        return self.head(h)  # (B, num_classes)


def build_classifier(*, data_shape: tuple[int, ...], num_classes: int, hidden: int = 128, depth: int = 2,
                     base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2), num_res_blocks: int = 1,
                     t_scale: float = 1.0, time_features: str = "sinusoidal", dropout: float = 0.0
                     ) -> NoisyClassifier:
    """Build a noise-conditional classifier ``classifier(x_t, t) -> logits`` (see :class:`NoisyClassifier`).

    ``t_scale``: 1 for DDPM / DDIM steps ``0..T-1``; 1000 for score-SDE or flow-matching times in ``[0, 1]``.

    Raises:
        ValueError / TypeError: naming the offending option.

    Example:
        >>> c = build_classifier(data_shape=(1, 8, 8), num_classes=10, base_channels=8)
        >>> c(torch.zeros(2, 1, 8, 8), torch.tensor([0.0, 999.0])).shape
        torch.Size([2, 10])
    """
    return NoisyClassifier(data_shape=data_shape, num_classes=num_classes, hidden=hidden, depth=depth,
                           base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                           t_scale=t_scale, time_features=time_features, dropout=dropout)


def classifier_loss(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    y: torch.Tensor,
    *,
    schedule: NoiseSchedule | None = None,
    sde: SDE | str | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of a noise-conditional classifier on noisy data ``x_t`` (Dhariwal & Nichol, Sec. 4).

    DDPM time (default): ``t ~ U{0..T-1}``, ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε``, the classifier sees ``t`` as float
    steps. With ``sde`` (score-SDE time): ``t ~ U(eps, 1)``, ``x_t = scale(t) x_0 + std(t) ε``.

    Args:
        classifier: ``classifier(x_t, t (B,)) -> (B, K)`` logits. x0: ``(B, *data_shape)`` clean data.
        y: ``(B,)`` labels in ``[0, K)``. schedule: DDPM schedule (default linear, T = 1000).
        sde: an SDE or its name (``"vp"``, ``"ve"``, ``"subvp"``) for score-SDE time; excludes ``schedule``.
        eps: smallest SDE time. generator: draws ``t`` and ``ε`` unless given as ``t`` / ``noise``.

    Returns:
        ``(loss, {"loss", "accuracy"})``, the accuracy of the argmax on the noisy batch.

    Raises:
        ValueError / TypeError: bad ``x0``, ``y`` (shape, dtype, range), ``noise`` shape, ``t``, both
        ``schedule`` and ``sde``, or logits that are not ``(B, K)``.
    """
    check_tensor("x0", x0, floating=True)
    if x0.ndim < 2:
        raise ValueError(f"x0 must have shape (B, *data_shape), got {tuple(x0.shape)}")
    check_tensor("y", y, ndim=1)
    if y.is_floating_point() or y.dtype == torch.bool or y.shape[0] != x0.shape[0]:
        raise ValueError(f"y must be a ({x0.shape[0]},) integer tensor of labels, got {y.dtype} {tuple(y.shape)}")
    check_generator(generator)
    if noise is None:
        noise = randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    check_tensor("noise", noise, shape=tuple(x0.shape), floating=True)
    if sde is not None:
        if schedule is not None:
            raise ValueError("schedule and sde are exclusive: pass one time convention, got both")
        from edifice.generative.score_sde import get_sde  # local: guidance needs score_sde only here
        sde = get_sde(None, sde)
        lo = check_float("eps", eps, min=0.0, max=1.0, min_open=True, max_open=True)
        if t is None:
            t = lo + (sde.T - lo) * rand((x0.shape[0],), generator=generator, device=x0.device, dtype=x0.dtype)
        t = sde.check_time(t, x0, eps=lo)
        x_t, t_in = sde.perturb(x0, t, noise), t
    else:
        schedule = ddpm._schedule(schedule)
        if t is None:
            t = randint(0, schedule.T, (x0.shape[0],), generator=generator, device=x0.device)
        x_t = ddpm.q_sample(x0, t, noise, schedule)
        t_in = batch_steps(t, x0).to(x0.dtype)
    logits = classifier(x_t, t_in)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x0.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"classifier must return logits of shape ({x0.shape[0]}, num_classes), got {got}")
    y = _check_labels(y, x0, logits.shape[1], allow_null=False)
    value = F.cross_entropy(logits, y)
    acc = (logits.argmax(dim=1) == y).to(x0.dtype).mean()
    return value, {"loss": value.detach(), "accuracy": acc.detach()}


# ----------------------------------------------------------------------------- classifier guidance


def _log_prob_grad(classifier: Callable, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇_x log p(y | x, t)`` ``(B, ...)`` (each sample's own gradient: the batch's log-probs are summed)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, t)  # (B, K)
        logp = F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
        picked = logp.gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, x_in)
    return grad.to(x.dtype)


class ClassifierGuidance(_Wrapper):
    r"""A network guided by a noise-conditional classifier (see :func:`classifier_guided` and
    :func:`classifier_guided_score`): ``guided(x, t, y=None, **cond)``.

    ``mode="eps"``: ``ε' = ε - √(1-ᾱ_t) s ∇ log p(y | x_t, t)`` (the output converted to ε from ``target`` and
    back); ``mode="score"``: ``score' = score + s ∇ log p(y | x_t, t)``.

    Attributes: ``net``, ``classifier``, ``scale``, ``mode``, ``target``, ``schedule``, ``pass_labels`` (whether
    ``y`` also reaches the network: True when the network is class-conditional).
    """

    def __init__(self, net: Callable[..., torch.Tensor], classifier: Callable[..., torch.Tensor], scale: float, *,
                 mode: str, schedule: NoiseSchedule | None, target: str, pass_labels: bool) -> None:
        super().__init__()
        self._set_net(net)
        if isinstance(classifier, nn.Module):
            self.classifier = classifier
        else:
            self.__dict__["classifier"] = classifier
        self.scale, self.mode, self.schedule, self.target = scale, mode, schedule, target
        self.pass_labels = pass_labels

    def extra_repr(self) -> str:
        return f"scale={self.scale}, mode={self.mode!r}, target={self.target!r}, pass_labels={self.pass_labels}"

    def forward(self, x: torch.Tensor, t: Any, y: torch.Tensor | None = None, **cond: Any) -> torch.Tensor:
        """Guided output at ``x (B, ...)``, ``t`` (``(B,)`` or a number), labels ``y (B,)``; ``y=None`` -> unguided.

        Raises:
            ValueError / TypeError: ``y`` not a ``(B,)`` integer tensor of labels in ``[0, K)`` (checked on CPU).
        """
        check_tensor("x", x, floating=True)
        if y is None:
            return self._call_net(x, t, **cond)
        k = getattr(self.classifier, "num_classes", None)
        y = _check_labels(y, x, k if isinstance(k, int) else 2**62, allow_null=False)
        out = self._call_net(x, t, y=y, **cond) if self.pass_labels else self._call_net(x, t, **cond)
        if self.scale == 0.0:
            return out
        tb = batch_time(t, x)  # (B,)
        grad = _log_prob_grad(self.classifier, x, tb, y)  # (B, ...)
        if self.mode == "score":
            return out + self.scale * grad
        table = self.schedule.alpha_bar.to(device=x.device, dtype=hi_dtype(x.device))
        ab = table[tb.round().long().clamp(0, self.schedule.T - 1)]  # (B,)
        x0, eps = ddpm._x0_eps(out, x, ab, self.target)
        eps = eps - append_dims(((1.0 - ab).sqrt() * self.scale).to(x.dtype), x.ndim) * grad
        if self.target == "eps":
            return eps
        x0 = (x - append_dims((1.0 - ab).sqrt().to(x.dtype), x.ndim) * eps) / append_dims(ab.sqrt().to(x.dtype),
                                                                                         x.ndim)
        return ddpm.prediction_target(x0, eps, ab, target=self.target)


def _guidance_args(net: Any, classifier: Any, scale: Any) -> tuple[float, bool]:
    if not callable(net):
        raise TypeError(f"net must be callable as net(x, t, **cond), got {type(net).__name__}")
    if not callable(classifier):
        raise TypeError(f"classifier must be callable as classifier(x, t) -> logits, got {type(classifier).__name__}")
    scale = check_float("scale", scale, min=0.0)
    found, declared = _declared_num_classes(net)
    return scale, found and declared is not None


def classifier_guided(net: Callable[..., torch.Tensor], classifier: Callable[..., torch.Tensor], scale: float, *,
                      schedule: NoiseSchedule | None = None, target: str = "eps") -> ClassifierGuidance:
    r"""Classifier guidance for DDPM / DDIM networks (Dhariwal & Nichol 2021, Algorithm 2 in ε form).

    ``ε' = ε(x_t, t) - √(1 - ᾱ_t) · s · ∇_x log p_φ(y | x_t, t)``, with ``ᾱ_t`` read from ``schedule`` at the
    (float-valued integer) step ``t`` the sampler passes. Use with :func:`edifice.generative.ddpm.sample` /
    :func:`edifice.generative.ddim.sample` (same ``schedule`` and ``target``) and ``cond={"y": labels}``. For
    ancestral sampling this replaces Algorithm 1's mean shift ``s Σ ∇ log p`` by the same shift through ε
    (equal to first order in the step, and exact for DDIM's deterministic step).

    Args:
        net: ``net(x_t, t, **cond)`` predicting ``target``; a class-conditional net also receives ``y``.
        classifier: ``classifier(x_t, t) -> (B, K)`` logits, trained with :func:`classifier_loss` on the same
            schedule (any callable; the gradient is taken under ``torch.enable_grad()``).
        scale: ``s >= 0`` (Dhariwal & Nichol used 1-10). schedule: default linear, T = 1000.
        target: what ``net`` predicts: ``"eps"``, ``"x0"`` or ``"v"`` (converted to ε and back).

    Returns:
        A :class:`ClassifierGuidance` module; ``y=None`` returns the network's output unchanged.

    Raises:
        ValueError / TypeError: non-callables, a negative ``scale``, a bad ``schedule`` or ``target``.

    Example:
        >>> import torch
        >>> from edifice.generative import ddim
        >>> net = ddim.build(data_shape=(2,), hidden=16, depth=1)
        >>> clf = build_classifier(data_shape=(2,), num_classes=3, hidden=16, depth=1)
        >>> g = classifier_guided(net, clf, 2.0)
        >>> ddim.sample(g, (3, 2), steps=4, cond={"y": torch.tensor([0, 1, 2])}).shape
        torch.Size([3, 2])
    """
    scale, pass_labels = _guidance_args(net, classifier, scale)
    schedule = ddpm._schedule(schedule)
    if target not in ddpm.TARGETS:
        raise ValueError(f"target must be one of {ddpm.TARGETS}; got {target!r}")
    return ClassifierGuidance(net, classifier, scale, mode="eps", schedule=schedule, target=target,
                              pass_labels=pass_labels)


def classifier_guided_score(net: Callable[..., torch.Tensor], classifier: Callable[..., torch.Tensor],
                            scale: float) -> ClassifierGuidance:
    r"""Classifier guidance for score networks: ``s'(x, t) = s(x, t) + scale · ∇_x log p_φ(y | x_t, t)``.

    The conditional score of Song et al. (2021, eq. 14) with a guidance weight. ``t`` is the score-SDE time the
    sampler passes (``[ε, 1]``), so train the classifier with ``classifier_loss(..., sde=...)`` and
    ``build_classifier(t_scale=1000)``. The wrapper forwards ``net.sde``, so
    :func:`edifice.generative.score_sde.sample` finds the SDE as for the bare network.

    Args:
        net: score network ``net(x, t, **cond)`` (e.g. a :class:`~edifice.generative.score_sde.ScoreNet`); a
            class-conditional one also receives ``y``.
        classifier: ``classifier(x_t, t) -> (B, K)`` logits. scale: ``>= 0``.

    Returns:
        A :class:`ClassifierGuidance` module; ``y=None`` returns the network's output unchanged.

    Raises:
        ValueError / TypeError: non-callables or a negative ``scale``.
    """
    scale, pass_labels = _guidance_args(net, classifier, scale)
    return ClassifierGuidance(net, classifier, scale, mode="score", schedule=None, target="score",
                              pass_labels=pass_labels)
