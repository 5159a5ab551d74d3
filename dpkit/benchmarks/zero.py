"""ZeRO stages 0-3 and torch FSDP2 on one workload: step time, bytes and optimizer state per rank.

An MLP of 16.9M parameters (hidden 1024, two hidden blocks of 2 x 1024 x 4096 weights), Adam, world size
4 with one thread per rank, global batch 64. Stage 0 is plain data parallelism; stages 1-3 are dpkit's
hand-written ZeRO (grad_sync='bucketed': reduce-scatters during the backward, stage 3 prefetching the next
block's gather); FSDP2 is torch's fully_shard with its collectives run by Comm. All use gloo's own
collectives (allreduce_algo='native'). The variants take turns run by run, so drift in the machine's
load hits them alike. The headline: ZeRO-3's median step time over FSDP2's (the target: within 1.3x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

import pandas as pd

from ..api import run
from ..config import RunConfig
from ..cost.model import zero_bytes_per_rank
from ..workloads import build_model

VARIANTS: dict[str, dict] = {
    "zero0 (data parallel)": {"zero_stage": 0, "grad_sync": "bucketed"},
    "zero1": {"zero_stage": 1, "grad_sync": "bucketed"},
    "zero2": {"zero_stage": 2, "grad_sync": "bucketed"},
    "zero3": {"zero_stage": 3, "grad_sync": "bucketed"},
    "fsdp2": {"zero_stage": 3, "grad_sync": "fsdp"},
}
SUMMARY = ["step_time_s", "comm_s", "exposed_comm_s", "compute_s", "idle_s", "bytes_sent_per_step", "final_loss"]
MEMORY = ["params_bytes", "grads_bytes", "optimizer_bytes", "buffers_bytes"]  # rank 0's, between steps


def zero_config(quick: bool) -> RunConfig:
    return RunConfig(
        parallelism="data",
        world_size=4,
        model="mlp",
        hidden=128 if quick else 1024,  # 1024: 64x1024 in, 2 x (1024x4096 + 4096x1024), 1024x10 out: 16.9M parameters
        layers=2,
        optimizer="adam",
        lr=1e-3,
        global_batch=64,
        steps=3 if quick else 8,
        warmup=1 if quick else 2,
        bucket_mb=25.0,
        threads_per_rank=1,
        timeout_s=600,
    )


def memory_of(result, params: int, trainable_tensors: int) -> tuple[dict[str, float], str]:
    """Rank 0's bytes held between steps: the strategy's memory_state where it has one (ZeRO, FSDP2), else
    plain data parallelism's by formula (whole parameters and gradients, Adam's two moments and step counts)."""
    memory = result.extra.get("memory", {}).get("0")
    if memory:
        return {k: float(memory[k]) for k in MEMORY}, "memory_state"
    return {"params_bytes": 4.0 * params, "grads_bytes": 4.0 * params, "optimizer_bytes": 8.0 * params + 4 * trainable_tensors,
            "buffers_bytes": 4.0 * params}, "formula"  # fmt: skip


def main(out: Path, args: argparse.Namespace) -> None:
    cfg = zero_config(args.quick)
    model = build_model(cfg, 0)
    params = sum(p.numel() for p in model.parameters())
    tensors = sum(1 for _ in model.parameters())
    rounds = 1 if args.quick else max(1, min(args.repeats, 3))
    rows = []
    for r in range(rounds):
        for label, changes in VARIANTS.items():
            run_cfg = cfg.replace(seed=r, **changes)
            load_before = os.getloadavg()[0]
            result = run(run_cfg)
            memory, source = memory_of(result, params, tensors)
            s = result.summary
            row = {"variant": label, "round": r, "zero_stage": run_cfg.zero_stage, "grad_sync": run_cfg.grad_sync}
            row.update({k: s[k] for k in SUMMARY})
            row.update(memory, memory_source=source, load_avg_1min_before=load_before, load_avg_1min_after=os.getloadavg()[0])
            rows.append(row)
            print(f"  round {r} {label:<22} step {s['step_time_s']:.3f} s", flush=True)
    runs = pd.DataFrame(rows)
    table = runs.groupby("variant", sort=False)[[*SUMMARY, *MEMORY]].median().reset_index()
    table.insert(1, "zero_stage", [VARIANTS[v]["zero_stage"] for v in table.variant])
    table["bytes_formula"] = [zero_bytes_per_rank(stage, 4 * params, cfg.world_size) for stage in table.zero_stage]
    fsdp2 = float(table.loc[table.variant == "fsdp2", "step_time_s"].iloc[0])
    table["vs_fsdp2"] = table.step_time_s / fsdp2
    table["memory_source"] = runs.groupby("variant", sort=False).memory_source.first().values
    table["parameters"], table["world_size"], table["threads_per_rank"] = params, cfg.world_size, cfg.threads_per_rank
    table["runs_per_variant"], table["timed_steps"] = rounds, cfg.steps - cfg.warmup
    table["cpu_count"] = os.cpu_count()
    table["measured_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runs.to_csv(out / "zero_runs.csv", index=False)
    table.to_csv(out / "zero.csv", index=False)
    print(f"MLP with {params / 1e6:.1f}M parameters, Adam, world size {cfg.world_size} x {cfg.threads_per_rank} thread(s), "
          f"global batch {cfg.global_batch}, {cfg.steps - cfg.warmup} timed steps x {rounds} run(s) per variant")  # fmt: skip
    shown = ["variant", "step_time_s", "exposed_comm_s", "compute_s", "bytes_sent_per_step", "bytes_formula", *MEMORY, "vs_fsdp2"]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    zero3 = float(table.loc[table.variant == "zero3", "step_time_s"].iloc[0])
    verdict = "within" if zero3 <= 1.3 * fsdp2 else "NOT within"
    print(f"ZeRO-3 / FSDP2 median step time: {zero3:.3f} s / {fsdp2:.3f} s = {zero3 / fsdp2:.2f}x ({verdict} the 1.3x target)")
    print(f"wrote {out / 'zero.csv'} and {out / 'zero_runs.csv'}")
