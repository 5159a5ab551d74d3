"""Hierarchical all-reduce: a ring inside each node, a ring across nodes on 1/r of the data, a ring inside again.

With r ranks per node on N nodes: reduce-scatter within each node (each rank then holds its node's sum
of one r-th of the tensor), all-reduce that r-th across the nodes among the ranks with the same place in
their node, all-gather within each node. The slow link between nodes carries 2(N-1)/N * S/r per rank
instead of the flat ring's 2(n-1)/n * S: t ~ 2(r-1)/r S/B_intra + 2(N-1)/N (S/r)/B_inter + latencies
(dpkit.cost.model.hierarchical_time). Nodes are the transport's (RunConfig.ranks_per_node): global ranks
i*r .. i*r+r-1 share node i. A group whose members do not fill equal nodes runs the flat ring.
"""

from __future__ import annotations

import torch

from .group import GroupView
from .ring import pipelined_ring_allreduce, ring_all_gather, ring_reduce_scatter


def node_views(view: GroupView) -> tuple[GroupView, GroupView] | None:
    """(this rank's node, the ranks with its place in the other nodes) as groups of their own, or None when
    the group's members do not split into equal nodes of more than one rank, more than one node."""
    nodes: dict[int, list[int]] = {}
    for rank in view.ranks:
        nodes.setdefault(view.transport.node_of(rank), []).append(rank)
    members = list(nodes.values())
    r = len(members[0])
    if r == 1 or len(members) == 1 or any(len(m) != r for m in members):
        return None
    mine = nodes[view.transport.node_of(view.ranks[view.me])]
    place = mine.index(view.ranks[view.me])
    across = [m[place] for m in members]
    node = GroupView(tuple(mine), place, view.group, view.transport)
    return node, GroupView(tuple(across), across.index(view.ranks[view.me]), view.group, view.transport)


def hierarchical_allreduce(t: torch.Tensor, view: GroupView) -> int:
    """Sum the 1-D tensor `t` over the group in place; returns bytes this rank sent."""
    split = node_views(view)
    if split is None:
        return pipelined_ring_allreduce(t, view)
    node, across = split
    chunks = list(torch.tensor_split(t, node.size))
    sent = ring_reduce_scatter(chunks, node)  # chunks[place + 1] now holds this node's sum of that chunk
    sent += pipelined_ring_allreduce(chunks[(node.me + 1) % node.size], across)  # the same chunk on every node
    sent += ring_all_gather(chunks, node)
    return sent
