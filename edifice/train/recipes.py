"""Recipes: how each family is built, trained and sampled — one table row per family.

A :class:`Recipe` turns a data source plus user options into the family's build options, and
adapts the family's pure ``loss`` / ``sample`` / ``log_prob`` functions to one calling
convention used by :func:`edifice.train.fit` and the CLI:

- ``recipe.resolve(data, user_options) -> options``: ``{"build": {...}, "settings": {...}}``,
  JSON-serialisable; ``build`` goes to the family's ``build`` (``data_shape`` and
  ``num_classes`` come from the data), ``settings`` are training / sampling choices such as the
  noise schedule or the coupling;
- ``recipe.build(options) -> nets``;
- ``recipe.loss(nets, x, y, options=..., generator=...) -> (loss, logs)``; class labels reach the
  network as ``cond={"y": y}`` when the model is conditional, with label dropout for
  classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598);
- ``recipe.sample(nets, n, options=..., sampler=..., steps=..., generator=..., label=...)``;
- ``recipe.log_prob(nets, x, options=..., generator=...)`` for families with a likelihood.

Families never import this module; a new family adds a row to :data:`RECIPES`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from .._checks import check_choice, check_float, check_int, rand

__all__ = ["Recipe", "Phase", "RECIPES", "get_recipe", "to_tuples"]

_FROM_DATA = ("data_shape", "num_classes")


def to_tuples(value: Any) -> Any:
    """Turn JSON lists back into tuples, recursively (build options such as ``channel_mults``)."""
    if isinstance(value, (list, tuple)):
        return tuple(to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: to_tuples(v) for k, v in value.items()}
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Phase:
    """One optimiser's share of a training step (families with several networks, e.g. GANs).

    A training step runs the recipe's phases in order; phase ``p`` repeats ``repeats(settings)``
    times (WGAN's ``n_critic``), each time on a fresh batch, with its own optimiser over the
    modules it names.

    Attributes:
        name: the phase name (logs: ``loss_<name>``; checkpoint: ``optim/<name>/...``).
        modules: the fields of the nets NamedTuple whose parameters this phase's optimiser updates.
        loss_fn(recipe, nets, x, cond, settings, generator) -> (loss, logs).
        repeats(settings) -> int: optimiser steps of this phase per training step.
        optim(settings, lr) -> dict: keyword arguments of AdamW (``lr``, ``betas``) for this phase,
            from the run's ``lr`` (separate learning rates, Heusel et al.'s TTUR).
        after(nets, settings) -> None: called after each optimiser step of the phase (e.g. WGAN's
            weight clipping), or None.
        active(settings, step, steps) -> bool: whether the phase trains at (0-based) ``step`` of ``steps``
            (latent diffusion trains its autoencoder first, then the latent denoiser); always by default.
        start(recipe, nets, data, settings) -> None: called once when the phase becomes active (the first
            step at which ``active`` holds and did not at the step before), e.g. to estimate the latent
            scale of latent diffusion from a fixed data batch; its effect must live in module buffers so
            that a resumed run gets it from the checkpoint.
    """

    name: str
    modules: tuple[str, ...]
    loss_fn: Callable[..., tuple[torch.Tensor, dict]]
    repeats: Callable[[Mapping[str, Any]], int] = field(default=lambda s: 1)
    optim: Callable[[Mapping[str, Any], float], dict] = field(default=lambda s, lr: {"lr": lr})
    after: Callable[[Any, Mapping[str, Any]], None] | None = None
    active: Callable[[Mapping[str, Any], int, int], bool] = field(default=lambda s, step, steps: True)
    start: Callable[..., None] | None = None


@dataclass(frozen=True)
class Recipe:
    """How one family is trained and sampled.

    Attributes:
        name: family name (CLI and checkpoint).
        module: import path of the family module (its ``build`` / ``loss`` / ``sample``).
        summary: one line for ``edifice list``.
        samplers: ``{sampler name: default steps}`` (``None``: the sampler's own default).
        default_sampler: the sampler used when none is named.
        settings: non-build options with their defaults (validated by ``check_settings``).
        point_defaults / image_defaults: defaults (build options or settings) for vector / image data.
        data_defaults(data) -> dict: defaults measured on the data (e.g. EDM's ``sigma_data``, the data's
            standard deviation); they override the fixed defaults, and the user's options override them.
        loss_fn(recipe, nets, x, cond, settings, generator) -> (loss, logs).
        sample_fn(recipe, nets, shape, cond, settings, sampler, steps, generator, device) -> x.
        log_prob_fn(recipe, nets, x, cond, settings, generator) -> (B,) nats, or None.
        check_settings(settings) -> None: raises ValueError / TypeError on a bad setting.
        data_defaults(data) -> dict: see above.
        phases: optimiser phases of a training step (None: one AdamW over every module minimising
            ``loss_fn``); see :class:`Phase`.
        variants: ``{name: options}``, named presets chosen with the ``variant`` option (the CLI's
            ``--variant``); the user's other options override them.
        eval_fn(recipe, nets, x_test, y_test, options, generator) -> dict: family metrics for
            :func:`edifice.train.evaluate` (e.g. the VAE's ELBO, VQ-VAE's perplexity), or None.
        likelihood_kind(options) -> "density" | "pmf": whether ``log_prob`` is a density in model space
            (images are dequantised before it is evaluated) or a probability mass over 256-level pixels.
        guidable: whether :meth:`sample` takes a classifier-free ``guidance_scale`` (one denoiser network
            called ``net(x, t, y=...)``).
        guide_fn(nets, wrap) -> nets: where the guidance wrapper goes in a multi-network family (default:
            ``wrap(nets)``, the single network).
        image_nll_n: test images :func:`edifice.train.evaluate` computes the NLL on by default (None: all of
            the evaluated ones; the ODE likelihoods cost hundreds of network calls per image, hence 64).
        image_levels(options) -> int | None: pixel levels of a family that models quantised images (2 for the
            binary families); :func:`edifice.train.evaluate` quantises the real images it compares samples
            with to as many levels. None: continuous pixels.
        teachers: families whose runs may serve as this family's ``teacher`` option (a run folder; see
            :mod:`edifice.train.teachers`); empty: the family takes no teacher.
        teacher_defaults(teacher) -> dict: defaults (build options or settings) taken from the teacher run
            (``teacher`` as recorded in ``options["teacher"]``), e.g. the student's architecture; the user's
            options override them.
        build_fn(recipe, options) -> nets: how the networks are built (default: the family's ``build`` on
            ``options["build"]``), e.g. a student with its frozen teacher.
        steps_setting: the setting that gives a sampler's steps when its default is None (progressive
            distillation's ``student_steps``).
        uses_step: the loss reads the training progress (consistency training's step curriculum): the fit
            loop then passes ``settings["_step"]`` and ``settings["_total_steps"]``.
    """

    name: str
    module: str
    summary: str
    samplers: Mapping[str, int | None]
    default_sampler: str
    settings: Mapping[str, Any]
    point_defaults: Mapping[str, Any]
    image_defaults: Mapping[str, Any]
    loss_fn: Callable[..., tuple[torch.Tensor, dict]]
    sample_fn: Callable[..., torch.Tensor]
    log_prob_fn: Callable[..., torch.Tensor] | None = None
    check_settings: Callable[[dict], None] = field(default=lambda s: None)
    data_defaults: Callable[[Any], dict[str, Any]] | None = None
    phases: tuple[Phase, ...] | None = None
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    eval_fn: Callable[..., dict[str, Any]] | None = None
    likelihood_kind: Callable[[Mapping[str, Any]], str] = field(default=lambda options: "density")
    image_nll_n: int | None = 64
    image_levels: Callable[[Mapping[str, Any]], int | None] = field(default=lambda options: None)
    guidable: bool = False
    guide_fn: Callable[[Any, Callable[[Any], Any]], Any] | None = None
    teachers: tuple[str, ...] = ()
    teacher_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    build_fn: Callable[..., Any] | None = None
    uses_step: bool = False
    steps_setting: str | None = None

    # -- options -------------------------------------------------------------------------------

    def family(self) -> ModuleType:
        """The family module."""
        return importlib.import_module(self.module)

    def build_keys(self) -> tuple[str, ...]:
        """Keyword options of the family's ``build`` that a user may set."""
        params = inspect.signature(self.family().build).parameters
        return tuple(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in _FROM_DATA)

    def resolve(self, data: Any, user_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Options for ``data`` (a :class:`edifice.data.DataSource`) and the user's overrides.

        Returns:
            ``{"build": {...}, "settings": {...}}`` with JSON-friendly values (tuples as lists).

        Raises:
            ValueError: for an unknown option (listing the valid ones), an option the data sets,
                ``conditional=True`` on unlabelled data, or an invalid value.
        """
        user = dict(user_options or {})
        variant = user.pop("variant", None)
        teacher_path = user.pop("teacher", None)
        teacher = None
        if teacher_path is not None:
            if not self.teachers:
                raise ValueError(f"family {self.name!r} takes no teacher, got teacher={teacher_path!r}")
            from .teachers import teacher_config

            teacher = teacher_config(teacher_path, self.teachers, data)
        build_keys = self.build_keys()
        defaults = self.image_defaults if data.kind == "images" else self.point_defaults
        if self.data_defaults is not None:
            defaults = {**defaults, **self.data_defaults(data)}
        if teacher is not None and self.teacher_defaults is not None:
            defaults = {**defaults, **self.teacher_defaults(teacher)}
        if variant is not None:
            if not self.variants:
                raise ValueError(f"family {self.name!r} has no variants, got variant={variant!r}")
            check_choice("variant", variant, tuple(self.variants))
            preset = self.variants[variant]
            stray = sorted(k for k in preset if k not in build_keys and k not in self.settings)
            if stray:  # a preset naming an option the family lacks would be silently ignored
                raise ValueError(f"variant {variant!r} of {self.name!r} sets unknown options {stray}")
            defaults = {**defaults, **preset}
        build = {k: v for k, v in defaults.items() if k in build_keys}
        settings = dict(self.settings)
        settings.update({k: v for k, v in defaults.items() if k in self.settings})
        if self.teachers:
            settings["teacher"] = None if teacher is None else teacher["path"]
        for key, value in user.items():
            if key == "teacher" or key.startswith("_"):
                raise ValueError(f"option {key!r} is not a settable option of {self.name!r}")
            if key in _FROM_DATA:
                raise ValueError(f"option {key!r} is set by the data ({data.name!r}); use conditional=false to drop labels")
            if key in build_keys:
                build[key] = value
            elif key in settings:
                settings[key] = value
            else:
                valid = ", ".join(sorted(set(build_keys) | set(settings)))
                raise ValueError(f"unknown option {key!r} for family {self.name!r}; valid options: {valid}")
        conditional = settings["conditional"]
        if conditional is None:
            conditional = data.num_classes is not None
        if not isinstance(conditional, bool):
            raise TypeError(f"option conditional must be true or false, got {conditional!r}")
        if conditional and data.num_classes is None:
            raise ValueError(f"option conditional=true needs labelled data, but {data.name!r} has no labels")
        settings["conditional"] = conditional
        check_float("label_dropout", settings["label_dropout"], min=0.0, max=1.0, max_open=True)
        self.check_settings(settings)
        build["data_shape"] = list(data.data_shape)
        build["num_classes"] = data.num_classes if conditional else None
        out = {"build": _jsonable(build), "settings": _jsonable(settings)}
        if variant is not None:
            out["variant"] = variant
        if teacher is not None:
            out["teacher"] = teacher
        return out

    def build(self, options: Mapping[str, Any]) -> Any:
        """Build the networks from resolved ``options`` (as saved in a checkpoint)."""
        if self.build_fn is not None:
            return self.build_fn(self, options)
        return self.family().build(**to_tuples(dict(options["build"])))

    # -- training / sampling -------------------------------------------------------------------

    def check_sampler(self, sampler: str | None, steps: int | None,
                      options: Mapping[str, Any] | None = None) -> tuple[str, int | None]:
        """Resolve the sampler name and step count (defaults filled in, from ``options`` where the recipe
        has a ``steps_setting``); raise on bad values."""
        sampler = self.default_sampler if sampler is None else sampler
        check_choice("sampler", sampler, tuple(self.samplers))
        steps = self.samplers[sampler] if steps is None else check_int("steps", steps, min=1)
        if steps is None and self.steps_setting is not None and options is not None:
            steps = options["settings"][self.steps_setting]
        return sampler, steps

    def check_label(self, options: Mapping[str, Any], label: int | None) -> None:
        """Raise unless ``label`` is None or a valid class of a conditional model."""
        if label is None:
            return
        num_classes = options["build"].get("num_classes")
        if num_classes is None:
            raise ValueError(f"label={label} was given but the model is unconditional (trained without labels)")
        check_int("label", label, min=0, max=num_classes - 1)

    def train_phases(self) -> tuple[Phase, ...]:
        """The optimiser phases of one training step (one phase over every module by default)."""
        if self.phases is not None:
            return self.phases
        return (Phase(name="model", modules=(), loss_fn=self.loss_fn),)

    def _cond(self, y: torch.Tensor | None, options: Mapping[str, Any],
              generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        settings = options["settings"]
        if not settings["conditional"]:
            return {}
        if y is None:
            raise ValueError("the model is conditional but the batch has no labels")
        p = settings["label_dropout"]
        if p > 0:  # classifier-free guidance training: some labels become the null label
            drop = rand((y.shape[0],), generator=generator, device=y.device) < p
            y = torch.where(drop, torch.full_like(y, options["build"]["num_classes"]), y)
        return {"y": y}

    def loss(self, nets: Any, x: torch.Tensor, y: torch.Tensor | None, *, options: Mapping[str, Any],
             generator: torch.Generator | None = None, phase: Phase | None = None, step: int = 0,
             total_steps: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss on a batch ``x`` ``(B, *data_shape)`` with labels ``y`` ``(B,)`` or None.

        ``phase`` picks the loss of one :class:`Phase` (default: the first phase, i.e. ``loss_fn``);
        ``step`` / ``total_steps`` (0-based) reach recipes with ``uses_step``.
        """
        cond = self._cond(y, options, generator)
        fn = self.train_phases()[0].loss_fn if phase is None else phase.loss_fn
        settings = options["settings"]
        if self.uses_step:
            settings = {**settings, "_step": step, "_total_steps": total_steps}
        return fn(self, nets, x, cond, settings, generator)

    def check_guidance(self, options: Mapping[str, Any], guidance_scale: float | None) -> float | None:
        """Raise unless ``guidance_scale`` is None or a scale ``>= 0`` for a conditional model that supports it."""
        if guidance_scale is None:
            return None
        scale = check_float("guidance_scale", guidance_scale, min=0.0)
        if not self.guidable:
            raise ValueError(f"guidance_scale={guidance_scale} was given but family {self.name!r} has no "
                             "classifier-free guidance")
        if options["build"].get("num_classes") is None:
            raise ValueError(f"guidance_scale={guidance_scale} was given but the model is unconditional "
                             "(train it with --class-cond / conditional=true)")
        return scale

    def sample(self, nets: Any, n: int, *, options: Mapping[str, Any], sampler: str | None = None,
               steps: int | None = None, generator: torch.Generator | None = None, label: int | None = None,
               device: torch.device | str | None = None, guidance_scale: float | None = None,
               guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
        """Draw ``n`` samples in model space, shape ``(n, *data_shape)``.

        A conditional model samples class ``label``, or the classes ``0, 1, ..., K-1, 0, ...`` in
        turn when ``label`` is None. ``guidance_scale`` (classifier-free guidance, Ho & Salimans 2022)
        wraps the network with :func:`edifice.guidance.cfg` (``guidance_interval``: where it applies, in
        the network's own time units); the model must have been trained with label dropout.
        """
        n = check_int("n", n, min=1)
        sampler, steps = self.check_sampler(sampler, steps, options)
        self.check_label(options, label)
        guidance_scale = self.check_guidance(options, guidance_scale)
        num_classes = options["build"].get("num_classes")
        if guidance_scale is not None:
            guidance = importlib.import_module("edifice.guidance")
            def wrap(net):
                return guidance.cfg(net, guidance_scale, num_classes=num_classes, interval=guidance_interval)

            nets = wrap(nets) if self.guide_fn is None else self.guide_fn(nets, wrap)
        cond = {}
        if num_classes is not None:
            y = torch.full((n,), label, dtype=torch.long) if label is not None else torch.arange(n) % num_classes
            cond = {"y": y.to(device) if device is not None else y}
        shape = (n, *options["build"]["data_shape"])
        return self.sample_fn(self, nets, shape, cond, options["settings"], sampler, steps, generator, device)

    @property
    def has_likelihood(self) -> bool:
        """Whether :meth:`log_prob` is available."""
        return self.log_prob_fn is not None

    def log_prob(self, nets: Any, x: torch.Tensor, *, options: Mapping[str, Any], y: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Log-density ``(B,)`` in nats of ``x`` in model space (conditional models use ``y`` if given)."""
        if self.log_prob_fn is None:
            raise ValueError(f"family {self.name!r} has no likelihood")
        cond = {"y": y} if (y is not None and options["build"].get("num_classes") is not None) else {}
        return self.log_prob_fn(self, nets, x, cond, options["settings"], generator)


# ---------------------------------------------------------------------------------------------
# DDPM (and DDIM sampling of the same network).


@functools.lru_cache(maxsize=8)
def _schedule(name: str, T: int) -> Any:
    from ..schedules import make_schedule

    return make_schedule(name, T)


def _ddpm_check(s: dict) -> None:
    check_choice("schedule", s["schedule"], ("linear", "cosine", "sigmoid"))
    check_int("T", s["T"], min=2)
    check_choice("target", s["target"], ("eps", "x0", "v"))
    check_choice("variance", s["variance"], ("small", "large"))
    check_float("eta", s["eta"], min=0.0)
    if s["clip_x0"] is not None:
        check_float("clip_x0", s["clip_x0"], min=0.0, min_open=True)


def _ddpm_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, schedule=_schedule(s["schedule"], s["T"]), target=s["target"],
                                generator=generator, cond=cond)


def _ddpm_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    schedule = _schedule(s["schedule"], s["T"])
    if sampler in ("dpm_solver", "dpm_solver_pp"):  # the same network through the fast ODE solvers
        dpm = importlib.import_module("edifice.generative.dpm_solver")
        return dpm.sample(net, shape, schedule=schedule, model_kind=s["target"], steps=steps,
                          **_DPM[sampler], generator=generator, cond=cond, device=device)
    if sampler in ("euler", "heun"):  # Karras et al.'s samplers on the DDPM network as a denoiser
        edm = importlib.import_module("edifice.generative.edm")
        sigmas = edm.vp_sigmas(schedule, steps)
        return edm.sample(edm.vp_denoiser(net, schedule, target=s["target"]), shape, sampler=sampler,
                          sigmas=sigmas, generator=generator, cond=cond, device=device)
    common = dict(schedule=schedule, target=s["target"], clip_x0=s["clip_x0"], generator=generator, cond=cond,
                  device=device)
    if sampler == "ddpm":
        return recipe.family().sample(net, shape, steps=steps, variance=s["variance"], **common)
    ddim = importlib.import_module("edifice.generative.ddim")
    return ddim.sample(net, shape, steps=steps, eta=s["eta"], **common)


# logSNR-uniform steps: Lu et al. recommend them for low-dimensional data (10-call RMS error 0.022 against
# 0.24 for time-uniform steps on a 2-D Gaussian, edifice_tests/generative/test_dpm_solver.py).
_DPM = {"dpm_solver": dict(algorithm="dpm_solver", order=3, method="singlestep", skip_type="logSNR"),
        "dpm_solver_pp": dict(algorithm="dpm_solver_pp", order=2, method="multistep", skip_type="logSNR")}


# ---------------------------------------------------------------------------------------------
# Flow matching.


def _fm_check(s: dict) -> None:
    check_float("sigma_min", s["sigma_min"], min=0.0, max=1.0, max_open=True)
    check_choice("coupling", s["coupling"], ("independent", "ot"))
    check_choice("time_dist", s["time_dist"], ("uniform", "logit_normal"))
    check_int("nll_steps", s["nll_steps"], min=1)
    check_choice("nll_method", s["nll_method"], ("euler", "midpoint", "heun", "rk4", "dopri5"))
    check_choice("divergence", s["divergence"], (None, "exact", "hutchinson"))


def _fm_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, sigma_min=s["sigma_min"], coupling=s["coupling"], time_dist=s["time_dist"],
                                generator=generator, cond=cond)


def _fm_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps=steps, method=sampler, generator=generator, cond=cond,
                                  device=device)


def _fm_log_prob(recipe, net, x, cond, s, generator):
    divergence = s["divergence"] or ("exact" if x[0].numel() <= 16 else "hutchinson")
    return recipe.family().log_prob(net, x, steps=s["nll_steps"], method=s["nll_method"], cond=cond,
                                    divergence=divergence, generator=generator)


# ---------------------------------------------------------------------------------------------
# Score SDEs (VP, VE, sub-VP), EDM and NCSN.

_NLL_METHODS = ("euler", "midpoint", "heun", "rk4", "dopri5")


def _nll_check(s: dict) -> None:
    check_int("nll_steps", s["nll_steps"], min=1)
    check_choice("nll_method", s["nll_method"], _NLL_METHODS)
    check_choice("divergence", s["divergence"], (None, "exact", "hutchinson"))


def _divergence(s: dict, x: torch.Tensor) -> str:
    from ..integrators import auto_divergence

    return s["divergence"] or auto_divergence(x)


def _sde_check(s: dict) -> None:
    check_choice("weighting", s["weighting"], ("variance", "likelihood", "none"))
    check_float("train_eps", s["train_eps"], min=0.0, max=1.0, min_open=True, max_open=True)
    check_float("sample_eps", s["sample_eps"], min=0.0, max=1.0, min_open=True, max_open=True)
    check_float("snr", s["snr"], min=0.0, min_open=True)
    check_choice("predictor", s["predictor"], ("euler_maruyama", "reverse_diffusion"))
    check_choice("corrector", s["corrector"], ("langevin", "none"))
    check_choice("ode_method", s["ode_method"], _NLL_METHODS)
    _nll_check(s)


def _sde_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, weighting=s["weighting"], eps=s["train_eps"], generator=generator,
                                cond=cond)


def _sde_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    if sampler in ("dpm_solver", "dpm_solver_pp"):
        if net.sde.name != "vp":
            raise ValueError(f"sampler {sampler!r} needs the vp SDE, but this model was trained with "
                             f"sde={net.sde.name!r}; use pc, em or ode")
        dpm = importlib.import_module("edifice.generative.dpm_solver")
        return dpm.sample(net, shape, schedule=net.sde, model_kind="score", steps=steps, **_DPM[sampler],
                          generator=generator, cond=cond, device=device)
    kw = dict(sampler=sampler, steps=steps, eps=s["sample_eps"], generator=generator, cond=cond, device=device)
    if sampler == "pc":
        kw.update(predictor=s["predictor"], corrector=s["corrector"], snr=s["snr"])
    elif sampler == "ode":
        kw.update(method=s["ode_method"])
    return recipe.family().sample(net, shape, **kw)


def _sde_log_prob(recipe, net, x, cond, s, generator):
    return recipe.family().log_prob(net, x, eps=s["train_eps"], steps=s["nll_steps"], method=s["nll_method"],
                                    divergence=_divergence(s, x), generator=generator, cond=cond)


def _edm_check(s: dict) -> None:
    from ..schedules import check_sigma_range

    check_sigma_range(s["sigma_min"], s["sigma_max"])
    check_float("rho", s["rho"], min=0.0, min_open=True)
    check_float("p_mean", s["p_mean"])
    check_float("p_std", s["p_std"], min=0.0, min_open=True)
    check_float("s_churn", s["s_churn"], min=0.0)
    check_float("s_noise", s["s_noise"], min=0.0)
    _nll_check(s)


def _edm_data_defaults(data) -> dict[str, Any]:
    """``sigma_data``: the standard deviation of the data in model space (Karras et al., Sec. 5: 0.5 for images
    in [-1, 1]); measured on a fixed batch so that a run's options do not depend on its seed."""
    x, _ = data.train_batch(4096, generator=torch.Generator().manual_seed(0))
    return {"sigma_data": round(float(x.double().std()), 4)}


def _edm_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, p_mean=s["p_mean"], p_std=s["p_std"], generator=generator, cond=cond)


def _edm_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps=steps, sampler=sampler, sigma_min=s["sigma_min"],
                                  sigma_max=s["sigma_max"], rho=s["rho"], s_churn=s["s_churn"],
                                  s_noise=s["s_noise"], generator=generator, cond=cond, device=device)


def _edm_log_prob(recipe, net, x, cond, s, generator):
    return recipe.family().log_prob(net, x, sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], rho=s["rho"],
                                    steps=s["nll_steps"], method=s["nll_method"], divergence=_divergence(s, x),
                                    generator=generator, cond=cond)


def _ncsn_check(s: dict) -> None:
    check_float("step_lr", s["step_lr"], min=0.0, min_open=True)
    if not isinstance(s["denoise"], bool):
        raise TypeError(f"option denoise must be true or false, got {s['denoise']!r}")


def _ncsn_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, generator=generator, cond=cond)


