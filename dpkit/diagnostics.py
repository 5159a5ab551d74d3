"""Rank functions that misbehave on purpose, so the launcher's failure handling can be shown and tested.

Each is a launch() target: fn(payload, rank, world, out_dir). payload["rank"] picks the rank that
misbehaves; the others wait in a collective, as a real training rank would when its peer fails.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist


def _others_wait(payload: dict, rank: int) -> None:
    if rank != payload["rank"]:
        dist.barrier()  # blocks forever: only the launcher can end it


def raise_on_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    if rank == payload["rank"]:
        raise RuntimeError(f"deliberate failure on rank {rank}")
    _others_wait(payload, rank)


def kill_on_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    if rank == payload["rank"]:
        Path(out_dir, f"pid{rank}").write_text(str(os.getpid()))
        time.sleep(payload.get("delay_s", 0.2))
        os.kill(os.getpid(), signal.SIGKILL)
    Path(out_dir, f"pid{rank}").write_text(str(os.getpid()))
    _others_wait(payload, rank)


def hang_on_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    Path(out_dir, f"pid{rank}").write_text(str(os.getpid()))
    if rank == payload["rank"]:
        time.sleep(3600)
    _others_wait(payload, rank)


def all_reduce_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """A healthy job: sum the rank numbers; rank 0 writes the total and the pids."""
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    pids = [None] * world
    dist.all_gather_object(pids, os.getpid())
    if rank == 0:
        Path(out_dir, "result.json").write_text(json.dumps({"sum": t.item(), "pids": pids, "threads": torch.get_num_threads()}))
