"""Ring all-reduce from send/recv: the textbook ring first, then the pipelined ring dpkit runs for speed.

The textbook ring (ring_allreduce): cut the tensor into n chunks; n-1 reduce-scatter steps, each sending
one chunk to the right neighbour and adding the left neighbour's into ours, leave every rank with the full
sum of one chunk; n-1 all-gather steps pass the finished chunks on. Each step moves S/n bytes, so a rank
sends 2(n-1)/n * S in all: bandwidth-optimal. It is the exercise's solution (exercises/solutions/
ring_allreduce.py), step for step.

The pipelined ring (pipelined_ring_allreduce, what allreduce_algo="ring" runs) is an optimisation of the
same steps, as NCCL's and gloo's rings do it: same chunks, same sums, same bytes, but it keeps the links
busy (pieces, double buffers, sends left in flight). Its halves are collectives of their own (ZeRO and
FSDP reduce-scatter gradients and all-gather parameters): (n-1)/n * S per rank each.

The whole-tensor ring (ring_whole_allreduce): (n-1) steps each moving the whole S, as many tutorials
write it: simple, but every link carries n/2 times more bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .group import GroupView, exchange, nbytes, scratch_buffer, scratch_like


# ---- the textbook ring ---------------------------------------------------------------------------
def ring_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum the 1-D tensor `t` over the group in place; returns bytes this rank sent.

    In step s rank me sends chunk (me - s) mod n to its right neighbour and receives chunk (me - s - 1) mod n
    from its left. Steps 0..n-2 (reduce-scatter) add what arrives; afterwards rank me holds the full sum of
    chunk (me + 1) mod n. Steps n-1..2n-3 (all-gather) pass the finished chunks on, overwriting.
    """
    n, me = view.size, view.me
    right, left = view.peer(me + 1), view.peer(me - 1)
    chunks = list(torch.tensor_split(t, n))
    incoming = scratch_buffer(chunks[0].numel(), t)  # the first chunk is the longest
    sent = 0
    for s in range(2 * (n - 1)):
        send_c, recv_c = (me - s) % n, (me - s - 1) % n
        buf = incoming[: chunks[recv_c].numel()]
        receive = [view.irecv(buf, left)] if buf.numel() else []  # posted before sending: no two ranks wait on each other
        if chunks[send_c].numel():  # fewer elements than ranks: empty chunks are not sent
            view.send(chunks[send_c], right)
        view.wait_all(receive)
        sent += nbytes(chunks[send_c])
        if s < n - 1:
            chunks[recv_c] += buf  # reduce-scatter: add
        else:
            chunks[recv_c].copy_(buf)  # all-gather: overwrite with the finished chunk
    return sent


# ---- optimisation: the pipelined ring --------------------------------------------------------------
SEGMENT_BYTES = 1 << 21  # a reduce-scatter step moves its chunk in pieces of this size, so adding overlaps receiving
StepCallback = Callable[[int, int, int], None]  # on_step(step, chunk sent, chunk received)


def _pieces(t: torch.Tensor) -> list[torch.Tensor]:
    """The same split on sender and receiver (they hold chunks of equal length); no empty pieces."""
    step = max(1, SEGMENT_BYTES // t.element_size())
    return [p for p in torch.split(t, step) if p.numel()]


def ring_reduce_scatter(chunks: list[torch.Tensor], view: GroupView, on_step: StepCallback | None = None) -> int:
    """Sum `chunks` (this rank's tensor cut into n pieces) over the group, each piece on one rank: on return
    chunks[(me + 1) % n] holds the group's sum of that piece (the others are partial sums). n-1 steps, each
    sending one piece to the right neighbour and adding the left neighbour's into ours; returns bytes sent."""
    return _ring_steps(chunks, view, 0, view.size - 1, on_step) if view.size > 1 else 0


def ring_all_gather(chunks: list[torch.Tensor], view: GroupView, on_step: StepCallback | None = None) -> int:
    """The other half: rank me's finished piece is chunks[(me + 1) % n] (where ring_reduce_scatter leaves it);
    on return every rank holds every rank's finished piece. n-1 steps of pass-it-on; returns bytes sent."""
    return _ring_steps(chunks, view, view.size - 1, 2 * (view.size - 1), on_step) if view.size > 1 else 0


def pipelined_ring_allreduce(t: torch.Tensor, view: GroupView, on_step: StepCallback | None = None) -> int:
    """ring_allreduce's steps, pipelined: the same sums and bytes, with the links kept busy (what "ring" runs).

    `on_step(s, sent_chunk, received_chunk)` is called when step s is complete (for tracing).

    It is ring_reduce_scatter followed by ring_all_gather on the n chunks of `t`, run as one pass, so that
    the seam between the halves is pipelined like every other step (same sums, same bytes as calling the
    halves one after the other).
    """
    if view.size == 1:
        return 0
    return _ring_steps(list(torch.tensor_split(t, view.size)), view, 0, 2 * (view.size - 1), on_step)


def _ring_steps(chunks: list[torch.Tensor], view: GroupView, first: int, last: int, on_step: StepCallback | None) -> int:
    """Steps first..last-1 of the 2(n-1)-step ring over `chunks`: steps below n-1 reduce, the rest gather.

    In step s a rank sends chunk (me - s) % n and receives chunk (me - s - 1) % n. Two things keep the
    links busy, as in NCCL's and gloo's own rings: what a rank sends in step s+1 is exactly the chunk it
    received in step s, so each piece goes on to the right neighbour as soon as it has arrived (and been
    added); and the receives of step s+1 are posted before step s is processed (into the other half
    of a double buffer), so the next step's data flows in while this step's is being added.
    """
    n, me = view.size, view.me
    longest = max(c.numel() for c in chunks)
    scratch = scratch_buffer(2 * longest, chunks[0]) if first < n - 1 else None  # only reduce steps need it
    right, left = view.peer(me + 1), view.peer(me - 1)
    pending: dict[int, list] = {c: [] for c in range(n)}  # sends still reading each chunk

    def send(c: int, piece: torch.Tensor) -> None:
        pending[c].append(view.isend(piece, right))

    def post_receives(s: int) -> list[tuple]:
        """Step s's receives: (work, buffer, destination piece); reduce steps land in scratch first."""
        c = (me - s - 1) % n  # the chunk arriving in step s (reduce-scatter and all-gather alike)
        if s < n - 1:
            assert scratch is not None
            half = scratch[(s % 2) * longest :][: chunks[c].numel()]
            targets = list(zip(_pieces(half), _pieces(chunks[c]), strict=True))
        else:
            for work in pending[c]:  # about to overwrite chunk c: its earlier sends must be done
                work.wait()
            pending[c] = []
            targets = [(p, p) for p in _pieces(chunks[c])]
        return [(view.irecv(buf, left), buf, dst) for buf, dst in targets]

    start = (me - first) % n  # the chunk this rank sends in step `first`
    for piece in _pieces(chunks[start]):
        send(start, piece)
    sent = nbytes(chunks[start])
    receives = post_receives(first)
    for s in range(first, last):
        c = (me - s - 1) % n
        current, receives = receives, (post_receives(s + 1) if s + 1 < last else [])
        for work, buf, dst in current:
            work.wait()
            if s < n - 1:
                dst.add_(buf)
            if s + 1 < last:
                send(c, dst)
        if s + 1 < last:
            sent += nbytes(chunks[c])
        if on_step is not None:
            on_step(s, (me - s) % n, c)
    for works in pending.values():
        for work in works:
            work.wait()
    return sent


# ---- the unchunked ring -----------------------------------------------------------------------
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
