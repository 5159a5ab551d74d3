"""Watch dpkit's chunked ring all-reduce move chunks, one exchange at a time, on real ranks.

Rank r starts with a tensor full of 2**r, so every element of a partial sum is a bit mask that says
exactly which ranks' contributions it holds (exact in float64). Each rank runs the real
`pipelined_ring_allreduce` from dpkit.comm.ring (allreduce_algo="ring"), which reports each finished
step through its `on_step` callback: which chunk went where, when, how many bytes, and what every chunk held after the step.
`dpkit.viz.plots.ring_steps_plot` draws the frame that `trace_ring` returns.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from ..comm import ring
from ..comm.group import GroupView
from ..runtime.launch import launch

TRACE_COLUMNS = ["rank", "step", "phase", "sent_chunk", "recv_chunk", "dst", "src", "bytes", "start_s", "end_s", "holds"]


def _masks(chunks: list[torch.Tensor]) -> list[int]:
    return [int(c[0].item()) for c in chunks]


def trace_rank(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: one real ring all-reduce with every step recorded; rank 0 writes trace.json.

    The ring reports each finished step (which chunk it sent, which it received); the state after a
    step is the state before it with the received chunk re-read. Only that chunk is complete at that
    moment: later steps' pieces may already be arriving, since the ring posts receives ahead.
    """
    t = torch.full((int(payload["numel"]),), float(2**rank), dtype=torch.float64)
    chunks = list(torch.tensor_split(t, world))
    view = GroupView.of(None)
    holds = [_masks(chunks)]
    rows = [{"rank": rank, "step": 0, "phase": "start", "sent_chunk": -1, "recv_chunk": -1, "dst": -1, "src": -1,
             "bytes": 0, "start_s": 0.0, "end_s": 0.0, "holds": holds[0]}]  # fmt: skip
    dist.barrier()
    t0 = time.perf_counter()
    last = [t0]

    def on_step(s: int, sent: int, received: int) -> None:
        now = time.perf_counter()
        after = list(holds[-1])
        after[received] = int(chunks[received][0].item())
        holds.append(after)
        rows.append(
            {
                "rank": rank,
                "step": s + 1,
                "phase": "reduce-scatter" if s < world - 1 else "all-gather",
                "sent_chunk": sent,
                "recv_chunk": received,
                "dst": view.peer(view.me + 1),
                "src": view.peer(view.me - 1),
                "bytes": chunks[sent].numel() * chunks[sent].element_size(),
                "start_s": last[0] - t0,
                "end_s": now - t0,
                "holds": after,
            }
        )
        last[0] = now

    ring.pipelined_ring_allreduce(t, view, on_step=on_step)
    if not torch.all(t == float(2**world - 1)):
        raise RuntimeError(f"ring all-reduce gave {t.unique().tolist()} on rank {rank}, expected {2**world - 1}")
    if len(rows) != 2 * (world - 1) + 1:
        raise RuntimeError(f"traced {len(rows) - 1} ring steps on rank {rank}, expected 2(n-1) = {2 * (world - 1)}")
    gathered: list | None = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    if gathered is not None:
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
        launch(
            "dpkit.viz.ringtrace:trace_rank",
            {"numel": numel},
            world_size,
            tmp,
            threads_per_rank=1,
            timeout_s=timeout_s,
            out_dir_is_temporary=True,
        )
        rows = json.loads(Path(tmp, "trace.json").read_text())
    return pd.DataFrame(rows, columns=TRACE_COLUMNS).sort_values(["step", "rank"], ignore_index=True)
