"""launch() target for the sharded-collective tests: Comm's reduce-scatter and all-gather on real ranks.

Values are small integers stored as floats, so every sum is exact in any order and checks are equalities.
Each rank writes nothing but its rows; rank 0 writes collectives.json with everyone's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from dpkit.comm import Comm, GroupView, allreduce_sum
from dpkit.comm.ring import ring_all_gather, ring_reduce_scatter
from dpkit.runtime.recorder import HostClock, Recorder


def values(length: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + length)
    return torch.randint(-50, 50, (length,), generator=g).to(dtype)


def _sent(rec: Recorder) -> int:
    """Bytes of the comm spans recorded since the last call (one step's worth)."""
    rec.end_step()
    sent = sum(s.bytes for s in rec.spans if s.kind == "comm")
    rec.spans.clear()
    rec.begin_step(0)
    return sent


def check_collectives(payload: dict, rank: int, world: int, out_dir: str) -> None:
    from dpkit.comm import ring

    ring.SEGMENT_BYTES = 400  # pieces of 100 float32 (50 float64): the longer shards take the many-piece path too
    rows = []
    me, n = rank, world
    for algo in ("native", "ring", "tree"):  # tree has no halves: it falls back to the backend's own
        rec = Recorder(rank, HostClock())
        comm = Comm(rec, algo)
        rec.begin_step(0)
        for dtype in (torch.float32, torch.float64):
            for shard_len in payload["shard_lengths"]:
                length, item = shard_len * n, torch.finfo(dtype).bits // 8
                total = sum(values(length, r, dtype) for r in range(n))
                expected_shard = total.view(n, -1)[me]
                everyone = torch.cat([values(shard_len, r, dtype) for r in range(n)])
                row = {
                    "rank": rank,
                    "algo": algo,
                    "dtype": str(dtype),
                    "shard_len": shard_len,
                    "predicted": (n - 1) * shard_len * item,
                }

                got = comm.reduce_scatter(values(length, me, dtype))
                row.update(rs_equal=bool(torch.equal(got, expected_shard)), rs_sent=_sent(rec))
                work, result = comm.reduce_scatter_async(values(length, me, dtype))
                work.wait()
                row.update(rs_async_equal=bool(torch.equal(result.result(), expected_shard)), rs_async_sent=_sent(rec))

                flat = torch.full((length,), -1.0, dtype=dtype)
                comm.all_gather(values(shard_len, me, dtype), flat)
                row.update(ag_equal=bool(torch.equal(flat, everyone)), ag_sent=_sent(rec))
                flat = torch.full((length,), -1.0, dtype=dtype)
                flat.view(n, -1)[me].copy_(values(shard_len, me, dtype))
                comm.all_gather_async(flat.view(n, -1)[me], flat).wait()  # in place: the shard is the rank's own view
                row.update(ag_async_equal=bool(torch.equal(flat, everyone)), ag_async_sent=_sent(rec))
                rows.append(row)
        try:
            comm.reduce_scatter(torch.zeros(n + 1))
            rows.append({"rank": rank, "algo": algo, "uneven_refused": False})
        except ValueError:
            rows.append({"rank": rank, "algo": algo, "uneven_refused": True})
        comm.close()
    view = GroupView.of(None)
    for length in payload["ring_lengths"]:  # the ring's halves, one after the other, are its all-reduce
        whole = values(length, me, torch.float32)
        whole_sent = allreduce_sum(whole, "ring")
        halves = values(length, me, torch.float32)
        chunks = list(torch.tensor_split(halves, n))
        halves_sent = ring_reduce_scatter(chunks, view) + ring_all_gather(chunks, view)
        rows.append(
            {
                "rank": rank,
                "ring_length": length,
                "halves_equal": bool(torch.equal(whole, halves)),
                "same_bytes": whole_sent == halves_sent,
            }
        )
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(out_dir, "collectives.json").write_text(json.dumps([r for g in gathered for r in g]))
