"""Checkpoints: round trip, atomic writes, torn / truncated / corrupted files refused, optimiser state."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from edifice.train import checkpoint as ckpt
from edifice.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _tensors(v: float = 1.0) -> dict[str, torch.Tensor]:
    return {"model/net/w": torch.full((3, 2), v), "optim/state/0/step": torch.tensor(7.0),
            "model/net/i": torch.arange(4)}


def test_round_trip(tmp_path):
    save_checkpoint(tmp_path, _tensors(), {"step": 5, "options": {"build": {"data_shape": [2]}}})
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 5 and meta["options"]["build"]["data_shape"] == [2]
    assert meta["size"] == (tmp_path / ckpt.CHECKPOINT_FILE).stat().st_size
    for k, v in _tensors().items():
        assert torch.equal(tensors[k], v) and tensors[k].dtype == v.dtype
    assert ckpt.has_checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.META_FILE, ckpt.CHECKPOINT_FILE]


def test_leftover_temp_file_from_a_crash_is_ignored_then_removed(tmp_path):
    save_checkpoint(tmp_path, _tensors(1.0), {"step": 1})
    junk = tmp_path / ".tmp-checkpoint.safetensors.abc123"
    junk.write_bytes(b"half a file")
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 1 and torch.equal(tensors["model/net/w"], torch.ones(3, 2))
    save_checkpoint(tmp_path, _tensors(2.0), {"step": 2})
    assert not junk.exists()


def test_crash_before_any_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _tensors(1.0), {"step": 1})

    def crash(src, dst):
        raise OSError("simulated power cut")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, _tensors(2.0), {"step": 2})
    monkeypatch.undo()
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 1 and torch.equal(tensors["model/net/w"], torch.ones(3, 2))
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())  # cleaned up on failure


def test_torn_pair_is_detected(tmp_path, monkeypatch):
    """A crash between the two renames leaves a new tensor file beside the old JSON: refused."""
    save_checkpoint(tmp_path, _tensors(1.0), {"step": 1})
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(ckpt.META_FILE):
            raise OSError("simulated crash before the JSON rename")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, _tensors(2.0), {"step": 2})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="checkpoint.safetensors .*(bytes|sha256)"):
        load_checkpoint(tmp_path)


def test_truncated_file_is_refused_naming_the_file(tmp_path):
    save_checkpoint(tmp_path, _tensors(), {"step": 1})
    path = tmp_path / ckpt.CHECKPOINT_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path}.*truncated"):
        load_checkpoint(tmp_path)


def test_corrupted_file_is_refused(tmp_path):
    save_checkpoint(tmp_path, _tensors(), {"step": 1})
    path = tmp_path / ckpt.CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(tmp_path)


def test_missing_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_checkpoint(tmp_path)
    (tmp_path / ckpt.META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)
    (tmp_path / ckpt.META_FILE).write_text(json.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="not an edifice checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, _tensors(), {"step": 1})
    (tmp_path / ckpt.CHECKPOINT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="is missing"):
        load_checkpoint(tmp_path)


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.SiLU(), nn.Linear(5, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    x = torch.randn(16, 3)

    def step(n, o):
        o.zero_grad()
        n(x).square().mean().backward()
        o.step()

    for _ in range(3):
        step(net, opt)
    tensors = ckpt.module_tensors("model", net)
    optim_tensors, optim_json = ckpt.flatten_optimizer_state(opt.state_dict())
    assert all(k.startswith("optim/state/") for k in optim_tensors)
    tensors.update(optim_tensors)
    save_checkpoint(tmp_path, tensors, {"optim": optim_json})
    loaded, meta = load_checkpoint(tmp_path)

    net2 = nn.Sequential(nn.Linear(3, 5), nn.SiLU(), nn.Linear(5, 1))
    ckpt.load_module_tensors("model", net2, loaded)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.5)
    opt2.load_state_dict(ckpt.unflatten_optimizer_state(loaded, meta["optim"]))
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 1e-2
    step(net, opt)
    step(net2, opt2)
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_nets_to_dict_and_missing_prefix():
    assert list(ckpt.nets_to_dict(nn.Linear(1, 1))) == ["net"]
    from typing import NamedTuple

    class Pair(NamedTuple):
        encoder: nn.Module
        decoder: nn.Module

    assert list(ckpt.nets_to_dict(Pair(nn.Linear(1, 1), nn.Linear(1, 1)))) == ["encoder", "decoder"]
    with pytest.raises(TypeError, match="nets must be an nn.Module"):
        ckpt.nets_to_dict(3)
    with pytest.raises(CheckpointError, match="no tensors under 'ema/net/'"):
        ckpt.load_module_tensors("ema", nn.Linear(1, 1), {})
