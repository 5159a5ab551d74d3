"""Ring all-reduces built from send/recv.

Chunked ring: reduce-scatter then all-gather, 2(n-1) steps each moving S/n bytes, so a rank sends
2(n-1)/n * S in all: bandwidth-optimal. Whole-tensor ring: (n-1) steps each moving the whole S,
as many tutorials write it: simple, but every link carries n/2 times more bytes.
"""

from __future__ import annotations

import torch

from .group import GroupView, exchange


def ring_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum the 1-D tensor `t` over the group in place; returns bytes this rank sent."""
    n, me = view.size, view.me
    if n == 1:
        return 0
    chunks = list(torch.tensor_split(t, n))
    scratch = torch.empty(max(c.numel() for c in chunks), dtype=t.dtype, device=t.device)
    sent = 0
    # reduce-scatter: after step i, chunk (me - i - 1) holds the sum over i + 2 ranks
    for i in range(n - 1):
        out_c, in_c = chunks[(me - i) % n], chunks[(me - i - 1) % n]
        buf = scratch[: in_c.numel()]
        sent += exchange(view, out_c, me + 1, buf, me - 1)
        in_c.add_(buf)
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
