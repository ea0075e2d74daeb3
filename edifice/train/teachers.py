"""Teachers: how a distillation run gets a frozen network trained by an earlier run.

Consistency distillation, progressive distillation and rectified flow's reflow / one-step distillation
learn from a *teacher*, a network trained by another run (``edifice train ... --teacher RUN``). A
teacher run is part of the student run's options, so the student run is self-contained:

- at resolve time the teacher's ``checkpoint.json`` is read and checked (family, data shape); its family
  and options are recorded under ``options["teacher"]`` and the recipe may take defaults from them (the
  student's architecture, the noise schedule);
- the networks are a :class:`Distilled` tuple ``(student, teacher, pairs)``: the teacher is a
  :class:`FrozenTeacher` (no gradients, always in eval mode), whose weights are saved in the student's
  checkpoint, so ``edifice.train.load`` and ``edifice sample`` work even when the teacher folder is gone;
- when training starts (:func:`start`), the teacher's EMA weights are loaded from its folder, the student
  is initialised from the teacher where the recipe asks (every tensor of the same name and shape), and a
  :class:`PairBank` of (noise, sample) pairs is filled for reflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from . import checkpoint as ckpt

__all__ = ["Distilled", "FrozenTeacher", "PairBank", "teacher_config", "teacher_net", "load_teacher_weights",
           "init_from", "student_of"]


class FrozenTeacher(nn.Module):
    """A teacher network with no trainable parameters that stays in eval mode (``train()`` is a no-op).

    Calls go straight to the wrapped ``net``; ``self.family`` names the family that trained it and
    ``self.settings`` holds that run's settings (its noise schedule, prediction target, ...).
    """

    def __init__(self, net: nn.Module, family: str, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.family = family
        self.settings = dict(settings or {})
        self.net.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 - a teacher never trains
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)


class PairBank(nn.Module):
    """A fixed set of ``n`` (noise, sample) pairs drawn from a teacher (reflow), kept as buffers.

    Buffers: ``x0`` and ``x1`` ``(n, *data_shape)``, ``y`` ``(n,)`` labels (all ``-1`` when unconditional),
    ``filled`` (0 until :func:`start` fills the bank). Being buffers, the pairs are saved in the
    checkpoint, so a resumed run trains on the same pairs.
    """

    def __init__(self, n: int, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("x0", torch.zeros(n, *data_shape))
        self.register_buffer("x1", torch.zeros(n, *data_shape))
        self.register_buffer("y", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def draw(self, batch: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch`` pairs drawn uniformly with replacement: ``(x0, x1, y)``."""
        idx = torch.randint(0, self.x0.shape[0], (batch,), generator=generator, device=generator.device
                            if generator is not None else None).to(self.x0.device)
        return self.x0[idx], self.x1[idx], self.y[idx]


class Distilled(NamedTuple):
    """The networks of a run trained from a teacher: the ``student`` (trained and sampled), the frozen
    ``teacher``, and the ``pairs`` of reflow (None otherwise)."""

    student: nn.Module
    teacher: nn.Module
    pairs: nn.Module | None = None


def student_of(nets: Any) -> nn.Module:
    """The network that samples: ``nets.student`` for a :class:`Distilled` tuple, else ``nets`` itself."""
    return nets.student if isinstance(nets, Distilled) else nets


def teacher_config(path: Any, families: tuple[str, ...], data: Any) -> dict[str, Any]:
    """Read and check the teacher run at ``path``: it must be a run of one of ``families`` on data of the same shape.

    Returns ``{"path": absolute path, "family", "options", "step", "data"}`` (JSON-serialisable).

    Raises:
        ValueError: naming ``teacher``: not a string path, no checkpoint there, a family not in ``families``,
            or a data shape other than ``data``'s.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"option teacher must be the path of a run folder, got {type(path).__name__}")
    try:
        meta = ckpt.read_meta(path)
    except (FileNotFoundError, ckpt.CheckpointError) as e:
        raise ValueError(f"option teacher={str(path)!r} is not a usable run folder: {e}") from e
    family = meta.get("family")
    if family not in families:
        raise ValueError(f"option teacher must be a run of {' or '.join(families)}, got a run of family "
                         f"{family!r} ({str(path)!r})")
    shape = list(meta["data"]["data_shape"])
    if shape != list(data.data_shape):
        raise ValueError(f"option teacher={str(path)!r} was trained on data of shape {tuple(shape)}, but "
                         f"{data.name!r} has shape {tuple(data.data_shape)}")
    return {"path": str(Path(path).resolve()), "family": family, "options": meta["options"], "step": meta["step"],
            "data": meta["data"]["name"]}


def teacher_net(teacher: dict[str, Any]) -> FrozenTeacher:
    """Build the teacher's sampling network (randomly initialised; :func:`load_teacher_weights` fills it)."""
    from .recipes import get_recipe

    options = {k: v for k, v in teacher["options"].items() if k != "teacher"}  # its own teacher is not needed
    recipe = get_recipe(teacher["family"])
    return FrozenTeacher(student_of(recipe.build(options)), teacher["family"], teacher["options"]["settings"])


def load_teacher_weights(teacher: FrozenTeacher, path: str | os.PathLike) -> None:
    """Load the EMA weights of the run at ``path`` into ``teacher`` (its student's, for a distilled run)."""
    tensors, _ = ckpt.load_checkpoint(path)
    for head in ("ema/student/", "ema/net/"):
        state = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
        if state:
            teacher.net.load_state_dict(state, strict=True)
            return
    raise ckpt.CheckpointError(f"the checkpoint in {str(path)!r} holds no single sampling network")


def init_from(student: nn.Module, source: nn.Module) -> int:
    """Copy every tensor of ``source``'s state dict into ``student`` where name and shape agree; returns the count."""
    own = student.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    student.load_state_dict(shared, strict=False)
    return len(shared)


def start(recipe: Any, nets: Any, data: Any, settings: dict, *,
          fill_pairs: Callable[[nn.Module, PairBank, dict], None] | None = None, init: bool = False) -> None:
    """What a distillation run does before its first step: load the teacher, initialise the student, fill pairs."""
    if not isinstance(nets, Distilled):
        return
    load_teacher_weights(nets.teacher, settings["teacher"])
    if init:
        init_from(nets.student, nets.teacher.net)
    if nets.pairs is not None and fill_pairs is not None and not int(nets.pairs.filled):
        with torch.no_grad():
            fill_pairs(nets.teacher, nets.pairs, settings)
        nets.pairs.filled.fill_(1)
