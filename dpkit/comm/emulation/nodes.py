"""Emulated nodes: fast links inside a node, a slower one between nodes, each with its own ports.

RunConfig(ranks_per_node=k): global ranks r*k .. r*k+k-1 share node r. A message between two ranks of one
node is paced by the intra-node link (RunConfig.intra_node_link, e.g. NVLink), one between nodes by the
inter-node link (RunConfig.link, e.g. 1GbE). Each rank has an outgoing and an incoming port on each link,
so traffic inside a node does not queue behind traffic between nodes. A backend collective (native
all-reduce, broadcast) is held on the inter-node link when its group spans nodes (a flat ring crosses
the slow link: it runs at that link's pace), on the intra-node link when it stays inside one node.
Limit: a held collective books only that link's ports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ...cost.model import Terms
from ..transport import Transport
from .ports import LinkEmulator, PacedSend, complete_paced, deliver_later, paced_recv

T = TypeVar("T")


class NodesTransport(Transport):
    """One rank's ports on two emulated links: `intra` to the ranks of its own node, `inter` to the others."""

    backend_async = False

    def __init__(self, ranks_per_node: int, intra: LinkEmulator, inter: LinkEmulator) -> None:
        super().__init__(ranks_per_node)
        self.intra, self.inter = intra, inter

    def port(self, peer: int) -> LinkEmulator:
        """The link a message to or from global rank `peer` takes."""
        return self.intra if self.node_of(peer) == self.node_of(dist.get_rank()) else self.inter

    def isend(self, t: torch.Tensor, dst: int, group: Any = None) -> PacedSend:
        return self.port(dst).isend(t, dst, group)

    def irecv(self, t: torch.Tensor, src: int, group: Any = None) -> Any:
        return self.port(src).irecv(t, src, group)

    def send(self, t: torch.Tensor, dst: int, group: Any = None) -> None:
        self.port(dst).send(t, dst, group)

    def recv(self, t: torch.Tensor, src: int | None, group: Any = None) -> int:
        return paced_recv(t, src, group, self.port)

    def complete(self, works: list) -> None:
        complete_paced(works)  # each receive on the port of the link it came by

    def hold(self, terms: Terms, group: Any, run: Callable[[], T], device: torch.device | None = None) -> T:
        ranks = dist.get_process_group_ranks(group) if group is not None else range(dist.get_world_size())
        one_node = len({self.node_of(r) for r in ranks}) == 1
        return (self.intra if one_node else self.inter).hold(terms, group, run, device)

    def deliver_later(self, posted_at: float):  # type: ignore[override]  # the same context manager
        return deliver_later(posted_at)

    def stats(self) -> dict:
        """Both links' counts together (paced receives, held collectives, not honoured, worst lateness)."""
        a, b = self.intra.stats(), self.inter.stats()
        both = {k: max(a[k], b[k]) if k == "worst_late_s" else a[k] + b[k] for k in a}
        # what crossed between nodes into this rank, and how many of its late messages came inside its node
        return both | {"inter_node_bytes_in": b["bytes_in"], "intra_node_late": a["late"]}

    def reset_counts(self) -> None:
        self.intra.reset_counts()
        self.inter.reset_counts()
