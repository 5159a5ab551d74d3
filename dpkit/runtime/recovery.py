"""Relaunching a run whose parameter server died (ps_recovery='checkpoint'): every process, from the last checkpoint.

What is recovered and what is counted is the parameter server's (dpkit/strategies/parameter_server/recovery.py);
this is the launching side, apart from dpkit.runtime.checkpoint, which the ranks import.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import RunConfig
from ..strategies.parameter_server import recovery
from .checkpoint import last_good
from .launch import RankFailedError


def launch_with_recovery(cfg: RunConfig, payload: dict[str, Any], launch_ranks: Any) -> dict[str, Any]:
    """Launch the ranks; when a process that cfg recovers died (ps_recovery), once more from the last checkpoint.

    Returns what goes into the result's meta: {} without a recovery, else {"ps_recovery": what was lost}."""
    started = time.time()
    try:
        launch_ranks()
        return {}
    except RankFailedError as exc:
        if not recovery.recovers(cfg, exc.role):
            raise
        failed = time.time()
        root = payload.get("checkpoint_dir")
        found = last_good(root) if root else None
        if found is None:
            message = f"ps_recovery='checkpoint': no checkpoint was written before the server died\n{exc}"
            raise RankFailedError(message, exc.rank, exc.role, exc.exitcode, exc.traceback) from exc
        role, rank = exc.role, exc.rank
    folder, manifest = found
    payload["resume_dir"] = root
    restarted = time.time()
    launch_ranks()  # every process again, from the checkpoint; the fault injection fires on a first attempt only
    times = {"checkpoint_saved": manifest["saved_at"], "started": started, "failed": failed, "restarted": restarted}
    return {"ps_recovery": {**recovery.what_was_lost(cfg, role, rank, manifest["step"], times), "checkpoint": folder.name}}
