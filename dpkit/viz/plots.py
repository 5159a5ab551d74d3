"""Figures for runs and sweeps (matplotlib only): every function returns a Figure and shows nothing.

Speedup follows docs/formulas.md: speedup(N) = T_step(1) / T_step(N) at the same global batch (strong
scaling); when the global batch grows with N it is throughput(N) / throughput(1) (weak scaling).
Both are samples_per_s(N) / samples_per_s(baseline), which is what `scaling_frame` computes.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Iterable, Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..analysis.time_to_accuracy import time_to_target_frame
from ..comm.link import link_label, link_of
from ..config import RunConfig
from ..measure import cores_used, withhold
from ..results import RunResult
from ..runtime.cores import cores_note
from .ps_tables import STALENESS_UNITS

KIND_COLORS = {"compute": "#4C72B0", "comm": "#DD8452", "idle": "#C8C8C8", "bubble": "#C44E52", "injected": "#8172B3"}
INJECTED_LABEL = "injected delay (straggler)"
BREAKDOWN = [  # the states of dpkit.results.step_stats: they add up to the step time
    ("compute_s", "compute", "compute"),
    ("exposed_comm_s", "exposed comm", "comm"),
    ("idle_s", "idle", "idle"),
    ("bubble_s", "bubble", "bubble"),
    ("injected_s", INJECTED_LABEL, "injected"),
]
OPTIONAL_STATES = ("bubble_s", "injected_s")  # drawn only where some run has them
CONFIG_FIELDS = [f.name for f in dataclasses.fields(RunConfig)]


def _figure(figsize: tuple[float, float]) -> Figure:
    """A Figure outside pyplot: nothing global to close, and Jupyter shows it once, when returned."""
    return Figure(figsize=figsize, layout="constrained")


def varying_columns(frame: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """The config columns whose value differs between rows: what tells the runs apart."""
    skip = set(exclude) | {"device", "backend", "timeout_s"}
    return [c for c in CONFIG_FIELDS if c in frame.columns and c not in skip and frame[c].astype(str).nunique() > 1]


#: axis and legend names in words, for the config and summary columns a figure is drawn against
WORDS = {
    "world_size": "number of training processes",
    "global_batch": "global batch (samples per step)",
    "num_servers": "parameter servers",
    "grad_sync": "gradient sync",
    "allreduce_algo": "all-reduce algorithm",
    "bucket_mb": "bucket (MiB)",
    "sync": "sync mode",
    "hidden": "hidden width",
    "microbatches": "micro-batches",
    "max_staleness": "staleness bound",
    "lr_scaling": "learning-rate rule",
}


def in_words(column: str) -> str:
    """'world_size' -> 'number of training processes': a column's name as a figure says it."""
    return WORDS.get(column, column.replace("_", " "))


def run_labels(frame: pd.DataFrame, by: Iterable[str] | None = None) -> list[str]:
    """One label per row, in words: 'number of training processes 2, gradient sync flat'; a column called
    'label' is shown as it is."""
    cols = list(by) if by is not None else varying_columns(frame)
    if not cols:
        return [f"run {i}" for i in range(len(frame))]
    return [", ".join(str(row[c]) if c == "label" else f"{in_words(c)} {row[c]}" for c in cols) for _, row in frame.iterrows()]


def device_note(frame: pd.DataFrame) -> str:
    """The device model of a frame's runs, in words: 'each process: 1 core' (the baseline's threads too when they
    differ), or which runs' processes shared cores; '' when the frame does not say."""
    need = {"num_processes", "threads_per_rank", "cpu_count"}
    if not need <= set(frame.columns) or frame[list(need)].isna().all().any():
        return ""
    rows = frame.dropna(subset=list(need)).drop_duplicates(subset=list(need)).sort_values("num_processes")
    notes = [cores_note(int(r.num_processes), int(r.threads_per_rank), int(r.cpu_count)) for r in rows.itertuples()]
    shared = [n for n in notes if "share" in n]
    own = sorted({n.split(": ", 1)[1] for n in notes if "share" not in n})
    text = "each process: " + " or ".join(own) if own else ""
    if len(own) > 1:
        text += " (the baseline's threads differ from the ranks': not one device against N)"
    return "; ".join([t for t in [text, *shared] if t])


