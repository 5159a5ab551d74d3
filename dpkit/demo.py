"""The kit's default job: data parallelism at world sizes 1, 2 and 4, measured and plotted.

Same global batch at every world size (strong scaling), so speedup = T_step(1) / T_step(N). Every world
size runs REPEATS times, interleaved, because one run on a shared machine can be off by tens of percent:
the table gives medians and their spread, and any number that cannot be trusted comes with a warning.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .api import sweep
from .config import RunConfig
from .lessons import COMPUTE_BOUND
from .measure import cores_used
from .runtime.cores import cores_available
from .viz.plots import device_note, scaling_frame, scaling_warnings, speedup_plot

REPEATS = 3
WORLD_SIZES = [1, 2, 4]  # 4 ranks on a 2-core laptop share cores: the figure says so
TABLE_COLUMNS = [
    "world_size",
    "threads_per_rank",
    "step_time_s",
    "step_time_iqr_s",
    "cpu_s",
    "waiting_for_core_s",
    "speedup",
    "speedup_low",
    "speedup_high",
    "efficiency",
    "exposed_comm_s",
    "other_busy_processes",
    "withheld",
]
CSV_COLUMNS = [
    *TABLE_COLUMNS,
    "speedup_measured",
    "step_time_run_iqr_s",
    "step_time_min_s",
    "step_time_max_s",
    "repeats",
    "samples_per_s",
    "efficiency_low",
    "efficiency_high",
    "compute_s",
    "comm_s",
    "bytes_sent_per_step",
    "final_loss",
    "busy_processes",
    "num_processes",
    "cpu_count",
    "noisy",
    "noise_reason",
]


def demo_config(quick: bool = False) -> RunConfig:
    """The compute-bound lesson workload (dpkit.lessons), 1 thread per rank and for the baseline alike."""
    return COMPUTE_BOUND.config.replace(steps=5 if quick else 10, warmup=2)


def conclusion(frame: pd.DataFrame, warnings: list[str]) -> list[str]:
    """The sentences under the table, each one true of these numbers: the device model, then either what was
    withheld and why, or which world size was fastest and what the cores allow."""
    cores = int(frame.cpu_count.max()) if "cpu_count" in frame.columns and frame.cpu_count.notna().any() else cores_available()
    lines = [f"Device model: {device_note(frame) or 'one rank per core'} ({cores} cores here)."]
    withheld = frame[frame.withheld.fillna("") != ""] if "withheld" in frame.columns else frame.iloc[:0]
    if len(withheld):
        lines.append(f"Speedup withheld at world size {', '.join(str(int(n)) for n in withheld.world_size)}: "
                     f"{withheld.withheld.iloc[0]}.")  # fmt: skip
        lines.append("Rerun `dpkit demo` when the machine is quieter (close other programs); nothing else changes.")
        return lines
    base = frame.loc[frame.world_size.idxmin()]
    rest = frame[frame.world_size > base.world_size]
    if rest.empty:
        return lines
    best = rest.loc[rest.speedup.idxmax()]
    n, speedup = int(best.world_size), float(best.speedup)
    comm = float(best.get("exposed_comm_s", float("nan")))
    comm_text = f" ({comm * 1e3:.1f} ms of exposed comm per step at world size {n})" if pd.notna(comm) else ""
    limit = min(n, cores) / max(1.0, float(cores_used(base)) if pd.notna(cores_used(base)) else 1.0)
    if speedup < 1.0:
        lines.append(f"No world size beat the single process (best speedup {speedup:.2f}, at world size {n}): the")
        lines.append(f"all-reduce{comm_text} and the ranks' start-up cost more than splitting the batch saves.")
    else:
        lines.append(f"Fastest: world size {n}, {speedup:.2f}x the single process (the {n} ranks' cores allow at most")
        lines.append(f"{limit:.2g}x); the rest of the way to {limit:.2g}x is the all-reduce{comm_text} and idle time.")
    return lines


def report(frame: pd.DataFrame) -> str:
    """What the demo prints for a sweep's frame (scaled or not): the table (withheld speedups blank, with the
    reason), one warning line per withheld or doubtful number (the same sentences the plot carries), and the
    conclusion."""
    if "efficiency" not in frame.columns:
        frame = scaling_frame(frame)
    table = frame[[c for c in TABLE_COLUMNS if c in frame.columns]]
    warnings = scaling_warnings(frame)
    lines = [table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"), ""]
    lines += [f"WARNING: {w}" for w in warnings]
    lines += [
        "step_time_s: median over the repeats; step_time_iqr_s: their spread (IQR); cpu_s: the ranks' CPU seconds",
        "per step; waiting_for_core_s: compute time the ranks spent off a core (other programs' doing);",
        "speedup_low..speedup_high: the range the repeats allow; '-': withheld (see `withheld`).",
        "",
        *conclusion(frame, warnings),
    ]
    return "\n".join(lines)


def main(out: Path, quick: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(quick)
    print(f"dpkit demo: {COMPUTE_BOUND.words}: {cfg.model} (hidden={cfg.model_hidden}, layers={cfg.model_layers}), "
          f"global batch {cfg.global_batch}, {cfg.steps} steps ({cfg.warmup} warm-up), {cores_available()} cores; one "
          f"rank = one core (1 thread, the baseline too); {REPEATS} runs per world size, interleaved")  # fmt: skip
    frame = scaling_frame(sweep(cfg, out=out / "runs", repeats=REPEATS, world_size=WORLD_SIZES))
    frame[[c for c in CSV_COLUMNS if c in frame.columns]].to_csv(out / "demo.csv", index=False)
    speedup_plot(frame).savefig(out / "speedup.png", dpi=120, bbox_inches="tight")
    print(report(frame))
    print(f"wrote {out / 'demo.csv'}, {out / 'speedup.png'} and one result folder per run in {out / 'runs'}")
