"""RunResult: what a run did, as tidy frames, a summary, and a folder of JSON/CSV/NPZ (no pickle)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import RunConfig
from .strategies.registry import spec_for

TIMELINE_COLUMNS = ["rank", "step", "kind", "name", "start_s", "end_s", "bytes"]
STEP_COLUMNS = ["rank", "step", "role", "start_s", "end_s"]


# ---- interval arithmetic for comm/compute overlap ---------------------------------------
def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def _overlap(xs: list[tuple[float, float]], ys: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two unions of intervals."""
    total = 0.0
    for a, b in xs:
        for c, d in ys:
            total += max(0.0, min(b, d) - max(a, c))
    return total


def step_stats(timeline: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per rank and step: time split into compute / comm / exposed comm / idle / bubble, and bytes sent.

    exposed comm = comm time not overlapped by this rank's compute (what overlap could not hide).
    """
    rows = []
    grouped = {key: g for key, g in timeline.groupby(["rank", "step"])} if len(timeline) else {}
    for s in steps.itertuples(index=False):
        g = grouped.get((s.rank, s.step))
        row = {"rank": s.rank, "step": s.step, "role": s.role, "step_time_s": s.end_s - s.start_s}
        if g is None:
            row.update(compute_s=0.0, comm_s=0.0, exposed_comm_s=0.0, idle_s=0.0, bubble_s=0.0, bytes_sent=0)
        else:
            spans = {k: _union(list(zip(v.start_s, v.end_s, strict=True))) for k, v in g.groupby("kind")}
            comm, compute = spans.get("comm", []), spans.get("compute", [])
            row.update(
                compute_s=_length(compute),
                comm_s=_length(comm),
                exposed_comm_s=_length(comm) - _overlap(comm, compute),
                idle_s=_length(spans.get("idle", [])),
                bubble_s=_length(spans.get("bubble", [])),
                bytes_sent=int(g.loc[g.kind == "comm", "bytes"].sum()),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def expected_bubble_fraction(cfg: RunConfig) -> float:
    """(p-1)/(m+p-1) for p pipeline stages and m micro-batches (naive: m = 1); NaN when there is no pipeline."""
    return spec_for(cfg).expected_bubble(cfg)


def summarize(cfg: RunConfig, timeline: pd.DataFrame, steps: pd.DataFrame, losses: list[float], meta: dict) -> dict:
    """Medians over the timed steps (warm-up excluded); per-rank numbers are means over training ranks."""
    stats = step_stats(timeline, steps)
    timed = stats[stats.step >= cfg.warmup]
    workers = timed[timed["rank"].isin(spec_for(cfg).training_ranks(cfg))]
    per_step = workers.groupby("step")
    step_time = float(timed.groupby("step").step_time_s.max().median())
    mean = per_step[["compute_s", "comm_s", "exposed_comm_s", "idle_s", "bubble_s", "bytes_sent"]].mean().median()
    return {
        "step_time_s": step_time,
        "samples_per_s": cfg.global_batch / step_time if step_time > 0 else float("nan"),
        "compute_s": float(mean.compute_s),
        "comm_s": float(mean.comm_s),
        "exposed_comm_s": float(mean.exposed_comm_s),
        "idle_s": float(mean.idle_s),
        "bubble_s": float(mean.bubble_s),
        "bubble_fraction": float(mean.bubble_s) / step_time if step_time > 0 else float("nan"),
        "bubble_fraction_formula": expected_bubble_fraction(cfg),
        "bytes_sent_per_step": float(mean.bytes_sent),
        "bytes_sent_per_step_all_ranks": float(timed.groupby("step").bytes_sent.sum().median()),
        "timed_steps": int(cfg.steps - cfg.warmup),
        "final_loss": float(losses[-1]),
        "clock": meta.get("clock"),
        "threads_per_rank": meta.get("threads_per_rank"),
        "gloo_loop": meta.get("gloo_loop"),
        "backend": meta.get("backend"),
        "device": meta.get("device"),
        "num_processes": meta.get("num_processes"),
        "start_method": meta.get("start_method"),
    }


@dataclass
class RunResult:
    """One run: per-step losses, the trained parameters, each rank's timeline, and a summary."""

    config: RunConfig
    losses: list[float]
    final_state_dict: dict[str, torch.Tensor]
    timeline: pd.DataFrame
    steps: pd.DataFrame
    meta: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = summarize(self.config, self.timeline, self.steps, self.losses, self.meta)

    def step_stats(self) -> pd.DataFrame:
        return step_stats(self.timeline, self.steps)

    def training_ranks(self) -> list[int]:
        """The ranks that compute forward/backward (not, e.g., parameter servers), as the strategy says."""
        return spec_for(self.config).training_ranks(self.config)

    def to_frame(self) -> pd.DataFrame:
        """One tidy row: every config field, then every summary field (what sweep() stacks)."""
        row = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.config.to_dict().items()}
        row.update(self.summary)
        return pd.DataFrame([row])

    def losses_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"step": range(len(self.losses)), "loss": self.losses})

    def chrome_trace(self) -> dict:
        """Chrome-trace JSON (open in Perfetto): one process per rank, one track per span kind."""
        events: list[dict] = []
        tracks = {"compute": 0, "comm": 1, "idle": 2, "bubble": 2}
        roles = self.steps.groupby("rank").role.first().to_dict() if len(self.steps) else {}
        for rank in sorted(self.timeline["rank"].unique()) if len(self.timeline) else []:
            events.append(
                {"ph": "M", "name": "process_name", "pid": int(rank), "args": {"name": f"rank {rank} ({roles.get(rank, '')})"}}
            )
            for kind, tid in (("compute", 0), ("comm", 1), ("idle", 2)):
                events.append(
                    {
                        "ph": "M",
                        "name": "thread_name",
                        "pid": int(rank),
                        "tid": tid,
                        "args": {"name": kind if kind != "idle" else "idle/bubble"},
                    }
                )
        for s in self.timeline.itertuples(index=False):
            events.append(
                {
                    "name": s.name,
                    "cat": s.kind,
                    "ph": "X",
                    "pid": int(s.rank),
                    "tid": tracks[s.kind],
                    "ts": s.start_s * 1e6,
                    "dur": max(s.end_s - s.start_s, 0.0) * 1e6,
                    "args": {"step": int(s.step), "bytes": int(s.bytes)},
                }
            )
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"dpkit": self.meta}}

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "config.json", self.config.to_dict())
        _write_json(folder / "meta.json", self.meta)
        _write_json(folder / "extra.json", self.extra)
        self.losses_frame().to_csv(folder / "losses.csv", index=False)
        self.timeline.to_csv(folder / "timeline.csv", index=False)
        self.steps.to_csv(folder / "steps.csv", index=False)
        arrays = {k: v.detach().cpu().numpy() for k, v in self.final_state_dict.items()}
        np.savez(folder / "state_dict.npz", **arrays)
        _write_json(folder / "trace.json", self.chrome_trace())
        _write_json(folder / "summary.json", self.summary)  # written last: its presence marks a complete save
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RunResult:
        folder = Path(folder)
        with np.load(folder / "state_dict.npz", allow_pickle=False) as npz:
            state = {k: torch.from_numpy(npz[k].copy()) for k in npz.files}
        timeline = pd.read_csv(folder / "timeline.csv")
        if timeline.empty:
            timeline = pd.DataFrame(columns=TIMELINE_COLUMNS)
        return cls(
            config=RunConfig.from_dict(_read_json(folder / "config.json")),
            losses=pd.read_csv(folder / "losses.csv").loss.astype(float).tolist(),
            final_state_dict=state,
            timeline=timeline,
            steps=pd.read_csv(folder / "steps.csv"),
            meta=_read_json(folder / "meta.json"),
            extra=_read_json(folder / "extra.json"),
            summary=_read_json(folder / "summary.json"),
        )

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"RunResult({self.config.parallelism}, world_size={self.config.world_size}, "
            f"step={s['step_time_s'] * 1e3:.1f} ms, comm={s['comm_s'] * 1e3:.1f} ms, "
            f"final_loss={s['final_loss']:.4f}, backend={s['backend']}, device={s['device']})"
        )


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())
