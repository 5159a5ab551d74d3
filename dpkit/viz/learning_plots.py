"""Does the model learn? Held-out accuracy and loss against steps, samples and training time; steps and
time to a target accuracy against global batch, learning-rate rule, sync mode and world size; a panel.

Logic lives here (tested headless); notebooks/07_learning.ipynb only calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import RunConfig
from ..results import RunResult
from .ps_tables import STALENESS_UNITS, staleness_both_units

X_LABELS = {"step": "steps", "samples_seen": "samples seen", "train_time_s": "training time (s, evaluation excluded)"}

#: the sync modes a learner compares: how data-parallel workers combine their gradients
SYNC_MODES: dict[str, dict[str, Any]] = {
    "sync all-reduce": {"sync": "allreduce", "max_staleness": None},
    "sync PS": {"sync": "ps", "max_staleness": None},
    "SSP (staleness <= 1)": {"sync": "ps-async", "max_staleness": 1},
    "async PS": {"sync": "ps-async", "max_staleness": None},
}


def learning_config(base: RunConfig, global_batch: int, world_size: int, sync_mode: str, lr_rule: str) -> RunConfig:
    """`base` at this global batch, world size, sync mode (a SYNC_MODES key) and learning-rate rule
    (lr_scaling). World size 1 is one process (any sync mode: there is nothing to combine)."""
    if sync_mode not in SYNC_MODES:
        raise ValueError(f"sync_mode={sync_mode!r} is not allowed: choose one of {list(SYNC_MODES)}")
    cfg = base.replace(global_batch=global_batch, lr_scaling=lr_rule)
    if world_size == 1:
        return cfg.replace(parallelism="none", world_size=1)
    return cfg.replace(parallelism="data", world_size=world_size, **SYNC_MODES[sync_mode])


def learning_curves(runs: Mapping[str, RunResult], xs: Sequence[str] = ("step", "samples_seen", "train_time_s")) -> Figure:
    """Held-out accuracy (top) and loss (bottom) of each run against each of `xs`; the target as a line."""
    fig = Figure(figsize=(4.2 * len(xs), 6.0), layout="constrained")
    axes = fig.subplots(2, len(xs), squeeze=False)
    targets = {r.config.target_accuracy for r in runs.values()} - {None}
    for label, r in runs.items():
        for j, x in enumerate(xs):
            axes[0, j].plot(r.evals[x], r.evals.accuracy, "o-", ms=3, label=label)
            axes[1, j].plot(r.evals[x], r.evals.loss, "o-", ms=3, label=label)
    for j, x in enumerate(xs):
        for t in targets:
            axes[0, j].axhline(t, color="k", ls="--", lw=1, label=f"target {t:g}")
        axes[0, j].set(ylabel="held-out accuracy", ylim=(0, 1.02), xlabel=X_LABELS.get(x, x))
        axes[1, j].set(ylabel="held-out loss", xlabel=X_LABELS.get(x, x), yscale="log")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Held-out accuracy and loss (measured; evaluation outside the step clock)", fontsize=10)
    return fig


def to_target_frame(runs: Mapping[str, RunResult]) -> pd.DataFrame:
    """One row per run: label, global batch, world size, lr rule, effective peak lr, and the learning summary."""
    rows = []
    for label, r in runs.items():
        s = r.summary
        rows.append(
            {
                "run": label,
                "global_batch": r.config.global_batch,
                "world_size": r.config.world_size,
                "lr_scaling": r.config.lr_scaling,
                "peak_lr": max(r.lrs) if r.lrs else r.config.lr,
                "steps_to_target": s.get("steps_to_target"),
                "samples_to_target": s.get("samples_to_target"),
                "time_to_target_s": s.get("time_to_target_s"),
                "best_accuracy": s.get("best_accuracy"),
                "final_accuracy": s.get("final_accuracy"),
                "target_reason": s.get("target_reason"),
            }
        )
    return pd.DataFrame(rows)


def steps_to_target_plot(frame: pd.DataFrame, hue: str = "lr_scaling") -> Figure:
    """Steps to target against global batch (log-log), one line per `hue`; a run that never reached the
    target is an x at the top. The dotted line is perfect scaling from the smallest batch (steps ∝ 1/batch)."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    reached = frame.dropna(subset=["steps_to_target"])
    top = float(reached.steps_to_target.max()) * 1.6 if len(reached) else 1.0
    for name, g in frame.groupby(hue, sort=False):
        g = g.sort_values("global_batch")
        ok = g.dropna(subset=["steps_to_target"])
        (line,) = ax.plot(ok.global_batch, ok.steps_to_target, "o-", label=f"{hue}={name}")
        miss = g[g.steps_to_target.isna()]
        if len(miss):
            ax.scatter(miss.global_batch, [top] * len(miss), marker="x", s=80, color=line.get_color(),
                       label=f"{hue}={name}: not reached")  # fmt: skip
    if len(reached):
        b0 = float(reached.global_batch.min())
        s0 = float(reached[reached.global_batch == b0].steps_to_target.min())
        bs = np.array(sorted(frame.global_batch.unique()), dtype=float)
        ax.plot(bs, s0 * b0 / bs, "k:", lw=1, label="perfect scaling (steps ∝ 1/batch)")
    ax.set(
        xscale="log", yscale="log", xlabel="global batch", ylabel="steps to target", title="Steps to target accuracy (measured)"
    )
    ax.set_xticks(sorted(frame.global_batch.unique()), [str(int(b)) for b in sorted(frame.global_batch.unique())])
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def time_to_accuracy_plot(measured: pd.DataFrame, predicted: pd.DataFrame | None = None) -> Figure:
    """Time to target against workers: measured points (world sizes run here) and, if given, the cost model's
    prediction at scale (dpkit.analysis.time_to_accuracy), where extrapolated steps are drawn hollow."""
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(measured.world_size, measured.time_to_target_s, "o-", label="measured (this machine)")
    if predicted is not None:
        ax.plot(predicted.workers, predicted.time_to_target_s, "-", color="C1", label="predicted (cost model)")
        extra = predicted[predicted.steps_source == "extrapolated"]
        known = predicted[predicted.steps_source != "extrapolated"]
        ax.scatter(known.workers, known.time_to_target_s, color="C1", zorder=3, label="predicted, measured steps")
        ax.scatter(extra.workers, extra.time_to_target_s, facecolors="none", edgecolors="C1", zorder=3,
                   label="predicted, extrapolated steps")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="workers", ylabel="time to target (s)", title="Time to target accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def learning_panel(base: RunConfig, cache: Any = None) -> Any:
    """A panel: global batch, world size, sync mode and learning-rate rule; Run trains to base.target_accuracy
    and plots the held-out accuracy of this run beside the one-process run at base.global_batch."""
    import ipywidgets as W

    from . import widgets

    cache = cache or widgets.CACHE
    controls = {
        "global_batch": widgets._dropdown([8, 32, 128, 512], base.global_batch, "global batch"),
        "world_size": W.IntSlider(value=1, min=1, max=4, description="world size"),
        "sync_mode": widgets._dropdown(list(SYNC_MODES), "sync all-reduce", "sync mode"),
        "lr_rule": widgets._dropdown(["none", "linear", "sqrt"], base.lr_scaling, "learning-rate rule"),
    }

    def compute(global_batch: int, world_size: int, sync_mode: str, lr_rule: str, progress: Any = None) -> tuple:
        return learning_compare(base, global_batch, world_size, sync_mode, lr_rule, cache, progress)

    columns = [
        "run",
        "global_batch",
        "world_size",
        "peak_lr",
        "steps_to_target",
        "time_to_target_s",
        "best_accuracy",
        "target_reason",
    ]
    return widgets.Panel("Learning: accuracy and time to target", controls, compute, columns)


