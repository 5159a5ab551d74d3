"""Figures for runs and sweeps (matplotlib only): every function returns a Figure and shows nothing.

Speedup follows DESIGN.md: speedup(N) = T_step(1) / T_step(N) at the same global batch (strong
scaling); when the global batch grows with N it is throughput(N) / throughput(1) (weak scaling).
Both are samples_per_s(N) / samples_per_s(baseline), which is what `scaling_frame` computes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..config import RunConfig
from ..results import RunResult

KIND_COLORS = {"compute": "#4C72B0", "comm": "#DD8452", "idle": "#C8C8C8", "bubble": "#C44E52"}
BREAKDOWN = [
    ("compute_s", "compute", "compute"),
    ("exposed_comm_s", "exposed comm", "comm"),
    ("idle_s", "idle", "idle"),
    ("bubble_s", "bubble", "bubble"),
]
CONFIG_FIELDS = [f.name for f in dataclasses.fields(RunConfig)]


def _figure(figsize: tuple[float, float]) -> Figure:
    """A Figure outside pyplot: nothing global to close, and Jupyter shows it once, when returned."""
    return Figure(figsize=figsize, layout="constrained")


def varying_columns(frame: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The config columns whose value differs between rows: what tells the runs apart."""
    skip = set(exclude) | {"device", "backend", "timeout_s"}
    return [c for c in CONFIG_FIELDS if c in frame.columns and c not in skip and frame[c].astype(str).nunique() > 1]


def run_labels(frame: pd.DataFrame, by: Iterable[str] | None = None) -> list[str]:
    """'world_size=2, grad_sync=flat' style labels, one per row."""
    cols = list(by) if by is not None else varying_columns(frame)
    if not cols:
        return [f"run {i}" for i in range(len(frame))]
    return [", ".join(f"{c}={row[c]}" for c in cols) for _, row in frame.iterrows()]


def _subtitle(frame: pd.DataFrame) -> str:
    parts = []
    for col, fmt in (("device", "{}"), ("backend", "{}"), ("threads_per_rank", "{} thread(s)/rank")):
        if col in frame.columns and frame[col].notna().any():
            parts.append(fmt.format("/".join(str(v) for v in pd.unique(frame[col].dropna()))))
    return ", ".join(parts)


# ---- speedup and efficiency ---------------------------------------------------------------
def scaling_frame(
    frame: pd.DataFrame, x: str = "world_size", baseline: float | None = None, hue: str | None = None
) -> pd.DataFrame:
    """`frame` plus speedup, efficiency and ideal columns.

    baseline: T_step(1) of a single-process reference run in seconds, at the same global batch as
    each row (strong scaling); efficiency then divides by `x` itself. Default: the runs at the smallest `x` (of the row's `hue` group when it has one, else
    of the whole frame), compared by throughput, so growing global batches give weak scaling.
    Efficiency = speedup / (x / x_baseline): 1.0 is perfect scaling.
    """
    if frame.empty:
        raise ValueError("scaling_frame got an empty frame: run a sweep first")
    for col in (x, "step_time_s", "samples_per_s", "global_batch"):
        if col not in frame.columns:
            raise ValueError(f"scaling_frame needs a {col!r} column (frames from dpkit.sweep have it)")
    out = frame.copy()
    x0 = float(out[x].min())
    overall = out[out[x] == x0]
    groups = out.groupby(hue, sort=False, dropna=False) if hue else [(None, out)]
    for _, g in groups:
        if baseline is not None:
            base = g.global_batch / float(baseline)
        else:
            rows = g[g[x] == x0]
            base = float((rows if len(rows) else overall).samples_per_s.median())
        out.loc[g.index, "speedup"] = g.samples_per_s / base
    out["ideal"] = out[x] / (1.0 if baseline is not None else x0)
    out["efficiency"] = out.speedup / out.ideal
    return out


