"""Two-dimensional toy distributions with the scalings of FFJORD's toy data.

Every set is generated in torch from the caller's ``generator`` (so the same seed gives the same
bits), in float64, then cast to the requested dtype. The constructions and constants follow
FFJORD's ``lib/toy_data.py`` (which in turn uses scikit-learn's ``make_moons`` /
``make_circles`` / ``make_swiss_roll``); where those place points on a regular grid or split the
batch into exact equal parts, we draw the angle or the component at random instead, which gives
the same distribution with i.i.d. points and exactly ``n`` rows for any ``n``.

Example:
    >>> import torch
    >>> from edifice.data import toy2d
    >>> x = toy2d.sample("moons", 512, generator=torch.Generator().manual_seed(0))
    >>> x.shape, x.dtype
    (torch.Size([512, 2]), torch.float32)

References:
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models
    (Grathwohl et al., 2018), arXiv:1810.01367 — ``lib/toy_data.py`` of its code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from edifice._checks import check_choice, check_float, check_generator, check_int, rand, randint, randn

__all__ = ["NAMES", "sample", "inverse_sine"]

NAMES: tuple[str, ...] = (
    "moons", "8gaussians", "checkerboard", "circles", "rings", "pinwheel", "2spirals", "swissroll",
    "inverse_sine",
)

_F64 = torch.float64


def _normal(shape, g):
    return randn(shape, generator=g, dtype=_F64)


def _uniform(shape, g):
    return rand(shape, generator=g, dtype=_F64)


def _moons(n: int, g: torch.Generator | None) -> torch.Tensor:
    # make_moons(noise=0.1): upper moon (cos a, sin a), lower moon (1 - cos a, 0.5 - sin a), a ~ U[0, pi].
    a = _uniform((n,), g) * math.pi
    lower = randint(0, 2, (n,), generator=g).bool()
    x = torch.where(lower, 1.0 - torch.cos(a), torch.cos(a))
    y = torch.where(lower, 0.5 - torch.sin(a), torch.sin(a))
    pts = torch.stack([x, y], dim=1) + 0.1 * _normal((n, 2), g)  # (n, 2)
    return pts * 2.0 + torch.tensor([-1.0, -0.2], dtype=_F64, device=pts.device)


def _eight_gaussians(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Centres 4 * (cos k pi/4, sin k pi/4), noise std 0.5, then everything divided by 1.414.
    angle = randint(0, 8, (n,), generator=g).to(_F64) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # (n, 2)
    return (centres + 0.5 * _normal((n, 2), g)) / 1.414


def _checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    # x1 ~ U[-2, 2); x2 in the squares of the other parity; scaled by 2 -> [-4, 4]^2, 8 squares.
    x1 = _uniform((n,), g) * 4.0 - 2.0
    x2 = _uniform((n,), g) - randint(0, 2, (n,), generator=g).to(_F64) * 2.0
    x2 = x2 + torch.remainder(torch.floor(x1), 2.0)
    return torch.stack([x1, x2], dim=1) * 2.0  # (n, 2)


def _circles(n: int, g: torch.Generator | None) -> torch.Tensor:
    # make_circles(factor=0.5, noise=0.08) times 3: radius 3 or 1.5, noise std 0.24 after scaling.
    a = _uniform((n,), g) * (2 * math.pi)
    inner = randint(0, 2, (n,), generator=g).bool()
    r = torch.where(inner, 0.5, 1.0).to(_F64)
    pts = torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=1) + 0.08 * _normal((n, 2), g)
    return pts * 3.0  # (n, 2)


def _rings(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Four concentric circles of radii 3 * (1, 0.75, 0.5, 0.25), then Gaussian noise of std 0.08.
    a = _uniform((n,), g) * (2 * math.pi)
    ring = randint(0, 4, (n,), generator=g).to(_F64)
    r = 3.0 * (1.0 - 0.25 * ring)
    pts = torch.stack([r * torch.cos(a), r * torch.sin(a)], dim=1)  # (n, 2)
    return pts + 0.08 * _normal((n, 2), g)


def _pinwheel(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Five arms: radial N(1, 0.3^2), tangential N(0, 0.1^2), rotated by arm angle + 0.25 exp(radial); times 2.
    arm = randint(0, 5, (n,), generator=g).to(_F64)
    f = _normal((n, 2), g)
    f = torch.stack([1.0 + 0.3 * f[:, 0], 0.1 * f[:, 1]], dim=1)  # (n, 2) radial, tangential
    angle = arm * (2 * math.pi / 5) + 0.25 * torch.exp(f[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    # FFJORD's einsum("ti,tij->tj", f, [[c, -s], [s, c]]).
    out = torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], dim=1)  # (n, 2)
    return 2.0 * out


def _two_spirals(n: int, g: torch.Generator | None) -> torch.Tensor:
    # Arc length sqrt(U) * 3 pi, jitter U[0, 0.5) per coordinate, one spiral mirrored, / 3, + N(0, 0.1^2).
    t = torch.sqrt(_uniform((n,), g)) * (540 * 2 * math.pi / 360)
    dx = -torch.cos(t) * t + _uniform((n,), g) * 0.5
    dy = torch.sin(t) * t + _uniform((n,), g) * 0.5
    sign = 1.0 - 2.0 * randint(0, 2, (n,), generator=g).to(_F64)
    pts = torch.stack([dx, dy], dim=1) * sign[:, None] / 3.0  # (n, 2)
    return pts + 0.1 * _normal((n, 2), g)


def _swissroll(n: int, g: torch.Generator | None) -> torch.Tensor:
    # make_swiss_roll(noise=1.0) keeping coordinates (x, z) = (t cos t, t sin t) + N(0, 1), then / 5.
    t = 1.5 * math.pi * (1.0 + 2.0 * _uniform((n,), g))
    _uniform((n,), g)  # the roll's height (unused coordinate), drawn to mirror make_swiss_roll
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + _normal((n, 2), g)  # (n, 2)
    return pts / 5.0


def inverse_sine(
    n: int,
    *,
    noise: float = 0.05,
    noise_dist: str = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Bishop's inverse problem: ``y ~ U(0, 1)``, ``x = y + 0.3 sin(2π y) + ε``; returns points ``(x, y)``.

    The forward map ``y ↦ x`` is single-valued, its inverse is not: for ``x ∈ (0.407, 0.593)`` there are three
    branches of ``y`` (at ``x = 0.5``: ``y ≈ 0.21, 0.50, 0.79``), so ``p(y | x)`` is multimodal and a
    least-squares fit, which estimates ``E[y | x]``, averages across them (Bishop 1994 Sec. 3, Fig. 2-7).
    Bishop used ``ε ~ U(-0.1, 0.1)`` (``noise=0.1, noise_dist="uniform"``, standard deviation 0.058).

    Args:
        n: number of points. noise: standard deviation of Gaussian ``ε`` (``noise_dist="gaussian"``) or the
            half-width of uniform ``ε`` (``"uniform"``); ``>= 0``.
        generator: draws ``y`` and ``ε``. device, dtype: of the result (computed in float64 and cast).

    Returns:
        ``(n, 2)`` tensor, columns ``(x, y)``.

    References:
        Mixture Density Networks. Bishop, 1994. NCRG/94/004, Sec. 3.
    """
    n = check_int("n", n, min=1)
    noise = check_float("noise", noise, min=0.0)
    check_choice("noise_dist", noise_dist, ("gaussian", "uniform"))
    generator = check_generator(generator)
    y = rand((n,), generator=generator, device=device, dtype=torch.float64)
    if noise_dist == "gaussian":
        eps = noise * randn((n,), generator=generator, device=device, dtype=torch.float64)
    else:
        eps = noise * (2 * rand((n,), generator=generator, device=device, dtype=torch.float64) - 1)
    x = y + 0.3 * torch.sin(2 * math.pi * y) + eps
    return torch.stack([x, y], dim=1).to(dtype)


