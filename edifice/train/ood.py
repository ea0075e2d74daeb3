r"""Out-of-distribution detection with a trained run: anomaly scores, shifted data sets, one report.

A generative model of the training data should find held-out data typical and shifted data atypical. Three
**anomaly scores** (higher = more anomalous) read that off a run's networks:

* ``"nll"`` — ``-log p(x)`` in nats per example in data units, for every family with a likelihood
  (``recipe.has_likelihood``), through ``recipe.log_prob`` on the inputs its likelihood is defined on
  (:func:`likelihood_inputs`: images are 8-bit quantised, then uniformly dequantised for densities, as
  :func:`edifice.train.evaluate` does). The ODE likelihoods (flow matching, score SDE, EDM, rectified
  flow) integrate 100 network calls per example: on images they are scored on ``recipe.image_nll_n`` (64)
  examples per set.
* ``"reconstruction"`` — the mean squared error per dimension, in model space, of a reconstruction:

  - autoencoders: the VAE's decoder mean at the posterior mean, the VQ-VAE's quantised reconstruction, the
    latent-diffusion autoencoder's ``D(E(x))``;
  - denoisers: ``x`` is noised to level ``σ`` in EDM units, ``x_σ = x + σ n``, and the network's
    prediction of the clean data ``D(x_σ, σ)`` is compared with ``x``, averaged over the levels of
    :data:`RECONSTRUCTION_SIGMAS` and :data:`RECONSTRUCTION_DRAWS` noise draws. Each family reaches ``D``
    through its own parametrisation (:func:`denoiser`): EDM and consistency networks are ``D``; DDPM / DiT /
    progressive-distillation networks run at the (fractional) step with ``√((1-ᾱ_t)/ᾱ_t) = σ``
    (``edifice.generative.edm.vp_denoiser``); score SDEs use Tweedie's
    formula at the ``t`` with ``std(t)/scale(t) = σ``; NCSN ``x + σ² s(x, σ)``; flow matching, rectified
    flow, shortcut models and stochastic interpolants predict the data from the velocity (or denoiser) at
    the ``t`` whose path has noise-to-signal ratio ``σ`` (``t = 1/(1+σ)`` for the straight path), MeanFlow
    at ``t = σ/(1+σ)`` (its data sit at ``t = 0``).
* ``"energy"`` — the EBM's energy ``E(x)`` (JEM: ``-logsumexp_y f(x)[y]``) and the RBM's free energy of
  the binarised image (``F(v) = -log p(v) - log Z``: the NLL up to a constant, available for any size).

Conditional networks are scored without labels (the null label of classifier-free guidance, JEM's
marginal energy): shifted data have no class. :func:`applicable_scores` lists the scores of a run;
:func:`anomaly_scores` computes one; :func:`ood_shifts` builds the shifted sets; :func:`ood_report` does it
all for a run folder and writes ``ood.json`` and ``ood_hist.png``.

**Shifts** (model space; :func:`ood_shifts`): images — ``"inverted"`` (``1 - u`` of the test images),
``"noise"`` (uniform pixels), ``"holdout_class"`` (the test images of the class a run was trained without,
``edifice train --holdout-class K``), ``"digits_upscaled"`` (28x28 runs: scikit-learn's 8x8 digits bilinearly
resized); points — ``"noise"``, uniform over the box of 1.5 times the held-out data's range per coordinate
(centred on it; part of it overlaps the data, so even the true density cannot reach AUROC 1).

Example (a tiny flow on moons; a few hundred steps already separate the box noise):
    >>> import tempfile, torch
    >>> from edifice.train import fit
    >>> from edifice.train.ood import ood_report
    >>> run = tempfile.mkdtemp()
    >>> _ = fit("flow", "moons", steps=150, batch_size=128, out=run, progress=False, plots=False,
    ...         options={"blocks": 4, "hidden": 32})
    >>> report = ood_report(run, n=128, write=False)
    >>> sorted(report["scores"]), sorted(report["scores"]["nll"])
    (['nll'], ['noise'])
    >>> report["scores"]["nll"]["noise"]["auroc"] > 0.8
    True

References:
    Do Deep Generative Models Know What They Don't Know? Nalisnick, Matsukawa, Teh, Gorur,
    Lakshminarayanan, 2019. arXiv:1810.09136 (likelihoods can rank shifted data as more typical).
    Denoising diffusion models for out-of-distribution detection. Graham, Pinaya, Tudosiu, Nachev, Ourselin,
    Cardoso, 2023. arXiv:2211.07740 (reconstruction from intermediate noise levels).
    Your Classifier is Secretly an Energy Based Model (JEM). Grathwohl et al., 2020. arXiv:1912.03263.
    OpenOOD v1.5. Zhang et al., 2023. arXiv:2306.09301 (AUROC, FPR at 95% TPR).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import append_dims, check_float, check_int, check_tensor, randn
from ..metrics.ood import detection_report
from . import checkpoint as ckpt
from .recipes import Recipe, _schedule, get_recipe

__all__ = ["SCORES", "RECONSTRUCTION_SIGMAS", "RECONSTRUCTION_DRAWS", "DEFAULT_N", "OOD_FILE", "HIST_FILE",
           "applicable_scores", "anomaly_scores", "denoiser", "likelihood_inputs", "ood_shifts", "ood_report"]

SCORES: tuple[str, ...] = ("nll", "reconstruction", "energy")
# Noise levels (EDM units, model space: images in [-1, 1]) of the denoisers' reconstruction score, averaged.
# 0.5 is about the spread of the data (EDM's sigma_data for images); DDPM's linear schedule reaches 0.25 and 0.5 near
# steps 75 and 145 of 1000, where a digit is still legible under the noise -- at much higher levels every input is
# mapped to a generic digit and the error mostly measures the distance to the mean image.
RECONSTRUCTION_SIGMAS: tuple[float, ...] = (0.25, 0.5)
# Noise draws per level: one draw leaves the error noisy (a DDPM on moons against box noise: AUROC 0.82 with one
# draw per level, 0.87 with four).
RECONSTRUCTION_DRAWS = 4
DEFAULT_N: dict[str, int] = {"points": 256, "images": 128}
OOD_FILE = "ood.json"
HIST_FILE = "ood_hist.png"

_AUTOENCODERS = ("vae", "vqvae", "latent_diffusion")
_ENERGY = ("ebm", "rbm")


# --------------------------------------------------------------------------------------------- denoisers
# Each maker returns D(x, sigma) -> E[x0 | x0 + sigma n = x], sigma a python float (EDM units).


def _student(nets: Any) -> Any:
    from .teachers import student_of

    return student_of(nets)


def _solve_time(ratio: Callable[[torch.Tensor], torch.Tensor], sigma: float, lo: float, hi: float) -> float:
    """The ``t`` in ``[lo, hi]`` where the monotone noise-to-signal ``ratio(t)`` equals ``sigma`` (bisection,
    float64; clamped to the ends when ``sigma`` is out of the range)."""
    a, b = torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)
    increasing = bool(ratio(b) > ratio(a))
    for _ in range(64):
        m = (a + b) / 2
        if (bool(ratio(m) < sigma)) == increasing:
            a = m
        else:
            b = m
    return float((a + b) / 2)


def _full(x: torch.Tensor, v: float) -> torch.Tensor:
    return torch.full((x.shape[0],), v, device=x.device, dtype=x.dtype)


def _vp(net: Any, s: Mapping[str, Any], target: str) -> Callable:
    from ..generative import edm

    d = edm.vp_denoiser(net, _schedule(s["schedule"], s["T"]), target=target)
    return lambda x, sigma: d(x, _full(x, sigma))


def _ddpm_d(recipe, nets, s):
    return _vp(nets, s, s["target"])


def _pd_d(recipe, nets, s):
    return _vp(_student(nets), s, s["target"])


def _dit_d(recipe, net, s):
    def eps(x, t, **cond):
        out = net(x, t, **cond)
        return out[:, : x.shape[1]] if getattr(net, "learn_sigma", False) else out  # drop the learned variance

    return _vp(eps, s, "eps")


def _edm_d(recipe, nets, s):
    net = _student(nets)
    return lambda x, sigma: net(x, _full(x, sigma))


def _ncsn_d(recipe, net, s):
    def d(x, sigma):
        return x + sigma**2 * net(x, _full(x, sigma))  # Tweedie with s = grad log p_sigma

    return d


def _sde_d(recipe, net, s):
    sde = net.sde

    def d(x, sigma):
        t = _solve_time(lambda u: sde.std(u) / sde.scale(u), sigma, s["train_eps"], sde.T)
        tb = _full(x, t)
        scale = append_dims(sde.scale(tb), x.ndim)
        x_t = scale * x  # = scale x0 + std n, since std / scale = sigma
        std2 = append_dims(sde.std(tb).square(), x.ndim)
        return (x_t + std2 * net(x_t, tb)) / scale  # Tweedie (Song et al.'s denoising step)

    return d


def _straight_d(velocity: Callable, sigma_min: float = 0.0) -> Callable:
    """Flow matching's path ``x_t = (1 - (1-σ_m) t) n + t x1``: ``x_t = t x_σ`` at ``t = 1/(σ + 1 - σ_m)``, and
    ``E[x1 | x_t] = (1 - (1-σ_m) t) v + (1-σ_m) x_t``."""
    def d(x, sigma):
        t = 1.0 / (sigma + 1.0 - sigma_min)
        x_t = t * x
        return (1.0 - (1.0 - sigma_min) * t) * velocity(x_t, _full(x, t)) + (1.0 - sigma_min) * x_t

    return d


def _fm_d(recipe, net, s):
    return _straight_d(net, s["sigma_min"])


def _rf_d(recipe, nets, s):
    return _straight_d(_student(nets))


def _shortcut_d(recipe, net, s):
    return _straight_d(lambda x, t: net(x, t, torch.zeros_like(t)))  # step size 0: the flow's velocity


def _meanflow_d(recipe, net, s):
    def d(x, sigma):  # data at t = 0: z_t = (1 - t) x + t n = (1 - t) x_sigma with t = sigma / (1 + sigma)
        t = sigma / (1.0 + sigma)
        z = (1.0 - t) * x
        tb = _full(x, t)
        return z - t * net(z, tb, tb)  # u(z, t, t) = v = n - x

    return d


def _si_d(recipe, net, s):
    from ..generative import interpolant as si

    kind, a = s["kind"], s["gamma_scale"]

    def ratio(t):
        c = si.coefficients(t, kind=kind, gamma_scale=a)
        return (c.alpha.square() + c.gamma.square()).sqrt() / c.beta

    def d(x, sigma):
        t = _solve_time(ratio, sigma, 1e-3, 1.0 - 1e-3)
        c = si.coefficients(t, kind=kind, gamma_scale=a)
        beta, sig = float(c.beta), float((c.alpha.square() + c.gamma.square()).sqrt())
        x_t = beta * x  # = beta x1 + sig eps
        tb = _full(x, t)
        out = net(x_t, tb)
        eta = out if s["objective"] == "denoiser" else si.denoiser_from_velocity(out, x_t, tb, kind=kind,
                                                                               gamma_scale=a)
        return (x_t - sig * eta) / beta

    return d


_DENOISERS: dict[str, Callable[..., Callable]] = {
    "ddpm": _ddpm_d, "dit": _dit_d, "progressive_distillation": _pd_d, "edm": _edm_d, "consistency": _edm_d,
    "ncsn": _ncsn_d, "score_sde": _sde_d, "flow_matching": _fm_d, "rectified_flow": _rf_d,
    "shortcut": _shortcut_d, "meanflow": _meanflow_d, "interpolant": _si_d,
}


def denoiser(recipe: Recipe | str, nets: Any,
             options: Mapping[str, Any]) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """A denoising family's networks as one denoiser in EDM units: ``D(x, sigma) ≈ E[x0 | x0 + σ n = x]``.

    The parametrisation of each family (module docstring) is converted to the clean-data estimate at the noise
    level ``σ`` (a python float, model space). This is what the ``"reconstruction"`` score calls.

    Args:
        recipe: a recipe or family name among the denoising families (``ddpm``, ``dit``, ``edm``, ``score_sde``,
            ``flow_matching``, ... — the ones with ``"reconstruction"`` that are not autoencoders).
        nets: the run's networks (or any callable with the family's network signature).
        options: the run's resolved options (the family's settings, e.g. the noise schedule, are read there).

    Returns:
        ``D(x, sigma)`` mapping ``(B, *data_shape)`` to ``(B, *data_shape)``.

    Raises:
        ValueError: a family that is not a denoiser (the message lists those that are).

    Example (flow matching's velocity for data ``N(0, I)`` is ``v = (t - (1 - t)) x / ((1 - t)² + t²)``; the
    exact denoiser is then ``x / (1 + σ²)``):
        >>> import torch
        >>> v = lambda x, t: ((2 * t - 1) / ((1 - t) ** 2 + t**2))[:, None] * x
        >>> d = denoiser("flow_matching", v, {"settings": {"sigma_min": 0.0}})
        >>> d(torch.ones(1, 2), 1.0)
        tensor([[0.5000, 0.5000]])
    """
    recipe = _recipe(recipe)
    if recipe.name not in _DENOISERS:
        raise ValueError(f"family {recipe.name!r} is not a denoising family; denoisers: "
                         f"{', '.join(sorted(_DENOISERS))}")
    return _DENOISERS[recipe.name](recipe, nets, options["settings"])


# --------------------------------------------------------------------------------------------- scores


def _recipe(recipe: Recipe | str) -> Recipe:
    if isinstance(recipe, str):
        return get_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe or a family name, got {type(recipe).__name__}")
    return recipe


def _rbm_exact(options: Mapping[str, Any]) -> bool:
    """Whether the RBM recipe's log-likelihood is exact (log Z by enumerating the smaller layer)."""
    from .recipes_discrete import rbm_exact

    build = options["build"]
    return rbm_exact(build.get("visible", "bernoulli"), math.prod(build["data_shape"]), build.get("hidden", 64))


