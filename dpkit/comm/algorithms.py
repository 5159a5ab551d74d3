"""The all-reduce algorithms by name, and the bytes each sends per rank (for native: ring's)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from ..cost.model import all_gather_terms, native_terms, reduce_scatter_terms
from .group import GroupView, nbytes
from .hierarchical import hierarchical_allreduce
from .reduce_broadcast import reduce_broadcast_allreduce
from .ring import pipelined_ring_allreduce, ring_all_gather, ring_reduce_scatter, ring_whole_allreduce
from .tree import tree_allreduce


def native_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """The backend's own all-reduce (gloo: ring-based on CPU; NCCL: ring/tree on GPU). Its messages are out
    of dpkit's sight, so the transport holds it (for a ring's time, on an emulated link)."""
    view.transport.hold(native_terms(nbytes(t), view.size), view.group, lambda: dist.all_reduce(t, group=view.group), t.device)
    return predicted_bytes_sent("native", nbytes(t), view.size, view.me, t.element_size())


ALGORITHMS: dict[str, Callable[[torch.Tensor, GroupView], int]] = {
    "native": native_allreduce,
    "ring": pipelined_ring_allreduce,  # the textbook ring (ring.ring_allreduce) pipelined: same sums, faster
    "ring-whole": ring_whole_allreduce,
    "reduce-broadcast": reduce_broadcast_allreduce,
    "tree": tree_allreduce,
    "hierarchical": hierarchical_allreduce,  # rings inside and across emulated nodes; the ring without nodes
}


def allreduce_sum(t: torch.Tensor, algo: str = "native", view: GroupView | None = None) -> int:
    """Sum a contiguous tensor in place over the group `view` (None: the world) with `algo`; returns bytes
    this rank sent. Messages take the view's transport (Comm's: paced on an emulated link)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"allreduce algo {algo!r} is not allowed: choose one of {sorted(ALGORITHMS)}")
    view = view or GroupView.of(None)
    if t.is_cuda and algo != "native" and dist.get_backend(view.group) == "gloo":
        host = t.detach().to("cpu").view(-1)  # gloo's send/recv take CPU tensors only: stage via the host
        sent = ALGORITHMS[algo](host, view)
        t.copy_(host.view_as(t))
        return sent
    return ALGORITHMS[algo](t.view(-1), view)


def predicted_bytes_sent(algo: str, size: int, n: int, me: int = 1, itemsize: int | None = None) -> int:
    """Bytes rank `me` sends for one all-reduce of `size` bytes over `n` ranks (docs/formulas.md formulas).

    With `itemsize`, the ring count is exact for lengths not divisible by n: a rank sends every
    chunk but chunk me+1 in the reduce-scatter and every chunk but me+2 in the all-gather.
    """
    if n == 1:
        return 0
    if algo in ("native", "ring", "hierarchical"):  # hierarchical: without nodes (on nodes it counts its own)
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


# ---- the ring's halves as collectives: sharded data parallelism (ZeRO, FSDP) ------------------------
SHARD_ALGORITHMS = ("native", "ring")


def shard_algo(algo: str) -> str:
    """The algorithm reduce-scatter and all-gather run for a run's all-reduce choice: the hand-written ring's
    halves for "ring", the backend's own otherwise (the tree, reduce-and-broadcast and whole-tensor ring
    have no reduce-scatter worth writing: each would still move whole tensors)."""
    return "ring" if algo == "ring" else "native"


def _positions(flat: torch.Tensor, n: int, me: int) -> list[torch.Tensor]:
    """The n shards of `flat` in the ring's order: the ring leaves rank me's finished piece in position me+1,
    so position p holds shard p-1, and the reduce-scatter ends with each rank holding its own shard."""
    shards = flat.view(n, -1)
    return [shards[(p - 1) % n] for p in range(n)]


def reduce_scatter_sum(flat: torch.Tensor, algo: str, view: GroupView) -> tuple[torch.Tensor, int]:
    """Sum the 1-D `flat` (length a multiple of n) over the group; returns (this rank's shard of the sum,
    bytes sent). The ring sums in place (the shard is a view of `flat`, whose other shards are partial
    sums after it); the backend writes a new tensor (an output may not alias the input)."""
    n, me = view.size, view.me
    if flat.numel() % n:
        raise ValueError(f"reduce-scatter of {flat.numel()} elements over {n} ranks: pad the buffer to a multiple of {n}")
    if n == 1:
        return flat, 0
    if shard_algo(algo) == "ring":
        if flat.is_cuda and dist.get_backend(view.group) == "gloo":  # gloo's send/recv take CPU tensors only
            host = flat.detach().to("cpu")
            shard, sent = reduce_scatter_sum(host, algo, view)
            return shard.to(flat.device), sent
        return flat.view(n, -1)[me], ring_reduce_scatter(_positions(flat, n, me), view)
    shard = torch.empty(flat.numel() // n, dtype=flat.dtype, device=flat.device)

    def run() -> None:
        dist.reduce_scatter_single(shard, flat, group=view.group)

    view.transport.hold(reduce_scatter_terms(nbytes(flat), n), view.group, run, flat.device)  # out of dpkit's sight
    return shard, (n - 1) * nbytes(shard)


def all_gather_into(shard: torch.Tensor, flat: torch.Tensor, algo: str, view: GroupView) -> int:
    """Fill `flat` with every rank's `shard`, rank i's at flat.view(n, -1)[i]; returns bytes sent. `shard`
    may be that very view of `flat` (gathering in place, as FSDP2 does) or a tensor of its own."""
    n, me = view.size, view.me
    mine = flat.view(n, -1)[me]
    if mine.data_ptr() != shard.data_ptr():
        mine.copy_(shard)
    if n == 1:
        return 0
    if shard_algo(algo) == "ring":
        if flat.is_cuda and dist.get_backend(view.group) == "gloo":
            host = flat.detach().to("cpu")
            sent = all_gather_into(host.view(n, -1)[me], host, algo, view)
            flat.copy_(host)
            return sent
        return ring_all_gather(_positions(flat, n, me), view)

    def run() -> None:
        dist.all_gather_single(flat, mine, group=view.group)

    view.transport.hold(all_gather_terms(nbytes(flat), n), view.group, run, flat.device)
    return (n - 1) * nbytes(mine)
