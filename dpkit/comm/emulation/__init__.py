"""Emulated network links: the one place in dpkit that knows whether a run's messages are paced.

`transport_for(link)` is where the run's link (RunConfig.link, as a cost-model Link) enters: Comm asks it
once for its transport, the plain one (torch.distributed as it is) or a LinkEmulator (ports.py) pacing
every message by the link. config.py validates and labels the link knobs.
"""

from __future__ import annotations

from ...cost.model import Link
from ..transport import PLAIN, Transport
from .ports import LinkEmulator, sleep_until


def transport_for(link: Link | None) -> Transport:
    """The transport a rank's messages take: paced by `link`, or the machine as it is (None)."""
    return PLAIN if link is None else LinkEmulator(link)


__all__ = ["LinkEmulator", "sleep_until", "transport_for"]
