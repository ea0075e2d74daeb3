"""NCSN: score network, ladder, denoising score matching loss, annealed Langevin step and sampler.

Oracles use Gaussian data ``N(μ, Σ)`` in float64, whose noisy law ``N(μ, Σ + σ² I)`` has the exact score
``-(Σ + σ² I)⁻¹ (x - μ)``. With it every step of annealed Langevin dynamics is affine-Gaussian, so the exact law
of the sampler's output after ``T`` steps per level follows from a 2x2 recursion (:func:`chain_law`): the
sampler must match it within Monte Carlo error, and it converges to the data as ``T`` grows.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.blocks import ResMLP, UNet
from edifice.generative import ncsn
from edifice.integrators.sde import langevin_step
from edifice.schedules import geometric_sigmas

F64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=F64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64)
EYE = torch.eye(2, dtype=F64)
LADDER = geometric_sigmas(10, sigma_min=0.01, sigma_max=3.0)  # the paper's σ_L = 0.01, ε = 2e-5
EPS = 2e-5


class GaussianScore:
    """Exact score of N(mu, cov + σ² I), evaluated in cov's eigenbasis (records its calls if asked)."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, *, record: bool = False):
        self.mu, self.record = mu, record
        self.lam, self.q = torch.linalg.eigh(cov)
        self.calls: list[torch.Tensor] = []
        self.xs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.record:
            self.calls.append(sigma.clone())
            self.xs.append(x.clone())
        flat = x.reshape(x.shape[0], self.mu.numel())  # (B, D)
        r = (flat - self.mu) @ self.q  # (B, D) in the eigenbasis
        return (-(r / (self.lam + sigma[:, None] ** 2)) @ self.q.T).reshape(x.shape)


def chain_law(ladder, steps, eps, *, denoise=True, mu=MU, cov=COV):
    """Exact mean and covariance of annealed Langevin with the exact score (affine-Gaussian recursion)."""
    eye = torch.eye(mu.numel(), dtype=F64)
    m, c = torch.zeros_like(mu), ladder[0] ** 2 * eye
    for s, a in zip(ladder, eps * (ladder / ladder[-1]) ** 2):
        A = eye - a * torch.linalg.inv(cov + s**2 * eye)
        for _ in range(steps):
            m, c = mu + A @ (m - mu), A @ c @ A.T + 2 * a * eye
    if denoise:
        D = eye - ladder[-1] ** 2 * torch.linalg.inv(cov + ladder[-1] ** 2 * eye)
        m, c = mu + D @ (m - mu), D @ c @ D.T
    return m, c


def tweedie_target(ladder, *, denoise=True):
    """Law of the output if the chain were exactly at N(μ, Σ + σ_L² I) before the (optional) denoising step."""
    c = COV + ladder[-1] ** 2 * EYE
    return COV @ torch.linalg.inv(c) @ COV if denoise else c


def moments(x):
    mean = x.mean(0)
    return mean, (x - mean).T @ (x - mean) / (x.shape[0] - 1)


def within_mc(x, m, c, k=5.0):
    """Empirical mean / covariance of x agree with (m, c) within k standard errors, elementwise."""
    n = x.shape[0]
    mean, cov = moments(x)
    d = c.diagonal()
    se_cov = ((d[:, None] * d[None, :] + c**2) / n).sqrt()
    return bool(((mean - m).abs() < k * (d / n).sqrt()).all()) and bool(((cov - c).abs() < k * se_cov).all())


def tiny_net(**kw):
    torch.manual_seed(0)
    return ncsn.build(data_shape=(2,), hidden=16, depth=1, **kw)


# ----------------------------------------------------------------------------- network and ladder


