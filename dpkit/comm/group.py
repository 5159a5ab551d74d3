"""Which global ranks a process group holds, so hand-written collectives can address peers."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GroupView:
    """This rank's position (`me`) among the group's global `ranks`."""

    ranks: tuple[int, ...]
    me: int
    group: object = None

    @classmethod
    def of(cls, group=None) -> GroupView:
        ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else tuple(range(dist.get_world_size()))
        return cls(ranks, ranks.index(dist.get_rank()), group)

    @property
    def size(self) -> int:
        return len(self.ranks)

    def peer(self, index: int) -> int:
        """Global rank of the group member at `index` (taken modulo the group size)."""
        return self.ranks[index % self.size]


_scratch = threading.local()  # per thread: the comm thread and the training thread may both run an all-reduce


def scratch_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reusable 1-D receive buffer (`like`'s dtype and device), valid until the next call on this thread.
    A fresh one per call would page-fault its way through every byte, and how often that happens
    depends on the allocator's state: timings would change from one launch to the next."""
    key = (like.dtype, like.device)
    cache = _scratch.__dict__.setdefault("buffers", {})
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def scratch_like(t: torch.Tensor, count: int = 1) -> list[torch.Tensor]:
    """`count` reusable tensors shaped like `t` (one scratch_buffer split up): same caveat."""
    k = t.numel()
    buf = scratch_buffer(count * k, t)
    return [buf[i * k : (i + 1) * k].view_as(t) for i in range(count)]


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def exchange(view: GroupView, send: torch.Tensor, dst: int, recv: torch.Tensor, src: int) -> int:
    """Send to group member `dst` while receiving from `src` (both posted first, so no deadlock)."""
    ops = []
    if recv.numel():
        ops.append(dist.irecv(recv, view.peer(src), group=view.group))
    if send.numel():
        ops.append(dist.isend(send, view.peer(dst), group=view.group))
    for op in ops:
        op.wait()
    return nbytes(send)