def _subtitle(frame: pd.DataFrame) -> str:
    parts = []
    for col, fmt in (("device", "{}"), ("backend", "{}"), ("threads_per_rank", "{} thread(s)/rank")):
        if col in frame.columns and frame[col].notna().any():
            parts.append(fmt.format("/".join(str(v) for v in pd.unique(frame[col].dropna()))))
    note = device_note(frame)
    return ", ".join(parts) + (f"\n{note}" if note else "")


def _mark_withheld(ax, rows: pd.DataFrame, x: str, color: str | None = None) -> bool:
    """A grey cross on the axis where a withheld point would be, labelled: the reason is under the figure."""
    if "withheld" not in rows.columns:
        return False
    gone = rows[rows.withheld.fillna("") != ""]
    if gone.empty:
        return False
    xs = pd.unique(gone[x])
    ax.scatter(xs, np.zeros(len(xs)), marker="x", s=80, color=color or "#777777", zorder=5, clip_on=False)
    for v in xs:
        ax.annotate("withheld", (v, 0), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7, color="#555555")
    return True


# ---- speedup and efficiency ---------------------------------------------------------------
SUPERLINEAR = 1.2  # an efficiency above this is never shown without a warning saying why
WARNING_COLOR = "#b00000"


def scaling_frame(
    frame: pd.DataFrame, x: str = "world_size", baseline: float | None = None, hue: str | None = None
) -> pd.DataFrame:
    """`frame` plus speedup, efficiency and ideal columns, each speedup and efficiency with _low/_high bounds.

    baseline: T_step(1) of a single-process reference run in seconds, at the same global batch as
    each row (strong scaling); efficiency then divides by `x` itself. Default: the runs at the smallest `x` (of the row's `hue` group when it has one, else
    of the whole frame), compared by throughput, so growing global batches give weak scaling.
    Efficiency = speedup / (x / x_baseline): 1.0 is perfect scaling.

    Rows from sweep(repeats=k) hold medians, so speedups are ratios of medians. The bounds are the extremes
    over every pairing of this row's repeats with the baseline's (slowest here against fastest baseline, and
    back), from step_time_min_s / step_time_max_s: an error bar then shows how far the ratio could move from
    the repeats alone. The baseline rows themselves get their own spread against the median baseline.
    Frames without those columns get bounds equal to the value.
    """
    if frame.empty:
        raise ValueError("scaling_frame got an empty frame: run a sweep first")
    for col in (x, "step_time_s", "samples_per_s", "global_batch"):
        if col not in frame.columns:
            raise ValueError(f"scaling_frame needs a {col!r} column (frames from dpkit.sweep have it)")
    out = frame.copy()
    # throughput of the slowest and of the fastest repeat (a frame without them: the median run only)
    slow = out.global_batch / out.get("step_time_max_s", out.step_time_s).fillna(out.step_time_s)
    fast = out.global_batch / out.get("step_time_min_s", out.step_time_s).fillna(out.step_time_s)
    x0 = float(out[x].min())
    overall = out[out[x] == x0]
    groups = out.groupby(hue, sort=False, dropna=False) if hue else [(None, out)]
    for _, g in groups:
        if baseline is not None:
            base = base_slow = base_fast = g.global_batch / float(baseline)
            own = g.index[:0]
        else:
            rows = g[g[x] == x0]
            ref = rows if len(rows) else overall
            base = float(ref.samples_per_s.median())
            base_slow, base_fast = float(slow[ref.index].median()), float(fast[ref.index].median())
            own = rows.index
        out.loc[g.index, "speedup"] = g.samples_per_s / base
        out.loc[g.index, "speedup_low"] = slow[g.index] / base_fast
        out.loc[g.index, "speedup_high"] = fast[g.index] / base_slow
        if len(own):
            out.loc[own, "speedup_low"] = slow[own] / base
            out.loc[own, "speedup_high"] = fast[own] / base
    out["ideal"] = out[x] / (1.0 if baseline is not None else x0)
    for col in ("", "_low", "_high"):
        out[f"efficiency{col}"] = out[f"speedup{col}"] / out.ideal
    return withhold(out, x, hue)  # the one rule (dpkit.measure): what cannot be measured now is not drawn


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_cores_used = cores_used


