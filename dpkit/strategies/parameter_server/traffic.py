"""Bytes a parameter-server rank sent: read off what Comm recorded on the rank's timeline, never counted by
the algorithm itself (its worker and server classes only move the tensors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...comm import Comm


def bytes_sent(comm: Comm) -> int:
    """Bytes of every message this rank sent, as `comm` recorded them with each send (warm-up steps too)."""
    return sum(span.bytes for span in comm.recorder.spans if span.kind == "comm")
