"""Keep gloo's I/O thread from taking the ranks' CPU time away on a shared host.

gloo's TCP transport does its socket I/O on one thread per process group ("gloo_tcp_loop"), and
while messages are in flight that thread calls epoll_wait in a tight loop (measured with `perf` on
torch 2.13: ~47% of a core per rank during an all-reduce loop, all of it in the kernel). When the
ranks have more runnable threads than the machine has cores, as on a laptop, a rank woken by its
message then waits for a spinning thread's time slice to end: a 64 KiB exchange between two ranks
on 2 cores took ~0.4 ms or ~4 ms, switching between the two from call to call.

Three modes, for the I/O threads only (the ranks' own threads are left alone):
- "low" (the default): nice 5. A rank thread that wakes up mostly preempts a spinning I/O thread, and
  the I/O thread still gets its fair share against other programs' work.
- "idle": the SCHED_IDLE class. Fastest on a quiet machine, but an idle-class thread runs only when a
  core has nothing else to run: with other programs busy it starves, and every message with it.
- "normal": as gloo made them (to see the effect, or where cores are spare).
Measured on the 2-core development VM, 2026-11-29 (median of 15 repeats over 3 launches, one run per
mode; "busy": two `yes > /dev/null` beside it), all-reduce times in ms, hand-written ring / gloo's own:

    mode     quiet 64 KiB  quiet 4 MiB  quiet 64 KiB  |  busy 64 KiB  busy 4 MiB   busy 4 MiB
             n=2           n=2          n=4           |  n=2          n=2          n=4
    idle     0.47 / 0.42   2.7 / 3.2    2.1 / 1.7     |  44 / 40      456 / 554    803 / 1078
    low      0.98 / 0.63   3.8 / 3.8    5.0 / 5.7     |  0.8 / 0.6    11 / 12      28 / 26
    normal   2.5 / 1.4     3.9 / 4.0    6.9 / 8.2     |  0.8 / 0.6    7.4 / 7.8    16 / 15

"idle" was the default until then: with two busy programs beside it, it made a plain data-parallel step
of world size 2 about 5x slower than "normal" (740-779 ms against 158-163 ms). Linux only; elsewhere, and under NCCL, nothing to do. An unprivileged process
cannot raise a thread's priority back (idle or low -> normal): apply() then leaves it and does not
count it.
"""

from __future__ import annotations

import os
from pathlib import Path

GLOO_LOOP_MODES = ("low", "idle", "normal")
LOW_NICE = 5  # "low": the I/O threads' nice value
LOOP_THREAD_NAME = "gloo_tcp_loop"
ENV_VAR = "DPKIT_GLOO_LOOP"  # the launcher's default mode for benchmarks (`dpkit bench`)


def check_mode(mode: str, where: str = "gloo_loop", note: str = "") -> str:
    """`mode`, or ValueError naming `where` it came from, the value and the modes (then `note`, if any)."""
    if mode not in GLOO_LOOP_MODES:
        raise ValueError(f"{where}={mode!r} is not allowed: choose one of {list(GLOO_LOOP_MODES)}{note}")
    return mode


def default_mode() -> str:
    """The mode `launch` uses when none is given: $DPKIT_GLOO_LOOP, else "low". RunConfig.gloo_loop's default
    too, so a bad variable is named as what it sets: the error would otherwise point at a field nobody passed."""
    note = f" (it sets the default of RunConfig.gloo_loop: fix or unset {ENV_VAR}, or pass gloo_loop)"
    return check_mode(os.environ.get(ENV_VAR, "low"), where=f"environment variable {ENV_VAR}", note=note)


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
    done = 0
    for tid in loop_threads():
        try:
            if mode == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, LOW_NICE if mode == "low" else 0)
            done += 1
        except OSError:  # raising a priority back (idle or low -> normal) may need privileges (PermissionError)
            continue
    return done


def policy_of(tid: int) -> str:
    """'low', 'idle' or 'normal' (or what else the thread has) for a thread: what tests and results report."""
    policy = os.sched_getscheduler(tid)
    if policy == os.SCHED_IDLE:
        return "idle"
    if policy != os.SCHED_OTHER:
        return str(policy)
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    return {0: "normal", LOW_NICE: "low"}.get(nice, f"nice {nice}")
