"""Data parallel: a 2-process torchrun fit on CPU (gloo) keeps the ranks identical (one network, and a GAN
with two optimisers and a gradient penalty); rank 0 alone writes."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edifice.train import distributed as D
from edifice.train import load
from edifice.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]

# Each rank trains, then writes a digest of its final parameters (and of its EMA) to rank<R>.txt.
SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys
    import torch
    from edifice.train import fit

    out = sys.argv[1]
    torch.distributed.init_process_group("gloo")  # one group for both fits (fit leaves a group it did not start)
    result = fit("flow_matching", "moons", steps=20, batch_size=32, lr=3e-3, seed=1, out=os.path.join(out, "run"),
                 options={"hidden": 16, "depth": 1}, progress=False, log_every=5, ckpt_every=10, device="cpu")

    # Two networks, two optimisers, n_critic = 5 and a gradient penalty through torch.autograd.grad.
    gan = fit("gan", "8gaussians", steps=4, batch_size=32, lr=1e-3, seed=1, out=None, progress=False, device="cpu",
              options={"hidden": 16, "depth": 1, "variant": "wgan_gp"})

    def digest(nets):
        h = hashlib.sha256()
        for m in ([nets] if isinstance(nets, torch.nn.Module) else list(nets)):
            for p in m.parameters():
                h.update(p.detach().contiguous().numpy().tobytes())
        return h.hexdigest()

    rank = int(os.environ["RANK"])
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(f"{digest(result.nets)} {digest(result.ema_nets)} {result.config['train']['world_size']} "
                f"{digest(gan.nets)}")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_process_torchrun_fit_keeps_ranks_identical(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = (tmp_path / "rank0.txt").read_text().split()
    r1 = (tmp_path / "rank1.txt").read_text().split()
    assert r0 == r1 and r0[2] == "2"  # the GAN's parameters (r0[3]) agree across ranks too
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.json", "checkpoint.safetensors", "log.jsonl", "loss.png"]
    assert len((run / "log.jsonl").read_text().splitlines()) == 4  # one writer: steps 5, 10, 15, 20
    _, meta = load_checkpoint(run)
    assert meta["step"] == 20 and meta["train"]["world_size"] == 2
    nets, _ = load(run, ema=False)
    ema_nets, _ = load(run)
    assert [_digest(nets), _digest(ema_nets)] == r0[:2]  # what rank 0 saved is what every rank holds


def test_single_process_helpers_are_no_ops(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = D.setup("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    net = torch.nn.Linear(2, 2)
    assert D.wrap(net, info) is net and D.unwrap(net) is net
    x = torch.arange(3.0)
    assert D.all_reduce_mean(x, info) is x
    D.barrier(info)
    D.teardown(info)
    assert D.env_rank() == 0


def test_bad_environment_is_reported(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="environment variable WORLD_SIZE must be an int, got 'two'"):
        D.setup("cpu")
