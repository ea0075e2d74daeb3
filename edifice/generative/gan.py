"""Generative adversarial networks: the pure discriminator / generator losses and regularisers.

This file holds only the loss functions; the GAN builders (generator and discriminator networks)
come later. ``f = D(G(z))`` and ``r = D(x)`` are the discriminator's raw outputs ("logits", no
sigmoid), shaped ``(B,)`` or ``(B, 1)``. Every loss is minimised; ``softplus(u) = log(1 + e^u)``
keeps the log-sigmoid terms stable for any logit (``-log σ(u) = softplus(-u)``,
``-log(1 - σ(u)) = softplus(u)``)::

    minimax / non_saturating (Goodfellow et al.; the same D loss for both):
        L_D = E[softplus(-r)] + E[softplus(f)]                 (binary cross-entropy)
        L_G = E[log(1 - σ(f))] = -E[softplus(f)]               (minimax, saturates when f << 0)
        L_G = -E[log σ(f)]     =  E[softplus(-f)]              (non-saturating)
    least_squares (Mao et al., a = 0, b = c = 1):
        L_D = ½ E[(r - 1)²] + ½ E[f²],          L_G = ½ E[(f - 1)²]
    hinge (Lim & Ye; Miyato et al.):
        L_D = E[relu(1 - r)] + E[relu(1 + f)],   L_G = -E[f]
    wasserstein (Arjovsky et al.; the critic must be kept 1-Lipschitz):
        L_D = E[f] - E[r],                       L_G = -E[f]

The Lipschitz constraint comes from :func:`clip_weights_` (WGAN) or :func:`gradient_penalty`
(WGAN-GP, Gulrajani et al.: ``E[(‖∇D(x̂)‖₂ - 1)²]`` on ``x̂ = α x + (1 - α) x̃``); :func:`r1_penalty`
(Mescheder et al.) is ``E[‖∇D(x)‖²]`` on real data. The optimal minimax discriminator is
``D*(x) = p(x) / (p(x) + q(x))``.

Example (hinge losses on hand-picked logits):
    >>> import torch
    >>> from edifice.generative import gan
    >>> real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.0])
    >>> loss, logs = gan.discriminator_loss(real, fake, kind="hinge")
    >>> loss  # (relu(-1) + relu(0.5)) / 2 + (relu(0) + relu(1)) / 2
    tensor(0.7500)
    >>> gan.generator_loss(fake, kind="wasserstein")[0]
    tensor(0.5000)

References:
    Generative Adversarial Nets. Goodfellow, Pouget-Abadie, Mirza, Xu, Warde-Farley, Ozair,
    Courville, Bengio, 2014. arXiv:1406.2661.
    Least Squares Generative Adversarial Networks. Mao, Li, Xie, Lau, Wang, Smolley, 2017.
    arXiv:1611.04076.
    Geometric GAN (hinge loss). Lim, Ye, 2017. arXiv:1705.02894.
    Spectral Normalization for Generative Adversarial Networks. Miyato, Kataoka, Koyama, Yoshida,
    2018. arXiv:1802.05957.
    Wasserstein GAN. Arjovsky, Chintala, Bottou, 2017. arXiv:1701.07875.
    Improved Training of Wasserstein GANs. Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, 2017.
    arXiv:1704.00028.
    Which Training Methods for GANs do actually Converge? (R1). Mescheder, Geiger, Nowozin, 2018.
    arXiv:1801.04406.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import append_dims, check_choice, check_cond, check_float, check_generator, check_tensor, rand

__all__ = ["LOSSES", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty", "clip_weights_"]

LOSSES = ("minimax", "non_saturating", "least_squares", "hinge", "wasserstein")


def _logits(name: str, value: Any) -> torch.Tensor:
    """Check a ``(B,)`` or ``(B, 1)`` floating logits tensor and return it as ``(B,)``."""
    check_tensor(name, value, floating=True)
    if value.ndim == 1:
        return value
    if value.ndim == 2 and value.shape[1] == 1:
        return value[:, 0]  # (B, 1) -> (B,)
    raise ValueError(f"{name} must have shape (B,) or (B, 1), got {tuple(value.shape)}")


def discriminator_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    *,
    kind: str = "non_saturating",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Discriminator (critic) loss for one of :data:`LOSSES` (equations in the module docstring).

    Args:
        real_logits: ``(B,)`` or ``(B, 1)`` raw outputs ``D(x)`` on data.
        fake_logits: raw outputs ``D(G(z))`` on samples, the same shape as ``real_logits``.
        kind: one of :data:`LOSSES`; ``"minimax"`` and ``"non_saturating"`` share the BCE loss.

    Returns:
        ``(loss, logs)`` with ``logs = {"loss", "d_real", "d_fake"}`` detached (the last two are
        the mean logits).

    Raises:
        ValueError: unknown ``kind``; logits not ``(B,)`` / ``(B, 1)`` or of different shapes.
        TypeError: logits that are not floating-point tensors.
    """
    check_choice("kind", kind, LOSSES)
    r = _logits("real_logits", real_logits)
    f = _logits("fake_logits", fake_logits)
    if tuple(real_logits.shape) != tuple(fake_logits.shape):
        raise ValueError(f"fake_logits must have the shape of real_logits {tuple(real_logits.shape)}, "
                         f"got {tuple(fake_logits.shape)}")
    if kind in ("minimax", "non_saturating"):
        loss = F.softplus(-r).mean() + F.softplus(f).mean()
    elif kind == "least_squares":
        loss = 0.5 * (r - 1.0).square().mean() + 0.5 * f.square().mean()
    elif kind == "hinge":
        loss = F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
    else:  # wasserstein
        loss = f.mean() - r.mean()
    return loss, {"loss": loss.detach(), "d_real": r.detach().mean(), "d_fake": f.detach().mean()}


