"""Exercise 1: average gradients over the ranks, one all-reduce per tensor, then one flat all-reduce.

The inputs are small integers (different on every rank), so their sum is exact whatever order the
backend adds them in, and "n times too large" can be recognised exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .base import Item, RankExercise, size_in_words
from .net import Net


def gradients(world: int, size: int, rank: int, scale: int = 1) -> list[torch.Tensor]:
    """Rank `rank`'s gradients: three tensors of different shapes, as a model's layers would have."""
    g = torch.Generator().manual_seed(7919 * world + 104729 * size + rank)
    shapes = [(size,), (2, size), (size, 3)] if scale == 1 else [(size,)] * scale
    return [torch.randint(-50, 50, shape, generator=g).float() for shape in shapes]


def _label(i: int, t: torch.Tensor) -> str:
    return f"gradient {i} (shape {'x'.join(map(str, t.shape))})"


def builtin_per_tensor(grads: list[torch.Tensor]) -> None:
    for g in grads:
        dist.all_reduce(g)
        g.div_(dist.get_world_size())


def builtin_flat(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class AverageGradients(RankExercise):
    """fn(net, grads) averages every tensor of `grads` over the ranks, in place, one all-reduce per tensor."""

    name = "average_gradients"
    sizes = (1, 5, 33)
    timing_size = 1 << 15  # elements per tensor; 8 tensors
    builtin = "dist.all_reduce per tensor (gloo)"
    flat = False

    def timing_label(self) -> str:
        return f"8 tensors of {size_in_words(self.timing_size * 4)}"

    def run(self, fns: list[Callable], net: Net, size: int) -> list[Item]:
        grads = gradients(net.world_size, size, net.rank)
        fns[0](net, grads)
        return [(_label(i, g), g) for i, g in enumerate(grads)]

    def expected(self, world: int, size: int) -> list[list[Item]]:
        per_rank = [gradients(world, size, r) for r in range(world)]
        mean = [torch.stack([gs[i] for gs in per_rank]).sum(dim=0) / world for i in range(len(per_rank[0]))]
        return [[(_label(i, m), m) for i, m in enumerate(mean)] for _ in range(world)]

    def check_record(self, world: int, size: int, rank: int, record: dict) -> str | None:
        calls, tensors = record["calls"].get("all_reduce", 0), len(record["items"])
        want = 1 if self.flat else tensors
        if calls != want:
            ask = "one flat all-reduce (flatten, all-reduce once, copy back)" if self.flat else "one all-reduce per tensor"
            return f"your function called net.all_reduce {calls} time{'s' if calls != 1 else ''} for {tensors} gradients; this exercise asks for {ask}."
        return None

    def hint(self, world: int, size: int, rank: int, item: int, expected: torch.Tensor, got: torch.Tensor) -> str:
        mine = gradients(world, size, rank)[item]
        if torch.allclose(got, expected * world):
            return f"Your values are the sum, {world} times the average: divide by net.world_size."
        if torch.equal(got, mine):
            where = "copy the averaged flat buffer back into each gradient" if self.flat else "all-reduce each tensor in place"
            return f"This is rank {rank}'s own gradient, unchanged: {where}."
        return ""

    def timed(self, fns: list[Callable], net: Net, size: int) -> tuple[Callable[[], None], Callable[[], None]]:
        grads = gradients(net.world_size, size, net.rank, scale=8)
        builtin = builtin_flat if self.flat else builtin_per_tensor
        return (lambda: fns[0](net, grads)), (lambda: builtin(grads))


class AverageGradientsFlat(AverageGradients):
    """fn(net, grads) averages `grads` over the ranks, in place, with a single all-reduce of one flat buffer."""

    name = "average_gradients_flat"
    builtin = "one flat dist.all_reduce (gloo)"
    flat = True
