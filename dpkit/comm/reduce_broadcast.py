"""Reduce to one root, then broadcast from it: the parameter-server shape of an all-reduce.

The root receives (n-1)S and sends (n-1)S, so its link carries 2(n-1)S while the others move 2S:
time grows linearly with n however fast the other links are.
"""

from __future__ import annotations

import torch

from .group import GroupView, nbytes, scratch_like


def reduce_broadcast_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum `t` in place; group member 0 is the root. Returns bytes this rank sent."""
    n = view.size
    if n == 1:
        return 0
    if view.me == 0:
        parts = scratch_like(t, n - 1)
        view.wait_all([view.irecv(p, view.peer(i + 1)) for i, p in enumerate(parts)])
        for p in parts:  # rank order: the same sum on every run
            t.add_(p)
        view.wait_all([view.isend(t, view.peer(i)) for i in range(1, n)])
        return (n - 1) * nbytes(t)
    view.send(t, view.peer(0))
    view.recv(t, view.peer(0))
    return nbytes(t)