def scaling_warnings(data: pd.DataFrame, x: str = "world_size") -> list[str]:
    """What a reader must know before trusting a scaling_frame's numbers, one sentence each: every noisy row
    (the baseline's noise moves every speedup), and every efficiency above SUPERLINEAR at x above the
    baseline, with its likely cause, so no superlinear number is ever shown bare."""
    name = x.replace("_", " ")
    x0 = data[x].min()
    noisy = data.noisy.eq(True) if "noisy" in data.columns else pd.Series(False, index=data.index)  # NaN: not flagged
    reason = data.noise_reason.fillna("") if "noise_reason" in data.columns else pd.Series("", index=data.index)
    out = []
    withheld = data.withheld.fillna("") if "withheld" in data.columns else pd.Series("", index=data.index)
    for i in data.index[withheld != ""]:
        role = " (the baseline)" if data.at[i, x] == x0 else ""
        out.append(f"speedup withheld at {name} {_number(data.at[i, x])}{role}, {withheld[i]}")
    for i in data.index[noisy & (withheld == "")]:
        role = " (the baseline every speedup divides by)" if data.at[i, x] == x0 else ""
        out.append(f"noisy measurement at {name} {_number(data.at[i, x])}{role}: {reason[i] or 'flagged noisy'}")
    base = data[data[x] == x0]
    base_cores = base.apply(_cores_used, axis=1).median() if len(base) else math.nan
    for i in data.index[(data[x] > x0) & (data.efficiency > SUPERLINEAR)]:
        row = data.loc[i]
        cores = row.get("cpu_count", math.nan)
        limit = _cores_used(row) / base_cores if base_cores > 0 else math.nan
        if limit > 0 and row.speedup > limit:
            what = f"above what {_number(cores)} cores can give (speedup {row.speedup:.2f}; the cores allow at most {limit:.2g})"
        else:
            what = f"above 1 (superlinear: speedup {row.speedup:.2f} from {_number(row.ideal)}x the ranks)"
        causes = [f"{name} {_number(data.at[j, x])}: {reason[j]}" for j in [*base.index, i] if noisy.get(j, False)]
        if causes:
            why = f"the measurement was noisy ({'; '.join(causes)})"
        else:
            why = (
                "the repeats agree, so suspect the baseline (one process with many threads can use its cores worse "
                "than several single-thread ranks) or per-rank batches that fit the caches better; rerun with more repeats"
            )
        out.append(f"efficiency {row.efficiency:.2f} at {name} {_number(row[x])} is {what}: {why}")
    return out


def _draw_machine_ideal(ax_s, ax_e, data: pd.DataFrame, x: str, xs: np.ndarray) -> None:
    """The ideal on this machine's cores: speedup = cores the run can use / cores the baseline used (N ranks on
    fewer than N cores take turns). Drawn only where it differs from the linear ideal."""
    if "cpu_count" not in data.columns or x != "world_size":
        return
    cores = data.apply(cores_used, axis=1)
    base = cores[data[x] == data[x].min()].median()
    if not base > 0 or cores.isna().any():
        return
    machine = (cores / base).groupby(data[x]).max().reindex(xs)
    if np.allclose(machine.to_numpy(dtype=float), data.groupby(x).ideal.first().reindex(xs).to_numpy(dtype=float)):
        return
    n = int(data.cpu_count.max())
    ax_s.plot(xs, machine, ":", color="#2a7f2a", lw=1.5, label=f"ideal on this machine ({n} cores)")
    ax_e.plot(xs, machine / data.groupby(x).ideal.first().reindex(xs), ":", color="#2a7f2a", lw=1.5)


def _label_step_times(ax, rows: pd.DataFrame, x: str) -> None:
    """The absolute median step time (ms) beside every speedup point: a ratio alone hides what was measured."""
    if "step_time_s" not in rows.columns or "speedup" not in rows.columns:
        return
    shown = rows[rows.speedup.notna()].groupby(x)[["speedup", "step_time_s"]].median()
    for v, r in shown.iterrows():
        ms = r.step_time_s * 1e3
        ax.annotate(
            f"{ms:.0f} ms" if ms >= 10 else f"{ms:.2g} ms",
            (v, r.speedup),
            xytext=(5, -10),
            textcoords="offset points",
            fontsize=7,
        )


