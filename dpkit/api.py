"""run() and sweep(): the two calls notebooks, the CLI and tests make."""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig
from .measure import measured_run, repeat_name, run_row, summarize_repeats, summarize_time_to_target
from .results import ResultFolderError, RunResult
from .runtime import checkpoint
from .runtime.launch import (
    RankFailedError,
    choose_backend,
    default_start_method,
    default_threads,
    launch,
    temporary_run_folder,
)
from .runtime.memory_fit import check_fits
from .runtime.queue import machine_turn
from .runtime.recovery import launch_with_recovery, replication_meta
from .strategies.registry import spec_for


def roles_of(cfg: RunConfig) -> list[str]:
    """A name for every process, used in error messages ('rank 2 (parameter server 0)')."""
    return spec_for(cfg).roles(cfg)


def run(cfg: RunConfig, out: str | Path | None = None, queue: bool = True, resume_from: str | Path | None = None) -> RunResult:
    """Train `cfg` on real ranks and return what happened; with `out`, also save it there.

    With cfg.checkpoint_every the ranks write checkpoints into out/checkpoints/ as they train (or into
    resume_from's, or a temporary folder); `resume_from` (a result folder, or its checkpoints/) continues from
    its last checkpoint that verifies (dpkit.runtime.checkpoint), and ends as the uninterrupted run would.

    The ranks first wait for this machine's turn (dpkit.runtime.queue), so runs from other kernels do not
    share its cores with them; `queue=False` (or $DPKIT_QUEUE=off) starts at once. meta records the wait
    (queue_wait_s, queue_ahead_at_start) and the load average when the turn began and ended."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"run() takes a RunConfig, not {type(cfg).__name__}")
    nprocs = cfg.num_processes
    backend, device = choose_backend(cfg.device, cfg.backend, nprocs)
    threads = cfg.threads_per_rank or default_threads(nprocs)
    method = default_start_method()
    payload: dict[str, Any] = {"config": cfg.to_dict(), "meta": {"start_method": method}}
    check_fits(cfg)  # a run its machine cannot hold is refused before any process starts
    resume_dir = checkpoint.resume_folder(cfg, resume_from)  # ValueError before any process starts
    # the folder only once the turn is ours and the forkserver runs: a kill -9 before leaves none behind
    with machine_turn(queue=queue, cores=nprocs * threads) as turn, temporary_run_folder(method) as tmp:
        payload["checkpoint_dir"] = checkpoint.checkpoint_folder(cfg, out, resume_from, tmp)
        payload["resume_dir"] = resume_dir
        try:
            launch_ranks = functools.partial(
                launch,
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
            recovery = launch_with_recovery(cfg, payload, launch_ranks, tmp)  # ps_recovery: a dead server restarts the run
        except RankFailedError as exc:
            hint = spec_for(cfg).failure_hint(exc.rank, exc.role)  # say what it means, not only which rank
            if hint:
                raise RankFailedError(f"{hint}\n{exc}", exc.rank, exc.role, exc.exitcode, exc.traceback, exc.exitcodes) from exc
            raise
        machine = turn.meta()
        result = RunResult.load(tmp)
    result.meta.update(machine, **recovery)
    result.meta.update(replication_meta(result))  # ps_recovery='replicate': the bytes forwarded to the backups
    if out is not None:
        result.save(out)
    return result


def sweep(
    base: RunConfig,
    out: str | Path | None = None,
    progress: bool = True,
    repeats: int = 1,
    metric: str = "step_time",
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

    metric="time_to_target" (needs base.target_accuracy and eval_every): each row also holds the median time
    to target over its repeats (training time, evaluation excluded), its range and the median steps to
    target (dpkit.measure.summarize_time_to_target); speedup_plot(metric=...) reads them.
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"sweep: repeats={repeats!r} is not allowed: a whole number of runs per config, at least 1")
    if metric not in ("step_time", "time_to_target"):
        raise ValueError(f"sweep: metric={metric!r} is not allowed: choose 'step_time' or 'time_to_target'")
    if metric == "time_to_target" and base.target_accuracy is None:
        raise ValueError("sweep: metric='time_to_target' needs base.target_accuracy (and eval_every) to be set")
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
    groups = [pd.concat(group, ignore_index=True) for group in runs]
    rows = summarize_repeats(groups)
    if metric == "time_to_target":
        learned = summarize_time_to_target(groups)
        rows = rows.drop(columns=[c for c in learned.columns if c in rows.columns]).join(learned)
    return rows


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