def _ncsn_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps_per_level=steps, step_lr=s["step_lr"], denoise=s["denoise"],
                                  generator=generator, cond=cond, device=device)


# ---------------------------------------------------------------------------------------------
# Latent-variable and adversarial families: VAE, VQ-VAE, GANs.


def _vae_check(s: dict) -> None:
    check_float("beta", s["beta"], min=0.0)
    check_choice("objective", s["objective"], ("elbo", "iwae"))
    check_int("k", s["k"], min=1)
    check_int("nll_k", s["nll_k"], min=1)


def _vae_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().loss(nets, x, beta=s["beta"], objective=s["objective"], k=s["k"], generator=generator,
                                cond=cond)


def _vae_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(nets, shape, mean=sampler == "mean", generator=generator, cond=cond, device=device)


def _vae_log_prob(recipe, nets, x, cond, s, generator):
    return recipe.family().log_prob(nets, x, k=s["nll_k"], generator=generator, cond=cond)


def _vae_likelihood_kind(options: Mapping[str, Any]) -> str:
    build = options["build"]
    likelihood = build.get("likelihood") or ("logistic" if len(build["data_shape"]) == 3 else "gaussian")  # build's rule
    return "density" if likelihood == "gaussian" else "pmf"


def _label_cond(options: Mapping[str, Any], y: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {"y": y} if (y is not None and options["build"].get("num_classes") is not None) else {}


def _vae_eval(recipe, nets, x, y, options, generator) -> dict[str, Any]:
    """Test ELBO (beta = 1) in nats per example and the reconstruction error of the posterior mean."""
    fam = recipe.family()
    cond = _label_cond(options, y)
    elbo = fam.elbo_per_example(nets, x, generator=generator, cond=cond)
    rec = fam.reconstruct(nets, x, cond=cond)
    return {"elbo": float(elbo.double().mean()), "recon_mse": float((rec.float() - x.float()).square().mean())}


def _vq_check(s: dict) -> None:
    check_float("beta", s["beta"], min=0.0)
    check_float("prior_weight", s["prior_weight"], min=0.0)
    check_float("temperature", s["temperature"], min=0.0, min_open=True)


def _vq_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().loss(nets, x, beta=s["beta"], prior_weight=s["prior_weight"], generator=generator,
                                cond=cond)


def _vq_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(nets, shape, temperature=s["temperature"], generator=generator, cond=cond,
                                  device=device)


def _vq_eval(recipe, nets, x, y, options, generator) -> dict[str, Any]:
    """Codebook perplexity and usage on the test set, reconstruction MSE, and the prior's NLL per code."""
    fam = recipe.family()
    out = {k: float(v) for k, v in fam.codebook_usage(nets, x).items()}
    rec = fam.reconstruct(nets, x)
    out["recon_mse"] = float((rec.float() - x.float()).square().mean())
    codes = fam.encode(nets, x)
    lp = fam.prior_log_prob(nets, codes, cond=_label_cond(options, y))
    out["prior_nll_per_code"] = float(-lp.double().mean() / codes[0].numel())
    return out


GAN_LOSSES = ("minimax", "non_saturating", "least_squares", "hinge", "wasserstein")


def _gan_check(s: dict) -> None:
    check_choice("loss", s["loss"], GAN_LOSSES)
    check_int("n_critic", s["n_critic"], min=1)
    for key in ("lr_d", "lr_g"):
        if s[key] is not None:
            check_float(key, s[key], min=0.0, min_open=True)
    betas = s["betas"]
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise ValueError(f"option betas must be a pair [beta1, beta2], got {betas!r}")
    for b in betas:
        check_float("betas", b, min=0.0, max=1.0, max_open=True)
    for key in ("gp_weight", "r1_weight", "aux_weight", "info_weight"):
        check_float(key, s[key], min=0.0)
    if s["clip"] is not None:
        check_float("clip", s["clip"], min=0.0, min_open=True)


def _gan_kw(s: dict) -> dict[str, Any]:
    return dict(kind=s["loss"], aux_weight=s["aux_weight"], info_weight=s["info_weight"])


def _gan_d_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().discriminator_objective(nets, x, gp_weight=s["gp_weight"], r1_weight=s["r1_weight"],
                                                   generator=generator, cond=cond, **_gan_kw(s))


def _gan_g_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().generator_objective(nets, x, generator=generator, cond=cond, **_gan_kw(s))


def _gan_optim(key: str) -> Callable[[Mapping[str, Any], float], dict]:
    return lambda s, lr: {"lr": s[key] if s[key] is not None else lr, "betas": tuple(s["betas"])}


def _gan_clip(nets, s) -> None:
    if s["clip"] is not None:  # WGAN (Arjovsky et al.): keep the critic Lipschitz by clipping its weights
        importlib.import_module("edifice.generative.gan").clip_weights_(nets.discriminator, s["clip"])


def _gan_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(nets, shape, generator=generator, cond=cond, device=device)


def _dit_check(s: dict) -> None:
    check_choice("schedule", s["schedule"], ("linear", "cosine", "sigmoid"))
    check_int("T", s["T"], min=2)
    check_float("eta", s["eta"], min=0.0)
    check_float("vlb_weight", s["vlb_weight"], min=0.0)
    if s["clip_x0"] is not None:
        check_float("clip_x0", s["clip_x0"], min=0.0, min_open=True)


def _dit_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, schedule=_schedule(s["schedule"], s["T"]), vlb_weight=s["vlb_weight"],
                                generator=generator, cond=cond)