def speedup_plot(
    frame: pd.DataFrame, x: str = "world_size", baseline: float | None = None, hue: str | None = None, metric: str = "step_time"
) -> Figure:
    """Speedup (with the ideal line) and efficiency against `x`; one line per `hue` value.

    Error bars span speedup_low..speedup_high (the repeats' range, see scaling_frame); noisy points are
    ringed in red, and every scaling_warnings() sentence is printed in red under the axes, because a
    figure is copied into reports without the table that carried the caveat.
    metric="time_to_target": speedup in time to target accuracy (a sweep(metric="time_to_target") frame).
    """
    if metric == "time_to_target":
        frame = time_to_target_frame(frame)  # one trained model, not a step, as the unit of work
    elif metric != "step_time":
        raise ValueError(f"speedup_plot: metric={metric!r} is not allowed: choose 'step_time' or 'time_to_target'")
    data = scaling_frame(frame, x, baseline, hue)
    fig = _figure((10, 3.8))
    (ax_s, ax_e) = fig.subplots(1, 2)
    xs = np.sort(pd.unique(data[x]))
    ideal = data.groupby(x).ideal.first().reindex(xs)
    ax_s.plot(xs, ideal, "k--", lw=1, label="ideal (linear: N processes, N cores)")
    ax_e.axhline(1.0, color="k", ls="--", lw=1, label="ideal")
    _draw_machine_ideal(ax_s, ax_e, data, x, xs)
    groups = data.groupby(hue, sort=False) if hue else [("measured", data)]
    cols = ["speedup", "speedup_low", "speedup_high", "efficiency", "efficiency_low", "efficiency_high"]
    ringed = False
    for name, g in groups:
        flagged = g[g.noisy.eq(True) & g.speedup.notna()] if "noisy" in g.columns else g.iloc[:0]  # withheld: a cross instead
        g = g.groupby(x, as_index=False)[cols].median().sort_values(x)
        label = f"{in_words(hue)}: {name}" if hue else name
        _label_step_times(ax_s, data[data[hue] == name] if hue else data, x)
        for ax, col in ((ax_s, "speedup"), (ax_e, "efficiency")):
            err = np.vstack([g[col] - g[f"{col}_low"], g[f"{col}_high"] - g[col]]).clip(min=0)
            # no caps (they would be extra lines among ax.lines); a wide bar in the line's colour, half transparent
            bars = ax.errorbar(g[x], g[col], yerr=err, fmt="o-", capsize=0, elinewidth=4, label=label)
            for collection in bars.lines[2]:
                collection.set_alpha(0.35)
            if len(flagged):
                ys = flagged.groupby(x)[col].median()
                ax.scatter(ys.index, ys, s=140, facecolors="none", edgecolors=WARNING_COLOR, lw=1.5, zorder=4,
                           label=None if ringed else "noisy")  # fmt: skip
        ringed = ringed or bool(len(flagged))
        for ax in (ax_s, ax_e):
            _mark_withheld(ax, data if not hue else data[data[hue] == name], x)
    weak = data.groupby(hue)["global_batch"].nunique().max() > 1 if hue else data.global_batch.nunique() > 1
    kind = "weak scaling: per-rank batch fixed" if weak else "strong scaling: same global batch"
    spread = "error bars: fastest to slowest repeat" if "step_time_min_s" in data.columns else "one run per point, no spread"
    kind = kind if metric == "step_time" else "in time to target accuracy"
    ax_s.set(xlabel=in_words(x), ylabel="speedup (labels: median step time)", title=f"Speedup ({kind})")
    top = data[["efficiency", "efficiency_high"]].max().max()
    top = 1.0 if pd.isna(top) else top
    ax_e.set(xlabel=in_words(x), ylabel="efficiency = speedup / N", title=f"Efficiency ({spread})", ylim=(0, max(1.1, top * 1.1)))
    for ax in (ax_s, ax_e):
        ax.set_xticks(xs, [_number(v) for v in xs])  # world sizes are whole numbers: never 1.5 or 2.0
        ax.grid(alpha=0.3)
    # one legend, beside the axes: never over the data or a title (both axes share its lines)
    ax_e.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    fig.suptitle(_subtitle(data), fontsize=9)
    warnings = scaling_warnings(data, x)
    if warnings:
        text = "\n".join(textwrap.fill(f"Warning: {w}", 150, subsequent_indent="    ") for w in warnings)
        fig.supxlabel(text, color=WARNING_COLOR, fontsize=8, ha="left", x=0.01)
    return fig


# ---- where a step's time goes -------------------------------------------------------------
BYTES_MARKS = {"formula": "(formula)", "mixed": "(partly formula)", "unknown": "(source unknown)"}
FORMULA_NOTE = "(formula): bytes of a backend collective, which dpkit cannot see into, priced by formula instead of counted"


