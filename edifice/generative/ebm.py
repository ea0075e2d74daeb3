r"""Energy-based models (EBMs): an energy network, SGLD sampling, a replay buffer, contrastive objectives, JEM.

**Convention:** no time variable. An energy network maps data ``x (B, *data_shape)`` (model space: vectors,
or images in ``[-1, 1]``) to energies ``E_θ(x) (B,)``, low = likely; the model density is
``p_θ(x) = exp(-E_θ(x)) / Z_θ``. Energies are called ``energy(x, **cond)``.

**Maximum likelihood.** ``∇_θ log p_θ(x) = -∇_θ E_θ(x) + E_{x⁻ ~ p_θ}[∇_θ E_θ(x⁻)]``, so minimising
(Du & Mordatch 2019, eq. 2, with their regulariser of Sec. 3.3)::

    L = E_data[E_θ(x⁺)] - E[E_θ(x⁻)] + α (E_data[E_θ(x⁺)²] + E[E_θ(x⁻)²]),       x⁻ = stop_grad(SGLD(...))

follows the likelihood gradient when the negatives ``x⁻`` are samples of ``p_θ``: it pushes the energy of
data down and the energy of the model's samples up. The negatives come from stochastic gradient Langevin
dynamics (SGLD, Du & Mordatch eq. 3, :func:`langevin`)::

    x_{k+1} = x_k - ε ∇_x E_θ(x_k) + σ z_k,          z_k ~ N(0, I)

with the step size ``ε`` and the noise scale ``σ`` as separate knobs, as in practice (Du & Mordatch use
``ε = 10``, ``σ = 0.005`` on images; JEM ``ε = 1``, ``σ = 0.01``): ``σ = √(2ε)`` is the proper (unadjusted)
Langevin algorithm, which samples ``exp(-E)`` up to an ``O(ε)`` bias; smaller noise is a "cold" sampler that
trades diversity for sharper samples. The objectives (:func:`loss`):

* ``"ml_buffer"`` (default; Du & Mordatch Sec. 3.1, persistent chains as in Tieleman's PCD): SGLD started from
  a :class:`ReplayBuffer` of past negatives, each start re-initialised to uniform noise with probability
  ``reinit_prob`` (5%); the new negatives are written back into the buffer **in place** (the buffer is the
  state of the persistent chains: the math of PCD requires the update, as the name ``ml_buffer`` says).
* ``"cd"`` (contrastive divergence, Hinton 2002): ``sgld_steps`` SGLD steps started at the data batch itself.
* ``"jem"`` (Grathwohl et al. 2020): the network outputs ``K`` logits ``f_θ(x)``; ``p(y | x)`` is their softmax
  and ``E_θ(x) = -logsumexp_y f_θ(x)[y]``, ``E_θ(x, y) = -f_θ(x)[y]`` (their eq. 5-6). The loss is the
  cross-entropy of the labelled batch plus the ``"ml_buffer"`` generative term on ``E_θ(x)``.
* ``"dsm"``, ``"ssm"``, ``"nce"``: denoising / sliced score matching and noise-contrastive estimation, from
  :mod:`edifice.generative.ebm_losses` (imported when first used; see that module).

Networks (:func:`build`): an MLP with SiLU (Swish) activations for vectors ``(D,)``, a small strided conv net
with SiLU for images ``(C, H, W)``; optionally spectrally normalised (Miyato et al. 2018; Du & Mordatch use it
for smoothness). With ``num_classes`` the output is ``K`` logits (JEM) and ``energy.logits(x)`` exposes them.

Example (SGLD on the Gaussian energy ``‖x - 1‖² / 2`` with ``σ = √(2ε)`` samples ``N(1, 1 / (1 - ε/2))``):
    >>> import torch
    >>> from edifice.generative import ebm
    >>> energy = lambda x: 0.5 * (x - 1.0).square().sum(dim=1)
    >>> g = torch.Generator().manual_seed(0)
    >>> x = ebm.langevin(energy, torch.zeros(20000, 1), steps=300, step_size=0.02, noise_scale=0.04 ** 0.5,
    ...                  generator=g)
    >>> round(float(x.mean()), 1), abs(float(x.var()) - 1 / (1 - 0.02 / 2)) < 0.04
    (1.0, True)
    >>> nets = ebm.build(data_shape=(2,), hidden=16, depth=2, buffer_size=64)
    >>> loss, logs = ebm.loss(nets, torch.randn(8, 2), sgld_steps=2, generator=g)
    >>> int(nets.buffer.num_filled)
    8

References:
    Implicit Generation and Generalization in Energy-Based Models. Du, Mordatch, 2019. arXiv:1903.08689.
    Your Classifier is Secretly an Energy Based Model and You Should Treat it Like One (JEM). Grathwohl, Wang,
    Jacobsen, Duvenaud, Norouzi, Swersky, 2020. arXiv:1912.03263.
    Training Products of Experts by Minimizing Contrastive Divergence. Hinton, 2002. Neural Computation 14(8).
    Training Restricted Boltzmann Machines using Approximations to the Likelihood Gradient (PCD). Tieleman, 2008.
    Bayesian Learning via Stochastic Gradient Langevin Dynamics. Welling, Teh, 2011.
    Spectral Normalization for Generative Adversarial Networks. Miyato, Kataoka, Koyama, Yoshida, 2018.
    arXiv:1802.05957.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randn,
)
from edifice.blocks.conv import maybe_spectral_norm
from edifice.generative._common import resolve_device_dtype

__all__ = ["OBJECTIVES", "EnergyNet", "ReplayBuffer", "EBM", "build", "langevin_step", "langevin", "loss",
           "sample"]

#: Objectives of :func:`loss`; the last three live in :mod:`edifice.generative.ebm_losses`.
OBJECTIVES = ("ml_buffer", "cd", "jem", "dsm", "ssm", "nce")
_EXTERNAL = ("dsm", "ssm", "nce")


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def _check_data_shape(data_shape: Any) -> tuple[int, ...]:
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) not in (1, 3):
        raise ValueError(f"data_shape must be (D,) for vectors or (C, H, W) for images, got {data_shape!r}")
    return data_shape


class EnergyNet(nn.Module):
    r"""Energy network ``E_θ(x, y=None) -> (B,)``: an MLP (vectors) or a small conv net (images).

    Vectors ``(D,)``: ``depth`` hidden layers ``Linear -> SiLU`` of width ``hidden``, then a linear output.
    Images ``(C, H, W)``: a 3x3 convolution to ``base_channels``, then two stride-2 3x3 convolutions doubling
    the channels (any ``H, W``), SiLU after each, global average pooling, ``depth - 1`` hidden layers of
    width ``hidden`` and a linear output. The output has ``num_classes`` logits ``f(x)`` (JEM) or one value:

    * unconditional: ``E(x) = f(x)`` (a scalar);
    * with classes: ``E(x) = -logsumexp_y f(x)[y]`` and ``E(x, y) = -f(x)[y]`` (Grathwohl et al. eq. 5-6).

    The constructor options are recorded in ``self.config``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)``.
        num_classes: number of labels ``K`` (JEM), or None.
        hidden: width of the hidden linear layers.
        depth: number of hidden layers (vectors, >= 1); images use ``depth - 1`` after pooling.
        base_channels: channels of the first convolution (images).
        spectral_norm: spectral normalisation of every weight.

    Raises:
        ValueError / TypeError: naming the offending option.

    Example:
        >>> net = EnergyNet((2,), num_classes=3, hidden=8, depth=1)
        >>> x = torch.randn(5, 2)
        >>> bool(torch.allclose(net(x), -net.logits(x).logsumexp(dim=1)))
        True
    """

    def __init__(self, data_shape: tuple[int, ...], *, num_classes: int | None = None, hidden: int = 128,
                 depth: int = 3, base_channels: int = 32, spectral_norm: bool = False) -> None:
        super().__init__()
        data_shape = _check_data_shape(data_shape)
        if num_classes is not None:
            check_int("num_classes", num_classes, min=2)
        check_int("hidden", hidden, min=1)
        check_int("depth", depth, min=1)
        check_int("base_channels", base_channels, min=1)
        _check_bool("spectral_norm", spectral_norm)
        self.config: dict[str, Any] = dict(data_shape=list(data_shape), num_classes=num_classes, hidden=hidden,
                                           depth=depth, base_channels=base_channels, spectral_norm=spectral_norm)
        self.data_shape = data_shape
        self.num_classes = num_classes
        out = num_classes or 1

        def lin(i: int, o: int) -> nn.Module:
            return maybe_spectral_norm(nn.Linear(i, o), spectral_norm)

        def conv(i: int, o: int, stride: int) -> nn.Module:
            return maybe_spectral_norm(nn.Conv2d(i, o, 3, stride=stride, padding=1), spectral_norm)

        layers: list[nn.Module] = []
        if len(data_shape) == 1:
            width, hidden_layers = data_shape[0], depth
        else:
            c, b = data_shape[0], base_channels
            layers += [conv(c, b, 1), nn.SiLU(), conv(b, 2 * b, 2), nn.SiLU(), conv(2 * b, 4 * b, 2), nn.SiLU(),
                       nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            width, hidden_layers = 4 * b, depth - 1
        for _ in range(hidden_layers):
            layers += [lin(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(lin(width, out))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier logits ``f(x)`` ``(B, K)`` of a JEM network (``num_classes`` set)."""
        if self.num_classes is None:
            raise ValueError("logits needs a network built with num_classes (JEM); this one has num_classes=None")
        return self.net(x)  # (B, K)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Energies ``(B,)``: ``E(x)``, or ``E(x, y) = -f(x)[y]`` for labels ``y (B,)`` of a JEM network."""
        f = self.net(x)  # (B, K or 1)
        if self.num_classes is None:
            if y is not None:
                raise ValueError("y was given to an energy network built without num_classes")
            return f[:, 0]  # (B,)
        if y is None:
            return -f.logsumexp(dim=1)  # (B,)
        check_tensor("y", y, shape=(x.shape[0],))
        return -f.gather(1, y.long().to(f.device)[:, None])[:, 0]  # (B,)


