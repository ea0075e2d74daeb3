"""Recipes of the energy-based, autoregressive and discrete families, and of mixture density networks.

Binary families (RBM with Bernoulli visibles, PixelCNN / MADE with 2 levels, D3PM with 2 categories)
binarise model-space images as ``x > 0`` inside their losses and return samples in model space
(``2b - 1``), so pictures and metrics work as for every other family; their likelihoods are probability
masses of the binarised images (``nll`` in nats per image, ``bpd`` in bits per binary pixel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from .._checks import check_choice, check_float, check_int
from .recipes import _UNCOND, Recipe

__all__ = ["DISCRETE_RECIPES"]


# ---------------------------------------------------------------------------------------------
# Mixture density networks: p(y | x) for points whose first input_dim coordinates are the condition x.


def _mdn_data_defaults(data: Any) -> dict[str, Any]:
    """``x_range``: where unconditional samples draw their condition x, from a fixed batch of the data."""
    if data.kind != "points":
        return {}
    x, _ = data.train_batch(4096, generator=torch.Generator().manual_seed(0))
    lo, hi = float(x[:, 0].min()), float(x[:, 0].max())
    return {"x_range": [round(lo, 4), round(hi, 4)]}


def _mdn_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, generator=generator)


def _mdn_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, generator=generator, device=device)


def _mdn_eval(recipe, net, x, y, options, generator) -> dict[str, Any]:
    """The conditional NLL ``-log p(y | x)`` of the held-out points (nats; not a density of the whole point)."""
    lp = recipe.family().log_prob(net, x)
    return {"conditional_nll": float(-lp.double().mean())}


# ---------------------------------------------------------------------------------------------
# Restricted Boltzmann machines: CD-k / persistent CD, Gibbs sampling, exact likelihood when small.

_RBM_EXACT_HIDDEN = 20  # log Z sums 2^H hidden states (or 2^D visible ones): exact up to ~1e6 states


def _rbm_check(s: dict) -> None:
    check_int("k", s["k"], min=1)
    if not isinstance(s["persistent"], bool):
        raise TypeError(f"option persistent must be true or false, got {s['persistent']!r}")


def _rbm_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, k=s["k"], persistent=s["persistent"], generator=generator)


def _rbm_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps=steps, generator=generator, device=device)


def rbm_exact(visible: str, d: int, h: int) -> bool:
    """Whether log Z of an RBM with ``d`` visible and ``h`` hidden units is summed exactly here: over the
    smaller layer for Bernoulli visibles, over the hidden layer for Gaussian ones (at most 2^20 states)."""
    return (min(d, h) if visible == "bernoulli" else h) <= _RBM_EXACT_HIDDEN


def _rbm_log_prob(recipe, net, x, cond, s, generator):
    """Exact log-likelihood when log Z can be enumerated (:func:`rbm_exact`); NaN (reported as no NLL) above."""
    if not rbm_exact(net.config.get("visible", "bernoulli"), *net.W.shape):
        return torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    return recipe.family().log_prob(net, x)


def _rbm_eval(recipe, net, x, y, options, generator) -> dict[str, Any]:
    """The pseudo-log-likelihood (Besag 1975) per example, which needs no partition function."""
    if net.config.get("visible", "bernoulli") != "bernoulli":
        return {}
    return {"pseudo_nll": float(-recipe.family().pseudo_log_likelihood(net, x).double().mean())}


def _rbm_kind(options: Mapping[str, Any]) -> str:
    return "pmf" if options["build"].get("visible", "bernoulli") == "bernoulli" else "density"


# ---------------------------------------------------------------------------------------------
# Energy-based models: SGLD with a replay buffer, CD, JEM; score matching and NCE objectives.

_EBM_OBJECTIVES = ("ml_buffer", "cd", "jem", "dsm", "ssm", "nce")
# The settings of the objectives of edifice.generative.ebm_losses: {objective: {setting: keyword of its loss}}.
_EBM_OBJECTIVE_KWARGS = {"dsm": {"dsm_sigma": "sigma"}, "ssm": {"ssm_projections": "n_projections"},
                         "nce": {"nce_noise_ratio": "noise_ratio"}}


def _ebm_check(s: dict) -> None:
    check_choice("objective", s["objective"], _EBM_OBJECTIVES)
    if s["objective"] == "jem" and not s["conditional"]:
        raise ValueError("objective='jem' needs class labels: use --variant jem or conditional=true on labelled data")
    check_int("sgld_steps", s["sgld_steps"], min=1)
    check_float("step_size", s["step_size"], min=0.0, min_open=True)
    check_float("noise_scale", s["noise_scale"], min=0.0)
    check_float("alpha", s["alpha"], min=0.0)
    check_float("reinit_prob", s["reinit_prob"], min=0.0, max=1.0)
    if s["clip"] is not None:
        check_float("clip", s["clip"], min=0.0, min_open=True)
    check_float("dsm_sigma", s["dsm_sigma"], min=0.0, min_open=True)
    check_int("ssm_projections", s["ssm_projections"], min=1)
    check_int("nce_noise_ratio", s["nce_noise_ratio"], min=1)
    if not isinstance(s["from_buffer"], bool):
        raise TypeError(f"option from_buffer must be true or false, got {s['from_buffer']!r}")


def _ebm_sgld(s: Mapping[str, Any]) -> dict[str, Any]:
    return dict(step_size=s["step_size"], noise_scale=s["noise_scale"], clip=s["clip"])


def _ebm_loss(recipe, nets, x, cond, s, generator):
    kw = dict(sgld_steps=s["sgld_steps"], alpha=s["alpha"], reinit_prob=s["reinit_prob"], **_ebm_sgld(s))
    if s["objective"] in _EBM_OBJECTIVE_KWARGS:
        kw = {"objective_kwargs": {k: s[key] for key, k in _EBM_OBJECTIVE_KWARGS[s["objective"]].items()}}
    return recipe.family().loss(nets, x, objective=s["objective"], generator=generator, cond=cond or None, **kw)


def _ebm_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(nets, shape, steps=steps, from_buffer=s["from_buffer"], generator=generator,
                                  cond=cond or None, device=device, **_ebm_sgld(s))


# ---------------------------------------------------------------------------------------------
# D3PM: discrete diffusion on categorical pixels.


def _d3pm_check(s: dict) -> None:
    check_float("hybrid_lambda", s["hybrid_lambda"], min=0.0)


def _d3pm_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, hybrid_lambda=s["hybrid_lambda"], generator=generator, cond=cond)


def _d3pm_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, generator=generator, cond=cond, device=device)


def _d3pm_eval(recipe, net, x, y, options, generator) -> dict[str, Any]:
    """The variational bound on the NLL of the quantised test images (nats per image; one draw per step)."""
    cond = {"y": y} if (y is not None and options["build"].get("num_classes") is not None) else {}
    bound = recipe.family().nll_bound(net, x, generator=generator, cond=cond).double()
    d = x[0].numel()
    return {"nll_bound": float(bound.mean()), "bpd_bound": float(bound.mean() / (d * math.log(2)))}


# ---------------------------------------------------------------------------------------------
# Autoregressive models: PixelCNN (plain, gated, causal transformer) and MADE, exact likelihoods.


def _ar_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, generator=generator, cond=cond or None)


def _ar_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, temperature=s["temperature"], generator=generator, cond=cond or None,
                                  device=device)


def _ar_log_prob(recipe, net, x, cond, s, generator):
    return recipe.family().log_prob(net, x, cond=cond or None)


def _ar_check(s: dict) -> None:
    check_float("temperature", s["temperature"], min=0.0, min_open=True)


def _autoregressive(name: str, summary: str, *, image_defaults: dict[str, Any],
                    variants: dict[str, dict[str, Any]]) -> Recipe:
    """The recipe of an exact-likelihood autoregressive family (``edifice.generative.<name>``): sequential sampling
    with a temperature, NLL as a probability mass of the binarised / quantised images."""
    return Recipe(name=name, module=f"edifice.generative.{name}", summary=summary, samplers={"sequential": None},
                  default_sampler="sequential", settings={**_UNCOND, "temperature": 1.0}, point_defaults={},
                  image_defaults=image_defaults, loss_fn=_ar_loss, sample_fn=_ar_sample, log_prob_fn=_ar_log_prob,
                  check_settings=_ar_check, likelihood_kind=lambda options: "pmf", image_nll_n=None,
                  image_levels=lambda options: options["build"].get("levels", 2), variants=variants)


DISCRETE_RECIPES: dict[str, Recipe] = {
    "pixelcnn": _autoregressive(
        "pixelcnn", "PixelCNN (van den Oord et al. 2016): masked convolutions A / B, gated stack, or a causal "
                    "transformer over binarised / quantised pixels; exact NLL",
        image_defaults={"hidden": 64, "layers": 5},
        variants={"gated": {"arch": "gated"}, "pixelcnn": {"arch": "pixelcnn"}, "transformer": {"arch": "transformer"}},
    ),
    "made": _autoregressive(
        "made", "MADE (Germain et al. 2015): masked autoencoder over binary vectors / binarised images; exact NLL",
        image_defaults={"hidden": 256, "depth": 1},
        variants={"masks": {"num_masks": 4}},
    ),
    "ebm": Recipe(
        name="ebm",
        module="edifice.generative.ebm",
        summary="energy-based models (Du & Mordatch 2019): SGLD with a replay buffer, CD, JEM; denoising / sliced "
                "score matching, NCE",
        samplers={"langevin": 200},
        default_sampler="langevin",
        settings={**_UNCOND, "objective": "ml_buffer", "sgld_steps": 20, "step_size": 1.0, "noise_scale": 0.01,
                  "alpha": 0.1, "reinit_prob": 0.05, "clip": 1.0, "from_buffer": True, "dsm_sigma": 0.1,
                  "ssm_projections": 1, "nce_noise_ratio": 1},
        # 2-D: the settings of edifice_tests/generative/test_ebm.py (8 of 8 modes of 8gaussians in 300 steps).
        point_defaults={"hidden": 64, "depth": 3, "buffer_size": 2000, "init_scale": 4.0, "step_size": 0.01,
                        "noise_scale": 0.1414, "clip": None, "dsm_sigma": 0.2},
        image_defaults={"buffer_size": 10000, "init_scale": 1.0},
        loss_fn=_ebm_loss,
        sample_fn=_ebm_sample,
        check_settings=_ebm_check,
        variants={"cd": {"objective": "cd"}, "jem": {"objective": "jem", "conditional": True},
                  "dsm": {"objective": "dsm"}, "ssm": {"objective": "ssm"}, "nce": {"objective": "nce"}},
    ),
    "d3pm": Recipe(
        name="d3pm",
        module="edifice.generative.d3pm",
        summary="discrete diffusion D3PM (Austin et al. 2021): uniform, absorbing (masked) and discretised-Gaussian "
                "transitions, hybrid loss, ancestral sampling",
        samplers={"ancestral": None},
        default_sampler="ancestral",
        settings={**_UNCOND, "hybrid_lambda": 0.01},
        point_defaults={"hidden": 128, "depth": 3, "categories": 32, "transition": "gaussian", "T": 100},
        image_defaults={"categories": 2, "transition": "absorbing", "T": 100},
        loss_fn=_d3pm_loss,
        sample_fn=_d3pm_sample,
        check_settings=_d3pm_check,
        eval_fn=_d3pm_eval,
        image_levels=lambda options: options["build"]["categories"],
        # The discretised-Gaussian chain needs many categories to mix: with 2 it is still 0.76 / 0.24 after 100
        # steps (guides/autoregressive_and_discrete.md), so its variant quantises to 16 levels.
        variants={"absorbing": {"transition": "absorbing"}, "uniform": {"transition": "uniform"},
                  "gaussian": {"transition": "gaussian", "categories": 16}},
    ),
    "rbm": Recipe(
        name="rbm",
        module="edifice.generative.rbm",
        summary="restricted Boltzmann machines (Hinton 2002): Bernoulli / Gaussian visibles, CD-k and persistent "
                "CD, Gibbs sampling; exact NLL when small",
        samplers={"gibbs": 1000},
        default_sampler="gibbs",
        # CD-1 by default: on binarised digits (Adam lr 0.01, 400 steps, 16 hidden) it reaches an exact test NLL of
        # 19.5 nats against PCD-1's 20.7 (guides/energy_based.md); --variant pcd for persistent chains.
        settings={**_UNCOND, "k": 1, "persistent": False},
        point_defaults={"visible": "gaussian", "sigma": 0.5, "hidden": 64, "chains": 256},
        image_defaults={"hidden": 16, "chains": 100},
        loss_fn=_rbm_loss,
        sample_fn=_rbm_sample,
        log_prob_fn=_rbm_log_prob,
        check_settings=_rbm_check,
        eval_fn=_rbm_eval,
        likelihood_kind=_rbm_kind,
        image_levels=lambda options: 2 if _rbm_kind(options) == "pmf" else None,
        image_nll_n=None,
        variants={"cd": {"persistent": False}, "pcd": {"persistent": True}},
    ),
    "mdn": Recipe(
        name="mdn",
        module="edifice.generative.mdn",
        summary="mixture density networks (Bishop 1994): a Gaussian mixture p(y | x) for points (x, y); "
                "try --data inverse_sine",
        samplers={"ancestral": None},
        default_sampler="ancestral",
        settings=dict(_UNCOND),
        point_defaults={"components": 5, "hidden": 64, "depth": 2},
        image_defaults={},
        loss_fn=_mdn_loss,
        sample_fn=_mdn_sample,
        data_defaults=_mdn_data_defaults,
        eval_fn=_mdn_eval,
    ),
}
