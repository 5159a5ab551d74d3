"""Ring all-reduces built from send/recv.

Chunked ring: reduce-scatter then all-gather, 2(n-1) steps each moving S/n bytes, so a rank sends
2(n-1)/n * S in all: bandwidth-optimal. Whole-tensor ring: (n-1) steps each moving the whole S,
as many tutorials write it: simple, but every link carries n/2 times more bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .group import GroupView, exchange, nbytes, scratch_buffer, scratch_like

SEGMENT_BYTES = 1 << 21  # a reduce-scatter step moves its chunk in pieces of this size, so adding overlaps receiving


def _pieces(t: torch.Tensor) -> list[torch.Tensor]:
    """The same split on sender and receiver (they hold chunks of equal length); no empty pieces."""
    step = max(1, SEGMENT_BYTES // t.element_size())
    return [p for p in torch.split(t, step) if p.numel()]


def ring_allreduce(t: torch.Tensor, view: GroupView, on_step: Callable[[int, int, int], None] | None = None) -> int:
    """Sum the 1-D tensor `t` over the group in place; returns bytes this rank sent.

    `on_step(s, sent_chunk, received_chunk)` is called when step s is complete (for tracing).

    2(n-1) steps: n-1 of reduce-scatter (add the left neighbour's chunk into ours), then n-1 of
    all-gather (overwrite with the left neighbour's finished chunk). Two things keep the links busy,
    as in NCCL's and gloo's own rings: what a rank sends in step s+1 is exactly the chunk it received
    in step s, so each piece goes on to the right neighbour as soon as it has arrived (and been
    added); and the receives of step s+1 are posted before step s is processed (into the other half
    of a double buffer), so the next step's data flows in while this step's is being added.
    """
    n, me = view.size, view.me
    if n == 1:
        return 0
    chunks = list(torch.tensor_split(t, n))
    longest = max(c.numel() for c in chunks)
    scratch = scratch_buffer(2 * longest, t)
    right, left = view.peer(me + 1), view.peer(me - 1)
    steps = 2 * (n - 1)
    pending: dict[int, list] = {c: [] for c in range(n)}  # sends still reading each chunk

    def send(c: int, piece: torch.Tensor) -> None:
        pending[c].append(dist.isend(piece, right, group=view.group))

    def post_receives(s: int) -> list[tuple]:
        """Step s's receives: (work, buffer, destination piece); reduce steps land in scratch first."""
        c = (me - s - 1) % n  # the chunk arriving in step s (reduce-scatter and all-gather alike)
        if s < n - 1:
            half = scratch[(s % 2) * longest :][: chunks[c].numel()]
            targets = list(zip(_pieces(half), _pieces(chunks[c]), strict=True))
        else:
            for work in pending[c]:  # about to overwrite chunk c: its earlier sends must be done
                work.wait()
            pending[c] = []
            targets = [(p, p) for p in _pieces(chunks[c])]
        return [(dist.irecv(buf, left, group=view.group), buf, dst) for buf, dst in targets]

    for piece in _pieces(chunks[me]):
        send(me, piece)
    sent = nbytes(chunks[me])
    receives = post_receives(0)
    for s in range(steps):
        c = (me - s - 1) % n
        current, receives = receives, (post_receives(s + 1) if s + 1 < steps else [])
        for work, buf, dst in current:
            work.wait()
            if s < n - 1:
                dst.add_(buf)
            if s + 1 < steps:
                send(c, dst)
        if s + 1 < steps:
            sent += nbytes(chunks[c])
        if on_step is not None:
            on_step(s, (me - s) % n, c)
    for works in pending.values():
        for work in works:
            work.wait()
    return sent


def ring_whole_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Pass whole tensors around the ring n-1 times, adding each arrival (the unchunked version)."""
    n = view.size
    if n == 1:
        return 0
    outgoing, incoming = scratch_like(t, 2)
    outgoing.copy_(t)
    sent = 0
    for _ in range(n - 1):
        sent += exchange(view, outgoing, view.me + 1, incoming, view.me - 1)
        t.add_(incoming)
        outgoing, incoming = incoming, outgoing
    return sent
