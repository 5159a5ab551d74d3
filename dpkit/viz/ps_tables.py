"""Tables a notebook plots from a parameter-server RunResult: server load, worker waits, staleness.

Busy time and waits are read off the timeline, bytes off what Comm recorded: the strategy counts nothing.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..results import RunResult
from ..strategies.parameter_server.worker import PULL_WAIT

#: the two units of staleness, named as a figure should say them
STALENESS_UNITS = {
    "staleness_steps": "in steps (clocks, the unit of the bound max_staleness)",
    "staleness_updates": "in updates applied since the worker's pull",
}


def _per_rank(result: RunResult, key: str) -> dict[int, Any]:
    """One of the strategy's per-rank `extra` measurements, keyed by rank number."""
    return {int(r): v for r, v in result.extra.get(key, {}).items()}


def server_stats(result: RunResult) -> pd.DataFrame:
    """Per server: its shard, bytes in/out per step, and busy time per timed step (compute + exposed comm on its
    timeline: updating, packing and answering pulls; waiting for gradients is idle)."""
    steps = result.config.steps
    stats = result.step_stats()
    timed = stats[stats.step >= result.config.warmup].groupby("rank")[["compute_s", "exposed_comm_s"]].mean()
    rows = []
    for rank, shard in sorted(_per_rank(result, "ps_shard").items()):
        busy = timed.loc[rank].sum() if rank in timed.index else 0.0
        rows.append(
            {
                "rank": rank,
                "server": shard,
                "shard_numel": _per_rank(result, "shard_numel")[rank],
                "bytes_in_per_step": _per_rank(result, "bytes_in")[rank] / steps,
                "bytes_out_per_step": _per_rank(result, "bytes_out")[rank] / steps,
                "busy_s_per_step": float(busy),
            }
        )
    return pd.DataFrame(rows)


def worker_wait(result: RunResult) -> pd.DataFrame:
    """Per worker and step: seconds from its push until the pulled parameters arrived (waiting for the server),
    the duration of its timeline's pull span."""
    spans = result.timeline[result.timeline.name == PULL_WAIT]
    waits = (spans.end_s - spans.start_s).groupby([spans["rank"], spans.step]).sum()
    frame = waits.rename("wait_s").reset_index()
    return frame.astype({"rank": int, "step": int, "wait_s": float})[["rank", "step", "wait_s"]]


def staleness_histogram(result: RunResult, column: str = "staleness_steps") -> pd.DataFrame:
    """How many updates had each staleness, over all servers: `column` is 'staleness_steps' (the bound's unit)
    or 'staleness_updates' (STALENESS_UNITS says each in words)."""
    if column not in STALENESS_UNITS:
        raise ValueError(f"column={column!r} is not allowed: choose one of {sorted(STALENESS_UNITS)}")
    counts = result.staleness[column].value_counts().sort_index()
    return pd.DataFrame({column: counts.index.astype(int), "updates": counts.to_numpy()})


def staleness_both_units(result: RunResult) -> pd.DataFrame:
    """Both histograms side by side, for one figure: unit (STALENESS_UNITS' words), staleness, updates; with the
    run's bound (max_staleness, None if unbounded) in `attrs['bound']`, to draw on the steps panel."""
    parts = [
        staleness_histogram(result, column).rename(columns={column: "staleness"}).assign(unit=words)
        for column, words in STALENESS_UNITS.items()
    ]
    frame = pd.concat(parts, ignore_index=True)[["unit", "staleness", "updates"]]
    frame.attrs["bound"] = result.config.max_staleness
    return frame


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
