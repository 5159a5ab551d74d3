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

SEGMENT_BYTES = 1 << 20  # a reduce-scatter step moves its chunk in pieces of this size, so adding overlaps receiving
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


def _reduce_step(view: GroupView, out_c: torch.Tensor, in_c: torch.Tensor, buf: torch.Tensor) -> int:
    """Send out_c to the right neighbour and add the left neighbour's chunk into in_c, piece by piece:
    each piece is added as soon as it has arrived while the later pieces are still on the wire."""
    recvs = [
        (dist.irecv(b, view.peer(view.me - 1), group=view.group), b, dst)
        for b, dst in zip(_pieces(buf), _pieces(in_c), strict=True)
    ]
    sends = [dist.isend(p, view.peer(view.me + 1), group=view.group) for p in _pieces(out_c)]
    for work, b, dst in recvs:
        work.wait()
        dst.add_(b)
    for work in sends:
        work.wait()
    return nbytes(out_c)


def ring_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum the 1-D tensor `t` over the group in place; returns bytes this rank sent."""
    n, me = view.size, view.me
    if n == 1:
        return 0
    chunks = list(torch.tensor_split(t, n))
    scratch = _scratch_buffer(max(c.numel() for c in chunks), t)
    sent = 0
    # reduce-scatter: after step i, chunk (me - i - 1) holds the sum over i + 2 ranks
    for i in range(n - 1):
        out_c, in_c = chunks[(me - i) % n], chunks[(me - i - 1) % n]
        sent += _reduce_step(view, out_c, in_c, scratch[: in_c.numel()])
    # all-gather: rank `me` now owns the full sum of chunk (me + 1); pass finished chunks along
    for i in range(n - 1):
        out_c, in_c = chunks[(me + 1 - i) % n], chunks[(me - i) % n]
        sent += exchange(view, out_c, me + 1, in_c, me - 1)
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
