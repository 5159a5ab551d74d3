"""The all-reduce algorithms by name, and the bytes each sends per rank (for native: ring's)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .group import GroupView, nbytes
from .reduce_broadcast import reduce_broadcast_allreduce
from .ring import ring_allreduce, ring_whole_allreduce
from .tree import tree_allreduce


def native_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """The backend's own all-reduce (gloo: ring-based on CPU; NCCL: ring/tree on GPU)."""
    dist.all_reduce(t, group=view.group)
    return predicted_bytes_sent("native", nbytes(t), view.size, view.me, t.element_size())


ALGORITHMS: dict[str, Callable[[torch.Tensor, GroupView], int]] = {
    "native": native_allreduce,
    "ring": ring_allreduce,
    "ring-whole": ring_whole_allreduce,
    "reduce-broadcast": reduce_broadcast_allreduce,
    "tree": tree_allreduce,
}


def allreduce_sum(t: torch.Tensor, algo: str = "native", group=None) -> int:
    """Sum a contiguous tensor in place over `group` with `algo`; returns bytes this rank sent."""
    if algo not in ALGORITHMS:
        raise ValueError(f"allreduce algo {algo!r} is not allowed: choose one of {sorted(ALGORITHMS)}")
    view = GroupView.of(group)
    if t.is_cuda and algo != "native" and dist.get_backend(group) == "gloo":
        host = t.detach().to("cpu").view(-1)  # gloo's send/recv take CPU tensors only: stage via the host
        sent = ALGORITHMS[algo](host, view)
        t.copy_(host.view_as(t))
        return sent
    return ALGORITHMS[algo](t.view(-1), view)


def predicted_bytes_sent(algo: str, size: int, n: int, me: int = 1, itemsize: int | None = None) -> int:
    """Bytes rank `me` sends for one all-reduce of `size` bytes over `n` ranks (DESIGN.md formulas).

    With `itemsize`, the ring count is exact for lengths not divisible by n: a rank sends every
    chunk but chunk me+1 in the reduce-scatter and every chunk but me+2 in the all-gather.
    """
    if n == 1:
        return 0
    if algo in ("native", "ring"):
        if itemsize is None:
            return round(2 * (n - 1) / n * size)
        numel = size // itemsize
        chunk = [numel // n + (1 if i < numel % n else 0) for i in range(n)]  # torch.tensor_split sizes
        return (2 * numel - chunk[(me + 1) % n] - chunk[(me + 2) % n]) * itemsize
    if algo == "ring-whole":
        return (n - 1) * size
    if algo == "reduce-broadcast":
        return (n - 1) * size if me == 0 else size
    if algo == "tree":  # one send up to the parent (unless root), one down to each child
        limit = me & -me if me else 1 << (n - 1).bit_length()
        children = sum(1 for k in range(limit.bit_length()) if (1 << k) < limit and me + (1 << k) < n)
        return size * (children + (1 if me else 0))
    raise ValueError(f"unknown algo {algo!r}")