def applicable_scores(recipe: Recipe | str, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The anomaly scores a run of ``recipe`` with resolved ``options`` supports, in :data:`SCORES` order.

    ``"nll"`` for a likelihood family (for the RBM only when its log-likelihood is exact, ``min(D, H) <= 20``),
    ``"reconstruction"`` for the autoencoders and the denoising families, ``"energy"`` for the EBM and the RBM.

    Args:
        recipe: a :class:`~edifice.train.recipes.Recipe` or a family name.
        options: the run's resolved options (``config["options"]``).

    Returns:
        A tuple of names, possibly empty (e.g. GANs, MDNs, D3PM and MADE-less families have none here).
    """
    recipe = _recipe(recipe)
    out = []
    if recipe.has_likelihood and (recipe.name != "rbm" or _rbm_exact(options)):
        out.append("nll")
    if recipe.name in _AUTOENCODERS or recipe.name in _DENOISERS:
        out.append("reconstruction")
    if recipe.name in _ENERGY:
        out.append("energy")
    return tuple(out)


def _is_images(options: Mapping[str, Any]) -> bool:
    return len(options["build"]["data_shape"]) == 3


def likelihood_inputs(recipe: Recipe | str, options: Mapping[str, Any], x: torch.Tensor, *,
                      generator: torch.Generator | None = None,
                      to_unit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, float]:
    """The inputs ``recipe.log_prob`` is evaluated on, and the log-Jacobian that puts its result in data units.

    Points pass unchanged (``0.0``). Images (model space ``[-1, 1]``, data units ``u = to_unit(x)`` in
    ``[0, 1]``) are quantised to 8 bits, ``k = round(255 u)``; a probability mass (``likelihood_kind ==
    "pmf"``: discretised-logistic VAEs, the binary and autoregressive families) is evaluated at ``k / 255``,
    a density at the uniformly dequantised ``(k + U) / 256`` (Theis et al. 2016), both mapped back to model
    space. For a density, ``log p_u(u) = log p_x(x) + log_jacobian`` with ``log_jacobian = -D log|du/dx|``.

    Args:
        recipe, options: the run's recipe (or family name) and resolved options.
        x: ``(B, *data_shape)`` model-space data.
        generator: draws the dequantisation noise (on its device; in float64 on the CPU, float32 elsewhere).
        to_unit: the data's affine map to data units (default: images ``(x + 1) / 2`` clamped, the
            :class:`~edifice.data.DataSource` convention).

    Returns:
        ``(x_in, log_jacobian)``: ``x_in`` shaped and typed like ``x``, ``log_jacobian`` a float.
    """
    recipe = _recipe(recipe)
    check_tensor("x", x, floating=True)
    if not _is_images(options):
        return x, 0.0
    if to_unit is None:
        def to_unit(v):
            return ((v + 1.0) / 2.0).clamp(0.0, 1.0)
    probe = torch.tensor([0.0, 0.5], dtype=torch.float64)
    offset = float(to_unit(probe[:1])[0])
    slope = float((to_unit(probe[1:]) - to_unit(probe[:1]))[0] / 0.5)
    k = (to_unit(x.detach().cpu().double()) * 255).round()  # on the CPU in float64 (not every device has it)
    if recipe.likelihood_kind(options) == "pmf":
        return ((k / 255 - offset) / slope).to(device=x.device, dtype=x.dtype), 0.0
    dev = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(tuple(k.shape), generator=generator, device=dev,
                   dtype=torch.float64 if dev.type == "cpu" else torch.float32).cpu().double()
    d = x[0].numel()
    return (((k + u) / 256 - offset) / slope).to(device=x.device, dtype=x.dtype), -d * math.log(abs(slope))


def _check_score(recipe: Recipe, options: Mapping[str, Any], score: Any) -> str:
    if not isinstance(score, str):
        raise TypeError(f"score must be a str, one of {SCORES}, got {type(score).__name__} {score!r}")
    applicable = applicable_scores(recipe, options)
    if score not in applicable:
        what = f"'{score}' is not a score (valid: {', '.join(SCORES)})" if score not in SCORES else \
            f"score {score!r} does not apply to family {recipe.name!r}"
        have = ", ".join(applicable) if applicable else "none"
        raise ValueError(f"{what}; scores that apply to {recipe.name!r}: {have}")
    return score


def _first_param(nets: Any) -> torch.nn.Parameter | None:
    if isinstance(nets, torch.nn.Module):
        mods = [nets]
    elif isinstance(nets, tuple):
        mods = [m for m in nets if isinstance(m, torch.nn.Module)]
    else:  # a plain callable (e.g. a closed-form network in a test)
        mods = []
    for m in mods:
        for p in m.parameters():
            return p
    return None


def _score_batch(recipe: Recipe, nets: Any, x: torch.Tensor, score: str, options: Mapping[str, Any],
                 generator: torch.Generator | None, sigmas: tuple[float, ...], draws: int) -> torch.Tensor:
    fam = recipe.family()
    s = options["settings"]
    if score == "nll":
        x_in, log_jac = likelihood_inputs(recipe, options, x, generator=generator)
        return -(recipe.log_prob(nets, x_in, options=options, generator=generator).detach().cpu().double() + log_jac)
    with torch.no_grad():
        if score == "energy":
            if recipe.name == "ebm":
                return nets.energy(x).cpu().double()
            # the Bernoulli RBM's likelihood is of the binarised image x > 0 (rbm.log_prob's default)
            v = (x > 0).to(nets.W.dtype) if nets.visible == "bernoulli" else x.to(nets.W.dtype)
            return fam.free_energy(nets, v).cpu().double()
        if recipe.name in ("vae", "vqvae"):
            rec = fam.reconstruct(nets, x)
        elif recipe.name == "latent_diffusion":
            rec = fam.decode(nets, fam.encode(nets, x))
        else:
            d = denoiser(recipe, nets, options)
            err = torch.zeros(x.shape[0], dtype=torch.float64)  # on the CPU: float64 need not exist on the device
            for sigma in sigmas:
                for _ in range(draws):
                    noise = randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
                    err += (d(x + sigma * noise, sigma) - x).flatten(1).square().mean(1).cpu().double()
            return err / (len(sigmas) * draws)
        return (rec - x).flatten(1).square().mean(1).cpu().double()


def anomaly_scores(recipe: Recipe | str, nets: Any, x: torch.Tensor, score: str, *, options: Mapping[str, Any],
                   generator: torch.Generator | None = None, sigmas: Sequence[float] | None = None,
                   draws: int | None = None, batch_size: int = 256) -> torch.Tensor:
    """Anomaly scores (higher = more anomalous) of ``x`` under a run's networks.

    Args:
        recipe: the run's :class:`~edifice.train.recipes.Recipe` or family name.
        nets: its networks (``edifice.train.load(run_dir)[0]``), in eval mode.
        x: ``(N, *data_shape)`` in model space (images in ``[-1, 1]``), moved to the networks' device.
        score: one of :func:`applicable_scores` (see the module docstring for what each computes).
        options: the run's resolved options (``config["options"]``).
        generator: draws the dequantisation noise (``"nll"``), the noise of the denoisers' reconstruction and
            any noise of the likelihood estimator (Hutchinson probes, importance samples).
        sigmas: noise levels of the denoisers' reconstruction (EDM units; default
            :data:`RECONSTRUCTION_SIGMAS`).
        draws: noise draws per level (default :data:`RECONSTRUCTION_DRAWS`); the error is averaged over all.
        batch_size: examples per network call.

    Returns:
        ``(N,)`` float64 scores on the CPU: ``-log p`` in nats (data units), a mean squared error per dimension
        (model space) or an energy.

    Raises:
        ValueError: a score that does not apply to the family (the message names the family and the scores that
            apply), an empty ``x``, bad ``sigmas`` or ``batch_size``. TypeError: a non-tensor ``x``.
    """
    recipe = _recipe(recipe)
    score = _check_score(recipe, options, score)
    check_tensor("x", x, floating=True)
    shape = tuple(options["build"]["data_shape"])
    if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, {', '.join(map(str, shape))}) with N >= 1, got {tuple(x.shape)}")
    batch_size = check_int("batch_size", batch_size, min=1)
    sigmas = RECONSTRUCTION_SIGMAS if sigmas is None else sigmas
    if not isinstance(sigmas, (list, tuple)) or not sigmas:
        raise ValueError(f"sigmas must be a non-empty sequence of noise levels > 0, got {sigmas!r}")
    sigmas = tuple(check_float("sigmas", v, min=0.0, min_open=True) for v in sigmas)
    draws = RECONSTRUCTION_DRAWS if draws is None else check_int("draws", draws, min=1)
    p = _first_param(nets)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype if p.is_floating_point() else x.dtype)
    out = [_score_batch(recipe, nets, x[i:i + batch_size], score, options, generator, sigmas, draws).detach().cpu()
           for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


# --------------------------------------------------------------------------------------------- shifts


def ood_shifts(data: Any, n: int, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Shifted data sets in model space, at most ``n`` examples each (fewer when the source has fewer).

    Images: ``"inverted"`` (``1 - u`` of the first ``n`` test images, i.e. ``-x`` in model space), ``"noise"``
    (uniform pixels), ``"holdout_class"`` (``data.ood_x``, when the data hold a class out) and
    ``"digits_upscaled"`` (MNIST / Fashion-MNIST: scikit-learn's 8x8 digits resized bilinearly to 28x28).
    Points: ``"noise"``, uniform over the box centred on the held-out data's range with 1.5 times its width in
    each coordinate.

    Args:
        data: a :class:`~edifice.data.DataSource`.
        n: examples per set, ``>= 1``.
        generator: draws the uniform noise (CPU).

    Returns:
        ``{shift name: (n_shift, *data_shape)}`` float32 tensors on the CPU.
    """
    n = check_int("n", n, min=1)
    x_test = data.test_set()[0]
    out: dict[str, torch.Tensor] = {}
    if data.kind == "points":
        lo, hi = x_test.min(0).values, x_test.max(0).values  # (D,)
        centre, half = (lo + hi) / 2, 1.5 * (hi - lo) / 2
        u = torch.rand((n, x_test.shape[1]), generator=generator, dtype=torch.float64)
        out["noise"] = (centre + (2 * u - 1) * half).to(x_test.dtype)
        return out
    out["inverted"] = -x_test[:n]  # 1 - u in [0, 1] is -x in [-1, 1]
    out["noise"] = (torch.rand((n, *data.data_shape), generator=generator) * 2 - 1).to(x_test.dtype)
    if getattr(data, "ood_x", None) is not None:
        out["holdout_class"] = (data.ood_x[:n] * 2 - 1).to(x_test.dtype)
    if data.name in ("mnist", "fashion_mnist") and tuple(data.data_shape) == (1, 28, 28):
        try:
            from ..data import images
            digits = images.load_digits()[0][:n]  # (n, 1, 8, 8) in [0, 1]
        except ImportError:  # pragma: no cover - scikit-learn is optional
            digits = None
        if digits is not None:
            up = torch.nn.functional.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)
            out["digits_upscaled"] = (up.clamp(0, 1) * 2 - 1).to(x_test.dtype)  # (n, 1, 28, 28)
    return out


