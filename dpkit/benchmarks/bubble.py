"""Pipeline bubble: the measured idle share of a step against (p-1)/(m+p-1), sweeping micro-batches m.

For p = 2 and 4 stages (up to --max-world-size), GPipe and 1F1B, m = 1, 2, 4, ...: a balanced MLP
(4 equal hidden blocks, so every stage gets the same work) trains for warm-up + --repeats steps.
The measured fraction is the mean over stages of the time spent waiting on a neighbour (bubble)
divided by the step time; the formula assumes equal stages and free communication, so the gap
between the two is what real sends, uneven stages and the shared CPU cost. Writes bubble.csv and
bubble.png; the peak of micro-batch activations in flight shows 1F1B's memory saving.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..api import run
from ..config import RunConfig
from ..viz.cost_plots import bubble_plot

SCHEDULES = ("gpipe", "1f1b")


def grid(args: argparse.Namespace) -> tuple[RunConfig, list[int], list[int]]:
    """(base config, stage counts, micro-batch counts) for full or --quick mode."""
    stages = [p for p in (2, 4) if p <= args.max_world_size]
    if args.quick:
        base = RunConfig(parallelism="pipeline", model="mlp", hidden=64, layers=4, global_batch=32, steps=3, warmup=1)
        return base, stages, [1, 4]
    steps = 1 + max(args.repeats, 3)
    base = RunConfig(parallelism="pipeline", model="mlp", hidden=256, layers=4, global_batch=512, steps=steps, warmup=1)
    return base, stages, [1, 2, 4, 8, 16, 32]


def measure(base: RunConfig, stages: list[int], ms: list[int]) -> pd.DataFrame:
    rows = []
    for p in stages:
        for schedule in SCHEDULES:
            for m in ms:
                r = run(base.replace(world_size=p, schedule=schedule, microbatches=m))
                s = r.summary
                rows.append(
                    {
                        "stages": p,
                        "schedule": schedule,
                        "microbatches": m,
                        "bubble_measured": s["bubble_fraction"],
                        "bubble_formula": s["bubble_fraction_formula"],
                        "step_time_ms": s["step_time_s"] * 1e3,
                        "peak_in_flight": max(r.extra["peak_in_flight"].values()),
                        "stage_bytes_per_step": s["bytes_sent_per_step_all_ranks"],
                        "threads_per_rank": s["threads_per_rank"],
                        "device": s["device"],
                    }
                )
    return pd.DataFrame(rows)


def main(out: Path, args: argparse.Namespace) -> None:
    base, stages, ms = grid(args)
    frame = measure(base, stages, ms)
    frame.to_csv(out / "bubble.csv", index=False)
    bubble_plot(frame).savefig(out / "bubble.png", dpi=120)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"results: {out}/bubble.csv, {out}/bubble.png")
