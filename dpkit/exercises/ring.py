"""Exercise 2: a ring all-reduce from send/recv alone: reduce-scatter, then all-gather.

Two requirements: the sum must be right on every rank, and each rank may send no more than a chunked
ring does, 2(n-1) steps of one chunk each: 2(n-1)/n * S bytes (docs/formulas.md). A ring that passes the
whole tensor around gets the sum right but sends (n-1) * S: for n > 2 that is more, and the report says so.

The notebook numbers the steps s = 0 .. 2n-3: at step s rank r sends chunk (r - s) mod n to its right
neighbour and receives chunk (r - s - 1) mod n from its left; steps 0 .. n-2 are the reduce-scatter
(add what arrives), steps n-1 .. 2n-3 the all-gather (copy what arrives). The hints use that numbering.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from ..comm.group import GroupView
from ..comm.ring import ring_allreduce
from .base import Item, RankExercise
from .net import POINT_TO_POINT, Net


def values(world: int, size: int, rank: int) -> torch.Tensor:
    """Small integers, different on every rank: float sums are exact in any order."""
    g = torch.Generator().manual_seed(15485863 * world + 32452843 * size + rank)
    return torch.randint(-50, 50, (size,), generator=g).float()


def chunk_of(size: int, world: int, index: int) -> tuple[int, int, int]:
    """(chunk, first, last element) holding `index` when torch.tensor_split cuts `size` elements into `world` chunks."""
    bounds = [0]
    for piece in torch.tensor_split(torch.arange(size), world):
        bounds.append(bounds[-1] + piece.numel())
    c = max(i for i in range(world) if bounds[i] <= index)
    return c, bounds[c], bounds[c + 1] - 1


def _what_it_holds(world: int, size: int, first: int, last: int, got: torch.Tensor) -> str:
    """What a wrong chunk holds, in words: which ranks' values it sums, and how often each (found by trying every
    count 0, 1 or 2 per rank: the inputs are small integers, so the sums are exact); or that it is none of these."""
    parts = torch.stack([values(world, size, r)[first : last + 1] for r in range(world)])
    have = got[first : last + 1].double()
    if world <= 6:
        for counts in itertools.product(range(3), repeat=world):
            weights = torch.tensor(counts, dtype=torch.float64)
            if torch.equal((weights[:, None] * parts.double()).sum(0), have):
                return _counted(counts)
    return "holds values that are no sum of the ranks' inputs (each taken 0, 1 or 2 times): a chunk was overwritten or mixed up"


def _counted(counts: tuple[int, ...]) -> str:
    ranks = lambda k: ", ".join(str(r) for r, c in enumerate(counts) if c == k)  # noqa: E731
    if 2 in counts:
        return (
            f"holds more than the full sum: rank(s) {ranks(2)} counted twice"
            + (f" and rank(s) {ranks(0)} missing" if 0 in counts else "")
            + " (an all-gather step that adds what arrives instead of copying it, or a reduce-scatter step too many?)"
        )
    if 0 in counts:
        return f"holds a partial sum: the values of rank(s) {ranks(1)} only, rank(s) {ranks(0)} missing"
    return "holds the full sum"


def ideal_bytes(world: int, size: int, itemsize: int = 4) -> float:
    """2(n-1)/n * S: what a chunked ring sends per rank."""
    return 2 * (world - 1) / world * size * itemsize


class RingAllreduce(RankExercise):
    """fn(net, t) sums the 1-D tensor `t` over the ranks in place, using only net.send/recv/isend/irecv."""

    name = "ring_allreduce"
    allowed = POINT_TO_POINT
    sizes = (8, 13, 1001)
    timing_size = 1 << 18  # 1 MiB of float32
    builtin = "dpkit's ring (dpkit.comm.ring.ring_allreduce)"

    def run(self, fns: list[Callable], net: Net, size: int) -> list[Item]:
        t = values(net.world_size, size, net.rank)
        fns[0](net, t)
        return [("the summed tensor", t)]

    def expected(self, world: int, size: int) -> list[list[Item]]:
        total = torch.stack([values(world, size, r) for r in range(world)]).sum(dim=0)
        return [[("the summed tensor", total)] for _ in range(world)]

    def expected_bytes(self, world: int, size: int, rank: int) -> int:
        return round(ideal_bytes(world, size))

    def check_record(self, world: int, size: int, rank: int, record: dict) -> str | None:
        sent, whole = record["bytes_sent"], (world - 1) * size * 4
        limit = 2 * (world - 1) * math.ceil(size / world) * 4  # the largest chunk 2(n-1) times
        ideal = f"2(n-1)/n x S = {ideal_bytes(world, size):.0f} bytes"
        if sent == 0:
            return "your function sent nothing through net: send every message with net.send or net.isend, so that the bytes can be counted."
        if sent <= limit:
            return None
        if sent == whole:
            return (
                f"your function gives the right sums but sent {sent} bytes = (n-1) x S: whole tensors go around the ring. "
                f"A chunked ring sends {ideal}: send one chunk of S/n per step, 2(n-1) steps."
            )
        return f"your function sent {sent} bytes, more than a chunked ring's {ideal}: each of the 2(n-1) steps should send one chunk of S/n."

    def hint(self, world: int, size: int, rank: int, item: int, expected: torch.Tensor, got: torch.Tensor) -> str:
        bad = (~torch.isclose(got, expected)).nonzero()
        c, first, last = chunk_of(size, world, int(bad[0]))
        mine = values(world, size, rank)
        if torch.equal(got[first : last + 1], mine[first : last + 1]):
            news = "still holds this rank's own values: nothing arrived for it"
        else:
            news = _what_it_holds(world, size, first, last, got)
        if c == (rank + 1) % world:
            when = f"rank {rank} completes that chunk itself at the last reduce-scatter step (step {world - 2})"
        else:
            step = world - 1 + (rank - c) % world
            when = (
                f"the finished chunk should reach rank {rank} at all-gather step {step} (of steps {world - 1}..{2 * world - 3})"
            )
        return f"That element is in chunk {c} (elements {first}..{last}), which {news}; in the notebook's numbering {when}."

    def timed(self, fns: list[Callable], net: Net, size: int) -> tuple[Callable[[], None], Callable[[], None]]:
        start = values(net.world_size, size, net.rank)
        t = start.clone()
        view = GroupView.of(None)

        def yours() -> None:
            t.copy_(start)
            fns[0](net, t)

        def builtin() -> None:
            t.copy_(start)
            ring_allreduce(t, view)

        return yours, builtin
