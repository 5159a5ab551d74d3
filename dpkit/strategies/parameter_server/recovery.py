"""When a parameter server dies: ps_recovery 'checkpoint' goes on from the last checkpoint, 'replicate' from its backup.

A gloo process group cannot take a new process in place of a dead one (its ranks are fixed when it forms),
so dpkit cannot restart one server inside the live group as a parameter-server system with its own
transport would (Li et al., OSDI 2014). What it does instead is what torchrun's elastic agent does: every
process stops, and a new group of all of them goes on from a saved state.

- checkpoint: the last checkpoint (servers their shards, optimizer state and clocks; workers their models).
  The updates applied since it are lost: they are counted (steps x workers, from the checkpoint to the
  failure) and so is the time.
- replicate: each server has a backup, a process of its own that applies every update the server applies,
  forwarded before any worker can pull its result (backup.py). When the server dies, every other process sees
  its peer gone and hands over what it holds (workers their models and losses, the backup its copy:
  dpkit.runtime.checkpoint.hand_over); the new group starts from that, the backup's copy in the dead server's
  place. Nothing applied is lost, only the step in flight is done again; the price is one gradient per server
  per step sent to its backup (counted: meta['ps_replication']) and a process per server. In a parameter-server
  system that outlives a dead peer the workers would simply go on with the backup; the relaunch is gloo's
  limit, and its seconds are counted apart (restart_s).

dpkit.runtime.recovery does the relaunch; this module decides, composes and counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .layout import backup_rank, server_rank

if TYPE_CHECKING:
    from ...config import RunConfig
    from ...results import RunResult


class HandOverError(RuntimeError):
    """The survivors' hand-overs do not make one consistent state to go on from; the message says why."""


def recovers(cfg: RunConfig, role: str) -> bool:
    """Whether a dead process of this `role` is recovered: a parameter server, with ps_recovery checkpoint or replicate."""
    return getattr(cfg, "ps_recovery", "none") in ("checkpoint", "replicate") and role.startswith("parameter server")


def what_was_lost(cfg: RunConfig, role: str, rank: int, checkpoint_step: int, times: dict[str, float]) -> dict[str, Any]:
    """ps_recovery='checkpoint': the result's meta['ps_recovery']: who died, the checkpoint resumed from, the
    updates and time lost.

    The failed step is known when the failure was injected (fail_at_step); a real crash leaves it unknown
    (None), and then only the time is counted. `times`: checkpoint_saved, started, failed, restarted (wall clock)."""
    failed_step = cfg.fail_at_step if cfg.fail_rank is not None else None
    lost_steps = failed_step - checkpoint_step if failed_step is not None else None
    return {
        "mode": "checkpoint",
        "failed_role": role,
        "failed_rank": rank,
        "checkpoint_step": checkpoint_step,
        "failed_at_step": failed_step,
        "lost_steps": lost_steps,
        "lost_updates": lost_steps * cfg.world_size if lost_steps is not None else None,  # pushes applied, then lost
        "redone_steps": failed_step + 1 - checkpoint_step if failed_step is not None else None,  # with the one in flight
        "lost_s": times["failed"] - times["checkpoint_saved"],  # from the checkpoint to the failure being seen
        "first_attempt_s": times["failed"] - times["started"],
        "restart_s": times["restarted"] - times["failed"],
    }


# ---- replicate --------------------------------------------------------------------------------
def _at_step(dump: dict[str, Any], step: int) -> dict[str, Any]:
    """A hand-over as a checkpoint rank file after `step` steps: what was recorded past them is dropped (it is
    done again). A server's losses are (0.0, 0) each step (it sees no samples), so a copy one step behind is padded."""
    progress = dict(dump["progress"])
    progress["losses"] = (list(progress["losses"]) + [(0.0, 0)] * step)[:step]
    progress["lrs"] = list(progress["lrs"])[:step]
    progress["evals"] = [row for row in progress.get("evals", []) if row[0] <= step]
    return {"step": step, "progress": progress, "state": dump["state"]}


