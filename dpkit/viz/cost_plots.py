"""Measurements against the model: benchmark curves, predicted over measured with residuals, the what-if.

The plotting convention of dpkit.viz: every function is named `*_plot`, takes frames, and returns a
matplotlib Figure made outside pyplot (no global state, no backend switch), so notebooks display it
and benchmarks save it.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

_STYLES = ["-", "--", ":", "-."]


def _repeat_times(value: object) -> list[float]:
    """A row's repeat times: a list, or the space-separated string dpkit.benchmarks.allreduce.measure stores."""
    return [float(v) for v in (value.split() if isinstance(value, str) else value)]  # type: ignore[attr-defined]


def allreduce_bench_plot(frame: pd.DataFrame) -> Figure:
    """Log-log time and busbw against message size: a colour per algorithm, a line style per world size."""
    fig = Figure(figsize=(12, 4.5))
    (ax_t, ax_b) = fig.subplots(1, 2)
    algos = list(dict.fromkeys(frame.algo))
    colours = {a: f"C{i}" for i, a in enumerate(algos)}
    for j, n in enumerate(sorted(frame.world_size.unique())):
        for algo in algos:
            g = frame[(frame.world_size == n) & (frame.algo == algo)].sort_values("size_bytes")
            style = dict(color=colours[algo], linestyle=_STYLES[j % len(_STYLES)], marker="o", markersize=3)
            ax_t.plot(g.size_bytes, g.time_s, label=f"{algo}, {n} ranks, measured", **style)
            if "times_s" in g.columns:  # error bar: fastest to slowest repeat
                repeats = g.times_s.map(_repeat_times)
                low = (g.time_s - repeats.map(min)).clip(lower=0)
                high = (repeats.map(max) - g.time_s).clip(lower=0)
                ax_t.errorbar(g.size_bytes, g.time_s, yerr=[low, high], fmt="none", ecolor=colours[algo], alpha=0.5, capsize=2)
            ax_b.plot(g.size_bytes, g.busbw_GBps, label=f"{algo}, {n} ranks", **style)
            if "predicted_s" in g.columns:  # the model beside the measurement, never in its place
                ax_t.plot(g.size_bytes, g.predicted_s, color=colours[algo], linestyle=":", alpha=0.6)
    for ax in (ax_t, ax_b):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_ylabel(
        "time per all-reduce (s, median of repeats)"
        + (": dotted = predicted by the model" if "predicted_s" in frame.columns else "")
    )
    ax_b.set_ylabel("bus bandwidth (GB/s) = S/t * 2(n-1)/n")
    ax_b.legend(fontsize=7, ncol=2)
    fig.suptitle(
        "All-reduce algorithms: measured"
        + (" (points) and predicted (dotted)" if "predicted_s" in frame.columns else "")
        + ("; bars: fastest to slowest repeat" if "times_s" in frame.columns else "")
    )
    fig.tight_layout()
    return fig


