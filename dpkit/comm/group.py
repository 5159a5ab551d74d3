"""Which global ranks a process group holds, so hand-written collectives can address peers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from .transport import PLAIN, Transport


@dataclass(frozen=True)
class GroupView:
    """This rank's position (`me`) among the group's global `ranks`; its point-to-point messages take the
    group's `transport` (the machine as it is, or an emulated link: dpkit.comm.transport)."""

    ranks: tuple[int, ...]
    me: int
    group: Any = None  # the torch ProcessGroup (None: the default group)
    transport: Transport = field(default=PLAIN, compare=False)

    @classmethod
    def of(cls, group=None, transport: Transport = PLAIN) -> GroupView:
        ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else tuple(range(dist.get_world_size()))
        return cls(ranks, ranks.index(dist.get_rank()), group, transport)

    @property
    def size(self) -> int:
        return len(self.ranks)

    def peer(self, index: int) -> int:
        """Global rank of the group member at `index` (taken modulo the group size)."""
        return self.ranks[index % self.size]

    # point to point with global ranks, as torch.distributed takes them, through the group's transport
    def isend(self, t: torch.Tensor, dst: int):
        return self.transport.isend(t, dst, self.group)

    def irecv(self, t: torch.Tensor, src: int):
        return self.transport.irecv(t, src, self.group)

    def send(self, t: torch.Tensor, dst: int) -> None:
        self.transport.send(t, dst, self.group)

    def recv(self, t: torch.Tensor, src: int) -> None:
        self.transport.recv(t, src, self.group)

    def wait_all(self, works: list) -> None:
        """Complete posted messages (on an emulated link receives queue on the incoming port in sending order)."""
        self.transport.complete(works)


_scratch = threading.local()  # per thread: the comm thread and the training thread may both run an all-reduce
_scratch_sizes: dict[tuple, int] = {}  # bytes of every thread's scratch buffers, for memory accounting (scratch_bytes)


def scratch_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reusable 1-D receive buffer (`like`'s dtype and device), valid until the next call on this thread.
    A fresh one per call would page-fault its way through every byte, and how often that happens
    depends on the allocator's state: timings would change from one launch to the next."""
    key = (like.dtype, like.device)
    cache = _scratch.__dict__.setdefault("buffers", {})
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        _scratch_sizes[(threading.get_ident(),) + key] = buf.numel() * buf.element_size()
    return buf[:numel]


def scratch_bytes() -> int:
    """Bytes the scratch buffers of every thread of this process hold (they only grow: this is their peak)."""
    return sum(_scratch_sizes.values())


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
        ops.append(view.irecv(recv, view.peer(src)))
    if send.numel():
        ops.append(view.isend(send, view.peer(dst)))
    view.wait_all(ops)
    return nbytes(send)
