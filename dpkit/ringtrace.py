"""Watch dpkit's chunked ring all-reduce move chunks, one exchange at a time, on real ranks.

Rank r starts with a tensor full of 2**r, so every element of a partial sum is a bit mask that says
exactly which ranks' contributions it holds (exact in float64). Each rank runs the real
`ring_allreduce` from dpkit.comm.ring; only inside the rank process dist.isend/irecv are wrapped to
record which chunk went where, when, how many bytes, and what every chunk held after each step
(the ring's own code is not touched, so the trace shows whatever it really does).
`dpkit.plots.ring_steps_plot` draws the frame that `trace_ring` returns.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from .comm import ring
from .comm.group import GroupView
from .launch import launch

TRACE_COLUMNS = ["rank", "step", "phase", "sent_chunk", "recv_chunk", "dst", "src", "bytes", "start_s", "end_s", "holds"]


def _chunk_of(t: torch.Tensor, chunks: list[torch.Tensor]) -> int:
    """Which chunk of the all-reduced tensor the view `t` lies in (by address); -1 for a scratch buffer."""
    for i, c in enumerate(chunks):
        lo = c.data_ptr()
        if c.numel() and lo <= t.data_ptr() < lo + c.numel() * c.element_size():
            return i
    return -1


def _masks(chunks: list[torch.Tensor]) -> list[int]:
    return [int(c[0].item()) for c in chunks]


class _Tracer:
    """Wraps dist.isend/irecv in this rank process. Every ring step posts its receives, then its
    sends, then waits and adds; so the first receive after a send opens a new step, and the chunks
    seen at that moment are exactly the state the previous step left."""

    def __init__(self, chunks: list[torch.Tensor]) -> None:
        self.chunks = chunks
        self.snapshots: list[list[int]] = []
        self.steps: list[dict] = []
        self._last = "send"

    def irecv(self, original):
        def wrapped(tensor, src=None, group=None, tag=0):
            if self._last == "send":
                self.snapshots.append(_masks(self.chunks))
                self.steps.append({"start": time.perf_counter(), "sent": set(), "dst": -1, "src": -1, "bytes": 0})
            self._last = "recv"
            self.steps[-1]["src"] = dist.get_global_rank(group, src) if group is not None else src
            return original(tensor, src, group=group, tag=tag)

        return wrapped

    def isend(self, original):
        def wrapped(tensor, dst=None, group=None, tag=0):
            self._last = "send"
            step = self.steps[-1]
            step["sent"].add(_chunk_of(tensor, self.chunks))
            step["dst"] = dist.get_global_rank(group, dst) if group is not None else dst
            step["bytes"] += tensor.numel() * tensor.element_size()
            return original(tensor, dst, group=group, tag=tag)

        return wrapped


@contextlib.contextmanager
def _tracing(chunks: list[torch.Tensor]) -> Iterator[_Tracer]:
    tracer = _Tracer(chunks)
    originals = dist.isend, dist.irecv
    dist.isend, dist.irecv = tracer.isend(originals[0]), tracer.irecv(originals[1])
    try:
        yield tracer
    finally:
        dist.isend, dist.irecv = originals
    tracer.snapshots.append(_masks(chunks))


def trace_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: one real ring all-reduce with every step recorded; rank 0 writes trace.json."""
    t = torch.full((int(payload["numel"]),), float(2**rank), dtype=torch.float64)
    chunks = list(torch.tensor_split(t, world))
    dist.barrier()
    t0 = time.perf_counter()
    with _tracing(chunks) as tracer:
        ring.ring_allreduce(t, GroupView.of(None))
    end = time.perf_counter()
    if not torch.all(t == float(2**world - 1)):
        raise RuntimeError(f"ring all-reduce gave {t.unique().tolist()} on rank {rank}, expected {2**world - 1}")
    if len(tracer.steps) != 2 * (world - 1):
        raise RuntimeError(f"traced {len(tracer.steps)} ring steps on rank {rank}, expected 2(n-1) = {2 * (world - 1)}")
    rows = [{"rank": rank, "step": 0, "phase": "start", "sent_chunk": -1, "recv_chunk": -1, "dst": -1, "src": -1}]
    rows[0].update(bytes=0, start_s=0.0, end_s=0.0, holds=tracer.snapshots[0])
    ends = [s["start"] for s in tracer.steps[1:]] + [end]
    for i, (s, stop) in enumerate(zip(tracer.steps, ends, strict=True)):
        before, after = tracer.snapshots[i], tracer.snapshots[i + 1]
        changed = [c for c in range(world) if before[c] != after[c]]
        rows.append(
            {
                "rank": rank,
                "step": i + 1,
                "phase": "reduce-scatter" if i < world - 1 else "all-gather",
                "sent_chunk": min(s["sent"]) if len(s["sent"]) == 1 else -1,
                "recv_chunk": changed[0] if len(changed) == 1 else -1,
                "dst": s["dst"],
                "src": s["src"],
                "bytes": s["bytes"],
                "start_s": s["start"] - t0,
                "end_s": stop - t0,
                "holds": after,
            }
        )
    gathered: list | None = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    if rank == 0:
        Path(out_dir, "trace.json").write_text(json.dumps([r for g in gathered for r in g]))


def trace_ring(world_size: int = 4, numel: int = 1 << 16, timeout_s: float = 60.0) -> pd.DataFrame:
    """One ring all-reduce of `numel` float64 values on `world_size` real ranks, step by step.

    One row per rank and step (step 0 = the starting state); `holds` lists, per chunk, the bit mask
    of ranks whose values that chunk of this rank has summed so far.
    """
    if world_size < 2:
        raise ValueError(f"world_size={world_size!r} is not allowed: a ring needs at least 2 ranks")
    if numel < world_size:
        raise ValueError(f"numel={numel!r} is not allowed: at least world_size={world_size} values, one per chunk")
    with tempfile.TemporaryDirectory(prefix="dpkit-ring-") as tmp:
        launch("dpkit.ringtrace:trace_rank", {"numel": numel}, world_size, tmp, threads_per_rank=1, timeout_s=timeout_s)
        rows = json.loads(Path(tmp, "trace.json").read_text())
    return pd.DataFrame(rows, columns=TRACE_COLUMNS).sort_values(["step", "rank"], ignore_index=True)
