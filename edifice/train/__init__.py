"""Training: recipes per family, a resumable fit loop, EMA, atomic safetensors checkpoints, DDP.

Typical use::

    from edifice.train import fit, load, evaluate
    result = fit("flow_matching", "moons", steps=3000, out="runs/demo")
    nets, config = load("runs/demo")          # EMA weights, rebuilt from checkpoint.json
    metrics = evaluate("runs/demo")           # w2, sliced_wasserstein, mmd, nll, ... -> metrics.json

The same loop runs under ``torchrun --nproc_per_node=N`` (see :mod:`edifice.train.distributed`).
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ema import EMA, ema_update_
from .evaluate import evaluate, sample_run, write_samples
from .fit import FitResult, NonFiniteLossError, fit, load, step_seed
from .recipes import RECIPES, Recipe, get_recipe

__all__ = [
    "fit", "load", "evaluate", "sample_run", "write_samples", "FitResult", "NonFiniteLossError", "step_seed",
    "RECIPES", "Recipe", "get_recipe", "EMA", "ema_update_", "save_checkpoint", "load_checkpoint",
    "CheckpointError",
]
