"""Where a rank's bytes go: stacked bars by kind (measured beside predicted), memory over a step, what fits.

The plotting convention of dpkit.viz: every function is named `*_plot`, takes frames (or a RunResult) and
returns a matplotlib Figure made outside pyplot. Predictions are always labelled "predicted" on the figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..results import RunResult

KIND_STYLE = [  # (column, legend label, colour): the five kinds of dpkit.runtime.memory, bottom to top
    ("mem_params_bytes", "parameters", "#4C72B0"),
    ("mem_grads_bytes", "gradients", "#55A868"),
    ("mem_optimizer_bytes", "optimizer state", "#C44E52"),
    ("mem_activations_peak_bytes", "activations (peak)", "#8172B3"),
    ("mem_buffers_bytes", "comm buffers (peak)", "#CCB974"),
]
PREDICTED_HATCH = "//"
OVER_COLOUR = "#b00000"


def _unit(values: np.ndarray) -> tuple[float, str]:
    top = float(np.nanmax(values)) if len(values) else 0.0
    for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if top >= scale:
            return scale, name
    return 1.0, "bytes"


def memory_breakdown_plot(frame: pd.DataFrame, budget_bytes: float | None = None, title: str = "") -> Figure:
    """A stacked bar per strategy (`label`) and `source`: measured solid, predicted hatched and labelled so;
    a dashed line at `budget_bytes` (a device's memory), with the bars over it marked "does not fit".
    `frame`: label, source ('measured' | 'predicted') and the mem_* columns (dpkit.analysis.memory_compare.breakdown)."""
    labels = list(dict.fromkeys(frame["label"]))
    fig = Figure(figsize=(max(7.0, 1.1 * len(labels) + 4.0), 4.4), layout="constrained")
    _breakdown(fig.subplots(), frame, budget_bytes, title)
    return fig


def _breakdown(ax: Axes, frame: pd.DataFrame, budget_bytes: float | None, title: str) -> None:
    labels = list(dict.fromkeys(frame["label"]))
    sources = [s for s in ("measured", "predicted") if s in set(frame["source"])]
    totals = frame[[c for c, _, _ in KIND_STYLE]].sum(axis=1).to_numpy(dtype=float)
    scale, unit = _unit(np.append(totals, budget_bytes or 0.0))
    width = 0.8 / len(sources)
    for j, source in enumerate(sources):
        rows = frame[frame["source"] == source].set_index("label").reindex(labels)
        x = np.arange(len(labels)) + (j - (len(sources) - 1) / 2) * width
        bottom = np.zeros(len(labels))
        for col, _, colour in KIND_STYLE:
            values = rows[col].to_numpy(dtype=float) / scale
            values = np.nan_to_num(values)
            ax.bar(
                x,
                values,
                width * 0.92,
                bottom=bottom,
                color=colour,
                hatch=PREDICTED_HATCH if source == "predicted" else None,
                edgecolor="white" if source == "measured" else "#333333",
                linewidth=0.5,
                alpha=0.65 if source == "predicted" else 1.0,
            )
            bottom += values
        over = budget_bytes is not None and rows[KIND_STYLE[0][0]].notna().to_numpy() & (bottom * scale > budget_bytes)
        for xi, total in zip(x[over], bottom[over], strict=True) if budget_bytes is not None else ():
            ax.text(xi, total, "X", ha="center", va="bottom", color=OVER_COLOUR, fontsize=10, fontweight="bold")
    if budget_bytes is not None:
        ax.axhline(budget_bytes / scale, color="k", linestyle="--", linewidth=1)
        ax.text(
            len(labels) - 0.5,
            budget_bytes / scale,
            f" device: {budget_bytes / scale:.3g} {unit}",
            va="bottom",
            ha="right",
            fontsize=8,
        )
    ax.set_xticks(
        np.arange(len(labels)), labels, rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center"
    )
    ax.set_ylabel(f"bytes held by one rank ({unit})")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.08)
    handles = [Patch(color=c, label=n) for _, n, c in KIND_STYLE]
    if "measured" in sources:
        handles.append(Patch(facecolor="#999999", label="measured (solid, left)"))
    if "predicted" in sources:
        handles.append(
            Patch(
                facecolor="white",
                edgecolor="#333333",
                hatch=PREDICTED_HATCH,
                label="predicted (hatched" + (", right)" if len(sources) > 1 else ")"),
            )
        )
    if budget_bytes is not None:
        handles.append(Patch(facecolor="white", edgecolor="white", label="X: over the device's memory"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    title = title or "Where one rank's bytes go"
    if len(sources) > 1:
        title += ": measured beside predicted"
    elif sources == ["predicted"] and "predicted" not in title:
        title += " (predicted)"
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)


def memory_fit_plot(breakdown: pd.DataFrame, costs: pd.DataFrame, budget_bytes: float, link_name: str = "") -> Figure:
    """Will it fit? Left: each strategy's busiest rank by kind (predicted; measured where run) against the
    device's memory. Right: what each costs, predicted by the cost model: step time (bars) and bytes on the
    wire per step (numbers); strategies that do not fit are greyed. `costs`: dpkit.analysis.memory_compare.costs."""
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.5, 1])
    _breakdown(left, breakdown, budget_bytes, "Memory of one rank")
    y = np.arange(len(costs))[::-1]
    times = costs["predicted_step_time_s"].to_numpy(dtype=float) * 1e3
    colours = ["#55A868" if f else "#BBBBBB" for f in costs["fits"]]
    right.barh(y, np.nan_to_num(times), color=colours, hatch=PREDICTED_HATCH, edgecolor="#333333", linewidth=0.5)
    for yi, t, wire, fits in zip(y, times, costs["predicted_wire_bytes_per_step"], costs["fits"], strict=True):
        note = f"  {wire / 1e6:.3g} MB/step on the wire" + ("" if fits else ", does not fit")
        right.text(0 if np.isnan(t) else t, yi, note, va="center", fontsize=8)
    right.set_yticks(y, costs["label"])
    right.set_xlabel("predicted step time (ms)")
    right.set_xlim(0, max(np.nanmax(times) if np.isfinite(times).any() else 1.0, 1e-9) * 1.9)
    right.set_title("What each costs (predicted" + (f", {link_name}" if link_name else "") + "); green: fits")
    right.grid(True, axis="x", alpha=0.3)
    return fig


def memory_timeline_plot(result: RunResult) -> Figure:
    """Activation bytes saved for backward over the sampled step (the first), one line per rank, beside each
    rank's parameters + gradients + optimizer state: how a pipeline's micro-batches pile up and drain."""
    samples = result.extra.get("memory_samples", {})
    frame = result.memory_frame().set_index("rank")
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.subplots()
    peaks = [v for rank_samples in samples.values() for _, _, v in rank_samples] or [0.0]
    scale, unit = _unit(np.array(peaks, dtype=float))
    for i, (rank, rows) in enumerate(sorted(samples.items(), key=lambda kv: int(kv[0]))):
        if not rows:
            continue
        t = np.array([r[1] for r in rows])
        live = np.array([r[2] for r in rows], dtype=float) / scale
        role = frame.loc[int(rank), "role"] if int(rank) in frame.index else f"rank {rank}"
        ax.step(np.concatenate([[t[0]], t]) * 1e3, np.concatenate([[0.0], live]), where="post", color=f"C{i}", label=f"{role}")
    ax.set_xlabel("time in the run (ms)")
    ax.set_ylabel(f"activations saved for backward ({unit})")
    steps = sorted({int(r[0]) for rows in samples.values() for r in rows})
    ax.set_title(f"Memory over step {steps[0] if steps else '-'} (measured): activations alive at each moment")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig
