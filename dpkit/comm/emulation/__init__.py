"""Emulated network links: the one place in dpkit that knows whether a run's messages are paced.

`network_for(cfg)` reads the run's link knobs (RunConfig.link, ranks_per_node, intra_node_link) once;
`transport_for(network)` is where that enters Comm: the plain transport (torch.distributed as it is), a
LinkEmulator (ports.py) pacing every message by one link, or a NodesTransport (nodes.py) with a link
inside each node and another between nodes. config.py validates and labels the link knobs.
"""

from __future__ import annotations

from ...cost.model import Link
from ..transport import PLAIN, Transport
from .config import UNPACED, Nodes, network_for
from .nodes import NodesTransport
from .ports import LinkEmulator, sleep_until


def transport_for(network: Link | Nodes | None) -> Transport:
    """The transport a rank's messages take: paced by one link, by emulated nodes' two links, or the machine
    as it is (None). A Nodes with neither link paced still groups the ranks (hierarchical all-reduce)."""
    if network is None:
        return PLAIN
    if isinstance(network, Link):
        return LinkEmulator(network)
    if network.intra is None and network.inter is None:
        return Transport(network.ranks_per_node)
    k = network.ranks_per_node
    return NodesTransport(k, LinkEmulator(network.intra or UNPACED, k), LinkEmulator(network.inter or UNPACED, k))


__all__ = ["LinkEmulator", "Nodes", "NodesTransport", "network_for", "sleep_until", "transport_for"]
