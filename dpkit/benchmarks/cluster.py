"""`dpkit bench cluster`: the cluster-scale model (dpkit.analysis.cluster) against measured runs on emulated links.

Small, communication-dominated data-parallel runs (analysis.cluster.validation_configs): ring, tree, hierarchical
and a parameter server at n = 2 and 4 on one link, and on 2 nodes x 2 ranks, twice: on emulated 1GbE (NVLink
within a node), the issue's links, which this 2-core machine does not keep up with; and on a custom link ten times
slower (1GbE within a node), which it does. Each config runs --repeats times (default 2 here; the configs taking
turns); each model's compute is measured in one process once per round. Writes cluster.csv (one row per config,
with the load average, the messages of the timed steps the machine could not pace in time, and whether the row
measured its links: `honoured`) and prints the median |relative error| per sync method over the honoured rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
from pathlib import Path

import torch

from ..analysis.cluster import error_by_sync, links_honoured, validate, validation_configs


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    repeats = 1 if quick else min(int(getattr(args, "repeats", 2) or 2), 3)
    started = dt.datetime.now(dt.timezone.utc)
    table = validate(validation_configs(quick), repeats=repeats)
    table["measured_at"] = started.isoformat(timespec="seconds")
    table["hostname"] = platform.node()
    table["torch"] = torch.__version__
    table.to_csv(out / "cluster.csv", index=False)
    show = table.assign(
        pred_ms=table.predicted_step_time_s * 1e3,
        meas_ms=table.measured_step_time_s * 1e3,
        err_pct=table.rel_error * 100,
        pred_kB=table.predicted_bytes_per_rank / 1e3,
        meas_kB=table.measured_bytes_per_rank / 1e3,
        inter_kB=table.predicted_inter_node_bytes_per_rank / 1e3,
        meas_inter_kB=table.measured_inter_node_bytes_per_rank / 1e3,
    )
    cols = ["sync", "topology", "pred_ms", "meas_ms", "err_pct", "pred_kB", "meas_kB", "inter_kB", "meas_inter_kB",
            "link_not_honoured", "paced_messages", "worst_late_ms", "honoured"]  # fmt: skip
    show["worst_late_ms"] = table.worst_late_s * 1e3
    print(
        f"started {started:%Y-%m-%d %H:%M} UTC, {repeats} run(s) per config, load average {table.load_1min_start.iloc[0]:.2f} -> {table.load_1min_end.iloc[0]:.2f}"
    )
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    for link, rows in table.groupby("link", sort=False):
        print(f"{link}: {links_honoured(rows)[1]}")
    print("median |relative error| of the step per sync method (predicted vs measured, emulated links, honoured rows):")
    for sync, err in error_by_sync(table).items():
        print(f"  {sync:13s} {err:.1%}")
    kept = table[table.honoured]
    overall = f"{kept.rel_error.abs().median():.1%} over {len(kept)} of {len(table)} rows" if len(kept) else "no row honoured"
    print(f"overall: {overall}; results: {out / 'cluster.csv'}")
