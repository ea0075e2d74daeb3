r"""Restricted Boltzmann machines: Bernoulli-Bernoulli and Gaussian-Bernoulli, trained by CD-k and PCD.

An RBM is a bipartite Markov random field over visible units ``v`` (``D = prod(data_shape)`` of them, a
data point flattened) and binary hidden units ``h ∈ {0, 1}^H``, ``p(v, h) = exp(-E(v, h)) / Z``, with the
energy (Hinton 2010, Sec. 2 and Sec. 13.2)

    Bernoulli visibles, ``v ∈ {0, 1}^D``:   E(v, h) = -bᵀv - cᵀh - vᵀW h
    Gaussian visibles, ``v ∈ R^D``:         E(v, h) = ‖v - b‖² / (2σ²) - cᵀh - (v/σ)ᵀ W h

(``W (D, H)``, visible bias ``b (D,)``, hidden bias ``c (H,)``, fixed visible std ``σ``). Summing out ``h``
gives the **free energy** ``F(v) = -log Σ_h exp(-E(v, h))`` (:func:`free_energy`),

    Bernoulli:  F(v) = -bᵀv - Σ_j softplus(c_j + (vᵀW)_j)
    Gaussian:   F(v) = ‖v - b‖² / (2σ²) - Σ_j softplus(c_j + (vᵀW)_j / σ),

so ``log p(v) = -F(v) - log Z``. Both conditionals factorise, which is block Gibbs sampling
(:func:`gibbs_step`): ``p(h_j = 1 | v) = sigmoid(c_j + (vᵀW)_j / σ)`` and ``p(v_i = 1 | h) = sigmoid(b_i +
(W h)_i)`` (Bernoulli; ``σ`` = 1) or ``p(v_i | h) = N(b_i + σ (W h)_i, σ²)`` (Gaussian).

The log-likelihood gradient is ``-∇F(v_data) + E_model[∇F(v)]``; for ``W`` it is the textbook
``<v p(h|v)ᵀ>_data - <v p(h|v)ᵀ>_model`` (over ``σ`` for Gaussian visibles). :func:`loss` returns the
surrogate ``mean F(v_data) - mean F(v_model)`` whose gradient is exactly minus that estimate, with model
samples from ``k`` Gibbs steps started at the data (contrastive divergence, CD-k; Hinton 2002) or from
persistent chains that are carried across updates (PCD; Tieleman 2008) -- the chains live in the module as
the buffer ``chains`` and ``loss(..., persistent=True)`` updates them in place (the algorithm requires it).

``log Z`` sums ``2^min(D, H)`` terms (:func:`log_partition_brute_force`: over the visible states, or over
the hidden states, with the visibles integrated in closed form, which also covers Gaussian visibles), so
:func:`log_prob` is exact for models with few hidden units even on 8x8 images; :func:`pseudo_log_likelihood`
is the tractable proxy for larger ones.

**Model space.** Bernoulli RBMs model binary data: :func:`loss` and :func:`log_prob` binarise model-space
input as ``x > 0`` (images in ``[-1, 1]``) unless told ``binarize=False`` (then ``x`` must already be 0/1),
and :func:`sample` returns ``2 v - 1 ∈ {-1, 1}``. Gaussian RBMs take the data as it is; as Hinton (2010,
Sec. 13.2) recommends, standardise each dimension to zero mean and unit variance beforehand and keep
``sigma=1`` (the toy 2-D sets are roughly standardised already).

Example (a 3-unit RBM: its pmf over the 8 binary vectors sums to one; sampling gives ±1 vectors):
    >>> import torch
    >>> from edifice.generative import rbm as R
    >>> _ = torch.manual_seed(0)
    >>> m = R.build(data_shape=(3,), hidden=2, chains=8)
    >>> v = torch.tensor([[a, b, c] for a in (0., 1.) for b in (0., 1.) for c in (0., 1.)])
    >>> round(float(R.log_prob(m, v, binarize=False).detach().exp().sum()), 6)
    1.0
    >>> x = R.sample(m, (4, 3), steps=10, generator=torch.Generator().manual_seed(0))
    >>> sorted(set(x.flatten().tolist())) in ([-1.0, 1.0], [-1.0], [1.0])
    True

References:
    Training Products of Experts by Minimizing Contrastive Divergence. Hinton, 2002. Neural Computation 14(8).
    Training Restricted Boltzmann Machines using Approximations to the Likelihood Gradient. Tieleman, 2008.
    ICML.
    A Practical Guide to Training Restricted Boltzmann Machines. Hinton, 2010. UTML TR 2010-003.
    Reducing the Dimensionality of Data with Neural Networks. Hinton, Salakhutdinov, 2006. Science 313.
    Improved Learning of Gaussian-Bernoulli Restricted Boltzmann Machines. Cho, Ilin, Raiko, 2011. ICANN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edifice._checks import (
    check_choice, check_cond, check_float, check_generator, check_int, check_shape_tuple, check_tensor, rand, randn,
)

__all__ = ["RBM", "VISIBLE", "build", "energy", "free_energy", "hidden_probs", "visible_mean", "gibbs_step",
           "gibbs", "log_partition_brute_force", "log_prob", "pseudo_log_likelihood", "loss", "sample"]

VISIBLE = ("bernoulli", "gaussian")
MAX_STATES = 2**20  # the largest sum log_partition_brute_force / log_prob will enumerate by default
_CHUNK = 2**14  # states enumerated at a time


class RBM(nn.Module):
    """A restricted Boltzmann machine with weights ``W (D, H)``, visible bias ``b (D,)``, hidden bias ``c (H,)``.

    ``D = prod(data_shape)``. The buffer ``chains (chains, *data_shape)`` holds the persistent visible states
    of PCD; it starts at zero (the first Gibbs step randomises it) and moves / saves with the module.
    ``forward(v)`` is the free energy :func:`free_energy` ``(B,)``. The constructor options are recorded in
    ``self.config`` so ``RBM(**rbm.config)`` rebuilds it; see :func:`build` for their meaning.

    Weights start ``N(0, 0.01²)`` and biases at zero (Hinton 2010, Sec. 8).

    References:
        A Practical Guide to Training Restricted Boltzmann Machines. Hinton, 2010. UTML TR 2010-003.
    """

    def __init__(self, *, data_shape: Sequence[int], num_classes: int | None = None, hidden: int = 64,
                 visible: str = "bernoulli", chains: int = 256, sigma: float = 1.0) -> None:
        super().__init__()
        data_shape = check_shape_tuple("data_shape", data_shape)
        if len(data_shape) not in (1, 3):
            raise ValueError(f"data_shape must be (D,) or an image (C, H, W), got {data_shape}")
        if num_classes is not None:
            raise ValueError(f"num_classes must be None: class-conditional RBMs are not implemented, got "
                             f"{num_classes!r}")
        hidden = check_int("hidden", hidden, min=1)
        check_choice("visible", visible, VISIBLE)
        chains = check_int("chains", chains, min=1)
        sigma = check_float("sigma", sigma, min=0.0, min_open=True)
        if visible == "bernoulli" and sigma != 1.0:
            raise ValueError(f"sigma is the std of Gaussian visible units (visible='gaussian'); it must stay 1.0 "
                             f"for visible='bernoulli', got sigma={sigma}")
        self.data_shape, self.visible, self.sigma = data_shape, visible, sigma
        d = math.prod(data_shape)
        self.W = nn.Parameter(0.01 * torch.randn(d, hidden))
        self.b = nn.Parameter(torch.zeros(d))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.register_buffer("chains", torch.zeros(chains, *data_shape))
        self.config: dict[str, Any] = dict(data_shape=list(data_shape), num_classes=None, hidden=hidden,
                                           visible=visible, chains=chains, sigma=sigma)

    @property
    def num_visible(self) -> int:
        return self.W.shape[0]

    @property
    def num_hidden(self) -> int:
        return self.W.shape[1]

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """Free energy ``F(v)`` ``(B,)`` of visible states ``v (B, *data_shape)``."""
        return free_energy(self, v)


def build(*, data_shape: tuple[int, ...], num_classes: int | None = None, hidden: int = 64,
          visible: str = "bernoulli", chains: int = 256, sigma: float = 1.0) -> RBM:
    """Build an :class:`RBM` for data of shape ``data_shape``.

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)``; the visible layer has ``D = prod(data_shape)`` units.
        num_classes: must be None (class-conditional RBMs are not implemented).
        hidden: number ``H`` of binary hidden units.
        visible: ``"bernoulli"`` (binary data) or ``"gaussian"`` (real data, standardised; Gaussian-Bernoulli RBM).
        chains: number of persistent Gibbs chains kept for PCD (:func:`loss` with ``persistent=True``).
        sigma: ``σ > 0``, the fixed std of Gaussian visible units (must be 1.0 for Bernoulli visibles).

    Returns:
        An :class:`RBM`.

    Raises:
        ValueError / TypeError: naming the offending option.
    """
    return RBM(data_shape=data_shape, num_classes=num_classes, hidden=hidden, visible=visible, chains=chains,
               sigma=sigma)


# ----------------------------------------------------------------------------------------------- the model


def _check_rbm(rbm: Any) -> RBM:
    if not isinstance(rbm, RBM):
        raise TypeError(f"rbm must be an RBM (from rbm.build), got {type(rbm).__name__}")
    return rbm


def _flat(rbm: RBM, v: Any, name: str = "v") -> torch.Tensor:
    """``(B, *data_shape)`` -> ``(B, D)`` in the parameters' dtype."""
    check_tensor(name, v)
    if v.ndim != 1 + len(rbm.data_shape) or tuple(v.shape[1:]) != rbm.data_shape:
        raise ValueError(f"{name} must have shape (B, {', '.join(map(str, rbm.data_shape))}), got {tuple(v.shape)}")
    return v.reshape(v.shape[0], -1).to(rbm.W.dtype)


