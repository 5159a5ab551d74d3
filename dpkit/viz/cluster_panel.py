"""The cluster-scale panel: when does data parallelism pay off, and which sync method wins at 64 or 1,024 devices?

Nothing runs here: `cluster_scale` prices a dpkit.analysis.cluster.Cluster at every device count (predicted, in
well under a second) and draws step time by part, speedup and efficiency, bytes per device and memory per
device, and time to accuracy where measured convergence is given. Every axis says predicted; the model's error
against emulated runs on this machine (n <= 4, `dpkit bench cluster`) is quoted where it was measured.
`cluster_panel` is the ipywidgets front (dpkit.viz.widgets.Panel: controls, Run, figure and table).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..analysis import cluster
from ..cost.model import PRESETS
from ..cost.step_model import ComputeProfile
from .widgets import Panel, PanelResult, _dropdown

RECORD = Path(__file__).resolve().parents[2] / "data" / "bench" / "bench-cluster" / "cluster.csv"
MODEL_SIZES: dict[str, float] = {
    "digits MLP (0.54M)": 536458.0,
    "10M parameters": 10e6,
    "100M parameters": 100e6,
    "1B parameters": 1e9,
    "7B parameters": 7e9,
}
COMPUTE_CHOICES = ("this machine (measured)", *cluster.ACCELERATORS)
COLUMNS = [
    "devices", "nodes", "devices_per_node", "global_batch", "step_time_s", "compute_s", "exposed_comm_s", "speedup",
    "efficiency", "bytes_per_device", "inter_node_bytes_per_device", "memory_per_device_bytes", "fits",
    "time_to_target_s", "steps_source", "measured_error", "kind",
]  # fmt: skip


def recorded_errors(path: Path = RECORD) -> dict[str, float]:
    """The model's median |relative error| per sync method from the recorded emulated runs ({} if none)."""
    if not path.exists():
        return {}
    return cluster.error_by_sync(pd.read_csv(path))


def compute_for(
    choice: str, params: float, profile: ComputeProfile | None, profile_params: float, tokens_per_sample: int = 1
) -> cluster.Compute:
    """The compute a panel choice means: an accelerator's assumed throughput (samples of `tokens_per_sample`
    tokens), or this machine's measured profile (of a model of `profile_params` parameters, one digit image per
    sample) scaled to `params` (compute grows with the parameters)."""
    if choice in cluster.ACCELERATORS:
        return cluster.assumed_compute(choice, params, tokens_per_sample)
    if choice != COMPUTE_CHOICES[0]:
        raise ValueError(f"compute {choice!r} is not allowed: choose one of {list(COMPUTE_CHOICES)}")
    if profile is None:
        raise ValueError("compute 'this machine (measured)' needs a measured ComputeProfile (analysis.predict.measure_compute)")
    measured = cluster.measured_compute(profile)
    f = params / profile_params
    return cluster.Compute(
        measured.per_sample_s * f,
        measured.optimizer_s * f,
        measured.label + (f", scaled x{f:.3g} to the model's parameters" if abs(f - 1) > 1e-9 else ""),
        measured.backward_share,
    )