# --------------------------------------------------------------------------------------------- report


def _check_scores_arg(scores: Any, recipe: Recipe, options: Mapping[str, Any]) -> tuple[str, ...]:
    applicable = applicable_scores(recipe, options)
    if scores is None:
        if not applicable:
            raise ValueError(f"family {recipe.name!r} has no anomaly score: out-of-distribution detection needs a "
                             "likelihood (nll), a reconstruction or an energy; families with one: "
                             f"{', '.join(_families_with_scores())}")
        return applicable
    if isinstance(scores, str):
        scores = (scores,)
    if not isinstance(scores, (list, tuple)) or not scores:
        raise TypeError(f"scores must be None, a score name or a non-empty list of names, got {scores!r}")
    return tuple(dict.fromkeys(_check_score(recipe, options, s) for s in scores))


def _families_with_scores() -> list[str]:
    from .recipes import RECIPES

    return sorted(name for name, r in RECIPES.items()
                  if r.has_likelihood or name in _AUTOENCODERS or name in _DENOISERS or name in _ENERGY)


def _hist_path(run_dir: Path, i: int, score: str) -> Path:
    return run_dir / (HIST_FILE if i == 0 else f"ood_hist_{score}.png")


def ood_report(
    run_dir: str | os.PathLike,
    *,
    n: int | None = None,
    scores: str | Sequence[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    write: bool = True,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score held-out data and every shift of :func:`ood_shifts` with a run; AUROC and FPR95 per score and shift.

    Args:
        run_dir: a run folder with a checkpoint.
        n: examples per set (default 256 for points, 128 for images; capped by the test split). ``"nll"`` on
            images uses at most ``recipe.image_nll_n`` of them (64 for the ODE likelihoods).
        scores: a score name or a list of them (default: every one in :func:`applicable_scores`).
        seed: seeds the shifted noise sets and every score's noise.
        device: where the networks run (default: CUDA when available, else CPU).
        write: write ``ood.json`` (atomically) and the histograms into ``run_dir``: ``ood_hist.png`` for the first
            score, ``ood_hist_<score>.png`` for the others (skipped without matplotlib).
        data_dir: override where image data are looked up.

    Returns:
        ``{"family", "data", "holdout_class", "step", "in_n", "seed", "scores": {score: {shift: {"auroc",
        "fpr95", "n_in", "n_out"}}}, "time_s"}``. A set whose scores are NaN (a model that breaks on it) gets
        ``auroc = fpr95 = None`` and its count of NaN scores as ``"nan"``.

    Raises:
        ValueError: a score that does not apply (naming the family and the scores that apply), a family with no
            anomaly score, or a bad ``n`` / ``seed``.
        FileNotFoundError: no checkpoint in ``run_dir``.
    """
    from .evaluate import _device, load_data
    from .fit import load

    t0 = time.perf_counter()
    seed = check_int("seed", seed, min=0)
    if n is not None:
        n = check_int("n", n, min=2)
    config = ckpt.read_meta(run_dir)
    recipe = get_recipe(config["family"])
    options = config["options"]
    chosen = _check_scores_arg(scores, recipe, options)
    kind = config["data"]["kind"]
    n = DEFAULT_N[kind] if n is None else n
    data = load_data(config, data_dir)
    x_in = data.test_set(n)[0] if kind == "points" else data.test_set()[0][:n]
    shifts = ood_shifts(data, x_in.shape[0], generator=torch.Generator().manual_seed(seed))
    dev = _device(device)
    nets, _ = load(run_dir, device=dev)
    report: dict[str, Any] = {"family": recipe.name, "data": config["data"]["name"],
                              "holdout_class": config["data"].get("holdout_class"), "step": config.get("step"),
                              "in_n": int(x_in.shape[0]), "seed": seed, "scores": {}}
    hists: dict[str, dict[str, torch.Tensor]] = {}
    for score in chosen:
        m = x_in.shape[0]
        if score == "nll" and kind == "images" and recipe.image_nll_n is not None:
            m = min(m, recipe.image_nll_n)
        g = torch.Generator(device=dev).manual_seed(seed)
        s_in = anomaly_scores(recipe, nets, x_in[:m], score, options=options, generator=g)
        sets = {"in-distribution": s_in}
        entry = {}
        for shift, x_out in shifts.items():
            s_out = anomaly_scores(recipe, nets, x_out[:m], score, options=options, generator=g)
            sets[shift] = s_out
            nan = int(torch.isnan(s_in).sum() + torch.isnan(s_out).sum())
            if nan:
                entry[shift] = {"auroc": None, "fpr95": None, "n_in": int(s_in.numel()),
                                "n_out": int(s_out.numel()), "nan": nan}
            else:
                entry[shift] = detection_report(s_in, s_out)
        report["scores"][score] = entry
        hists[score] = sets
    report["time_s"] = round(time.perf_counter() - t0, 3)
    if write:
        run_dir = Path(run_dir)
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        ckpt.atomic_write_bytes(run_dir / OOD_FILE, text.encode())
        try:
            from .plots import score_histogram

            for i, (score, sets) in enumerate(hists.items()):
                unit = {"nll": "-log p (nats)", "reconstruction": "reconstruction MSE", "energy": "energy"}[score]
                score_histogram(sets, _hist_path(run_dir, i, score), xlabel=f"anomaly score: {unit}",
                                title=f"{recipe.name} on {config['data']['name']}, step {config.get('step')}: {score}")
        except ImportError:  # pragma: no cover - matplotlib is optional
            pass
    return report
