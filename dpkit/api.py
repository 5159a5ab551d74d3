"""run() and sweep(): the two calls notebooks, the CLI and tests make."""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig
from .results import ResultFolderError, RunResult
from .runtime.launch import RankFailedError, choose_backend, default_start_method, default_threads, launch
from .runtime.queue import machine_turn
from .strategies.registry import spec_for


def roles_of(cfg: RunConfig) -> list[str]:
    """A name for every process, used in error messages ('rank 2 (parameter server 0)')."""
    return spec_for(cfg).roles(cfg)


def run(cfg: RunConfig, out: str | Path | None = None, queue: bool = True) -> RunResult:
    """Train `cfg` on real ranks and return what happened; with `out`, also save it there.

    The ranks first wait for this machine's turn (dpkit.runtime.queue), so runs from other kernels do not
    share its cores with them; `queue=False` (or $DPKIT_QUEUE=off) starts at once. meta records the wait
    (queue_wait_s, queue_ahead_at_start) and the load average when the turn began and ended."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"run() takes a RunConfig, not {type(cfg).__name__}")
    nprocs = cfg.num_processes
    backend, device = choose_backend(cfg.device, cfg.backend, nprocs)
    threads = cfg.threads_per_rank or default_threads(nprocs)
    method = default_start_method()
    payload = {"config": cfg.to_dict(), "meta": {"start_method": method}}
    with tempfile.TemporaryDirectory(prefix="dpkit-run-") as tmp:
        with machine_turn(queue=queue) as turn:  # around the ranks only, not around loading the result
            try:
                launch(
                    "dpkit.runtime.training:rank_main",
                    payload,
                    nprocs,
                    tmp,
                    backend=backend,
                    threads_per_rank=threads,
                    timeout_s=cfg.timeout_s,
                    roles=roles_of(cfg),
                    start_method=method,
                    gloo_loop=cfg.gloo_loop,
                    out_dir_is_temporary=True,  # if this process dies, its ranks remove the folder too
                    queue=False,  # this run holds its turn already (or was told not to queue)
                )
            except RankFailedError as exc:
                hint = spec_for(cfg).failure_hint(exc.rank, exc.role)  # say what it means, not only which rank
                if hint:
                    raise RankFailedError(f"{hint}\n{exc}", exc.rank, exc.role, exc.exitcode, exc.traceback) from exc
                raise
            machine = turn.meta()
        result = RunResult.load(tmp)
    result.meta.update(machine)
    if out is not None:
        result.save(out)
    return result


def sweep(
    base: RunConfig,
    out: str | Path | None = None,
    progress: bool = True,
    repeats: int = 1,
    **grid: Iterable[Any],
) -> pd.DataFrame:
    """Run every combination of `grid` (field=list of values) on top of `base`, `repeats` times each; one row per config.

    repeats defaults to 1 only so older callers get what they got; anything a speedup or efficiency is read
    from should pass repeats=3 (the demo and the scaling panels do): one run's step time on a shared machine
    can be off by tens of percent. The repeats run round-robin (A, B, C, then A, B, C again), so a drift in the
    machine's load hits every config alike instead of all repeats of one. Each row holds the median over its
    repeats of step_time_s, compute_s, comm_s, exposed_comm_s, idle_s and bubble_s, samples_per_s =
    global_batch / that median, the spread (step_time_iqr_s, min, max, step_time_run_iqr_s) and the
    noisy / noise_reason verdict of flag_noise(); see summarize_repeats().

    With `out`, repeat 0 of each config is saved to out/<run_id>/ as it finishes and repeat r > 0 to
    out/<run_id>-r<r>/; repeats already there are loaded instead of rerun, so an interrupted sweep resumes
    where it stopped, repeat by repeat. A folder that does not verify (interrupted save, corrupt or missing
    file, older format) is rerun, with one line saying which and why; resumed is True only when every repeat
    of the row was loaded (resumed_repeats counts them).
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"sweep: repeats={repeats!r} is not allowed: a whole number of runs per config, at least 1")
    names = list(grid)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*(list(grid[n]) for n in names))]
    configs = [base.replace(**combo) for combo in combos]  # all validated before the first run starts
    runs: list[list[pd.DataFrame]] = [[] for _ in configs]
    order = [(r, i) for r in range(repeats) for i in range(len(configs))]  # round-robin: drift hits every config alike
    for r, i in tqdm(order, desc="sweep", disable=not progress):
        cfg = configs[i]
        folder = Path(out) / repeat_name(cfg, r) if out is not None else None
        result = _resume(folder, cfg) if folder is not None and folder.exists() else None
        resumed = result is not None
        if result is None:
            result = measured_run(cfg, run)  # the module's run, looked up now (tests count launches through it)
            if folder is not None:
                result.save(folder, overwrite=True)  # this repeat's folder: whatever did not verify there is replaced
        runs[i].append(run_row(result, repeat=r, resumed=resumed))
    if not configs:
        return pd.DataFrame()
    return summarize_repeats([pd.concat(group, ignore_index=True) for group in runs])


def _resume(folder: Path, cfg: RunConfig) -> RunResult | None:
    """The saved result of `cfg` in `folder`, or None (and one line saying why) when it must be rerun."""
    try:
        result = RunResult.load(folder)
    except ResultFolderError as exc:
        tqdm.write(f"sweep: rerunning {folder.name}: {exc}")
        return None
    if result.config.run_id() != cfg.run_id():
        tqdm.write(f"sweep: rerunning {folder.name}: result folder {folder} holds run {result.config.run_id()}")
        return None
    return result


# ---- spread: repeats, within-run steps, and the machine's load ----------------------------------
SPREAD_LIMIT = 0.2  # repeats' IQR (max-min below 3 repeats) over their median above this: noisy
RUN_SPREAD_LIMIT = 0.3  # one run's timed steps: IQR over the median step time above this: noisy
OUTSIDE_BUSY_LIMIT = 0.5  # processes outside the run busy on average at least this much count as competing
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


def cores_available() -> int:
    """Cores this process may run on: its affinity mask (what a container or taskset grants), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def busy_outside(me: int | None = None) -> int | None:
    """How many processes are runnable right now outside `me` (default: this one) and its descendants."""
    pids = runnable_outside(me)
    return None if pids is None else len(pids)


def runnable_outside(me: int | None = None) -> set[int] | None:
    """Processes runnable right now other than `me` (default: this one) and its descendants, which include
    a run's ranks; None where /proc cannot be read. Only the processes this one can see (its pid namespace)."""
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
    children: dict[int, list[int]] = {}
    for pid, (_, ppid) in table.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = {me}, [me]
    while todo:
        for child in children.get(todo.pop(), []):
            ours.add(child)
            todo.append(child)
    return {pid for pid, (state, _) in table.items() if state == b"R" and pid not in ours}


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
    with machine_turn(queue=queue), LoadSampler() as load:
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


def load_sweep(out: str | Path) -> pd.DataFrame:
    """Every run saved under `out`, as sweep() would have returned them.

    Folders that do not verify are skipped with a warning naming each, so one bad folder does not
    hide the others; hidden folders (.ipynb_checkpoints) and plain files are ignored.
    """
    frames = []
    for folder in sorted(Path(out).iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        try:
            frame = RunResult.load(folder).to_frame()
        except ResultFolderError as exc:
            warnings.warn(f"load_sweep: skipping {exc}", stacklevel=2)
            continue
        frame.insert(0, "run_id", folder.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