def test_build_returns_score_network_with_scaled_backbone():
    net = tiny_net(num_classes=3, sigma_min=0.02, sigma_max=2.0, num_scales=5)
    assert isinstance(net, ncsn.NCSNScore) and isinstance(net.backbone, ResMLP)
    assert net.backbone.config["time_features"] == "fourier" and net.backbone.config["t_scale"] == 1.0
    assert (net.sigma_min, net.sigma_max, net.num_scales) == (0.02, 2.0, 5)
    x, sigma, y = torch.randn(4, 2), torch.tensor([0.02, 0.1, 1.0, 2.0]), torch.tensor([0, 1, 2, 3])
    expected = net.backbone(x, sigma.log(), y=y) / sigma[:, None]
    torch.testing.assert_close(net(x, sigma, y=y), expected, rtol=0, atol=0)
    torch.testing.assert_close(net(x, 0.5), net(x, torch.full((4,), 0.5)))  # a number is broadcast
    # config rebuilds the same architecture; the state dict carries the weights
    clone = ncsn.NCSNScore(**net.config)
    clone.load_state_dict(net.state_dict())
    torch.testing.assert_close(clone(x, sigma, y=y), net(x, sigma, y=y))
    assert net.config["sigma_max"] == 2.0 and net.config["data_shape"] == (2,)


def test_build_image_network():
    net = ncsn.build(data_shape=(1, 8, 8), base_channels=8, channel_mults=(1, 2))
    assert isinstance(net.backbone, UNet)
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 1.0])).shape == (2, 1, 8, 8)


@given(n=st.integers(1, 40), lo=st.floats(1e-3, 1.0), ratio=st.floats(1.01, 1e3))
def test_ladder_is_geometric(n, lo, ratio):
    hi = lo * ratio
    s = ncsn.sigmas({"sigma_min": lo, "sigma_max": hi, "num_scales": n, "hidden": 3})
    assert s.shape == (n,) and s.dtype == F64
    assert math.isclose(s[0].item(), hi, rel_tol=1e-12)
    if n > 1:
        assert math.isclose(s[-1].item(), lo, rel_tol=1e-12)
        assert bool((s[1:] < s[:-1]).all())
        r = s[1:] / s[:-1]
        torch.testing.assert_close(r, torch.full_like(r, (lo / hi) ** (1 / (n - 1))), rtol=1e-10, atol=0)


def test_ladder_sources_and_overrides():
    net = tiny_net(sigma_min=0.05, sigma_max=5.0, num_scales=4)
    torch.testing.assert_close(ncsn.sigmas(net), geometric_sigmas(4, sigma_min=0.05, sigma_max=5.0))
    torch.testing.assert_close(ncsn.sigmas(), geometric_sigmas(10, sigma_min=0.01, sigma_max=1.0))
    torch.testing.assert_close(ncsn.sigmas({}), ncsn.sigmas())
    finer = ncsn.sigmas(net, num_scales=7, dtype=torch.float32)
    assert finer.dtype == torch.float32 and finer.shape == (7,) and math.isclose(finer[-1].item(), 0.05, rel_tol=1e-6)


@given(n=st.integers(1, 20), lr=st.floats(1e-7, 1.0))
def test_step_sizes_formula(n, lr):
    ladder = geometric_sigmas(n, sigma_min=0.01, sigma_max=2.0)
    a = ncsn.step_sizes(ladder, lr)
    torch.testing.assert_close(a, lr * ladder**2 / ladder[-1] ** 2, rtol=1e-12, atol=0)
    assert math.isclose(a[-1].item(), lr, rel_tol=1e-12)
    assert bool((a[1:] < a[:-1]).all()) and bool((a > 0).all())
    torch.testing.assert_close(ncsn.step_sizes(ladder.tolist(), lr), a)


# ----------------------------------------------------------------------------- annealed Langevin step


@given(seed=st.integers(0, 2**16), a=st.floats(1e-6, 1.0))
def test_annealed_langevin_step_formula(seed, a):
    g = torch.Generator().manual_seed(seed)
    x, s, z = (torch.randn(3, 4, generator=g, dtype=F64) for _ in range(3))
    out = ncsn.annealed_langevin_step(x, s, a, z)
    torch.testing.assert_close(out, x + a * s + math.sqrt(2 * a) * z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, langevin_step(x, s, a, z))
    # per-sample step sizes act row by row
    per = torch.tensor([a, 2 * a, 3 * a], dtype=F64)
    rows = torch.stack([ncsn.annealed_langevin_step(x[i:i + 1], s[i:i + 1], float(per[i]), z[i:i + 1])[0]
                        for i in range(3)])
    torch.testing.assert_close(ncsn.annealed_langevin_step(x, s, per, z), rows)