def fit_plot(frame: pd.DataFrame, title: str = "") -> Figure:
    """Measured points and model predictions against size, one colour per (pattern, n); residuals below.
    `frame` needs pattern, world_size, size_bytes, time_s and predicted_s."""
    fig = Figure(figsize=(8, 6.5))
    (ax, res) = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for i, ((pattern, n), g) in enumerate(frame.groupby(["pattern", "world_size"])):
        g = g.sort_values("size_bytes")
        colour = f"C{i % 10}"
        ax.plot(g.size_bytes, g.time_s, "o", color=colour, markersize=4, label=f"{pattern}, n={n} measured")
        ax.plot(g.size_bytes, g.predicted_s, "-", color=colour, alpha=0.7)
        res.plot(g.size_bytes, 100 * (g.predicted_s - g.time_s) / g.time_s, "o-", color=colour, markersize=3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylabel("time (s): points measured, lines model")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    res.axhline(0, color="k", linewidth=0.8)
    res.set_ylabel("residual (%)")
    res.set_xlabel("message size (bytes)")
    res.grid(True, alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def predicted_vs_measured_plot(frame: pd.DataFrame, x: str = "world_size") -> Figure:
    """Per strategy: the predicted step time as a curve, the measured step times as points; residuals below.
    `frame` is predict.compare_many's output."""
    fig = Figure(figsize=(8, 6.5))
    (ax, res) = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for i, (name, g) in enumerate(frame.groupby("strategy")):
        g = g.sort_values(x)
        colour = f"C{i % 10}"
        ax.plot(g[x], g.predicted_step_time_s * 1e3, "-", color=colour, label=f"{name} predicted")
        ax.plot(g[x], g.measured_step_time_s * 1e3, "o", color=colour, label=f"{name} measured")
        res.plot(g[x], 100 * g.rel_error, "o-", color=colour)
    ax.set_ylabel("step time (ms)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    res.axhline(0, color="k", linewidth=0.8)
    res.set_ylabel("(pred - meas)/meas (%)")
    res.set_xlabel(x)
    res.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def whatif_plot(scan: pd.DataFrame, title: str, crossovers: dict[str, int | None] | None = None) -> Figure:
    """Seconds per synchronisation against worker count (costmodel at scale), with PS/ring crossovers marked."""
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for col in scan.columns.drop("workers"):
        ax.plot(scan.workers, scan[col], "-" if not col.startswith("ps") else "--", marker=".", label=col)
    at: dict[int, list[str]] = {}
    for label, n in (crossovers or {}).items():
        if n is not None:
            at.setdefault(n, []).append(label)
    for n, labels in at.items():
        ax.axvline(n, color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"{', '.join(labels)} slower from n={n}", (n, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=7
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers n")
    ax.set_ylabel("seconds per gradient synchronisation")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def crossover_plot(table: pd.DataFrame, link: str) -> Figure:
    """Crossover worker count against the number of PS shards k, one line per model size, for one link."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    sel = table[table.link == link]
    for model, g in sel.groupby("model", sort=False):
        ax.plot(g.servers, g.crossover_workers.astype(float), "o-", label=model)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("parameter-server shards k")
    ax.set_ylabel("workers beyond which the PS is slower than ring")
    ax.set_title(f"PS vs ring all-reduce crossover on {link} (no point: PS never slower within range)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def bubble_plot(frame: pd.DataFrame) -> Figure:
    """Measured bubble fraction against micro-batches m beside (p-1)/(m+p-1), one panel per stage count
    (`frame` is `dpkit bench bubble`'s table)."""
    stages = sorted(frame.stages.unique())
    fig = Figure(figsize=(5 * len(stages), 3.6), layout="constrained")
    axes = fig.subplots(1, len(stages), squeeze=False)
    for ax, p in zip(axes[0], stages, strict=True):
        sub = frame[frame.stages == p]
        formula = sub.drop_duplicates("microbatches").sort_values("microbatches")
        ax.plot(formula.microbatches, formula.bubble_formula, "k--", label="(p-1)/(m+p-1) (formula)")
        for schedule, g in sub.groupby("schedule"):
            ax.plot(g.microbatches, g.bubble_measured, "o-", label=f"{schedule} (measured)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.set_xlabel("micro-batches m")
        ax.set_ylabel("bubble fraction of a step")
        ax.set_title(f"p = {p} stages")
        ax.legend()
    return fig


def ps_vs_allreduce_plot(frame: pd.DataFrame) -> Figure:
    """Bytes moved and comm time per step against workers: PS worker and server beside a ring rank,
    measured (points) and predicted (dashed); `frame` is `dpkit bench ps_vs_allreduce`'s table."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_b, ax_t = fig.subplots(1, 2)
    for (method, role), g in frame.groupby(["method", "role"]):
        g, label = g.sort_values("workers"), method if method == "ring" else f"{method} {role}"
        line = ax_b.plot(g.workers, g.bytes_moved / 2**20, "o-", label=label)[0]
        ax_b.plot(g.workers, g.bytes_moved_pred / 2**20, "--", color=line.get_color())
        if role != "server":
            line = ax_t.plot(g.workers, g.comm_s * 1e3, "o-", label=label)[0]
            if g.comm_pred_s.notna().any():
                ax_t.plot(g.workers, g.comm_pred_s * 1e3, "--", color=line.get_color())
    ax_b.set(
        xlabel="workers n", ylabel="MiB moved per rank per step (sent + received)", title="traffic: measured (o), predicted (--)"
    )
    ax_t.set(
        xlabel="workers n", ylabel="comm ms per step", title="comm time per worker / ring rank: measured (o), predicted (--)"
    )
    for ax in (ax_b, ax_t):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def link_bench_plot(frame: pd.DataFrame) -> Figure:
    """Emulated links: measured time (points) against the pattern's formula (lines) over message size, a panel
    per pattern, a colour per link; a cross marks a row the machine could not honour (its real transfer was
    slower than the link). `frame` is `dpkit bench link`'s table."""
    patterns = list(dict.fromkeys(frame.pattern))
    fig = Figure(figsize=(4.2 * len(patterns), 4.2), layout="constrained")
    axes = fig.subplots(1, len(patterns), squeeze=False)[0]
    colours = {k: f"C{i}" for i, k in enumerate(dict.fromkeys(frame.link))}
    for ax, pattern in zip(axes, patterns, strict=True):
        rows = frame[frame.pattern == pattern]
        shapes = sorted(set(zip(rows.world_size, rows.servers, strict=True)))  # a line style per (n, k)
        for (link, n, k), g in rows.groupby(["link", "world_size", "servers"], sort=False):
            g = g.sort_values("size_bytes")
            label = f"{link}, n={n}" + (f", k={k}" if k else "")
            style = _STYLES[shapes.index((n, k)) % len(_STYLES)]
            ax.plot(g.size_bytes, g.predicted_s, style, color=colours[link], alpha=0.7, label=label)
            ok, bad = g[g.honoured], g[~g.honoured]
            ax.plot(ok.size_bytes, ok.measured_s, "o", color=colours[link], markersize=4)
            ax.plot(bad.size_bytes, bad.measured_s, "x", color=colours[link], markersize=6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size S (bytes)")
        ax.set_title(f"{pattern}: {rows.formula.iloc[0]}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("time (s): o measured, x not honoured, lines formula")
    fig.suptitle("emulated links: measured against alpha + S/B x pattern")
    return fig
