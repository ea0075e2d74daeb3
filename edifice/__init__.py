"""edifice — generative models in PyTorch, in a functional style.

Builder functions return plain ``nn.Module``s (or named tuples of them); losses, samplers, step
functions, schedules and integrators are pure functions. The registry maps a family name to its
module so that ``edifice.build("flow_matching", data_shape=(2,))`` works for every family.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build", "models", "family"]

# name -> module path. A family module exposes build(...), loss(...), sample(...) and its step functions.
_FAMILIES: dict[str, str] = {
    "ddpm": "edifice.generative.ddpm",
    "ddim": "edifice.generative.ddim",
    "flow_matching": "edifice.generative.flow_matching",
    "score_sde": "edifice.generative.score_sde",
    "edm": "edifice.generative.edm",
    "ncsn": "edifice.generative.ncsn",
    "vae": "edifice.generative.vae",
    "vqvae": "edifice.generative.vqvae",
    "gan": "edifice.generative.gan",
    "dit": "edifice.generative.dit",
    "latent_diffusion": "edifice.generative.latent_diffusion",
    "flow": "edifice.generative.normalizing_flow",
    "rectified_flow": "edifice.generative.rectified_flow",
    "interpolant": "edifice.generative.interpolant",
    "consistency": "edifice.generative.consistency",
    "meanflow": "edifice.generative.meanflow",
    "progressive_distillation": "edifice.generative.progressive_distillation",
    "shortcut": "edifice.generative.shortcut",
    "mdn": "edifice.generative.mdn",
    "rbm": "edifice.generative.rbm",
    "ebm": "edifice.generative.ebm",
    "d3pm": "edifice.generative.d3pm",
    "pixelcnn": "edifice.generative.pixelcnn",
    "made": "edifice.generative.made",
}


def models() -> list[str]:
    """Names of every registered family, sorted."""
    return sorted(_FAMILIES)


def family(name: str) -> ModuleType:
    """The module of family ``name`` (its ``build``, ``loss``, ``sample`` and step functions).

    Raises:
        ValueError: if ``name`` is not a registered family; the message lists the valid names.
    """
    if not isinstance(name, str) or name not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; valid names are: {', '.join(models())}")
    return importlib.import_module(_FAMILIES[name])


def build(name: str, **options: Any):
    """Build the network(s) of family ``name``: ``edifice.build("ddpm", data_shape=(2,))``.

    Returns whatever the family's ``build`` returns: an ``nn.Module`` or a named tuple of modules.

    Raises:
        ValueError: for an unknown name (listing the valid ones) or an invalid option.
    """
    return family(name).build(**options)
