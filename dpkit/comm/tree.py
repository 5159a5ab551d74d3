"""Binomial-tree all-reduce: reduce up a tree, then broadcast down it, ceil(log2 n) rounds each.

Latency grows with log n instead of n, but every round moves the whole tensor, so for large
messages it loses to the chunked ring: t ~ 2 ceil(log2 n) (alpha + S/B).
"""

from __future__ import annotations

import torch

from .group import GroupView, nbytes, scratch_like


def _lowbit(i: int) -> int:
    return i & -i


def tree_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum `t` in place over the group (any size); returns bytes this rank sent."""
    n, me = view.size, view.me
    if n == 1:
        return 0
    top = 1
    while top < n:
        top <<= 1
    limit = _lowbit(me) if me else top  # children of `me` are me + 2^k for 2^k < limit
    sent = 0
    (scratch,) = scratch_like(t)
    mask = 1
    while mask < limit:  # reduce: gather children's partial sums, smallest subtree first
        if me + mask < n:
            view.recv(scratch, view.peer(me + mask))
            t.add_(scratch)
        mask <<= 1
    if me:
        view.send(t, view.peer(me - _lowbit(me)))
        sent += nbytes(t)
        view.recv(t, view.peer(me - _lowbit(me)))
    mask = limit >> 1
    while mask:  # broadcast: hand the total to children, largest subtree first
        if me + mask < n:
            view.send(t, view.peer(me + mask))
            sent += nbytes(t)
        mask >>= 1
    return sent
