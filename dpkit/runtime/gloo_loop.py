"""Keep gloo's I/O thread from taking the ranks' CPU time away on a shared host.

gloo's TCP transport does its socket I/O on one thread per process group ("gloo_tcp_loop"), and
while messages are in flight that thread calls epoll_wait in a tight loop (measured with `perf` on
torch 2.13: ~47% of a core per rank during an all-reduce loop, all of it in the kernel). When the
ranks have more runnable threads than the machine has cores, as on a laptop, a rank woken by its
message then waits for a spinning thread's time slice to end: a 64 KiB exchange between two ranks
on 2 cores took ~0.4 ms or ~4 ms, switching between the two from call to call.

mode "idle" moves those threads to the SCHED_IDLE class: they still do all the I/O whenever a core
has nothing else to run, but any rank thread that wakes up preempts them at once. Measured on the
2-core development VM (median of 25, 5 launches): the hand-written ring at n=2, 64 KiB went from
0.8-3.3 ms (launch to launch) to 0.41-0.47 ms, at n=4 from 4.7-6.4 ms to 1.8-2.2 ms; 16 MiB at
n=4 ~10% slower (the I/O thread gets less time). mode "normal" leaves them as gloo made them, to
see the effect or where cores are spare. Linux only; elsewhere, and under NCCL, nothing to do.
"""

from __future__ import annotations

import os
from pathlib import Path

GLOO_LOOP_MODES = ("idle", "normal")
LOOP_THREAD_NAME = "gloo_tcp_loop"
ENV_VAR = "DPKIT_GLOO_LOOP"  # the launcher's default mode for benchmarks (`dpkit bench`)


def check_mode(mode: str, where: str = "gloo_loop", note: str = "") -> str:
    """`mode`, or ValueError naming `where` it came from, the value and the modes (then `note`, if any)."""
    if mode not in GLOO_LOOP_MODES:
        raise ValueError(f"{where}={mode!r} is not allowed: choose one of {list(GLOO_LOOP_MODES)}{note}")
    return mode


def default_mode() -> str:
    """The mode `launch` uses when none is given: $DPKIT_GLOO_LOOP, else "idle". RunConfig.gloo_loop's default
    too, so a bad variable is named as what it sets: the error would otherwise point at a field nobody passed."""
    note = f" (it sets the default of RunConfig.gloo_loop: fix or unset {ENV_VAR}, or pass gloo_loop)"
    return check_mode(os.environ.get(ENV_VAR, "idle"), where=f"environment variable {ENV_VAR}", note=note)


def loop_threads() -> list[int]:
    """Thread ids of this process's gloo I/O threads (one per gloo process group created so far)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    out = []
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() == LOOP_THREAD_NAME:
                out.append(int(task.name))
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(out)


def apply(mode: str) -> int:
    """Put this process's gloo I/O threads in `mode`; returns how many are now in it. Idempotent, so
    call it again after creating process groups (each has its own thread)."""
    check_mode(mode)
    if not hasattr(os, "sched_setscheduler"):
        return 0
    policy = os.SCHED_IDLE if mode == "idle" else os.SCHED_OTHER
    done = 0
    for tid in loop_threads():
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            done += 1
        except OSError:  # raising back from SCHED_IDLE may need privileges (PermissionError)
            continue
    return done


def policy_of(tid: int) -> str:
    """'idle' or 'normal' (or the raw policy number) for a thread: what tests and results report."""
    policy = os.sched_getscheduler(tid)
    return {os.SCHED_IDLE: "idle", os.SCHED_OTHER: "normal"}.get(policy, str(policy))