def speedup_plot(frame: pd.DataFrame, x: str = "world_size", baseline: float | None = None, hue: str | None = None) -> Figure:
    """Speedup (with the ideal line) and efficiency against `x`; one line per `hue` value."""
    data = scaling_frame(frame, x, baseline, hue)
    fig = _figure((10, 3.8))
    (ax_s, ax_e) = fig.subplots(1, 2)
    xs = np.sort(pd.unique(data[x]))
    ideal = data.groupby(x).ideal.first().reindex(xs)
    ax_s.plot(xs, ideal, "k--", lw=1, label="ideal (linear)")
    ax_e.axhline(1.0, color="k", ls="--", lw=1, label="ideal")
    groups = data.groupby(hue, sort=False) if hue else [("measured", data)]
    for name, g in groups:
        g = g.groupby(x, as_index=False)[["speedup", "efficiency"]].median().sort_values(x)
        label = f"{hue}={name}" if hue else name
        ax_s.plot(g[x], g.speedup, "o-", label=label)
        ax_e.plot(g[x], g.efficiency, "o-", label=label)
    weak = data.groupby(hue)["global_batch"].nunique().max() > 1 if hue else data.global_batch.nunique() > 1
    kind = "weak scaling: per-rank batch fixed" if weak else "strong scaling: same global batch"
    ax_s.set(xlabel=x, ylabel="speedup", title=f"Speedup ({kind})", xticks=xs)
    ax_e.set(
        xlabel=x,
        ylabel="efficiency = speedup / N",
        title="Efficiency",
        xticks=xs,
        ylim=(0, max(1.1, data.efficiency.max() * 1.1)),
    )
    for ax in (ax_s, ax_e):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_subtitle(data), fontsize=9)
    return fig