def _hidden_input(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """``c + vᵀW / σ`` for flat ``v (B, D)`` -> ``(B, H)``."""
    return rbm.c + (v @ rbm.W) / rbm.sigma


def _free_energy_flat(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    hidden_term = F.softplus(_hidden_input(rbm, v)).sum(dim=1)  # (B,)
    if rbm.visible == "bernoulli":
        return -(v @ rbm.b) - hidden_term
    return (v - rbm.b).square().sum(dim=1) / (2 * rbm.sigma**2) - hidden_term


def free_energy(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """Free energy ``F(v) = -log Σ_h exp(-E(v, h))`` (see the module docstring for both visible types).

    Differentiable in the parameters and in ``v`` (Bernoulli: defined for any real ``v``, the pmf is on 0/1).

    Args:
        rbm: an :class:`RBM`. v: ``(B, *data_shape)`` visible states (0/1 for Bernoulli visibles).

    Returns:
        ``(B,)``.

    Raises:
        ValueError / TypeError: for a non-RBM or a wrongly shaped ``v``.
    """
    _check_rbm(rbm)
    return _free_energy_flat(rbm, _flat(rbm, v))


def energy(rbm: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Joint energy ``E(v, h)`` (Hinton 2010, eq. 1; Sec. 13.2 for Gaussian visibles).

    Args:
        rbm: an :class:`RBM`. v: ``(B, *data_shape)``. h: ``(B, H)`` hidden states.

    Returns:
        ``(B,)``.

    Raises:
        ValueError / TypeError: for a non-RBM or wrongly shaped ``v`` / ``h``.
    """
    _check_rbm(rbm)
    vf = _flat(rbm, v)
    check_tensor("h", h, shape=(vf.shape[0], rbm.num_hidden))
    h = h.to(rbm.W.dtype)
    inter = ((vf @ rbm.W) * h).sum(dim=1) / rbm.sigma  # (B,) vᵀ W h / σ
    if rbm.visible == "bernoulli":
        return -(vf @ rbm.b) - h @ rbm.c - inter
    return (vf - rbm.b).square().sum(dim=1) / (2 * rbm.sigma**2) - h @ rbm.c - inter


def hidden_probs(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """``p(h_j = 1 | v) = sigmoid(c_j + (vᵀW)_j / σ)`` -> ``(B, H)`` for ``v (B, *data_shape)``."""
    _check_rbm(rbm)
    return torch.sigmoid(_hidden_input(rbm, _flat(rbm, v)))


def _visible_mean_flat(rbm: RBM, h: torch.Tensor) -> torch.Tensor:
    a = h @ rbm.W.T  # (B, D)
    if rbm.visible == "bernoulli":
        return torch.sigmoid(rbm.b + a)
    return rbm.b + rbm.sigma * a


def visible_mean(rbm: RBM, h: torch.Tensor) -> torch.Tensor:
    """``E[v | h]``: ``sigmoid(b + W h)`` (Bernoulli) or ``b + σ W h`` (Gaussian) -> ``(B, *data_shape)``."""
    _check_rbm(rbm)
    check_tensor("h", h, shape=(None, rbm.num_hidden))
    return _visible_mean_flat(rbm, h.to(rbm.W.dtype)).reshape(h.shape[0], *rbm.data_shape)


def _bernoulli(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return (rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) < p).to(p.dtype)


def _gibbs_flat(rbm: RBM, v: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    h = _bernoulli(torch.sigmoid(_hidden_input(rbm, v)), generator)  # (B, H)
    mean = _visible_mean_flat(rbm, h)  # (B, D)
    if rbm.visible == "bernoulli":
        return _bernoulli(mean, generator), h
    return mean + rbm.sigma * randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype), h


def gibbs_step(rbm: RBM, v: torch.Tensor, *, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One block Gibbs sweep: ``h ~ p(h | v)``, then ``v' ~ p(v | h)``.

    Args:
        rbm: an :class:`RBM`. v: ``(B, *data_shape)`` visible states.
        generator: draws the hidden and visible states.

    Returns:
        ``(v', h)``: ``(B, *data_shape)`` new visible states and the ``(B, H)`` hidden states they were drawn from.

    Raises:
        ValueError / TypeError: for a non-RBM, a wrongly shaped ``v`` or a bad ``generator``.
    """
    _check_rbm(rbm)
    generator = check_generator(generator)
    v2, h = _gibbs_flat(rbm, _flat(rbm, v), generator)
    return v2.reshape(v.shape), h


def gibbs(rbm: RBM, v: torch.Tensor, *, k: int = 1, generator: torch.Generator | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` block Gibbs sweeps from ``v`` (:func:`gibbs_step` repeated).

    Args:
        rbm: an :class:`RBM`. v: ``(B, *data_shape)`` starting visible states.
        k: number of sweeps (``>= 1``). generator: the source of randomness.

    Returns:
        ``(v_k, h_k)``: the final visible states ``(B, *data_shape)`` and the hidden states ``(B, H)`` of the
        last sweep.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    _check_rbm(rbm)
    k = check_int("k", k, min=1)
    generator = check_generator(generator)
    x = _flat(rbm, v)
    for _ in range(k):
        x, h = _gibbs_flat(rbm, x, generator)
    return x.reshape(v.shape), h


# ----------------------------------------------------------------------------------------------- likelihood


def _states(n: int, start: int, stop: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Binary vectors of the integers ``start..stop-1`` (bit i of the integer is unit i) -> ``(stop-start, n)``."""
    idx = torch.arange(start, stop, device=device)
    bits = torch.arange(n, device=device)
    return ((idx[:, None] >> bits) & 1).to(dtype)


def _log_partition(rbm: RBM, over: str) -> torch.Tensor:
    W, b, c = rbm.W.double(), rbm.b.double(), rbm.c.double()
    n = rbm.num_visible if over == "visible" else rbm.num_hidden
    parts = []
    for start in range(0, 2**n, _CHUNK):
        s = _states(n, start, min(2**n, start + _CHUNK), W.device, W.dtype)  # (S, n)
        if over == "visible":  # Bernoulli only: -F(v)
            parts.append(torch.logsumexp(s @ b + F.softplus(c + s @ W).sum(dim=1), dim=0))
        elif rbm.visible == "bernoulli":  # Σ_v exp(-E) = exp(cᵀh) Π_i (1 + exp(b_i + (W h)_i))
            parts.append(torch.logsumexp(s @ c + F.softplus(b + s @ W.T).sum(dim=1), dim=0))
        else:  # ∫ exp(-E) dv = exp(cᵀh + bᵀu/σ + ‖u‖²/2) (2πσ²)^{D/2},  u = W h
            u = s @ W.T  # (S, D)
            parts.append(torch.logsumexp(s @ c + u @ b / rbm.sigma + u.square().sum(dim=1) / 2, dim=0))
    log_z = torch.logsumexp(torch.stack(parts), dim=0)
    if rbm.visible == "gaussian":
        log_z = log_z + rbm.num_visible / 2 * math.log(2 * math.pi * rbm.sigma**2)
    return log_z.to(rbm.W.dtype)


def log_partition_brute_force(rbm: RBM, *, over: str = "auto", max_states: int = MAX_STATES) -> torch.Tensor:
    """Exact ``log Z = log Σ_v Σ_h exp(-E(v, h))`` by enumerating one layer (computed in float64).

    ``over="visible"`` sums ``exp(-F(v))`` over the ``2^D`` binary visible vectors (Bernoulli only);
    ``over="hidden"`` sums over the ``2^H`` hidden vectors with the visibles summed / integrated in closed form:
    ``exp(cᵀh) Π_i (1 + exp(b_i + (Wh)_i))`` (Bernoulli) or ``exp(cᵀh + bᵀWh/σ + ‖Wh‖²/2) (2πσ²)^{D/2}``
    (Gaussian). ``"auto"`` picks the smaller layer (the hidden one for Gaussian visibles). Differentiable.

    Args:
        rbm: an :class:`RBM`.
        over: ``"auto"``, ``"visible"`` or ``"hidden"``.
        max_states: refuse to enumerate more than this many states.

    Returns:
        0-dim tensor in the parameters' dtype.

    Raises:
        ValueError: if the enumerated layer has more than ``max_states`` states, or ``over="visible"`` with
            Gaussian visibles.
    """
    _check_rbm(rbm)
    check_choice("over", over, ("auto", "visible", "hidden"))
    max_states = check_int("max_states", max_states, min=1)
    if over == "auto":
        over = "visible" if rbm.visible == "bernoulli" and rbm.num_visible < rbm.num_hidden else "hidden"
    if over == "visible" and rbm.visible == "gaussian":
        raise ValueError("over='visible' needs binary visible units; Gaussian visibles are integrated over='hidden'")
    n = rbm.num_visible if over == "visible" else rbm.num_hidden
    if 2**n > max_states:
        raise ValueError(f"log Z by brute force over the {over} layer needs 2^{n} states, more than max_states="
                         f"{max_states}; it is exact only for small RBMs (min(visible, hidden) <= "
                         f"{int(math.log2(max_states))} here) -- use pseudo_log_likelihood for larger ones")
    return _log_partition(rbm, over)


def _visible_data(rbm: RBM, x: Any, binarize: bool | None, name: str = "x") -> torch.Tensor:
    """Model-space data -> visible states ``(B, *data_shape)`` in the parameters' dtype (binarised when asked)."""
    check_tensor(name, x)
    _flat(rbm, x, name)  # shape check
    if binarize is not None and not isinstance(binarize, bool):
        raise TypeError(f"binarize must be a bool or None, got {type(binarize).__name__} {binarize!r}")
    if rbm.visible == "gaussian":
        if binarize:
            raise ValueError("binarize=True is for Bernoulli visible units; Gaussian visibles take real data "
                             "(standardised), got binarize=True")
        check_tensor(name, x, floating=True)
        return x.to(rbm.W.dtype)
    if binarize is None or binarize:
        return (x > 0).to(rbm.W.dtype)
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(f"{name} must be binary (0/1) for Bernoulli visible units with binarize=False; pass "
                         f"binarize=True to binarise model-space data as {name} > 0, got values in "
                         f"[{float(x.min())}, {float(x.max())}]")
    return x.to(rbm.W.dtype)


def _check_no_cond(cond: Any) -> None:
    if check_cond(cond):
        raise ValueError(f"cond must be None or empty: RBMs here are unconditional, got keys {sorted(cond)}")


def log_prob(rbm: RBM, x: torch.Tensor, *, binarize: bool | None = None, cond: Mapping[str, Any] | None = None,
             max_states: int = MAX_STATES) -> torch.Tensor:
    """Exact ``log p(v) = -F(v) - log Z`` in nats, with ``log Z`` from :func:`log_partition_brute_force`.

    Bernoulli visibles: the log pmf of the binarised ``x`` (``x > 0``; ``binarize=None`` means True); Gaussian
    visibles: the log density of ``x``. Exact when ``min(D, H)`` (Gaussian: ``H``) is small enough to enumerate.

    Args:
        rbm: an :class:`RBM`. x: ``(B, *data_shape)`` model-space data.
        binarize: Bernoulli only; ``False`` takes ``x`` as 0/1 states.
        cond: must be None (unconditional). max_states: as in :func:`log_partition_brute_force`.

    Returns:
        ``(B,)``.

    Raises:
        ValueError: for an RBM too large to enumerate (naming the sizes), non-binary ``x`` with
            ``binarize=False``, or a non-empty ``cond``.
    """
    _check_rbm(rbm)
    _check_no_cond(cond)
    v = _visible_data(rbm, x, binarize)
    return -free_energy(rbm, v) - log_partition_brute_force(rbm, max_states=max_states)


def pseudo_log_likelihood(rbm: RBM, x: torch.Tensor, *, binarize: bool | None = None) -> torch.Tensor:
    """Exact pseudo-log-likelihood ``Σ_i log p(v_i | v_{-i})`` of binary data, in nats (Besag 1975).

    With ``v^(i)`` = ``v`` with unit ``i`` flipped, ``p(v_i | v_{-i}) = sigmoid(F(v^(i)) - F(v))``; all ``D``
    flips are evaluated (``D`` free energies per point), no sampling. The tractable proxy for the
    log-likelihood of RBMs too large for :func:`log_prob`.

    Args:
        rbm: an :class:`RBM` with Bernoulli visibles. x: ``(B, *data_shape)`` model-space data.
        binarize: as in :func:`log_prob`.

    Returns:
        ``(B,)``.

    Raises:
        ValueError: for Gaussian visibles or non-binary ``x`` with ``binarize=False``.
    """
    _check_rbm(rbm)
    if rbm.visible != "bernoulli":
        raise ValueError("pseudo_log_likelihood is for Bernoulli visible units, got visible='gaussian'")
    v = _flat(rbm, _visible_data(rbm, x, binarize))  # (B, D)
    bsz, d = v.shape
    eye = torch.eye(d, device=v.device, dtype=v.dtype)
    flipped = (v[:, None, :] + eye - 2 * v[:, None, :] * eye).reshape(bsz * d, d)  # (B·D, D)
    f = _free_energy_flat(rbm, v)  # (B,)
    f_flip = _free_energy_flat(rbm, flipped).reshape(bsz, d)
    return F.logsigmoid(f_flip - f[:, None]).sum(dim=1)


# ----------------------------------------------------------------------------------------------- training


def loss(rbm: RBM, x: torch.Tensor, *, k: int = 1, persistent: bool = False, binarize: bool | None = None,
         generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None
         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CD-k / PCD-k surrogate ``mean F(v_data) - mean F(v_model)`` (Hinton 2002; Tieleman 2008).

    ``v_model`` (no gradient) comes from ``k`` Gibbs sweeps started at the data batch (CD-k) or, with
    ``persistent=True``, at the module's ``chains`` buffer, which is then overwritten in place with the new
    states (PCD: the chains must persist across parameter updates; this is the one state change). The
    gradient of the value is minus the usual likelihood-gradient estimate, e.g. for ``W``
    ``-(<v p(h|v)ᵀ>_data - <v p(h|v)ᵀ>_model) / σ``; the value itself is not a likelihood (it can be negative).

    Args:
        rbm: an :class:`RBM`. x: ``(B, *data_shape)`` model-space data.
        k: Gibbs sweeps per update. persistent: PCD instead of CD.
        binarize: Bernoulli visibles: binarise ``x`` as ``x > 0`` (``None`` = True); ``False`` requires 0/1 data.
            Gaussian visibles: must be None / False (real data, standardised beforehand).
        generator: draws the Gibbs samples. cond: must be None (unconditional).

    Returns:
        ``(loss, logs)``; logs: ``loss``, ``free_energy_data``, ``free_energy_model`` (means) and
        ``recon_error`` (mean squared error of the mean-field reconstruction ``E[v | p(h|v_data)]``).

    Raises:
        ValueError / TypeError: naming the offending argument (``x`` non-binary with ``binarize=False``).
    """
    _check_rbm(rbm)
    k = check_int("k", k, min=1)
    if not isinstance(persistent, bool):
        raise TypeError(f"persistent must be a bool, got {type(persistent).__name__} {persistent!r}")
    generator = check_generator(generator)
    _check_no_cond(cond)
    v_data = _flat(rbm, _visible_data(rbm, x, binarize))  # (B, D)
    with torch.no_grad():
        start = _flat(rbm, rbm.chains, "rbm.chains") if persistent else v_data
        v_model = start
        for _ in range(k):
            v_model, _h = _gibbs_flat(rbm, v_model, generator)
        if persistent:
            rbm.chains.copy_(v_model.reshape(rbm.chains.shape))
        recon = _visible_mean_flat(rbm, torch.sigmoid(_hidden_input(rbm, v_data)))
        recon_error = (recon - v_data).square().sum(dim=1).mean()
    f_data = _free_energy_flat(rbm, v_data).mean()
    f_model = _free_energy_flat(rbm, v_model).mean()
    value = f_data - f_model
    return value, {"loss": value.detach(), "free_energy_data": f_data.detach(),
                   "free_energy_model": f_model.detach(), "recon_error": recon_error}


# ----------------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(rbm: RBM, shape: tuple[int, ...], *, steps: int = 1000, mean: bool = False,
           generator: torch.Generator | None = None, cond: Mapping[str, Any] | None = None,
           callback: Callable[[dict], None] | None = None, init: torch.Tensor | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Block Gibbs sampling for ``steps`` sweeps from a random start; returns model-space samples.

    Starts from uniform random bits (Bernoulli) or ``N(b, σ²)`` (Gaussian), or from ``init`` (visible states,
    e.g. ``rbm.chains``). Bernoulli samples are returned as ``2 v - 1 ∈ {-1, 1}`` (model space of binarised
    images); Gaussian ones as they are. ``mean=True`` returns the last conditional mean ``E[v | h]`` instead of a
    draw (``2 p - 1`` for Bernoulli; Hinton's noise-free reconstructions for Gaussian). Runs under no_grad in
    the RBM's own device and dtype.

    Args:
        rbm: an :class:`RBM`. shape: ``(B, *data_shape)``.
        steps: Gibbs sweeps (``>= 1``). mean: return the conditional mean of the last sweep.
        generator: the source of randomness. cond: must be None (unconditional).
        callback: ``callback(dict(i=i, x=model-space v, h=h))`` after each sweep.
        init: ``(B, *data_shape)`` starting visible states (0/1 for Bernoulli, not model space).
        device, dtype: where / in what to return the result (default: the RBM's).

    Returns:
        ``(B, *data_shape)``.

    Raises:
        ValueError / TypeError: naming the offending argument.
    """
    _check_rbm(rbm)
    shape = check_shape_tuple("shape", shape)
    if shape[1:] != rbm.data_shape:
        raise ValueError(f"shape must be (B, {', '.join(map(str, rbm.data_shape))}), got {shape}")
    steps = check_int("steps", steps, min=1)
    if not isinstance(mean, bool):
        raise TypeError(f"mean must be a bool, got {type(mean).__name__} {mean!r}")
    generator = check_generator(generator)
    _check_no_cond(cond)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    p = rbm.W
    flat = (shape[0], rbm.num_visible)
    if init is not None:
        check_tensor("init", init, shape=shape)
        v = _flat(rbm, init.to(p.device), "init")
    elif rbm.visible == "bernoulli":
        v = _bernoulli(torch.full(flat, 0.5, device=p.device, dtype=p.dtype), generator)
    else:
        v = rbm.b + rbm.sigma * randn(flat, generator=generator, device=p.device, dtype=p.dtype)

    def to_model(u: torch.Tensor) -> torch.Tensor:
        u = u.reshape(shape)
        return 2 * u - 1 if rbm.visible == "bernoulli" else u

    for i in range(steps):
        v, h = _gibbs_flat(rbm, v, generator)
        if callback is not None:
            callback(dict(i=i, x=to_model(v), h=h))
    out = to_model(_visible_mean_flat(rbm, h) if mean else v)
    return out.to(device=device if device is not None else out.device, dtype=dtype or out.dtype)
