"""How much to trust a measurement: a run's repeats, its steps' spread and the machine's load while it ran.

sweep() (dpkit.api) and the panels (dpkit.viz.widgets) take every run through measured_run, which records
how busy the rest of the machine was, and summarize their repeats here into medians with their spread and
a noisy / noise_reason verdict (flag_noise), so a figure can say when its numbers are not to be trusted.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .config import RunConfig
from .results import RunResult
from .runtime.cores import cores_available
from .runtime.launch import run_cores
from .runtime.queue import machine_turn

SPREAD_LIMIT = 0.2  # repeats' IQR (max-min below 3 repeats) over their median above this: noisy
RUN_SPREAD_LIMIT = 0.3  # one run's timed steps: IQR over the median step time above this: noisy
OUTSIDE_BUSY_LIMIT = 0.5  # processes outside the run busy on average at least this much count as competing
LATE_TOLERANCE = 0.1  # an emulated link's late messages may have added at most this share of the step (link_late_share)
MEDIAN_COLUMNS = (  # time measurements: the median over repeats (those a summary lacks are skipped)
    "step_time_s",
    "compute_s",
    "comm_s",
    "exposed_comm_s",
    "hidden_comm_s",
    "idle_s",
    "bubble_s",
    "injected_s",
    "bubble_fraction",
    "step_time_run_iqr_s",
)


def repeat_name(cfg: RunConfig, repeat: int) -> str:
    """The folder (and cache key) of one repeat: '<run_id>' for repeat 0, as before repeats existed, '<run_id>-r<k>' after."""
    return cfg.run_id() if repeat == 0 else f"{cfg.run_id()}-r{repeat}"


def busy_outside(me: int | None = None) -> int | None:
    """How many processes are runnable right now outside `me` (default: this one) and its descendants."""
    pids = runnable_outside(me)
    return None if pids is None else len(pids)


def runnable_outside(me: int | None = None) -> set[int] | None:
    """Processes runnable right now other than `me` (default: this one), its descendants, which include a run's
    ranks, and its ancestors: the notebook server, nbval or nbconvert that started this kernel wake up to carry the
    run's own output (a 0.2 s run sampled twice once counted one of them as "0.5 busy processes outside the
    run" on a quiet machine), nor the operating system's own kernel threads (rcu, kworker: a few microseconds
    each, caught by a sample now and then). None where /proc cannot be read. Only the processes this one can see."""
    me = os.getpid() if me is None else me
    table: dict[int, tuple[bytes, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        table[int(entry)] = (fields[0], int(fields[1]))
    if not table:
        return None
    runnable, ours = runnable_beside(table, me)
    cores = _run_cores(ours - {me} - _helpers())
    return runnable if cores is None else {pid for pid in runnable if _affinity(pid) & cores}


def runnable_beside(table: dict[int, tuple[bytes, int]], me: int) -> tuple[set[int], set[int]]:
    """From a process table {pid: (state, ppid)}: the runnable processes that compete with `me`'s run, and `me` with
    its descendants. Not counted: `me` and its descendants (the run), its ancestors (the session that started it),
    and the operating system's own threads (kthreadd, pid 2, and its children)."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = {me}, [me]
    while todo:
        for child in children.get(todo.pop(), []):
            ours.add(child)
            todo.append(child)
    session, up = set(), table.get(me, (b"", 0))[1]
    while up > 1 and up not in session:  # the ancestors, up to (not counting) init
        session.add(up)
        up = table.get(up, (b"", 0))[1]
    kernel = {pid for pid, (_, ppid) in table.items() if pid == 2 or ppid == 2}
    return {pid for pid, (state, _) in table.items() if state == b"R" and pid not in ours | session | kernel}, ours


def _helpers() -> set[int]:
    """multiprocessing's forkserver and resource tracker: our children, but not the run's ranks."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    pids = {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }
    return {p for p in pids if isinstance(p, int)}


def _affinity(pid: int) -> set[int]:
    try:
        return set(os.sched_getaffinity(pid))
    except OSError:  # gone, or not ours to ask: count it
        return set(range(os.cpu_count() or 1))


def _run_cores(descendants: set[int]) -> set[int] | None:
    """The cores this process's ranks are pinned to (core slots: dpkit.runtime.queue), or None when they may use
    every core. A process pinned to other cores (another learner's run in its own slot) takes nothing from
    them, so it is not counted as load outside the run."""
    everything = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if not descendants or everything is None:
        return None
    cores: set[int] = set()
    for pid in descendants:
        cores |= _affinity(pid)
    return None if not cores or cores >= everything else cores


class LoadSampler:
    """Counts, on a thread, the runnable processes outside this one and its children while a run is measured.

    Why: on a shared machine another job takes cores from the ranks, and the step times then measure that
    job, not the strategy. One look at /proc costs a few ms, so it looks every `interval_s` (plus once at the
    start and once at the end), and `mean` is the average count: 1.0 is one process busy the whole time.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dpkit-load-sampler", daemon=True)

    def _sample(self) -> None:
        count = busy_outside()
        if count is not None:
            self.samples.append(count)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples)) if self.samples else math.nan


