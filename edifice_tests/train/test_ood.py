"""Out-of-distribution detection with trained runs (edifice.train.ood).

Closed-form oracles check each family's conversion to a denoiser; tiny training runs check that the scores
detect shifted data; bad requests raise naming the family and what applies.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from edifice import data
from edifice.metrics.ood import auroc
from edifice.schedules import make_schedule
from edifice.schedules.sde import make_sde
from edifice.train import RECIPES, fit, get_recipe
from edifice.train.ood import (
    SCORES, anomaly_scores, applicable_scores, denoiser, likelihood_inputs, ood_report, ood_shifts,
)

S2 = 0.7**2  # variance of the Gaussian data N(0, S2 I) of the oracles


def _exact(x, sigma):
    """E[x0 | x0 + sigma n = x] for x0 ~ N(0, S2 I)."""
    return S2 / (S2 + sigma**2) * x


def _col(v, x):
    return v.reshape(-1, *([1] * (x.ndim - 1)))


# --------------------------------------------------------------------------------------------- oracles


def _ddpm_oracle(schedule, target, learn_sigma=False):
    """The exact DDPM network output for N(0, S2) data at fractional steps (sigma interpolated linearly between
    integer steps, as edifice.generative.edm.vp_denoiser reads it)."""
    table = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()  # (T,) float64

    class Net:
        def __init__(self):
            self.learn_sigma = learn_sigma

        def __call__(self, x_t, t):
            k = t.floor().long().clamp(0, table.numel() - 2)
            sig = table[k] + (t - k) * (table[k + 1] - table[k])
            ab = _col(1 / (1 + sig**2), x_t)
            x0 = ab.sqrt() * S2 * x_t / (ab * S2 + 1 - ab)  # E[x0 | x_t]
            eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
            out = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[target]
            return torch.cat([out, torch.full_like(out, 7.0)], 1) if learn_sigma else out

    return Net()


def _flow_velocity(sigma_min=0.0):
    def v(x_t, t):  # x_t = a n + t x1, a = 1 - (1 - sm) t: E[x1 - (1 - sm) n | x_t]
        t = _col(t, x_t)
        a = 1 - (1 - sigma_min) * t
        return (t * S2 - (1 - sigma_min) * a) * x_t / (a**2 + t**2 * S2)

    return v


def _interpolant_net(kind, a, objective):
    from edifice.generative import interpolant as si

    def net(x_t, t):
        c = si.coefficients(t, kind=kind, gamma_scale=a)
        sig2, beta = _col(c.alpha**2 + c.gamma**2, x_t), _col(c.beta, x_t)
        eta = sig2.sqrt() * x_t / (sig2 + beta**2 * S2)  # E[eps | x_t], x_t = beta x1 + sig eps
        return eta if objective == "denoiser" else si.velocity_from_denoiser(eta, x_t, t, kind=kind, gamma_scale=a)

    return net


def _score_net(sde):
    class Net:
        def __init__(self):
            self.sde = sde

        def __call__(self, x_t, t):
            return -x_t / _col(sde.scale(t) ** 2 * S2 + sde.std(t) ** 2, x_t)

    return Net()


def _meanflow_net(z, r, t):
    assert torch.equal(r, t), "the reconstruction uses the instantaneous velocity u(z, t, t)"
    t = _col(t, z)
    return (t - (1 - t) * S2) * z / ((1 - t) ** 2 * S2 + t**2)  # E[n - x | z], z = (1 - t) x + t n


def _shortcut_net(x_t, t, d):
    assert bool((d == 0).all()), "the reconstruction uses the step size 0 (the flow-matching velocity)"
    return _flow_velocity()(x_t, t)


_ORACLES = {
    "edm": lambda: (lambda x, sigma: _exact(x, _col(sigma, x)), {}),
    "consistency": lambda: (lambda x, sigma: _exact(x, _col(sigma, x)), {}),
    "ncsn": lambda: (lambda x, sigma: -x / _col(S2 + sigma**2, x), {}),
    "ddpm/eps": lambda: (_ddpm_oracle(make_schedule("linear", 1000), "eps"),
                         {"schedule": "linear", "T": 1000, "target": "eps"}),
    "ddpm/v": lambda: (_ddpm_oracle(make_schedule("cosine", 200), "v"),
                       {"schedule": "cosine", "T": 200, "target": "v"}),
    "progressive_distillation/x0": lambda: (_ddpm_oracle(make_schedule("cosine", 200), "x0"),
                                            {"schedule": "cosine", "T": 200, "target": "x0"}),
    "dit": lambda: (_ddpm_oracle(make_schedule("linear", 1000), "eps", learn_sigma=True),
                    {"schedule": "linear", "T": 1000}),
    "score_sde/vp": lambda: (_score_net(make_sde("vp")), {"train_eps": 1e-5}),
    "score_sde/ve": lambda: (_score_net(make_sde("ve")), {"train_eps": 1e-5}),
    "score_sde/subvp": lambda: (_score_net(make_sde("subvp")), {"train_eps": 1e-5}),
    "flow_matching": lambda: (_flow_velocity(), {"sigma_min": 0.0}),
    "flow_matching/sigma_min": lambda: (_flow_velocity(0.1), {"sigma_min": 0.1}),
    "rectified_flow": lambda: (_flow_velocity(), {}),
    "shortcut": lambda: (_shortcut_net, {}),
    "meanflow": lambda: (_meanflow_net, {}),
    "interpolant/linear": lambda: (_interpolant_net("linear", 0.0, "velocity"),
                                   {"kind": "linear", "gamma_scale": 0.0, "objective": "velocity"}),
    "interpolant/trig_gamma": lambda: (_interpolant_net("trig", 1.0, "velocity"),
                                       {"kind": "trig", "gamma_scale": 1.0, "objective": "velocity"}),
    "interpolant/denoiser": lambda: (_interpolant_net("linear", 0.5, "denoiser"),
                                     {"kind": "linear", "gamma_scale": 0.5, "objective": "denoiser"}),
}


@pytest.mark.parametrize("case", sorted(_ORACLES))
@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_denoiser_is_exact_for_gaussian_data(case, sigma):
    # Every family's parametrisation (DDPM targets, Tweedie for scores, velocities of straight and curved paths,
    # MeanFlow's reversed time) of the exact model of N(0, S2 I) must convert to the exact denoiser.
    net, settings = _ORACLES[case]()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    if case == "dit":
        x = x.reshape(5, 2, 1, 1)  # channels first: the learned variance is the second half of the channels
    d = denoiser(case.split("/")[0], net, {"settings": settings})
    torch.testing.assert_close(d(x, sigma), _exact(x, sigma), atol=1e-6, rtol=1e-5)


def test_denoiser_refuses_other_families():
    with pytest.raises(ValueError, match=r"family 'vae' is not a denoising family; denoisers: consistency, ddpm"):
        denoiser("vae", None, {"settings": {}})


# --------------------------------------------------------------------------------------------- every family

_EXPECTED = {
    "ddpm": ("reconstruction",), "flow_matching": ("nll", "reconstruction"), "score_sde": ("nll", "reconstruction"),
    "edm": ("nll", "reconstruction"), "ncsn": ("reconstruction",), "vae": ("nll", "reconstruction"),
    "vqvae": ("reconstruction",), "gan": (), "dit": ("reconstruction",), "latent_diffusion": ("reconstruction",),
    "flow": ("nll",), "consistency": ("reconstruction",), "rectified_flow": ("nll", "reconstruction"),
    "interpolant": ("reconstruction",), "shortcut": ("reconstruction",), "meanflow": ("reconstruction",),
    "progressive_distillation": ("reconstruction",), "pixelcnn": ("nll",), "made": ("nll",),
    "ebm": ("energy",), "d3pm": (), "rbm": ("nll", "energy"), "mdn": (),
}
_IMAGE_ONLY = ("vqvae", "dit", "latent_diffusion", "pixelcnn", "rbm", "ebm", "made")


def test_applicable_scores_cover_every_family():
    assert set(_EXPECTED) == set(RECIPES)
    digits = data.load("digits")
    for name, want in _EXPECTED.items():
        if name == "progressive_distillation":  # needs a teacher run; its options are a DDPM's
            options = get_recipe("ddpm").resolve(digits, {})
        else:
            options = get_recipe(name).resolve(digits, {})
        assert applicable_scores(name, options) == want, name
    # the RBM's likelihood is exact only when a layer is small enough to enumerate; its energy always applies
    big = get_recipe("rbm").resolve(digits, {"hidden": 64})
    assert applicable_scores("rbm", big) == ("energy",)


@pytest.mark.parametrize("name", sorted(n for n, s in _EXPECTED.items() if s))
def test_every_score_runs_on_a_fresh_model(name):
    src = data.load("digits" if name in _IMAGE_ONLY else "moons")
    recipe = get_recipe(name)
    if name == "progressive_distillation":  # a student is a DDPM network with the DDPM settings
        options = get_recipe("ddpm").resolve(src, {})
        nets = get_recipe("ddpm").build(options)
    else:
        options = recipe.resolve(src, {})
        nets = recipe.build(options)
    x = src.test_set(8)[0]
    for score in _EXPECTED[name]:
        a = anomaly_scores(recipe, nets, x, score, options=options, generator=torch.Generator().manual_seed(1))
        b = anomaly_scores(recipe, nets, x, score, options=options, generator=torch.Generator().manual_seed(1))
        assert a.shape == (8,) and a.dtype == torch.float64 and bool(torch.isfinite(a).all()), (name, score)
        torch.testing.assert_close(a, b)  # deterministic under a seed


def test_likelihood_inputs_quantise_images():
    digits = data.load("digits")
    x = digits.test_set()[0][:4]
    made = get_recipe("made").resolve(digits, {})
    flow = get_recipe("flow").resolve(digits, {})
    k = ((x + 1) / 2 * 255).round()
    pmf, lj = likelihood_inputs("made", made, x)  # a probability mass: at the 8-bit levels, no Jacobian
    torch.testing.assert_close(pmf, k / 255 * 2 - 1)
    assert lj == 0.0
    dens, lj = likelihood_inputs("flow", flow, x, generator=torch.Generator().manual_seed(0))
    u = (dens + 1) / 2 * 256 - k  # uniform dequantisation: (k + u) / 256 with u in [0, 1)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0 and float(u.std()) > 0.2
    assert lj == pytest.approx(64 * math.log(2.0))  # p_u = p_x |dx/du|^D, dx/du = 2
    pts = torch.randn(3, 2)
    assert likelihood_inputs("flow", get_recipe("flow").resolve(data.load("moons"), {}), pts) == (pts, 0.0)


def test_shifts():
    digits = data.load("digits", holdout_class=4)
    sh = ood_shifts(digits, 50, generator=torch.Generator().manual_seed(0))
    assert sorted(sh) == ["holdout_class", "inverted", "noise"]
    torch.testing.assert_close(sh["inverted"], -digits.test_set()[0][:50])
    torch.testing.assert_close(sh["holdout_class"], digits.ood_x[:50] * 2 - 1)
    assert sh["holdout_class"].shape[0] == digits.ood_x.shape[0] < 50  # fewer held-out test images than asked
    assert float(sh["noise"].min()) >= -1 and float(sh["noise"].max()) <= 1 and float(sh["noise"].std()) > 0.5
    moons = data.load("moons")
    box = ood_shifts(moons, 4000, generator=torch.Generator().manual_seed(0))["noise"]
    ref = moons.test_set()[0]
    lo, hi = ref.min(0).values, ref.max(0).values
    mid, half = (lo + hi) / 2, 0.75 * (hi - lo)  # 1.5 times the range, centred
    torch.testing.assert_close(box.min(0).values, mid - half, atol=0.05, rtol=0)
    torch.testing.assert_close(box.max(0).values, mid + half, atol=0.05, rtol=0)


# --------------------------------------------------------------------------------------------- learning


def test_vae_on_digits_detects_noise_and_inverted_images(tmp_path):
    # A small MLP VAE (200 steps, a few seconds) trained without the digit 7.
    options = {"arch": "mlp", "latent_dim": 8, "hidden": 128, "depth": 2, "nll_k": 32}
    fit("vae", "digits", steps=200, batch_size=128, out=tmp_path, options=options, holdout_class=7, progress=False,
        plots=False)
    report = ood_report(tmp_path, n=100)
    assert report["family"] == "vae" and report["data"] == "digits" and report["holdout_class"] == 7
    assert report["in_n"] == 100 and list(report["scores"]) == ["nll", "reconstruction"]
    for score in ("nll", "reconstruction"):
        shifts = report["scores"][score]
        assert sorted(shifts) == ["holdout_class", "inverted", "noise"]
        for shift in ("noise", "inverted"):
            assert shifts[shift]["auroc"] > 0.9, (score, shift, shifts[shift])
            assert shifts[shift]["fpr95"] < 0.2, (score, shift, shifts[shift])
        # the test images of the held-out 7 (none of them seen in training) are the holdout shift
        assert shifts["holdout_class"]["n_out"] == int((data.load("digits").test_y == 7).sum())
        assert 0.0 <= shifts["holdout_class"]["auroc"] <= 1.0
    assert json.loads((tmp_path / "ood.json").read_text()) == report
    assert (tmp_path / "ood_hist.png").stat().st_size > 0 and (tmp_path / "ood_hist_reconstruction.png").is_file()

    # Why the threshold means something: the untrained VAE's decoder outputs near-zero pixels, so digits (mostly
    # -1 background) reconstruct WORSE than uniform noise (mean square 1/3): its AUROC is near 0, not near 1.
    recipe = get_recipe("vae")
    nets = recipe.build(json.loads((tmp_path / "checkpoint.json").read_text())["options"])
    src = data.load("digits", holdout_class=7)
    opts = recipe.resolve(src, options)
    s_in = anomaly_scores(recipe, nets, src.test_set()[0][:100], "reconstruction", options=opts)
    s_noise = anomaly_scores(recipe, nets, ood_shifts(src, 100)["noise"], "reconstruction", options=opts)
    assert auroc(s_in, s_noise) < 0.5


def test_flow_on_moons_separates_box_noise(tmp_path):
    # Threshold 0.9: the box is 1.5 times the data's range and part of it lies on the moons, so even the true
    # density reaches only about 0.93 (a kernel density estimate on 20000 draws: 0.92-0.93) while the best
    # Gaussian fit reaches 0.84 and the untrained flow (checked below) less: only a model that learnt the two
    # moons passes. RealNVP, 300 steps: 0.924 (seeds 0-2: 0.924 +- 0.001).
    fit("flow", "moons", steps=300, batch_size=256, lr=3e-3, out=tmp_path, progress=False, plots=False)
    report = ood_report(tmp_path, write=False)
    assert report["in_n"] == 256 and list(report["scores"]) == ["nll"]
    r = report["scores"]["nll"]["noise"]
    assert r["auroc"] > 0.9 and r["n_out"] == 256, r
    assert not (tmp_path / "ood.json").exists()

    recipe = get_recipe("flow")
    moons = data.load("moons")
    options = recipe.resolve(moons, {})
    torch.manual_seed(0)
    fresh = recipe.build(options).eval()
    sh = ood_shifts(moons, 256, generator=torch.Generator().manual_seed(0))["noise"]
    s_in = anomaly_scores(recipe, fresh, moons.test_set(256)[0], "nll", options=options)
    assert auroc(s_in, anomaly_scores(recipe, fresh, sh, "nll", options=options)) < 0.88


# --------------------------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("gan")
    fit("gan", "moons", steps=1, batch_size=8, out=run, progress=False, plots=False)
    return run


def test_a_score_that_does_not_apply_names_the_family(gan_run):
    with pytest.raises(ValueError, match=r"score 'nll' does not apply to family 'gan'; scores that apply to 'gan': "
                                         r"none"):
        ood_report(gan_run, scores="nll", write=False)
    with pytest.raises(ValueError, match=r"family 'gan' has no anomaly score.*families with one: .*ebm"):
        ood_report(gan_run, write=False)
    flow = get_recipe("flow").resolve(data.load("moons"), {})
    with pytest.raises(ValueError, match=r"score 'reconstruction' does not apply to family 'flow'; scores that "
                                         r"apply to 'flow': nll"):
        anomaly_scores("flow", None, torch.zeros(2, 2), "reconstruction", options=flow)
    with pytest.raises(ValueError, match=r"'likelihood' is not a score \(valid: nll, reconstruction, energy\)"):
        anomaly_scores("flow", None, torch.zeros(2, 2), "likelihood", options=flow)
    assert SCORES == ("nll", "reconstruction", "energy")


def test_bad_arguments(gan_run):
    flow = get_recipe("flow").resolve(data.load("moons"), {})
    nets = get_recipe("flow").build(flow)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\) with N >= 1, got \(3, 3\)"):
        anomaly_scores("flow", nets, torch.zeros(3, 3), "nll", options=flow)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        anomaly_scores("flow", nets, [[0.0, 0.0]], "nll", options=flow)
    with pytest.raises(TypeError, match=r"scores must be None, a score name or a non-empty list"):
        ood_report(gan_run, scores=[], write=False)
    with pytest.raises(ValueError, match=r"n must be an int >= 2, got 1"):
        ood_report(gan_run, n=1, scores="nll", write=False)
    with pytest.raises(FileNotFoundError):
        ood_report(gan_run / "missing")
    vae = get_recipe("vae").resolve(data.load("moons"), {})
    with pytest.raises(ValueError, match=r"sigmas must be a non-empty sequence"):
        anomaly_scores("vae", get_recipe("vae").build(vae), torch.zeros(2, 2), "reconstruction", options=vae,
                       sigmas=[])
