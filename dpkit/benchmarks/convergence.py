"""Convergence: steps and time to a target held-out accuracy against global batch and learning-rate rule,
and against the sync mode of data-parallel workers.

The digits MLP (hidden 128, 2 blocks, SGD momentum 0.9, lr 0.01 tuned at batch 8), 20% of the digits held
out, evaluated every 10 steps, target 95%. Part 1, one process: global batch 8, 32, 128, 512 with lr_scaling
none, linear and sqrt (both with 20 warm-up steps); at batch 8 every rule is the same run. Part 2, two
workers at global batch 32 (linear rule): sync all-reduce, sync parameter server, SSP (staleness <= 1) and
async parameter server. Each config runs once per seed (2 seeds; --quick: 1 and a smaller grid). Writes
convergence.csv (one row per run, with when, where, threads and the load average around it) and
convergence.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
from pathlib import Path

import pandas as pd
import torch
from matplotlib.figure import Figure

from ..api import run
from ..config import RunConfig
from ..viz.learning_plots import SYNC_MODES, learning_config

BASE = RunConfig(
    hidden=128, layers=2, lr=0.01, base_batch=8, eval_every=10, target_accuracy=0.95, steps=400, warmup=1, threads_per_rank=1,
    timeout_s=600,
)  # fmt: skip
BATCHES = (8, 32, 128, 512)
RULES = ("none", "linear", "sqrt")
WARMUP_STEPS = 20


def configs(quick: bool) -> list[tuple[str, str, RunConfig]]:
    """(part, label, config) of every run."""
    out: list[tuple[str, str, RunConfig]] = [("batch", "any rule", BASE.replace(global_batch=8, steps=800))]
    for b in BATCHES[1:] if not quick else (128,):
        for rule in RULES:
            cfg = BASE.replace(global_batch=b, lr_scaling=rule, warmup_steps=0 if rule == "none" else WARMUP_STEPS)
            out.append(("batch", rule, cfg))
    sync_base = BASE.replace(lr_scaling="linear", warmup_steps=WARMUP_STEPS)
    for mode in SYNC_MODES if not quick else ("sync all-reduce", "async PS"):
        out.append(("sync", mode, learning_config(sync_base, 32, 2, mode, "linear")))
    return out


def measure(quick: bool, seeds: int) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):  # seeds take turns, so a drift in load hits every config alike
        for part, label, cfg in configs(quick):
            load_before = os.getloadavg()[0]
            r = run(cfg.replace(seed=seed))
            s = r.summary
            rows.append(
                {
                    "part": part,
                    "label": label,
                    "seed": seed,
                    "global_batch": cfg.global_batch,
                    "world_size": cfg.world_size,
                    "sync": cfg.sync if cfg.world_size > 1 else "one process",
                    "max_staleness": cfg.max_staleness,
                    "lr_scaling": cfg.lr_scaling,
                    "warmup_steps": cfg.warmup_steps,
                    "peak_lr": max(r.lrs),
                    "steps_to_target": s["steps_to_target"],
                    "time_to_target_s": s["time_to_target_s"],
                    "best_accuracy": s["best_accuracy"],
                    "final_accuracy": s["final_accuracy"],
                    "target_reason": s["target_reason"],
                    "step_time_ms": s["step_time_s"] * 1e3,
                    "threads_per_rank": s["threads_per_rank"],
                    "num_processes": s["num_processes"],
                    "device": s["device"],
                    "load_1min_before": load_before,
                    "load_1min_after": os.getloadavg()[0],
                    "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "hostname": socket.gethostname(),
                    "cpu_count": os.cpu_count(),
                    "torch": torch.__version__,
                }
            )
            print(f"{part:5s} {label:22s} batch {cfg.global_batch:4d} seed {seed}: {s['target_reason']}", flush=True)
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame) -> Figure:
    """Left: steps to target against global batch per rule (median over seeds; x: never reached).
    Right: steps to target per sync mode, each seed a dot."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    ax_b, ax_s = fig.subplots(1, 2)
    batch = frame[frame.part == "batch"]
    first = batch[batch.global_batch == BATCHES[0]]
    for i, rule in enumerate(RULES):
        g = pd.concat([first, batch[batch.label == rule]])
        med = g.groupby("global_batch").steps_to_target.median()
        ax_b.plot(med.index, med.to_numpy(), "o-", color=f"C{i}", label=f"lr_scaling={rule}")
        miss = g[g.steps_to_target.isna()].global_batch.unique()
        if len(miss):
            top = float(batch.steps_to_target.max()) * 1.5
            ax_b.scatter(miss, [top] * len(miss), marker="x", s=80, color=f"C{i}", label=f"{rule}: not reached")
    ax_b.set(xscale="log", yscale="log", xlabel="global batch", ylabel="steps to 95% held-out accuracy",
             title="Steps to target (one process; median over seeds)")  # fmt: skip
    ax_b.set_xticks(list(BATCHES), [str(b) for b in BATCHES])
    sync = frame[frame.part == "sync"]
    labels = list(dict.fromkeys(sync.label))
    for i, label in enumerate(labels):
        g = sync[sync.label == label]
        ax_s.scatter([i] * len(g), g.steps_to_target.fillna(-1), s=40, label=None)
    ax_s.set_xticks(range(len(labels)), labels, rotation=15)
    ax_s.set(ylabel="steps to target (-1: not reached)", title="Two workers, global batch 32: sync mode (each seed a dot)")
    for ax in (ax_b, ax_s):
        ax.grid(alpha=0.3, which="both")
    ax_b.legend(fontsize=8)
    fig.suptitle("measured on this machine; digits MLP, SGD momentum 0.9, lr 0.01 at batch 8", fontsize=9)
    return fig


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    seeds = 1 if quick else 2
    print(f"started {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, load {os.getloadavg()}", flush=True)
    frame = measure(quick, seeds)
    frame.to_csv(out / "convergence.csv", index=False)
    plot(frame).savefig(out / "convergence.png", dpi=120)
    cols = ["part", "label", "global_batch", "seed", "peak_lr", "steps_to_target", "time_to_target_s", "best_accuracy"]
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"ended {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, load {os.getloadavg()}")
    print(f"results: {out}/convergence.csv, {out}/convergence.png")