def generator_loss(
    fake_logits: torch.Tensor,
    *,
    kind: str = "non_saturating",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Generator loss for one of :data:`LOSSES` (equations in the module docstring).

    ``"minimax"`` minimises ``E[log(1 - σ(f))]`` literally, whose gradient vanishes when the
    discriminator confidently rejects the samples (``f → -∞``); ``"non_saturating"`` minimises
    ``-E[log σ(f)]`` instead (Goodfellow et al., Section 3).

    Args:
        fake_logits: ``(B,)`` or ``(B, 1)`` raw outputs ``D(G(z))``.
        kind: one of :data:`LOSSES`.

    Returns:
        ``(loss, logs)`` with ``logs = {"loss", "d_fake"}`` detached.

    Raises:
        ValueError: unknown ``kind`` or a logits shape that is not ``(B,)`` / ``(B, 1)``.
        TypeError: logits that are not a floating-point tensor.
    """
    check_choice("kind", kind, LOSSES)
    f = _logits("fake_logits", fake_logits)
    if kind == "minimax":
        loss = -F.softplus(f).mean()
    elif kind == "non_saturating":
        loss = F.softplus(-f).mean()
    elif kind == "least_squares":
        loss = 0.5 * (f - 1.0).square().mean()
    else:  # hinge, wasserstein
        loss = -f.mean()
    return loss, {"loss": loss.detach(), "d_fake": f.detach().mean()}


def _input_grad(discriminator: Callable[..., torch.Tensor], x: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
    """``∇_x Σ_i D(x_i)`` with ``create_graph=True`` so a penalty on it trains ``D``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = discriminator(x, **cond)
        (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad


def gradient_penalty(
    discriminator: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    alpha: torch.Tensor | None = None,
    center: float = 1.0,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(‖∇D(x̂)‖₂ - center)²]``, ``x̂ = α x + (1 - α) x̃`` (Gulrajani et al. Alg. 1).

    ``real`` and ``fake`` are detached (the penalty trains the critic only); the gradient is taken
    with ``create_graph=True`` so the penalty backpropagates into the discriminator's parameters.
    Multiply by ``λ`` (10 in the paper) and add it to the critic loss.

    Args:
        discriminator: ``discriminator(x, **cond)`` returning ``(B,)`` or ``(B, 1)``.
        real: ``(B, ...)`` data batch.
        fake: ``(B, ...)`` generated batch, the shape of ``real``.
        generator: draws ``α ~ U(0, 1)``, one per sample.
        alpha: ``(B,)`` override for ``α``.
        center: target norm (1 for WGAN-GP; 0 gives a zero-centred penalty).
        cond: conditioning keyword arguments for ``discriminator``.

    Returns:
        The scalar penalty.

    Raises:
        ValueError: ``real`` not a batch, ``fake`` / ``alpha`` of the wrong shape, ``center < 0``.
        TypeError: non-floating tensors, a bad ``generator`` or ``cond``.
    """
    check_tensor("real", real, floating=True)
    if real.ndim < 2:
        raise ValueError(f"real must be a batch (B, ...), got shape {tuple(real.shape)}")
    check_tensor("fake", fake, shape=tuple(real.shape), floating=True)
    center = check_float("center", center, min=0.0)
    cond = check_cond(cond)
    generator = check_generator(generator)
    b = real.shape[0]
    if alpha is None:
        alpha = rand((b,), generator=generator, device=real.device, dtype=real.dtype)
    else:
        alpha = check_tensor("alpha", alpha, shape=(b,), floating=True).to(real)
    a = append_dims(alpha, real.ndim)  # (B,) -> (B, 1, ..., 1)
    x_hat = a * real.detach() + (1.0 - a) * fake.detach()
    grad = _input_grad(discriminator, x_hat, cond)
    norm = grad.flatten(1).norm(dim=1)  # (B, ...) -> (B,)
    return (norm - center).square().mean()


def r1_penalty(
    discriminator: Callable[..., torch.Tensor],
    real: torch.Tensor,
    *,
    cond: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """R1 penalty ``E[‖∇_x D(x)‖²]`` on real data (Mescheder et al. eq. 9).

    The paper's regulariser is ``(γ/2) E[‖∇D(x)‖²]``: multiply the returned value by ``γ / 2``
    outside. The gradient is taken with ``create_graph=True`` so it trains the discriminator.

    Args:
        discriminator: ``discriminator(x, **cond)`` returning ``(B,)`` or ``(B, 1)``.
        real: ``(B, ...)`` data batch (detached inside).
        cond: conditioning keyword arguments for ``discriminator``.

    Returns:
        The scalar penalty (without the ``γ / 2`` factor).

    Raises:
        ValueError: ``real`` is not a batch. TypeError: ``real`` not floating, a bad ``cond``.
    """
    check_tensor("real", real, floating=True)
    if real.ndim < 2:
        raise ValueError(f"real must be a batch (B, ...), got shape {tuple(real.shape)}")
    grad = _input_grad(discriminator, real, check_cond(cond))
    return grad.flatten(1).square().sum(dim=1).mean()  # (B, ...) -> (B,) -> ()


def clip_weights_(module: nn.Module, c: float = 0.01) -> nn.Module:
    """Clamp every parameter of ``module`` to ``[-c, c]`` in place (WGAN, Arjovsky et al. Alg. 1).

    Call it after each critic update. Returns ``module``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``. ValueError: ``c <= 0``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    c = check_float("c", c, min=0.0, min_open=True)
    with torch.no_grad():
        for p in module.parameters():
            p.clamp_(-c, c)
    return module
