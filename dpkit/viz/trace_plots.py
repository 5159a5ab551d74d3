"""One step of one rank as a trace viewer shows it: dpkit's spans above torch.profiler's operators (profile=True)."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..results import RunResult
from ..runtime.profiler import EXTRA_KEY

SPAN_COLORS = {"compute": "#4C72B0", "comm": "#DD8452", "idle": "#C8C8C8", "bubble": "#C44E52", "injected": "#8172B3"}
OP_COLOR = "#55A868"


def _depths(ops: list[dict]) -> list[int]:
    """Nesting depth of each operator (sorted by start): how many still-open operators of its thread enclose it."""
    depth: list[int] = []
    open_ends: dict[int, list[float]] = {}  # thread -> stack of end times
    for op in ops:
        stack = open_ends.setdefault(op["thread"], [])
        while stack and stack[-1] <= op["start_s"]:
            stack.pop()
        depth.append(len(stack))
        stack.append(op["end_s"])
    return depth


def trace_step_plot(result: RunResult, rank: int = 0, step: int | None = None, max_depth: int = 3) -> Figure:
    """dpkit's spans (one row per kind) over the profiler's operators (one row per nesting level and thread)
    for one step of one rank: the picture to look for in Perfetto. Times in ms from the step's start."""
    events = result.extra.get(EXTRA_KEY, {}).get(str(rank))
    if not events:
        raise ValueError("trace_step_plot needs a run with RunConfig(profile=True): no profiler events for this rank")
    steps = result.steps[result.steps["rank"] == rank]
    step = int(steps.step.max()) if step is None else step
    row = steps[steps.step == step].iloc[0]
    t0, t1 = float(row.start_s), float(row.end_s)
    spans = result.timeline[(result.timeline["rank"] == rank) & (result.timeline.step == step)]
    ops = sorted((e for e in events if t0 <= e["start_s"] < t1), key=lambda e: (e["start_s"], -e["end_s"]))
    depth = _depths(ops)
    threads = sorted({e["thread"] for e in ops})
    kinds = [k for k in SPAN_COLORS if k in set(spans.kind)]
    lanes: dict[tuple, int] = {("dpkit", k): i for i, k in enumerate(kinds)}
    for t in threads:
        for d in range(max_depth):
            if any(e["thread"] == t and dd == d for e, dd in zip(ops, depth, strict=True)):
                lanes[("op", t, d)] = len(lanes)
    fig = Figure(figsize=(10, 0.45 * len(lanes) + 1.4))
    ax = fig.add_subplot()
    for s in spans.itertuples(index=False):
        y = lanes[("dpkit", s.kind)]
        ax.barh(y, (s.end_s - s.start_s) * 1e3, left=(s.start_s - t0) * 1e3, color=SPAN_COLORS[s.kind], edgecolor="white")
        if (s.end_s - s.start_s) > 0.05 * (t1 - t0) and s.kind != "comm":  # comm spans overlap: labelled once below
            ax.text((s.start_s + s.end_s - 2 * t0) / 2 * 1e3, y, s.name, ha="center", va="center", fontsize=7, color="white")
    comm = spans[spans.kind == "comm"]
    if len(comm):
        ax.text(((comm.start_s.min() + comm.end_s.max()) / 2 - t0) * 1e3, lanes[("dpkit", "comm")],
                f"{len(comm)} messages: " + ", ".join(sorted(set(comm.name.str.replace(r"\d+$", "", regex=True))))[:60],
                ha="center", va="center", fontsize=7, color="white")  # fmt: skip
    for e, d in zip(ops, depth, strict=True):
        lane = lanes.get(("op", e["thread"], d))
        if lane is None:
            continue
        ax.barh(lane, (e["end_s"] - e["start_s"]) * 1e3, left=(e["start_s"] - t0) * 1e3, color=OP_COLOR, edgecolor="white")
        if (e["end_s"] - e["start_s"]) > 0.08 * (t1 - t0):
            name = e["name"].replace("autograd::engine::evaluate_function: ", "")
            ax.text((e["start_s"] + e["end_s"] - 2 * t0) / 2 * 1e3, lane, name[:28], ha="center", va="center", fontsize=6)
    labels = [f"dpkit: {k[1]}" if k[0] == "dpkit" else f"torch.profiler: thread {k[1]}, level {k[2]}" for k in lanes]
    ax.set_yticks(range(len(lanes)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, (t1 - t0) * 1e3)
    ax.set_xlabel(f"time since the start of step {step} (ms): one clock for both")
    ax.set_title(
        f"Rank {rank}, step {step}: dpkit's spans (top) and torch.profiler's operators (below), recorded",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
