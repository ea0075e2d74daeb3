"""Pictures of a run: 2-D scatter of samples, image grids, loss curves — all PNG files.

matplotlib is an optional dependency (``pip install edifice[plots]``); it is imported lazily, with
the non-interactive ``Agg`` backend, so the core library never needs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["scatter_2d", "image_grid", "save_image_grid", "loss_curve", "score_histogram"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'edifice[plots]'") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def scatter_2d(
    samples: torch.Tensor,
    path: str | os.PathLike,
    *,
    reference: torch.Tensor | None = None,
    title: str | None = None,
    max_points: int = 5000,
) -> Path:
    """Scatter plot of 2-D ``samples`` ``(N, 2)``, with ``reference`` points ``(M, 2)`` faint behind.

    The axes are fixed by the reference (or the samples) with a margin, so that outliers do not
    squash the picture; points beyond it are clipped.
    """
    plt = _pyplot()
    s = samples.detach().float().cpu()[:max_points]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    frame = s
    if reference is not None:
        r = reference.detach().float().cpu()[:max_points]
        ax.scatter(r[:, 0], r[:, 1], s=3, c="0.75", alpha=0.5, linewidths=0, label="held-out data")
        frame = r
    ax.scatter(s[:, 0], s[:, 1], s=3, c="tab:blue", alpha=0.7, linewidths=0, label="samples")
    finite = frame[torch.isfinite(frame).all(dim=1)]
    if len(finite):
        lo = torch.quantile(finite, 0.001, dim=0)
        hi = torch.quantile(finite, 0.999, dim=0)
        pad = 0.15 * (hi - lo).max().clamp_min(1e-3)
        ax.set_xlim(float(lo[0] - pad), float(hi[0] + pad))
        ax.set_ylim(float(lo[1] - pad), float(hi[1] + pad))
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, markerscale=4)
    return _finish(fig, ax, path, title)


def _finish(fig, ax, path: str | os.PathLike, title: str | None) -> Path:
    """Title, lay out, save as PNG and close a figure; return the path."""
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def image_grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 1) -> torch.Tensor:
    """Tile ``images`` ``(N, C, H, W)`` in ``[0, 1]`` into one ``(C, H', W')`` picture, row-major."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = images.new_ones(c, rows * (h + padding) + padding, nrow * (w + padding) + padding)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def save_image_grid(
    images: torch.Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int | None = None
) -> Path:
    """Save ``images`` ``(N, C, H, W)`` in ``[0, 1]`` as a PNG grid (upscaled for small images)."""
    from PIL import Image

    x = images.detach().float().cpu().clamp(0.0, 1.0)
    grid = image_grid(x, nrow=nrow)  # (C, H', W')
    if scale is None:
        scale = max(1, 256 // max(grid.shape[1], grid.shape[2]) + 1) if max(grid.shape[1:]) < 256 else 1
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    arr = (grid * 255.0).round().to(torch.uint8)
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()  # (H', W'[, C])
    path = Path(path)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Plot training loss against step (log y axis when every value is positive)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(list(steps), list(losses), lw=1.2)
    if len(losses) and all(v > 0 for v in losses):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, title)


def score_histogram(scores: dict[str, torch.Tensor], path: str | os.PathLike, *, title: str | None = None,
                    xlabel: str = "anomaly score", bins: int = 40) -> Path:
    """Overlaid histograms of anomaly scores, one per named set (in-distribution first, then each shift).

    All sets share one set of ``bins`` bins over the pooled finite scores; each histogram is normalised to
    unit area so that sets of different sizes compare. When every score is positive and they span more than
    two decades the bins and the x axis are logarithmic. Infinite and NaN scores are left out (their count
    goes into the legend).

    Args:
        scores: ``{name: (N,) scores}``, e.g. ``{"in-distribution": s_in, "noise": s_noise}``.
        path: the PNG file to write.
        title: the figure title. xlabel: the x axis label. bins: number of bins.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    plt = _pyplot()
    sets = {k: torch.as_tensor(v).detach().double().cpu().flatten() for k, v in scores.items()}
    finite = [v[torch.isfinite(v)] for v in sets.values()]
    pooled = torch.cat(finite) if finite else torch.zeros(0, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if pooled.numel():
        lo, hi = float(pooled.min()), float(pooled.max())
        log = lo > 0 and hi / lo > 100
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        if log:
            edges = torch.logspace(math.log10(lo), math.log10(hi), bins + 1)
        else:
            edges = torch.linspace(lo, hi, bins + 1)
        for (name, v), f in zip(sets.items(), finite):
            dropped = v.numel() - f.numel()
            label = f"{name} (n={v.numel()}" + (f", {dropped} non-finite)" if dropped else ")")
            ax.hist(f.numpy(), bins=edges.numpy(), density=True, histtype="stepfilled", alpha=0.35, label=label)
        if log:
            ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, path, title)
