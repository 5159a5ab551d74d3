"""`dpkit bench scaling`: does the compute-bound lesson workload show 2 ranks beating 1 on this machine?

The panels' and notebooks' default (dpkit.lessons.COMPUTE_BOUND) is chosen so that, on a quiet 2-core machine,
2 ranks (one core each) beat one process (one core) by at least BAR at world size 2; COMM_BOUND (a small model)
is measured beside it, where communication dominates. Each world size runs `--repeats` times, interleaved;
the speedups go through dpkit.measure.withhold like every figure's, and the machine's load (processes busy
outside the run, the load average before and after) is recorded with every number, so a ratio taken on a
busy machine says so instead of passing for the workload's.
cpu_speedup is the baseline's CPU seconds per step over a rank's: the speedup the ranks' own work allows with a
core each, which other programs cannot disturb (exposed comm and waits not counted: an upper bound).
Writes scaling.csv (one row per workload and world size).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from ..api import sweep
from ..lessons import WORKLOADS
from ..runtime.cores import cores_available
from ..viz.plots import scaling_frame

BAR = 1.3  # the compute-bound default's speedup at world size 2 on a quiet 2-core machine
COLUMNS = [
    "workload", "world_size", "step_time_s", "step_time_iqr_s", "cpu_s", "waiting_for_core_s", "exposed_comm_s",
    "speedup", "speedup_measured", "speedup_low", "speedup_high", "cpu_speedup", "withheld", "other_busy_processes", "repeats",
    "threads_per_rank", "cpu_count", "hidden", "layers", "global_batch", "link", "load_before", "load_after", "seconds",
]  # fmt: skip


def main(out: Path, args: argparse.Namespace) -> None:
    repeats = 2 if args.quick else max(3, min(args.repeats, 7))
    frames = []
    for key, workload in WORKLOADS.items():
        cfg = workload.config.replace(link="none", steps=4 if args.quick else 8, warmup=1 if args.quick else 2)
        before, start = os.getloadavg()[0], time.perf_counter()
        frame = scaling_frame(sweep(cfg, repeats=repeats, progress=False, world_size=[1, 2]))
        frame.insert(0, "workload", key)
        # the ranks' own CPU work against the baseline's: what one core each allows, whatever else ran (comm waits not counted)
        frame["cpu_speedup"] = float(frame.cpu_s[frame.world_size == 1].iloc[0]) / frame.cpu_s
        frame["load_before"], frame["load_after"] = before, os.getloadavg()[0]
        frame["seconds"] = time.perf_counter() - start
        frame["hidden"], frame["layers"] = cfg.model_hidden, cfg.model_layers
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table = table[[c for c in COLUMNS if c in table.columns]]
    table.to_csv(out / "scaling.csv", index=False)
    print(f"one rank = one core (1 thread each, the baseline too); {cores_available()} cores; {repeats} runs per point")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))
    two = table[(table.workload == "compute") & (table.world_size == 2)].iloc[0]
    if two.withheld:
        print(f"compute-bound at world size 2: {two.withheld} (measured {two.speedup_measured:.2f}x; bar {BAR}x)")
    else:
        verdict = "meets" if two.speedup >= BAR else "misses"
        print(f"compute-bound at world size 2: {two.speedup:.2f}x, {verdict} the bar of {BAR}x")
    print(f"wrote {out / 'scaling.csv'}")