def _inverse_sine(n: int, g: torch.Generator | None) -> torch.Tensor:
    # The "inverse_sine" set: Bishop's inverse problem with N(0, 0.05^2) noise, for mixture density networks.
    return inverse_sine(n, generator=g, dtype=_F64)


_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], torch.Tensor]] = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "circles": _circles,
    "rings": _rings,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "swissroll": _swissroll,
    "inverse_sine": _inverse_sine,
}


def sample(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n`` i.i.d. points from the 2-D toy distribution ``name``.

    The sets and their approximate extent (FFJORD's scalings):

    ========== =====================================================================
    moons        two interleaved half circles (noise 0.1), ``* 2 + (-1, -0.2)``; ~[-3, 3] x [-2, 2]
    8gaussians   8 modes at radius ``4 / 1.414`` on 45-degree steps, std ``0.5 / 1.414``
    checkerboard uniform on 8 alternate unit squares of a 4x4 board, scaled to [-4, 4]^2
    circles      radii 3 and 1.5, Gaussian noise std 0.24
    rings        radii 3, 2.25, 1.5, 0.75, Gaussian noise std 0.08
    pinwheel     5 curved arms (radial std 0.3, tangential 0.1), times 2
    2spirals     two mirrored spirals of 1.5 turns, noise std 0.1
    swissroll    the (x, z) plane of the Swiss roll with noise 1, divided by 5
    ========== =====================================================================

    Args:
        name: one of :data:`NAMES`.
        n: number of points, ``>= 1``.
        generator: the source of randomness; points are drawn on its device.
        device: device of the result (default: the generator's device, else CPU).
        dtype: floating dtype of the result; the points are computed in float64 and cast.

    Returns:
        Tensor of shape ``(n, 2)``.

    Raises:
        ValueError: unknown ``name`` (the message lists :data:`NAMES`) or ``n < 1``.
        TypeError: ``n`` not an int, ``dtype`` not a floating dtype, ``generator`` not a Generator.

    References:
        FFJORD (Grathwohl et al., 2018), arXiv:1810.01367.
    """
    check_choice("name", name, NAMES)
    n = check_int("n", n, min=1)
    check_generator(generator)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    pts = _SAMPLERS[name](n, generator)
    return pts.to(device=device if device is not None else pts.device, dtype=dtype)