def cluster_figure(frame: pd.DataFrame, c: cluster.Cluster, chosen: int | None = None) -> Figure:
    """Step time by part, speedup and efficiency, bytes and memory per device (time to accuracy if in `frame`)."""
    has_tta = "time_to_target_s" in frame.columns
    fig = Figure(figsize=(16 if has_tta else 13, 3.8))
    axes = fig.subplots(1, 4 if has_tta else 3)
    x = frame.devices
    ax = axes[0]
    parts = [frame.compute_s * 1e3, frame.exposed_comm_s * 1e3, frame.server_s * 1e3]
    ax.stackplot(x, *parts, labels=["compute", "exposed comm", "server update"], alpha=0.8)
    ax.set(xscale="log", xlabel="devices", ylabel="ms per step (predicted)", title="step time, predicted")
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    ax.plot(x, frame.speedup, "o-", label="speedup (predicted)")
    ax.plot(x, x, ":", color="grey", label="ideal")
    ax.set(xscale="log", yscale="log", xlabel="devices", ylabel="throughput vs 1 device", title="speedup, predicted")
    twin = ax.twinx()
    twin.plot(x, frame.efficiency * 100, "s--", color="tab:red", ms=3, label="efficiency %")
    twin.set(ylabel="efficiency % (predicted)", ylim=(0, 105))
    ax.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    ax.plot(x, frame.bytes_per_device / 1e6, "o-", label="sent per device")
    ax.plot(x, frame.inter_node_bytes_per_device / 1e6, "^--", label="across nodes (busiest)")
    ax.plot(x, frame.memory_per_device_bytes / 1e6, "s-", label="memory per device (model states)")
    ax.axhline(c.device_memory_bytes / 1e6, color="k", lw=0.8, ls=":", label="device memory")
    ax.set(xscale="log", yscale="symlog", xlabel="devices", ylabel="MB (predicted)", title="bytes per step and memory, predicted")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    if has_tta:
        ax = axes[3]
        ax.plot(x, frame.time_to_target_s, "o-")
        for src, mark in (("extrapolated", "x"),):
            pick = frame.steps_source == src
            ax.plot(x[pick], frame.time_to_target_s[pick], mark, color="tab:red", label="steps extrapolated")
        ax.set(
            xscale="log", yscale="log", xlabel="devices", ylabel="s to target (predicted)", title="time to accuracy, predicted"
        )
        ax.legend(fontsize=7)
    if chosen is not None and chosen in set(x):
        for a in axes:
            a.axvline(chosen, color="tab:green", lw=1, alpha=0.6)
    err = frame.measured_error.dropna()
    note = (
        f"model error {err.iloc[0]:.0%} (median, measured at n <= {cluster.VALIDATED_UP_TO} on emulated links this machine honoured)"
        if len(err)
        else f"model error: not measured for {c.method} (beyond n = {cluster.VALIDATED_UP_TO} nothing is)"
    )
    fig.suptitle(f"Predicted: {c.describe()}\n{note}", fontsize=9)
    fig.tight_layout()
    return fig


def cluster_scale(
    params: float,
    per_device_batch: int,
    compute: cluster.Compute,
    nodes: int = 8,
    devices_per_node: int = 8,
    intra: str = "NVLink",
    inter: str = "100GbE",
    sync: str = "ring",
    servers: int = 1,
    zero_stage: int = 1,
    bucket_mb: float = 25.0,
    overlap: bool = True,
    device_memory_gb: float = 80.0,
    convergence: pd.DataFrame | None = None,
    errors: Mapping[str, float] | None = None,
) -> PanelResult:
    """The panel's pure function: the Cluster these values make, priced at 1 .. 1,024 devices (figure, frame).
    The chosen topology (nodes x devices_per_node) is marked on the figure and is one of the rows."""
    if intra not in PRESETS or inter not in PRESETS:
        raise ValueError(f"links {intra!r}, {inter!r} are not allowed: choose presets from {sorted(PRESETS)}")
    if nodes < 1 or nodes * devices_per_node > cluster.MAX_DEVICES:
        raise ValueError(f"nodes={nodes} is not allowed: at least 1, and nodes x devices per node <= {cluster.MAX_DEVICES}")
    c = cluster.Cluster(
        params=params, per_device_batch=per_device_batch, compute=compute, devices_per_node=devices_per_node,
        intra=PRESETS[intra], inter=PRESETS[inter], method=sync, servers=servers, zero_stage=zero_stage,
        bucket_mb=bucket_mb, overlap=overlap, device_memory_bytes=device_memory_gb * 1e9,
    )  # fmt: skip
    chosen = nodes * devices_per_node
    ns = sorted(set(cluster.device_counts(devices_per_node)) | {chosen})
    frame = cluster.scale(c, ns, convergence, errors)
    return cluster_figure(frame, c, chosen), frame