def compose_hand_over(cfg: RunConfig, dumps: dict[int, dict[str, Any]]) -> tuple[int, dict[int, dict[str, Any]], dict[str, Any]]:
    """(step, every rank's checkpoint file, what was kept) from the survivors' hand-overs (rank -> dump).

    The group goes on after `step`, the fewest steps any worker finished: every worker holds the same model
    after a sync step, so that worker's model is every worker's. Each shard is taken from the newer of its
    server's and its backup's copies: at `step` updates, or `step` + 1 when the server had applied the next one
    (forwarded first, so the copy has it) and answered some pulls; the server then answers the repeated pushes
    of that step without applying them again (server.py)."""
    n, k = cfg.world_size, cfg.num_servers
    missing = [w for w in range(n) if w not in dumps]
    if missing:
        raise HandOverError(f"worker(s) {missing} did not hand over their state (killed before they could?)")
    step = min(dumps[w]["step"] for w in range(n))
    reference = next(w for w in range(n) if dumps[w]["step"] == step)
    model = dumps[reference]["state"]["modules"]["model"]
    files = {}
    for w in range(n):
        files[w] = _at_step(dumps[w], step)
        files[w]["state"] = dict(files[w]["state"], modules={"model": model})
    versions, sources = [], []
    for j in range(k):
        pair = (server_rank(cfg, j), backup_rank(cfg, j))
        copies = {r: dumps[r] for r in pair if r in dumps}
        if not copies:
            raise HandOverError(f"neither parameter server {j} nor its backup handed over shard {j}")
        source = max(copies, key=lambda r: (copies[r]["state"]["extra"]["version"], r))  # ties: the backup's
        version = copies[source]["state"]["extra"]["version"]
        if version not in (step, step + 1):
            raise HandOverError(f"shard {j}'s newest copy has {version} updates, the workers finished {step} steps")
        for r in pair:
            files[r] = _at_step(copies[source], step)
        versions.append(version)
        sources.append(source)
    kept = {"resumed_step": step, "shard_versions": versions, "copies_from_ranks": sources}
    return step, files, kept


def what_was_kept(
    cfg: RunConfig, role: str, rank: int, kept: dict[str, Any], dumps: dict[int, dict[str, Any]], times: dict[str, float]
) -> dict[str, Any]:
    """ps_recovery='replicate': the result's meta['ps_recovery']: who died, whose copy took its place, what was lost.

    lost_updates: updates the dead server had applied that no copy holds: none by construction (each is forwarded
    before it is applied); counted from the injected step when the failure was injected, else None (unknown).
    redone_steps: steps the workers had begun past the state kept (the one in flight), done again."""
    shard = rank - cfg.world_size
    failed_step = cfg.fail_at_step if cfg.fail_rank is not None else None
    version = kept["shard_versions"][shard]
    workers = [dumps[w] for w in range(cfg.world_size)]
    ended = [d["last_step_end_at"] for d in workers if d.get("last_step_end_at") is not None]
    source = kept["copies_from_ranks"][shard]
    return {
        "mode": "replicate",
        "failed_role": role,
        "failed_rank": rank,
        "taken_over_by": f"backup server {shard} (rank {source})",  # the dead server's own state is never read
        "replica_version": version,  # updates in the copy that took the dead server's place
        "shard_versions": kept["shard_versions"],  # every shard's updates in the state gone on from
        "resumed_step": kept["resumed_step"],
        "failed_at_step": failed_step,
        "lost_updates": max(0, failed_step - version) if failed_step is not None else None,
        "redone_steps": max(d["steps_begun"] for d in workers) - kept["resumed_step"],
        "lost_s": times["failed"] - max(ended) if ended else None,  # from the last step kept to the failure being seen
        "first_attempt_s": times["failed"] - times["started"],
        "restart_s": times["restarted"] - times["failed"],
    }


def replication_summary(result: RunResult) -> dict[str, Any]:
    """meta['ps_replication'] of a replicate run: bytes the servers forwarded to their backups, per timed step and in
    all (read off the timeline's sends named server.FORWARD), and the processes it took; {} for other runs."""
    cfg = result.config
    if getattr(cfg, "ps_recovery", "none") != "replicate":
        return {}
    from .server import FORWARD

    tl = result.timeline
    sent = tl[(tl.kind == "comm") & (tl.name == FORWARD)]
    timed = sent[sent.step >= cfg.warmup]
    steps = max(1, int(result.steps[result.steps.step >= cfg.warmup].step.nunique()))
    return {
        "bytes_per_step": float(timed.bytes.sum()) / steps,
        "bytes_total": int(sent.bytes.sum()),
        "messages": len(sent[sent.bytes > 0]),
        "backup_processes": cfg.num_servers,
    }
