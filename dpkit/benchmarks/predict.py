"""`dpkit bench predict`: the cost model's step time against real runs, per strategy.

Every config is run for real; its compute is measured once in a single process (same batch per
rank, same threads per rank); communication comes from this machine's calibration (from
`dpkit bench calibrate`, next to this folder; a quick one is made if there is none). Prints
predicted against measured step and comm time and the median |relative error| per strategy,
and plots predicted curves over measured points with the residuals.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..analysis.predict import compare_many
from ..config import RunConfig
from ..cost.model import HostModel, Link, fit_host


def calibration_for(out: Path) -> tuple[HostModel | Link, str]:
    """The single-host view of this machine (what runs here pay); the cluster Link only from an older file."""
    path = out.parent / "bench-calibrate" / "calibration.json"
    if path.exists():
        host = HostModel.load(path)
        return (host, f"single-host view, {path}") if host else (Link.load(path), f"cluster view (older file), {path}")
    from .calibrate import QUICK_ALLREDUCE, QUICK_P2P, measure, samples_of

    frame = measure(QUICK_P2P, QUICK_ALLREDUCE, [2], repeats=3)
    return HostModel(fit_host(samples_of(frame), name="quick calibration")), (
        "single-host view, a quick calibration at n=2 (run `dpkit bench calibrate` for a better one)"
    )


RUNS_PER_CONFIG = 3  # one run on 2 shared cores can be 20% off the next


def configs(quick: bool, max_n: int) -> list[RunConfig]:
    """The benchmark workloads: an MLP (about 8M parameters; tiny with --quick) under every strategy the model covers."""
    base = RunConfig(
        model="mlp",
        hidden=64 if quick else 512,
        layers=4,
        global_batch=48 if quick else 96,
        steps=4 if quick else 8,
        warmup=1 if quick else 2,
    )
    ns = [2] if quick else list(range(2, max_n + 1))
    out = []
    for n in ns:
        for grad_sync in ("flat", "bucketed"):
            out.append(
                base.replace(parallelism="data", world_size=n, grad_sync=grad_sync, global_batch=base.global_batch // n * n)
            )
        out.append(
            base.replace(parallelism="data", sync="ps", world_size=n, num_servers=1, global_batch=base.global_batch // n * n)
        )
        for schedule in ("gpipe", "1f1b"):
            out.append(base.replace(parallelism="pipeline", world_size=n, schedule=schedule, microbatches=4))
    return out


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    link, source = calibration_for(out)
    repeats = 1 if quick else RUNS_PER_CONFIG
    frame = compare_many(configs(quick, int(getattr(args, "max_world_size", 4))), link, repeats=repeats)
    frame.to_csv(out / "predict.csv", index=False)
    from ..viz.cost_plots import predicted_vs_measured_plot

    predicted_vs_measured_plot(frame).savefig(out / "predict.png", dpi=120, bbox_inches="tight")
    show = frame.assign(
        pred_step_ms=frame.predicted_step_time_s * 1e3,
        meas_step_ms=frame.measured_step_time_s * 1e3,
        pred_comm_ms=frame.predicted_comm_s * 1e3,
        meas_comm_ms=frame.measured_comm_s * 1e3,
        err_pct=frame.rel_error * 100,
    )
    cols = ["strategy", "world_size", "pred_step_ms", "meas_step_ms", "err_pct", "pred_comm_ms", "meas_comm_ms"]
    print(f"model: {link.describe()} ({source})")
    print(
        f"measured: median over {repeats} run(s) per config (configs taking turns), each the median of its timed steps; "
        f"compute profiles: median over {repeats} single-process runs, taking turns with them"
    )
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    per = (
        frame.assign(abs_err=frame.rel_error.abs()).groupby(frame.strategy.str.split("/").str[:2].str.join("/")).abs_err.median()
    )
    print("median |relative error| of the step time per strategy:")
    print(pd.DataFrame({"median_abs_rel_error": per}).to_string(float_format=lambda v: f"{v:.1%}"))
    print(f"results: {out / 'predict.csv'}, {out / 'predict.png'}")
