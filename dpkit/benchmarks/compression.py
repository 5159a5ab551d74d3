"""Sending less: bytes per step, step time on an emulated link, and time to 95% held-out accuracy for each
technique (gradient compression fp16 / bf16 / PowerSGD / top-k, local SGD) against plain all-reduce.

Part 1, links: the digits MLP at its default size (about 2 MB of gradients, so a 1 GbE link dominates the
step), two workers, global batch 32, grad_sync flat (one buffer: each compressed collective pays the link's
latency once), 12 steps of which 4 warm-up, on emulated 1 GbE and 100 GbE; each variant once per seed, the
seeds taking turns (3 seeds; --quick: 1). Bytes are counted; step times are means over the timed steps.
Part 2, accuracy: the learning setup of `dpkit bench convergence` (hidden 128, 2 blocks, SGD momentum 0.9,
lr 0.01 at batch 8 scaled linearly to 32 with 20 warm-up steps, 20% held out, evaluated every 10 steps,
target 95%), two workers, no emulated link, 2 seeds (--quick: 1 and fewer variants).
Writes links.csv, accuracy.csv (one row per run, with the load average) and sending_less.png.
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

from ..analysis.sending_less import against_all_reduce, compare, time_to_target
from ..benchmarks.convergence import BASE as LEARNING
from ..benchmarks.convergence import WARMUP_STEPS
from ..config import RunConfig

LINKS_BASE = RunConfig(
    parallelism="data", world_size=2, global_batch=32, steps=12, warmup=4, grad_sync="flat", optimizer="sgd", momentum=0.9,
    lr=0.01, threads_per_rank=1, timeout_s=600,
)  # fmt: skip
ACCURACY_BASE = LEARNING.replace(
    parallelism="data", world_size=2, global_batch=32, lr_scaling="linear", warmup_steps=WARMUP_STEPS, grad_sync="flat"
)
LINK_VARIANTS = ("all-reduce", "fp16", "bf16", "PowerSGD", "top-k", "local SGD")
ACCURACY_VARIANTS: tuple[tuple[str, float | None], ...] = (
    ("all-reduce", None), ("fp16", None), ("bf16", None), ("PowerSGD", 1), ("PowerSGD", 4), ("top-k", 0.01),
    ("top-k", 0.1), ("local SGD", 4), ("local SGD", 16),
)  # fmt: skip


def provenance() -> dict:
    return {
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }


def plot(links: pd.DataFrame, accuracy: pd.DataFrame) -> Figure:
    """Left: bytes per step (log). Middle: step time per link (median over seeds, min-max bars). Right: steps to 95%."""
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    ax_b, ax_t, ax_a = fig.subplots(1, 3)
    table = against_all_reduce(links)
    first = table[table.link == table.link.iloc[0]]
    ax_b.barh(first.label, first.bytes_per_step)
    ax_b.set(xscale="log", xlabel="bytes per step per rank (counted)", title="Bytes sent per step")
    for i, link in enumerate(dict.fromkeys(table.link)):
        t = table[table.link == link]
        y = [j + 0.2 * i for j in range(len(t))]
        err = [t.step_time_ms - t.step_time_min_ms, t.step_time_max_ms - t.step_time_ms]
        ax_t.barh(y, t.step_time_ms, height=0.2, xerr=err, label=f"emulated {link}")
    ax_t.set_yticks(range(len(first)), first.label)
    ax_t.set(xlabel="step time, ms (median over seeds of the mean step; bars: min-max)", title="Step time on an emulated link")
    ax_t.legend(fontsize=8)
    tt = time_to_target(accuracy)
    ax_a.barh(tt.label, tt.steps_median, xerr=[tt.steps_median - tt.steps_min, tt.steps_max - tt.steps_median])
    ax_a.set(xlabel="steps to 95% held-out accuracy (median; bars: min-max over seeds)", title="Steps to target")
    for ax in (ax_b, ax_t, ax_a):
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("measured on this machine; links emulated; digits MLP, 2 workers", fontsize=9)
    return fig


def main(out: Path, args: argparse.Namespace) -> None:
    quick = bool(getattr(args, "quick", False))
    print(f"started {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, load {os.getloadavg()}", flush=True)
    links = compare(LINKS_BASE, LINK_VARIANTS, links=("1GbE", "100GbE"), seeds=range(1 if quick else 3))
    links = links.assign(**provenance())
    links.to_csv(out / "links.csv", index=False)
    print(against_all_reduce(links).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    variants = ACCURACY_VARIANTS if not quick else ACCURACY_VARIANTS[::3]
    accuracy = compare(ACCURACY_BASE, variants, links=(None,), seeds=range(1 if quick else 2))
    accuracy = accuracy.assign(**provenance())
    accuracy.to_csv(out / "accuracy.csv", index=False)
    print(time_to_target(accuracy).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    plot(links, accuracy).savefig(out / "sending_less.png", dpi=120)
    print(f"ended {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}, load {os.getloadavg()}")
    print(f"results: {out}/links.csv, {out}/accuracy.csv, {out}/sending_less.png")
