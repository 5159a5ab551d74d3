"""`dpkit bench ps_vs_allreduce`: a synchronous parameter server (k = 1, 2 servers) against ring all-reduce.

Same workload, growing worker counts n (weak scaling: 32 samples per worker). Per rank and step it
reports comm time and bytes, measured beside predicted (docs/formulas.md), S being the gradient bytes:
each PS worker sends S and receives S (moves 2S), each server sends and receives n·S/k (moves 2nS/k,
growing with n), a ring rank sends 2(n-1)/n·S and receives as much (the ring is symmetric, so its
received bytes are taken equal to the measured sent bytes). Predicted times use the alpha-beta cost
model with a saved link calibration (`dpkit bench calibrate`), when there is one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..api import run
from ..config import RunConfig, max_local_ranks
from ..results import RunResult
from ..strategies.base import trainable
from ..viz.cost_plots import ps_vs_allreduce_plot
from ..workloads import build_model

METHODS: dict[str, dict[str, Any]] = {
    "ps k=1": {"sync": "ps", "num_servers": 1},
    "ps k=2": {"sync": "ps", "num_servers": 2},
    "ring": {"sync": "allreduce"},
}


def base_config(quick: bool) -> RunConfig:
    return RunConfig(
        parallelism="data",
        model="mlp",
        hidden=64 if quick else 128,
        layers=4,
        steps=3 if quick else 10,
        warmup=1 if quick else 2,
        allreduce_algo="ring",
        grad_sync="flat",
        timeout_s=300,
    )


def gradient_bytes(cfg: RunConfig) -> int:
    return sum(p.numel() * p.element_size() for p in trainable(build_model(cfg, cfg.seed)))


def predicted(method: str, role: str, size: int, n: int, k: int) -> tuple[float, float]:
    """(bytes sent, bytes moved = sent + received) per rank per step, from the docs/formulas.md formulas."""
    if method == "ring":
        sent = 2 * (n - 1) / n * size
        return sent, 2 * sent
    if role == "worker":
        return size, 2 * size
    return n * size / k, 2 * n * size / k


def rows_of(method: str, result: RunResult, size: int) -> list[dict]:
    """One row per role: medians over timed steps of the per-rank means."""
    cfg = result.config
    stats = result.step_stats()
    stats = stats[stats.step >= cfg.warmup]
    k = cfg.num_servers if method != "ring" else 0
    received = {int(r): b / cfg.steps for r, b in result.extra.get("bytes_in", {}).items()}
    stats = stats.assign(bytes_recv=[received.get(r, float("nan")) for r in stats["rank"]])
    out = []
    for role, g in stats.groupby("role"):
        per_step = g.groupby("step")[["comm_s", "bytes_sent", "bytes_recv"]].mean().median()
        recv = per_step.bytes_recv if method != "ring" else per_step.bytes_sent
        sent_pred, moved_pred = predicted(method, role, size, cfg.world_size, k)
        out.append(
            {
                "method": method,
                "workers": cfg.world_size,
                "servers": k,
                "role": role if method != "ring" else "ring rank",
                "ranks": g["rank"].nunique(),
                "step_time_s": float(result.summary["step_time_s"]),
                "comm_s": float(per_step.comm_s),
                "bytes_sent": float(per_step.bytes_sent),
                "bytes_sent_pred": sent_pred,
                "bytes_moved": float(per_step.bytes_sent + recv),
                "bytes_moved_pred": moved_pred,
                "S_bytes": size,
            }
        )
    return out


def add_time_prediction(frame: pd.DataFrame, calibration: Path) -> tuple[pd.DataFrame, str]:
    """comm_pred_s from the cost model (PS: a worker's push + pull; ring: one all-reduce), if calibrated."""
    if not calibration.exists():
        return frame.assign(comm_pred_s=float("nan")), f"no link calibration at {calibration}: run `dpkit bench calibrate`"
    from ..cost.model import HostModel, Link, comm_time, ps_time

    host = HostModel.load(calibration)  # the single-host view, per process count, when calibrated so
    model: HostModel | Link = host or Link.load(calibration)

    def one(r) -> float:
        if r.method == "ring":
            return comm_time("ring", r.S_bytes, r.workers, model)
        if r.role != "worker":
            return float("nan")
        link = host.link(r.workers + r.servers) if host is not None else Link.load(calibration)  # all processes share the host
        return ps_time(r.S_bytes, r.workers, r.servers, link)

    return frame.assign(comm_pred_s=[one(r) for r in frame.itertuples()]), f"calibration {calibration} ({model.describe()})"


def measure(world_sizes: list[int], quick: bool) -> pd.DataFrame:
    base = base_config(quick)
    rows = []
    for n in world_sizes:
        for method, knobs in METHODS.items():
            cfg = base.replace(world_size=n, global_batch=32 * n, **knobs)
            if cfg.num_processes > max_local_ranks():
                continue
            rows += rows_of(method, run(cfg), gradient_bytes(cfg))
    frame = pd.DataFrame(rows)
    frame["cpu_count"] = os.cpu_count()
    return frame


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    max_n = int(getattr(args, "max_world_size", 4))
    if max_n < 2:
        raise ValueError(f"--max-world-size={max_n} is not allowed: the comparison needs at least 2 workers")
    world_sizes = [2, 3] if quick else list(range(2, max_n + 1))
    frame = measure(world_sizes, quick)
    calib = getattr(args, "calibration", None)
    frame, source = add_time_prediction(frame, Path(calib) if calib else out.parent / "bench-calibrate" / "calibration.json")
    frame.to_csv(out / "ps_vs_allreduce.csv", index=False)
    ps_vs_allreduce_plot(frame).savefig(out / "ps_vs_allreduce.png", dpi=120, bbox_inches="tight")
    show = frame.assign(
        comm_ms=frame.comm_s * 1e3,
        pred_ms=frame.comm_pred_s * 1e3,
        sent_KiB=frame.bytes_sent / 2**10,
        sent_pred_KiB=frame.bytes_sent_pred / 2**10,
        moved_KiB=frame.bytes_moved / 2**10,
        moved_pred_KiB=frame.bytes_moved_pred / 2**10,
    )
    cols = [
        "workers",
        "method",
        "role",
        "ranks",
        "comm_ms",
        "pred_ms",
        "sent_KiB",
        "sent_pred_KiB",
        "moved_KiB",
        "moved_pred_KiB",
    ]
    print(
        f"sync parameter server vs ring all-reduce, gloo/CPU, {os.cpu_count()} cores, S = {frame.S_bytes.iloc[0] / 2**10:.0f} KiB"
    )
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"predicted comm time: {source}")
    print(f"results: {out / 'ps_vs_allreduce.csv'}, {out / 'ps_vs_allreduce.png'}")
