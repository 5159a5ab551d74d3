"""Every message between ranks: Comm (timed, counted), the backend's own collectives and hand-written ones over send/recv."""

from .algorithms import ALGORITHMS, allreduce_sum, predicted_bytes_sent
from .comm import AsyncWork, Comm, Group, Pending
from .group import GroupView

__all__ = ["ALGORITHMS", "AsyncWork", "Comm", "Group", "GroupView", "Pending", "allreduce_sum", "predicted_bytes_sent"]
