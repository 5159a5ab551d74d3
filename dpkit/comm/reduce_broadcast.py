"""Reduce to one root, then broadcast from it: the parameter-server shape of an all-reduce.

The root receives (n-1)S and sends (n-1)S, so its link carries 2(n-1)S while the others move 2S:
time grows linearly with n however fast the other links are.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .group import GroupView, nbytes, scratch_like


def reduce_broadcast_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum `t` in place; group member 0 is the root. Returns bytes this rank sent."""
    n = view.size
    if n == 1:
        return 0
    if view.me == 0:
        parts = scratch_like(t, n - 1)
        for work in [dist.irecv(p, view.peer(i + 1), group=view.group) for i, p in enumerate(parts)]:
            work.wait()
        for p in parts:  # rank order: the same sum on every run
            t.add_(p)
        for work in [dist.isend(t, view.peer(i), group=view.group) for i in range(1, n)]:
            work.wait()
        return (n - 1) * nbytes(t)
    dist.send(t, view.peer(0), group=view.group)
    dist.recv(t, view.peer(0), group=view.group)
    return nbytes(t)
