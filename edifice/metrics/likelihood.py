r"""Likelihood summaries: negative log-likelihood in nats and bits per dimension.

Continuous density models report ``-log p(x)`` in nats on the data as the model sees it. To
compare with the literature on 8-bit images, convert to bits per dimension of the *discrete*
data: if the model works on ``x = a u + b`` where ``u in [0, 1]`` are the pixel values and the
``B``-level data were uniformly dequantised, then

.. math::
    \mathrm{nll}_u = \mathrm{nll}_x - D \ln a, \qquad
    \mathrm{nll}_{\text{discrete}} \le \mathrm{nll}_u + D \ln B, \qquad
    \mathrm{bpd} = \frac{\mathrm{nll}_{\text{discrete}}}{D \ln 2}

(the inequality is the dequantisation bound of Theis et al.). For models on ``[-1, 1]`` pass
``scale=2``; for 8-bit data pass ``dequant_bins=256`` (together: ``+ D ln 128``).

Example:
    >>> import math, torch
    >>> from edifice.metrics import bits_per_dim
    >>> float(bits_per_dim(torch.tensor([784 * math.log(2.0)]), 784))
    1.0
    >>> float(bits_per_dim(torch.tensor(0.0), 784, dequant_bins=256))
    8.0

References:
    A note on the evaluation of generative models (Theis et al., 2016), arXiv:1511.01844.
    Density estimation using Real NVP (Dinh et al., 2017), arXiv:1605.08803.
"""

from __future__ import annotations

import math

import torch

from edifice._checks import check_float, check_int

__all__ = ["bits_per_dim", "nll_summary"]


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (B,), got {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if bool(torch.isnan(value).any()):
        raise ValueError(f"{name} must not contain NaN")
    return value


def bits_per_dim(
    nll_nats: torch.Tensor | float,
    num_dims: int,
    *,
    dequant_bins: int | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    r"""Mean negative log-likelihood in bits per dimension.

    .. math:: \mathrm{bpd} = \frac{\overline{\mathrm{nll}} - D \ln a + D \ln B}{D \ln 2}

    with ``a = scale`` and the ``D ln B`` term only when ``dequant_bins = B`` is given.

    Args:
        nll_nats: ``-log p(x)`` in nats, a scalar or per-sample ``(B,)`` (averaged over the batch).
        num_dims: ``D``, the number of dimensions of one sample (``C * H * W`` for images).
        dequant_bins: number of quantisation levels of the discrete data (256 for 8-bit
            images), or ``None`` for continuous data (no discretisation term).
        scale: width ``a`` of the model-space interval that maps the unit interval ``[0, 1]``
            of the data (2.0 for models trained on ``[-1, 1]``). The default 1 leaves the
            density unchanged.

    Returns:
        0-dim tensor (float64 for a python number, else the input's dtype; keeps autograd).

    Raises:
        ValueError: NaN input, wrong shape, ``num_dims < 1``, ``dequant_bins < 2``, ``scale <= 0``.
        TypeError: non-numeric arguments.

    References:
        A note on the evaluation of generative models (Theis et al., 2016), arXiv:1511.01844.
    """
    nll = _as_tensor("nll_nats", nll_nats)
    d = check_int("num_dims", num_dims, min=1)
    scale = check_float("scale", scale, min=0.0, min_open=True)
    offset = -math.log(scale)
    if dequant_bins is not None:
        offset += math.log(check_int("dequant_bins", dequant_bins, min=2))
    return (nll.mean() / d + offset) / math.log(2.0)


def nll_summary(
    log_prob: torch.Tensor,
    *,
    num_dims: int | None = None,
    dequant_bins: int | None = None,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    r"""Mean negative log-likelihood and its standard error from per-sample log-densities.

    .. math:: \mathrm{nll} = -\frac{1}{B}\sum_i \log p(x_i), \qquad
        \mathrm{nll\_se} = \frac{\mathrm{std}(\log p(x_i))}{\sqrt{B}}

    Args:
        log_prob: ``(B,)`` log-densities in nats (``-inf`` is allowed and gives an infinite nll).
        num_dims: if given, also report ``bpd`` and ``bpd_se`` through :func:`bits_per_dim`.
        dequant_bins: passed to :func:`bits_per_dim`.
        scale: passed to :func:`bits_per_dim`.

    Returns:
        dict with 0-dim float64 detached tensors ``nll``, ``nll_se`` (NaN when ``B = 1``) and,
        with ``num_dims``, ``bpd`` and ``bpd_se``.

    Raises:
        ValueError: ``log_prob`` not of shape ``(B,)``, empty, NaN or ``+inf``; bad bpd options.
        TypeError: ``log_prob`` not a floating tensor.
    """
    lp = _as_tensor("log_prob", log_prob)
    if lp.ndim != 1:
        raise ValueError(f"log_prob must have shape (B,), got {tuple(lp.shape)}")
    if bool((lp == math.inf).any()):
        raise ValueError("log_prob must not contain +inf")
    nll = -lp.detach().to(torch.float64)
    b = nll.shape[0]
    se = nll.std() / math.sqrt(b) if b > 1 else torch.tensor(math.nan, dtype=torch.float64, device=nll.device)
    out = {"nll": nll.mean(), "nll_se": se}
    if num_dims is not None:
        out["bpd"] = bits_per_dim(nll, num_dims, dequant_bins=dequant_bins, scale=scale)
        out["bpd_se"] = se / (check_int("num_dims", num_dims, min=1) * math.log(2.0))
    return out