class ReplayBuffer(nn.Module):
    """Replay buffer of past SGLD samples (the persistent chains of ``"ml_buffer"``), with its fill state.

    ``samples`` ``(size, *data_shape)`` and the boolean ``filled`` ``(size,)`` are registered buffers, so they
    move with ``.to()`` and are saved in the ``state_dict``. The buffer behaves as if initialised with
    ``U[-init_scale, init_scale]`` noise (Du & Mordatch Sec. 3.1; JEM): an empty slot reads as a fresh uniform
    draw made with the caller's generator, so building draws nothing and every draw honours ``generator``.

    Args:
        data_shape: shape of one sample.
        size: number of slots (``buffer_size``).
        init_scale: half-width of the uniform initial noise (1 for images in ``[-1, 1]``; about the data range
            for 2-D sets).
    """

    def __init__(self, data_shape: tuple[int, ...], size: int = 10000, *, init_scale: float = 1.0) -> None:
        super().__init__()
        data_shape = _check_data_shape(data_shape)
        check_int("buffer_size", size, min=1)
        check_float("init_scale", init_scale, min=0.0, min_open=True)
        self.config: dict[str, Any] = dict(data_shape=list(data_shape), size=size, init_scale=init_scale)
        self.data_shape, self.size, self.init_scale = data_shape, size, float(init_scale)
        self.register_buffer("samples", torch.zeros(size, *data_shape))
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool))

    @property
    def num_filled(self) -> torch.Tensor:
        """Number of slots holding a past sample (a 0-dim tensor; no host sync)."""
        return self.filled.sum()

    def uniform(self, n: int, *, generator: torch.Generator | None = None, device: Any = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """``n`` fresh draws ``U[-init_scale, init_scale]`` ``(n, *data_shape)``."""
        u = rand((n, *self.data_shape), generator=generator, device=device or self.samples.device,
                 dtype=dtype or self.samples.dtype)
        return (2.0 * u - 1.0) * self.init_scale

    def draw(self, n: int, *, reinit_prob: float = 0.05, generator: torch.Generator | None = None,
             dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Starting points for ``n`` chains: ``n`` distinct random slots, each reset to uniform noise with
        probability ``reinit_prob`` (and always when empty).

        Returns:
            ``(x0, index)``: ``(n, *data_shape)`` starts and the ``(n,)`` long slot indices for :meth:`push`.

        Raises:
            ValueError: ``n`` larger than the buffer (``buffer_size`` must be >= the batch size), a
                ``reinit_prob`` outside ``[0, 1]``.
        """
        check_int("n", n, min=1)
        if n > self.size:
            raise ValueError(f"buffer_size must be >= the batch size {n}, got buffer_size={self.size}")
        reinit_prob = check_float("reinit_prob", reinit_prob, min=0.0, max=1.0)
        check_generator(generator)
        dev = self.samples.device
        gdev = generator.device if generator is not None else dev
        index = torch.randperm(self.size, generator=generator, device=gdev)[:n].to(dev)  # (n,)
        fresh = self.uniform(n, generator=generator, dtype=dtype)  # (n, *data_shape)
        reset = rand((n,), generator=generator, device=dev) < reinit_prob  # (n,)
        reset = (reset | ~self.filled[index]).reshape(n, *(1,) * len(self.data_shape))
        old = self.samples[index].to(fresh.dtype)
        return torch.where(reset, fresh, old), index

    @torch.no_grad()
    def push(self, index: torch.Tensor, x: torch.Tensor) -> None:
        """Write samples ``x`` ``(n, *data_shape)`` into slots ``index`` ``(n,)`` **in place** and mark them filled."""
        check_tensor("x", x, shape=(index.shape[0], *self.data_shape), floating=True)
        self.samples[index] = x.detach().to(self.samples.dtype)
        self.filled[index] = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - a container, not a layer
        raise TypeError("ReplayBuffer is a container of samples; use draw() / push()")


class EBM(NamedTuple):
    """The modules of an energy-based model: ``energy`` ``E(x, y=None) -> (B,)`` and its replay ``buffer``."""

    energy: EnergyNet
    buffer: ReplayBuffer


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    hidden: int = 128,
    depth: int = 3,
    base_channels: int = 32,
    spectral_norm: bool = False,
    buffer_size: int = 10000,
    init_scale: float = 1.0,
) -> EBM:
    """Build an energy network and its replay buffer.

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)``.
        num_classes: ``K`` labels for a JEM network (``K`` logits; ``E(x) = -logsumexp f(x)``), or None.
        hidden, depth: width and number of hidden layers (see :class:`EnergyNet`).
        base_channels: channels of the first convolution (images).
        spectral_norm: spectrally normalise every weight (Miyato et al.; smoother energies).
        buffer_size: slots of the replay buffer (>= the training batch size; checked in :func:`loss`).
        init_scale: the buffer's uniform noise ``U[-init_scale, init_scale]`` (1 for images in ``[-1, 1]``;
            about 4 for "8gaussians").

    Returns:
        ``EBM(energy, buffer)``, a NamedTuple of modules.

    Raises:
        ValueError / TypeError: naming the offending option (e.g. ``data_shape=(0,)``, ``buffer_size=0``).
    """
    data_shape = _check_data_shape(data_shape)
    energy = EnergyNet(data_shape, num_classes=num_classes, hidden=hidden, depth=depth, base_channels=base_channels,
                       spectral_norm=spectral_norm)
    return EBM(energy, ReplayBuffer(data_shape, buffer_size, init_scale=init_scale))


def _unpack(nets: Any) -> tuple[Any, ReplayBuffer | None]:
    if isinstance(nets, EBM) or (isinstance(nets, tuple) and hasattr(nets, "energy")):
        return nets.energy, getattr(nets, "buffer", None)
    if callable(nets):
        return nets, None
    raise TypeError(f"nets must be an EBM(energy, buffer) or an energy callable, got {type(nets).__name__}")


def _energies(energy: Callable[..., torch.Tensor], x: torch.Tensor, cond: dict) -> torch.Tensor:
    e = energy(x, **cond)
    if not isinstance(e, torch.Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"energy must return energies of shape ({x.shape[0]},), got {got}")
    return e


def _check_sgld(steps: Any, step_size: Any, noise_scale: Any, clip: Any, *, steps_name: str = "steps"
                ) -> tuple[int, float, float, float | None]:
    steps = check_int(steps_name, steps, min=0)
    step_size = check_float("step_size", step_size, min=0.0, min_open=True)
    noise_scale = check_float("noise_scale", noise_scale, min=0.0)
    if clip is not None:
        clip = check_float("clip", clip, min=0.0, min_open=True)
    return steps, step_size, noise_scale, clip


def langevin_step(x: torch.Tensor, grad: torch.Tensor, step_size: float | torch.Tensor,
                  noise_scale: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One SGLD step ``x - ε ∇_x E(x) + σ z`` (Du & Mordatch eq. 3 with separate ``ε`` and ``σ``).

    ``σ = √(2ε)`` is the unadjusted Langevin algorithm for ``exp(-E)``; Du & Mordatch's eq. 3 writes
    ``ε = λ/2``, ``σ = √λ``, the same step.

    Args:
        x: ``(B, ...)`` state. grad: ``∇_x E(x)`` shaped like ``x``.
        step_size: ``ε`` (number or tensor broadcastable to ``x``). noise_scale: ``σ``.
        noise: standard normal ``z`` shaped like ``x``.

    Returns:
        The new state, shaped like ``x``.

    Raises:
        ValueError: ``grad`` or ``noise`` not shaped like ``x``.
    """
    for name, v in (("grad", grad), ("noise", noise)):
        check_tensor(name, v, shape=tuple(x.shape), floating=True)
    return x - step_size * grad + noise_scale * noise