# ---- where a step's time goes -------------------------------------------------------------
def time_breakdown_plot(frame: pd.DataFrame, by: Iterable[str] | None = None) -> Figure:
    """Per run, stacked: compute / exposed comm / idle / bubble (means over ranks), with the step time.

    Comm hidden behind compute is not stacked (it costs no time); the label above a bar gives it.
    """
    if frame.empty:
        raise ValueError("time_breakdown_plot got an empty frame: run a sweep first")
    labels = run_labels(frame, by)
    fig = _figure((max(6.0, 1.3 * len(frame) + 3.5), 4))
    ax = fig.subplots()
    pos = np.arange(len(frame))
    bottom = np.zeros(len(frame))
    for col, name, kind in BREAKDOWN:
        if col not in frame.columns:
            continue
        values = frame[col].to_numpy(dtype=float) * 1e3
        if col == "bubble_s" and not values.any():
            continue
        ax.bar(pos, values, bottom=bottom, color=KIND_COLORS[kind], label=name, width=0.6)
        bottom += values
    ax.scatter(pos, frame.step_time_s * 1e3, marker="_", s=600, color="k", zorder=3, label="step time (slowest rank)")
    if {"comm_s", "exposed_comm_s"} <= set(frame.columns):
        hidden = (frame.comm_s - frame.exposed_comm_s).to_numpy() * 1e3
        top = np.maximum(bottom, frame.step_time_s.to_numpy() * 1e3)
        for p, h, c, t in zip(pos, hidden, frame.comm_s * 1e3, top, strict=True):
            ax.annotate(
                f"comm {c:.1f} ms\n({h:.1f} hidden)",
                (p, t),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_xticks(pos, labels, rotation=20 if len(frame) > 3 else 0, ha="right" if len(frame) > 3 else "center", fontsize=8)
    ax.set(ylabel="ms per step (mean over ranks)", title="Where a step's time goes")
    ax.set_ylim(0, max(1e-6, ax.get_ylim()[1] * 1.15))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---- per-rank timeline -----------------------------------------------------------------
def timeline_plot(result: RunResult, steps: Iterable[int] | None = None, ranks: Iterable[int] | None = None) -> Figure:
    """Gantt chart, one lane per rank: idle/bubble fill the lane, compute the upper half, comm the lower.

    Where a comm bar sits under a compute bar the two overlapped (e.g. a bucket's all-reduce during
    the backward pass). Default: the first two timed steps (warm-up excluded).
    """
    tl = result.timeline
    if steps is None:
        timed = sorted(s for s in pd.unique(tl.step) if s >= result.config.warmup) or sorted(pd.unique(tl.step))
        steps = timed[:2]
    steps = [int(s) for s in steps]
    tl = tl[tl.step.isin(steps)]
    if ranks is not None:
        tl = tl[tl["rank"].isin(list(ranks))]
    if tl.empty:
        raise ValueError(f"timeline_plot: no spans for steps {steps} (the run has steps 0..{result.config.steps - 1})")
    lanes = sorted(pd.unique(tl["rank"]))
    roles = result.steps.groupby("rank").role.first().to_dict() if len(result.steps) else {}
    t0 = tl.start_s.min()
    fig = _figure((11, 0.6 * len(lanes) + 1.8))
    ax = fig.subplots()
    halves = {"idle": (-0.4, 0.8), "bubble": (-0.4, 0.8), "compute": (-0.4, 0.4), "comm": (0.0, 0.4)}
    for kind in ("idle", "bubble", "compute", "comm"):
        part = tl[tl.kind == kind]
        for rank, g in part.groupby("rank"):
            y = lanes.index(rank)
            bars = list(zip((g.start_s - t0) * 1e3, (g.end_s - g.start_s) * 1e3, strict=True))
            off, height = halves[kind]
            hatch = "//" if kind == "bubble" else None
            ax.broken_barh(
                bars,
                (y + off, height),
                facecolors=KIND_COLORS[kind],
                edgecolor="white" if kind != "idle" else "none",
                linewidth=0.3,
                hatch=hatch,
            )
    for s in result.steps[result.steps.step.isin(steps)].groupby("step").start_s.min():
        ax.axvline((s - t0) * 1e3, color="k", ls=":", lw=0.8)
    ax.set_yticks(range(len(lanes)), [f"rank {r} · {roles.get(r, '')}" for r in lanes])
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlabel(f"ms since step {steps[0]} began (dotted lines: step starts)")
    cfg = result.config
    ax.set_title(f"Per-rank timeline: {cfg.parallelism}, world_size={cfg.world_size}, steps {steps}")
    handles = [
        Patch(color=KIND_COLORS[k], label=lbl)
        for k, lbl in (("compute", "compute (upper half)"), ("comm", "comm (lower half)"), ("idle", "idle"))
    ]
    if (tl.kind == "bubble").any():
        handles.append(Patch(facecolor=KIND_COLORS["bubble"], hatch="//", label="bubble"))
    ax.legend(handles=handles, fontsize=8, loc="upper right", ncols=len(handles), bbox_to_anchor=(1, 1.18))
    return fig


# ---- loss curves -------------------------------------------------------------------------
def _as_named(results: RunResult | Iterable[RunResult] | Mapping[str, RunResult]) -> dict[str, RunResult]:
    if isinstance(results, RunResult):
        return {"run": results}
    if isinstance(results, Mapping):
        return dict(results)
    results = list(results)
    labels = run_labels(pd.concat([r.to_frame() for r in results], ignore_index=True))
    return dict(zip(labels, results, strict=True))


def step_end_times(result: RunResult) -> pd.Series:
    """Wall-clock seconds from the start of step 0 to the end of each step (its slowest training rank)."""
    st = result.steps[result.steps["rank"].isin(result.training_ranks())]
    return st.groupby("step").end_s.max() - st.start_s.min()


def loss_plot(results: RunResult | Iterable[RunResult] | Mapping[str, RunResult], x: str = "step") -> Figure:
    """Loss per step for one or more runs; x = 'step', 'samples' (seen so far) or 'time' (wall-clock s)."""
    if x not in ("step", "samples", "time"):
        raise ValueError(f"x={x!r} is not allowed: choose 'step', 'samples' or 'time'")
    fig = _figure((6.5, 3.8))
    ax = fig.subplots()
    for label, r in _as_named(results).items():
        steps = np.arange(len(r.losses))
        xs = {"step": steps, "samples": (steps + 1) * r.config.global_batch}.get(x)
        if xs is None:
            xs = step_end_times(r).reindex(steps).to_numpy()
        ax.plot(xs, r.losses, "o-", ms=3, label=label)
    ax.set(
        xlabel={"step": "step", "samples": "samples seen", "time": "wall-clock seconds"}[x], ylabel="training loss", title="Loss"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---- the ring all-reduce, step by step --------------------------------------------------
def ring_steps_plot(trace: pd.DataFrame) -> Figure:
    """One panel per step of a traced ring all-reduce (dpkit.ringtrace.trace_ring): ranks x chunks.

    A cell's colour is how many ranks' values that chunk holds; its text lists them; a thick border
    marks the chunk a rank just received (from the rank above it in the ring).
    """
    steps = sorted(pd.unique(trace.step))
    n = int(trace["rank"].nunique())
    cols = min(len(steps), 4)
    rows = int(np.ceil(len(steps) / cols))
    fig = _figure((3.1 * cols, 0.55 * n * rows + 1.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = matplotlib.colormaps["Blues"]
    for ax, step in zip(axes.flat, steps, strict=False):
        part = trace[trace.step == step].sort_values("rank")
        grid = np.array([[bin(m).count("1") for m in h] for h in part.holds])
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=n + 1, aspect="auto")
        for r, (holds, recv) in enumerate(zip(part.holds, part.recv_chunk, strict=True)):
            for c, mask in enumerate(holds):
                who = "+".join(str(k) for k in range(n) if mask >> k & 1)
                ax.text(
                    c, r, who, ha="center", va="center", fontsize=7, color="white" if bin(mask).count("1") > n / 2 else "black"
                )
            if recv >= 0:
                ax.add_patch(Rectangle((recv - 0.5, r - 0.5), 1, 1, fill=False, lw=2.2, ec="#DD8452"))
        phase = part.phase.iloc[0]
        ms = (part.end_s - part.start_s).max() * 1e3
        ax.set_title(
            "start: rank r holds its own values" if step == 0 else f"step {step}: {phase}\n{ms:.2f} ms (slowest rank)", fontsize=8
        )
        ax.set_xticks(range(n), [f"chunk {c}" for c in range(n)], fontsize=7)
        ax.set_yticks(range(n), [f"rank {r}" for r in range(n)], fontsize=7)
    for ax in list(axes.flat)[len(steps) :]:
        ax.axis("off")
    fig.suptitle("Ring all-reduce: each cell lists the ranks whose values that chunk has summed", fontsize=10)
    return fig


# ---- parameter server ----------------------------------------------------------------------
def traffic_plot(
    frame: pd.DataFrame,
    x: str = "world_size",
    y: str = "bytes_per_step",
    hue: str = "who",
    ylabel: str = "MB sent + received per step",
) -> Figure:
    """Bytes per step against `x`, one line per `hue` (e.g. PS server, PS worker, ring all-reduce rank)."""
    fig = _figure((6.5, 3.8))
    ax = fig.subplots()
    for name, g in frame.groupby(hue, sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[y] / 1e6, "o-", label=str(name))
    ax.set(
        xlabel=x,
        ylabel="MB sent + received per step" if "in" in y else "MB per step",
        title="Traffic per step",
        xticks=sorted(pd.unique(frame[x])),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def async_plot(curves: Mapping[str, pd.DataFrame], staleness: pd.DataFrame | None = None) -> Figure:
    """Left: each worker step's loss against wall-clock, per run (sync vs async). Right: the staleness
    histogram of an async run (updates applied between a worker's pull and its push)."""
    fig = _figure((11, 3.8))
    ax_l, ax_h = fig.subplots(1, 2)
    for name, c in curves.items():
        ax_l.plot(c.wall_s, c.loss, "o", ms=3, label=name)
    ax_l.set(xlabel="wall-clock seconds", ylabel="worker loss", title="Loss against wall-clock (each dot: one worker step)")
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8)
    if staleness is not None and len(staleness):
        col = staleness.columns[0]
        ax_h.bar(staleness[col], staleness.updates, color=KIND_COLORS["comm"])
        ax_h.set(xlabel=col.replace("_", " "), ylabel="updates", title="Async: staleness of each update")
    else:
        ax_h.axis("off")
    return fig
