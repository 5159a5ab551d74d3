"""Whatever a learner's function starts dies with its rank: each rank leads a process group of its own, and the
checker kills every such group after the launch (a forked child, a pool, would otherwise outlive the check and
keep the forkserver alive)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def own_process_group(out_dir: str, rank: int) -> None:
    """Make this rank the leader of its own process group and say so (pid{rank}): whatever the learner's function
    starts (a forked child, a pool) is in that group, and the checker kills the whole group after the launch."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    Path(out_dir, f"pid{rank}").write_text(str(os.getpid()))


def kill_process_groups(out_dir: str | Path, world: int) -> None:
    """Parent side: kill what is left of every rank's process group (the learner's children)."""
    for rank in range(world):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(Path(out_dir, f"pid{rank}").read_text()), signal.SIGKILL)
