"""Bytes a parameter-server rank sent: read off what Comm recorded on the rank's timeline, never counted by
the algorithm itself (its worker and server classes only move the tensors)."""

from __future__ import annotations

from ...runtime.recorder import Recorder


def bytes_sent(recorder: Recorder) -> int:
    """Bytes of every message this rank sent, as Comm recorded them with each send (warm-up steps too)."""
    return sum(span.bytes for span in recorder.spans if span.kind == "comm")