def _dit_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, steps=steps, sampler=sampler, schedule=_schedule(s["schedule"], s["T"]),
                                  eta=s["eta"], clip_x0=s["clip_x0"], generator=generator, cond=cond, device=device)


def _dit_data_defaults(data) -> dict[str, Any]:
    """The small DiT presets by image size: ``tiny`` (patch 2) up to 16x16, ``small28`` (patch 4) above."""
    return {"preset": "tiny" if data.data_shape[-1] <= 16 else "small28"}


def _ldm_check(s: dict) -> None:
    check_float("ae_fraction", s["ae_fraction"], min=0.0, max=1.0, max_open=True)
    if s["kl_weight"] is not None:
        check_float("kl_weight", s["kl_weight"], min=0.0)
    if s["beta"] is not None:
        check_float("beta", s["beta"], min=0.0)
    check_int("scale_batch", s["scale_batch"], min=2)


def _ldm_switch(s: Mapping[str, Any], steps: int) -> int:
    """The step at which the autoencoder stops and the latent denoiser starts training."""
    return int(s["ae_fraction"] * steps)


def _ldm_ae_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().autoencoder_loss(nets, x, kl_weight=s["kl_weight"], beta=s["beta"], generator=generator)


def _ldm_den_loss(recipe, nets, x, cond, s, generator):
    return recipe.family().denoiser_loss(nets, x, generator=generator, cond=cond)