def langevin(
    energy: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    noise_scale: float,
    clip: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Run ``steps`` SGLD steps (:func:`langevin_step`) on ``exp(-E)`` from ``x``; return the detached end point.

    Each step differentiates ``Σ_b E(x_b)`` with respect to ``x`` only (no parameter gradient accumulates),
    under ``torch.enable_grad()`` so it also runs inside ``no_grad`` samplers.

    Args:
        energy: ``energy(x, **cond) -> (B,)``.
        x: ``(B, ...)`` starting points (floating).
        steps: number of steps (>= 0). step_size: ``ε > 0``. noise_scale: ``σ >= 0``.
        clip: clamp the state to ``[-clip, clip]`` after each step (images), or None.
        generator: draws the noise. cond: conditioning for ``energy`` (``{"y": labels}`` for JEM's ``E(x, y)``).
        callback: called after each step with ``{"step": k, "x": x}``.

    Returns:
        ``(B, ...)`` samples without gradient.

    Raises:
        ValueError / TypeError: naming the offending argument (an energy output that is not ``(B,)``).
    """
    check_tensor("x", x, floating=True)
    steps, step_size, noise_scale, clip = _check_sgld(steps, step_size, noise_scale, clip)
    generator = check_generator(generator)
    cond = check_cond(cond)
    x = x.detach()
    for k in range(steps):
        with torch.enable_grad():
            xr = x.requires_grad_(True)
            (grad,) = torch.autograd.grad(_energies(energy, xr, cond).sum(), xr)
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = langevin_step(x.detach(), grad, step_size, noise_scale, noise)
        if clip is not None:
            x = x.clamp(-clip, clip)
        if callback is not None:
            callback({"step": k, "x": x})
    return x


def loss(
    nets: EBM,
    x: torch.Tensor,
    *,
    objective: str = "ml_buffer",
    sgld_steps: int = 20,
    step_size: float = 1.0,
    noise_scale: float = 0.01,
    clip: float | None = None,
    alpha: float = 0.1,
    reinit_prob: float = 0.05,
    objective_kwargs: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Contrastive EBM loss ``E(x⁺) - E(x⁻) + α (E(x⁺)² + E(x⁻)²)`` (batch means), or another ``objective``.

    ``x⁻`` are SGLD negatives (:func:`langevin`, detached): from the replay buffer (``"ml_buffer"``, which
    **updates the buffer in place** with the new negatives: the persistent chains' state, as PCD requires), or
    from the data batch (``"cd"``). ``"jem"`` adds the cross-entropy ``CE(f(x), y)`` of the labels in
    ``cond["y"]`` to the ``"ml_buffer"`` term on ``E(x) = -logsumexp f(x)``. With a JEM network and labels,
    ``"ml_buffer"`` and ``"cd"`` train the class-conditional energy ``E(x, y)`` (negatives by SGLD on
    ``E(·, y)``). ``"dsm"`` / ``"ssm"`` / ``"nce"`` call ``edifice.generative.ebm_losses.<name>_loss(energy, x,
    generator=generator, **objective_kwargs)`` (plus ``cond=cond`` when conditioning is given).

    Args:
        nets: ``EBM(energy, buffer)`` from :func:`build` (``"cd"`` and the external objectives also accept a
            bare energy callable).
        x: ``(B, *data_shape)`` data batch in model space.
        objective: one of :data:`OBJECTIVES`.
        sgld_steps: SGLD steps per batch (20, as JEM). step_size, noise_scale: SGLD's ``ε`` and ``σ`` (JEM's 1
            and 0.01 for images in ``[-1, 1]``). clip: clamp the negatives to ``[-clip, clip]``, or None.
        alpha: weight of the energy regulariser ``α`` (Du & Mordatch Sec. 3.3), >= 0.
        reinit_prob: probability that a buffer chain restarts from uniform noise (``"ml_buffer"``, ``"jem"``).
        objective_kwargs: options of the ``ebm_losses`` objective (only with ``"dsm"``, ``"ssm"``, ``"nce"``).
        generator: draws the buffer slots, restarts and SGLD noise.
        cond: ``{"y": (B,) labels}`` for a JEM network (required by ``"jem"``).

    Returns:
        ``(loss, logs)``: logs hold ``loss``, ``e_pos`` / ``e_neg`` (mean energies of data and negatives),
        ``cd`` (their difference, the contrastive term) and for ``"jem"`` ``ce`` and ``acc`` (all detached).

    Raises:
        ValueError / TypeError: naming the offending argument (e.g. ``buffer_size`` smaller than the batch,
            ``objective="jem"`` without labels or on a network without ``num_classes``).
    """
    check_choice("objective", objective, OBJECTIVES)
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, *data_shape), got shape {tuple(x.shape)}")
    generator = check_generator(generator)
    cond = check_cond(cond)
    energy, buffer = _unpack(nets)
    if objective_kwargs is not None and not isinstance(objective_kwargs, Mapping):
        raise TypeError(f"objective_kwargs must be a mapping or None, got {type(objective_kwargs).__name__}")
    if objective in _EXTERNAL:
        ebm_losses = importlib.import_module("edifice.generative.ebm_losses")
        fn = getattr(ebm_losses, f"{objective}_loss")
        extra = dict(objective_kwargs or {})
        if cond:  # passed on only when given, so the agreed call stays fn(energy, x, generator=...)
            extra["cond"] = cond
        return fn(energy, x, generator=generator, **extra)
    if objective_kwargs:
        raise ValueError(f"objective_kwargs is only for objectives {_EXTERNAL}, got {dict(objective_kwargs)!r} "
                         f"with objective={objective!r}")
    sgld_steps, step_size, noise_scale, clip = _check_sgld(sgld_steps, step_size, noise_scale, clip,
                                                          steps_name="sgld_steps")
    alpha = check_float("alpha", alpha, min=0.0)
    logs: dict[str, torch.Tensor] = {}
    ce = None
    gen_cond = cond
    if objective == "jem":
        if not hasattr(energy, "logits") or getattr(energy, "num_classes", 1) is None:
            raise ValueError("objective='jem' needs an energy network with num_classes (logits); build with "
                             "num_classes=K")
        if "y" not in cond:
            raise ValueError("objective='jem' needs labels: pass cond={'y': (B,) labels}")
        y = check_tensor("cond['y']", cond["y"], shape=(x.shape[0],))
        logits = energy.logits(x)  # (B, K)
        ce = F.cross_entropy(logits, y.long().to(logits.device))
        logs["ce"] = ce.detach()
        logs["acc"] = (logits.argmax(dim=1) == y.to(logits.device)).float().mean().detach()
        gen_cond = {k: v for k, v in cond.items() if k != "y"}  # the generative term models p(x)
    if objective == "cd":
        start, index = x.detach(), None
    else:
        if buffer is None:
            raise TypeError(f"objective={objective!r} needs an EBM(energy, buffer) with a replay buffer")
        buffer_size = buffer.size
        if x.shape[0] > buffer_size:
            raise ValueError(f"buffer_size must be >= the batch size {x.shape[0]}, got buffer_size={buffer_size}")
        if tuple(x.shape[1:]) != buffer.data_shape:
            raise ValueError(f"x must have shape (B, *{buffer.data_shape}), got {tuple(x.shape)}")
        start, index = buffer.draw(x.shape[0], reinit_prob=reinit_prob, generator=generator, dtype=x.dtype)
    neg = langevin(energy, start.to(x.device), steps=sgld_steps, step_size=step_size, noise_scale=noise_scale,
                   clip=clip, generator=generator, cond=gen_cond)
    if index is not None:
        buffer.push(index, neg)  # in place: the persistent chains continue from here next time
    e = _energies(energy, torch.cat([x, neg]), {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) else v)
                                                for k, v in gen_cond.items()})  # (2B,)
    e_pos, e_neg = e[: x.shape[0]], e[x.shape[0]:]
    contrast = e_pos.mean() - e_neg.mean()
    value = contrast + alpha * (e_pos.square().mean() + e_neg.square().mean())
    if ce is not None:
        value = value + ce
    logs.update(e_pos=e_pos.mean().detach(), e_neg=e_neg.mean().detach(), cd=contrast.detach())
    logs["loss"] = value.detach()
    return value, logs


