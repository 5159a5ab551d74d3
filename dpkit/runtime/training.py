"""The training loop every strategy shares, run by each rank; rank 0 assembles the RunResult.

Data fetching happens before a step's clock starts (as a prefetching loader would); a step ends
with a barrier (timed as idle: waiting for the slowest rank), except for async strategies.
Before the first step the ranks agree on one time base (common_time_base), so their timelines line up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from ..comm import Comm
from ..comm.link import link_meta, network_for
from ..config import RunConfig
from ..results import STEP_COLUMNS, TIMELINE_COLUMNS, RunResult
from ..strategies import make_strategy
from ..strategies.base import RankContext
from ..workloads import build_dataset, load_digits
from . import gloo_loop, lr_rules
from .checkpoint import Checkpointer, first_attempt, hand_over
from .cores import cores_available
from .cpu_time import StepCpuClock
from .evaluation import HeldOutEvaluation, due, evals_frame
from .memory import MemoryMeter
from .profiler import finish_profiler, start_profiler
from .recorder import CudaClock, HostClock, Recorder

# This module is preloaded into the launcher's forkserver (runtime/rank.py): parsing the shipped digits here, once,
# lets every forked rank inherit them instead of parsing the gzip'd CSV again (70 ms of CPU per rank per run).
with contextlib.suppress(OSError):  # a missing data file is reported where a run needs it (workloads.load_digits)
    load_digits()


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


CLOCK_SYNC_ROUNDS = 16  # ping-pong round trips per remote rank; the one with the smallest round trip is kept
SHARED_CLOCK = "shared monotonic clock"


@dataclass
class TimeBase:
    """The run's common origin, as this rank's clock reads it, and every rank's offset against rank 0."""

    origin: float  # perf_counter seconds on this rank's host: t = 0 of every span
    offsets_s: list[float]  # rank r's clock minus rank 0's at the same instant (0 on rank 0's host)
    uncertainty_s: list[float]  # half the best round trip for a measured offset; 0 for a shared clock
    methods: list[str]  # SHARED_CLOCK or "ping-pong ..."
    hostnames: list[str]


