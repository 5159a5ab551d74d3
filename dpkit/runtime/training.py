"""The training loop every strategy shares, run by each rank; rank 0 assembles the RunResult.

Data fetching happens before a step's clock starts (as a prefetching loader would); a step ends
with a barrier (timed as idle: waiting for the slowest rank), except for async strategies.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import signal
import socket
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from ..comm import Comm
from ..config import RunConfig
from ..results import STEP_COLUMNS, TIMELINE_COLUMNS, RunResult
from ..strategies import make_strategy
from ..strategies.base import RankContext
from ..workloads import build_dataset
from . import gloo_loop
from .recorder import CudaClock, HostClock, Recorder


def rank_device(cfg_device: str, backend: str, local_rank: int) -> torch.device:
    """Each rank on its own GPU under NCCL; ranks share GPU 0 under gloo on a one-GPU box."""
    if cfg_device == "cpu" or (cfg_device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("RunConfig.device='cuda' but this rank sees no CUDA device")
    index = local_rank % torch.cuda.device_count() if backend == "nccl" else 0
    torch.cuda.set_device(index)
    torch.backends.cuda.matmul.allow_tf32 = False  # full fp32: GPU runs must match the CPU reference
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", index)


def rank_main(payload: dict, rank: int, world: int, out_dir: str | None) -> None:
    """Train one rank; rank 0 writes the RunResult folder to `out_dir`."""
    cfg = RunConfig.from_dict(payload["config"])
    meta = dict(payload.get("meta", {}))
    device = rank_device(cfg.device, dist.get_backend(), int(os.environ.get("LOCAL_RANK", rank)))
    ctrl = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    dist.barrier()
    clock = CudaClock(device) if device.type == "cuda" else HostClock()
    recorder = Recorder(rank, clock)
    comm = Comm(recorder, cfg.allreduce_algo)
    ctx = RankContext(cfg, rank, world, device, recorder, comm)
    strategy = make_strategy(ctx)
    gloo_threads = gloo_loop.apply(cfg.gloo_loop)  # again: building the strategy may have made process groups
    recorder.role, recorder.gap_kind = strategy.role, strategy.gap_kind
    recorder.flush_outside_step()
    data = build_dataset(cfg)
    delay = cfg.straggler_delay_s if rank in cfg.straggler_ranks else 0.0
    losses: list[tuple[float, int]] = []
    try:
        dist.barrier()
        for step in range(cfg.steps):
            x, y = data.global_batch(step, cfg.global_batch)
            if rank == cfg.fail_rank and step == cfg.fail_at_step:  # fault injection: die as kill -9 would
                os.kill(os.getpid(), signal.SIGKILL)
            recorder.begin_step(step)
            if delay:  # injected, never counted as compute: the learner must see it is not real work
                with recorder.span("injected", "straggler delay"):
                    time.sleep(delay)
            losses.append(strategy.train_step(step, x, y))
            group = strategy.end_of_step_group()
            if group is not None:
                comm.barrier(group, kind="idle", name="end-of-step barrier")
            recorder.end_step()
        mine = {
            "losses": losses,
            "spans": [tuple(vars(s).values()) for s in recorder.spans],
            "steps": recorder.steps,
            "state": strategy.owned_state(),
            "extra": strategy.extra(),
        }
    finally:
        strategy.close()
    gathered: list[dict] | None = [None] * world if rank == 0 else None  # type: ignore[list-item]
    dist.gather_object(mine, gathered, dst=0, group=ctrl)
    if rank != 0:
        return
    meta.update(
        clock=clock.name,
        backend=dist.get_backend(),
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        threads_per_rank=torch.get_num_threads(),
        gloo_loop=cfg.gloo_loop,
        gloo_loop_threads=gloo_threads,
        num_processes=world,
        world_size=cfg.world_size,
        roles=[g["steps"][0]["role"] if g["steps"] else "" for g in gathered],
        torch_version=torch.__version__,
        python=platform.python_version(),
        hostname=socket.gethostname(),
        cpu_count=os.cpu_count(),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    result = assemble(cfg, gathered, meta, type(strategy).merge_states)
    if out_dir is not None:
        result.save(Path(out_dir))


def combine_losses(per_rank: list[list[tuple[float, int]]]) -> list[float]:
    """Global mean loss per step: each rank's mean weighted by the samples it saw (fixed rank order)."""
    steps = max(len(r) for r in per_rank)
    out = []
    for s in range(steps):
        pairs = [r[s] for r in per_rank if s < len(r) and r[s][1] > 0]
        total = sum(n for _, n in pairs)
        out.append(sum(loss * n for loss, n in pairs) / total if total else float("nan"))
    return out


def assemble(cfg: RunConfig, gathered: list[dict], meta: dict, merge) -> RunResult:
    spans = [s for g in gathered for s in g["spans"]]
    steps = [s for g in gathered for s in g["steps"]]
    extra: dict = {}
    for rank, g in enumerate(gathered):
        for k, v in g["extra"].items():
            extra.setdefault(k, {})[str(rank)] = v
    return RunResult(
        config=cfg,
        losses=combine_losses([g["losses"] for g in gathered]),
        final_state_dict=merge([g["state"] for g in gathered]),
        timeline=pd.DataFrame(spans, columns=TIMELINE_COLUMNS),
        steps=pd.DataFrame(steps, columns=STEP_COLUMNS),
        meta=meta,
        extra=extra,
    )
