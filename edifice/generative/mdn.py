r"""Mixture density networks (Bishop 1994): a conditional density ``p(y | x)`` as a Gaussian mixture.

A data point of shape ``(D,)`` is split into a condition ``x = data[:, :Dx]`` (the first ``input_dim``
coordinates) and a target ``y = data[:, Dx:]`` (the other ``Dy = D - Dx``). A network maps ``x`` to the
parameters of a ``K``-component mixture of diagonal Gaussians (Bishop eq. 22-26; his isotropic kernels
generalised to one scale per output coordinate)::

    p(y | x) = Σ_k π_k(x) Π_d N(y_d; μ_kd(x), σ_kd(x)²),   π = softmax(logits),   σ = exp(log_std),

and is trained by maximum likelihood, the negative log of eq. 22 averaged over the batch (Bishop eq. 29),
evaluated stably as ``-logsumexp_k [log π_k + log N_k]`` (:func:`mixture_log_prob`). A least-squares network
recovers only the conditional mean ``E[y | x] = Σ_k π_k μ_k`` (:func:`moments`), which for a multi-valued
inverse problem such as :func:`inverse_sine` falls between the branches; the mixture keeps them all.

The MDN is a *conditional* model: :func:`log_prob` is ``log p(y | x)`` in nats, not a joint density of the
data point, so it is not comparable with the joint entropy of a 2-D toy set (it is lower by the entropy of
``x``). :func:`sample` draws ``y ~ p(y | x)`` for given conditions (or, without them, for ``x`` uniform on the
``x_range`` recorded at build time) and returns full data points ``concat(x, y)``.

No time variable; the network is called ``net(x)`` with ``x: (B, Dx)`` and returns
``(logits (B, K), means (B, K, Dy), log_stds (B, K, Dy))``.

Example (the three branches of Bishop's inverse problem at ``x = 0.5``):
    >>> import torch
    >>> from edifice.generative import mdn
    >>> g = torch.Generator().manual_seed(0)
    >>> data = mdn.inverse_sine(4, generator=g)
    >>> data.shape
    torch.Size([4, 2])
    >>> net = mdn.build(data_shape=(2,), input_dim=1, components=3, hidden=16)
    >>> logits, means, log_stds = net(data[:, :1])
    >>> logits.shape, means.shape, log_stds.shape
    (torch.Size([4, 3]), torch.Size([4, 3, 1]), torch.Size([4, 3, 1]))
    >>> mdn.log_prob(net, data).shape
    torch.Size([4])
    >>> mdn.sample(net, (5, 2), condition=torch.full((5, 1), 0.5), generator=g)[:, 0]
    tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.5000])

References:
    Mixture Density Networks. Christopher M. Bishop, 1994. Technical report NCRG/94/004, Aston University.
    Pattern Recognition and Machine Learning, Sec. 5.6. Christopher M. Bishop, 2006.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from edifice._checks import (
    check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randn,
)
from edifice.data.toy2d import inverse_sine  # noqa: F401 - the data set of this family, defined with the data
from edifice.generative._common import resolve_device_dtype

__all__ = ["MDN", "build", "mixture_log_prob", "moments", "nll", "loss", "log_prob", "sample", "inverse_sine",
           "split"]

_LOG_2PI = math.log(2.0 * math.pi)


class MDN(nn.Module):
    """An MLP from ``x (B, Dx)`` to the parameters of a ``K``-component diagonal Gaussian mixture over ``y``.

    ``depth`` hidden layers of width ``hidden`` with tanh units (Bishop's choice), then one linear layer
    giving ``K`` logits, ``K·Dy`` means and ``K·Dy`` log standard deviations (Bishop eq. 25-27, with
    ``log σ`` output directly so that ``σ = exp(log σ) > 0``).

    Args:
        input_dim: ``Dx``. output_dim: ``Dy``. components: ``K``. hidden, depth: the MLP.
        x_range: ``(low, high)`` box of ``x`` used by :func:`sample` when no condition is given.
    """

    def __init__(self, input_dim: int, output_dim: int, components: int, hidden: int, depth: int,
                 x_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.config = dict(input_dim=input_dim, output_dim=output_dim, components=components, hidden=hidden,
                           depth=depth, x_range=tuple(x_range))
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, components * (1 + 2 * output_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, Dx)`` -> ``(logits (B, K), means (B, K, Dy), log_stds (B, K, Dy))``."""
        k, dy = self.config["components"], self.config["output_dim"]
        out = self.head(self.body(x))  # (B, K (1 + 2 Dy))
        logits = out[:, :k]  # (B, K)
        means, log_stds = out[:, k:].reshape(x.shape[0], k, 2 * dy).split(dy, dim=-1)  # 2 x (B, K, Dy)
        return logits, means, log_stds


def build(
    *,
    data_shape: tuple[int, ...],
    num_classes: int | None = None,
    input_dim: int = 1,
    components: int = 5,
    hidden: int = 64,
    depth: int = 2,
    x_range: tuple[float, float] = (-1.0, 1.0),
) -> MDN:
    """Build a mixture density network for data points ``concat(x, y)`` of shape ``data_shape = (D,)``.

    Args:
        data_shape: ``(D,)`` with ``D > input_dim``; ``y`` has ``Dy = D - input_dim`` coordinates.
        num_classes: must be None (class labels can be given as one-hot coordinates of ``x``).
        input_dim: ``Dx >= 1``, the number of leading coordinates that are the condition ``x``.
        components: ``K >= 1`` mixture components (``K = 1`` is heteroscedastic Gaussian regression).
        hidden, depth: width (``>= 1``) and number of hidden tanh layers (``>= 1``).
        x_range: ``(low, high)``, ``low < high``: the box :func:`sample` draws ``x`` from when no
            ``condition`` is given (record the training data's range here).

    Returns:
        An :class:`MDN` module (``net.config`` records the options).

    Raises:
        ValueError / TypeError: naming the offending option, e.g. ``data_shape=(0,)``, ``data_shape=(2, 3)``
        (not a vector), ``components=0``.
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) != 1:
        raise ValueError(f"data_shape must be a vector shape (D,) for a mixture density network, got {data_shape}")
    if num_classes is not None:
        raise ValueError(f"num_classes must be None: an MDN conditions on the leading input_dim coordinates of each "
                         f"point (give labels there, e.g. one-hot), got num_classes={num_classes!r}")
    input_dim = check_int("input_dim", input_dim, min=1)
    if data_shape[0] <= input_dim:
        raise ValueError(f"data_shape (D,) must have D > input_dim so that y is not empty, got "
                         f"data_shape={data_shape}, input_dim={input_dim}")
    components = check_int("components", components, min=1)
    hidden = check_int("hidden", hidden, min=1)
    depth = check_int("depth", depth, min=1)
    x_range = _check_range("x_range", x_range)
    return MDN(input_dim, data_shape[0] - input_dim, components, hidden, depth, x_range)


def _check_range(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}")
    lo, hi = check_float(f"{name}[0]", value[0]), check_float(f"{name}[1]", value[1])
    if not lo < hi:
        raise ValueError(f"{name} must have low < high, got {tuple(value)!r}")
    return lo, hi


def _check_params(params: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(params, (tuple, list)) or len(params) != 3:
        raise ValueError(f"net must return (logits, means, log_stds), got {type(params).__name__}")
    logits, means, log_stds = params
    check_tensor("logits", logits, ndim=2, floating=True)
    b, k = logits.shape
    check_tensor("means", means, ndim=3, floating=True)
    check_tensor("log_stds", log_stds, shape=means.shape, floating=True)
    if means.shape[:2] != (b, k):
        raise ValueError(f"means must have shape ({b}, {k}, Dy) to match logits {tuple(logits.shape)}, "
                         f"got {tuple(means.shape)}")
    return logits, means, log_stds


def mixture_log_prob(logits: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
    r"""``log Σ_k π_k Π_d N(y_d; μ_kd, σ_kd²)`` in nats, by ``logsumexp`` (Bishop eq. 22, stably).

    ``log π = log_softmax(logits)`` and each component's log density
    ``-Σ_d [½ ((y_d - μ_kd)/σ_kd)² + log σ_kd + ½ log 2π]`` are summed before one ``logsumexp`` over ``k``,
    so far-away points and large logits give finite values where the direct sum of densities underflows.

    Args:
        logits: ``(B, K)`` unnormalised log weights. means, log_stds: ``(B, K, Dy)``.
        y: ``(B, Dy)`` targets.

    Returns:
        ``(B,)`` log densities.

    Raises:
        ValueError / TypeError: for mismatched shapes.
    """
    logits, means, log_stds = _check_params((logits, means, log_stds))
    check_tensor("y", y, shape=(means.shape[0], means.shape[2]), floating=True)
    z = (y.unsqueeze(1) - means) * torch.exp(-log_stds)  # (B, K, Dy)
    log_n = -(0.5 * z.square() + log_stds + 0.5 * _LOG_2PI).sum(dim=-1)  # (B, K)
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + log_n, dim=-1)  # (B,)


def moments(logits: torch.Tensor, means: torch.Tensor, log_stds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and per-coordinate variance of the mixture (Bishop eq. 39-40, diagonal case).

    ``E[y] = Σ_k π_k μ_k`` (what a least-squares network estimates) and
    ``Var[y_d] = Σ_k π_k (σ_kd² + μ_kd²) - E[y_d]²``.

    Args:
        logits: ``(B, K)``. means, log_stds: ``(B, K, Dy)``.

    Returns:
        ``(mean (B, Dy), var (B, Dy))``.
    """
    logits, means, log_stds = _check_params((logits, means, log_stds))
    w = torch.softmax(logits, dim=-1).unsqueeze(-1)  # (B, K, 1)
    mean = (w * means).sum(dim=1)  # (B, Dy)
    second = (w * (torch.exp(2 * log_stds) + means.square())).sum(dim=1)  # (B, Dy)
    return mean, (second - mean.square()).clamp_min(0)


def _config(net: Any) -> dict | None:
    cfg = getattr(net, "config", None)
    return cfg if isinstance(cfg, dict) and "input_dim" in cfg else None


def split(net: Any, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split data points ``(B, D)`` into ``x (B, Dx)`` and ``y (B, Dy)`` with the net's ``input_dim``.

    Raises:
        ValueError / TypeError: if ``data`` is not ``(B, D)`` with ``D`` the net's ``Dx + Dy``.
    """
    cfg = _config(net)
    if cfg is None:
        raise TypeError(f"net must be an MDN (with config['input_dim']), got {type(net).__name__}")
    check_tensor("data", data, ndim=2, floating=True)
    d = cfg["input_dim"] + cfg["output_dim"]
    if data.shape[1] != d:
        raise ValueError(f"data must have shape (B, {d}) (input_dim={cfg['input_dim']} + output_dim="
                         f"{cfg['output_dim']}), got {tuple(data.shape)}")
    return data[:, : cfg["input_dim"]], data[:, cfg["input_dim"]:]


def nll(net: Callable[[torch.Tensor], Any], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood ``-log p(y | x)`` in nats, ``(B,)`` (Bishop eq. 29 before the sum).

    Args:
        net: any callable ``net(x) -> (logits (B, K), means (B, K, Dy), log_stds (B, K, Dy))``.
        x: ``(B, Dx)`` conditions. y: ``(B, Dy)`` targets.

    Raises:
        ValueError / TypeError: for mismatched shapes or a net returning something else.
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(x), got {type(net).__name__}")
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("y", y, ndim=2, floating=True)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {tuple(x.shape)} and {tuple(y.shape)}")
    return -mixture_log_prob(*_check_params(net(x)), y)


def _check_no_cond(cond: Any) -> None:
    cond = check_cond(cond)
    if cond:
        raise ValueError(f"cond must be None or empty: an MDN takes its condition from the data's leading "
                         f"input_dim coordinates (or sample's condition=), got keys {sorted(cond)}")


def loss(
    net: MDN,
    data: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean negative log-likelihood of ``y`` given ``x`` over a batch of points ``data = concat(x, y)`` (eq. 29).

    Deterministic: ``generator`` is accepted for the family interface and draws nothing.

    Args:
        net: an :class:`MDN`. data: ``(B, D)`` points, ``x = data[:, :Dx]``, ``y = data[:, Dx:]``.
        generator: unused. cond: must be None or empty.

    Returns:
        ``(loss, {"loss", "nll", "std"})``: the mean NLL in nats, and the mean component standard deviation.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    check_generator(generator)
    _check_no_cond(cond)
    x, y = split(net, data)
    params = _check_params(net(x))
    value = -mixture_log_prob(*params, y).mean()
    logs = {"loss": value.detach(), "nll": value.detach(), "std": params[2].detach().exp().mean()}
    return value, logs


def log_prob(net: MDN, data: torch.Tensor, *, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Conditional log density ``log p(y | x)`` ``(B,)`` in nats of points ``data = concat(x, y)`` ``(B, D)``.

    Not a joint density of ``data``: ``x`` is given, not modelled.
    """
    _check_no_cond(cond)
    x, y = split(net, data)
    return mixture_log_prob(*_check_params(net(x)), y)


@torch.no_grad()
def sample(
    net: Callable[[torch.Tensor], Any],
    shape: tuple[int, ...],
    *,
    condition: torch.Tensor | None = None,
    x_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    callback: Callable[[dict], None] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw ``y ~ p(y | x)`` and return the points ``concat(x, y)`` ``(n, D)`` (ancestral: component, then Gaussian).

    For each row a component ``k ~ Categorical(π(x))`` is drawn by inverting the cumulative weights at one
    uniform, then ``y = μ_k + σ_k ⊙ ε``, ``ε ~ N(0, I)``. The condition ``x`` is ``condition`` when given (pass
    held-out data's ``x`` to sample the data's joint law); otherwise ``x ~ U(x_range)`` per coordinate
    (default: the ``x_range`` recorded by :func:`build`), which gives pictures of the whole conditional but
    not the data's ``x`` marginal.

    Args:
        net: an :class:`MDN`, or any callable ``net(x) -> (logits, means, log_stds)`` when ``condition`` is
            given (then ``Dx = condition.shape[1]``).
        shape: ``(n, D)``, ``D = Dx + Dy``.
        condition: ``(n, Dx)`` conditions, or None.
        x_range: ``(low, high)`` overriding the net's box for ``x`` when ``condition`` is None.
        generator: draws ``x`` (when not given), the components and the Gaussian noise.
        cond: must be None or empty. callback: called once with ``{"x", "y", "component"}``.
        device, dtype: where to sample (default: the condition's, else the net's, else cpu / float32).

    Returns:
        ``(n, D)`` points; the first ``Dx`` columns equal the condition.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    if not callable(net):
        raise TypeError(f"net must be callable as net(x), got {type(net).__name__}")
    shape = check_shape_tuple("shape", shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (n, D) for an MDN, got {shape}")
    generator = check_generator(generator)
    _check_no_cond(cond)
    n, d = shape
    cfg = _config(net)
    if condition is not None:
        check_tensor("condition", condition, ndim=2, floating=True)
        dx = condition.shape[1]
        if condition.shape[0] != n or (cfg is not None and dx != cfg["input_dim"]):
            want = cfg["input_dim"] if cfg is not None else "Dx"
            raise ValueError(f"condition must have shape ({n}, {want}), got {tuple(condition.shape)}")
    elif cfg is None:
        raise ValueError("condition must be given when net has no config['input_dim'] (a plain callable)")
    else:
        dx = cfg["input_dim"]
    if d <= dx:
        raise ValueError(f"shape must be (n, D) with D > input_dim {dx}, got {shape}")
    dev, dtype = resolve_device_dtype(net, None if isinstance(net, nn.Module) else condition, device, dtype)
    if condition is None:
        lo, hi = _check_range("x_range", x_range if x_range is not None else cfg["x_range"])
        x = lo + (hi - lo) * rand((n, dx), generator=generator, device=dev, dtype=dtype)
    else:
        if x_range is not None:
            _check_range("x_range", x_range)
        x = condition.to(device=dev, dtype=dtype)
    logits, means, log_stds = _check_params(net(x))
    if means.shape[0] != n or means.shape[2] != d - dx:
        raise ValueError(f"net must return means of shape ({n}, K, {d - dx}) for shape {shape}, "
                         f"got {tuple(means.shape)}")
    cdf = torch.softmax(logits.to(dtype), dim=-1).cumsum(dim=-1)  # (n, K)
    u = rand((n, 1), generator=generator, device=dev, dtype=dtype)
    k = (cdf < u * cdf[:, -1:]).sum(dim=-1).clamp_max(logits.shape[1] - 1)  # (n,)
    idx = k[:, None, None].expand(n, 1, means.shape[2])
    mu = means.to(dtype).gather(1, idx).squeeze(1)  # (n, Dy)
    std = log_stds.to(dtype).gather(1, idx).squeeze(1).exp()  # (n, Dy)
    y = mu + std * randn((n, d - dx), generator=generator, device=dev, dtype=dtype)
    if callback is not None:
        callback({"x": x, "y": y, "component": k})
    return torch.cat([x, y], dim=1)
