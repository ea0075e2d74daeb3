"""2-D toy sets: shapes, determinism, FFJORD scalings (checked against scikit-learn and W2 numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edifice.data import toy2d
from edifice.metrics import w2


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_shape_dtype_device_and_finite(name, device):
    x = toy2d.sample(name, 257, generator=_gen(), device=device)
    assert x.shape == (257, 2) and x.dtype == torch.float32 and x.device.type == device.type
    assert torch.isfinite(x).all()
    assert toy2d.sample(name, 3, dtype=torch.float64).dtype == torch.float64
    assert toy2d.sample(name, 1).shape == (1, 2)


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_same_generator_same_bits(name):
    a = toy2d.sample(name, 100, generator=_gen(3))
    b = toy2d.sample(name, 100, generator=_gen(3))
    c = toy2d.sample(name, 100, generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # float64 and float32 draws of one seed are the same points up to rounding
    d = toy2d.sample(name, 100, generator=_gen(3), dtype=torch.float64)
    torch.testing.assert_close(d.float(), a)


def test_moons_mean_and_ranges():
    x = toy2d.sample("moons", 20000, generator=_gen()).double()
    # make_moons has mean (0.5, 0.25); * 2 + (-1, -0.2) -> (0, 0.3)
    torch.testing.assert_close(x.mean(0), torch.tensor([0.0, 0.3], dtype=torch.float64), atol=0.04, rtol=0)
    lo, hi = x.min(0).values, x.max(0).values
    assert -3.7 < lo[0] < -3.0 and 3.0 < hi[0] < 3.7
    assert -2.4 < lo[1] < -1.3 and 1.9 < hi[1] < 2.7


def test_8gaussians_modes():
    x = toy2d.sample("8gaussians", 16000, generator=_gen()).double()
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 4.0 / 1.414 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)  # (8, 2)
    k = torch.cdist(x, centres).argmin(1)
    counts = torch.bincount(k, minlength=8).double() / x.shape[0]
    torch.testing.assert_close(counts, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.015, rtol=0)
    resid = x - centres[k]
    torch.testing.assert_close(resid.std(0), torch.full((2,), 0.5 / 1.414, dtype=torch.float64), atol=0.02, rtol=0)


def test_checkerboard_alternate_squares():
    x = toy2d.sample("checkerboard", 8000, generator=_gen()).double()
    assert x.min() >= -4.0 and x.max() <= 4.0
    cells = torch.floor(x / 2.0).long()  # 4x4 board of 2x2 squares
    assert ((cells.sum(1) % 2) == 0).all()
    counts = torch.bincount((cells[:, 0] + 2) * 4 + (cells[:, 1] + 2), minlength=16)
    assert (counts > 0).sum() == 8


@pytest.mark.parametrize(("name", "radii", "noise"), [
    ("circles", [3.0, 1.5], 0.24),
    ("rings", [3.0, 2.25, 1.5, 0.75], 0.08),
])
def test_concentric_radii(name, radii, noise):
    x = toy2d.sample(name, 20000, generator=_gen()).double()
    r = x.norm(dim=1)
    centres = torch.tensor(radii, dtype=torch.float64)
    k = (r[:, None] - centres).abs().argmin(1)
    for i, c in enumerate(radii):
        ri = r[k == i]
        assert abs(float(ri.mean()) - c) < 0.05
        assert abs(float(ri.std()) - noise) < 0.03
        assert abs(ri.numel() / r.numel() - 1 / len(radii)) < 0.02


def test_pinwheel_and_spirals_are_centred():
    for name in ("pinwheel", "2spirals"):
        x = toy2d.sample(name, 20000, generator=_gen()).double()
        assert x.mean(0).abs().max() < 0.06
        assert 2.0 < x.abs().max() < 5.0


def _sklearn(name: str, n: int, seed: int) -> torch.Tensor:
    ds = pytest.importorskip("sklearn.datasets")
    if name == "moons":
        d = ds.make_moons(n_samples=n, noise=0.1, random_state=seed)[0] * 2 + np.array([-1.0, -0.2])
    elif name == "circles":
        d = ds.make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=seed)[0] * 3
    else:
        d = ds.make_swiss_roll(n_samples=n, noise=1.0, random_state=seed)[0][:, [0, 2]] / 5
    return torch.from_numpy(d)


@pytest.mark.parametrize("name", ["moons", "circles", "swissroll"])
def test_matches_sklearn_distribution(name):
    # FFJORD builds these from scikit-learn; ours must be the same distribution. At n = 1000 the
    # W2 to sklearn's sample is 0.15-0.3, while moons without the "* 2" gives ~1.0 and circles or
    # swissroll scaled by 1.15 give 0.33-0.45 (seeds are fixed, so the test is deterministic).
    ours = toy2d.sample(name, 1000, generator=_gen(1), dtype=torch.float64)
    ref = _sklearn(name, 1000, seed=1)
    assert float(w2(ours, ref)) < 0.33


def test_w2_reference_numbers_moons_8gaussians():
    # FACTS (n = 2000): W2(N(0, I), moons) ~ 1.0, W2(N(0, I), 8gaussians) ~ 1.65; two fresh samples of
    # 8gaussians ~ 0.3. We use n = 1000 to keep the Hungarian solves fast: there the Gaussian
    # distances are 0.97-1.02 and 1.64-1.70, and two fresh i.i.d. samples give 0.15-0.28 (moons)
    # and 0.34-0.46 (8gaussians). (FACTS' 0.09 for moons comes from sklearn's make_moons, which
    # places points on a grid; i.i.d. draws give 0.12-0.17 at n = 2000.)
    g = _gen(0)
    for name, self_range, gauss_ref in [("moons", (0.1, 0.33), 1.0), ("8gaussians", (0.25, 0.55), 1.65)]:
        a = toy2d.sample(name, 1000, generator=g)
        b = toy2d.sample(name, 1000, generator=g)
        z = torch.randn(1000, 2, generator=g)
        assert self_range[0] < float(w2(a, b)) < self_range[1], name
        assert abs(float(w2(a, z)) - gauss_ref) < 0.1, name


def test_errors():
    with pytest.raises(ValueError, match=r"name must be one of 'moons', '8gaussians'.*got 'moon'"):
        toy2d.sample("moon", 10)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        toy2d.sample("moons", 0)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        toy2d.sample("moons", 10.0)
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        toy2d.sample("moons", 10, dtype=torch.int64)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None"):
        toy2d.sample("moons", 10, generator=0)
