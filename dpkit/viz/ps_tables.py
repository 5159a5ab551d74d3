"""Tables a notebook plots from a parameter-server RunResult: server load, worker waits, staleness."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..results import RunResult


def _per_rank(result: RunResult, key: str) -> dict[int, Any]:
    """One of the strategy's per-rank `extra` measurements, keyed by rank number."""
    return {int(r): v for r, v in result.extra.get(key, {}).items()}


def server_stats(result: RunResult) -> pd.DataFrame:
    """Per server: its shard, bytes in/out and busy time (updating + answering pulls) per step."""
    steps = result.config.steps
    rows = []
    for rank, shard in sorted(_per_rank(result, "ps_shard").items()):
        busy = _per_rank(result, "busy_s")[rank]
        rows.append(
            {
                "rank": rank,
                "server": shard,
                "shard_numel": _per_rank(result, "shard_numel")[rank],
                "bytes_in_per_step": _per_rank(result, "bytes_in")[rank] / steps,
                "bytes_out_per_step": _per_rank(result, "bytes_out")[rank] / steps,
                "busy_s_per_step": sum(busy) / len(busy) if busy else 0.0,
            }
        )
    return pd.DataFrame(rows)


def worker_wait(result: RunResult) -> pd.DataFrame:
    """Per worker and step: seconds from its push until the pulled parameters arrived (waiting for the server)."""
    rows = [
        {"rank": rank, "step": step, "wait_s": wait}
        for rank, waits in sorted(_per_rank(result, "wait_for_server_s").items())
        for step, wait in enumerate(waits)
    ]
    return pd.DataFrame(rows, columns=["rank", "step", "wait_s"])


def updates(result: RunResult) -> pd.DataFrame:
    """Every update a server applied: which worker, its step, and both stalenesses."""
    rows = [
        {"server_rank": rank, "worker": w, "worker_step": s, "staleness": st, "clock_staleness": cs}
        for rank, ups in sorted(_per_rank(result, "updates").items())
        for w, s, st, cs in ups
    ]
    return pd.DataFrame(rows, columns=["server_rank", "worker", "worker_step", "staleness", "clock_staleness"])


def staleness_histogram(result: RunResult, column: str = "staleness") -> pd.DataFrame:
    """How many updates had each staleness (column 'staleness' or 'clock_staleness'), over all servers."""
    counts = updates(result)[column].value_counts().sort_index()
    return pd.DataFrame({column: counts.index.astype(int), "updates": counts.values})


def loss_curve(result: RunResult) -> pd.DataFrame:
    """Each worker step as it finished: wall-clock seconds, that worker's loss, and the samples the
    workers had pushed by then (for loss against wall-clock and against samples seen)."""
    losses = _per_rank(result, "worker_losses")
    per_worker = result.config.global_batch // result.config.world_size
    ends = result.steps.set_index(["rank", "step"]).end_s
    rows = [
        {"rank": rank, "step": step, "wall_s": float(ends[(rank, step)]), "loss": loss}
        for rank, ls in losses.items()
        for step, loss in enumerate(ls)
    ]
    frame = pd.DataFrame(rows, columns=["rank", "step", "wall_s", "loss"]).sort_values(["wall_s", "rank"], ignore_index=True)
    frame["samples_seen"] = per_worker * (frame.index + 1)
    return frame