def _bytes_note(row: pd.Series) -> str:
    """'0.12 MB/step', marked when the bytes come (partly) from a formula rather than being counted."""
    if "bytes_sent_per_step" not in row or pd.isna(row["bytes_sent_per_step"]):
        return ""
    mark = BYTES_MARKS.get(str(row.get("bytes_source", "")), "")
    return f"\n{row['bytes_sent_per_step'] / 1e6:.3g} MB/step sent" + (f"\n{mark}" if mark else "")


def time_breakdown_plot(frame: pd.DataFrame, by: Iterable[str] | None = None) -> Figure:
    """Per run, stacked: the parts of the slowest process's step (compute / exposed comm / idle / bubble /
    injected delay: the summary's slowest_*, in the median step), beside that step time. These states partition
    a process's step (dpkit.results.step_stats), so the stack reaches the marker. Communication (mean over
    training processes) is given above each bar: the part hidden behind compute costs no time.
    The drawn numbers are on fig.dpkit_data (label, each part in ms, step_ms)."""
    if frame.empty:
        raise ValueError("time_breakdown_plot got an empty frame: run a sweep first")
    if "slowest_step_time_s" not in frame.columns:
        raise ValueError("time_breakdown_plot needs the slowest_* columns of RunResult.summary (rerun, or load with this dpkit)")
    labels = run_labels(frame, by)
    fig = _figure((max(6.0, 1.3 * len(frame) + 2.5), 4.6))
    ax = fig.subplots()
    pos = np.arange(len(frame))
    bottom = np.zeros(len(frame))
    drawn = pd.DataFrame({"label": labels})
    for col, name, kind in BREAKDOWN:
        values = np.nan_to_num(frame[f"slowest_{col}"].to_numpy(dtype=float)) * 1e3
        if col in OPTIONAL_STATES and not values.any():
            continue
        ax.bar(pos, values, bottom=bottom, color=KIND_COLORS[kind], label=name, width=0.6)
        drawn[f"{col[:-2]}_ms"] = values
        bottom += values
    step_ms = frame.slowest_step_time_s.to_numpy(dtype=float) * 1e3
    drawn["step_ms"] = step_ms
    ax.scatter(pos, step_ms, marker="_", s=600, color="k", zorder=3, label="step time (slowest process, median step)")
    if {"comm_s", "exposed_comm_s"} <= set(frame.columns):
        hidden = frame["hidden_comm_s"] if "hidden_comm_s" in frame.columns else frame.comm_s - frame.exposed_comm_s
        top = np.maximum(bottom, step_ms)
        for p, (_, row), h, t, ms in zip(pos, frame.iterrows(), hidden.to_numpy() * 1e3, top, step_ms, strict=True):
            ax.annotate(
                f"step {ms:.1f} ms\ncomm {row.comm_s * 1e3:.1f} ms (mean)\n({h:.1f} hidden){_bytes_note(row)}",
                (p, t),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_xticks(pos, labels, rotation=20 if len(frame) > 3 else 0, ha="right" if len(frame) > 3 else "center", fontsize=8)
    ax.set(ylabel="ms in one step (the slowest process)", title="Where a step's time goes")
    ax.set_ylim(0, max(1e-6, ax.get_ylim()[1] * 1.3))  # room for the labels above the bars
    ax.grid(axis="y", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)
    if "bytes_source" in frame.columns and frame.bytes_source.isin(list(BYTES_MARKS)).any():
        ax.set_xlabel(FORMULA_NOTE, fontsize=7)
    fig.dpkit_data = drawn  # type: ignore[attr-defined]  # what the bars and the marker show, for tests and readers
    return fig


# ---- per-rank timeline -----------------------------------------------------------------
LANE_IN = 0.55  # inches per rank lane: 6 ranks stay readable without a tall figure


def timeline_plot(result: RunResult, steps: Iterable[int] | None = None, ranks: Iterable[int] | None = None) -> Figure:
    """Gantt chart, one lane per rank: idle/bubble/injected delay fill the lane, compute the upper half,
    comm the lower half (solid: the rank waits in it; dotted: in flight while the rank goes on).

    Where in-flight comm sits under a compute bar the two overlapped (a bucket's all-reduce during the
    backward pass): that comm is hidden. Default: the first two timed steps (warm-up excluded).
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
    blocking = tl["blocking"].astype(str).str.lower() != "false" if "blocking" in tl.columns else pd.Series(True, index=tl.index)
    lanes = sorted(pd.unique(tl["rank"]))
    roles = result.steps.groupby("rank").role.first().to_dict() if len(result.steps) else {}
    t0 = tl.start_s.min()
    fig = _figure((11, LANE_IN * len(lanes) + 2.2))
    ax = fig.subplots()
    halves = {"idle": (-0.4, 0.8), "bubble": (-0.4, 0.8), "injected": (-0.4, 0.8), "compute": (-0.4, 0.4), "comm": (0.0, 0.4)}
    hatches = {"bubble": "//", "injected": "xx"}
    for kind in ("idle", "bubble", "injected", "compute", "comm"):
        for in_flight in (False, True) if kind == "comm" else (False,):
            part = tl[(tl.kind == kind) & (blocking != in_flight if kind == "comm" else True)]
            for rank, g in part.groupby("rank"):
                bars = list(zip((g.start_s - t0) * 1e3, (g.end_s - g.start_s) * 1e3, strict=True))
                off, height = halves[kind]
                ax.broken_barh(
                    bars,
                    (lanes.index(rank) + off, height),
                    facecolors=KIND_COLORS[kind],
                    edgecolor="white" if kind != "idle" else "none",
                    linewidth=0.3,
                    hatch="...." if in_flight else hatches.get(kind),
                    alpha=0.6 if in_flight else 1.0,
                )
    for s in result.steps[result.steps.step.isin(steps)].groupby("step").start_s.min():
        ax.axvline((s - t0) * 1e3, color="k", ls=":", lw=0.8)
    ax.set_yticks(range(len(lanes)), [f"rank {r} · {roles.get(int(r), '')}" for r in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.5, -0.5)
    ax.set_xlabel(f"ms since step {steps[0]} began on the first rank (dotted lines: step starts; one clock for all ranks)")
    cfg = result.config
    ax.set_title(f"Per-process timeline: {cfg.parallelism} parallelism, {cfg.world_size} training processes, steps {steps}")
    shown = {"compute": "compute (upper half)", "comm": "comm, rank waits (lower half)", "idle": "idle"}
    handles = [Patch(color=KIND_COLORS[k], label=lbl) for k, lbl in shown.items()]
    comm = tl.kind == "comm"
    if (comm & ~blocking).any():
        handles.append(Patch(facecolor=KIND_COLORS["comm"], hatch="....", alpha=0.6, label="comm in flight (async)"))
    for kind, label in (("bubble", "bubble"), ("injected", INJECTED_LABEL)):
        if (tl.kind == kind).any():
            handles.append(Patch(facecolor=KIND_COLORS[kind], hatch=hatches[kind], label=label))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False)
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
    wide = n > 4  # "0+1+2+3+4" no longer fits a cell on one line: fewer panels a row, labels on two lines
    cols = min(len(steps), 3 if wide else 4)
    rows = int(np.ceil(len(steps) / cols))
    fig = _figure((12.4 if wide else 3.1 * cols, ((0.45 if wide else 0.55) * n + 1.2) * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = matplotlib.colormaps["Blues"]
    for ax, step in zip(axes.flat, steps, strict=False):
        part = trace[trace.step == step].sort_values("rank")
        grid = np.array([[bin(m).count("1") for m in h] for h in part.holds])
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=n + 1, aspect="auto")
        for r, (holds, recv) in enumerate(zip(part.holds, part.recv_chunk, strict=True)):
            for c, mask in enumerate(holds):
                ranks = [str(k) for k in range(n) if mask >> k & 1]
                half = (len(ranks) + 1) // 2
                who = "+".join(ranks[:half]) + "\n+" + "+".join(ranks[half:]) if wide and len(ranks) > 3 else "+".join(ranks)
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
        ax.set_xticks(range(n), [str(c) if wide else f"chunk {c}" for c in range(n)], fontsize=7)
        if wide:
            ax.set_xlabel("chunk", fontsize=7, labelpad=1)
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
        xlabel=in_words(x),
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
        words = STALENESS_UNITS.get(col, col.replace("_", " "))
        ax_h.set(xlabel=f"staleness {words}", ylabel="updates applied", title="Async: how stale each update was")
    else:
        ax_h.axis("off")
    return fig


# ---- the experiment panel: scaling and communication per sync mode ---------------------------
ROLE_MARKERS = {"worker": "o", "parameter server": "s"}  # any other role kind: "^"


def _experiment_subtitle(data: pd.DataFrame) -> str:
    """The machine (device, backend, cores, threads per rank) and the repeats, then the emulated link if any:
    what a copied figure must carry for its numbers to mean anything."""
    parts = [_subtitle(data)] if _subtitle(data) else []
    if "cpu_count" in data.columns and data.cpu_count.notna().any():
        parts.append("/".join(_number(float(v)) for v in pd.unique(data.cpu_count.dropna())) + " cores")
    if "repeats" in data.columns and data.repeats.notna().any():
        counts = sorted({int(v) for v in data.repeats.dropna()})
        many = "/".join(map(str, counts))
        parts.append(f"{many} run{'s' if counts[-1] > 1 else ''} per point" + (" (interleaved)" if counts[-1] > 1 else ""))
    if "link_description" in data.columns:
        links = [str(v) for v in pd.unique(data.link_description.dropna()) if str(v).startswith("emulated link")]
    elif "link" in data.columns:
        found = {(r.link, r.get("link_latency_s"), r.get("link_bandwidth_Bps")) for _, r in data.iterrows() if r.link != "none"}
        links = [link_label(lk) for args in sorted(found, key=str) if (lk := link_of(*args)) is not None]
    else:
        links = []
    emulated = data[data.link != "none"] if "link" in data.columns else data.iloc[:0]
    if links and "link_not_honoured" in emulated.columns and emulated.link_not_honoured.sum() > 0:
        runs = int(emulated.repeats.sum()) if "repeats" in emulated.columns else len(emulated)
        late = int(emulated.link_not_honoured.sum())
        links.append(f"not honoured in {late} of {runs} runs (the machine was slower than the link)")
    return ", ".join(parts) + ("\n" + textwrap.fill("; ".join(links), 160) if links else "")


def experiment_plot(frame: pd.DataFrame, per_role: pd.DataFrame, hue: str = "mode") -> Figure:
    """Scaling and its cause in one figure, one colour per `hue` value (a sync mode).

    Top: speedup (with the ideal line) and efficiency against world size, error bars from the repeats, noisy
    points ringed and every scaling_warnings() sentence printed, as in speedup_plot. Bottom left: comm time
    per step of each role (per_role: one row per hue, world_size and role with comm_s and exposed_comm_s),
    total dashed and exposed (what the step waits for) solid; bottom right: bytes each role's process sends
    per step, formula-priced bytes marked so. `frame` is one row per (hue, world_size), as
    dpkit.viz.widgets.experiment makes it; the world-size-1 rows are each hue's baseline.
    """
    if frame.empty:
        raise ValueError("experiment_plot got an empty frame: run the experiment first")
    if hue not in frame.columns:
        raise ValueError(f"experiment_plot needs a {hue!r} column naming each row's sync mode")
    data = scaling_frame(frame, "world_size", hue=hue)
    modes = list(pd.unique(data[hue]))
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    fig = _figure((11, 7.6))
    (ax_s, ax_e), (ax_c, ax_b) = fig.subplots(2, 2)
    xs = np.sort(pd.unique(data.world_size))
    ax_s.plot(xs, data.groupby("world_size").ideal.first().reindex(xs), "k--", lw=1, label="ideal (linear)")
    ax_e.axhline(1.0, color="k", ls="--", lw=1, label="ideal")
    ringed = False
    for mode in modes:
        g = data[data[hue] == mode].sort_values("world_size")
        flagged = g[g.noisy.eq(True) & g.speedup.notna()] if "noisy" in g.columns else g.iloc[:0]  # withheld: a cross instead
        for ax, col in ((ax_s, "speedup"), (ax_e, "efficiency")):
            err = np.vstack([g[col] - g[f"{col}_low"], g[f"{col}_high"] - g[col]]).clip(min=0)
            bars = ax.errorbar(
                g.world_size, g[col], yerr=err, fmt="o-", capsize=0, elinewidth=4, color=colors[mode], label=str(mode)
            )
            for collection in bars.lines[2]:
                collection.set_alpha(0.35)
            if len(flagged):
                ax.scatter(flagged.world_size, flagged[col], s=140, facecolors="none", edgecolors=WARNING_COLOR, lw=1.5, zorder=4,
                           label=None if ringed else "noisy")  # fmt: skip
        ringed = ringed or bool(len(flagged))
        for ax in (ax_s, ax_e):
            _mark_withheld(ax, g, "world_size", colors[mode])
    weak = bool(data.groupby(hue)["global_batch"].nunique().max() > 1)
    kind = "weak scaling: per-rank batch fixed" if weak else "strong scaling: same global batch"
    spread = "bars: range over repeats" if "step_time_min_s" in data.columns else "one run per point"
    ax_s.set(ylabel="speedup", title=f"Speedup ({kind})")
    top = data[["efficiency", "efficiency_high"]].max().max()
    top = 1.0 if pd.isna(top) else top
    ax_e.set(ylabel="efficiency = speedup / N", title=f"Efficiency ({spread})", ylim=(0, max(1.1, top * 1.1)))

    # the single process (world size 1) sends nothing: drawn as the first point of the worker line, where comm starts
    roles = per_role[per_role[hue].isin(modes)].replace({"role": {"single process": "worker"}}) if len(per_role) else per_role
    formula = False
    for (mode, role), g in roles.groupby([hue, "role"], sort=False):
        g = g.sort_values("world_size")
        marker = ROLE_MARKERS.get(str(role), "^")
        ax_c.plot(
            g.world_size, g.comm_s * 1e3, ls="--", marker=marker, mfc="none", color=colors[mode], label=f"{mode} · {role} · total"
        )
        ax_c.plot(
            g.world_size, g.exposed_comm_s * 1e3, ls="-", marker=marker, color=colors[mode], label=f"{mode} · {role} · exposed"
        )
        marked = str(role)
        sources = g.bytes_source[g.bytes_source != "none"] if "bytes_source" in g.columns else pd.Series(dtype=str)
        if sources.isin(["formula", "mixed"]).any():
            marked += " " + BYTES_MARKS["formula" if sources.eq("formula").all() else "mixed"]
            formula = True
        ax_b.plot(
            g.world_size, g.bytes_sent_per_step / 1e6, ls="-", marker=marker, color=colors[mode], label=f"{mode} · {marked}"
        )
    ax_c.set(ylabel="ms per step (mean over the role's processes)", title="Communication time per step")
    ax_b.set(ylabel="MB sent per step, per process", title="Bytes sent per step")
    if formula:
        ax_b.set_xlabel(textwrap.fill(FORMULA_NOTE, 70), fontsize=7)
    style: list[Artist] = [
        Line2D([], [], color="k", ls="-", label="exposed (the step waits)"),
        Line2D([], [], color="k", ls="--", mfc="none", label="total (incl. hidden)"),
    ]
    style += (
        [Line2D([], [], color="k", ls="", marker=ROLE_MARKERS.get(str(r), "^"), label=str(r)) for r in pd.unique(roles.role)]
        if len(roles)
        else []
    )
    style += [Patch(color=colors[m], label=str(m)) for m in modes]
    ax_c.legend(handles=style, fontsize=7, loc="best")
    if len(roles):
        ax_b.legend(fontsize=7, loc="best")
    for ax in (ax_s, ax_e, ax_c, ax_b):
        ax.set_xticks(xs, [_number(v) for v in xs])
        ax.set_xlim(xs.min() - 0.3, xs.max() + 0.3)
        ax.grid(alpha=0.3)
        if ax is not ax_b or not formula:
            words = in_words("world_size")
            ax.set_xlabel(f"{words} (parameter servers come on top)" if ax in (ax_c, ax_b) else words)
    for ax in (ax_s, ax_e):
        ax.legend(fontsize=8, loc="best")
    ax_c.set_ylim(bottom=0)
    ax_b.set_ylim(bottom=0)
    fig.suptitle(_experiment_subtitle(data), fontsize=9)
    warnings: list[str] = []
    for mode in modes:
        for w in scaling_warnings(data[data[hue] == mode]):
            text = w if "(the baseline" in w else f"{mode}: {w}"
            if text not in warnings:
                warnings.append(text)
    if warnings:
        text = "\n".join(textwrap.fill(f"Warning: {w}", 150, subsequent_indent="    ") for w in warnings)
        fig.supxlabel(text, color=WARNING_COLOR, fontsize=8, ha="left", x=0.01)
    return fig
