"""ps_recovery='checkpoint': when a parameter server dies, the run goes on from the last checkpoint.

A gloo process group cannot take a new process in place of a dead one (its ranks are fixed when it forms),
so dpkit cannot restart one server inside the live group as a parameter-server system with its own
transport would (Li et al., OSDI 2014). What it does instead is what torchrun's elastic agent does: every
process stops, and a new group of all of them loads the last checkpoint (servers their shards, optimizer
state and clocks; workers their models) and trains on. The updates applied since that checkpoint are lost:
they are counted (steps x workers, from the checkpoint to the failure) and so is the time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...config import RunConfig
from ...runtime import checkpoint
from ...runtime.launch import RankFailedError


def run_with_recovery(cfg: RunConfig, payload: dict, launch_ranks: Callable[[], Any]) -> dict[str, Any]:
    """Launch the ranks; with ps_recovery='checkpoint', once more from the last checkpoint if a server died.

    Returns what goes into the result's meta: {} without a recovery, else `ps_recovery` (what was lost)."""
    started = time.time()
    try:
        launch_ranks()
        return {}
    except RankFailedError as exc:
        if getattr(cfg, "ps_recovery", "none") != "checkpoint" or not exc.role.startswith("parameter server"):
            raise
        failed_at = time.time()
        root = payload.get("checkpoint_dir")
        found = checkpoint.last_good(root) if root else None
        if found is None:
            raise RankFailedError(
                f"ps_recovery='checkpoint': no checkpoint was written before the server died\n{exc}",
                exc.rank,
                exc.role,
                exc.exitcode,
                exc.traceback,
            ) from exc
        folder, manifest = found
        failed_role, failed_rank = exc.role, exc.rank
    failed_step = cfg.fail_at_step if cfg.fail_rank is not None else None  # known when the failure was injected
    payload["resume_dir"] = root
    restart = time.time()
    launch_ranks()  # the second attempt: the fault injection fires on the first one only
    lost_steps = failed_step - manifest["step"] if failed_step is not None else None
    return {
        "ps_recovery": {
            "failed_role": failed_role,
            "failed_rank": failed_rank,
            "checkpoint_step": manifest["step"],
            "checkpoint": folder.name,
            "failed_at_step": failed_step,
            "lost_steps": lost_steps,
            "lost_updates": lost_steps * cfg.world_size if lost_steps is not None else None,  # pushes applied, then lost
            "lost_s": failed_at - manifest["saved_at"],  # wall clock from the checkpoint to the failure being seen
            "first_attempt_s": failed_at - started,
            "restart_s": restart - failed_at,
        }
    }
