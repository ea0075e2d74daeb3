"""Variational autoencoders: the probabilistic pieces, the networks, the bounds and the samplers.

Two layers. The pure maths (tensor in, tensor out): KL, reparameterisation, likelihoods and the
bounds. Every one works in nats, sums over the data dimensions and keeps the leading batch
dimensions: ``(B, ...)`` in, ``(B,)`` out (``batch_dims=2`` keeps ``(K, B)`` for ``K`` importance
samples). On top of them the model: :func:`build` returns ``VAENets(encoder, decoder)`` and
:func:`loss`, :func:`log_prob`, :func:`sample`, :func:`encode`, :func:`decode`, :func:`reconstruct`
and :func:`interpolate` take those nets.

A VAE maximises the evidence lower bound (Kingma & Welling, eq. 3 and 10), with ``β`` weighting
the KL as in β-VAE (Higgins et al.)::

    ELBO_β(x) = E_{q(z|x)}[log p(x|z)] - β KL(q(z|x) ‖ p(z)),    z = μ + σ ⊙ ε,  ε ~ N(0, I)
    KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ_j (μ_j² + σ_j² - 1 - log σ_j²)

The importance-weighted bound (Burda et al., eq. 8) uses ``K`` samples ``z_k ~ q(z|x)``::

    L_K(x) = log (1/K) Σ_k p(x, z_k) / q(z_k|x)  ≤  log p(x),     L_1 = ELBO,  L_K ↑ log p(x)

and with large ``K`` it is also the importance-sampling estimate of ``log p(x)`` used for test
log-likelihoods (:func:`log_prob`, Burda et al. use ``K = 5000``).

Decoder likelihoods (``LIKELIHOODS``, a BUILD option since it fixes the decoder's outputs): a diagonal
Gaussian, a Bernoulli on logits (targets ``(x + 1) / 2`` for ``x`` in model space ``[-1, 1]``), and the
discretised logistic of PixelCNN++ (Salimans et al., eq. 2) for ``x ∈ [-1, 1]`` quantised to ``bins``
levels: ``P(x) = σ((x + h - μ)/s) - σ((x - h - μ)/s)`` with ``h = 1/(bins - 1)``, the lowest bin taking
all mass below and the highest all mass above.

**Conditioning:** ``cond={"y": labels (B,)}``; both nets see a one-hot label (with an extra "no label"
class ``num_classes``, which ``y=None`` means), the conditional VAE of Sohn et al. (2015).

**Two stochastic layers** (``levels=2``) follow the IWAE paper's two-layer model (Burda et al., Sec. 5,
after Rezende et al.): ``q(z1|x) q(z2|z1)`` and ``p(z2) p(z1|z2) p(x|z1)``, all diagonal Gaussians except
``p(x|z1)``. Its ELBO uses the closed-form KL at the top and a one-sample estimate of
``log q(z1|x) - log p(z1|z2)`` below.

Example (the prior as posterior has zero KL; a standard normal at 0 has log density -½ log 2π):
    >>> import torch
    >>> from edifice.generative import vae
    >>> mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    >>> vae.gaussian_kl(mu, logvar)
    tensor([0., 0.])
    >>> vae.elbo(vae.log_normal_standard(torch.zeros(2, 1)), vae.gaussian_kl(mu, logvar), beta=0.5)
    tensor([-0.9189, -0.9189])
    >>> nets = vae.build(data_shape=(1, 8, 8), latent_dim=4, hidden=32)  # images: a conv VAE
    >>> g = torch.Generator().manual_seed(0)
    >>> x = vae.sample(nets, (3, 1, 8, 8), generator=g); x.shape
    torch.Size([3, 1, 8, 8])
    >>> loss, logs = vae.loss(nets, x, objective="iwae", k=4, generator=g); sorted(logs)
    ['bound', 'elbo', 'kl', 'loss', 'rec']
    >>> vae.log_prob(nets, x, k=50, generator=g).shape
    torch.Size([3])

References:
    Auto-Encoding Variational Bayes. Kingma, Welling, 2014. arXiv:1312.6114.
    Stochastic Backpropagation and Approximate Inference in Deep Generative Models. Rezende, Mohamed,
    Wierstra, 2014. arXiv:1401.4082.
    Importance Weighted Autoencoders. Burda, Grosse, Salakhutdinov, 2016. arXiv:1509.00519.
    Learning Structured Output Representation using Deep Conditional Generative Models. Sohn, Lee,
    Yan, 2015. NeurIPS (the conditional VAE).
    Ladder Variational Autoencoders. Sønderby, Raiko, Maaløe, Sønderby, Winther, 2016. arXiv:1602.02282.
    beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework.
    Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed, Lerchner, 2017. ICLR.
    PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture Likelihood and Other
    Modifications. Salimans, Karpathy, Chen, Kingma, 2017. arXiv:1701.05517.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randn,
)
from edifice.blocks.conv import ACTIVATIONS as CONV_ACTIVATIONS
from edifice.blocks.conv import ConvDecoder, ConvEncoder, check_channels
from edifice.blocks.mlp import ACTIVATIONS as MLP_ACTIVATIONS
from edifice.blocks.mlp import MLP

__all__ = [
    "LIKELIHOODS", "gaussian_kl", "reparameterize", "gaussian_log_prob", "bernoulli_log_prob",
    "discretized_logistic_log_prob", "log_likelihood", "log_normal_standard", "log_normal_diag",
    "elbo", "iwae_bound",
    "OBJECTIVES", "VAENets", "VAEEncoder", "VAEDecoder", "build", "encode", "decode", "loss", "elbo_per_example",
    "log_prob", "sample", "reconstruct", "interpolate",
]

LIKELIHOODS = ("gaussian", "bernoulli", "logistic")

_LOG_2PI = math.log(2.0 * math.pi)


def _same_shape(ref_name: str, ref: torch.Tensor, name: str, value: torch.Tensor) -> torch.Tensor:
    check_tensor(name, value, floating=True)
    if value.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}")
    return value


def _broadcastable(ref_name: str, ref: torch.Tensor, name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` must broadcast to ``ref``'s shape without enlarging it (a shared variance is fine)."""
    check_tensor(name, value, floating=True)
    try:
        out = torch.broadcast_shapes(value.shape, ref.shape)
    except RuntimeError:
        out = None
    if out != ref.shape:
        raise ValueError(
            f"{name} must broadcast to the shape of {ref_name} {tuple(ref.shape)}, got {tuple(value.shape)}"
        )
    return value


