"""The data-parallel ladder: per-tensor -> flat -> bucketed overlap -> torch DDP, on one workload.

Same machine, same run, same model (an MLP of >= 10M parameters by default), world size 2: median
step time, comm time and exposed comm time of each gradient-sync variant, and the bucketed
variant's step time relative to DDP's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..api import sweep
from ..config import GRAD_SYNCS, RunConfig
from ..workloads import build_model, count_parameters


def ladder_config(quick: bool) -> RunConfig:
    return RunConfig(
        parallelism="data",
        world_size=2,
        model="mlp",
        hidden=256 if quick else 800,  # 800 -> 4 blocks of 2*800*3200 weights: 20.6M parameters
        layers=4,
        global_batch=64,
        steps=4 if quick else 12,
        warmup=1 if quick else 2,
        bucket_mb=25.0,
    )


def main(out: Path, args: argparse.Namespace) -> None:
    cfg = ladder_config(args.quick)
    params = count_parameters(build_model(cfg, 0))
    rounds = 1 if args.quick else max(1, min(args.repeats, 3))
    frames = []
    for r in range(rounds):  # interleave variants so drift in machine load hits all of them alike
        syncs = [g for g in GRAD_SYNCS if g != "fsdp"]  # 'fsdp' shards (zero_stage=3): `dpkit bench zero` compares it
        frame = sweep(cfg.replace(seed=r), grad_sync=syncs, progress=False)
        frame["round"] = r
        frames.append(frame)
    runs = pd.concat(frames, ignore_index=True)
    cols = ["step_time_s", "comm_s", "exposed_comm_s", "compute_s", "idle_s", "bytes_sent_per_step"]
    table = runs.groupby("grad_sync", sort=False)[cols].median().reset_index()
    ddp = float(table.loc[table.grad_sync == "ddp", "step_time_s"].iloc[0])
    table["vs_ddp"] = table.step_time_s / ddp
    table["parameters"] = params
    table["threads_per_rank"] = runs.threads_per_rank.iloc[0]
    table["runs_per_variant"] = rounds
    runs.to_csv(out / "dp_ladder_runs.csv", index=False)
    table.to_csv(out / "dp_ladder.csv", index=False)
    print(f"MLP with {params / 1e6:.1f}M parameters, world size {cfg.world_size}, global batch {cfg.global_batch}, "
          f"{cfg.steps - cfg.warmup} timed steps x {rounds} run(s) per variant")  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out / 'dp_ladder.csv'}")