def _ldm_start(recipe, nets, data, s) -> None:
    """Rombach et al.'s latent scale ``1 / std(E(x))``, measured on a fixed batch when the denoiser starts."""
    x, _ = data.train_batch(s["scale_batch"], generator=torch.Generator().manual_seed(0))
    device = next(nets.encoder.parameters()).device
    was_training = nets.encoder.training
    nets.encoder.eval()
    with torch.no_grad():
        recipe.family().estimate_latent_scale(nets, x.to(device))
    nets.encoder.train(was_training)


def _ldm_sample(recipe, nets, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(nets, shape, steps=steps, sampler=None if sampler == "auto" else sampler,
                                  generator=generator, cond=cond, device=device)


def _ldm_guide(nets, wrap):
    return nets._replace(denoiser=wrap(nets.denoiser))


def _ldm_eval(recipe, nets, x, y, options, generator) -> dict[str, Any]:
    """The autoencoder's reconstruction error and the latent scale."""
    fam = recipe.family()
    rec = fam.decode(nets, fam.encode(nets, x))
    return {"recon_mse": float((rec.float() - x.float()).square().mean()),
            "latent_scale": float(nets.denoiser.latent_scale)}


def _flow_loss(recipe, net, x, cond, s, generator):
    return recipe.family().loss(net, x, generator=generator)


def _flow_sample(recipe, net, shape, cond, s, sampler, steps, generator, device):
    return recipe.family().sample(net, shape, generator=generator, device=device)


def _flow_log_prob(recipe, net, x, cond, s, generator):
    return recipe.family().log_prob(net, x)


_FLOW_KINDS = ("realnvp", "nice", "glow", "maf", "iaf", "nsf", "planar", "radial", "ffjord")

_COMMON = {"conditional": None, "label_dropout": 0.1}
# Latent-variable models and GANs are unconditional unless asked (the cvae / cgan / acgan variants).
_UNCOND = {"conditional": False, "label_dropout": 0.0}
# Likelihood: rk4 x 25 = 100 field evaluations; on EDM's Gaussian oracle it is within 8e-4 nats, heun x 50 0.04.
_NLL = {"nll_steps": 25, "nll_method": "rk4", "divergence": None}

RECIPES: dict[str, Recipe] = {
    "ddpm": Recipe(
        name="ddpm",
        guidable=True,
        module="edifice.generative.ddpm",
        summary="denoising diffusion (Ho et al. 2020): ancestral, DDIM, DPM-Solver(++), Karras Euler / Heun sampling",
        samplers={"ddpm": None, "ddim": 50, "dpm_solver": 30, "dpm_solver_pp": 20, "euler": 50, "heun": 25},
        default_sampler="ddpm",
        settings={**_COMMON, "schedule": "linear", "T": 1000, "target": "eps", "variance": "small",
                  "eta": 0.0, "clip_x0": None},
        point_defaults={"hidden": 128, "depth": 3},
        image_defaults={"clip_x0": 1.0},
        loss_fn=_ddpm_loss,
        sample_fn=_ddpm_sample,
        check_settings=_ddpm_check,
    ),
    "flow_matching": Recipe(
        name="flow_matching",
        guidable=True,
        module="edifice.generative.flow_matching",
        summary="conditional flow matching (Lipman et al. 2023): ODE sampling, exact likelihood",
        samplers={"euler": 50, "midpoint": 25, "heun": 25, "rk4": 15, "dopri5": 1},
        default_sampler="heun",
        settings={**_COMMON, "sigma_min": 0.0, "coupling": "independent", "time_dist": "uniform",
                  "nll_steps": 20, "nll_method": "midpoint", "divergence": None},
        point_defaults={"hidden": 128, "depth": 3},
        image_defaults={},
        loss_fn=_fm_loss,
        sample_fn=_fm_sample,
        log_prob_fn=_fm_log_prob,
        check_settings=_fm_check,
    ),
    "score_sde": Recipe(
        name="score_sde",
        guidable=True,
        module="edifice.generative.score_sde",
        summary="score-based SDEs (Song et al. 2021): VP / VE / sub-VP, PC, EM, probability-flow ODE, exact NLL",
        samplers={"pc": 500, "em": 1000, "ode": 100, "dpm_solver": 30, "dpm_solver_pp": 20},
        default_sampler="pc",
        settings={**_COMMON, "weighting": "variance", "train_eps": 1e-5, "sample_eps": 1e-3, "snr": 0.16,
                  "predictor": "reverse_diffusion", "corrector": "langevin", "ode_method": "heun", **_NLL},
        # 2-D data: sinusoidal features of ln σ for VE too (NCSN++'s Fourier features at scale 16 are for images;
        # on 8gaussians they train to W2 0.50 against 0.40, edifice_tests/test_learning.py).
        point_defaults={"hidden": 128, "depth": 3, "time_features": "sinusoidal"},
        image_defaults={},
        loss_fn=_sde_loss,
        sample_fn=_sde_sample,
        log_prob_fn=_sde_log_prob,
        check_settings=_sde_check,
    ),
    "edm": Recipe(
        name="edm",
        guidable=True,
        module="edifice.generative.edm",
        summary="EDM (Karras et al. 2022): preconditioned denoiser, Heun / Euler / stochastic sampling, exact NLL",
        samplers={"heun": 18, "euler": 35},
        default_sampler="heun",
        settings={**_COMMON, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "p_mean": -1.2, "p_std": 1.2,
                  "s_churn": 0.0, "s_noise": 1.0, **_NLL},
        point_defaults={"hidden": 128, "depth": 3},
        image_defaults={},
        loss_fn=_edm_loss,
        sample_fn=_edm_sample,
        log_prob_fn=_edm_log_prob,
        check_settings=_edm_check,
        data_defaults=_edm_data_defaults,
    ),
    "ncsn": Recipe(
        name="ncsn",
        guidable=True,
        module="edifice.generative.ncsn",
        summary="NCSN (Song & Ermon 2019): noise-conditional scores, annealed Langevin dynamics",
        samplers={"langevin": 100},
        default_sampler="langevin",
        settings={**_COMMON, "step_lr": 2e-5, "denoise": True},
        point_defaults={"hidden": 128, "depth": 3, "sigma_max": 5.0},
        image_defaults={},
        loss_fn=_ncsn_loss,
        sample_fn=_ncsn_sample,
        check_settings=_ncsn_check,
    ),
    "vae": Recipe(
        name="vae",
        module="edifice.generative.vae",
        summary="variational autoencoder (Kingma & Welling 2014): beta-VAE, IWAE, conditional, two-level; IS likelihood",
        samplers={"ancestral": None, "mean": None},
        default_sampler="ancestral",
        settings={**_UNCOND, "beta": 1.0, "objective": "elbo", "k": 1, "nll_k": 1000},
        point_defaults={"latent_dim": 2, "hidden": 128, "depth": 3, "likelihood": "gaussian"},
        image_defaults={"latent_dim": 16, "likelihood": "logistic"},
        loss_fn=_vae_loss,
        sample_fn=_vae_sample,
        log_prob_fn=_vae_log_prob,
        check_settings=_vae_check,
        variants={"beta_vae": {"beta": 4.0}, "iwae": {"objective": "iwae", "k": 5}, "cvae": {"conditional": True},
                  "hvae": {"levels": 2}},
        eval_fn=_vae_eval,
        likelihood_kind=_vae_likelihood_kind,
        image_nll_n=None,
    ),
    "vqvae": Recipe(
        name="vqvae",
        module="edifice.generative.vqvae",
        summary="VQ-VAE (van den Oord et al. 2017): EMA codebook, dead-code restarts, autoregressive prior over codes",
        samplers={"prior": None},
        default_sampler="prior",
        settings={**_UNCOND, "beta": 0.25, "prior_weight": 1.0, "temperature": 1.0},
        point_defaults={},
        image_defaults={},
        loss_fn=_vq_loss,
        sample_fn=_vq_sample,
        check_settings=_vq_check,
        variants={"transformer_prior": {"prior": "transformer"}, "no_ema": {"ema": False}},
        eval_fn=_vq_eval,
    ),
    "gan": Recipe(
        name="gan",
        module="edifice.generative.gan",
        summary="GANs (Goodfellow et al. 2014): MLP / DCGAN, SN, cGAN, ACGAN, InfoGAN; NS, LS, hinge, WGAN(-GP), R1",
        samplers={"generator": None},
        default_sampler="generator",
        settings={**_UNCOND, "loss": "non_saturating", "n_critic": 1, "lr_d": None, "lr_g": None,
                  "betas": [0.5, 0.999], "gp_weight": 0.0, "r1_weight": 0.0, "clip": None, "aux_weight": 1.0,
                  "info_weight": 1.0},
        point_defaults={},
        image_defaults={},
        loss_fn=_gan_d_loss,
        sample_fn=_gan_sample,
        check_settings=_gan_check,
        phases=(
            Phase(name="discriminator", modules=("discriminator",), loss_fn=_gan_d_loss,
                  repeats=lambda s: s["n_critic"], optim=_gan_optim("lr_d"), after=_gan_clip),
            Phase(name="generator", modules=("generator",), loss_fn=_gan_g_loss, optim=_gan_optim("lr_g")),
        ),
        variants={
            "dcgan": {"arch": "dcgan"},
            "sngan": {"spectral_norm": True, "loss": "hinge"},
            "cgan": {"conditional": True, "cond_mode": "projection"},
            "acgan": {"conditional": True, "cond_mode": "acgan"},
            "infogan": {"info_categorical": 10, "info_continuous": 2},
            "lsgan": {"loss": "least_squares"},
            "hinge": {"loss": "hinge"},
            "wgan": {"loss": "wasserstein", "n_critic": 5, "clip": 0.01},
            "wgan_gp": {"loss": "wasserstein", "n_critic": 5, "gp_weight": 10.0, "betas": [0.0, 0.9]},
        },
    ),
    "dit": Recipe(
        name="dit",
        module="edifice.generative.dit",
        summary="Diffusion Transformer (Peebles & Xie 2023): patches, AdaLN-Zero, DDPM training, learned sigma",
        guidable=True,
        samplers={"ddpm": None, "ddim": 50},
        default_sampler="ddpm",
        settings={**_COMMON, "schedule": "linear", "T": 1000, "eta": 0.0, "clip_x0": 1.0, "vlb_weight": 0.001},
        point_defaults={},
        image_defaults={},
        loss_fn=_dit_loss,
        sample_fn=_dit_sample,
        check_settings=_dit_check,
        data_defaults=_dit_data_defaults,
        variants={"learn_sigma": {"learn_sigma": True}},
    ),
    "latent_diffusion": Recipe(
        name="latent_diffusion",
        module="edifice.generative.latent_diffusion",
        summary="latent diffusion (Rombach et al. 2022): KL or VQ autoencoder, then DDPM / flow matching on latents",
        guidable=True,
        guide_fn=_ldm_guide,
        samplers={"auto": None, "ddpm": None, "ddim": 50, "euler": 20, "heun": 10},
        default_sampler="auto",
        settings={**_COMMON, "ae_fraction": 0.5, "kl_weight": None, "beta": None, "scale_batch": 1024},
        point_defaults={},
        image_defaults={},
        loss_fn=_ldm_ae_loss,
        sample_fn=_ldm_sample,
        check_settings=_ldm_check,
        phases=(
            Phase(name="autoencoder", modules=("encoder", "decoder"), loss_fn=_ldm_ae_loss,
                  active=lambda s, step, steps: step < _ldm_switch(s, steps)),
            Phase(name="denoiser", modules=("denoiser",), loss_fn=_ldm_den_loss,
                  active=lambda s, step, steps: step >= _ldm_switch(s, steps), start=_ldm_start),
        ),
        variants={"vq": {"autoencoder": "vqvae"}, "flow": {"objective": "flow_matching"}},
        eval_fn=_ldm_eval,
    ),
    "flow": Recipe(
        name="flow",
        module="edifice.generative.normalizing_flow",
        summary="normalizing flows: RealNVP, NICE, Glow, MAF, IAF, NSF, planar, radial, FFJORD; exact likelihood",
        samplers={"exact": None},
        default_sampler="exact",
        settings=dict(_UNCOND),
        point_defaults={"kind": "realnvp", "blocks": 6, "hidden": 64},
        image_defaults={"kind": "realnvp", "blocks": 4, "hidden": 64},
        loss_fn=_flow_loss,
        sample_fn=_flow_sample,
        log_prob_fn=_flow_log_prob,
        variants={kind: {"kind": kind} for kind in _FLOW_KINDS},
    ),
}

from .recipes_fewstep import FEWSTEP_RECIPES  # noqa: E402 - the few-step recipes build on the helpers above

RECIPES.update(FEWSTEP_RECIPES)

from .recipes_discrete import DISCRETE_RECIPES  # noqa: E402

RECIPES.update(DISCRETE_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe of family ``name``; the error lists the families that have one."""
    if not isinstance(name, str) or name not in RECIPES:
        raise ValueError(f"unknown family {name!r}; valid families: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
