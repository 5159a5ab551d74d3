"""ps_recovery='checkpoint': when a parameter server dies, the run goes on from the last checkpoint.

A gloo process group cannot take a new process in place of a dead one (its ranks are fixed when it forms),
so dpkit cannot restart one server inside the live group as a parameter-server system with its own
transport would (Li et al., OSDI 2014). What it does instead is what torchrun's elastic agent does: every
process stops, and a new group of all of them loads the last checkpoint (servers their shards, optimizer
state and clocks; workers their models) and trains on. The updates applied since that checkpoint are lost:
they are counted (steps x workers, from the checkpoint to the failure) and so is the time.
dpkit.runtime.checkpoint.launch_with_recovery does the relaunch; this module decides and counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...config import RunConfig


def recovers(cfg: RunConfig, role: str) -> bool:
    """Whether a dead process of this `role` is recovered: a parameter server, with ps_recovery='checkpoint'."""
    return getattr(cfg, "ps_recovery", "none") == "checkpoint" and role.startswith("parameter server")


def what_was_lost(cfg: RunConfig, role: str, rank: int, checkpoint_step: int, times: dict[str, float]) -> dict[str, Any]:
    """The result's meta['ps_recovery']: who died, the checkpoint resumed from, the updates and time lost.

    The failed step is known when the failure was injected (fail_at_step); a real crash leaves it unknown
    (None), and then only the time is counted. `times`: checkpoint_saved, started, failed, restarted (wall clock)."""
    failed_step = cfg.fail_at_step if cfg.fail_rank is not None else None
    lost_steps = failed_step - checkpoint_step if failed_step is not None else None
    return {
        "failed_role": role,
        "failed_rank": rank,
        "checkpoint_step": checkpoint_step,
        "failed_at_step": failed_step,
        "lost_steps": lost_steps,
        "lost_updates": lost_steps * cfg.world_size if lost_steps is not None else None,  # pushes applied, then lost
        "lost_s": times["failed"] - times["checkpoint_saved"],  # from the checkpoint to the failure being seen
        "first_attempt_s": times["failed"] - times["started"],
        "restart_s": times["restarted"] - times["failed"],
    }
