"""run() and sweep(): the two calls notebooks, the CLI and tests make."""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .config import RunConfig
from .results import ResultFolderError, RunResult
from .runtime.launch import RankFailedError, choose_backend, default_start_method, default_threads, launch
from .strategies.registry import spec_for


def roles_of(cfg: RunConfig) -> list[str]:
    """A name for every process, used in error messages ('rank 2 (parameter server 0)')."""
    return spec_for(cfg).roles(cfg)


def run(cfg: RunConfig, out: str | Path | None = None) -> RunResult:
    """Train `cfg` on real ranks and return what happened; with `out`, also save it there."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"run() takes a RunConfig, not {type(cfg).__name__}")
    nprocs = cfg.num_processes
    backend, device = choose_backend(cfg.device, cfg.backend, nprocs)
    threads = cfg.threads_per_rank or default_threads(nprocs)
    method = default_start_method()
    payload = {"config": cfg.to_dict(), "meta": {"start_method": method}}
    with tempfile.TemporaryDirectory(prefix="dpkit-run-") as tmp:
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
            )
        except RankFailedError as exc:
            hint = spec_for(cfg).failure_hint(exc.rank, exc.role)  # say what it means, not only which rank
            if hint:
                raise RankFailedError(f"{hint}\n{exc}", exc.rank, exc.role, exc.exitcode, exc.traceback) from exc
            raise
        result = RunResult.load(tmp)
    if out is not None:
        result.save(out)
    return result


def sweep(
    base: RunConfig,
    out: str | Path | None = None,
    progress: bool = True,
    **grid: Iterable[Any],
) -> pd.DataFrame:
    """Run every combination of `grid` (field=list of values) on top of `base`; one row per run.

    With `out`, each run is saved to out/<run_id>/ as it finishes, and runs already there are
    loaded instead of rerun, so an interrupted sweep resumes where it stopped. A folder that does
    not verify (interrupted save, corrupt or missing file, older format) is rerun, with one line
    saying which and why, and its row has resumed=False.
    """
    names = list(grid)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*(list(grid[n]) for n in names))]
    configs = [base.replace(**combo) for combo in combos]  # all validated before the first run starts
    frames = []
    for cfg in tqdm(configs, desc="sweep", disable=not progress):
        folder = Path(out) / cfg.run_id() if out is not None else None
        result = _resume(folder, cfg) if folder is not None and folder.exists() else None
        resumed = result is not None
        if result is None:
            result = run(cfg)
            if folder is not None:
                result.save(folder, overwrite=True)  # out/<run_id>/ is this run's: whatever did not verify there is replaced
        frame = result.to_frame()
        frame.insert(0, "run_id", cfg.run_id())
        frame["resumed"] = resumed
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _resume(folder: Path, cfg: RunConfig) -> RunResult | None:
    """The saved result of `cfg` in `folder`, or None (and one line saying why) when it must be rerun."""
    try:
        result = RunResult.load(folder)
    except ResultFolderError as exc:
        tqdm.write(f"sweep: rerunning {cfg.run_id()}: {exc}")
        return None
    if result.config.run_id() != cfg.run_id():
        tqdm.write(f"sweep: rerunning {cfg.run_id()}: result folder {folder} holds run {result.config.run_id()}")
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