def _reduce(values: torch.Tensor, batch_dims: int, ref_name: str) -> torch.Tensor:
    """Sum over all but the leading ``batch_dims`` dimensions."""
    check_int("batch_dims", batch_dims, min=1)
    if batch_dims > values.ndim:
        raise ValueError(
            f"batch_dims must be <= {ref_name}.ndim = {values.ndim}, got {batch_dims}"
        )
    return values.reshape(values.shape[:batch_dims] + (-1,)).sum(-1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, *, batch_dims: int = 1) -> torch.Tensor:
    """Closed-form ``KL(N(μ, diag exp(logvar)) ‖ N(0, I))`` summed over data dimensions.

    ``KL = ½ Σ (μ² + exp(logvar) - 1 - logvar)`` (Kingma & Welling, appendix B).

    Args:
        mu: posterior mean, ``(B, ...)``.
        logvar: posterior log-variance, same shape as ``mu``.
        batch_dims: leading dimensions kept (default 1).

    Returns:
        ``(B,)`` KL in nats, ``>= 0``.

    Raises:
        ValueError: if ``logvar``'s shape differs from ``mu``'s.
    """
    check_tensor("mu", mu, floating=True)
    _same_shape("mu", mu, "logvar", logvar)
    return _reduce(0.5 * (mu.square() + logvar.exp() - 1.0 - logvar), batch_dims, "mu")


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``z = μ + exp(½ logvar) ⊙ ε`` with ``ε ~ N(0, I)``, differentiable in ``μ`` and ``logvar``.

    Args:
        mu: mean, ``(B, ...)``; for ``K`` samples per input pass ``mu.expand(K, *mu.shape)``.
        logvar: log-variance, same shape as ``mu``.
        generator: source of ``ε`` (ignored when ``noise`` is given).
        noise: an explicit ``ε`` of ``mu``'s shape.

    Returns:
        ``z`` with ``mu``'s shape.

    Raises:
        ValueError: if ``logvar`` or ``noise`` does not have ``mu``'s shape.
    """
    check_tensor("mu", mu, floating=True)
    _same_shape("mu", mu, "logvar", logvar)
    if noise is None:
        noise = randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    else:
        _same_shape("mu", mu, "noise", noise)
    return mu + torch.exp(0.5 * logvar) * noise


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, *, batch_dims: int = 1
) -> torch.Tensor:
    """``log N(x; mean, diag exp(logvar))`` summed over data dimensions.

    ``log p = -½ Σ (log 2π + logvar + (x - mean)² exp(-logvar))``.

    Args:
        x: data, ``(B, ...)``.
        mean: same shape as ``x``.
        logvar: log-variance broadcastable to ``x`` (e.g. one learned scalar).
        batch_dims: leading dimensions kept (default 1).

    Returns:
        ``(B,)`` log-density in nats.

    Raises:
        ValueError: if ``mean`` or ``logvar`` does not match ``x``'s shape.
    """
    check_tensor("x", x, floating=True)
    _same_shape("x", x, "mean", mean)
    _broadcastable("x", x, "logvar", logvar)
    return _reduce(-0.5 * (_LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar)), batch_dims, "x")


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor, *, batch_dims: int = 1) -> torch.Tensor:
    """``log Bernoulli(x; sigmoid(logits))`` summed over data dimensions, stable for any logits.

    Computed as ``-BCE_with_logits = x·logits - softplus(logits)``; ``x`` may be continuous in ``[0, 1]``
    (the usual grey-scale MNIST practice), in which case it is the cross-entropy, not a normalised density.

    Args:
        x: targets in ``[0, 1]``, ``(B, ...)``.
        logits: same shape as ``x``.
        batch_dims: leading dimensions kept (default 1).

    Returns:
        ``(B,)`` log-probability in nats.

    Raises:
        ValueError: if ``logits``' shape differs from ``x``'s.
    """
    check_tensor("x", x, floating=True)
    _same_shape("x", x, "logits", logits)
    return _reduce(-F.binary_cross_entropy_with_logits(logits, x, reduction="none"), batch_dims, "x")


def discretized_logistic_log_prob(
    x: torch.Tensor,
    mean: torch.Tensor,
    log_scale: torch.Tensor,
    *,
    bins: int = 256,
    batch_dims: int = 1,
) -> torch.Tensor:
    """Log-probability of ``x ∈ [-1, 1]`` quantised to ``bins`` levels under a discretised logistic.

    PixelCNN++ (Salimans et al., eq. 2), with bin half-width ``h = 1/(bins - 1)`` and
    ``c± = (x - mean ± h) / s``::

        x in the lowest bin:   log σ(c+)                     (all mass below -1 + h)
        x in the highest bin:  log (1 - σ(c-))               (all mass above  1 - h)
        otherwise:             log (σ(c+) - σ(c-))

    The interior difference is evaluated in log space as
    ``log σ(c+) + log σ(-c-) + log(-expm1(c- - c+))``, an exact identity that never subtracts two
    nearly equal CDFs. It is the stable tiny-probability branch: PixelCNN++ switches to
    ``log pdf(x) + log 2h`` when ``σ(c+) - σ(c-) < 1e-5``; this form needs no threshold and stays exact
    (and differentiable) far in the tails.

    Args:
        x: data in ``[-1, 1]`` on the grid ``-1 + 2k/(bins - 1)``, ``(B, ...)``.
        mean: logistic location, same shape as ``x``.
        log_scale: logistic log-scale ``log s``, broadcastable to ``x``.
        bins: number of quantisation levels (256 for 8-bit images), ``>= 2``.
        batch_dims: leading dimensions kept (default 1).

    Returns:
        ``(B,)`` log-probability in nats (divide by ``numel · log 2`` for bits per dimension).

    Raises:
        ValueError: if ``bins < 2`` or ``mean`` / ``log_scale`` do not match ``x``'s shape.
    """
    bins = check_int("bins", bins, min=2)
    check_tensor("x", x, floating=True)
    _same_shape("x", x, "mean", mean)
    _broadcastable("x", x, "log_scale", log_scale)
    half = 1.0 / (bins - 1)
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    plus_in = inv_s * (centered + half)  # c+
    min_in = inv_s * (centered - half)  # c-
    log_cdf_plus = F.logsigmoid(plus_in)  # log σ(c+), lowest bin
    log_one_minus_cdf_min = F.logsigmoid(-min_in)  # log(1 - σ(c-)), highest bin
    # log(σ(c+) - σ(c-)) = log σ(c+) + log σ(-c-) + log(1 - exp(c- - c+)), with c+ - c- = 2h/s > 0
    log_delta = log_cdf_plus + log_one_minus_cdf_min + torch.log(-torch.expm1(min_in - plus_in))
    log_probs = torch.where(
        x < -1.0 + half,
        log_cdf_plus,
        torch.where(x > 1.0 - half, log_one_minus_cdf_min, log_delta),
    )
    return _reduce(log_probs, batch_dims, "x")


_LIKELIHOOD_FNS = {
    "gaussian": (gaussian_log_prob, ("mean", "logvar")),
    "bernoulli": (bernoulli_log_prob, ("logits",)),
    "logistic": (discretized_logistic_log_prob, ("mean", "log_scale")),
}


def log_likelihood(
    likelihood: str,
    x: torch.Tensor,
    *params: torch.Tensor,
    batch_dims: int = 1,
    bins: int | None = None,
) -> torch.Tensor:
    """Dispatch ``log p(x | z)`` by name: one of ``LIKELIHOODS``.

    ``"gaussian"`` takes ``(mean, logvar)``, ``"bernoulli"`` takes ``(logits,)``, ``"logistic"`` takes
    ``(mean, log_scale)`` and an optional ``bins`` (default 256).

    Args:
        likelihood: ``"gaussian"``, ``"bernoulli"`` or ``"logistic"``.
        x: data, ``(B, ...)``.
        *params: the decoder outputs the likelihood needs (see above).
        batch_dims: leading dimensions kept (default 1).
        bins: quantisation levels, only for ``"logistic"``.

    Returns:
        ``(B,)`` log-likelihood in nats.

    Raises:
        ValueError: on an unknown ``likelihood``, the wrong number of ``params``, or ``bins`` given
            to a continuous likelihood.
    """
    check_choice("likelihood", likelihood, LIKELIHOODS)
    fn, names = _LIKELIHOOD_FNS[likelihood]
    if len(params) != len(names):
        raise ValueError(
            f"params for likelihood {likelihood!r} must be ({', '.join(names)}), got {len(params)} tensors"
        )
    if likelihood == "logistic":
        return fn(x, *params, bins=256 if bins is None else bins, batch_dims=batch_dims)
    if bins is not None:
        raise ValueError(f"bins applies only to likelihood 'logistic', got bins={bins!r} with {likelihood!r}")
    return fn(x, *params, batch_dims=batch_dims)


def log_normal_standard(z: torch.Tensor, *, batch_dims: int = 1) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over data dimensions: ``-½ Σ (z² + log 2π)``.

    Args:
        z: ``(B, ...)``, or ``(K, B, ...)`` with ``batch_dims=2``.
        batch_dims: leading dimensions kept (default 1).

    Returns:
        ``(B,)`` (or ``(K, B)``) log-density in nats.
    """
    check_tensor("z", z, floating=True)
    return _reduce(-0.5 * (z.square() + _LOG_2PI), batch_dims, "z")


