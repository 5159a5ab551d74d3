"""Launch overhead: wall time of starting N ranks that rendezvous, all-reduce once and exit.

forkserver forks ranks from a server that imported torch once; spawn starts fresh interpreters
that each import torch. The first forkserver run also starts the server: reported apart.
Writes launch.csv (every run's time) and launch.png (median per world size, bars from the fastest to the
slowest run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from matplotlib.figure import Figure

from ..runtime.launch import launch

TARGET = "dpkit.benchmarks.launch:all_reduce_ranks"


def all_reduce_ranks(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """A launch() target, the smallest healthy job: sum the rank numbers; rank 0 writes the total and the pids."""
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    pids: list = [None] * world
    dist.all_gather_object(pids, os.getpid())
    if rank == 0:
        Path(out_dir, "result.json").write_text(json.dumps({"sum": t.item(), "pids": pids, "threads": torch.get_num_threads()}))


def time_launch(world: int, method: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        launch(TARGET, {}, world, tmp, threads_per_rank=1, timeout_s=120, start_method=method, out_dir_is_temporary=True)
        return time.perf_counter() - t0


def launch_plot(frame: pd.DataFrame) -> Figure:
    """Median wall time to start, rendezvous, all-reduce once and exit, per start method and world size."""
    fig = Figure(figsize=(6.4, 4))
    ax = fig.add_subplot()
    per_run = frame[frame.what == "per run"]
    for method, rows in per_run.groupby("start_method", sort=False):
        times = [[float(t) for t in str(ts).split()] for ts in rows.times_s]
        lo = [max(m - min(t), 0.0) for m, t in zip(rows.median_s, times, strict=True)]  # times_s are rounded to 0.1 ms
        hi = [max(max(t) - m, 0.0) for m, t in zip(rows.median_s, times, strict=True)]
        ax.errorbar(rows.world_size, rows.median_s, yerr=[lo, hi], marker="o", capsize=4,
                    label=f"{method} (median of {rows.runs.min()}-{rows.runs.max()} runs)")  # fmt: skip
    first = frame[frame.what != "per run"]
    if len(first):
        ax.scatter(first.world_size, first.median_s, marker="x", color="black", zorder=3,
                   label="forkserver, first run (starts the server)")  # fmt: skip
    ax.set_xlabel("number of processes started")
    ax.set_ylabel("wall time per run (s)")
    ax.set_xticks(sorted(frame.world_size.unique()))
    ax.set_yscale("log")
    ax.set_title("Starting a run: measured on this machine (bars: fastest to slowest run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(out: Path, args: argparse.Namespace) -> None:
    worlds = [1, 2] if args.quick else [1, 2, 4]
    repeats = {"forkserver": 2 if args.quick else max(args.repeats, 5), "spawn": 1 if args.quick else 3}
    rows = []
    first = time_launch(1, "forkserver")  # starts the forkserver (no-op if it already runs)
    rows.append({"start_method": "forkserver", "world_size": 1, "what": "first run (starts the server)",
                 "median_s": first, "runs": 1, "times_s": f"{first:.4f}"})  # fmt: skip
    for method in ("forkserver", "spawn"):
        for world in worlds:
            times = [time_launch(world, method) for _ in range(repeats[method])]
            rows.append({"start_method": method, "world_size": world, "what": "per run",
                         "median_s": statistics.median(times), "runs": len(times),
                         "times_s": " ".join(f"{t:.4f}" for t in times)})  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["clock"] = "perf_counter (wall)"
    frame["cpu_count"] = os.cpu_count()
    frame["torch"] = torch.__version__
    frame["python"] = platform.python_version()
    frame["host"] = platform.node()
    frame["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    frame.to_csv(out / "launch.csv", index=False)
    print(frame[["start_method", "world_size", "what", "median_s", "runs"]].to_string(index=False))
    launch_plot(frame).savefig(out / "launch.png", dpi=120)
    print(f"results: {out / 'launch.csv'}, {out / 'launch.png'}")
