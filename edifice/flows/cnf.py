r"""Continuous normalizing flows (FFJORD) as a flow transform, with RNODE regularisation.

A continuous normalizing flow moves data along an ODE ``dx/dt = f(t, x)`` from ``x(0) = x`` (data) to
``z = x(t_1)`` (base). By the instantaneous change of variables (Chen et al. 2018, Theorem 1)
``d log p(x_t)/dt = -tr(∂f/∂x)``, so the transform's log-determinant is an integral along the path::

    log |det ∂z/∂x| = ∫_0^{t_1} tr(∂f/∂x)(t, x_t) dt,       log p(x) = log N(z; 0, I) + log |det ∂z/∂x|.

:class:`CNF` integrates the augmented state ``(x_t, ℓ_t)`` with ``dℓ/dt = tr(∂f/∂x)`` on torchdiffeq
(``torchdiffeq.odeint``, or ``torchdiffeq.odeint_adjoint`` with ``adjoint=True``: O(1) memory gradients by
the adjoint method of Chen et al.). The trace is exact (``divergence="exact"``, ``D`` vector-Jacobian
products, small ``D``) or Hutchinson's unbiased estimate ``E[εᵀ (∂f/∂x) ε]`` (FFJORD, Grathwohl et al.
2019), with the probes ``ε`` drawn once per solve and held fixed along it; both come from
:mod:`edifice.integrators.divergence`. ``inverse`` integrates the same ODE backwards from ``t_1`` to ``0``.

RNODE regularisation (Finlay et al. 2020) is accumulated in the same solve when its weights are positive::

    R(x) = kinetic · ∫_0^{t_1} ‖f(t, x_t)‖² dt + jacobian_norm · ∫_0^{t_1} ‖εᵀ ∂f/∂x‖² dt,

the second an unbiased (Hutchinson) estimate of the Jacobian's squared Frobenius norm. After a
``forward`` it is ``cnf.last_regularization`` ``(B,)``; :meth:`CNF.regularized_forward` returns it too.

**Randomness.** Hutchinson probes are the only noise. A :class:`~edifice.flows.base.Flow` calls its
transforms as ``t(x)``, so a per-call argument cannot reach them through the container; :class:`CNF` therefore
takes ``generator=`` both as a keyword of ``forward`` / ``inverse`` / ``regularized_forward`` and, as the
fallback, as the attribute ``cnf.generator`` (default ``None``: the global RNG). Set the attribute to make a
whole ``Flow`` deterministic.

Example (a zero field is the identity with log-det 0):
    >>> import torch
    >>> from edifice.flows.cnf import CNF, ODEField, ffjord
    >>> field = ODEField(2, hidden=8, depth=1)
    >>> for p in field.parameters():
    ...     _ = torch.nn.init.zeros_(p)
    >>> x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    >>> z, logdet = CNF(field, method="rk4", steps=4)(x)
    >>> bool(torch.equal(z, x)), logdet.tolist()
    (True, [0.0, 0.0, 0.0, 0.0])
    >>> flow = ffjord((2,), hidden=16, depth=2, method="rk4", steps=8)
    >>> flow.log_prob(x).shape
    torch.Size([4])

References:
    Neural Ordinary Differential Equations. Chen, Rubanova, Bettencourt, Duvenaud, 2018. arXiv:1806.07366.
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models. Grathwohl, Chen,
    Bettencourt, Sutskever, Duvenaud, 2019. arXiv:1810.01367.
    How to Train Your Neural ODE: the World of Jacobian and Kinetic Regularization. Finlay, Jacobsen,
    Nurbekyan, Oberman, 2020. arXiv:2002.02798.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchdiffeq
from torch import nn

from edifice._checks import check_choice, check_float, check_generator, check_int, check_shape_tuple
from edifice.flows.base import Flow, check_transform_input
from edifice.integrators.cnf import DIVERGENCES
from edifice.integrators.divergence import (
    PROBE_DISTRIBUTIONS, divergence_exact, divergence_hutchinson, hutchinson_probes,
)

__all__ = ["CNF", "ODEField", "ffjord", "CNF_METHODS", "CNF_DIVERGENCES"]

CNF_FIXED_STEP: tuple[str, ...] = ("euler", "midpoint", "rk4")
CNF_ADAPTIVE: tuple[str, ...] = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
CNF_METHODS: tuple[str, ...] = CNF_ADAPTIVE + CNF_FIXED_STEP
"""torchdiffeq solvers accepted by :class:`CNF` (fixed-step ones take ``steps`` equal steps)."""

CNF_DIVERGENCES: tuple[str, ...] = DIVERGENCES
"""Trace estimators accepted by :class:`CNF` (those of :func:`edifice.integrators.cnf_log_prob`)."""


class ODEField(nn.Module):
    """A small time-dependent MLP vector field ``f(t, x)`` for vectors, ``t`` concatenated at every layer.

    Smooth (tanh) activations keep the ODE well posed and its divergence differentiable (FFJORD's "concat"
    layers).

    Args:
        features: ``D``, the data dimension.
        hidden: width of the hidden layers.
        depth: number of hidden layers, ``>= 1``.

    Shapes:
        ``forward(t, x)``: ``t`` 0-dim or ``(B,)``, ``x (B, D)`` -> ``(B, D)``.
    """

    def __init__(self, features: int, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.features = check_int("features", features, min=1)
        hidden = check_int("hidden", hidden, min=1)
        depth = check_int("depth", depth, min=1)
        sizes = [features] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(hidden + 1, features)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Velocity ``f(t, x)`` of shape ``(B, D)``."""
        x = check_transform_input("x", x, channels=self.features)
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)  # (B, 1)
        h = x
        for layer in self.layers:
            h = torch.tanh(layer(torch.cat([h, tt], dim=1)))  # (B, hidden)
        return self.out(torch.cat([h, tt], dim=1))  # (B, D)


