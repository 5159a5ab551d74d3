"""How a message travels: the Transport under Comm's groups.

The plain Transport is torch.distributed as it is. The emulated one (dpkit.comm.emulation) has the same
methods and paces every message by a network link; nothing else in dpkit asks which one it holds. A
hand-written collective moves its data through its GroupView, which sends through the group's transport;
a backend collective whose messages dpkit cannot see goes through `hold`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..cost.model import Terms

R = TypeVar("R")


class Delivery:
    """When the transport delivers a collective run ahead on the comm thread (`at`: 0 = as soon as it is done)."""

    def __init__(self, posted_at: float) -> None:
        self.posted_at, self.at = posted_at, 0.0


class Transport:
    """Point-to-point messages with global ranks (as torch.distributed takes them) and backend collectives,
    on the machine as it is. The emulated link overrides every method (dpkit.comm.emulation.ports)."""

    backend_async = True  # a native collective may run as the backend's own async op (emulation holds it instead)

    def __init__(self, ranks_per_node: int = 1) -> None:
        self.ranks_per_node = ranks_per_node  # global ranks r*k .. r*k+k-1 share node r (RunConfig.ranks_per_node)

    def node_of(self, rank: int) -> int:
        """The node global rank `rank` is on (hierarchical all-reduce groups the ranks so)."""
        return rank // self.ranks_per_node

    def isend(self, t: torch.Tensor, dst: int, group: Any = None) -> Any:
        return dist.isend(t, dst, group=group)

    def irecv(self, t: torch.Tensor, src: int, group: Any = None) -> Any:
        return dist.irecv(t, src, group=group)

    def send(self, t: torch.Tensor, dst: int, group: Any = None) -> None:
        dist.send(t, dst, group=group)

    def recv(self, t: torch.Tensor, src: int | None, group: Any = None) -> int:
        """Blocking receive into `t` from global rank `src` (None: any rank); returns the sender's rank."""
        return dist.recv(t, src, group=group)

    def complete(self, works: list) -> None:
        """Finish posted sends and receives."""
        for w in works:
            w.wait()

    def hold(self, terms: Terms, group: Any, run: Callable[[], R], device: torch.device | None = None) -> R:
        """Run a backend collective (`terms`: its cost-model terms, which an emulated link takes the time of)."""
        return run()

    @contextmanager
    def deliver_later(self, posted_at: float) -> Iterator[Delivery]:
        """Around a collective run on the comm thread: the Delivery says when its result may be used."""
        yield Delivery(posted_at)

    def stats(self) -> dict | None:
        """Paced messages and held collectives, and how many could not be honoured (None: nothing is paced)."""
        return None

    def reset_counts(self) -> None:
        """Start counting afresh (nothing to count here)."""


PLAIN = Transport()
