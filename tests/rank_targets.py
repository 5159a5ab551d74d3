"""launch() targets for the tests: ranks that misbehave on purpose, and one that reports its gloo threads.

Each is a launch() target: fn(payload, rank, world, out_dir). payload["rank"] picks the rank that
misbehaves; the others wait in a collective, as a real training rank would when its peer fails.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch.distributed as dist

from dpkit.runtime import gloo_loop


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


def report_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: each rank writes its gloo I/O threads' policies as the launcher left them, then
    (payload["new_group"]) after making one more process group and calling gloo_loop.apply(payload["mode"])."""
    report = {"at_start": [gloo_loop.policy_of(t) for t in gloo_loop.loop_threads()]}
    if payload.get("new_group"):
        group = dist.new_group(list(range(world)))
        dist.barrier(group=group)
        report["new_group_before_apply"] = [gloo_loop.policy_of(t) for t in gloo_loop.loop_threads()]
        report["applied"] = gloo_loop.apply(payload["mode"])
        report["after_apply"] = [gloo_loop.policy_of(t) for t in gloo_loop.loop_threads()]
    Path(out_dir, f"gloo_loop_rank{rank}.json").write_text(json.dumps(report))


def sleep_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: after rendezvous, write pid{rank}, sleep payload["s"] seconds, then write done{rank}."""
    Path(out_dir, f"pid{rank}").write_text(str(os.getpid()))
    time.sleep(payload["s"])
    Path(out_dir, f"done{rank}").write_text(str(os.getpid()))


def record_span(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: sleep payload["s"] seconds; write when this rank began and ended, on the machine's
    CLOCK_MONOTONIC (shared by every process), and the cores it may run on, to payload["log"]/<payload["run"]>-rank<rank>.json."""
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    time.sleep(payload["s"])
    end = time.clock_gettime(time.CLOCK_MONOTONIC)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None  # its core slot, if pinned
    Path(payload["log"], f"{payload['run']}-rank{rank}.json").write_text(json.dumps({"start": start, "end": end, "cores": cores}))


def background_held(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: on an emulated link, start two native all-reduces in the background back to back and
    write, per work, when it was started, when its real run ended and when the link delivers it."""
    import torch

    from dpkit.comm import Comm
    from dpkit.cost.model import Link
    from dpkit.runtime.recorder import HostClock, Recorder

    comm = Comm(Recorder(rank, HostClock()), "native", Link(alpha=payload["alpha"], bandwidth=payload["bandwidth"], name="slow"))
    tensors = [torch.full((payload["numel"],), float(rank + 1)) for _ in range(2)]
    dist.barrier()
    works = [comm.all_reduce_async(t) for t in tensors]
    for w in works:
        w.wait()
    sums = [float(t[0]) for t in tensors]
    keys = comm.link_stats() or {}
    comm.close()
    rows = [{"start": w.start, "real_done": w.done_at, "deliver_at": w.deliver_at} for w in works]
    Path(out_dir, f"held{rank}.json").write_text(json.dumps({"works": rows, "sums": sums, "stats": keys}))
