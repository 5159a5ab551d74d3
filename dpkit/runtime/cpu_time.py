"""CPU time per step beside wall time: what tells a slow step from a step that waited for a core.

A rank's wall-clock step time counts every instant, including those its process was runnable but another
program had the core. The process's CPU clock (all its threads: torch's and gloo's) only runs while it is on
a core. So the part of a step's compute that the CPU clock does not cover is time spent waiting for a core,
the other programs' doing, not the strategy's: it is shown as its own quantity, never as compute or comm.
"""

from __future__ import annotations

import math
import time


class StepCpuClock:
    """This process's CPU seconds (time.process_time: every thread of it) between begin() and end()."""

    def __init__(self) -> None:
        self._start = math.nan

    def begin(self) -> None:
        self._start = time.process_time()

    def end(self) -> float:
        return time.process_time() - self._start


def waiting_for_core(compute_s: float, cpu_s: float) -> float:
    """Seconds of a step's compute the process spent off a core: compute (wall) minus the CPU seconds, at least 0.

    A step's wall time is compute + exposed comm + idle (+ bubble, injected delay); blocked in comm or idle the
    rank needs no core, so what the CPU clock misses of the rest is waiting. CPU spent by comm threads and
    several torch threads make cpu_s larger, so this is a lower bound (NaN when cpu_s was not recorded)."""
    if math.isnan(cpu_s) or math.isnan(compute_s):
        return math.nan
    return max(0.0, compute_s - cpu_s)
