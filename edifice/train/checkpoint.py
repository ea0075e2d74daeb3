"""Checkpoints: safetensors for tensors, a small JSON for everything else, written atomically.

A run folder holds one checkpoint as a pair of files:

- ``checkpoint.safetensors``: every tensor (network weights under ``model/<net>/...``, the EMA copy
  under ``ema/<net>/...``, the optimiser state flattened to ``optim/state/<i>/<key>``);
- ``checkpoint.json``: the build options, training configuration, step, optimiser
  hyper-parameters, and the SHA-256 and size of the safetensors file it belongs to.

Each file is written to a temporary file in the same folder, flushed, ``fsync``-ed and moved into
place with ``os.replace`` (atomic on POSIX and Windows). The JSON is written last and records the
hash of the safetensors file, so a crash between the two renames, a truncated file or a corrupted
one is detected on load instead of silently resuming from a mismatched pair. Leftover temporary
files from a crash are never read and are removed by the next save. No pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FILE", "META_FILE", "save_checkpoint", "load_checkpoint", "has_checkpoint",
    "flatten_optimizer_state", "unflatten_optimizer_state", "nets_to_dict", "module_tensors",
    "load_module_tensors", "atomic_write_bytes", "read_meta", "CheckpointError",
]

CHECKPOINT_FILE = "checkpoint.safetensors"
META_FILE = "checkpoint.json"
_TMP_PREFIX = ".tmp-"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or does not match its JSON."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform (e.g. Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a checkpoint (its JSON, which is written last)."""
    return (Path(run_dir) / META_FILE).is_file()


def save_checkpoint(run_dir: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` as ``checkpoint.safetensors`` + ``checkpoint.json`` atomically.

    Args:
        run_dir: the run folder (must exist).
        tensors: flat ``{name: tensor}``; copied to contiguous CPU tensors before writing.
        meta: JSON-serialisable dict (build options, config, step, ...). The keys ``format``,
            ``file``, ``size`` and ``sha256`` are added.

    Returns:
        The path of the JSON file.
    """
    from safetensors.torch import save as st_save

    run_dir = Path(run_dir)
    for stale in run_dir.glob(_TMP_PREFIX + "checkpoint.*"):  # debris of an earlier crash
        stale.unlink(missing_ok=True)
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    blob = st_save(flat, metadata={"format": f"edifice-{_FORMAT}"})
    info = dict(meta)
    info.update(format=_FORMAT, file=CHECKPOINT_FILE, size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    text = json.dumps(info, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(run_dir / CHECKPOINT_FILE, blob)
    atomic_write_bytes(run_dir / META_FILE, (text + "\n").encode())  # last: commits the pair
    return run_dir / META_FILE


def read_meta(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and parse ``checkpoint.json`` of ``run_dir``; clear errors for a missing or bad file."""
    run_dir = Path(run_dir)
    path = run_dir / META_FILE
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {str(run_dir)!r}: {META_FILE} is missing")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupted") from e
    if not isinstance(meta, dict) or "sha256" not in meta or "size" not in meta:
        raise CheckpointError(f"{path} is not an edifice checkpoint (no size/sha256 fields)")
    return meta


def load_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify the checkpoint of ``run_dir``.

    Returns:
        ``(tensors, meta)``: the flat CPU tensors and the parsed JSON.

    Raises:
        FileNotFoundError: if the folder or either file is missing.
        CheckpointError: (a ``ValueError``) if the safetensors file is truncated, corrupted or does
            not belong to the JSON beside it; the message names the file.
    """
    from safetensors.torch import load as st_load

    meta = read_meta(run_dir)
    path = Path(run_dir) / meta.get("file", CHECKPOINT_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} is missing (named in {META_FILE})")
    blob = path.read_bytes()
    if len(blob) != meta["size"]:
        raise CheckpointError(
            f"checkpoint file {path} has {len(blob)} bytes but {META_FILE} records {meta['size']}: "
            "it is truncated or from another save; refusing to load it")
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"checkpoint file {path} does not match the sha256 in {META_FILE}: it is corrupted or from "
            "another save; refusing to load it")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error type
        raise CheckpointError(f"checkpoint file {path} cannot be read as safetensors: {e}") from e
    return tensors, meta


# ---------------------------------------------------------------------------------------------
# Flattening helpers: networks and optimiser state <-> flat tensor dicts + JSON.


def nets_to_dict(nets: Any) -> dict[str, nn.Module]:
    """Name the modules of ``nets``: a single module is ``{"net": m}``; a NamedTuple uses its fields."""
    if isinstance(nets, nn.Module):
        return {"net": nets}
    if isinstance(nets, tuple) and hasattr(nets, "_fields"):
        return {name: m for name, m in zip(nets._fields, nets) if isinstance(m, nn.Module)}
    if isinstance(nets, Mapping):
        return {k: m for k, m in nets.items() if isinstance(m, nn.Module)}
    raise TypeError(f"nets must be an nn.Module or a NamedTuple of modules, got {type(nets).__name__}")


def module_tensors(prefix: str, nets: Any) -> dict[str, torch.Tensor]:
    """``{f"{prefix}/{net}/{key}": tensor}`` for every module's ``state_dict``."""
    out = {}
    for name, module in nets_to_dict(nets).items():
        for key, value in module.state_dict().items():
            out[f"{prefix}/{name}/{key}"] = value
    return out


def load_module_tensors(prefix: str, nets: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Load ``module_tensors(prefix, ...)`` back into ``nets`` (strict: every key must match)."""
    for name, module in nets_to_dict(nets).items():
        head = f"{prefix}/{name}/"
        state = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
        if not state and len(module.state_dict()) > 0:
            raise CheckpointError(f"checkpoint has no tensors under {head!r}")
        module.load_state_dict(state, strict=True)


def flatten_optimizer_state(state_dict: Mapping[str, Any], *,
                            prefix: str = "optim") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser ``state_dict`` into tensors (``<prefix>/state/<i>/<key>``) and JSON.

    Returns:
        ``(tensors, json_part)`` where ``json_part`` holds ``param_groups`` and any non-tensor state.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/state/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], json_part: Mapping[str, Any], *,
                              prefix: str = "optim") -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`; the result feeds ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}/state/"
    for name, value in tensors.items():
        if not name.startswith(head):
            continue
        index, key = name[len(head):].split("/", 1)
        state.setdefault(int(index), {})[key] = value
    for index, extra in json_part.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(extra)
    groups = []
    for g in json_part["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}