def learning_compare(
    base: RunConfig, global_batch: int, world_size: int, sync_mode: str, lr_rule: str, cache: Any, progress: Any = None
) -> tuple[Figure, pd.DataFrame]:
    """The panel's pure function: (accuracy curves, to-target table) of the chosen run and the reference."""
    chosen = learning_config(base, global_batch, world_size, sync_mode, lr_rule)
    reference = learning_config(base, base.global_batch, 1, "sync all-reduce", base.lr_scaling)
    ref, run = cache.run_all([reference, chosen], progress)
    label = f"batch {global_batch}, {world_size} worker(s), {sync_mode if world_size > 1 else 'one process'}, lr {lr_rule}"
    runs = {f"reference: one process, batch {base.global_batch}": ref, label: run}
    return learning_curves(runs, ("step", "train_time_s")), to_target_frame(runs)


def staleness_plot(runs: Mapping[str, RunResult]) -> Figure:
    """How stale each applied update was, per run: left in steps (clocks, the unit of the SSP bound
    max_staleness, drawn as a dashed line per bounded run), right in updates applied since the worker's pull.
    Both units are named on the axes (dpkit.viz.ps_tables.STALENESS_UNITS)."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(runs))
    for i, (label, r) in enumerate(runs.items()):
        frame = staleness_both_units(r)
        for ax, words in zip(axes, STALENESS_UNITS.values(), strict=True):
            part = frame[frame.unit == words]
            (bars,) = [ax.bar(part.staleness + (i - (len(runs) - 1) / 2) * width, part.updates, width=width, label=label)]
            if ax is axes[0] and frame.attrs["bound"] is not None:
                bound = frame.attrs["bound"]  # drawn between the bins: every update left of it keeps the bound
                ax.axvline(bound + 0.5, color=bars.patches[0].get_facecolor(), ls="--", lw=1.2,
                           label=f"{label}: bound, at most {bound} step(s) behind")  # fmt: skip
    for ax, words in zip(axes, STALENESS_UNITS.values(), strict=True):
        ax.set(xlabel=f"staleness {words}", ylabel="updates applied by the servers")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_title("Staleness in steps (the bound's unit)")
    axes[1].set_title("The same updates: staleness in updates")
    axes[0].legend(fontsize=8, frameon=False)
    return fig
