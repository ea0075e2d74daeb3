"""Recipes of the one-step and few-step generators: consistency models, rectified flow, stochastic
interpolants, shortcut models, MeanFlow and progressive distillation.

The distillation families take a ``teacher`` run (see :mod:`edifice.train.teachers`):

============================  ==========================================  =====================================
family                        teacher                                     what is learnt from it
============================  ==========================================  =====================================
consistency                   optional: an ``edm`` or ``ddpm`` run         consistency distillation (else CT)
rectified_flow                optional: ``flow_matching``/``rectified_flow``  reflow on its (noise, sample) pairs,
                                                                          or one-step distillation
progressive_distillation      required: ``ddpm`` or an earlier round       half the teacher's DDIM steps
============================  ==========================================  =====================================
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch

from .._checks import check_choice, check_float, check_int
from . import teachers as T
from .recipes import _COMMON, _divergence, _edm_data_defaults, _nll_check, _schedule, Phase, Recipe, to_tuples

__all__ = ["FEWSTEP_RECIPES"]

_BACKBONE_KEYS = ("hidden", "depth", "base_channels", "channel_mults", "num_res_blocks", "dropout", "backbone",
                  "dit_preset", "patch_size")


def _teacher_build(teacher: Mapping[str, Any], keys: tuple[str, ...] = _BACKBONE_KEYS) -> dict[str, Any]:
    """The teacher's build options among ``keys`` (so that the student can start from its weights), and
    whether it was class-conditional (the student must match)."""
    build = teacher["options"]["build"]
    out = {k: build[k] for k in keys if k in build}
    out["conditional"] = teacher["options"]["settings"].get("conditional", False)
    return out


def _distilled_build(recipe: Recipe, options: Mapping[str, Any], pairs: int | None = None) -> Any:
    """The student alone, or ``Distilled(student, frozen teacher, pair bank)`` for a run with a teacher."""
    student = recipe.family().build(**to_tuples(dict(options["build"])))
    teacher = options.get("teacher")
    if teacher is None:
        return student
    bank = None if pairs is None else T.PairBank(pairs, tuple(options["build"]["data_shape"]))
    return T.Distilled(student, T.teacher_net(teacher), bank)


# ---------------------------------------------------------------------------------------------
# Consistency models: training (iCT) or distillation from an EDM / DDPM teacher.


def _cm_check(s: dict) -> None:
    check_int("s0", s["s0"], min=1)
    check_int("s1", s["s1"], min=s["s0"])
    check_float("p_mean", s["p_mean"])
    check_float("p_std", s["p_std"], min=0.0, min_open=True)
    check_float("rho", s["rho"], min=0.0, min_open=True)
    if s["metric"] is not None:
        check_choice("metric", s["metric"], ("pseudo_huber", "l2"))
    check_int("n", s["n"], min=2)
    check_choice("solver", s["solver"], ("heun", "euler"))


def _cm_teacher_defaults(teacher: Mapping[str, Any]) -> dict[str, Any]:
    out = _teacher_build(teacher)
    if teacher["family"] == "edm":
        out["sigma_data"] = teacher["options"]["build"]["sigma_data"]
    return out


def _cm_teacher_denoiser(teacher: T.FrozenTeacher) -> Any:
    """The teacher as an EDM denoiser ``D(x, sigma, **cond)``: EDM as it is, a DDPM network through ``vp_denoiser``."""
    if teacher.family == "edm":
        return teacher
    edm = importlib.import_module("edifice.generative.edm")
    s = teacher.settings
    return edm.vp_denoiser(teacher.net, _schedule(s["schedule"], s["T"]), target=s["target"])


def _cm_loss(recipe, nets, x, cond, s, generator):
    fam = recipe.family()
    if isinstance(nets, T.Distilled):
        return fam.distillation_loss(nets.student, _cm_teacher_denoiser(nets.teacher), x, n=s["n"], solver=s["solver"],
                                     rho=s["rho"], metric=s["metric"] or "l2", generator=generator, cond=cond)
    return fam.loss(nets, x, step=s["_step"], total_steps=s["_total_steps"], s0=s["s0"], s1=s["s1"], p_mean=s["p_mean"],
                    p_std=s["p_std"], rho=s["rho"], metric=s["metric"] or "pseudo_huber", generator=generator,
                    cond=cond)


def _cm_start(recipe, nets, data, s):
    # EDM's denoiser and the consistency function share the backbone F: start from the teacher's F (Song et al. 2023).
    init = isinstance(nets, T.Distilled) and nets.teacher.family == "edm"
    T.start(recipe, nets, data, s, init=init)


def _cm_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(T.student_of(nets), shape, steps=steps, generator=generator, cond=cond,
                                  device=device)


# ---------------------------------------------------------------------------------------------
# Rectified flow: training, reflow on a teacher's pairs, one-step distillation.

_RF_METHODS = ("train", "reflow", "distill")


def _rf_method(s: Mapping[str, Any]) -> str:
    return s["method"] or ("reflow" if s["teacher"] is not None else "train")


def _rf_check(s: dict) -> None:
    if s["method"] is not None:
        check_choice("method", s["method"], _RF_METHODS)
    method = _rf_method(s)
    if method != "train" and s["teacher"] is None:
        raise ValueError(f"method={method!r} needs option teacher (a flow_matching or rectified_flow run folder)")
    if method == "train" and s["teacher"] is not None:
        raise ValueError("method='train' takes no teacher; use method='reflow' or 'distill' with teacher")
    check_choice("time_dist", s["time_dist"], ("uniform", "logit_normal"))
    if s["n_pairs"] is not None:
        check_int("n_pairs", s["n_pairs"], min=1)
    check_int("pair_steps", s["pair_steps"], min=1)
    check_choice("pair_method", s["pair_method"], ("euler", "midpoint", "heun", "rk4"))
    _nll_check(s)


def _rf_build(recipe, options):
    s = options["settings"]
    n = s["n_pairs"] or (10_000 if len(options["build"]["data_shape"]) == 1 else 2048)
    return _distilled_build(recipe, options, pairs=n)


def _rf_fill(teacher, bank, s) -> None:
    """Draw the bank's noise and integrate the teacher's ODE from it, in chunks, with a fixed generator."""
    fam = importlib.import_module("edifice.generative.rectified_flow")
    device = bank.x0.device
    g = torch.Generator(device=device).manual_seed(0)
    n, chunk = bank.x0.shape[0], 1024
    num_classes = getattr(teacher.net, "num_classes", None)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        cond = {}
        if s["conditional"] and num_classes:
            y = (torch.arange(i, i + m, device=device) % num_classes)
            bank.y[i:i + m] = y
            cond = {"y": y}
        x0, x1 = fam.make_pairs(teacher, (m, *bank.x0.shape[1:]), steps=s["pair_steps"], method=s["pair_method"],
                                generator=g, cond=cond, device=device, dtype=bank.x0.dtype)
        bank.x0[i:i + m] = x0
        bank.x1[i:i + m] = x1


def _rf_start(recipe, nets, data, s):
    T.start(recipe, nets, data, s, fill_pairs=_rf_fill, init=bool(s["init_from_teacher"]))


def _rf_loss(recipe, nets, x, cond, s, generator):
    fam = recipe.family()
    if not isinstance(nets, T.Distilled):
        return fam.loss(nets, x, time_dist=s["time_dist"], generator=generator, cond=cond)
    x0, x1, y = nets.pairs.draw(x.shape[0], generator)
    cond = {"y": y} if cond else {}
    if _rf_method(s) == "distill":
        return fam.distill_loss(nets.student, x0, x1, cond=cond)
    return fam.reflow_loss(nets.student, x0, x1, generator=generator, cond=cond)


def _guide_student(nets, wrap):
    """Classifier-free guidance wraps the sampling network (the student of a distilled run)."""
    return nets._replace(student=wrap(nets.student)) if isinstance(nets, T.Distilled) else wrap(nets)


def _rf_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(T.student_of(nets), shape, steps=steps, method=sampler, generator=generator,
                                  cond=cond, device=device)


def _rf_log_prob(recipe, nets, x, cond, s, generator):
    fm = importlib.import_module("edifice.generative.flow_matching")
    return fm.log_prob(T.student_of(nets), x, steps=s["nll_steps"], method=s["nll_method"], cond=cond,
                       divergence=_divergence(s, x), generator=generator)


# ---------------------------------------------------------------------------------------------
# Stochastic interpolants, shortcut models, MeanFlow (trained from data alone).


def _si_check(s: dict) -> None:
    check_choice("kind", s["kind"], ("linear", "trig"))
    check_float("gamma_scale", s["gamma_scale"], min=0.0)
    check_choice("objective", s["objective"], ("velocity", "denoiser"))
    check_float("diffusion", s["diffusion"], min=0.0)


def _si_kw(s: Mapping[str, Any]) -> dict[str, Any]:
    return dict(kind=s["kind"], gamma_scale=s["gamma_scale"], objective=s["objective"])


def _si_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, generator=generator, cond=cond, **_si_kw(s))


def _si_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps=steps, method=sampler, diffusion=s["diffusion"],
                                  generator=generator, cond=cond, device=device, **_si_kw(s))


def _sc_check(s: dict) -> None:
    check_float("bootstrap_fraction", s["bootstrap_fraction"], min=0.0, max=1.0, max_open=True)


def _sc_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, bootstrap_fraction=s["bootstrap_fraction"], generator=generator, cond=cond)


def _plain_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps=steps, generator=generator, cond=cond, device=device)


def _mf_check(s: dict) -> None:
    check_float("ratio_unequal", s["ratio_unequal"], min=0.0, max=1.0)
    check_choice("time_dist", s["time_dist"], ("uniform", "logit_normal"))
    check_float("time_loc", s["time_loc"])
    check_float("time_scale", s["time_scale"], min=0.0, min_open=True)
    check_float("adaptive_p", s["adaptive_p"], min=0.0)
    check_float("adaptive_c", s["adaptive_c"], min=0.0, min_open=True)


def _mf_loss(recipe, net, x, cond, s, generator):
    kw = {k: s[k] for k in ("ratio_unequal", "time_dist", "time_loc", "time_scale", "adaptive_p", "adaptive_c")}
    return recipe.family().loss(net, x, generator=generator, cond=cond, **kw)


# ---------------------------------------------------------------------------------------------
# Progressive distillation: each run halves the DDIM steps of its teacher.

_PD_FROM_TEACHER = ("schedule", "T", "target")


def _pd_teacher_defaults(teacher: Mapping[str, Any]) -> dict[str, Any]:
    ts = teacher["options"]["settings"]
    out = _teacher_build(teacher, tuple(teacher["options"]["build"]))
    out.pop("data_shape", None)
    out.pop("num_classes", None)
    out.update({k: ts[k] for k in _PD_FROM_TEACHER})
    if teacher["family"] == "progressive_distillation":
        if ts["student_steps"] < 2:
            raise ValueError(f"option teacher={teacher['path']!r} already samples in 1 step; it cannot be halved")
        out["student_steps"] = ts["student_steps"] // 2
    return out


def _pd_check(s: dict) -> None:
    if s["teacher"] is None:
        raise ValueError("progressive_distillation needs option teacher (a ddpm or progressive_distillation run "
                         "folder; on the command line, --teacher RUN)")
    check_choice("schedule", s["schedule"], ("linear", "cosine", "sigmoid"))
    check_int("T", s["T"], min=2)
    check_choice("target", s["target"], ("eps", "x0", "v"))
    check_int("student_steps", s["student_steps"], min=1, max=s["T"] // 2)
    check_choice("weighting", s["weighting"], ("truncated_snr", "snr+1", "snr", "none"))


def _pd_build(recipe, options):
    teacher = options.get("teacher")
    if teacher is not None:  # the student's schedule must be its teacher's
        ts = teacher["options"]["settings"]
        for key in _PD_FROM_TEACHER:
            if options["settings"][key] != ts[key]:
                raise ValueError(f"option {key}={options['settings'][key]!r} differs from the teacher's "
                                 f"{ts[key]!r}; a distilled student keeps its teacher's {key}")
    return _distilled_build(recipe, options)


def _pd_start(recipe, nets, data, s):
    T.start(recipe, nets, data, s, init=True)  # the student starts as a copy of its teacher


def _pd_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().loss(nets.student, x, teacher=nets.teacher, student_steps=s["student_steps"],
                                schedule=_schedule(s["schedule"], s["T"]), target=s["target"],
                                weighting=s["weighting"], generator=generator, cond=cond)


def _pd_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(T.student_of(nets), shape, steps=steps,
                                  schedule=_schedule(s["schedule"], s["T"]), target=s["target"],
                                  generator=generator, cond=cond, device=device)


_SMALL = {"hidden": 128, "depth": 3}

FEWSTEP_RECIPES: dict[str, Recipe] = {
    "consistency": Recipe(
        name="consistency",
        module="edifice.generative.consistency",
        summary="consistency models (Song et al. 2023): improved consistency training, or distillation from an "
                "EDM / DDPM teacher; 1-step and multistep sampling",
        samplers={"multistep": 1},
        default_sampler="multistep",
        settings={**_COMMON, "s0": 10, "s1": 1280, "p_mean": -1.1, "p_std": 2.0, "rho": 7.0, "metric": None,
                  "n": 18, "solver": "heun"},
        point_defaults=_SMALL,
        image_defaults={},
        loss_fn=_cm_loss,
        sample_fn=_cm_sample,
        check_settings=_cm_check,
        data_defaults=_edm_data_defaults,
        teachers=("edm", "ddpm"),
        teacher_defaults=_cm_teacher_defaults,
        build_fn=_distilled_build,
        phases=(Phase(name="model", modules=(), loss_fn=_cm_loss, start=_cm_start),),
        uses_step=True,
    ),
    "rectified_flow": Recipe(
        name="rectified_flow",
        module="edifice.generative.rectified_flow",
        guidable=True,
        guide_fn=_guide_student,
        summary="rectified flow (Liu et al. 2023): straight-path flow, reflow on a teacher's pairs, one-step "
                "distillation; exact likelihood",
        samplers={"euler": 50, "midpoint": 25, "heun": 25, "rk4": 15},
        default_sampler="euler",
        settings={**_COMMON, "method": None, "time_dist": "uniform", "n_pairs": None, "pair_steps": 25,
                  "pair_method": "heun", "init_from_teacher": True, "nll_steps": 20, "nll_method": "midpoint",
                  "divergence": None},
        point_defaults=_SMALL,
        image_defaults={},
        loss_fn=_rf_loss,
        sample_fn=_rf_sample,
        log_prob_fn=_rf_log_prob,
        check_settings=_rf_check,
        teachers=("flow_matching", "rectified_flow"),
        teacher_defaults=lambda t: _teacher_build(t),
        build_fn=_rf_build,
        phases=(Phase(name="model", modules=(), loss_fn=_rf_loss, start=_rf_start),),
        variants={"reflow": {"method": "reflow"}, "distill": {"method": "distill"}},
    ),
    "interpolant": Recipe(
        name="interpolant",
        module="edifice.generative.interpolant",
        guidable=True,
        summary="stochastic interpolants (Albergo et al. 2023): linear / trigonometric paths with noise gamma(t); "
                "velocity or denoiser objective; ODE and SDE sampling",
        samplers={"euler": 50, "heun": 25, "sde": 100},
        default_sampler="heun",
        settings={**_COMMON, "kind": "linear", "gamma_scale": 0.0, "objective": "velocity", "diffusion": 1.0},
        point_defaults=_SMALL,
        image_defaults={},
        loss_fn=_si_loss,
        sample_fn=_si_sample,
        check_settings=_si_check,
        variants={"trig": {"kind": "trig"}, "stochastic": {"gamma_scale": 1.0, "objective": "denoiser"}},
    ),
    "shortcut": Recipe(
        name="shortcut",
        module="edifice.generative.shortcut",
        summary="shortcut models (Frans et al. 2025): a step-size-conditioned flow, sampled in 1, 2, 4, ... steps",
        samplers={"shortcut": 1},
        default_sampler="shortcut",
        settings={**_COMMON, "bootstrap_fraction": 0.25},
        point_defaults=_SMALL,
        image_defaults={},
        loss_fn=_sc_loss,
        sample_fn=_plain_sample,
        check_settings=_sc_check,
    ),
    "meanflow": Recipe(
        name="meanflow",
        module="edifice.generative.meanflow",
        summary="MeanFlow (Geng et al. 2025): average-velocity network u(z, r, t) trained by the MeanFlow "
                "identity (a JVP); one-step sampling",
        samplers={"meanflow": 1},
        default_sampler="meanflow",
        settings={**_COMMON, "ratio_unequal": 0.25, "time_dist": "logit_normal", "time_loc": -0.4,
                  "time_scale": 1.0, "adaptive_p": 1.0, "adaptive_c": 1e-3},
        # 2-D data: the paper's ImageNet law (logit-normal, 25% r < t, p = 1) reaches 1-step W2 0.37-0.74 on moons
        # in 500-1000 steps; uniform times, half r < t and p = 0.5 reach 0.26-0.37 (edifice_tests/generative/test_meanflow.py).
        point_defaults={**_SMALL, "ratio_unequal": 0.5, "time_dist": "uniform", "adaptive_p": 0.5},
        image_defaults={},
        loss_fn=_mf_loss,
        sample_fn=_plain_sample,
        check_settings=_mf_check,
    ),
    "progressive_distillation": Recipe(
        name="progressive_distillation",
        module="edifice.generative.progressive_distillation",
        summary="progressive distillation (Salimans & Ho 2022): each run halves the DDIM steps of its teacher",
        samplers={"ddim": None},
        default_sampler="ddim",
        settings={**_COMMON, "schedule": "cosine", "T": 1000, "target": "v", "student_steps": 32,
                  "weighting": "truncated_snr"},
        point_defaults={},
        image_defaults={},
        loss_fn=_pd_loss,
        sample_fn=_pd_sample,
        check_settings=_pd_check,
        teachers=("ddpm", "progressive_distillation"),
        teacher_defaults=_pd_teacher_defaults,
        build_fn=_pd_build,
        phases=(Phase(name="model", modules=(), loss_fn=_pd_loss, start=_pd_start),),
        steps_setting="student_steps",
    ),
}