def host_key() -> tuple[str, str]:
    """(hostname, kernel boot id): processes with the same key run under one booted kernel, so they read
    one CLOCK_MONOTONIC (containers on one machine may differ by hostname: they are then measured, not assumed)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return socket.gethostname(), boot


def _ping_pong(rank: int, peer: int, group, now: Callable[[], float], rounds: int) -> tuple[float, float]:
    """Rank 0 and `peer` exchange `rounds` timestamps; on rank 0: (peer's offset, its uncertainty).

    Rank 0 sends at t1 and hears back at t3; the peer stamped t2 in between, so the true offset lies in
    [t2 - t3, t2 - t1]: the midpoint is the estimate and half the round trip its uncertainty. The round
    with the smallest round trip is kept (the one least delayed by scheduling and the network)."""
    buf = torch.zeros(1, dtype=torch.float64)
    best_rtt, best_offset = float("inf"), 0.0
    for _ in range(rounds):
        if rank == 0:
            t1 = now()
            dist.send(buf, peer, group=group)
            dist.recv(buf, peer, group=group)
            t3 = now()
            if t3 - t1 < best_rtt:
                best_rtt, best_offset = t3 - t1, float(buf[0]) - (t1 + t3) / 2
        else:
            dist.recv(buf, 0, group=group)
            buf[0] = now()
            dist.send(buf, 0, group=group)
    return (best_offset, best_rtt / 2) if rank == 0 else (0.0, 0.0)


def common_time_base(
    rank: int,
    world: int,
    group=None,
    now: Callable[[], float] = time.perf_counter,
    measure: list[int] | None = None,
    rounds: int = CLOCK_SYNC_ROUNDS,
) -> TimeBase:
    """Agree on one origin before the first step; every rank of the group must call it.

    Each process taking its own origin after a barrier puts the ranks apart by however late each left
    the barrier (tens of ms on a loaded machine). Instead rank 0 reads its clock once and broadcasts it.
    Ranks under rank 0's kernel share its clock and use the value as is; a rank on another host (or in
    `measure`, which tests use) is given its ping-pong offset against rank 0, with the uncertainty."""
    hosts: list = [None] * world
    dist.all_gather_object(hosts, host_key(), group=group)
    if measure is None:
        measure = [r for r in range(1, world) if hosts[r] != hosts[0]]
    measure = sorted(set(measure) - {0})
    offsets, uncertainty = [0.0] * world, [0.0] * world
    for peer in measure:
        if rank in (0, peer):
            offsets[peer], uncertainty[peer] = _ping_pong(rank, peer, group, now, rounds)
    packed = torch.zeros(1 + 2 * world, dtype=torch.float64)
    if rank == 0:
        packed[0] = now()
        packed[1 : 1 + world] = torch.tensor(offsets, dtype=torch.float64)
        packed[1 + world :] = torch.tensor(uncertainty, dtype=torch.float64)
    dist.broadcast(packed, 0, group=group)
    offsets, uncertainty = packed[1 : 1 + world].tolist(), packed[1 + world :].tolist()
    pinged = f"ping-pong against rank 0 (best of {rounds} round trips)"
    return TimeBase(
        origin=float(packed[0]) + offsets[rank],
        offsets_s=offsets,
        uncertainty_s=uncertainty,
        methods=[pinged if r in measure else SHARED_CLOCK for r in range(world)],
        hostnames=[h[0] for h in hosts],
    )


def rank_main(payload: dict, rank: int, world: int, out_dir: str | None) -> None:
    """Train one rank; rank 0 writes the RunResult folder to `out_dir`."""
    cfg = RunConfig.from_dict(payload["config"])
    meta = dict(payload.get("meta", {}))
    device = rank_device(cfg.device, dist.get_backend(), int(os.environ.get("LOCAL_RANK", rank)))
    ctrl = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    dist.barrier()
    clock = CudaClock(device) if device.type == "cuda" else HostClock()
    recorder = Recorder(rank, clock)
    comm = Comm(recorder, cfg.allreduce_algo, network_for(cfg))
    ctx = RankContext(cfg, rank, world, device, recorder, comm)
    strategy = make_strategy(ctx)
    gloo_threads = gloo_loop.apply(cfg.gloo_loop)  # again: building the strategy may have made process groups
    recorder.role, recorder.gap_kind = strategy.role, strategy.gap_kind
    meter = MemoryMeter(strategy, device, clock, measure_steps=max(1, cfg.warmup))  # counts in warm-up steps only
    recorder.flush_outside_step()
    data = build_dataset(cfg)
    delay = cfg.straggler_delay_s if rank in cfg.straggler_ranks else 0.0
    losses: list[tuple[float, int]] = []
    evaluation, merge, lrs = HeldOutEvaluation(cfg, rank, recorder, ctrl), type(strategy).merge_states, []
    cpu = StepCpuClock()  # CPU seconds beside wall: time lost waiting for a core shows as its own quantity
    ckpt = Checkpointer(cfg, rank, world, recorder, ctrl, payload)
    fault = first_attempt(payload.get("resume_dir") is not None)
    try:
        time_base = common_time_base(rank, world, ctrl)
        clock.set_origin(time_base.origin)
        dist.barrier()
        profiler = start_profiler(cfg.profile, device, time_base.origin)  # None unless RunConfig.profile
        resumed = ckpt.load(strategy)  # outside every step (kind "checkpoint"): the last good checkpoint, if resuming
        start = resumed["step"] if resumed else 0
        if resumed:
            losses, lrs = resumed["losses"], resumed["lrs"]
            evaluation.resume(resumed)  # its rows, and the training time its clock goes on from
        stop = not resumed and due(cfg, 0) and evaluation(0, strategy.owned_state(), merge)  # outside every step (kind "eval")
        for step in range(start, cfg.steps):
            if stop:  # target_accuracy reached: every rank got the same decision
                break
            lrs.append(lr_rules.lr_at(cfg, step))
            lr_rules.set_lr(strategy, lrs[-1])
            x, y = data.global_batch(step, cfg.global_batch)
            if fault and rank == cfg.fail_rank and step == cfg.fail_at_step:  # fault injection: die as kill -9 would
                os.kill(os.getpid(), signal.SIGKILL)
            if step == cfg.warmup:  # the link's counts (late messages, bytes) from here on: the timed steps'
                comm.transport.reset_counts()
            recorder.begin_step(step)
            cpu.begin()
            if delay:  # injected, never counted as compute: the learner must see it is not real work
                with recorder.span("injected", "straggler delay"):
                    time.sleep(delay)
            with meter.step(step):
                losses.append(strategy.timed_step(step, x, y))
            group = strategy.end_of_step_group()
            if group is not None:
                comm.barrier(group, kind="idle", name="end-of-step barrier")
            recorder.end_step()
            recorder.steps[-1]["cpu_s"] = cpu.end()
            stop = due(cfg, step + 1) and evaluation(step + 1, strategy.owned_state(), merge)
            if ckpt.due(step + 1) and not stop:
                ckpt.save(step + 1, strategy, {"losses": losses, "lrs": lrs, **evaluation.progress()})
        mine = {
            "losses": losses,
            "spans": [tuple(vars(s).values()) for s in recorder.spans],
            "steps": recorder.steps,
            "extra": {**strategy.extra(), **meter.extra(), **ckpt.extra()},  # before owned_state, which may gather (ZeRO-3)
            "state": strategy.owned_state(),
            "link": comm.link_stats(),
            "memory": meter.report(),
            "evals": evaluation.rows,
            "lrs": lrs,
        }
        finish_profiler(profiler, mine)  # RunConfig.profile: torch.profiler's events into mine["extra"], in run seconds
    except Exception:
        if payload.get("handover_dir"):  # ps_recovery='replicate': a peer died; hand over what this rank holds
            hand_over(payload["handover_dir"], rank, strategy, {"losses": losses, "lrs": lrs, **evaluation.progress()})
        raise
    finally:
        meter.close()
        strategy.close()
    gathered: list[dict] | None = [None] * world if rank == 0 else None  # type: ignore[list-item]
    dist.gather_object(mine, gathered, dst=0, group=ctrl)
    if gathered is None:  # every rank but 0
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
        hostnames=time_base.hostnames,
        clock_sync=time_base.methods,
        clock_offsets_s=time_base.offsets_s,
        clock_offset_uncertainty_s=time_base.uncertainty_s,
        cpu_count=os.cpu_count(),
        cores_available=cores_available(),
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    meta.update(memory=[g["memory"] for g in gathered])  # per process: dpkit.runtime.memory's mem_* fields
    meta.update(link_meta(cfg, [g["link"] for g in gathered]))  # "link" and, if any message was late, "link_not_honoured"
    meta.setdefault("link", {"key": cfg.link, "name": "none", "description": "no emulated link (the machine as it is)"})
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
        evals=evals_frame(gathered[0].get("evals", [])),
        lrs=gathered[0].get("lrs", []),
    )
