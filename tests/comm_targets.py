"""launch() targets for the all-reduce tests: every algorithm against dist.all_reduce on real ranks.

Test-only (they patch the ring's SEGMENT_BYTES in the rank process): they live here, not in the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from dpkit.comm import ALGORITHMS, allreduce_sum, predicted_bytes_sent
from dpkit.comm.emulation import Nodes, transport_for
from dpkit.comm.group import GroupView
from dpkit.comm.ring import pipelined_ring_allreduce, ring_allreduce
from dpkit.cost.model import Link

CHECK_LENGTHS = [0, 1, 2, 3, 5, 7, 64, 1001, 4099]


def rank_values(length: int, index: int, dtype: torch.dtype) -> torch.Tensor:
    """Small integers, different on every rank: float sums are exact whatever the summation order."""
    g = torch.Generator().manual_seed(1000 * index + length)
    return torch.randint(-50, 50, (length,), generator=g).to(dtype)


def _groups(rank: int, world: int) -> dict:
    """The world, and ranks 1..n-1 (every rank must create the subgroup; only its members use it)."""
    sub_ranks = list(range(1, world))
    sub = dist.new_group(ranks=sub_ranks) if world >= 3 else None
    groups = {"world": None}
    if sub is not None and rank in sub_ranks:
        groups["ranks 1.."] = sub
    return groups


def check_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """Every algorithm against dist.all_reduce, over the world and over a subgroup; rank 0 writes check.json.
    payload["segment_bytes"] shrinks the ring's pieces so that small tensors take the many-piece path too;
    payload["link"] ({"alpha": s, "bandwidth": B/s}) paces every message by an emulated link; with
    payload["ranks_per_node"] too, the ranks are emulated nodes (payload["intra"]: the link within a node)."""
    from dpkit.comm import ring

    if "segment_bytes" in payload:
        ring.SEGMENT_BYTES = int(payload["segment_bytes"])  # this rank process only
    link = payload.get("link")
    inter = Link(alpha=link["alpha"], bandwidth=link["bandwidth"]) if link else None
    if "ranks_per_node" in payload:
        intra = Link(alpha=payload["intra"]["alpha"], bandwidth=payload["intra"]["bandwidth"]) if "intra" in payload else None
        transport = transport_for(Nodes(payload["ranks_per_node"], intra, inter))
    else:
        transport = transport_for(inter)
    rows = []
    for gname, group in _groups(rank, world).items():
        view = GroupView.of(group, transport)
        for dtype in (torch.float32, torch.float64):
            for length in payload.get("lengths", CHECK_LENGTHS):
                expected = rank_values(length, view.me, dtype)
                dist.all_reduce(expected, group=group)
                for algo in payload.get("algos", list(ALGORITHMS)):
                    t = rank_values(length, view.me, dtype)
                    sent = allreduce_sum(t, algo, view)
                    nbytes = t.numel() * t.element_size()
                    rows.append(
                        {
                            "rank": rank,
                            "group": gname,
                            "group_size": view.size,
                            "me": view.me,
                            "algo": algo,
                            "dtype": str(dtype),
                            "length": length,
                            "equal": bool(torch.equal(t, expected)),
                            "max_abs_err": float((t - expected).abs().max()) if length else 0.0,
                            "sent": sent,
                            "predicted": predicted_bytes_sent(algo, nbytes, view.size, view.me, t.element_size()),
                        }
                    )
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(out_dir, "check.json").write_text(json.dumps([r for g in gathered for r in g]))


def textbook_vs_pipelined(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """The textbook ring and the pipelined ring on the same inputs: integer-valued floats (exact sums, so the
    two must be equal bit for bit) and random normals (summed in a different order by each: to tolerance).
    Tiny pieces make the pipelined ring take its many-piece path. Rank 0 writes rings.json."""
    from dpkit.comm import ring

    ring.SEGMENT_BYTES = int(payload.get("segment_bytes", 12))
    rows = []
    for gname, group in _groups(rank, world).items():
        view = GroupView.of(group)
        for length in payload["lengths"]:
            for kind in ("integers", "random"):
                if kind == "integers":
                    start = rank_values(length, view.me, torch.float32)
                else:
                    start = torch.randn(length, generator=torch.Generator().manual_seed(7 * view.me + length))
                textbook, pipelined = start.clone(), start.clone()
                sent_textbook = ring_allreduce(textbook, view)
                sent_pipelined = pipelined_ring_allreduce(pipelined, view)
                expected = start.double().clone()
                dist.all_reduce(expected, group=group)  # in float64: the reference for both
                rows.append(
                    {
                        "rank": rank,
                        "group": gname,
                        "group_size": view.size,
                        "length": length,
                        "kind": kind,
                        "equal": bool(torch.equal(textbook, pipelined)),
                        "max_diff": float((textbook - pipelined).abs().max()) if length else 0.0,
                        "textbook_err": float((textbook.double() - expected).abs().max()) if length else 0.0,
                        "pipelined_err": float((pipelined.double() - expected).abs().max()) if length else 0.0,
                        "sent_textbook": sent_textbook,
                        "sent_pipelined": sent_pipelined,
                    }
                )
    gathered: list = [None] * world
    dist.all_gather_object(gathered, rows)
    if rank == 0:
        Path(out_dir, "rings.json").write_text(json.dumps([r for g in gathered for r in g]))


def check_all(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """Both checks in one launch of the ranks: check.json and rings.json."""
    check_ranks(payload, rank, world, out_dir)
    textbook_vs_pipelined(payload, rank, world, out_dir)
