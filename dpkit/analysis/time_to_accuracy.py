"""Time to accuracy: what a user waits for is a trained model, not a step.

time to target = steps to target × time per step. More workers at a fixed per-worker batch make each
step process more samples (a larger global batch) for a little more communication; that pays only while
a larger batch still needs proportionally fewer steps. Past the critical batch size (McCandlish et al.
2018) the steps stop falling, and so does the time to target, however fast the steps are.

At cluster scale (to 1,024 workers) nothing here is run: the steps to target at a global batch come from
measured runs (interpolated in log-log between measured batches), or are extrapolated beyond them (marked
so: below the smallest measured batch as perfect scaling, steps ∝ 1/batch; above the largest held at the
largest batch's steps, the critical-batch assumption), and the step time is the cost model's prediction
(dpkit.cost: compute / n + all-reduce). Every such row says predicted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..cost.model import Link, allreduce_time

SCALE_WORKERS = [2**i for i in range(11)]  # 1 .. 1,024


def time_to_target_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A sweep(metric="time_to_target") frame recast so that scaling_frame's speedup is T_target(base) / T_target:
    the unit of work is one model trained to the target (global_batch 1 per 'step' of time_to_target_s)."""
    if "time_to_target_s" not in frame.columns:
        raise ValueError("metric='time_to_target' needs time_to_target_s: use sweep(..., metric='time_to_target')")
    out = frame.copy()
    out["global_batch_run"] = out["global_batch"]
    out["global_batch"] = 1
    out["step_time_s"] = out["time_to_target_s"]
    out["step_time_min_s"] = out.get("time_to_target_min_s", out["time_to_target_s"])
    out["step_time_max_s"] = out.get("time_to_target_max_s", out["time_to_target_s"])
    out["samples_per_s"] = 1.0 / out["time_to_target_s"]
    return out


def steps_to_target_at(measured: pd.DataFrame, global_batch: float) -> tuple[float, str]:
    """(steps to target at `global_batch`, where the number comes from): 'measured', 'interpolated' (log-log
    between measured batches) or 'extrapolated' (outside them; see the module docstring). `measured` has
    global_batch and steps_to_target columns (rows that never reached the target are ignored)."""
    m = measured.dropna(subset=["steps_to_target"]).groupby("global_batch").steps_to_target.median().sort_index()
    if m.empty:
        raise ValueError("steps_to_target_at needs at least one measured run that reached the target")
    batches, steps = m.index.to_numpy(dtype=float), m.to_numpy(dtype=float)
    if global_batch in batches:
        return float(steps[batches == global_batch][0]), "measured"
    if global_batch < batches[0]:
        return float(steps[0] * batches[0] / global_batch), "extrapolated"
    if global_batch > batches[-1]:
        return float(steps[-1]), "extrapolated"
    log = np.interp(np.log(global_batch), np.log(batches), np.log(steps))
    return float(np.exp(log)), "interpolated"


def time_to_accuracy_at_scale(
    measured: pd.DataFrame,
    compute_per_sample_s: float,
    size_bytes: float,
    per_worker_batch: int,
    link: Link,
    ns: Sequence[int] = tuple(SCALE_WORKERS),
    algo: str = "ring",
) -> pd.DataFrame:
    """Predicted time to target for n data-parallel workers at `per_worker_batch` samples each (global batch
    n · per_worker_batch): steps_to_target_at(that batch) × (compute_per_sample_s · per_worker_batch +
    all-reduce of size_bytes over n workers on `link`). One row per n, with steps_source and kind='predicted'."""
    rows = []
    for n in ns:
        batch = n * per_worker_batch
        steps, source = steps_to_target_at(measured, batch)
        comm = allreduce_time(algo, size_bytes, n, link) if n > 1 else 0.0
        step_s = compute_per_sample_s * per_worker_batch + comm
        rows.append(
            {
                "workers": n,
                "global_batch": batch,
                "steps_to_target": steps,
                "steps_source": source,
                "step_s": step_s,
                "comm_s": comm,
                "time_to_target_s": steps * step_s,
                "kind": "predicted",
            }
        )
    return pd.DataFrame(rows)
