"""How many cores this process may use, and the device model built on them: on CPU one rank is one core.

A fair speedup compares one device with N devices. On a CPU the device is a core, so every rank, and the
single-process baseline alike, runs 1 torch thread by default: a baseline with all the cores' threads is a
different device (and its thread team stalls as soon as one core is taken by something else). Past the
cores this process may use, ranks share cores, and every figure says so (cores_note).
"""

from __future__ import annotations

import os

ALL_CORES = "all cores"  # the labelled alternative: the baseline (and every rank) gets cores // processes threads
ONE_CORE = "1 core"
DEVICE_MODELS = (ONE_CORE, ALL_CORES)


def cores_available() -> int:
    """Cores this process may run on: its affinity mask (what a container or taskset grants), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def default_threads(nprocs: int, device_model: str = ONE_CORE) -> int:
    """Torch threads per rank: 1 (one rank = one core) by default; ALL_CORES splits the cores this process may
    use (a JupyterHub container granted 2 of a host's 64 cores has 2) over the ranks, at least 1 each."""
    if device_model not in DEVICE_MODELS:
        raise ValueError(f"device_model={device_model!r} is not allowed: choose one of {', '.join(map(repr, DEVICE_MODELS))}")
    if device_model == ONE_CORE:
        return 1
    return max(1, cores_available() // max(1, nprocs))


def cores_note(processes: int, threads_per_rank: int, cores: int | None = None) -> str:
    """What each process had, in words, for a figure: 'each process: 1 core', or that the ranks shared cores."""
    cores = cores_available() if cores is None else cores
    wanted = processes * threads_per_rank
    own = f"{threads_per_rank} core{'s' if threads_per_rank != 1 else ''}"
    if wanted <= cores:
        return f"each process: {own}" if processes > 1 else f"one process: {own}"
    return f"{processes} processes x {threads_per_rank} thread(s) share {cores} cores: not one core each"