def measured_run(cfg: RunConfig, runner: Callable[[RunConfig], RunResult], queue: bool = True) -> RunResult:
    """runner(cfg), with the machine's load while it ran recorded in result.meta['load'] (saved with the result,
    so a resumed run keeps the load it was measured under). The machine's turn is taken first (a run() inside
    keeps it), so the load is sampled while the run runs, not while it waits for other kernels' runs."""
    with machine_turn(queue=queue, cores=run_cores(cfg)), LoadSampler() as load:  # the run's core slot, not the machine
        result = runner(cfg)
    result.meta["load"] = {"busy_outside": round(load.mean, 2), "samples": len(load.samples), "cpu_count": cores_available()}
    return result


def _iqr(values: Sequence[float] | pd.Series) -> float:
    """Interquartile range (linear interpolation between samples); NaN for no values."""
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if not arr.size:
        return math.nan
    q25, q75 = np.percentile(arr, [25, 75])
    return float(q75 - q25)


def within_run_iqr(result: RunResult) -> float:
    """IQR of one run's timed step times (each step: its slowest rank, as summarize() takes them): how steady the run was."""
    stats = result.step_stats()
    timed = stats[stats.step >= result.config.warmup]
    return _iqr(timed.groupby("step").step_time_s.max()) if len(timed) else math.nan


def run_row(result: RunResult, repeat: int = 0, resumed: bool | None = None) -> pd.DataFrame:
    """One run as one row (to_frame() with run_id first) plus its repeat index, within-run spread and load."""
    frame = result.to_frame()
    frame.insert(0, "run_id", result.config.run_id())
    frame["repeat"] = repeat
    if resumed is not None:
        frame["resumed"] = resumed
    frame["step_time_run_iqr_s"] = within_run_iqr(result)
    load = result.meta.get("load") or {}
    other = load.get("busy_outside")
    other = math.nan if other is None else float(other)
    own = _own_busy(result.summary)
    frame["other_busy_processes"] = other
    frame["busy_processes"] = other + own
    frame["cpu_count"] = load.get("cpu_count", result.meta.get("cpu_count", math.nan))
    return frame


def _own_busy(summary: dict[str, Any] | pd.Series) -> float:
    """Cores a run keeps busy: its processes times their compute threads (NaN when it does not say)."""
    procs, threads = summary.get("num_processes"), summary.get("threads_per_rank")
    if procs is None or threads is None or pd.isna(procs) or pd.isna(threads):
        return math.nan
    return float(procs) * float(threads)


