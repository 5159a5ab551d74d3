"""Relaunching a run whose parameter server died (ps_recovery): every process, from the last checkpoint
('checkpoint') or from what the survivors handed over, the dead server's backup copy in its place ('replicate').

What is recovered and what is counted is the parameter server's (dpkit/strategies/parameter_server/recovery.py);
this is the launching side, apart from dpkit.runtime.checkpoint, which the ranks import.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..results import CHECKPOINTS, _write_atomic
from ..strategies.parameter_server import recovery
from .checkpoint import last_good, rank_file, step_dir, write_manifest
from .launch import RankFailedError

HAND_OVER_GRACE_S = 30.0  # replicate: how long the survivors may take to hand over their state once a peer died
HAND_OVER = f"{CHECKPOINTS}/handover"  # the survivors' files, in the run's temporary folder (where its checkpoints go)
RELAUNCH = f"{CHECKPOINTS}/relaunch"  # the checkpoint composed from them


def launch_with_recovery(cfg: RunConfig, payload: dict[str, Any], launch_ranks: Any, folder: str | Path) -> dict[str, Any]:
    """Launch the ranks; when a process that cfg recovers died (ps_recovery), once more from a saved state.
    `folder`: the run's temporary folder (the hand-over goes there).

    Returns what goes into the result's meta: {} without a recovery, else {"ps_recovery": what was lost}."""
    started = time.time()
    replicate = cfg.ps_recovery == "replicate"
    if replicate:
        payload["handover_dir"] = str(Path(folder) / HAND_OVER)
    try:
        launch_ranks(**({"grace_s": HAND_OVER_GRACE_S} if replicate else {}))
        return {}
    except RankFailedError as exc:
        if not recovery.recovers(cfg, exc.role):
            raise
        failed = time.time()
        try:
            resume_dir, describe = (_from_hand_over if replicate else _from_checkpoint)(cfg, payload, exc, folder)
        except (recovery.HandOverError, FileNotFoundError) as why:
            message = f"ps_recovery={cfg.ps_recovery!r}: {why}\n{exc}"
            raise RankFailedError(message, exc.rank, exc.role, exc.exitcode, exc.traceback) from exc
    payload["resume_dir"] = resume_dir
    payload.pop("handover_dir", None)  # a second failure is not recovered
    restarted = time.time()
    launch_ranks()  # every process again; the fault injection fires on a first attempt only
    return {"ps_recovery": describe({"started": started, "failed": failed, "restarted": restarted})}


def _from_checkpoint(cfg: RunConfig, payload: dict[str, Any], exc: RankFailedError, folder: str | Path) -> tuple[str, Any]:
    root = payload.get("checkpoint_dir")
    found = last_good(root) if root else None
    if found is None:
        raise FileNotFoundError("no checkpoint was written before the server died")
    where, manifest = found

    def describe(times: dict[str, float]) -> dict[str, Any]:
        times = dict(times, checkpoint_saved=manifest["saved_at"])
        return {**recovery.what_was_lost(cfg, exc.role, exc.rank, manifest["step"], times), "checkpoint": where.name}

    return str(root), describe


def _from_hand_over(cfg: RunConfig, payload: dict[str, Any], exc: RankFailedError, folder: str | Path) -> tuple[str, Any]:
    """Read the survivors' files, compose one checkpoint of every rank from them, verified like any other."""
    handed = Path(payload["handover_dir"])
    dumps = {}
    for rank in range(cfg.num_processes):
        path = handed / rank_file(rank)
        if path.is_file() and rank != exc.rank:  # the dead server's own state is what its backup's copy replaces
            dumps[rank] = torch.load(path, map_location="cpu", weights_only=False)
    step, files, kept = recovery.compose_hand_over(cfg, dumps)
    root = Path(folder) / RELAUNCH
    target = step_dir(root, step)
    target.mkdir(parents=True, exist_ok=True)
    entries = []
    for rank in range(cfg.num_processes):
        buf = io.BytesIO()
        torch.save(files[rank], buf)
        entries.append(_write_atomic(target / rank_file(rank), buf.getvalue()))
    write_manifest(target, step, cfg, entries)

    def describe(times: dict[str, float]) -> dict[str, Any]:
        return recovery.what_was_kept(cfg, exc.role, exc.rank, kept, dumps, times)

    return str(root), describe


def replication_meta(result: Any) -> dict[str, Any]:
    """{'ps_replication': ...} for a replicate run (the bytes its servers forwarded to their backups), else {}."""
    summary = recovery.replication_summary(result)
    return {"ps_replication": summary} if summary else {}
