"""Bytes a parameter-server rank sent: read off what Comm recorded on the rank's timeline, never counted by
the algorithm itself (its worker and server classes only move the tensors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...comm import Comm


def bytes_sent(comm: Comm) -> int:
    """Bytes of every message this rank sent, as `comm` recorded them with each send (warm-up steps too)."""
    return sum(span.bytes for span in comm.recorder.spans if span.kind == "comm")


def bytes_sent_as(comm: Comm, name: str) -> int:
    """Bytes of the messages this rank sent under timeline name `name` (e.g. replication to a backup)."""
    return sum(span.bytes for span in comm.recorder.spans if span.kind == "comm" and span.name == name)


def received(comm: Comm, name: str) -> int:
    """How many messages this rank received under timeline name `name` (a receive records its wait, not bytes)."""
    return sum(1 for span in comm.recorder.spans if span.name == name)