def log_normal_diag(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, batch_dims: int = 1
) -> torch.Tensor:
    """``log N(z; μ, diag exp(logvar))`` summed over data dimensions (the ``log q(z|x)`` of a VAE).

    Args:
        z: ``(B, ...)``, or ``(K, B, ...)`` with ``batch_dims=2``.
        mu: same shape as ``z`` (expand a ``(B, ...)`` mean over ``K``).
        logvar: broadcastable to ``z``.
        batch_dims: leading dimensions kept (default 1).

    Returns:
        ``(B,)`` (or ``(K, B)``) log-density in nats.

    Raises:
        ValueError: if ``mu`` or ``logvar`` does not match ``z``'s shape.
    """
    check_tensor("z", z, floating=True)
    _same_shape("z", z, "mu", mu)
    _broadcastable("z", z, "logvar", logvar)
    return _reduce(-0.5 * (_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar)), batch_dims, "z")


def elbo(log_px_given_z: torch.Tensor, kl: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
    """The (β-weighted) evidence lower bound ``log p(x|z) - β KL`` per example.

    Args:
        log_px_given_z: ``(B,)`` reconstruction log-likelihood (one ``z`` per example).
        kl: ``(B,)`` ``KL(q(z|x) ‖ p(z))``, analytic (:func:`gaussian_kl`) or a sample estimate.
        beta: KL weight, ``>= 0`` (1 is the ELBO; β-VAE uses ``β > 1``).

    Returns:
        ``(B,)`` ELBO in nats; the training loss is ``-elbo(...).mean()``.

    Raises:
        ValueError: if ``beta < 0`` or the shapes differ.
    """
    beta = check_float("beta", beta, min=0.0)
    check_tensor("log_px_given_z", log_px_given_z, ndim=1, floating=True)
    _same_shape("log_px_given_z", log_px_given_z, "kl", kl)
    return log_px_given_z - beta * kl


def iwae_bound(log_px_given_z_k: torch.Tensor, log_pz_k: torch.Tensor, log_qz_k: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound ``log (1/K) Σ_k exp(log p(x|z_k) + log p(z_k) - log q(z_k|x))``.

    Burda et al. (2016), eq. 8: ``L_1`` is the single-sample ELBO, ``L_K ≤ L_{K+1} ≤ log p(x)`` in
    expectation, and ``L_K → log p(x)`` as ``K → ∞``. Computed with ``logsumexp`` over ``K``.

    Args:
        log_px_given_z_k: ``(K, B)`` ``log p(x | z_k)`` for ``z_k ~ q(z|x)``.
        log_pz_k: ``(K, B)`` prior ``log p(z_k)`` (e.g. :func:`log_normal_standard` with ``batch_dims=2``).
        log_qz_k: ``(K, B)`` posterior ``log q(z_k | x)`` (e.g. :func:`log_normal_diag`).

    Returns:
        ``(B,)`` bound in nats.

    Raises:
        ValueError: if the inputs are not 2-D or their shapes differ.
    """
    check_tensor("log_px_given_z_k", log_px_given_z_k, ndim=2, floating=True)
    _same_shape("log_px_given_z_k", log_px_given_z_k, "log_pz_k", log_pz_k)
    _same_shape("log_px_given_z_k", log_px_given_z_k, "log_qz_k", log_qz_k)
    log_w = log_px_given_z_k + log_pz_k - log_qz_k  # (K, B)
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])  # (B,)


# ================================================================ networks

OBJECTIVES = ("elbo", "iwae")
ARCHS = ("auto", "mlp", "conv")

# Lower bounds on the decoder's log-variance (Gaussian) and log-scale (logistic). A free variance on
# quantised data shrinks without bound (the density at a data point grows forever); PixelCNN++ clamps
# the logistic log-scale at -7 for the same reason. exp(-10 / 2) = 0.0067 is about a 1/150 pixel step.
MIN_LOGVAR = -10.0
MIN_LOG_SCALE = -7.0


def _onehot(y: torch.Tensor | None, num_classes: int | None, batch: int, device: torch.device,
            dtype: torch.dtype) -> torch.Tensor | None:
    """One-hot labels with the null class ``num_classes`` for ``y=None``: ``(B, num_classes + 1)``, or None."""
    if num_classes is None:
        if y is not None:
            raise ValueError("y was given but the VAE was built with num_classes=None (unconditional)")
        return None
    if y is None:
        y = torch.full((batch,), num_classes, dtype=torch.long, device=device)
    check_tensor("y", y, shape=(batch,))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer (long) tensor of class labels, got dtype {y.dtype}")
    if y.device.type == "cpu" and y.numel() and bool(((y < 0) | (y > num_classes)).any()):
        bad = y[(y < 0) | (y > num_classes)][0].item()
        raise ValueError(f"y must hold labels in [0, {num_classes - 1}] or the null label {num_classes}, got {bad}")
    return F.one_hot(y.to(device).long(), num_classes + 1).to(dtype)  # (B, num_classes + 1)


def _cat(h: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
    return h if onehot is None else torch.cat([h, onehot], dim=-1)  # (B, F + num_classes + 1)


def _gaussian_head(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = out.chunk(2, dim=-1)  # 2 x (B, L)
    return mu, logvar


class VAEEncoder(nn.Module):
    r"""Inference network: ``q(z1 | x, y) = N(μ(x), diag exp(logvar(x)))`` and, with ``levels=2``, ``q(z2 | z1, y)``.

    ``forward(x, y=None) -> (mu, logvar)``, each ``(B, latent_dim)``; ``upper(z1, y=None) -> (mu2, logvar2)``,
    each ``(B, latent_dim2)`` (``levels=2`` only). The MLP flattens ``x``; the conv variant is a
    :class:`~edifice.blocks.conv.ConvEncoder` to ``hidden`` features followed by a linear head. A label enters
    as a one-hot vector concatenated to the features. Built by :func:`build`, which documents the options;
    ``data_shape``, ``latent_dim``, ``latent_dim2``, ``levels`` and ``num_classes`` are attributes.
    """

    def __init__(self, *, data_shape: tuple[int, ...], latent_dim: int, arch: str, hidden: int, depth: int,
                 channels: tuple[int, ...], act: str, num_classes: int | None, levels: int, latent_dim2: int | None,
                 hidden2: int) -> None:
        super().__init__()
        self.data_shape, self.latent_dim, self.latent_dim2 = data_shape, latent_dim, latent_dim2
        self.levels, self.num_classes = levels, num_classes
        e = 0 if num_classes is None else num_classes + 1
        if arch == "mlp":
            self.body: nn.Module = nn.Flatten()
            self.head = MLP(math.prod(data_shape) + e, 2 * latent_dim, hidden=hidden, depth=depth, act=act)
        else:
            self.body = nn.Sequential(ConvEncoder(data_shape[0], data_shape[1], channels=channels,
                                                  out_features=hidden, act=act), CONV_ACTIVATIONS[act]())
            self.head = MLP(hidden + e, 2 * latent_dim, hidden=hidden, depth=0)
        self.top = (MLP(latent_dim + e, 2 * latent_dim2, hidden=hidden2, depth=depth, act=act)
                    if levels == 2 else None)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)  # (B, F)
        onehot = _onehot(y, self.num_classes, x.shape[0], x.device, h.dtype)
        return _gaussian_head(self.head(_cat(h, onehot)))  # 2 x (B, latent_dim)

    def upper(self, z1: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z2 | z1, y)`` of the two-layer model: ``(mu2, logvar2)``, each ``(B, latent_dim2)``."""
        if self.top is None:
            raise ValueError("upper() needs a VAE built with levels=2")
        onehot = _onehot(y, self.num_classes, z1.shape[0], z1.device, z1.dtype)
        return _gaussian_head(self.top(_cat(z1, onehot)))  # 2 x (B, latent_dim2)


class VAEDecoder(nn.Module):
    r"""Generative network: ``p(x | z1, y)`` parameters and, with ``levels=2``, the conditional prior ``p(z1 | z2, y)``.

    ``forward(z, y=None)`` returns the likelihood's parameters, each shaped like ``x`` ``(B, *data_shape)``:
    ``(mean, logvar)`` (Gaussian), ``(logits,)`` (Bernoulli) or ``(mean, log_scale)`` (discretised
    logistic). The spread is one learned parameter per data dimension (``decoder_logvar="learned"``), a
    network output (``"predicted"``) or a fixed number, and is clamped below at ``MIN_LOGVAR`` /
    ``MIN_LOG_SCALE``. ``prior(z2, y=None) -> (mu1, logvar1)`` (``levels=2`` only). Built by :func:`build`.
    """

    def __init__(self, *, data_shape: tuple[int, ...], latent_dim: int, arch: str, hidden: int, depth: int,
                 channels: tuple[int, ...], act: str, num_classes: int | None, levels: int, latent_dim2: int | None,
                 hidden2: int, likelihood: str, decoder_logvar: str | float | None) -> None:
        super().__init__()
        self.data_shape, self.latent_dim, self.latent_dim2 = data_shape, latent_dim, latent_dim2
        self.levels, self.num_classes, self.likelihood = levels, num_classes, likelihood
        self.spread = None if likelihood == "bernoulli" else decoder_logvar
        self.n_out = 2 if self.spread == "predicted" else 1
        e = 0 if num_classes is None else num_classes + 1
        if arch == "mlp":
            self.net: nn.Module = MLP(latent_dim + e, self.n_out * math.prod(data_shape), hidden=hidden, depth=depth,
                                      act=act)
        else:
            self.net = ConvDecoder(self.n_out * data_shape[0], data_shape[1], channels=tuple(reversed(channels)),
                                   in_features=latent_dim + e, act=act)
        if self.spread == "learned":
            self.log_spread = nn.Parameter(torch.zeros(data_shape))
        elif isinstance(self.spread, float):
            self.register_buffer("log_spread", torch.full(data_shape, self.spread))
        self.top = (MLP(latent_dim2 + e, 2 * latent_dim, hidden=hidden2, depth=depth, act=act)
                    if levels == 2 else None)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        b = z.shape[0]
        out = self.net(_cat(z, _onehot(y, self.num_classes, b, z.device, z.dtype)))
        out = out.reshape(b, self.n_out, *self.data_shape)  # (B, n_out, *data_shape)
        first = out[:, 0]  # (B, *data_shape)
        if self.spread is None:
            return (first,)
        spread = out[:, 1] if self.n_out == 2 else self.log_spread.to(first.dtype).expand_as(first)
        return first, spread.clamp(min=MIN_LOGVAR if self.likelihood == "gaussian" else MIN_LOG_SCALE)

    def prior(self, z2: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(z1 | z2, y)`` of the two-layer model: ``(mu1, logvar1)``, each ``(B, latent_dim)``."""
        if self.top is None:
            raise ValueError("prior() needs a VAE built with levels=2")
        onehot = _onehot(y, self.num_classes, z2.shape[0], z2.device, z2.dtype)
        return _gaussian_head(self.top(_cat(z2, onehot)))  # 2 x (B, latent_dim)


class VAENets(NamedTuple):
    """The two networks of a VAE: ``encoder`` (:class:`VAEEncoder`) and ``decoder`` (:class:`VAEDecoder`)."""

    encoder: nn.Module
    decoder: nn.Module


def build(*, data_shape: Any, latent_dim: int = 16, arch: str = "auto", hidden: int = 256, depth: int = 2,
          channels: Any = None, likelihood: str | None = None, num_classes: int | None = None, levels: int = 1,
          latent_dim2: int | None = None, hidden2: int | None = None, decoder_logvar: Any = None,
          act: str = "silu") -> VAENets:
    """Build a VAE's encoder and decoder for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` vectors or ``(C, H, H)`` images (model space ``[-1, 1]``).
        latent_dim: width of ``z`` (of ``z1`` with ``levels=2``).
        arch: ``"mlp"``, ``"conv"`` (images only) or ``"auto"`` (MLP for vectors, conv for images).
        hidden: MLP width, or the conv encoder's feature width.
        depth: hidden layers of each MLP (``0`` gives linear maps: the linear-Gaussian VAE).
        channels: conv stages of the encoder (the decoder mirrors them); default ``(32, 64)``.
        likelihood: ``"gaussian"``, ``"bernoulli"`` or ``"logistic"`` (256 bins over ``[-1, 1]``);
            default Gaussian for vectors, logistic for images.
        num_classes: labels for a conditional VAE (one-hot into both nets; ``y=None`` = null label), or None.
        levels: 1, or 2 for the IWAE paper's two-stochastic-layer model (see the module docstring).
        latent_dim2: width of the top latent ``z2`` (``levels=2``); default ``latent_dim // 2 or 8``.
        hidden2: width of the MLPs between ``z1`` and ``z2`` (``levels=2``); default ``hidden``.
        decoder_logvar: the decoder's log-variance (Gaussian) or log-scale (logistic): ``"learned"`` (default,
            one parameter per data dimension), ``"predicted"`` (a second network output per dimension) or a
            number (fixed). Not applicable to the Bernoulli likelihood.
        act: hidden activation.

    Returns:
        ``VAENets(encoder, decoder)``; the resolved options are in ``encoder.config`` (and ``decoder.config``),
        so ``build(**nets.encoder.config)`` rebuilds the architecture.

    Raises:
        ValueError / TypeError: naming the offending option (``data_shape`` for a shape that is neither
            ``(D,)`` nor ``(C, H, H)`` or does not fit the conv stages).
    """
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) not in (1, 3) or (len(data_shape) == 3 and data_shape[1] != data_shape[2]):
        raise ValueError(f"data_shape must be (D,) or (C, H, H) with H == W, got {data_shape}")
    latent_dim = check_int("latent_dim", latent_dim, min=1)
    arch = check_choice("arch", arch, ARCHS)
    if arch == "auto":
        arch = "mlp" if len(data_shape) == 1 else "conv"
    if arch == "conv" and len(data_shape) != 3:
        raise ValueError(f"arch 'conv' needs image data_shape (C, H, H), got data_shape={data_shape}")
    hidden = check_int("hidden", hidden, min=1)
    depth = check_int("depth", depth, min=0)
    channels = check_channels("channels", (32, 64) if channels is None else channels)
    if likelihood is None:
        likelihood = "gaussian" if len(data_shape) == 1 else "logistic"
    check_choice("likelihood", likelihood, LIKELIHOODS)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, min=1)
    levels = check_int("levels", levels, min=1, max=2)
    if levels == 1:
        for name, value in (("latent_dim2", latent_dim2), ("hidden2", hidden2)):
            if value is not None:
                raise ValueError(f"{name} applies only to levels=2, got {name}={value!r} with levels=1")
    else:
        latent_dim2 = (latent_dim // 2 or 8) if latent_dim2 is None else check_int("latent_dim2", latent_dim2, min=1)
        hidden2 = hidden if hidden2 is None else check_int("hidden2", hidden2, min=1)
    if likelihood == "bernoulli":
        if decoder_logvar is not None:
            raise ValueError(f"decoder_logvar does not apply to likelihood 'bernoulli', got {decoder_logvar!r}")
    elif decoder_logvar is None:
        decoder_logvar = "learned"
    elif isinstance(decoder_logvar, str):
        check_choice("decoder_logvar", decoder_logvar, ("learned", "predicted"))
    else:
        decoder_logvar = check_float("decoder_logvar", decoder_logvar)
    check_choice("act", act, tuple(MLP_ACTIVATIONS) if arch == "mlp" else tuple(CONV_ACTIVATIONS))
    config: dict[str, Any] = dict(
        data_shape=data_shape, latent_dim=latent_dim, arch=arch, hidden=hidden, depth=depth, channels=channels,
        likelihood=likelihood, num_classes=num_classes, levels=levels, latent_dim2=latent_dim2, hidden2=hidden2,
        decoder_logvar=decoder_logvar, act=act)
    common = dict(data_shape=data_shape, latent_dim=latent_dim, arch=arch, hidden=hidden, depth=depth,
                  channels=channels, act=act, num_classes=num_classes, levels=levels, latent_dim2=latent_dim2,
                  hidden2=hidden2 or hidden)
    encoder = VAEEncoder(**common)
    decoder = VAEDecoder(**common, likelihood=likelihood, decoder_logvar=decoder_logvar)
    encoder.config = dict(config)
    decoder.config = dict(config)
    return VAENets(encoder, decoder)


# ================================================================ checks shared by the entry points

def _check_nets(nets: Any) -> tuple[nn.Module, nn.Module]:
    enc, dec = getattr(nets, "encoder", None), getattr(nets, "decoder", None)
    if not (isinstance(enc, nn.Module) and isinstance(dec, nn.Module)):
        raise TypeError(f"nets must be a VAENets(encoder, decoder) from vae.build, got {type(nets).__name__}")
    for attr in ("data_shape", "latent_dim", "levels", "num_classes"):
        if not hasattr(enc, attr):
            raise TypeError(f"nets.encoder must have the attribute {attr!r} (build the nets with vae.build)")
    if not hasattr(dec, "likelihood"):
        raise TypeError("nets.decoder must have the attribute 'likelihood' (build the nets with vae.build)")
    return enc, dec


def _check_x(enc: nn.Module, x: Any, name: str = "x") -> torch.Tensor:
    check_tensor(name, x, floating=True)
    want = tuple(enc.data_shape)
    if x.ndim != 1 + len(want) or tuple(x.shape[1:]) != want:
        shown = "(B, " + ", ".join(map(str, want)) + ")"
        raise ValueError(f"{name} must have shape {shown} for this network, got {tuple(x.shape)}")
    return x


def _labels(enc: nn.Module, cond: Any, batch: int) -> torch.Tensor | None:
    cond = check_cond(cond)
    unknown = set(cond) - {"y"}
    if unknown:
        raise ValueError(f"cond may only hold 'y' (class labels) for a VAE, got keys {sorted(unknown)}")
    y = cond.get("y")
    if y is not None:
        check_tensor("cond['y']", y, shape=(batch,))
    _onehot(y, enc.num_classes, batch, torch.device("cpu") if y is None else y.device, torch.float32)
    return y


def _target(likelihood: str, x: torch.Tensor) -> torch.Tensor:
    """What the likelihood scores: ``(x + 1) / 2`` for the Bernoulli, ``x`` itself otherwise."""
    return (x + 1.0) / 2.0 if likelihood == "bernoulli" else x


def _repeat(y: torch.Tensor | None, k: int) -> torch.Tensor | None:
    return None if y is None else y.repeat(k)  # (K*B,), k-major like z.reshape(K*B, ...)


# ================================================================ the model's bounds

def _noise(noise: Any, k: int, b: int, width: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if noise is None:
        return randn((k, b, width), generator=generator, device=like.device, dtype=like.dtype)
    check_tensor("noise", noise, floating=True)
    if k == 1 and tuple(noise.shape) == (b, width):
        noise = noise[None]
    if tuple(noise.shape) != (k, b, width):
        raise ValueError(f"noise must have shape ({k}, {b}, {width}) (k, B, latent widths summed), "
                         f"got {tuple(noise.shape)}")
    return noise.to(device=like.device, dtype=like.dtype)


def _terms(enc: nn.Module, dec: nn.Module, x: torch.Tensor, y: torch.Tensor | None, k: int,
           generator: torch.Generator | None, noise: Any = None,
           posterior: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``log p(x|z)``, ``log p(z)``, ``log q(z|x)`` and the ELBO's KL for ``k`` draws: each ``(K, B)``."""
    b = x.shape[0]
    mu, logvar = enc(x, y) if posterior is None else posterior  # 2 x (B, L)
    l1, l2 = enc.latent_dim, (enc.latent_dim2 if enc.levels == 2 else 0)
    eps = _noise(noise, k, b, l1 + l2, mu, generator)  # (K, B, L1 + L2)
    mu_k, lv_k = mu.expand(k, *mu.shape), logvar.expand(k, *logvar.shape)  # (K, B, L)
    z = mu_k + torch.exp(0.5 * lv_k) * eps[..., :l1]  # (K, B, L)
    yk = _repeat(y, k)
    params = dec(z.reshape(k * b, l1), yk)  # each (K*B, *data_shape)
    params = tuple(p.reshape(k, b, *p.shape[1:]) for p in params)  # each (K, B, *data_shape)
    target = _target(dec.likelihood, x).expand(k, *x.shape)  # (K, B, *data_shape)
    log_px = log_likelihood(dec.likelihood, target, *params, batch_dims=2)  # (K, B)
    log_qz = log_normal_diag(z, mu_k, lv_k, batch_dims=2)  # (K, B)
    if enc.levels == 1:
        log_pz = log_normal_standard(z, batch_dims=2)  # (K, B)
        kl = gaussian_kl(mu, logvar).expand(k, b)  # (K, B), closed form
    else:
        mu2, lv2 = enc.upper(z.reshape(k * b, l1), yk)  # 2 x (K*B, L2)
        z2 = mu2 + torch.exp(0.5 * lv2) * eps[..., l1:].reshape(k * b, l2)  # (K*B, L2)
        pmu, plv = dec.prior(z2, yk)  # 2 x (K*B, L1)
        log_p1 = log_normal_diag(z.reshape(k * b, l1), pmu, plv).reshape(k, b)  # log p(z1|z2)
        log_p2 = log_normal_standard(z2).reshape(k, b)  # log p(z2)
        log_q2 = log_normal_diag(z2, mu2, lv2).reshape(k, b)  # log q(z2|z1)
        kl = log_qz - log_p1 + gaussian_kl(mu2, lv2).reshape(k, b)  # one-sample below, closed form on top
        log_pz, log_qz = log_p1 + log_p2, log_qz + log_q2
    return {"log_px": log_px, "log_pz": log_pz, "log_qz": log_qz, "kl": kl}


def encode(nets: Any, x: torch.Tensor, *, cond: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior ``q(z|x)`` (``q(z1|x)`` with ``levels=2``): ``(mu, logvar)``, each ``(B, latent_dim)``.

    Raises:
        ValueError / TypeError: if ``x`` does not have shape ``(B, *data_shape)`` or the labels are bad.
    """
    enc, _ = _check_nets(nets)
    x = _check_x(enc, x)
    return enc(x, _labels(enc, cond, x.shape[0]))


def decode(nets: Any, z: torch.Tensor, *, cond: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, ...]:
    """The decoder's parameters of ``p(x|z)`` for latents ``z`` ``(B, latent_dim)`` (``z1`` with ``levels=2``).

    Returns:
        ``(mean, logvar)`` (Gaussian), ``(logits,)`` (Bernoulli, of ``(x + 1) / 2``) or ``(mean, log_scale)``
        (discretised logistic), each ``(B, *data_shape)``.

    Raises:
        ValueError / TypeError: if ``z`` is not ``(B, latent_dim)`` or the labels are bad.
    """
    enc, dec = _check_nets(nets)
    check_tensor("z", z, shape=(None, enc.latent_dim), floating=True)
    return dec(z, _labels(enc, cond, z.shape[0]))


def _check_k(k: Any) -> int:
    return check_int("k", k, min=1)


def loss(nets: Any, x: torch.Tensor, *, beta: float = 1.0, objective: str = "elbo", k: int = 1,
         generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None,
         noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative ELBO (β-weighted, averaged over ``k`` draws) or negative IWAE bound, in nats per example.

    ``objective="elbo"``: ``-(1/K) Σ_k [log p(x|z_k) - β KL]`` with the closed-form KL (one level) — the VAE
    of Kingma & Welling with ``K`` samples (the IWAE paper's "VAE, k" rows), β-VAE for ``β ≠ 1``.
    ``objective="iwae"``: ``-L_K`` (Burda et al., eq. 8), whose ``K = 1`` case is the ELBO with a
    one-sample KL; ``β`` must be 1 there.

    Args:
        nets: from :func:`build`.
        x: ``(B, *data_shape)`` in model space.
        beta: KL weight ``>= 0`` (``"elbo"`` only).
        objective: ``"elbo"`` or ``"iwae"``.
        k: samples per example, ``>= 1``.
        generator: source of the reparameterisation noise.
        cond: ``{"y": (B,) long}`` for a conditional VAE.
        noise: explicit ``ε`` of shape ``(k, B, latent_dim [+ latent_dim2])`` (``(B, ...)`` allowed for ``k=1``).

    Returns:
        ``(loss, logs)``: the batch mean, and detached means of ``elbo`` (β = 1), ``kl``, ``rec``
        (``E log p(x|z)``), ``loss`` and, for ``"iwae"``, ``bound``.

    Raises:
        ValueError / TypeError: bad ``x`` shape, ``k < 1``, ``beta < 0``, ``beta ≠ 1`` with ``"iwae"``,
            an unknown ``objective``, bad labels or noise.
    """
    enc, dec = _check_nets(nets)
    x = _check_x(enc, x)
    beta = check_float("beta", beta, min=0.0)
    check_choice("objective", objective, OBJECTIVES)
    k = _check_k(k)
    check_generator(generator)
    if objective == "iwae" and beta != 1.0:
        raise ValueError(f"beta applies to objective 'elbo' only; objective 'iwae' needs beta=1.0, got {beta}")
    y = _labels(enc, cond, x.shape[0])
    t = _terms(enc, dec, x, y, k, generator, noise)
    elbo_k = t["log_px"] - t["kl"]  # (K, B)
    if objective == "elbo":
        bound = (t["log_px"] - beta * t["kl"]).mean(0)  # (B,)
    else:
        bound = iwae_bound(t["log_px"], t["log_pz"], t["log_qz"])  # (B,)
    value = -bound.mean()
    logs = {"loss": value.detach(), "elbo": elbo_k.mean().detach(), "kl": t["kl"].mean().detach(),
            "rec": t["log_px"].mean().detach()}
    if objective == "iwae":
        logs["bound"] = bound.mean().detach()
    return value, logs


def elbo_per_example(nets: Any, x: torch.Tensor, *, generator: torch.Generator | None = None,
                     cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """One-sample ELBO (β = 1, closed-form KL where there is one) of each example: ``(B,)`` nats.

    Raises:
        ValueError / TypeError: bad ``x`` shape or labels.
    """
    enc, dec = _check_nets(nets)
    x = _check_x(enc, x)
    check_generator(generator)
    t = _terms(enc, dec, x, _labels(enc, cond, x.shape[0]), 1, generator)
    return (t["log_px"] - t["kl"])[0]


@torch.no_grad()
def log_prob(nets: Any, x: torch.Tensor, *, k: int = 1000, batch_k: int | None = None,
             generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Importance-sampled ``log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k|x)`` (``= L_K``), ``(B,)`` nats.

    The proposal is the encoder's ``q(z|x)``; ``K`` draws are taken ``batch_k`` at a time and merged with a
    running log-sum-exp, so memory stays ``O(batch_k · B · D)`` for any ``K`` (Burda et al. use
    ``K = 5000``). The estimate is a stochastic lower bound in expectation, tight as ``K → ∞``.
    For the Bernoulli and the discretised logistic likelihoods this is a log-PROBABILITY (pmf, nats) of
    the binary / 256-level data; for the Gaussian it is a log-DENSITY in model space (add
    ``D · log(scale)`` to move to other units). Computed under ``torch.no_grad()``.

    Args:
        nets: from :func:`build`.
        x: ``(B, *data_shape)``.
        k: importance samples, ``>= 1``.
        batch_k: samples per chunk; default keeps a chunk near 4M data-sized numbers.
        generator: source of the noise.
        cond: ``{"y": (B,) long}`` for a conditional VAE.

    Raises:
        ValueError / TypeError: bad ``x`` shape, ``k < 1``, ``batch_k < 1`` or bad labels.
    """
    enc, dec = _check_nets(nets)
    x = _check_x(enc, x)
    k = _check_k(k)
    check_generator(generator)
    b = x.shape[0]
    if batch_k is None:
        batch_k = max(1, min(k, (1 << 22) // max(1, b * math.prod(enc.data_shape))))
    batch_k = check_int("batch_k", batch_k, min=1)
    y = _labels(enc, cond, b)
    posterior = enc(x, y)
    acc = torch.full((b,), -math.inf, device=x.device, dtype=posterior[0].dtype)
    for start in range(0, k, batch_k):
        n = min(batch_k, k - start)
        t = _terms(enc, dec, x, y, n, generator, posterior=posterior)
        acc = torch.logaddexp(acc, torch.logsumexp(t["log_px"] + t["log_pz"] - t["log_qz"], dim=0))  # (B,)
    return acc - math.log(k)


# ================================================================ sampling and reconstruction

def _mean(likelihood: str, params: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The decoder's mean in model space: Gaussian mean, ``2 sigmoid(logits) - 1``, ``clamp(μ, -1, 1)``."""
    if likelihood == "bernoulli":
        return 2.0 * torch.sigmoid(params[0]) - 1.0
    if likelihood == "logistic":
        return params[0].clamp(-1.0, 1.0)
    return params[0]


def _draw(likelihood: str, params: tuple[torch.Tensor, ...], generator: torch.Generator | None) -> torch.Tensor:
    """One draw from ``p(x|z)`` in model space (logistic draws are quantised to the 256-level grid)."""
    ref = params[0]
    if likelihood == "gaussian":
        return ref + torch.exp(0.5 * params[1]) * randn(ref.shape, generator=generator, device=ref.device,
                                                          dtype=ref.dtype)
    u = rand(ref.shape, generator=generator, device=ref.device, dtype=ref.dtype)
    if likelihood == "bernoulli":
        return 2.0 * (u < torch.sigmoid(ref)).to(ref.dtype) - 1.0
    u = u.clamp(1e-6, 1.0 - 1e-6)
    x = ref + torch.exp(params[1]) * (torch.log(u) - torch.log1p(-u))  # logistic inverse CDF
    return (torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0)


def _device_dtype(enc: nn.Module, device: Any) -> tuple[torch.device, torch.dtype]:
    ref = next(enc.parameters(), None)
    dtype = ref.dtype if ref is not None else torch.float32
    if device is None:
        return (ref.device if ref is not None else torch.device("cpu")), dtype
    return torch.device(device), dtype


@torch.no_grad()
def sample(nets: Any, shape: Any, *, generator: torch.Generator | None = None,
           cond: Mapping[str, Any] | None = None, device: Any = None, temperature: float = 1.0,
           mean: bool = True) -> torch.Tensor:
    """Ancestral samples: ``z ~ N(0, T² I)`` (with ``levels=2``: ``z2 ~ N(0, T² I)``, ``z1 ~ p(z1|z2)`` with
    its standard deviation scaled by ``T``), then the decoder.

    Args:
        nets: from :func:`build` (used in whatever train / eval mode they are in).
        shape: ``(B, *data_shape)``.
        generator: source of all the noise.
        cond: ``{"y": (B,) long}`` for a conditional VAE (missing labels mean the null label).
        device: where to sample (default: the nets' device).
        temperature: ``T >= 0`` scaling the latent noise (``T < 1`` trades diversity for quality).
        mean: return the decoder's mean (Gaussian mean; Bernoulli ``2p - 1``; logistic ``clamp(μ, -1, 1)``);
            ``False`` draws ``x ~ p(x|z)`` with ``generator``.

    Returns:
        ``(B, *data_shape)`` in model space, in the nets' dtype (float32 for built nets), under ``no_grad``.

    Raises:
        ValueError / TypeError: a ``shape`` that does not end in ``data_shape``, a negative temperature,
            bad labels.
    """
    enc, dec = _check_nets(nets)
    shape = check_shape_tuple("shape", shape)
    if tuple(shape[1:]) != tuple(enc.data_shape):
        raise ValueError(f"shape must be (B, {', '.join(map(str, enc.data_shape))}) for this network, got {shape}")
    temperature = check_float("temperature", temperature, min=0.0)
    if not isinstance(mean, bool):
        raise TypeError(f"mean must be true or false, got {mean!r}")
    check_generator(generator)
    b = shape[0]
    y = _labels(enc, cond, b)
    dev, dtype = _device_dtype(enc, device)
    y = None if y is None else y.to(dev)
    top = enc.latent_dim2 if enc.levels == 2 else enc.latent_dim
    z = temperature * randn((b, top), generator=generator, device=dev, dtype=dtype)  # (B, L_top)
    if enc.levels == 2:
        pmu, plv = dec.prior(z, y)  # 2 x (B, L1)
        z = pmu + temperature * torch.exp(0.5 * plv) * randn(pmu.shape, generator=generator, device=dev, dtype=dtype)
    params = dec(z, y)  # each (B, *data_shape)
    return _mean(dec.likelihood, params) if mean else _draw(dec.likelihood, params, generator)


@torch.no_grad()
def reconstruct(nets: Any, x: torch.Tensor, *, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The decoder's mean at the posterior mean ``E_q[z|x]`` (of ``z1``): ``(B, *data_shape)``, deterministic.

    Raises:
        ValueError / TypeError: bad ``x`` shape or labels.
    """
    enc, dec = _check_nets(nets)
    x = _check_x(enc, x)
    y = _labels(enc, cond, x.shape[0])
    mu, _ = enc(x, y)
    return _mean(dec.likelihood, dec(mu, y))


@torch.no_grad()
def interpolate(nets: Any, x_a: torch.Tensor, x_b: torch.Tensor, *, steps: int = 8,
                cond: Mapping[str, Any] | None = None) -> torch.Tensor:
    """Decode the straight line between the posterior means of ``x_a`` and ``x_b`` (end points included).

    Args:
        x_a, x_b: one example each, ``(*data_shape)``, or batches ``(B, *data_shape)`` of pairs.
        steps: points on the line, ``>= 2``.
        cond: ``{"y": (B,) long}`` labels used for both encoding and decoding (``(1,)`` for single examples).

    Returns:
        ``(steps, *data_shape)`` for single examples, ``(B, steps, *data_shape)`` for batches: decoder means.

    Raises:
        ValueError / TypeError: ``steps < 2``, shapes that differ or do not fit the network, bad labels.
    """
    enc, dec = _check_nets(nets)
    steps = check_int("steps", steps, min=2)
    check_tensor("x_a", x_a, floating=True)
    check_tensor("x_b", x_b, floating=True)
    single = tuple(x_a.shape) == tuple(enc.data_shape)
    if single:
        x_a, x_b = x_a[None], x_b[None]
    _check_x(enc, x_a, "x_a")
    _check_x(enc, x_b, "x_b")
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_b must have the shape of x_a {tuple(x_a.shape)}, got {tuple(x_b.shape)}")
    b = x_a.shape[0]
    y = _labels(enc, cond, b)
    mu_a, _ = enc(x_a, y)
    mu_b, _ = enc(x_b, y)
    w = torch.linspace(0.0, 1.0, steps, device=mu_a.device, dtype=mu_a.dtype)[None, :, None]  # (1, S, 1)
    z = (1.0 - w) * mu_a[:, None] + w * mu_b[:, None]  # (B, S, L)
    out = _mean(dec.likelihood, dec(z.reshape(b * steps, -1), _repeat_each(y, steps)))  # (B*S, *data_shape)
    out = out.reshape(b, steps, *enc.data_shape)  # (B, S, *data_shape)
    return out[0] if single else out


def _repeat_each(y: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if y is None else y.repeat_interleave(n)  # (B*n,), b-major like z.reshape(B*n, ...)
