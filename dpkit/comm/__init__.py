"""Collectives: the backend's own and hand-written ones over send/recv, all behind one recorder."""

from .algorithms import ALGORITHMS, allreduce_sum, predicted_bytes_sent
from .comm import AsyncWork, Comm
from .group import GroupView

__all__ = ["ALGORITHMS", "AsyncWork", "Comm", "GroupView", "allreduce_sum", "predicted_bytes_sent"]