def test_langevin_step_keeps_a_gaussian_nearly_invariant():
    # ULA on N(0, v) with step a has stationary variance v / (1 - a / (2 v)); check one step of the recursion.
    v, a = 0.7, 1e-3
    stationary = v / (1 - a / (2 * v))
    x = math.sqrt(stationary) * torch.randn(200000, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    z = torch.randn(200000, 1, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = ncsn.annealed_langevin_step(x, -x / v, a, z)
    assert abs(out.var().item() / stationary - 1) < 4 * math.sqrt(2 / 200000)


# ----------------------------------------------------------------------------- loss


def test_loss_value_and_reduction():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ladder = torch.tensor([2.0, 0.5, 0.1], dtype=F64)
    idx = torch.tensor([0, 1, 2, 2, 1, 0])
    seen = {}

    def net(xt, sigma):
        seen["x"], seen["sigma"] = xt, sigma
        return 0.3 * xt - 1.0

    value, logs = ncsn.loss(net, x, sigmas=ladder, noise=z, sigma_index=idx)
    sig = ladder[idx][:, None]
    torch.testing.assert_close(seen["sigma"], ladder[idx])
    torch.testing.assert_close(seen["x"], x + sig * z)
    expected = 0.5 * ((sig * (0.3 * (x + sig * z) - 1.0) + z) ** 2).sum(1).mean()  # sum over dims, mean over batch
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    assert set(logs) == {"loss"} and not logs["loss"].requires_grad
    # a zero score leaves ½ ‖z‖², whatever the level; an int index is broadcast
    zero, _ = ncsn.loss(lambda xt, s: torch.zeros_like(xt), x, sigmas=[1.0], noise=z, sigma_index=0)
    torch.testing.assert_close(zero, 0.5 * (z**2).sum(1).mean())


def test_loss_draws_levels_uniformly_from_the_nets_ladder():
    net = tiny_net(num_scales=4)
    seen = []
    ladder = ncsn.sigmas(net, dtype=torch.float32)

    def spy(xt, sigma):
        seen.append(sigma)
        return net(xt, sigma)

    spy.sigma_min, spy.sigma_max, spy.num_scales = net.sigma_min, net.sigma_max, net.num_scales
    ncsn.loss(spy, torch.zeros(4000, 2), generator=torch.Generator().manual_seed(0))
    sig = seen[0]
    hits = (sig[:, None] == ladder[None, :]).float()  # (B, L)
    assert bool((hits.sum(1) == 1).all())
    assert ((hits.mean(0) - 0.25).abs() < 4 * math.sqrt(0.25 * 0.75 / 4000)).all()


def test_loss_backprops_and_is_deterministic():
    net = tiny_net(num_classes=2)
    x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    value, _ = ncsn.loss(net, x, generator=torch.Generator().manual_seed(3), cond={"y": y})
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    again, _ = ncsn.loss(net, x, generator=torch.Generator().manual_seed(3), cond={"y": y})
    assert again.item() == value.item()


def _loss_chunks(score, sigma_index, chunks=20, n=1000, seed=0):
    vals = []
    for k in range(chunks):
        g = torch.Generator().manual_seed(seed + k)
        x = MU + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(COV).T
        vals.append(ncsn.loss(score, x, sigmas=LADDER, sigma_index=sigma_index, generator=g)[0])
    return torch.stack(vals)


def test_loss_at_the_exact_score_is_the_irreducible_minimum():
    exact = GaussianScore(MU, COV)
    # E ½ ‖σ s*(x̃) + z‖² = ½ tr(Σ (Σ + σ² I)⁻¹) at every level: the loss cannot reach 0
    for i in (0, 5, 9):
        vals = _loss_chunks(exact, i)
        target = 0.5 * torch.trace(COV @ torch.linalg.inv(COV + LADDER[i] ** 2 * EYE))
        se = vals.std() / math.sqrt(vals.numel())
        assert abs(vals.mean() - target) < 4 * se, (i, vals.mean().item(), target.item())
    # any other score costs more, by ½ σ² E‖h‖² for s = s* + h (same random numbers for all)
    base = _loss_chunks(exact, None)
    shift = torch.tensor([0.2, -0.1], dtype=F64)
    perturbed = {
        "shift": lambda x, s: exact(x, s) + shift,
        "scale": lambda x, s: 1.1 * exact(x, s),
        "wrong_mean": GaussianScore(MU + 0.1, COV),
        "wrong_cov": GaussianScore(MU, 2.0 * COV),
        "wrong_level": lambda x, s: exact(x, 1.5 * s),
    }
    for name, fn in perturbed.items():
        excess = _loss_chunks(fn, None) - base
        assert excess.mean() > 4 * excess.std() / math.sqrt(excess.numel()), name
    excess = (_loss_chunks(perturbed["shift"], None) - base).mean()
    expected = 0.5 * (LADDER**2).mean() * shift.square().sum()
    assert abs(excess / expected - 1) < 0.1, (excess.item(), expected.item())


# ----------------------------------------------------------------------------- sampler: exact law oracle


@pytest.mark.parametrize("steps,denoise", [(5, True), (40, True), (40, False)])
def test_sampler_matches_the_exact_law_of_annealed_langevin(steps, denoise):
    score = GaussianScore(MU, COV)
    x = ncsn.sample(score, (20000, 2), sigmas=LADDER, steps_per_level=steps, step_lr=EPS, denoise=denoise,
                    generator=torch.Generator().manual_seed(steps), dtype=F64)
    assert x.dtype == F64 and x.shape == (20000, 2)
    m, c = chain_law(LADDER, steps, EPS, denoise=denoise)
    assert within_mc(x, m, c), (moments(x), (m, c))
    # the check has power: the law of half the steps (or of the paper's halved step x + α/2 s + √α z) is rejected
    assert not within_mc(x, *chain_law(LADDER, steps // 2, EPS, denoise=denoise))
    assert not within_mc(x, *chain_law(LADDER, steps, EPS / 2, denoise=denoise))


def test_exact_law_converges_to_the_data_as_steps_per_level_grow():
    target = tweedie_target(LADDER)
    errs = [(chain_law(LADDER, t, EPS)[1] - target).abs().max().item() for t in (1, 2, 5, 10, 20, 50, 100, 200)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.015
    # the denoised target is the data law up to O(σ_L²)
    assert (target - COV).abs().max() < 2 * LADDER[-1] ** 2


def test_sampler_recovers_the_data_with_error_shrinking_in_steps_per_level():
    errs = []
    for steps in (5, 20, 200):
        x = ncsn.sample(GaussianScore(MU, COV), (20000, 2), sigmas=LADDER, steps_per_level=steps, step_lr=EPS,
                        generator=torch.Generator().manual_seed(10), noise=None, dtype=F64)
        mean, cov = moments(x)
        errs.append(max((mean - MU).abs().max().item(), (cov - COV).abs().max().item()))
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.03, errs


def test_sampler_on_image_shaped_isotropic_data():
    m = torch.tensor([0.5, -1.0, 0.0, 1.0], dtype=F64)
    score = GaussianScore(m, 0.25 * torch.eye(4, dtype=F64))
    ladder = geometric_sigmas(6, sigma_min=0.05, sigma_max=3.0)
    x = ncsn.sample(score, (4000, 1, 2, 2), sigmas=ladder, steps_per_level=50, step_lr=1e-3,
                    generator=torch.Generator().manual_seed(0), dtype=F64)
    assert x.shape == (4000, 1, 2, 2)
    mm, cc = chain_law(ladder, 50, 1e-3, mu=m, cov=0.25 * torch.eye(4, dtype=F64))
    assert within_mc(x.reshape(4000, 4), mm, cc)


# ----------------------------------------------------------------------------- sampler: mechanics


def test_sampler_schedule_calls_and_start():
    score = GaussianScore(MU, COV, record=True)
    ladder = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    events = []
    ncsn.sample(score, (5, 2), sigmas=ladder, steps_per_level=4, noise=noise, callback=events.append,
                generator=torch.Generator().manual_seed(1))
    assert len(score.calls) == 3 * 4 + 1  # L T + 1 (denoise)
    levels = torch.stack([c[0] for c in score.calls])
    torch.testing.assert_close(levels, torch.tensor([2.0] * 4 + [1.0] * 4 + [0.5] * 5, dtype=F64))
    assert all(c.shape == (5,) and bool((c == c[0]).all()) for c in score.calls)
    torch.testing.assert_close(score.xs[0], 2.0 * noise)  # x ~ N(0, σ_1² I)
    assert [e["i"] for e in events] == list(range(12)) and [e["level"] for e in events] == [0] * 4 + [1] * 4 + [2] * 4
    assert [e["t"].item() for e in events] == [2.0] * 4 + [1.0] * 4 + [0.5] * 4
    torch.testing.assert_close(events[-1]["x"], score.xs[-1])  # the denoising step starts from the last state
    score.calls.clear()
    ncsn.sample(score, (5, 2), sigmas=ladder, steps=2, denoise=False, noise=noise)
    assert len(score.calls) == 3 * 2


def test_sampler_steps_alias_determinism_and_dtypes():
    score = GaussianScore(MU, COV)
    kw = dict(sigmas=LADDER.tolist(), step_lr=1e-3)
    a = ncsn.sample(score, (3, 2), steps=3, generator=torch.Generator().manual_seed(0), dtype=F64, **kw)
    b = ncsn.sample(score, (3, 2), steps_per_level=3, generator=torch.Generator().manual_seed(0), dtype=F64, **kw)
    assert torch.equal(a, b) and a.dtype == F64
    net = tiny_net(num_scales=3)
    x = ncsn.sample(net, (4, 2), steps_per_level=2, generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (4, 2) and torch.isfinite(x).all()
    assert ncsn.sample(net.double(), (4, 2), steps_per_level=2).dtype == F64
    y = ncsn.sample(tiny_net(num_scales=3, num_classes=2), (2, 2), steps_per_level=1, cond={"y": torch.tensor([0, 1])})
    assert y.shape == (2, 2)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(sigma_min=1.0, sigma_max=1.0), ValueError, "sigma_min must be < sigma_max"),
    (dict(sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min must be < sigma_max"),
    (dict(sigma_min=0.0), ValueError, "sigma_min must be in"),
    (dict(sigma_max=float("nan")), ValueError, "sigma_max must be finite"),
    (dict(num_scales=0), ValueError, "num_scales must be a positive int, got 0"),
    (dict(num_scales=2.0), TypeError, "num_scales must be an int"),
    (dict(hidden=0), ValueError, "hidden"),
    (dict(data_shape=(2, 3)), ValueError, "data_shape"),
])
def test_build_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ncsn.build(**{"data_shape": (2,), **kwargs})


def test_forward_and_ladder_errors():
    net = tiny_net()
    with pytest.raises(ValueError, match=r"sigma must have shape \(3,\)"):
        net(torch.randn(3, 2), torch.ones(2))
    with pytest.raises(TypeError, match="net_or_options must be"):
        ncsn.sigmas("vp")
    with pytest.raises(ValueError, match="num_scales must be a positive int"):
        ncsn.sigmas(net, num_scales=0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        ncsn.sigmas({"sigma_min": 2.0})
    with pytest.raises(ValueError, match="step_lr must be in"):
        ncsn.step_sizes([1.0, 0.1], 0.0)


BAD_LADDERS = [
    ([1.0, 2.0], ValueError, "strictly descending"),
    ([1.0, 1.0], ValueError, "strictly descending"),
    ([1.0, 0.0], ValueError, "finite and positive"),
    ([1.0, -0.1], ValueError, "finite and positive"),
    ([float("nan"), 0.1], ValueError, "finite and positive"),
    ([], ValueError, "non-empty 1-D"),
    (torch.ones(2, 2), ValueError, "non-empty 1-D"),
    (torch.tensor([3, 2, 1]), TypeError, "floating point"),
    ([1.0, "a"], TypeError, "sequence of numbers"),
    ("1.0", TypeError, "sigmas must be a 1-D tensor"),
]


@pytest.mark.parametrize("ladder, exc, match", BAD_LADDERS)
def test_bad_sigmas_are_rejected_everywhere(ladder, exc, match):
    score = GaussianScore(MU, COV)
    with pytest.raises(exc, match=match):
        ncsn.loss(score, torch.zeros(2, 2, dtype=F64), sigmas=ladder)
    with pytest.raises(exc, match=match):
        ncsn.sample(score, (2, 2), sigmas=ladder)
    with pytest.raises(exc, match=match):
        ncsn.step_sizes(ladder, 1e-3)


def test_plain_callable_needs_sigmas():
    with pytest.raises(ValueError, match="sigmas must be given"):
        ncsn.loss(GaussianScore(MU, COV), torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="sigmas must be given"):
        ncsn.sample(GaussianScore(MU, COV), (2, 2))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(x=torch.zeros(3)), ValueError, r"x must be a batch"),
    (dict(x=[[0.0, 0.0]]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.zeros(3, 2, dtype=torch.long)), TypeError, "x must be a floating-point tensor"),
    (dict(noise=torch.zeros(3, 3)), ValueError, r"noise must have shape \(3, 2\)"),
    (dict(sigma_index=3), ValueError, r"sigma_index must be in \[0, 3\)"),
    (dict(sigma_index=torch.tensor([0, -1, 0])), ValueError, r"sigma_index must be in \[0, 3\)"),
    (dict(sigma_index=torch.zeros(3)), TypeError, "sigma_index must be an int"),
    (dict(sigma_index=torch.zeros(2, dtype=torch.long)), ValueError, r"sigma_index must have shape \(3,\)"),
    (dict(cond=[1]), TypeError, "cond must be a mapping"),
    (dict(generator=0), TypeError, "generator must be a torch.Generator"),
    (dict(net=lambda x, s: x[:, :1]), ValueError, "net must return a score shaped like x"),
])
def test_loss_errors(kwargs, exc, match):
    args = {"net": GaussianScore(MU, COV), "x": torch.zeros(3, 2, dtype=F64), "sigmas": [1.0, 0.5, 0.1], **kwargs}
    net, x = args.pop("net"), args.pop("x")
    with pytest.raises(exc, match=match):
        ncsn.loss(net, x, **args)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(score=torch.zeros(3, 3)), ValueError, r"score must have shape \(3, 2\)"),
    (dict(noise=torch.zeros(2, 2)), ValueError, r"noise must have shape \(3, 2\)"),
    (dict(x=torch.zeros(3, 2, dtype=torch.long)), TypeError, "x must be a floating-point tensor"),
    (dict(step_size=0.0), ValueError, "step_size must be in"),
    (dict(step_size=-1e-3), ValueError, "step_size must be in"),
    (dict(step_size="a"), TypeError, "step_size must be a number"),
    (dict(step_size=torch.ones(2)), ValueError, r"step_size must be a number, a 0-dim tensor or have shape \(3,\)"),
])
def test_annealed_langevin_step_errors(kwargs, exc, match):
    args = {"x": torch.zeros(3, 2), "score": torch.zeros(3, 2), "step_size": 1e-3, "noise": torch.zeros(3, 2),
            **kwargs}
    with pytest.raises(exc, match=match):
        ncsn.annealed_langevin_step(**args)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(steps_per_level=0), ValueError, "steps_per_level must be a positive int, got 0"),
    (dict(steps=0), ValueError, "steps must be a positive int, got 0"),
    (dict(steps=1.5), TypeError, "steps must be an int"),
    (dict(steps=2, steps_per_level=2), ValueError, "give steps or steps_per_level, not both"),
    (dict(step_lr=0.0), ValueError, "step_lr must be in"),
    (dict(step_lr=-1.0), ValueError, "step_lr must be in"),
    (dict(denoise=1), TypeError, "denoise must be a bool"),
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(noise=torch.zeros(2, 3)), ValueError, r"noise must have shape \(2, 2\)"),
    (dict(shape=(2, 0)), ValueError, "shape must be a non-empty tuple of positive ints"),
    (dict(net=3), TypeError, "net must be callable"),
    (dict(dtype=torch.long), TypeError, "dtype must be a floating torch.dtype"),
    (dict(generator="seed"), TypeError, "generator must be a torch.Generator"),
    (dict(cond=3), TypeError, "cond must be a mapping"),
    (dict(net=lambda x, s: x.sum(1)), ValueError, "net must return a score shaped like x"),
])
def test_sample_errors(kwargs, exc, match):
    args = {"net": GaussianScore(MU, COV), "shape": (2, 2), "sigmas": [1.0, 0.1], "steps_per_level": None, **kwargs}
    net, shape = args.pop("net"), args.pop("shape")
    with pytest.raises(exc, match=match):
        ncsn.sample(net, shape, **args)


def test_loss_and_sample_follow_the_device(device):
    net = tiny_net(num_scales=3).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    value, _ = ncsn.loss(net, torch.randn(4, 2, device=device), generator=g)
    assert value.device.type == device.type
    x = ncsn.sample(net, (4, 2), steps_per_level=2, generator=g)
    assert x.device.type == device.type and x.dtype == torch.float32
