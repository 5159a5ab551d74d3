"""Refuse, before any process starts, a run that cannot fit in this machine's memory (issue 29).

Why: a model too large for the machine (hidden=20000 is 48 GiB of parameters) would otherwise start
its ranks, swap the machine to a crawl, and end with the OOM killer's SIGKILL of one rank. The memory
model (dpkit.cost.memory, per process by each strategy's spec) predicts every process's peak; all the
processes of a run share this machine, so their peaks add up. That sum plus each process's own
interpreter and torch must fit in the memory available: MemAvailable (/proc/meminfo) or, in a container,
what its cgroup still allows, whichever is less. $DPKIT_SKIP_MEMORY_CHECK=1 skips the check, for those who
know better (the prediction is of fp32 training state; swap is not counted).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig

SKIP_ENV = "DPKIT_SKIP_MEMORY_CHECK"
PROCESS_BYTES = 200 * 2**20  # one rank's Python, torch and gloo before any tensor (RSS of a forked rank: ~150-200 MiB)
GIB = 2**30


def predicted_bytes(cfg: RunConfig) -> float:
    """Every process's predicted peak (the memory model), summed, plus PROCESS_BYTES per process."""
    from ..strategies.registry import spec_for

    frame = spec_for(cfg).predict_memory(cfg)
    return float(frame["mem_peak_bytes"].sum()) + PROCESS_BYTES * len(frame)


def available_bytes() -> float | None:
    """What this process may still allocate: MemAvailable, or less where a cgroup limit says so; None if unknown."""
    found: list[float] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(float(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2, as the container sees it
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and float(limit) < 2**60:
                found.append(float(limit) - float(Path(usage_file).read_text()))
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def skipped() -> bool:
    return os.environ.get(SKIP_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def check_fits(cfg: RunConfig) -> None:
    """ValueError naming what the run needs and what is there, when its predicted peak does not fit."""
    if skipped():
        return
    have = available_bytes()
    if have is None:
        return
    need = predicted_bytes(cfg)
    if need > have:
        raise ValueError(
            f"RunConfig(model={cfg.model!r}, hidden={cfg.model_hidden}, layers={cfg.model_layers}, "
            f"global_batch={cfg.global_batch}, world_size={cfg.world_size}) does not fit in this machine's memory: "
            f"its {cfg.num_processes} processes need "
            f"{need / GIB:.1f} GiB together (memory model: parameters, gradients, optimizer state, activations, "
            f"buffers, plus {PROCESS_BYTES / 2**20:.0f} MiB each), and {have / GIB:.1f} GiB is available; "
            f"use a smaller hidden/layers/global_batch, fewer processes, or set {SKIP_ENV}=1 to run anyway"
        )
