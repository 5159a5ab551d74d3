"""Memory per rank, measured beside predicted, for every strategy: `dpkit bench memory`.

Each run counts what each rank holds (dpkit.runtime.memory: parameters, gradients, optimizer state, the
peak of the activations saved for backward, communication buffers) and the memory model predicts the same
fields from the config alone (dpkit.cost.memory, divided per strategy by its spec). Full mode: an MLP of
2.2M parameters with Adam at world size 4 (pipelines also at 2 stages, where 1F1B keeps fewer micro-batches
than GPipe), every strategy and gradient sync, the parameter server sync and async, ZeRO-1/2/3 and FSDP2,
plus a transformer and a CNN (other activation rules). --quick: a tiny MLP at world size 2.

Writes memory.csv (a row per run, rank and kind: measured, predicted, predicted/measured), memory_runs.csv
(a row per run: wall time, the worst ratio per kind, buffers too, the machine's load), memory.png (where one rank's bytes
go, measured beside predicted) and memory_timeline.png (activations over a step of GPipe and 1F1B).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import pandas as pd

from ..analysis import memory_compare
from ..api import run
from ..config import RunConfig
from ..strategies.registry import spec_for
from ..viz.memory_plots import memory_breakdown_plot, memory_timeline_plot

#: the bounds the tests hold the model to: parameters, gradients, optimizer within 10%, activations within 25%
BOUNDS = {"mem_params_bytes": 0.10, "mem_grads_bytes": 0.10, "mem_optimizer_bytes": 0.10, "mem_activations_peak_bytes": 0.25}


def base_config(quick: bool) -> RunConfig:
    if quick:
        return RunConfig(
            model="mlp", hidden=32, layers=3, global_batch=24, steps=2, warmup=1, optimizer="adam", threads_per_rank=1
        )
    return RunConfig(model="mlp", hidden=256, layers=4, global_batch=48, steps=2, warmup=1, optimizer="adam", threads_per_rank=1,
                     microbatches=4, timeout_s=300)  # fmt: skip


def configs(quick: bool) -> dict[str, RunConfig]:
    """Every strategy (and, in full mode, every gradient sync and a few all-reduce algorithms), by name."""
    base = base_config(quick)
    n = 2 if quick else 4
    data = base.replace(parallelism="data", world_size=n)
    out = {"single": base}
    out.update(memory_compare.strategy_configs(base, n))
    out.update(
        {
            "data per-tensor": data.replace(grad_sync="per-tensor"),
            "data flat ring": data.replace(grad_sync="flat", allreduce_algo="ring"),
            "data ddp": data.replace(grad_sync="ddp"),
            "ps sync": data.replace(sync="ps", world_size=n - 1 if n > 2 else n),
            "pipeline gpipe p=2": base.replace(parallelism="pipeline", world_size=2, schedule="gpipe"),
            "pipeline 1f1b p=2": base.replace(parallelism="pipeline", world_size=2, schedule="1f1b"),
        }
    )
    if not quick:
        tokens = base.replace(model="transformer", hidden=64, seq_len=32)
        out.update(
            {
                "data tree (sgd)": data.replace(allreduce_algo="tree", optimizer="sgd"),
                "ps async, 2 servers": data.replace(sync="ps-async", world_size=3, num_servers=2),
                "ZeRO-3 flat ring": data.replace(zero_stage=3, grad_sync="flat", allreduce_algo="ring"),
                "pipeline gpipe p=4": base.replace(parallelism="pipeline", world_size=4, schedule="gpipe"),
                "transformer single": tokens,
                "transformer tensor": tokens.replace(parallelism="tensor", world_size=2),
                "transformer pipeline": tokens.replace(parallelism="pipeline", world_size=2, schedule="gpipe"),
                "cnn data": base.replace(model="cnn", hidden=16, parallelism="data", world_size=2),
            }
        )
    return out


def main(out: Path, args: argparse.Namespace) -> None:
    runs = configs(args.quick)
    rows, per_run, results = [], [], {}
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    for label, cfg in runs.items():
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - t0
        results[label] = result
        table = memory_compare.compare(result)
        table.insert(0, "label", label)
        rows.append(table)
        training = table[table["rank"].isin(result.training_ranks())]
        worst = {f"worst_ratio_{k}": _worst(training[training.kind == k].ratio) for k in (*BOUNDS, "mem_buffers_bytes")}
        within = all(abs(worst[f"worst_ratio_{k}"] - 1) <= bound for k, bound in BOUNDS.items())
        per_run.append(
            {"label": label, "strategy": spec_for(cfg).label(cfg), "world_size": cfg.world_size,
             "num_processes": cfg.num_processes, "wall_s": wall, **worst, "within_bounds": within,
             "mem_peak_bytes": result.summary["mem_peak_bytes"], "load_avg_1min_before": load_before,
             "load_avg_1min_after": os.getloadavg()[0]}
        )  # fmt: skip
        print(f"  {label:<24} {wall:5.1f} s  peak/rank {result.summary['mem_peak_bytes'] / 1e6:7.2f} MB  "
              f"worst predicted/measured: " + ", ".join(f"{k[4:-6]} {worst[f'worst_ratio_{k}']:.3f}" for k in (*BOUNDS, "mem_buffers_bytes"))
              + ("" if within else "  OUTSIDE THE BOUNDS"), flush=True)  # fmt: skip
    frame = pd.concat(rows, ignore_index=True)
    summary = pd.DataFrame(per_run)
    stamp = {"cpu_count": os.cpu_count(), "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    frame.assign(**stamp).to_csv(out / "memory.csv", index=False)
    summary.assign(**stamp).to_csv(out / "memory_runs.csv", index=False)
    shown = {k: runs[k] for k in memory_compare.strategy_configs(base_config(args.quick), 2 if args.quick else 4)}
    fig = memory_breakdown_plot(memory_compare.breakdown(shown, results))
    fig.savefig(out / "memory.png", dpi=110)
    memory_timeline_plot(results["pipeline gpipe p=2"]).savefig(out / "memory_timeline.png", dpi=110)
    gpipe, onef = (results[f"pipeline {s} p=2"].memory_frame().set_index("rank") for s in ("gpipe", "1f1b"))
    act = "mem_activations_peak_bytes"
    print(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores; "
          f"{int(summary.within_bounds.sum())}/{len(summary)} within the bounds (params, grads, optimizer 10%, activations 25%)")  # fmt: skip
    print(f"pipeline p=2, m={runs['pipeline gpipe p=2'].microbatches}: stage 0 keeps {gpipe.loc[0, act] / 1e3:.0f} kB of "
          f"activations under GPipe, {onef.loc[0, act] / 1e3:.0f} kB under 1F1B ({gpipe.loc[0, act] / onef.loc[0, act]:.2f}x)")  # fmt: skip
    print(f"load average (1 min): {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (other work on the machine)")
    print("buffers are not held to a bound: sharded data parallelism's are an upper bound (their peak depends on timing)")
    print(f"wrote {out / 'memory.csv'}, {out / 'memory_runs.csv'}, {out / 'memory.png'} and {out / 'memory_timeline.png'}")


def _worst(ratios: pd.Series) -> float:
    """The ratio farthest from 1 (1.0 where nothing was counted and nothing predicted)."""
    finite = ratios[ratios.notna()]
    return float(finite.loc[(finite - 1).abs().idxmax()]) if len(finite) else 1.0
