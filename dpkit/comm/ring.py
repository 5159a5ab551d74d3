"""Ring all-reduces built from send/recv.

Chunked ring: reduce-scatter then all-gather, 2(n-1) steps each moving S/n bytes, so a rank sends
2(n-1)/n * S in all: bandwidth-optimal. Whole-tensor ring: (n-1) steps each moving the whole S,
as many tutorials write it: simple, but every link carries n/2 times more bytes.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist

from .group import GroupView, exchange, nbytes

SEGMENT_BYTES = 1 << 21  # a reduce-scatter step moves its chunk in pieces of this size, so adding overlaps receiving
_scratch = threading.local()  # per thread: the comm thread and the training thread may both run a ring


def _scratch_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A reusable receive buffer: a fresh one per call would page-fault its way through every byte."""
    key = (like.dtype, like.device)
    cache = _scratch.__dict__.setdefault("buffers", {})
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        buf = cache[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def _pieces(t: torch.Tensor) -> list[torch.Tensor]:
    """The same split on sender and receiver (they hold chunks of equal length); no empty pieces."""
    step = max(1, SEGMENT_BYTES // t.element_size())
    return [p for p in torch.split(t, step) if p.numel()]


def ring_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum the 1-D tensor `t` over the group in place; returns bytes this rank sent.

    2(n-1) steps: n-1 of reduce-scatter (add the left neighbour's chunk into ours), then n-1 of
    all-gather (overwrite with the left neighbour's finished chunk). What a rank sends in step s+1
    is exactly the chunk it received in step s, so it is pipelined piece by piece: each piece goes
    on to the right neighbour as soon as it has arrived (and been added), as NCCL's ring does,
    instead of waiting for the whole chunk.
    """
    n, me = view.size, view.me
    if n == 1:
        return 0
    chunks = list(torch.tensor_split(t, n))
    scratch = _scratch_buffer(max(c.numel() for c in chunks), t)
    right, left = view.peer(me + 1), view.peer(me - 1)
    steps = 2 * (n - 1)
    pending: dict[int, list] = {c: [] for c in range(n)}  # sends still reading each chunk

    def send(c: int, piece: torch.Tensor) -> None:
        pending[c].append(dist.isend(piece, right, group=view.group))

    for piece in _pieces(chunks[me]):
        send(me, piece)
    sent = nbytes(chunks[me])
    for s in range(steps):
        c = (me - s - 1) % n  # the chunk arriving in step s (reduce-scatter and all-gather alike)
        reducing = s < n - 1
        if reducing:
            targets = list(zip(_pieces(scratch[: chunks[c].numel()]), _pieces(chunks[c]), strict=True))
        else:
            for work in pending[c]:  # about to overwrite chunk c: its earlier sends must be done
                work.wait()
            pending[c] = []
            targets = [(p, p) for p in _pieces(chunks[c])]
        recvs = [dist.irecv(buf, left, group=view.group) for buf, _ in targets]
        for work, (buf, dst) in zip(recvs, targets, strict=True):
            work.wait()
            if reducing:
                dst.add_(buf)
            if s + 1 < steps:
                send(c, dst)
        if s + 1 < steps:
            sent += nbytes(chunks[c])
    for works in pending.values():
        for work in works:
            work.wait()
    return sent


def ring_whole_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Pass whole tensors around the ring n-1 times, adding each arrival (the unchunked version)."""
    n = view.size
    if n == 1:
        return 0
    outgoing, incoming = t.clone(), torch.empty_like(t)
    sent = 0
    for _ in range(n - 1):
        sent += exchange(view, outgoing, view.me + 1, incoming, view.me - 1)
        t.add_(incoming)
        outgoing, incoming = incoming, outgoing
    return sent
