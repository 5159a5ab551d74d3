"""Figures for the lessons that must add up and read in words: the slowest rank's step parts, and
pipeline timelines with each box named by its micro-batch (F0 ... F7, B7 ... B0, as textbooks draw them).

The step-time marker the kit reports (`step_time_s`) is the median over timed steps of the slowest rank's
step. Its parts here are that rank's, in that step (the two middle steps averaged when the count is even,
as the median is), so the stack reaches the marker exactly: dpkit.viz.lesson_checks tests it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..results import RunResult
from .plots import BREAKDOWN, KIND_COLORS, OPTIONAL_STATES, timeline_plot

PART_COLUMNS = [col for col, _, _ in BREAKDOWN]  # compute_s, exposed_comm_s, idle_s, bubble_s, injected_s
SLOWEST = "the slowest rank, median step"


def slowest_rank_parts(result: RunResult) -> pd.Series:
    """The parts of the slowest rank's step in the median step (mean of the two middle steps when the
    number of timed steps is even), with that rank, its role, and its comm time and hidden comm.
    compute_s + exposed_comm_s + idle_s + bubble_s + injected_s == step_time_s == result.summary['step_time_s']."""
    stats = result.step_stats()
    timed = stats[stats.step >= result.config.warmup]
    if timed.empty:
        raise ValueError("slowest_rank_parts: the run has no timed steps (steps <= warmup?)")
    slowest = timed.loc[timed.groupby("step").step_time_s.idxmax()].sort_values("step_time_s", kind="stable")
    k = len(slowest)
    middle = slowest.iloc[[(k - 1) // 2, k // 2]] if k % 2 == 0 else slowest.iloc[[k // 2]]
    columns = ["step_time_s", *PART_COLUMNS, "comm_s", "hidden_comm_s", "bytes_sent"]
    parts = {**middle[columns].mean().to_dict(), "rank": int(middle["rank"].iloc[-1]), "role": str(middle["role"].iloc[-1])}
    return pd.Series(parts, dtype=object)


def _median_run(runs: RunResult | Sequence[RunResult]) -> tuple[RunResult, int]:
    """The run with the median step time (the lower one of an even count) and how many runs there were."""
    if isinstance(runs, RunResult):
        return runs, 1
    ordered = sorted(runs, key=lambda r: r.summary["step_time_s"])
    return ordered[(len(ordered) - 1) // 2], len(ordered)


def step_parts_frame(runs: Mapping[str, RunResult | Sequence[RunResult]]) -> pd.DataFrame:
    """One row per named run: its slowest rank's step parts (slowest_rank_parts), the reported step time,
    bytes sent per step (mean over training ranks) and where they come from. With several repeats of a
    run, the one with the median step time is shown (`repeats` says how many there were)."""
    rows = []
    for label, given in runs.items():
        result, repeats = _median_run(given)
        parts = slowest_rank_parts(result)
        summary = result.summary
        rows.append(
            {
                "label": label,
                **parts.to_dict(),
                "reported_step_time_s": summary["step_time_s"],
                "bytes_sent_per_step": summary["bytes_sent_per_step"],
                "bytes_source": summary["bytes_source"],
                "repeats": repeats,
            }
        )
    return pd.DataFrame(rows)


def step_parts_plot(frame: pd.DataFrame, title: str = "Where a step's time goes") -> Figure:
    """Stacked bars of the slowest rank's parts (frame from step_parts_frame), each labelled in words with
    its step time in ms, beside the step-time marker they add up to; comm hidden behind compute is given
    above each bar (it costs no time, so it is not in the stack)."""
    if frame.empty:
        raise ValueError("step_parts_plot got an empty frame: run something first")
    fig = Figure(figsize=(max(6.0, 1.6 * len(frame) + 2.5), 4.6), layout="constrained")
    ax = fig.subplots()
    pos = np.arange(len(frame))
    bottom = np.zeros(len(frame))
    for col, name, kind in BREAKDOWN:
        values = np.nan_to_num(frame[col].to_numpy(dtype=float)) * 1e3
        if col in OPTIONAL_STATES and not values.any():
            continue
        ax.bar(pos, values, bottom=bottom, color=KIND_COLORS[kind], label=name, width=0.6)
        bottom += values
    step_ms = frame.reported_step_time_s.to_numpy(dtype=float) * 1e3
    ax.scatter(pos, step_ms, marker="_", s=600, color="k", zorder=3, label=f"step time ({SLOWEST})")
    for p, (_, row), top in zip(pos, frame.iterrows(), np.maximum(bottom, step_ms), strict=True):
        sent = f"\n{row.bytes_sent_per_step / 1e6:.3g} MB sent per rank" if row.bytes_sent_per_step > 0 else ""
        formula = " (formula)" if row.bytes_source in ("formula", "mixed") else ""
        ax.annotate(
            f"step {row.reported_step_time_s * 1e3:.1f} ms\ncomm {row.comm_s * 1e3:.1f} ms, "
            f"{row.hidden_comm_s * 1e3:.1f} hidden{sent}{formula}",
            (p, top),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 3),
            textcoords="offset points",
        )
    names = [
        f"{label}\n(rank {int(rank)}: {role})" for label, rank, role in zip(frame.label, frame["rank"], frame.role, strict=True)
    ]
    ax.set_xticks(pos, names, fontsize=8)
    ax.set(ylabel=f"ms per step ({SLOWEST})", title=title)
    ax.set_ylim(0, max(1e-6, ax.get_ylim()[1] * 1.3))
    ax.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)
    if frame.bytes_source.isin(["formula", "mixed"]).any():
        ax.set_xlabel("(formula): bytes of a backend collective, priced by formula instead of counted", fontsize=7)
    return fig


# ---- pipeline timelines with micro-batch names ------------------------------------------------------
_FORWARD = re.compile(r"^(?:F|forward )(\d+)$")
_BACKWARD = re.compile(r"^(?:B|backward )(\d+)$")


def microbatch_label(span_name: str) -> str | None:
    """'forward 3' or 'F3' -> 'F3', 'backward 3' or 'B3' -> 'B3'; any other span -> None."""
    for pattern, letter in ((_FORWARD, "F"), (_BACKWARD, "B")):
        found = pattern.match(str(span_name))
        if found:
            return f"{letter}{found.group(1)}"
    return None


def pipeline_timeline_plot(result: RunResult, step: int | None = None) -> Figure:
    """The per-rank timeline of one pipeline step (the first timed one by default), every compute box
    named by its micro-batch, with a title in words."""
    cfg = result.config
    step = cfg.warmup if step is None else step
    fig = timeline_plot(result, steps=[step])
    ax = fig.axes[0]
    tl = result.timeline[result.timeline.step == step]
    t0 = tl.start_s.min()  # as timeline_plot: one origin, lanes in rank order
    lanes = sorted(pd.unique(tl["rank"]))
    forwards = set()
    for span in tl[tl.kind == "compute"].itertuples(index=False):
        label = microbatch_label(span.name)
        if label is None:
            continue
        forwards |= {label} if label.startswith("F") else set()
        middle = ((span.start_s + span.end_s) / 2 - t0) * 1e3
        ax.text(middle, lanes.index(span.rank) - 0.2, label, ha="center", va="center", fontsize=7, color="white", clip_on=True)
    schedule = {"gpipe": "GPipe", "1f1b": "1F1B", "naive": "one batch at a time"}.get(cfg.schedule, cfg.schedule)
    micro = len(forwards)  # as drawn: the naive schedule runs the whole batch as one micro-batch
    ax.set_title(
        f"Pipeline of {cfg.world_size} stages, {micro} micro-batch{'es' if micro != 1 else ''}, {schedule}: step {step}"
        " (F3 = forward of micro-batch 3, B3 = its backward)"
    )
    return fig


# ---- tables a learner reads -------------------------------------------------------------------------
def in_words(frame: pd.DataFrame, columns: Mapping[str, str], digits: int = 1) -> pd.DataFrame:
    """The `columns` of `frame` under the headers given (column -> header, in that order); a column whose
    name ends in `_s` is shown in milliseconds, rounded to `digits` decimals (say "ms" in its header)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"in_words: no column(s) {missing} in the frame; it has {list(frame.columns)}")
    out = frame[list(columns)].copy()
    for col in columns:
        if col.endswith("_s"):
            out[col] = (out[col].astype(float) * 1e3).round(digits)
    return out.rename(columns=dict(columns)).reset_index(drop=True)