def cluster_panel(
    profile: ComputeProfile | None = None,
    profile_params: float = 536458.0,
    convergence: pd.DataFrame | None = None,
    errors: Mapping[str, float] | None = None,
) -> Panel:
    """Model, batch, compute, topology, links, sync method, buckets and overlap -> predicted scaling to 1,024
    devices. `profile`: a measured single-process profile of a model of `profile_params` parameters (for the
    'this machine' compute); `errors`: the model's measured error per sync (default: the recorded table)."""
    errs = recorded_errors() if errors is None else dict(errors)
    links = list(PRESETS)
    controls: dict[str, W.ValueWidget] = {
        "model": _dropdown(list(MODEL_SIZES.items()), MODEL_SIZES["1B parameters"], "model size"),
        "per_device_batch": _dropdown([1, 2, 4, 8, 16, 32, 64, 128], 8, "samples per device"),
        "compute_choice": _dropdown(COMPUTE_CHOICES, "H100-class", "compute per sample"),
        "tokens": _dropdown([1, 128, 512, 2048, 8192], 2048, "tokens per sample (assumed compute)"),
        "nodes": _dropdown([1, 2, 4, 8, 16, 32, 64, 128], 8, "nodes"),
        "devices_per_node": _dropdown([1, 2, 4, 8], 8, "devices per node"),
        "intra": _dropdown(links, "NVLink", "within a node"),
        "inter": _dropdown(links, "100GbE", "between nodes"),
        "sync": _dropdown(cluster.SYNCS, "ring", "sync method"),
        "servers": _dropdown([1, 2, 4, 8, 16, 64], 4, "PS servers (ps)"),
        "zero_stage": _dropdown([1, 2, 3], 1, "ZeRO stage (zero)"),
        "bucket_mb": _dropdown([0, 1, 5, 25, 100], 25, "bucket MiB (0: one buffer)"),
        "overlap": W.Checkbox(value=True, description="overlap with the backward"),
    }

    def compute(
        model: float, compute_choice: str, tokens: int, progress: Callable[..., Any] | None = None, **values: Any
    ) -> PanelResult:
        c = compute_for(compute_choice, model, profile, profile_params, tokens)
        return cluster_scale(model, compute=c, convergence=convergence, errors=errs, **values)

    panel = Panel("Past one machine: predicted scaling to 1,024 devices", controls, compute, COLUMNS)
    for control in controls.values():  # nothing runs, the prediction is instant: redraw on every change
        control.observe(lambda _change: panel.run(), names="value")
    return panel


def two_level_figure(table: pd.DataFrame, why: str = "") -> Figure:
    """Measured beside predicted for runs on emulated nodes (a dpkit.analysis.cluster.validate table): the step
    time per sync method and links, with the error (or 'withheld' where this machine did not honour the links:
    hatched), and the bytes the busiest rank took in across nodes per step."""
    ok = cluster.row_honoured(table)
    inner = [r.topology.split(" (", 1)[-1].rsplit(")", 1)[0] for r in table.itertuples()]  # "X within, Y between"
    inner = [re.sub(r"custom link \(([^,]+), ([^)]+)\)", r"\2 link", links) for links in inner]  # "12.5 MB/s link"
    labels = [
        f"{r.sync}\n" + links.replace(" within, ", " within,\n") for r, links in zip(table.itertuples(), inner, strict=True)
    ]
    x = list(range(len(labels)))
    fig = Figure(figsize=(max(10, 3.0 * len(labels)), 3.8))
    a, b = fig.subplots(1, 2)
    a.bar([i - 0.2 for i in x], table.predicted_step_time_s * 1e3, 0.4, label="predicted", color="tab:gray")
    for i, (row, good) in enumerate(zip(table.itertuples(), ok, strict=True)):
        a.bar(i + 0.2, row.measured_step_time_s * 1e3, 0.4, color="tab:blue" if good else "white", edgecolor="tab:blue",
              hatch=None if good else "//")  # fmt: skip
        top = max(row.predicted_step_time_s, row.measured_step_time_s) * 1e3
        a.annotate(f"{row.rel_error:+.0%}" if good else "withheld", (i, top), ha="center", va="bottom", fontsize=7)
    a.set_xticks(x, labels, fontsize=7)
    a.set(ylabel="ms per step", title="step: measured (emulated links) and predicted")
    a.legend(handles=_step_legend(), fontsize=7)
    b.bar([i - 0.2 for i in x], table.predicted_inter_node_bytes_per_rank / 1e6, 0.4, label="predicted", color="tab:gray")
    b.bar(
        [i + 0.2 for i in x], table.measured_inter_node_bytes_per_rank / 1e6, 0.4, label="measured (counted)", color="tab:orange"
    )
    b.set_xticks(x, labels, fontsize=7)
    b.set(ylabel="MB per step", title="bytes across nodes (busiest rank)")
    b.legend(fontsize=7)
    fig.suptitle(f"2 nodes x 2 ranks, emulated links; {why}", fontsize=9)
    fig.tight_layout()
    return fig