class _Augmented(nn.Module):
    """Augmented dynamics ``(x, ℓ[, kinetic][, jacobian]) -> (f, tr ∂f/∂x[, ‖f‖²][, ‖εᵀ∂f/∂x‖²])``."""

    def __init__(self, field: nn.Module, probes: torch.Tensor | None, jac_probe: torch.Tensor | None,
                 kinetic: bool) -> None:
        super().__init__()
        self.field = field
        self.probes = probes
        self.jac_probe = jac_probe
        self.kinetic = kinetic

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = state[0]
        b = x.shape[0]
        outer_grad = torch.is_grad_enabled()
        create = outer_grad or self.jac_probe is not None
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            if self.probes is None:
                v, div = divergence_exact(self.field, t, x, create_graph=create)
            else:
                v, div = divergence_hutchinson(self.field, t, x, noise=self.probes, create_graph=create)
            out = [v, div]
            if self.kinetic:
                out.append(v.reshape(b, -1).square().sum(1))  # (B,)
            if self.jac_probe is not None:
                g = torch.autograd.grad(v, x, self.jac_probe, create_graph=outer_grad, retain_graph=True,
                                        allow_unused=True)[0]
                g = torch.zeros_like(x) if g is None else g
                out.append(g.reshape(b, -1).square().sum(1))  # (B,)
        if not outer_grad:
            out = [o.detach() for o in out]
        return tuple(out)


