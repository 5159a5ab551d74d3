"""Part of `dpkit bench link`: do buckets hide the all-reduce behind the backward on an emulated link?

Data parallelism, 2 ranks, 1 GbE emulated: the flat sync (one all-reduce after the whole backward) against
the bucketed one (each bucket's all-reduce starts from a gradient hook while the backward goes on), the two
taking turns run by run. Beside the measured steps: what the formula (dpkit.cost.model.bucketed_overlap, fed
with the measured backward and compute) says the buckets should save. The model has 18 MiB of gradients in
buckets of about 2.25 MiB: on a small machine each real transfer behind an emulated one still costs CPU beside
the backward (about a millisecond per all-reduce on 2 cores), which larger buckets pay for more cheaply.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..api import run
from ..config import RunConfig
from ..cost.model import PRESETS, allreduce_time, bucketed_overlap, buckets_of
from ..workloads import build_model

SYNCS = ("flat", "bucketed")


def overlap_config(quick: bool) -> RunConfig:
    """The workload: the batch makes the backward about as long as the all-reduce on 1 GbE (2-core VM)."""
    if quick:  # the same shape, a quarter of the bytes and work, for tests
        return RunConfig(parallelism="data", world_size=2, model="mlp", hidden=192, layers=4, global_batch=512,
                         steps=4, warmup=1, link="1GbE", bucket_mb=1.0, threads_per_rank=1)  # fmt: skip
    return RunConfig(parallelism="data", world_size=2, model="mlp", hidden=384, layers=4, global_batch=1024,
                     steps=6, warmup=2, link="1GbE", bucket_mb=2.5, threads_per_rank=1)  # fmt: skip


def _backward_s(result) -> float:
    """The median backward pass over the timed steps, every rank."""
    spans = result.timeline
    spans = spans[(spans.name == "backward") & (spans.step >= result.config.warmup)]
    return float((spans.end_s - spans.start_s).median())


def measure_overlap(cfg: RunConfig, repeats: int) -> pd.DataFrame:
    """`repeats` runs of each sync, taking turns: a row per sync with the median step, compute, exposed and
    hidden comm over the runs (each run's own numbers are medians over its timed steps), the runs' steps, and
    the formula's exposed comm and saving."""
    link = PRESETS[cfg.link]
    grads = [p.numel() * p.element_size() for p in build_model(cfg, cfg.seed).parameters()]
    comm = allreduce_time("native", sum(grads), cfg.world_size, link)
    results: dict[str, list] = {sync: [] for sync in SYNCS}
    for _ in range(repeats):
        for sync in SYNCS:
            results[sync].append(run(cfg.replace(grad_sync=sync)))
    rows = []
    for sync, runs in results.items():
        pick = {
            k: statistics.median(r.summary[k] for r in runs)
            for k in ("step_time_s", "compute_s", "exposed_comm_s", "hidden_comm_s")
        }
        rows.append({"grad_sync": sync, **pick, "steps_s": " ".join(f"{r.summary['step_time_s']:.5g}" for r in runs),
                     "backward_s": statistics.median(_backward_s(r) for r in runs)})  # fmt: skip
    frame = pd.DataFrame(rows).set_index("grad_sync")
    flat_compute = frame.compute_s["flat"]
    exposed = bucketed_overlap(buckets_of(grads, cfg.bucket_mb), frame.backward_s["bucketed"], cfg.world_size, link).exposed_s
    frame["formula_exposed_s"] = [comm, exposed]
    frame["formula_step_s"] = flat_compute + frame.formula_exposed_s  # at the flat runs' compute
    frame["saving"] = 1 - frame.step_time_s / frame.step_time_s["flat"]
    frame["formula_saving"] = 1 - frame.formula_step_s / frame.formula_step_s["flat"]
    frame["gradient_bytes"] = sum(grads)
    frame["bucket_mb"] = cfg.bucket_mb
    frame["global_batch"] = cfg.global_batch
    frame["repeats"] = repeats
    frame["link"] = cfg.link
    frame["gloo_loop"] = cfg.gloo_loop
    return frame.reset_index()


def overlap_plot(frame: pd.DataFrame) -> Figure:
    """Step time per sync: measured (median, bars fastest to slowest run) beside the formula's."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    x = range(len(frame))
    steps = [[float(v) * 1e3 for v in str(s).split()] for s in frame.steps_s]
    med = frame.step_time_s * 1e3
    err = [
        [max(m - min(s), 0.0) for m, s in zip(med, steps, strict=True)],
        [max(max(s) - m, 0.0) for m, s in zip(med, steps, strict=True)],
    ]
    ax.bar(
        [i - 0.2 for i in x],
        med,
        0.4,
        yerr=err,
        capsize=4,
        label=f"measured (median of {int(frame.repeats.iloc[0])} run(s), bars: fastest to slowest)",
    )
    ax.bar([i + 0.2 for i in x], frame.formula_step_s * 1e3, 0.4, label="formula (flat's compute + exposed comm)", alpha=0.6)
    ax.set_xticks(list(x), [f"{s} sync" for s in frame.grad_sync])
    ax.set_ylabel("step time (ms)")
    ax.set_title(f"Buckets hiding the all-reduce: 2 ranks, emulated {frame.link.iloc[0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(out: Path, args: argparse.Namespace) -> None:
    """`dpkit bench overlap`: the overlap part of `dpkit bench link` on its own (overlap.csv, overlap.png)."""
    frame = measure_overlap(overlap_config(args.quick), 1 if args.quick else 3)
    frame.to_csv(out / "overlap.csv", index=False)
    overlap_plot(frame).savefig(out / "overlap.png", dpi=120)
    cols = ["grad_sync", "step_time_s", "exposed_comm_s", "formula_exposed_s", "saving", "formula_saving"]
    print(frame[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"results: {out / 'overlap.csv'}, {out / 'overlap.png'}")
