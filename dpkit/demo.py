"""The kit's default job: data parallelism at world sizes 1, 2 and 4, measured and plotted.

Same global batch at every world size (strong scaling), so speedup = T_step(1) / T_step(N). Every world
size runs REPEATS times, interleaved, because one run on a shared machine can be off by tens of percent:
the table gives medians and their spread, and any number that cannot be trusted comes with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .api import sweep
from .config import RunConfig
from .runtime.cores import cores_available
from .viz.plots import scaling_frame, scaling_warnings, speedup_plot

REPEATS = 3
WORLD_SIZES = [1, 2, 4]
TABLE_COLUMNS = [
    "world_size",
    "threads_per_rank",
    "step_time_s",
    "step_time_iqr_s",
    "step_time_run_iqr_s",
    "speedup",
    "speedup_low",
    "speedup_high",
    "efficiency",
    "comm_s",
    "exposed_comm_s",
    "busy_processes",
    "noisy",
]
CSV_COLUMNS = [
    *TABLE_COLUMNS,
    "step_time_min_s",
    "step_time_max_s",
    "repeats",
    "samples_per_s",
    "efficiency_low",
    "efficiency_high",
    "compute_s",
    "bytes_sent_per_step",
    "final_loss",
    "other_busy_processes",
    "cpu_count",
    "noise_reason",
]


def demo_config(quick: bool = False) -> RunConfig:
    return RunConfig(
        parallelism="data",
        model="mlp",
        hidden=256,
        layers=4,
        global_batch=256,
        steps=6 if quick else 15,
        warmup=2,
        grad_sync="bucketed",
        allreduce_algo="native",
    )


def conclusion(frame: pd.DataFrame, warnings: list[str]) -> list[str]:
    """The sentences under the table, each one true of these numbers: no claim about scaling when a warning
    stands, and 'limited by the cores' only where the speedup is within what the cores allow."""
    cores = int(frame.cpu_count.max()) if "cpu_count" in frame.columns and frame.cpu_count.notna().any() else cores_available()
    base = frame.loc[frame.world_size.idxmin()]
    threads = base.get("threads_per_rank")
    lines = [
        f"Each rank gets cores / world_size threads ({cores} cores here"
        + (f"; the single-process baseline ran {int(threads)} thread(s))." if pd.notna(threads) else ").")
    ]
    noisy = "noisy" in frame.columns and bool(frame.noisy.eq(True).any())
    if warnings and noisy:
        lines.append("The speedups above cannot be read as they stand (see the warnings): rerun `dpkit demo` on an idle")
        lines.append(f"machine; each world size then runs {REPEATS} times again and the medians should agree.")
        return lines
    if warnings:
        lines.append("No noise was measured, so the superlinear speedup is real on this machine, but it does not come from")
        lines.append("extra cores (see the warning): compare the baseline's threads with the ranks' before calling it scaling.")
        return lines
    rest = frame[frame.world_size > base.world_size]
    if rest.empty:
        return lines
    best = rest.loc[rest.speedup.idxmax()]
    n, speedup, comm = int(best.world_size), float(best.speedup), float(best.get("comm_s", float("nan")))
    comm_text = f" ({comm * 1e3:.1f} ms per step at world size {n})" if pd.notna(comm) else ""
    base_cores = min(cores, int(threads)) if pd.notna(threads) else cores
    limit = cores / base_cores
    if speedup < 1.0:
        lines.append(f"No world size beat the single process (best speedup {speedup:.2f}, at world size {n}): the ranks'")
        lines.append(f"share of {cores} cores and the all-reduce{comm_text} cost more than splitting the batch saves.")
    elif speedup <= limit * 1.05:
        lines.append(f"The best speedup, {speedup:.2f} at world size {n}, is about all that {cores} cores allow over a baseline")
        lines.append(f"already using {base_cores} of them ({limit:.2g}x): speedup is limited by the cores you have, and the")
        lines.append(f"all-reduce adds communication on top{comm_text}.")
    else:
        ranks = f"{n} ranks" + (f" of {int(best.threads_per_rank)} thread(s)" if pd.notna(best.get("threads_per_rank")) else "")
        lines.append(f"The best speedup, {speedup:.2f} at world size {n}, is more than extra cores explain (at most {limit:.2g}x")
        lines.append(f"over a baseline using {base_cores} of {cores} cores): {ranks} used the cores better than one")
        lines.append(f"process with {base_cores} threads; the all-reduce still adds communication{comm_text}.")
    return lines


def report(frame: pd.DataFrame) -> str:
    """What the demo prints for a sweep's frame (scaled or not): the table with its spread columns, one
    warning line per noisy or superlinear number (the same sentences the plot carries), and the conclusion."""
    if "efficiency" not in frame.columns:
        frame = scaling_frame(frame)
    table = frame[[c for c in TABLE_COLUMNS if c in frame.columns]]
    warnings = scaling_warnings(frame)
    lines = [table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), ""]
    lines += [f"WARNING: {w}" for w in warnings]
    lines += [
        "step_time_s: median over the repeats; step_time_iqr_s: their spread (IQR); step_time_run_iqr_s: the spread",
        "of the steps within a run; speedup_low..speedup_high: the range the repeats allow.",
        "",
        *conclusion(frame, warnings),
    ]
    return "\n".join(lines)


def main(out: Path, quick: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(quick)
    print(f"dpkit demo: {cfg.model} (hidden={cfg.model_hidden}, layers={cfg.model_layers}), global batch "
          f"{cfg.global_batch}, {cfg.steps} steps ({cfg.warmup} warm-up), {os.cpu_count()} CPU cores; "
          f"{REPEATS} runs per world size, interleaved")  # fmt: skip
    frame = scaling_frame(sweep(cfg, out=out / "runs", repeats=REPEATS, world_size=WORLD_SIZES))
    frame[[c for c in CSV_COLUMNS if c in frame.columns]].to_csv(out / "demo.csv", index=False)
    speedup_plot(frame).savefig(out / "speedup.png", dpi=120, bbox_inches="tight")
    print(report(frame))
    print(f"wrote {out / 'demo.csv'}, {out / 'speedup.png'} and one result folder per run in {out / 'runs'}")
