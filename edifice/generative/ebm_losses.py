r"""Sampling-free objectives for energy-based models: denoising / sliced score matching and NCE.

An energy network is any callable ``E(x, **cond) -> (B,)`` (low energy = likely); the model density is
``p_θ(x) = exp(-E(x)) / Z``, and its **score** ``s(x) = ∇_x log p_θ(x) = -∇_x E(x)`` does not depend on the
intractable ``Z`` (:func:`score_of`). The three objectives here train ``E`` without MCMC negatives:

* **Denoising score matching** (Vincent 2011, eq. for ``J_DSMq``; with Song & Ermon's ``σ²`` weighting):
  perturb ``x̃ = x + σ ε`` and regress the score onto the score of the perturbation kernel,
  ``∇_x̃ log q_σ(x̃ | x) = -(x̃ - x)/σ²`` (:func:`dsm_loss`)::

      L_DSM = σ²/2 · E ‖s_θ(x̃) + (x̃ - x)/σ²‖².

  It equals, up to a constant, explicit score matching against the *smoothed* density ``p * N(0, σ² I)``,
  so its minimiser is the score of the data blurred by σ (a Gaussian ``N(μ, τ² I)`` is fitted as
  ``N(μ, (τ² + σ²) I)``).
* **Sliced score matching** (Song, Garg, Shi & Ermon 2019, eq. 7 and its variance-reduced form SSM-VR,
  eq. 8): Hyvärinen's explicit objective ``E[tr ∇_x s(x) + ½‖s(x)‖²]`` with the trace replaced by random
  projections ``vᵀ ∇_x s(x) v`` (``E[v vᵀ] = I``), one Hessian-vector product per projection
  (:func:`ssm_loss`)::

      L_SSM    = E_v E_x [vᵀ ∇_x s(x) v + ½ (vᵀ s(x))²],
      L_SSM-VR = E_v E_x [vᵀ ∇_x s(x) v + ½ ‖s(x)‖²].

  Both have the explicit score-matching objective as their expectation over ``v`` (in terms of the
  energy: ``E[-tr ∇²E(x) + ½‖∇E(x)‖²]``), whose minimiser is the data density itself.
* **Noise-contrastive estimation** (Gutmann & Hyvärinen 2010, eq. 3 with ``ν`` noise samples per data
  sample): logistic regression of data against samples of a known noise density ``q``, with the
  *unnormalised* model ``log p_m(x) = -E(x) - log Z`` and ``log Z`` a free parameter
  (:func:`nce_loss`)::

      G(u) = log p_m(u) - log q(u) - log ν,
      L_NCE = E_data softplus(-G(x)) + ν E_q softplus(G(y)).

  At the data density with the right ``log Z`` its gradient vanishes (the estimator is consistent and
  self-normalising); here ``q`` is a Gaussian fitted to the batch.

Example (a quadratic energy has the linear score ``-(x - μ)/s²``; sliced score matching with the scaled
basis ``√D e_i`` as projections is exactly ``-D/s² + ½‖x - μ‖²/s⁴``):
    >>> import torch
    >>> from edifice.generative import ebm_losses
    >>> energy = lambda x: (x - 1.0).pow(2).sum(1) / 2.0
    >>> ebm_losses.score_of(energy, torch.tensor([[3.0, 1.0]]), create_graph=False)
    tensor([[-2., -0.]])
    >>> v = torch.eye(2)[:, None, :] * 2 ** 0.5                  # (P=2, B=1, D=2)
    >>> loss, logs = ebm_losses.ssm_loss(energy, torch.tensor([[3.0, 1.0]]), projections=v)
    >>> round(float(logs["loss"]), 5)                             # -2 + ½·4
    0.0

References:
    A Connection Between Score Matching and Denoising Autoencoders. Vincent, 2011. Neural Computation 23(7).
    Estimation of Non-Normalized Statistical Models by Score Matching. Hyvärinen, 2005. JMLR 6.
    Sliced Score Matching: A Scalable Approach to Density and Score Estimation. Song, Garg, Shi, Ermon, 2019.
    arXiv:1905.07088.
    Noise-contrastive estimation: A new estimation principle for unnormalized statistical models. Gutmann,
    Hyvärinen, 2010. AISTATS (PMLR 9).
    Generative Modeling by Estimating Gradients of the Data Distribution. Song, Ermon, 2019. arXiv:1907.05600
    (the ``σ²`` weighting of DSM).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from edifice._checks import check_choice, check_cond, check_float, check_generator, check_int, check_tensor, rand, randn

__all__ = ["score_of", "dsm_loss", "ssm_loss", "nce_loss"]

Logs = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------- helpers


def _check_energy(energy: Any) -> None:
    if not callable(energy):
        raise TypeError(f"energy must be callable as energy(x, **cond) -> (B,), got {type(energy).__name__}")


def _check_x(x: Any) -> torch.Tensor:
    check_tensor("x", x, floating=True)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a batch (B, ...) with B >= 1 and at least 2 dimensions, got shape {tuple(x.shape)}")
    return x


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def _repeat_cond(cond: dict[str, Any], batch: int, reps: int) -> dict[str, Any]:
    """Repeat conditioning tensors whose first dimension is the batch ``reps`` times (for a tiled batch)."""
    if reps == 1:
        return cond
    out = {}
    for k, v in cond.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch:
            v = v.repeat(reps, *([1] * (v.ndim - 1)))  # (reps·B, ...)
        out[k] = v
    return out


def _energy(energy: Callable[..., torch.Tensor], x: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
    """Call the energy and check that it returns one value per sample."""
    e = energy(x, **cond)
    if not isinstance(e, torch.Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
        raise ValueError(f"energy must return a tensor of shape ({x.shape[0]},) (one energy per sample), got {got}")
    return e


def score_of(
    energy: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    create_graph: bool,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """The model score ``s(x) = -∇_x E(x)`` (the gradient of ``log p_θ``; ``Z`` drops out).

    Works under ``torch.no_grad`` (gradients are enabled locally), so samplers can call it. If ``x`` already
    requires grad it is differentiated as it is (so callers can take further derivatives in ``x``); otherwise
    a detached copy is.

    Args:
        energy: ``energy(x, **cond) -> (B,)``.
        x: ``(B, ...)`` points.
        create_graph: keep the graph of the score (True to backpropagate a loss built on it into the
            energy's parameters or to differentiate it again; False for sampling).
        cond: conditioning keyword arguments for ``energy``.

    Returns:
        ``(B, ...)`` score, same shape as ``x``; detached when ``create_graph`` is False.

    Raises:
        TypeError: ``energy`` not callable, ``x`` not a floating tensor, ``create_graph`` not a bool.
        ValueError: ``x`` not a batch, or ``energy`` not returning shape ``(B,)``.
    """
    _check_energy(energy)
    _check_x(x)
    _check_bool("create_graph", create_graph)
    cond = check_cond(cond)
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        e = _energy(energy, x, cond)
        (grad,) = torch.autograd.grad(e.sum(), x, create_graph=create_graph)
    return -grad if create_graph else -grad.detach()


# ------------------------------------------------------------------------------------------------------- DSM


def dsm_loss(
    energy: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, Logs]:
    r"""Denoising score matching ``σ²/2 · mean_B ‖s_θ(x̃) + (x̃ - x)/σ²‖²``, ``x̃ = x + σ ε`` (Vincent 2011).

    The squared norm is summed over each sample's coordinates and averaged over the batch. With ``σ²``
    weighting the target ``-(x̃ - x)/σ² = -ε/σ`` has unit scale, so the loss reads
    ``½ mean ‖σ s_θ(x̃) + ε‖²``. Its population minimiser is the score of the smoothed data
    ``p * N(0, σ² I)`` (Vincent's equivalence of ``J_DSMq`` and ``J_ESMq``).

    Args:
        energy: ``energy(x, **cond) -> (B,)``.
        x: ``(B, ...)`` data batch (model space).
        sigma: noise level ``σ > 0``.
        generator: draws ``ε``.
        noise: ``(B, ...)`` override for ``ε ~ N(0, I)``.
        cond: conditioning keyword arguments for ``energy``.

    Returns:
        ``(loss, {"loss", "score_norm"})``: a scalar with the graph into the energy's parameters, and detached
        logs (``score_norm`` is the batch mean of ``σ ‖s_θ(x̃)‖``, about ``√D`` when fitted).

    Raises:
        ValueError / TypeError: naming ``energy``, ``x``, ``sigma``, ``noise``, ``generator`` or ``cond``.

    References:
        A Connection Between Score Matching and Denoising Autoencoders. Vincent, 2011.
        Generative Modeling by Estimating Gradients of the Data Distribution. Song, Ermon, 2019.
        arXiv:1907.05600.
    """
    _check_energy(energy)
    x = _check_x(x).detach()
    sigma = check_float("sigma", sigma, min=0.0, min_open=True)
    check_generator(generator)
    cond = check_cond(cond)
    if noise is None:
        noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        check_tensor("noise", noise, shape=x.shape, floating=True)
        noise = noise.to(device=x.device, dtype=x.dtype)
    x_tilde = x + sigma * noise
    score = score_of(energy, x_tilde, create_graph=True, cond=cond)
    # σ²/2 ‖s + (x̃ - x)/σ²‖² = ½ ‖σ s + ε‖²
    per_sample = 0.5 * (sigma * score + noise).flatten(1).pow(2).sum(1)  # (B,)
    loss = per_sample.mean()
    score_norm = (sigma * score.detach()).flatten(1).norm(dim=1).mean()
    return loss, {"loss": loss.detach(), "score_norm": score_norm}


# ------------------------------------------------------------------------------------------------------- SSM

PROJECTIONS = ("gaussian", "rademacher")


def ssm_loss(
    energy: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    n_projections: int = 1,
    variance_reduction: bool = True,
    projection: str = "gaussian",
    generator: torch.Generator | None = None,
    projections: torch.Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, Logs]:
    r"""Sliced score matching (Song et al. 2019, eq. 7; SSM-VR, eq. 8, when ``variance_reduction``).

    For each sample and each of ``P = n_projections`` random directions ``v`` with ``E[v vᵀ] = I``::

        ℓ(x, v) = vᵀ ∇_x s(x) v + ½ (vᵀ s(x))²        (SSM)
        ℓ(x, v) = vᵀ ∇_x s(x) v + ½ ‖s(x)‖²           (SSM-VR: the second term's expectation in v, exact)

    and the loss is the mean over samples and directions. ``vᵀ ∇_x s v`` is one Hessian-vector product
    (a second backward pass through ``E``); the batch is tiled ``P`` times so one call of ``energy`` sees
    ``P·B`` points. The expectation over ``v`` is Hyvärinen's explicit objective
    ``E[tr ∇_x s(x) + ½‖s(x)‖²] = E[-ΔE(x) + ½‖∇E(x)‖²]``.

    Args:
        energy: ``energy(x, **cond) -> (B,)``; must be twice differentiable in ``x`` (e.g. SiLU / softplus,
            not ReLU: a piecewise-linear energy has zero Hessian and the trace term vanishes).
        x: ``(B, ...)`` data batch.
        n_projections: directions per sample (``P >= 1``).
        variance_reduction: use SSM-VR's analytic ``½‖s‖²`` (True) or plain SSM's ``½ (vᵀ s)²``.
        projection: law of ``v``: ``"gaussian"`` (``N(0, I)``) or ``"rademacher"`` (±1 entries); both have
            ``E[v vᵀ] = I``.
        generator: draws the directions.
        projections: ``(P, B, ...)`` override for the directions (``n_projections`` is then ``P``).
        cond: conditioning keyword arguments for ``energy`` (tensors with first dimension ``B`` are tiled).

    Returns:
        ``(loss, {"loss", "trace", "score_sq"})``: ``trace`` the mean ``vᵀ ∇_x s v`` (an estimate of
        ``tr ∇_x s``), ``score_sq`` the mean of the second term.

    Raises:
        ValueError / TypeError: naming ``energy``, ``x``, ``n_projections``, ``variance_reduction``,
        ``projection``, ``projections``, ``generator`` or ``cond``.

    References:
        Sliced Score Matching: A Scalable Approach to Density and Score Estimation. Song, Garg, Shi, Ermon,
        2019. arXiv:1905.07088.
        Estimation of Non-Normalized Statistical Models by Score Matching. Hyvärinen, 2005. JMLR 6.
    """
    _check_energy(energy)
    x = _check_x(x).detach()
    n_projections = check_int("n_projections", n_projections, min=1)
    _check_bool("variance_reduction", variance_reduction)
    check_choice("projection", projection, PROJECTIONS)
    check_generator(generator)
    cond = check_cond(cond)
    b = x.shape[0]
    if projections is None:
        shape = (n_projections, *x.shape)
        if projection == "gaussian":
            v = randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        else:
            v = rand(shape, generator=generator, device=x.device, dtype=x.dtype).lt(0.5).to(x.dtype) * 2 - 1
    else:
        check_tensor("projections", projections, shape=(None, *x.shape), floating=True)
        if projections.shape[0] < 1:
            raise ValueError(f"projections must hold at least one direction, got shape {tuple(projections.shape)}")
        v = projections.to(device=x.device, dtype=x.dtype)
    p = v.shape[0]
    v = v.reshape(p * b, *x.shape[1:])  # (P·B, ...)
    with torch.enable_grad():
        x_rep = x.repeat(p, *([1] * (x.ndim - 1))).requires_grad_(True)  # (P·B, ...)
        score = score_of(energy, x_rep, create_graph=True, cond=_repeat_cond(cond, b, p))  # (P·B, ...)
        sv = (score * v).flatten(1).sum(1)  # (P·B,) vᵀ s
        (grad_sv,) = torch.autograd.grad(sv.sum(), x_rep, create_graph=True)  # ∇_x (vᵀ s) = (∇_x s)ᵀ v
    trace = (grad_sv * v).flatten(1).sum(1)  # (P·B,) vᵀ ∇_x s v
    score_sq = 0.5 * (score.flatten(1).pow(2).sum(1) if variance_reduction else sv.pow(2))  # (P·B,)
    loss = (trace + score_sq).mean()
    return loss, {"loss": loss.detach(), "trace": trace.detach().mean(), "score_sq": score_sq.detach().mean()}


# ------------------------------------------------------------------------------------------------------- NCE


def _log_z(energy: Any, log_z: Any, x: torch.Tensor) -> torch.Tensor:
    if log_z is None:
        log_z = getattr(energy, "log_z", None)
        if log_z is None:
            return torch.zeros((), device=x.device, dtype=x.dtype)
        name = "energy.log_z"
    else:
        name = "log_z"
    if isinstance(log_z, torch.Tensor):
        if log_z.numel() != 1 or not log_z.is_floating_point():
            raise ValueError(f"{name} must be a floating scalar tensor, got shape {tuple(log_z.shape)} "
                             f"dtype {log_z.dtype}")
        return log_z.reshape(()).to(device=x.device, dtype=x.dtype)
    return torch.tensor(check_float(name, log_z), device=x.device, dtype=x.dtype)


def nce_loss(
    energy: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    log_z: torch.Tensor | float | None = None,
    noise_std: float | None = None,
    noise_ratio: int = 1,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, Logs]:
    r"""Noise-contrastive estimation against a Gaussian fitted to the batch (Gutmann & Hyvärinen 2010).

    The noise law is ``q = N(m, σ_q² I)`` with ``m`` the batch mean per coordinate and ``σ_q`` the batch's
    pooled standard deviation ``sqrt(mean (x - m)²)`` (or ``noise_std``); both are detached. With
    ``ν = noise_ratio`` noise samples ``y`` per data point and ``log p_m(u) = -E(u) - log Z``, the classifier
    logit is ``G(u) = log p_m(u) - log q(u) - log ν`` and (their eq. 3, divided by the number of data points)::

        L = mean_data softplus(-G(x)) + ν · mean_noise softplus(G(y)).

    ``log Z`` is learned with the energy: pass a scalar parameter as ``log_z``; with ``log_z=None`` the
    energy's own ``log_z`` attribute is used if it has one, else ``log Z = 0`` (the energy's output bias then
    plays its role: NCE makes the model self-normalised either way). For conditional energies one ``log Z``
    is shared by all conditions.

    Args:
        energy: ``energy(x, **cond) -> (B,)``.
        x: ``(B, ...)`` data batch.
        log_z: a 0-dim tensor (e.g. an ``nn.Parameter``) or a number, or None (see above).
        noise_std: the noise's standard deviation (> 0); None fits it to the batch.
        noise_ratio: ``ν >= 1`` noise samples per data sample.
        generator: draws the noise.
        noise: ``(ν·B, ...)`` override for the standard-normal draws (the noise is ``m + σ_q · noise``).
        cond: conditioning keyword arguments for ``energy`` (tensors with first dimension ``B`` are tiled ``ν``
            times for the noise samples).

    Returns:
        ``(loss, {"loss", "log_z", "accuracy"})``: ``accuracy`` is the fraction of data and noise points the
        classifier ``G > 0`` labels correctly (0.5 when the model cannot tell them apart).

    Raises:
        ValueError / TypeError: naming ``energy``, ``x`` (e.g. a batch with zero spread and no ``noise_std``),
        ``log_z``, ``noise_std``, ``noise_ratio``, ``noise``, ``generator`` or ``cond``.

    References:
        Noise-contrastive estimation: A new estimation principle for unnormalized statistical models.
        Gutmann, Hyvärinen, 2010. AISTATS.
    """
    _check_energy(energy)
    x = _check_x(x).detach()
    nu = check_int("noise_ratio", noise_ratio, min=1)
    check_generator(generator)
    cond = check_cond(cond)
    lz = _log_z(energy, log_z, x)
    b, d = x.shape[0], x[0].numel()
    mean = x.mean(0, keepdim=True)  # (1, ...)
    if noise_std is None:
        std = float((x - mean).pow(2).mean().sqrt())
        if not std > 0.0:
            raise ValueError(f"x has zero spread (pooled std {std}); pass noise_std to define the noise")
    else:
        std = check_float("noise_std", noise_std, min=0.0, min_open=True)
    shape = (nu * b, *x.shape[1:])
    if noise is None:
        noise = randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        check_tensor("noise", noise, shape=shape, floating=True)
        noise = noise.to(device=x.device, dtype=x.dtype)
    y = mean + std * noise  # (ν·B, ...)

    def log_q(u: torch.Tensor) -> torch.Tensor:  # (N,) Gaussian log density
        z = (u - mean).flatten(1) / std
        return -0.5 * z.pow(2).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))

    g_data = -_energy(energy, x, cond) - lz - log_q(x) - math.log(nu)  # (B,)
    g_noise = -_energy(energy, y, _repeat_cond(cond, b, nu)) - lz - log_q(y) - math.log(nu)  # (ν·B,)
    loss = F.softplus(-g_data).mean() + nu * F.softplus(g_noise).mean()
    correct = (g_data.detach() > 0).sum() + (g_noise.detach() <= 0).sum()
    accuracy = correct.to(x.dtype) / (b + nu * b)
    return loss, {"loss": loss.detach(), "log_z": lz.detach().clone(), "accuracy": accuracy}