class CNF(nn.Module):
    """A continuous normalizing flow transform (FFJORD): ``forward`` integrates data -> noise on ``[0, t1]``.

    Args:
        field: an ``nn.Module`` vector field ``f(t, x)`` (``t`` a 0-dim tensor, ``x (B, *shape)``) returning
            a tensor shaped like ``x``; rows must not interact (no batch statistics), e.g. :class:`ODEField`.
        t1: integration time, ``> 0``.
        method: a torchdiffeq solver in :data:`CNF_METHODS`.
        rtol, atol: tolerances of the adaptive solvers (also the adjoint solve's).
        steps: number of equal steps of a fixed-step solver (ignored by adaptive ones).
        divergence: ``"exact"`` or ``"hutchinson"`` (see the module docstring).
        n_probes: Hutchinson probes per sample, averaged.
        dist: probe distribution, ``"rademacher"`` or ``"gaussian"``.
        adjoint: use ``torchdiffeq.odeint_adjoint`` (gradients by the adjoint ODE, not through the solver).
        kinetic: RNODE weight of ``∫ ‖f‖² dt`` (0 disables it).
        jacobian_norm: RNODE weight of ``∫ ‖∂f/∂x‖_F² dt`` by one Gaussian Hutchinson probe (0 disables it).

    Attributes:
        generator: fallback ``torch.Generator`` for the probes when a call passes none.
        last_regularization: ``(B,)`` RNODE penalty of the last ``forward`` (zeros when both weights are 0).

    Raises:
        TypeError / ValueError: for a field that is not an ``nn.Module`` or any argument out of range (the
            message names it).
    """

    def __init__(
        self,
        field: nn.Module,
        *,
        t1: float = 1.0,
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        steps: int = 8,
        divergence: str = "exact",
        n_probes: int = 1,
        dist: str = "rademacher",
        adjoint: bool = False,
        kinetic: float = 0.0,
        jacobian_norm: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(field, nn.Module):
            raise TypeError(f"field must be an nn.Module f(t, x), got {type(field).__name__}")
        self.field = field
        self.t1 = check_float("t1", t1, min=0.0, min_open=True)
        self.method = check_choice("method", method, CNF_METHODS)
        self.rtol = check_float("rtol", rtol, min=0.0, min_open=True)
        self.atol = check_float("atol", atol, min=0.0, min_open=True)
        self.steps = check_int("steps", steps, min=1)
        self.divergence = check_choice("divergence", divergence, CNF_DIVERGENCES)
        self.n_probes = check_int("n_probes", n_probes, min=1)
        self.dist = check_choice("dist", dist, PROBE_DISTRIBUTIONS)
        if not isinstance(adjoint, bool):
            raise TypeError(f"adjoint must be a bool, got {type(adjoint).__name__}")
        self.adjoint = adjoint
        self.kinetic = check_float("kinetic", kinetic, min=0.0)
        self.jacobian_norm = check_float("jacobian_norm", jacobian_norm, min=0.0)
        self.generator: torch.Generator | None = None
        self.last_regularization: torch.Tensor | None = None

    def _times(self, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        n = self.steps + 1 if self.method in CNF_FIXED_STEP else 2
        ts = torch.linspace(0.0, self.t1, n, dtype=x.dtype, device=x.device)  # (N,)
        return ts.flip(0) if reverse else ts

    def _solve(self, x: torch.Tensor, reverse: bool, regularize: bool,
               generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = check_transform_input("z" if reverse else "x", x)
        generator = check_generator(generator)
        if generator is None:
            generator = check_generator(self.generator)
        probes = None
        if self.divergence == "hutchinson":  # (K, B, *shape), fixed along the solve
            probes = hutchinson_probes(x.shape, n_probes=self.n_probes, dist=self.dist, generator=generator,
                                       device=x.device, dtype=x.dtype)
        kinetic = regularize and self.kinetic > 0
        jac_probe = None
        if regularize and self.jacobian_norm > 0:
            jac_probe = hutchinson_probes(x.shape, dist="gaussian", generator=generator, device=x.device,
                                          dtype=x.dtype)[0]  # (B, *shape)
        dyn = _Augmented(self.field, probes, jac_probe, kinetic)
        b = x.shape[0]
        state = (x, x.new_zeros(b)) + (x.new_zeros(b),) * (int(kinetic) + int(jac_probe is not None))
        ts = self._times(x, reverse)
        opts = {"method": self.method, "rtol": self.rtol, "atol": self.atol}
        if self.adjoint:
            sol = torchdiffeq.odeint_adjoint(dyn, state, ts, adjoint_params=tuple(self.field.parameters()), **opts)
        else:
            sol = torchdiffeq.odeint(dyn, state, ts, **opts)
        final = [s[-1] for s in sol]  # each (B, ...) at ts[-1]
        reg = x.new_zeros(b)
        i = 2
        if kinetic:
            reg = reg + self.kinetic * final[i]
            i += 1
        if jac_probe is not None:
            reg = reg + self.jacobian_norm * final[i]
        return final[0], final[1], reg

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base: ``x (B, *shape) -> (z (B, *shape), logdet (B,))``, ``logdet = ∫ tr ∂f/∂x dt``.

        Also sets :attr:`last_regularization` ``(B,)``.
        """
        z, logdet, reg = self._solve(x, False, True, generator)
        self.last_regularization = reg
        return z, logdet

    def regularized_forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` that also returns the RNODE penalty: ``(z, logdet (B,), regularization (B,))``."""
        z, logdet = self.forward(x, generator=generator)
        return z, logdet, self.last_regularization

    def inverse(self, z: torch.Tensor, *, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data (the ODE backwards from ``t1`` to 0): ``(x (B, *shape), logdet (B,))``, ``logdet = -∫ tr``."""
        x, logdet, _ = self._solve(z, True, False, generator)
        return x, logdet


def ffjord(
    shape: Sequence[int],
    *,
    hidden: int = 64,
    depth: int = 2,
    blocks: int = 1,
    **cnf_options,
) -> Flow:
    """An FFJORD flow for vectors: ``blocks`` :class:`CNF` transforms with :class:`ODEField` fields.

    Args:
        shape: ``(D,)``, the data shape (vectors only).
        hidden, depth: the :class:`ODEField` size.
        blocks: number of stacked CNFs (FFJORD stacks several on toy data).
        **cnf_options: keyword arguments of :class:`CNF` (``method``, ``steps``, ``divergence``, ...).

    Returns:
        A :class:`~edifice.flows.base.Flow` over a standard-normal base.

    Raises:
        ValueError: for a shape that is not ``(D,)`` or a bad option.
    """
    shape = check_shape_tuple("shape", shape)
    if len(shape) != 1:
        raise ValueError(f"shape must be (D,) for ffjord (vectors), got {shape}")
    blocks = check_int("blocks", blocks, min=1)
    return Flow([CNF(ODEField(shape[0], hidden, depth), **cnf_options) for _ in range(blocks)], shape)
