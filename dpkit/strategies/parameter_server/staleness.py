"""The staleness of every update a parameter server applied, as a frame (RunResult.staleness) and a summary.

Two units, both named: `staleness_steps`, in steps (clocks, the unit of the SSP bound max_staleness): the
update's step minus the clock of the parameters its worker computed it on (0 in sync, never above the
bound); `staleness_updates`: how many updates that server applied between the worker's pull and this push.
The servers record the rows (server.py); this module only reads them out of a result's `extra`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

STALENESS_COLUMNS = ["step", "worker", "server", "staleness_steps", "staleness_updates"]


def staleness_frame(extra: dict[str, Any]) -> pd.DataFrame:
    """One row per update a server applied, server by server in the order each applied them; empty for runs
    without a parameter server. `step` is the worker's step the gradient belongs to, `server` the shard index."""
    shards = {int(rank): int(shard) for rank, shard in extra.get("ps_shard", {}).items()}
    rows = [
        (step, worker, shards.get(int(rank), -1), steps, updates)
        for rank, records in sorted(extra.get("staleness", {}).items(), key=lambda item: int(item[0]))
        for step, worker, steps, updates in records
    ]
    return pd.DataFrame(rows, columns=STALENESS_COLUMNS).astype(int)


def staleness_summary(frame: pd.DataFrame) -> dict[str, float]:
    """staleness_mean and staleness_max, in steps (the bound's unit); nothing for a run without updates to rate."""
    if frame.empty:
        return {}
    return {"staleness_mean": float(frame.staleness_steps.mean()), "staleness_max": int(frame.staleness_steps.max())}