def _step_legend() -> list[Patch]:
    return [
        Patch(color="tab:gray", label="predicted"),
        Patch(color="tab:blue", label="measured, emulated links (median of runs)"),
        Patch(facecolor="white", edgecolor="tab:blue", hatch="//", label="not honoured here: withheld"),
    ]


def short_topology(row: Any) -> str:
    """'2x2 nodes' or '4 ranks': a validate() row's topology in a tick label."""
    if "nodes x" in row.topology:
        return row.topology.split(" (")[0].replace(" nodes x ", "x") + " nodes"
    return f"{row.world_size} ranks" + (f" + {row.servers} server{'s' if row.servers > 1 else ''}" if row.servers else "")


def validation_figure(table: pd.DataFrame) -> Figure:
    """The model against emulated runs (a dpkit.analysis.cluster.validate table or its record): per link set, each
    row's predicted step beside its measured one with the relative error above it. Rows whose links this machine
    did not honour (cluster.row_honoured) are hatched, marked 'withheld', and left out of the median error."""
    honoured = cluster.row_honoured(table, int(table.cpu_count.iloc[0]) if "cpu_count" in table else None)
    links = list(dict.fromkeys(table.link if "link" in table else ["1GbE"] * len(table)))
    widest = max(int((table.link == link).sum()) if "link" in table else len(table) for link in links)
    fig = Figure(figsize=(max(6.5, 0.75 * widest) * len(links), 4.2))
    axes = fig.subplots(1, len(links), squeeze=False)[0]
    for ax, link in zip(axes, links, strict=True):
        pick = (table.link == link) if "link" in table else pd.Series(True, index=table.index)
        rows, ok = table[pick], honoured[pick]
        x = list(range(len(rows)))
        ax.bar([i - 0.2 for i in x], rows.predicted_step_time_s * 1e3, 0.4, color="tab:gray", label="predicted")
        for i, (row, good) in enumerate(zip(rows.itertuples(), ok, strict=True)):
            ax.bar(
                i + 0.2, row.measured_step_time_s * 1e3, 0.4, color="tab:blue" if good else "white", edgecolor="tab:blue",
                hatch=None if good else "//", label=None,
            )  # fmt: skip
            top = max(row.predicted_step_time_s, row.measured_step_time_s) * 1e3
            ax.annotate(f"{row.rel_error:+.0%}" if good else "withheld", (i, top), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [f"{r.sync}\n{short_topology(r)}" for r in rows.itertuples()], fontsize=7, rotation=30, ha="right")
        err = rows[ok].rel_error.abs().median()
        said = f"median |error| {err:.0%} over {int(ok.sum())} honoured rows" if ok.any() else "no row honoured"
        ax.set(ylabel="ms per step", title=f"{link}: {said}")
        ax.title.set_fontsize(9)
        ax.legend(handles=_step_legend(), fontsize=7)
    load = table[["load_1min_start", "load_1min_end"]].max(axis=1).max()
    fig.suptitle(
        f"Predicted (cluster model) against measured on emulated links, this machine (load average up to {load:.1f})", fontsize=9
    )
    fig.tight_layout()
    return fig
