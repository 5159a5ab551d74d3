"""How many cores this process may use: what ranks, thread counts and limits are sized by."""

from __future__ import annotations

import os


def cores_available() -> int:
    """Cores this process may run on: its affinity mask (what a container or taskset grants), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1
