"""Data-parallel training under ``torchrun`` (DistributedDataParallel), and a no-op when alone.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`setup` reads them, starts the process group (``gloo`` on CPU, ``nccl`` on
CUDA, one GPU per process) and returns a :class:`DistInfo`. Without those variables (a plain
``python`` run) everything here degrades to single-process no-ops, so the fit loop has one code
path. Only rank 0 writes files; the others wait at barriers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "setup", "teardown", "wrap", "unwrap", "barrier", "all_reduce_mean", "average_gradients",
           "broadcast_buffers", "env_rank"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, its ``device`` and who started the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes files."""
        return self.rank == 0


def env_rank() -> int:
    """The rank from the ``torchrun`` environment (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {value!r}") from None


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Read the torchrun environment and start the process group if there is more than one process.

    Args:
        device: ``"cpu"``, ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``), an explicit device, or
            ``None`` for CUDA when available, else CPU.

    Returns:
        A :class:`DistInfo`. If a process group is already initialised (the caller started it),
        it is used and left running at :func:`teardown`.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        world, rank, owns = dist.get_world_size(), dist.get_rank(), False
    else:
        owns = False
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is 'cuda' but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if world <= 1:
        return DistInfo(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device,
                    backend=dist.get_backend(), owns_group=owns)


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` started it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op alone)."""
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; the input is untouched)."""
    if not info.distributed:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def average_gradients(params: list[torch.Tensor], info: DistInfo) -> None:
    """Average the ``.grad`` of ``params`` over ranks in place (one all-reduce of one flat buffer).

    This is what DDP does during ``backward``, done after it instead: it works for every family as it
    is — several networks stepped in turn (GANs), networks called several times per loss, gradient
    penalties through ``torch.autograd.grad`` (which DDP does not support) and attribute access on the
    plain modules — at the cost of not overlapping communication with the backward pass. Parameters
    without a gradient are skipped (the same ones on every rank: every rank runs the same code).
    """
    if not info.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def broadcast_buffers(modules: list[nn.Module], info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, an EMA codebook, ...) to every rank, as DDP does."""
    if not info.distributed:
        return
    for m in modules:
        for b in m.buffers():
            dist.broadcast(b, src=0)


def wrap(nets: Any, info: DistInfo) -> Any:
    """Wrap every trainable module of ``nets`` (a module or NamedTuple of modules) in DDP.

    Alone, ``nets`` is returned unchanged. Modules without trainable parameters are left as they
    are (DDP refuses them).
    """
    if not info.distributed:
        return nets
    ids = [info.device.index] if info.device.type == "cuda" else None

    def one(m: Any) -> Any:
        if isinstance(m, nn.Module) and any(p.requires_grad for p in m.parameters()):
            return DistributedDataParallel(m, device_ids=ids)
        return m

    if isinstance(nets, nn.Module):
        return one(nets)
    return type(nets)(*[one(m) for m in nets])


def unwrap(nets: Any) -> Any:
    """Undo :func:`wrap`: the plain modules (what is saved and averaged)."""
    def one(m: Any) -> Any:
        return m.module if isinstance(m, DistributedDataParallel) else m

    if isinstance(nets, nn.Module):
        return one(nets)
    return type(nets)(*[one(m) for m in nets])