@torch.no_grad()
def sample(
    nets: EBM,
    shape: tuple[int, ...],
    *,
    steps: int = 100,
    step_size: float = 1.0,
    noise_scale: float = 0.01,
    clip: float | None = None,
    from_buffer: bool = False,
    init_scale: float | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    noise: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw samples by SGLD on ``exp(-E)`` (Du & Mordatch Sec. 3.1), in model space, without touching the buffer.

    Starts from ``U[-s, s]`` noise (``s = init_scale``, default the buffer's), from random entries of the
    replay buffer (``from_buffer=True``: continuing the training chains, which gives far better samples
    after short runs; empty slots start from uniform noise), or from ``noise``. With a JEM network,
    ``cond={"y": labels}`` samples the class-conditional ``exp(-E(x, y))``.

    Args:
        nets: ``EBM(energy, buffer)`` (or a bare energy callable with ``init_scale`` or ``noise`` given).
        shape: ``(B, *data_shape)``.
        steps: SGLD steps (>= 0). step_size, noise_scale, clip: as in :func:`langevin`.
        from_buffer: start from the replay buffer (``B`` <= its size). init_scale: half-width of the uniform
            start (default: the buffer's ``init_scale``).
        generator: draws the starts and the SGLD noise. cond: conditioning for the energy.
        callback: called after each step with ``{"step": k, "x": x}``.
        noise: ``(B, *data_shape)`` given starting points.
        device, dtype: where to sample (default: ``noise``'s, else the energy's parameters', else cpu / float32).

    Returns:
        ``(B, *data_shape)`` samples.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    energy, buffer = _unpack(nets)
    shape = check_shape_tuple("shape", shape)
    _check_bool("from_buffer", from_buffer)
    generator = check_generator(generator)
    steps, step_size, noise_scale, clip = _check_sgld(steps, step_size, noise_scale, clip)
    dev, dt = resolve_device_dtype(energy, noise, device, dtype)
    if noise is not None:
        x0 = check_tensor("noise", noise, shape=shape, floating=True).to(device=dev, dtype=dt)
    elif from_buffer:
        if buffer is None:
            raise TypeError("from_buffer=True needs an EBM(energy, buffer) with a replay buffer")
        if tuple(shape[1:]) != buffer.data_shape:
            raise ValueError(f"shape must be (B, *{buffer.data_shape}), got {shape}")
        x0, _ = buffer.draw(shape[0], reinit_prob=0.0, generator=generator, dtype=dt)
        x0 = x0.to(dev)
    else:
        if init_scale is None:
            if buffer is None:
                raise TypeError("sampling a bare energy needs init_scale or noise")
            init_scale = buffer.init_scale
        init_scale = check_float("init_scale", init_scale, min=0.0, min_open=True)
        x0 = (2.0 * rand(shape, generator=generator, device=dev, dtype=dt) - 1.0) * init_scale
    return langevin(energy, x0, steps=steps, step_size=step_size, noise_scale=noise_scale, clip=clip,
                    generator=generator, cond=cond, callback=callback)