def summarize_repeats(groups: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One row per group of per-run rows (the repeats of one config, as run_row() makes them).

    Config fields and the rest come from the first repeat; the MEDIAN_COLUMNS are medians over the repeats;
    samples_per_s is global_batch / median step time, so speedups agree whichever column they divide.
    step_time_iqr_s is the interquartile range over the repeats from 3 repeats on; with 2 repeats, where
    quartiles mean little, it is max - min (and 0 for 1 repeat). busy_processes and other_busy_processes
    are the worst repeat's. Then flag_noise() adds noisy and noise_reason.
    """
    rows = []
    for runs in groups:
        runs = runs.reset_index(drop=True)
        row = runs.iloc[0].to_dict()
        row.pop("repeat", None)
        times = runs.step_time_s.astype(float)
        for col in MEDIAN_COLUMNS:
            if col in runs.columns:
                row[col] = float(runs[col].astype(float).median())
        median = row["step_time_s"]
        if "global_batch" in row:
            row["samples_per_s"] = row["global_batch"] / median if median > 0 else math.nan
        n = len(runs)
        row["step_time_iqr_s"] = _iqr(times) if n >= 3 else float(times.max() - times.min())
        row["step_time_min_s"] = float(times.min())
        row["step_time_max_s"] = float(times.max())
        row["repeats"] = n
        if "resumed" in runs.columns:
            row["resumed"] = bool(runs.resumed.all())
            row["resumed_repeats"] = int(runs.resumed.sum())
        for col in ("busy_processes", "other_busy_processes"):
            if col in runs.columns:
                row[col] = float(runs[col].max()) if runs[col].notna().any() else math.nan
        rows.append(row)
    return flag_noise(pd.DataFrame(rows))


def noise_reasons(row: dict[str, Any] | pd.Series) -> list[str]:
    """Why one row's numbers cannot be trusted as they stand, one phrase per reason; empty when nothing says so.

    Three signs, each checked only where the row has its columns: the repeats disagree (IQR, or max - min
    below 3 repeats, over the median > SPREAD_LIMIT); the steps of a run disagree (within-run IQR over the
    median > RUN_SPREAD_LIMIT); or processes outside the run were busy (on average >= OUTSIDE_BUSY_LIMIT)
    while the run and they together wanted more cores than there are.
    """

    def num(col: str) -> float:
        value = row.get(col)
        try:
            return math.nan if value is None else float(value)
        except (TypeError, ValueError):
            return math.nan

    reasons = []
    median, n = num("step_time_s"), num("repeats")
    spread, run_spread = num("step_time_iqr_s"), num("step_time_run_iqr_s")
    if median > 0 and n >= 2 and spread / median > SPREAD_LIMIT:
        what = "spread" if n >= 3 else "spread (max - min)"
        reasons.append(f"{what} {spread / median:.0%} of the median over {n:.0f} repeats")
    if median > 0 and run_spread / median > RUN_SPREAD_LIMIT:
        reasons.append(f"steps within a run spread {run_spread / median:.0%} of the median step")
    busy, other, cores = num("busy_processes"), num("other_busy_processes"), num("cpu_count")
    if math.isnan(other):
        other = busy  # a frame that only says how many were busy: count them all as outside the run
    if cores > 0 and other >= OUTSIDE_BUSY_LIMIT and busy > cores:
        reasons.append(f"{busy:.3g} busy processes on {cores:.0f} cores while measuring ({other:.3g} of them outside the run)")
    return reasons


def flag_noise(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` plus noisy (bool) and noise_reason ('; '-joined noise_reasons(), '' when not noisy), row by row."""
    out = frame.copy()
    reasons = ["; ".join(noise_reasons(row)) for _, row in out.iterrows()]
    out["noisy"] = [bool(r) for r in reasons]
    out["noise_reason"] = reasons
    return out


def summarize_time_to_target(groups: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per group of repeats (rows with the summary's steps_to_target, time_to_target_s): the median time to
    target, its range (time_to_target_min_s, _max_s), the median steps to target and how many repeats
    reached it (target_reached_repeats). A repeat that never reached the target counts as infinitely slow."""
    rows = []
    for runs in groups:
        t = pd.to_numeric(runs["time_to_target_s"], errors="coerce").fillna(math.inf)
        s = pd.to_numeric(runs["steps_to_target"], errors="coerce").fillna(math.inf)
        reached = int(np.isfinite(t).sum())
        rows.append(
            {
                "time_to_target_s": float(np.median(t)) if reached else math.nan,
                "time_to_target_min_s": float(t.min()) if reached else math.nan,
                "time_to_target_max_s": float(t.max()) if reached else math.nan,
                "steps_to_target": float(np.median(s)) if reached else math.nan,
                "target_reached_repeats": reached,
            }
        )
    return pd.DataFrame(rows)


# ---- withholding: a speedup that cannot be measured now is not drawn ----------------------------------
WAITING_LIMIT = 0.25  # ranks waiting for a core (wall - CPU of compute) above this share of the step: withheld
CORES_TOLERANCE = 1.2  # a speedup above what the cores allow by more than this factor (caches give some): withheld
SCALED_COLUMNS = ("speedup", "speedup_low", "speedup_high", "efficiency", "efficiency_low", "efficiency_high")


def _num(row: dict[str, Any] | pd.Series, col: str) -> float:
    value = row.get(col)
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def cores_used(row: dict[str, Any] | pd.Series) -> float:
    """Cores a run could keep busy: min(cores, processes x threads per process); NaN when the row does not say."""
    cores, procs, threads = _num(row, "cpu_count"), _num(row, "num_processes"), _num(row, "threads_per_rank")
    return math.nan if math.isnan(cores + procs + threads) else min(cores, procs * threads)


def measurement_problems(row: dict[str, Any] | pd.Series) -> list[str]:
    """Why one row's own step time cannot stand as a measurement now, in words ('' where it can)."""
    out = []
    other, busy, cores = _num(row, "other_busy_processes"), _num(row, "busy_processes"), _num(row, "cpu_count")
    if cores > 0 and other >= OUTSIDE_BUSY_LIMIT and busy > cores:
        out.append(
            f"{other:.2g} busy process{'' if f'{other:.2g}' == '1' else 'es'} outside the run ({busy:.2g} busy on {cores:.0f} cores)"
        )
    step, waiting = _num(row, "step_time_s"), _num(row, "waiting_for_core_s")
    if step > 0 and waiting / step > WAITING_LIMIT:
        out.append(f"the ranks waited for a core {waiting / step:.0%} of the step")
    median, n, spread = step, _num(row, "repeats"), _num(row, "step_time_iqr_s")
    if median > 0 and n >= 2 and spread / median > SPREAD_LIMIT:
        out.append(f"the repeats disagree by {spread / median:.0%} of the median")
    run_spread = _num(row, "step_time_run_iqr_s")
    if median > 0 and run_spread / median > RUN_SPREAD_LIMIT:
        out.append(f"the steps of a run disagree by {run_spread / median:.0%}")
    if not out and str(row.get("noisy")) == "True":
        out.append(str(row.get("noise_reason") or "flagged noisy"))  # a frame that carries its verdict only
    return out


def withhold(frame: pd.DataFrame, x: str = "world_size", hue: str | None = None) -> pd.DataFrame:
    """The one rule for every figure and table: a speedup and efficiency that cannot be measured now are withheld.

    A row's speedup (from dpkit.viz.plots.scaling_frame) is withheld when its own measurement or its baseline's
    has a problem (measurement_problems: outside load, waiting for a core, repeats or steps that disagree), or
    when it exceeds what the cores allow (cores_used here over the baseline's, times CORES_TOLERANCE). Adds
    `withheld` (the reason, 'not measurable now: ...'; '' where shown) and speedup_measured (the number as it
    came out, for tables that say what was withheld); the SCALED_COLUMNS become NaN where withheld, so no
    figure can draw them. Rows without the columns a rule needs are not judged by that rule.
    """
    out = frame.copy()
    out["speedup_measured"] = out["speedup"] if "speedup" in out.columns else math.nan
    reasons = [""] * len(out)
    x0 = out[x].min()
    groups = out.groupby(hue, sort=False, dropna=False) if hue else [(None, out)]
    for _, g in groups:
        base = g[g[x] == x0]
        base = base if len(base) else out[out[x] == x0]
        base_problems = [p for _, b in base.iterrows() for p in measurement_problems(b)]
        base_cores = float(base.apply(cores_used, axis=1).median()) if len(base) else math.nan
        for i in g.index:
            row = out.loc[i]
            problems = measurement_problems(row)[:2]  # the first two say enough; the table has every number
            if row[x] != x0:
                if not problems and base_problems:
                    problems.append(f"the baseline's {base_problems[0]}")
                limit = cores_used(row) / base_cores if base_cores > 0 else math.nan
                speedup = _num(row, "speedup")
                if limit > 0 and speedup > limit * CORES_TOLERANCE:
                    problems.append(f"speedup {speedup:.2f} is above the {limit:.2g}x the cores allow")
            if problems:
                reasons[out.index.get_loc(i)] = "not measurable now: " + "; ".join(dict.fromkeys(problems))
    out["withheld"] = reasons
    hidden = out.withheld != ""
    for col in SCALED_COLUMNS:
        if col in out.columns:
            out.loc[hidden, col] = math.nan
    return out


def link_late_share(result: RunResult) -> float:
    """At most how much of the run's median step its emulated link's late messages can have added: their lateness
    (every process's, added up) per timed step over the step. A bound: a message is late by however long after its
    emulated arrival the rank got it, also when the rank itself was busy. 0 without a link or a late message."""
    late = result.meta.get("link_not_honoured")
    if not late:
        return 0.0
    link = result.meta.get("link") or {}
    timed = max(1, result.config.steps - result.config.warmup)
    late_s = link.get("late_s")
    if late_s is None:  # a record from before late_s: every late message as late as the worst
        late_s = late["messages"] * late["worst_late_s"]
    step = float(result.summary.get("step_time_s") or math.nan)
    return late_s / timed / step if step > 0 else math.inf


def link_problem(result: RunResult) -> str | None:
    """Why the run measured this machine rather than its emulated link, or None: its late messages can have added
    more than LATE_TOLERANCE of its step. A few messages late by a fraction of a millisecond do not withhold it."""
    share = link_late_share(result)
    if share <= LATE_TOLERANCE:
        return None
    late = result.meta["link_not_honoured"]
    return (
        f"the link was not honoured: {late['messages']} of {late['of']} messages late, which can have added "
        f"{share:.0%} of a step (at most {LATE_TOLERANCE:.0%} is let through)"
    )
