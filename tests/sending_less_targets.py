"""launch() targets for tests/test_sending_less.py: local SGD's averaging beside torch's PeriodicModelAverager,
on the same parameters, on real ranks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

from dpkit.comm import Comm
from dpkit.runtime.recorder import HostClock, Recorder
from dpkit.strategies.local_sgd import average_parameters


def model_of(rank: int) -> nn.Module:
    """A small MLP whose weights differ from rank to rank (as local SGD's copies do between averagings)."""
    torch.manual_seed(100 + rank)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10))
    model(torch.randn(4, 12)).sum().backward()  # torch averages only parameters that have a gradient
    return model


def compare_with_periodic_model_averager(payload: dict, rank: int, world: int, out_dir: str) -> None:
    comm = Comm(Recorder(rank, HostClock()), payload.get("algo", "native"))
    ours, theirs = model_of(rank), model_of(rank)
    before = [p.detach().clone() for p in ours.parameters()]
    average_parameters(list(ours.parameters()), comm)
    averager = PeriodicModelAverager(period=2, warmup_steps=0)  # its step 0 is an averaging step
    averager.average_parameters(theirs.parameters())
    dist.barrier()
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(ours.parameters(), before, strict=True))
    Path(out_dir, f"avg{rank}.json").write_text(json.dumps({"max_diff": diff, "moved": moved}))
