"""Generative adversarial networks: generator / discriminator builders, objectives, losses, regularisers.

A generator ``G(z, y, c)`` maps noise ``z ~ N(0, I)`` (plus an optional class label ``y`` and InfoGAN
codes ``c``) to data; a discriminator (critic) ``D(x, y)`` returns raw logits ``(B,)``. The fit loop
alternates :func:`discriminator_objective` (``n_critic`` times) and :func:`generator_objective`, each
with its own optimiser. **Convention:** data in model space (vectors, or images in ``[-1, 1]``, which
the image generator reaches through ``tanh``); no time variable.

``f = D(G(z))`` and ``r = D(x)`` are the discriminator's raw outputs ("logits", no sigmoid), shaped
``(B,)`` or ``(B, 1)``. Every loss is minimised; ``softplus(u) = log(1 + e^u)`` keeps the log-sigmoid
terms stable for any logit (``-log σ(u) = softplus(-u)``, ``-log(1 - σ(u)) = softplus(u)``)::

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

Networks (:func:`build`): an MLP pair for vectors (LeakyReLU(0.2) discriminator) or DCGAN's conv pair for
images (Radford et al.: strided convolutions, batch norm and ReLU in the generator, ``tanh`` output,
LeakyReLU(0.2) in the discriminator), optionally spectrally normalised (Miyato et al.). With
``num_classes`` the pair is class-conditional in one of three ways (``cond_mode``):

* ``"concat"`` (conditional GAN, Mirza & Osindero): a label embedding is concatenated to the
  discriminator's input (a vector, or one learned ``H x W`` plane per class for images);
* ``"projection"`` (Miyato & Koyama): ``D(x, y) = ψ(φ(x)) + <embed(y), φ(x)>``;
* ``"acgan"`` (Odena et al.): ``D`` does not see ``y``; an auxiliary head predicts it, and both players
  minimise the cross-entropy of that head (real and fake for ``D``, fake for ``G``).

In every mode the generator takes ``[z, embed(y)]``. InfoGAN (Chen et al.) adds codes ``c`` to the
generator's input, one categorical code with ``info_categorical`` categories (one-hot) and
``info_continuous`` codes ``U(-1, 1)``; a Q head on the discriminator's features predicts them, and both
players minimise ``L_I = CE(q_cat, c_cat) + ½ ‖q_cont - c_cont‖²`` (a variational lower bound on
``I(c; G(z, c))`` up to constants, with a unit-variance Gaussian for the continuous codes).

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
    Unsupervised Representation Learning with Deep Convolutional Generative Adversarial Networks (DCGAN).
    Radford, Metz, Chintala, 2016. arXiv:1511.06434.
    Conditional Generative Adversarial Nets. Mirza, Osindero, 2014. arXiv:1411.1784.
    cGANs with Projection Discriminator. Miyato, Koyama, 2018. arXiv:1802.05637.
    Conditional Image Synthesis with Auxiliary Classifier GANs. Odena, Olah, Shlens, 2017. arXiv:1610.09585.
    InfoGAN: Interpretable Representation Learning by Information Maximizing Generative Adversarial Nets.
    Chen, Duan, Houthooft, Schulman, Sutskever, Abbeel, 2016. arXiv:1606.03657.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    append_dims, check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor,
    rand, randint, randn,
)
from edifice.blocks.conv import ConvDecoder, ConvEncoder, bottom_size, check_channels, maybe_spectral_norm
from edifice.blocks.embedding import LabelEmbedding
from edifice.blocks.mlp import MLP

__all__ = [
    "LOSSES", "ARCHS", "COND_MODES", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty",
    "clip_weights_", "GANNets", "Generator", "Discriminator", "build", "sample_latent", "info_loss",
    "discriminator_objective", "generator_objective", "sample",
]

LOSSES = ("minimax", "non_saturating", "least_squares", "hinge", "wasserstein")
ARCHS = ("auto", "mlp", "dcgan")
COND_MODES = ("concat", "projection", "acgan")


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


# ---------------------------------------------------------------------------------------------
# networks

_LABEL_DIM = 32  # width of the generator's label embedding (and of the MLP discriminator's in "concat" mode)


def _check_data_shape(data_shape: Any) -> tuple[int, ...]:
    data_shape = check_shape_tuple("data_shape", data_shape)
    if len(data_shape) == 1 or (len(data_shape) == 3 and data_shape[1] == data_shape[2]):
        return data_shape
    raise ValueError(f"data_shape must be (D,) for vectors or (C, H, H) for square images, got {data_shape}")


def _check_x(data_shape: tuple[int, ...], x: Any, name: str = "x") -> torch.Tensor:
    check_tensor(name, x, floating=True)
    if x.ndim != len(data_shape) + 1 or tuple(x.shape[1:]) != data_shape:
        want = "(B, " + ", ".join(str(s) for s in data_shape) + ")"
        raise ValueError(f"{name} must have shape {want} for this network, got {tuple(x.shape)}")
    return x


def _label_input(num_classes: int | None, y: Any, b: int, device: torch.device, what: str) -> torch.Tensor | None:
    """Labels ``(B,)`` for a label table (``None`` -> the null label), or None for an unconditional net."""
    if num_classes is None:
        if y is not None:
            raise ValueError(f"y was given but the {what} was built with num_classes=None (unconditional)")
        return None
    if y is None:
        return torch.full((b,), num_classes, dtype=torch.long, device=device)
    check_tensor("y", y, ndim=1)
    if y.shape[0] != b:
        raise ValueError(f"y must have shape ({b},) to match the batch, got {tuple(y.shape)}")
    return y.to(device)


class Generator(nn.Module):
    """``G(z, y=None, c=None) -> x``: noise (and label / InfoGAN codes) to data.

    The input ``[z, embed(y), c]`` goes through an :class:`~edifice.blocks.mlp.MLP` (ReLU; ``tanh`` on the
    output for images, none for vectors) or DCGAN's :class:`~edifice.blocks.conv.ConvDecoder` (a linear
    layer to ``channels[0] x h x h``, stride-2 transposed convolutions, batch norm + ReLU, ``tanh``).
    Build it with :func:`build`, which records the options in ``generator.config``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, H)``.
        latent_dim: width of ``z``.
        arch: ``"mlp"`` or ``"dcgan"`` (images only).
        hidden, depth: MLP width and number of hidden layers.
        channels: DCGAN channels, widest first (``(128, 64)``): one 2x upsampling per entry.
        batch_norm: batch norm after each hidden layer of the DCGAN generator.
        num_classes: label count (``y = num_classes`` is the null label), or None.
        info_categorical: categories of InfoGAN's categorical code (0: none, else >= 2).
        info_continuous: number of InfoGAN continuous codes.
    """

    def __init__(self, *, data_shape: tuple[int, ...], latent_dim: int, arch: str, hidden: int, depth: int,
                 channels: tuple[int, ...], batch_norm: bool, num_classes: int | None, info_categorical: int,
                 info_continuous: int) -> None:
        super().__init__()
        self.data_shape, self.latent_dim, self.num_classes = tuple(data_shape), latent_dim, num_classes
        self.info_categorical, self.info_continuous = info_categorical, info_continuous
        self.code_dim = info_categorical + info_continuous
        self.label_embed = LabelEmbedding(num_classes, _LABEL_DIM) if num_classes is not None else None
        in_dim = latent_dim + (_LABEL_DIM if num_classes is not None else 0) + self.code_dim
        self.net: nn.Module
        if arch == "mlp":
            self.net = MLP(in_dim, math.prod(data_shape), hidden=hidden, depth=depth, act="relu")
            self.out_act: nn.Module = nn.Tanh() if len(data_shape) == 3 else nn.Identity()
        else:
            c, h, _ = data_shape
            self.net = ConvDecoder(c, h, channels=channels, in_features=in_dim, norm="batch" if batch_norm else "none",
                                   act="relu", out_act="tanh")
            self.out_act = nn.Identity()

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """Generate ``(B, *data_shape)`` from ``z (B, latent_dim)``, labels ``y (B,)`` and codes ``c (B, code_dim)``.

        Raises:
            ValueError: a ``z`` / ``y`` / ``c`` of the wrong shape, ``y`` for an unconditional generator, ``c``
                missing (InfoGAN) or given to a generator without codes.
        """
        check_tensor("z", z, shape=(None, self.latent_dim), floating=True)
        b = z.shape[0]
        parts = [z]
        y = _label_input(self.num_classes, y, b, z.device, "generator")
        if y is not None:
            parts.append(self.label_embed(y).to(z.dtype))  # (B, _LABEL_DIM)
        if self.code_dim:
            if c is None:
                raise ValueError(f"c (InfoGAN codes of shape ({b}, {self.code_dim})) must be given to this generator; "
                                 f"draw them with sample_latent")
            check_tensor("c", c, shape=(b, self.code_dim), floating=True)
            parts.append(c.to(z.dtype))
        elif c is not None:
            raise ValueError("c was given but the generator was built without InfoGAN codes "
                             "(info_categorical=0, info_continuous=0)")
        h = torch.cat(parts, dim=1)  # (B, in_dim)
        return self.out_act(self.net(h)).reshape(b, *self.data_shape)  # (B, *data_shape)


class Discriminator(nn.Module):
    """``D(x, y=None) -> logits (B,)``; :meth:`forward_aux` also returns the auxiliary heads, in one pass.

    A feature trunk ``φ`` (MLP with LeakyReLU(0.2), or DCGAN's :class:`~edifice.blocks.conv.ConvEncoder`
    with LeakyReLU(0.2) and no batch norm, flattened), a linear head ``ψ`` and, depending on the build:
    a projection term ``<embed(y), φ(x)>`` (``cond_mode="projection"``), a class head (``"acgan"``; ``y`` is
    then ignored by ``D``, which predicts it) or InfoGAN's Q head. The trunk has no batch norm: the gradient
    penalties are per-sample quantities that batch statistics would couple (Gulrajani et al., Sec. 4);
    ``spectral_norm=True`` normalises every linear / conv weight of ``φ`` and ``ψ`` (and the projection
    embedding), not the auxiliary heads, whose outputs are not the critic.

    Args: as :class:`Generator`, plus ``spectral_norm`` and ``cond_mode``; ``channels`` narrowest first.
    """

    def __init__(self, *, data_shape: tuple[int, ...], arch: str, hidden: int, depth: int, channels: tuple[int, ...],
                 spectral_norm: bool, num_classes: int | None, cond_mode: str, info_categorical: int,
                 info_continuous: int) -> None:
        super().__init__()
        self.data_shape, self.num_classes, self.arch = tuple(data_shape), num_classes, arch
        self.cond_mode = cond_mode if num_classes is not None else None
        self.info_categorical, self.info_continuous = info_categorical, info_continuous
        self.code_dim = info_categorical + info_continuous
        sn = spectral_norm
        concat = self.cond_mode == "concat"
        self.label_embed: LabelEmbedding | None = None
        if arch == "mlp":
            width = math.prod(data_shape)
            if concat:
                self.label_embed = LabelEmbedding(num_classes, _LABEL_DIM)
                width += _LABEL_DIM
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [maybe_spectral_norm(nn.Linear(width, hidden), sn), nn.LeakyReLU(0.2)]
                width = hidden
            self.trunk = nn.Sequential(*layers)
            feat = hidden
        else:
            c, h, _ = data_shape
            if concat:  # one learned H x H plane per class, an extra input channel
                self.label_embed = LabelEmbedding(num_classes, h * h)
            enc = ConvEncoder(c + int(concat), h, channels=channels, act="leaky_relu", spectral_norm=sn)
            self.trunk = nn.Sequential(enc, nn.Flatten())
            feat = math.prod(enc.out_shape)
        self.feature_dim = feat
        self.head = maybe_spectral_norm(nn.Linear(feat, 1), sn)
        self.embed: LabelEmbedding | None = None
        if self.cond_mode == "projection":
            self.embed = LabelEmbedding(num_classes, feat)
            nn.init.xavier_uniform_(self.embed.table.weight)  # N(0, 1) rows would swamp ψ(φ) at init
            self.embed.table = maybe_spectral_norm(self.embed.table, sn)
        self.class_head = nn.Linear(feat, num_classes) if self.cond_mode == "acgan" else None
        self.q_head = (nn.Sequential(nn.Linear(feat, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, self.code_dim))
                       if self.code_dim else None)

    def features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``φ(x)`` (with the concat label input), ``(B, feature_dim)``."""
        _check_x(self.data_shape, x)
        b = x.shape[0]
        if self.label_embed is not None:
            y = _label_input(self.num_classes, y, b, x.device, "discriminator")
            e = self.label_embed(y).to(x.dtype)  # (B, E)
            if self.arch == "mlp":
                return self.trunk(torch.cat([x.flatten(1), e], dim=1))  # (B, feat)
            h = self.data_shape[1]
            return self.trunk(torch.cat([x, e.view(b, 1, h, h)], dim=1))  # (B, C + 1, H, H) -> (B, feat)
        if self.cond_mode is None and y is not None:
            _label_input(None, y, b, x.device, "discriminator")  # raises: y for an unconditional net
        return self.trunk(x.flatten(1) if self.arch == "mlp" else x)  # (B, feat)

    def forward_aux(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and auxiliary outputs from one pass of the trunk.

        Args:
            x: ``(B, *data_shape)``.
            y: ``(B,)`` long labels (``num_classes`` = null label) for a conditional net; ignored with ACGAN.

        Returns:
            ``(logits (B,), aux)``, ``aux`` a dict holding ``"class"`` ``(B, num_classes)`` class logits
            (ACGAN), ``"cat"`` ``(B, info_categorical)`` logits and ``"cont"`` ``(B, info_continuous)``
            means (InfoGAN's Q head), whichever apply (empty otherwise).

        Raises:
            ValueError: ``x`` not shaped ``(B, *data_shape)``; a bad ``y``.
        """
        phi = self.features(x, None if self.cond_mode == "acgan" else y)  # (B, feat)
        logits = self.head(phi)[:, 0]  # (B,)
        if self.embed is not None:
            y = _label_input(self.num_classes, y, x.shape[0], x.device, "discriminator")
            logits = logits + (self.embed(y).to(phi.dtype) * phi).sum(dim=1)  # + <embed(y), φ(x)>
        aux: dict[str, torch.Tensor] = {}
        if self.class_head is not None:
            aux["class"] = self.class_head(phi)  # (B, num_classes)
        if self.q_head is not None:
            q = self.q_head(phi)  # (B, code_dim)
            if self.info_categorical:
                aux["cat"] = q[:, :self.info_categorical]
            if self.info_continuous:
                aux["cont"] = q[:, self.info_categorical:]
        return logits, aux

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B,)`` of ``x (B, *data_shape)`` (see :meth:`forward_aux`)."""
        return self.forward_aux(x, y)[0]


class GANNets(NamedTuple):
    """The generator and the discriminator built by :func:`build`."""

    generator: Generator
    discriminator: Discriminator


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return value


def build(
    *,
    data_shape: tuple[int, ...],
    latent_dim: int | None = None,
    arch: str = "auto",
    hidden: int = 128,
    depth: int = 3,
    channels: Any = None,
    batch_norm: bool = True,
    spectral_norm: bool = False,
    num_classes: int | None = None,
    cond_mode: str = "concat",
    info_categorical: int = 0,
    info_continuous: int = 0,
) -> GANNets:
    """Build a generator / discriminator pair (see the module docstring and the two classes).

    Args:
        data_shape: ``(D,)`` (vectors) or ``(C, H, H)`` (images in ``[-1, 1]``).
        latent_dim: width of ``z``; None means 8 for vectors, 64 for images.
        arch: ``"auto"`` (MLP for vectors, DCGAN for images), ``"mlp"`` (images are flattened) or ``"dcgan"``.
        hidden: MLP width (and the InfoGAN Q head's hidden width).
        depth: hidden layers of each MLP (>= 1).
        channels: DCGAN discriminator channels, one stride-2 stage each (default ``(64, 128)``); the
            generator uses them reversed. ``H`` must be divisible by ``2 ** len(channels)``.
        batch_norm: batch norm in the DCGAN generator.
        spectral_norm: spectral normalisation of the discriminator (SN-GAN).
        num_classes: class-conditional pair with this many labels, or None.
        cond_mode: ``"concat"``, ``"projection"`` or ``"acgan"`` (used only with ``num_classes``).
        info_categorical: categories of one InfoGAN categorical code (0 = none, else >= 2).
        info_continuous: number of InfoGAN continuous codes ``U(-1, 1)``.

    Returns:
        :class:`GANNets` ``(generator, discriminator)``; ``generator.config`` holds the resolved options,
        so ``build(**generator.config)`` rebuilds the pair.

    Raises:
        ValueError: a bad ``data_shape`` (also: an image size not divisible by ``2 ** len(channels)``),
            an unknown ``arch`` / ``cond_mode``, ``arch="dcgan"`` for vectors, non-positive sizes,
            ``info_categorical == 1``.
        TypeError: an option of the wrong type.

    Example:
        >>> import torch
        >>> from edifice.generative import gan
        >>> nets = gan.build(data_shape=(2,), hidden=32, depth=2)
        >>> gan.sample(nets, (5, 2), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
        >>> g, d = gan.build(data_shape=(1, 8, 8), channels=(8, 16), num_classes=10, cond_mode="projection")
        >>> d(g(torch.zeros(3, 64), torch.tensor([0, 1, 2])), torch.tensor([0, 1, 2])).shape
        torch.Size([3])
    """
    data_shape = _check_data_shape(data_shape)
    image = len(data_shape) == 3
    check_choice("arch", arch, ARCHS)
    if arch == "auto":
        arch = "dcgan" if image else "mlp"
    if arch == "dcgan" and not image:
        raise ValueError(f"arch='dcgan' needs an image data_shape (C, H, H), got {data_shape}; use arch='mlp'")
    latent_dim = (64 if image else 8) if latent_dim is None else check_int("latent_dim", latent_dim, min=1)
    hidden = check_int("hidden", hidden, min=1)
    depth = check_int("depth", depth, min=1)
    channels = (64, 128) if channels is None else check_channels("channels", channels)
    if arch == "dcgan":
        bottom_size(data_shape[1], len(channels))  # ValueError naming data_shape
    _check_bool("batch_norm", batch_norm)
    _check_bool("spectral_norm", spectral_norm)
    if num_classes is not None:
        num_classes = check_int("num_classes", num_classes, min=1)
    check_choice("cond_mode", cond_mode, COND_MODES)
    info_categorical = check_int("info_categorical", info_categorical, min=0)
    if info_categorical == 1:
        raise ValueError("info_categorical must be 0 (no categorical code) or >= 2 categories, got 1")
    info_continuous = check_int("info_continuous", info_continuous, min=0)
    config: dict[str, Any] = dict(
        data_shape=data_shape, latent_dim=latent_dim, arch=arch, hidden=hidden, depth=depth, channels=channels,
        batch_norm=batch_norm, spectral_norm=spectral_norm, num_classes=num_classes, cond_mode=cond_mode,
        info_categorical=info_categorical, info_continuous=info_continuous)
    common = dict(data_shape=data_shape, arch=arch, hidden=hidden, depth=depth, num_classes=num_classes,
                  info_categorical=info_categorical, info_continuous=info_continuous)
    generator = Generator(latent_dim=latent_dim, channels=tuple(reversed(channels)), batch_norm=batch_norm, **common)
    discriminator = Discriminator(channels=channels, spectral_norm=spectral_norm, cond_mode=cond_mode, **common)
    generator.config = config
    return GANNets(generator, discriminator)


# ---------------------------------------------------------------------------------------------
# latents, objectives, sampling


def _unpack(nets: Any) -> tuple[Generator, Discriminator]:
    if not isinstance(nets, tuple) or len(nets) != 2:
        raise TypeError(f"nets must be GANNets(generator, discriminator) from gan.build, got {type(nets).__name__}")
    g, d = nets
    if not isinstance(g, Generator) or not isinstance(d, Discriminator):
        raise TypeError(f"nets must hold a gan.Generator and a gan.Discriminator, got "
                        f"({type(g).__name__}, {type(d).__name__})")
    return g, d


def _param_like(module: nn.Module) -> torch.Tensor:
    p = next(module.parameters(), None)
    return p if p is not None else torch.empty(0)


def _labels(g: Generator, cond: Any, b: int, device: torch.device) -> torch.Tensor | None:
    """``cond["y"]`` checked against the generator: required when conditional, refused otherwise."""
    cond = check_cond(cond)
    extra = sorted(set(cond) - {"y"})
    if extra:
        raise ValueError(f"cond may only hold 'y' (class labels) for a GAN, got keys {extra}")
    y = cond.get("y")
    if g.num_classes is None:
        if y is not None:
            raise ValueError("cond['y'] was given but the GAN was built with num_classes=None (unconditional)")
        return None
    if y is None:
        raise ValueError(f"cond['y'] (labels of shape ({b},)) is required for a conditional GAN "
                         f"(num_classes={g.num_classes})")
    y = check_tensor("y", y, ndim=1)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must be an integer (long) tensor of class labels, got dtype {y.dtype}")
    if y.shape[0] != b:
        raise ValueError(f"cond['y'] must have shape ({b},) to match the batch, got {tuple(y.shape)}")
    if y.device.type == "cpu" and y.numel() and bool(((y < 0) | (y > g.num_classes)).any()):
        raise ValueError(f"cond['y'] must hold labels in [0, {g.num_classes - 1}] or the null label "
                         f"{g.num_classes}, got {y[(y < 0) | (y > g.num_classes)][0].item()}")
    return y.to(device)


def sample_latent(
    nets: Any,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor | None]:
    """Draw the generator's inputs: ``z ~ N(0, I)`` and InfoGAN's codes.

    Draws, in this order, ``z (n, latent_dim)``, the categorical code (uniform over ``info_categorical``
    categories, one-hot) and the continuous codes ``U(-1, 1)``.

    Args:
        nets: :class:`GANNets`.
        n: number of latents.
        generator: the source of all the noise.
        device: where to put them (default: the generator network's device); dtype is its parameters'.

    Returns:
        ``{"z": (n, latent_dim), "c": (n, info_categorical + info_continuous) or None}`` (the one-hot
        categorical code first, then the continuous codes).
    """
    g, _ = _unpack(nets)
    n = check_int("n", n, min=1)
    check_generator(generator)
    ref = _param_like(g)
    device = torch.device(device) if device is not None else ref.device
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    z = randn((n, g.latent_dim), generator=generator, device=device, dtype=dtype)
    parts = []
    if g.info_categorical:
        idx = randint(0, g.info_categorical, (n,), generator=generator, device=device)
        parts.append(F.one_hot(idx, g.info_categorical).to(dtype))  # (n, K)
    if g.info_continuous:
        parts.append(2.0 * rand((n, g.info_continuous), generator=generator, device=device, dtype=dtype) - 1.0)
    return {"z": z, "c": torch.cat(parts, dim=1) if parts else None}


def info_loss(aux: Mapping[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """InfoGAN's ``L_I = CE(q_cat, c_cat) + ½ E‖q_cont - c_cont‖²`` (Chen et al. eq. 5, up to constants).

    The mutual-information lower bound ``L_I(G, Q) = E[log Q(c | x)] + H(c)`` with a categorical ``Q`` for
    the categorical code and a unit-variance factored Gaussian for the continuous codes; minimising the
    returned value maximises the bound (``H(c)`` and the Gaussian's normaliser are constants).

    Args:
        aux: Q-head outputs ``{"cat": (B, K) logits, "cont": (B, M) means}`` (either may be absent).
        c: ``(B, K + M)`` codes from :func:`sample_latent` (one-hot first).

    Returns:
        The scalar loss (mean over the batch).
    """
    check_tensor("c", c, ndim=2, floating=True)
    k = aux["cat"].shape[1] if "cat" in aux else 0
    loss = c.new_zeros(())
    if k:
        loss = loss + F.cross_entropy(aux["cat"], c[:, :k].argmax(dim=1))
    if "cont" in aux:
        loss = loss + 0.5 * (aux["cont"] - c[:, k:]).square().sum(dim=1).mean()
    return loss


def _class_ce(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean cross-entropy over the labelled entries (the null label ``num_classes`` is skipped)."""
    keep = (y < num_classes).to(logits.dtype)
    ce = F.cross_entropy(logits, y.clamp(max=num_classes - 1), reduction="none")  # (B,)
    return (ce * keep).sum() / keep.sum().clamp(min=1.0)


def _check_weights(**weights: Any) -> dict[str, float]:
    return {k: check_float(k, v, min=0.0) for k, v in weights.items()}


def _head_terms(d: Any, class_aux: list, fake_aux: dict, y: Any, c: Any, w: dict, logs: dict) -> Any:
    """The auxiliary heads' weighted losses: ACGAN's class cross-entropy summed over the ``class_aux``
    batches, InfoGAN's code loss on the fakes. Writes ``aux`` / ``info`` into ``logs``; 0 without heads."""
    total = 0.0
    if d.class_head is not None:
        aux = sum(_class_ce(a["class"], y, d.num_classes) for a in class_aux)
        total = total + w["aux_weight"] * aux
        logs["aux"] = aux.detach()
    if d.q_head is not None:
        info = info_loss(fake_aux, c)
        total = total + w["info_weight"] * info
        logs["info"] = info.detach()
    return total


def discriminator_objective(
    nets: Any,
    x: torch.Tensor,
    *,
    kind: str = "non_saturating",
    gp_weight: float = 0.0,
    r1_weight: float = 0.0,
    aux_weight: float = 1.0,
    info_weight: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The discriminator's loss on a real batch and a fresh fake batch (one critic step's objective).

    ``L = L_D(kind) + gp_weight · GP + (r1_weight / 2) · R1 + aux_weight · (CE_real + CE_fake)
    + info_weight · L_I``. The fakes are generated under ``torch.no_grad()``, so the loss has no graph into
    the generator (its parameters get no gradient). ``r1_weight`` is Mescheder et al.'s ``γ``. The ACGAN
    term is the class cross-entropy of real and fake batches (Odena et al. ``L_C``; null labels are
    skipped); the InfoGAN term trains the Q head (and the shared trunk) on the fakes' codes. WGAN's weight
    clipping is not done here: call :func:`clip_weights_` after the optimiser step.

    Args:
        nets: :class:`GANNets`.
        x: ``(B, *data_shape)`` real batch.
        kind: one of :data:`LOSSES`.
        gp_weight: ``λ`` of the WGAN-GP penalty (10 in the paper); 0 disables it.
        r1_weight: ``γ`` of the R1 penalty; 0 disables it.
        aux_weight: weight of the ACGAN class loss (ACGAN builds only).
        info_weight: ``λ`` of the InfoGAN loss (InfoGAN builds only).
        generator: draws ``z``, the codes and the penalty's interpolation weights.
        cond: ``{"y": (B,) labels}`` for a conditional GAN (required then); the fakes use the same labels.

    Returns:
        ``(loss, logs)``; ``logs`` holds ``loss`` (the total), ``d_real``, ``d_fake`` (mean logits) and,
        where used, ``gp``, ``r1``, ``aux``, ``aux_acc`` (class accuracy on the real batch), ``info``.

    Raises:
        ValueError: unknown ``kind``, negative weights, ``x`` or labels of the wrong shape.
    """
    g, d = _unpack(nets)
    check_choice("kind", kind, LOSSES)
    w = _check_weights(gp_weight=gp_weight, r1_weight=r1_weight, aux_weight=aux_weight, info_weight=info_weight)
    check_generator(generator)
    x = _check_x(g.data_shape, x)
    b = x.shape[0]
    y = _labels(g, cond, b, x.device)
    lat = sample_latent(nets, b, generator=generator, device=x.device)
    with torch.no_grad():
        fake = g(lat["z"], y, lat["c"]).to(x.dtype)  # (B, *data_shape), no graph into G
    real_logits, real_aux = d.forward_aux(x, y)
    fake_logits, fake_aux = d.forward_aux(fake, y)
    loss, logs = discriminator_loss(real_logits, fake_logits, kind=kind)
    dcond = {"y": y} if y is not None else {}
    if w["gp_weight"] > 0:
        gp = gradient_penalty(d, x, fake, generator=generator, cond=dcond)
        loss = loss + w["gp_weight"] * gp
        logs["gp"] = gp.detach()
    if w["r1_weight"] > 0:
        r1 = r1_penalty(d, x, cond=dcond)
        loss = loss + 0.5 * w["r1_weight"] * r1
        logs["r1"] = r1.detach()
    loss = loss + _head_terms(d, [real_aux, fake_aux], fake_aux, y, lat["c"], w, logs)
    if d.class_head is not None:
        keep = y < d.num_classes
        hit = (real_aux["class"].detach().argmax(dim=1) == y) & keep
        logs["aux_acc"] = hit.sum().to(x.dtype) / keep.sum().clamp(min=1).to(x.dtype)
    logs["loss"] = loss.detach()
    return loss, logs


def generator_objective(
    nets: Any,
    x: torch.Tensor,
    *,
    kind: str = "non_saturating",
    aux_weight: float = 1.0,
    info_weight: float = 1.0,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's loss on a fresh fake batch: ``L_G(kind) + aux_weight · CE_fake + info_weight · L_I``.

    ``x`` only gives the batch size, device and dtype (and is shape-checked); the labels come from
    ``cond``. The loss backpropagates through the discriminator, so ``.backward()`` also leaves gradients
    on the discriminator's parameters: they are not used. Step only the generator's optimiser, and let
    the discriminator's step start with ``zero_grad()`` (as every fit loop does). The InfoGAN term also
    trains the Q head (Chen et al. minimise ``L_I`` over both ``G`` and ``Q``).

    Args:
        nets: :class:`GANNets`.
        x: ``(B, *data_shape)`` a real batch (for ``B``, device and dtype).
        kind: one of :data:`LOSSES`.
        aux_weight: weight of the ACGAN class loss on the fakes.
        info_weight: weight of the InfoGAN loss.
        generator: draws ``z`` and the codes.
        cond: ``{"y": (B,) labels}`` for a conditional GAN (required then).

    Returns:
        ``(loss, logs)``; ``logs`` holds ``loss`` (the total), ``d_fake`` and, where used, ``aux``, ``info``.

    Raises:
        ValueError: unknown ``kind``, negative weights, ``x`` or labels of the wrong shape.
    """
    g, d = _unpack(nets)
    check_choice("kind", kind, LOSSES)
    w = _check_weights(aux_weight=aux_weight, info_weight=info_weight)
    check_generator(generator)
    x = _check_x(g.data_shape, x)
    b = x.shape[0]
    y = _labels(g, cond, b, x.device)
    lat = sample_latent(nets, b, generator=generator, device=x.device)
    fake = g(lat["z"], y, lat["c"])  # (B, *data_shape)
    logits, aux = d.forward_aux(fake, y)
    loss, logs = generator_loss(logits, kind=kind)
    loss = loss + _head_terms(d, [aux], aux, y, lat["c"], w, logs)
    logs["loss"] = loss.detach()
    return loss, logs


def sample(
    nets: Any,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    cond: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    z: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``G(z, y, c)`` with fresh latents (one generator pass; the nets' current mode is kept).

    Args:
        nets: :class:`GANNets` (or ``(generator, discriminator)``).
        shape: ``(B, *data_shape)``.
        generator: draws ``z`` and the InfoGAN codes (:func:`sample_latent`).
        cond: ``{"y": (B,) labels}``, required for a conditional GAN.
        device: where to sample (default: the generator's device).
        z: ``(B, latent_dim)`` override of the noise (e.g. to interpolate).
        c: ``(B, code_dim)`` override of the InfoGAN codes (e.g. to sweep one code).

    Returns:
        ``(B, *data_shape)`` samples in model space, in the generator's dtype.

    Raises:
        ValueError: ``shape`` not ``(B, *data_shape)``; labels missing / of the wrong shape; a bad ``z`` / ``c``.
    """
    g, _ = _unpack(nets)
    shape = check_shape_tuple("shape", shape)
    if shape[1:] != g.data_shape:
        want = "(B, " + ", ".join(str(s) for s in g.data_shape) + ")"
        raise ValueError(f"shape must be {want} for this network, got {shape}")
    b = shape[0]
    lat = sample_latent(nets, b, generator=generator, device=device)
    dev = lat["z"].device
    y = _labels(g, cond, b, dev)
    if z is not None:
        lat["z"] = check_tensor("z", z, shape=(b, g.latent_dim), floating=True).to(lat["z"])
    if c is not None:
        if not g.code_dim:
            raise ValueError("c was given but the generator was built without InfoGAN codes")
        lat["c"] = check_tensor("c", c, shape=(b, g.code_dim), floating=True).to(lat["z"])
    return g(lat["z"], y, lat["c"])
