"""Sending less, measured: each technique's bytes per step, step time on a link, and time to a target accuracy,
beside plain all-reduce (notebook 08, `dpkit bench compression`).

A technique is a few RunConfig fields on top of a data-parallel base (TECHNIQUES) and at most one knob of its
own (KNOB_OF: PowerSGD's rank, top-k's ratio, local SGD's H). Bytes per step are counted, not predicted: the
mean over the training ranks and the timed steps of what each rank sent (RunResult.bytes_by_rank), so local
SGD's averaging every H steps shows as 1/H. Step times are the mean over the timed steps (a median would hide
local SGD's one averaging step in H), with the quartiles beside it as the spread; a step time on an emulated link is only as good as the link's pacing,
which the run reports (`link_not_honoured`: messages the machine could not deliver in the link's time).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ..api import run
from ..config import RunConfig
from ..results import RunResult

#: technique -> the RunConfig fields that select it (on a data-parallel base with sync='allreduce')
TECHNIQUES: dict[str, dict[str, Any]] = {
    "all-reduce": {},
    "fp16": {"compression": "fp16"},
    "bf16": {"compression": "bf16"},
    "PowerSGD": {"compression": "powersgd"},
    "top-k": {"compression": "topk"},
    "local SGD": {"sync": "local-sgd", "local_steps": 4},
}
#: technique -> its own knob (the RunConfig field a panel or a sweep changes)
KNOB_OF: dict[str, str] = {"PowerSGD": "powersgd_rank", "top-k": "topk_ratio", "local SGD": "local_steps"}


def technique_config(base: RunConfig, technique: str, knob: float | None = None, link: str | None = None) -> RunConfig:
    """`base` with `technique` (a TECHNIQUES key), its knob set to `knob` (None: the knob's default) and, if
    given, the emulated `link` ('none', '1GbE', '100GbE', ...)."""
    if technique not in TECHNIQUES:
        raise ValueError(f"technique={technique!r} is not allowed: choose one of {', '.join(TECHNIQUES)}")
    fields: dict[str, Any] = {"sync": "allreduce", "compression": "none", **TECHNIQUES[technique]}
    if knob is not None:
        if technique not in KNOB_OF:
            raise ValueError(f"knob={knob!r} is not allowed for {technique!r}: it has no knob (None)")
        name = KNOB_OF[technique]
        fields[name] = int(knob) if name in ("powersgd_rank", "local_steps") else float(knob)
    if link:  # a preset name, or None to keep the base config's
        fields["link"] = link
    return base.replace(**fields)


def knob_value(cfg: RunConfig, technique: str) -> float | None:
    return getattr(cfg, KNOB_OF[technique]) if technique in KNOB_OF else None


def bytes_per_step(result: RunResult) -> float:
    """Bytes one training rank sends per step: the mean over training ranks and timed steps (counted)."""
    by_rank = result.bytes_by_rank()
    return float(by_rank[by_rank.role_kind == "worker"].bytes_sent_per_step.mean())


def step_time_spread(result: RunResult) -> tuple[float, float, float]:
    """(mean, 25th, 75th percentile) of the timed steps' times (each step: its slowest rank)."""
    stats = result.step_stats()
    per_step = stats[stats.step >= result.config.warmup].groupby("step").step_time_s.max()
    return float(per_step.mean()), float(per_step.quantile(0.25)), float(per_step.quantile(0.75))


def syncs_per_step(result: RunResult, micro_steps: int | None = None) -> float:
    """Gradient-averaging collectives one rank ran per timed step (rank 0), to show grad_accum's single sync."""
    tl = result.timeline
    timed = tl[(tl["rank"] == 0) & (tl.step >= result.config.warmup) & (tl.kind == "comm")]
    return len(timed) / max(1, timed.step.nunique())


def row(technique: str, result: RunResult) -> dict[str, Any]:
    """One result as a table row: technique, knob, link, counted bytes, step time and its spread, the load."""
    cfg = result.config
    mean, q25, q75 = step_time_spread(result)
    return {
        "technique": technique,
        "knob": KNOB_OF.get(technique, ""),
        "knob_value": knob_value(cfg, technique),
        "link": cfg.link,
        "link_not_honoured": int((result.meta.get("link_not_honoured") or {}).get("messages", 0)),
        "bytes_per_step": bytes_per_step(result),
        "step_time_ms": mean * 1e3,
        "step_time_q25_ms": q25 * 1e3,
        "step_time_q75_ms": q75 * 1e3,
        "final_loss": result.summary["final_loss"],
        "best_accuracy": result.summary.get("best_accuracy"),
        "steps_to_target": result.summary.get("steps_to_target"),
        "time_to_target_s": result.summary.get("time_to_target_s"),
        "target_reason": result.summary.get("target_reason"),
        "world_size": cfg.world_size,
        "threads_per_rank": cfg.threads_per_rank,
        "load_1min": os.getloadavg()[0],
    }


def label(technique: str, knob: float | None) -> str:
    """'PowerSGD rank 4', 'top-k ratio 0.1', 'local SGD H=16', or the technique's name with its knob as set."""
    if knob is None:
        return technique
    return {"PowerSGD": f"PowerSGD rank {knob:g}", "top-k": f"top-k ratio {knob:g}", "local SGD": f"local SGD H={knob:g}"}[
        technique
    ]


def compare(
    base: RunConfig,
    variants: Iterable[str | tuple[str, float | None]] = tuple(TECHNIQUES),
    links: Iterable[str | None] = ("1GbE",),
    seeds: Iterable[int] = (0,),
) -> pd.DataFrame:
    """Run each variant (a technique, or (technique, knob)) on each link (None: base's) for each seed; one row
    per run (`row`), with `label` naming the variant."""
    pairs = [(v, None) if isinstance(v, str) else v for v in variants]
    rows = []
    for seed in seeds:  # seeds take turns, so a drift in load hits every technique alike
        for link in links:
            for technique, knob in pairs:
                r = run(technique_config(base, technique, knob, link).replace(seed=seed))
                rows.append({"label": label(technique, knob), **row(technique, r), "seed": seed})
    return pd.DataFrame(rows)


def against_all_reduce(frame: pd.DataFrame) -> pd.DataFrame:
    """Per variant (label) and link: the median bytes per step and step time over seeds, each also as a ratio to
    plain all-reduce's on the same link (bytes: how many times fewer; time: the step's share)."""
    agg = frame.groupby(["link", "label"], sort=False).agg(
        technique=("technique", "first"),
        bytes_per_step=("bytes_per_step", "median"),
        step_time_ms=("step_time_ms", "median"),
        step_time_min_ms=("step_time_ms", "min"),
        step_time_max_ms=("step_time_ms", "max"),
        runs=("step_time_ms", "size"),
        link_not_honoured=("link_not_honoured", "sum"),
    )
    agg = agg.reset_index()
    plain = agg[agg.label == "all-reduce"].set_index("link")
    agg["times_fewer_bytes"] = [
        plain.bytes_per_step[link] / b if b else float("inf") for link, b in zip(agg.link, agg.bytes_per_step, strict=True)
    ]
    agg["step_vs_all_reduce"] = [t / plain.step_time_ms[link] for link, t in zip(agg.link, agg.step_time_ms, strict=True)]
    return agg


def time_to_target(frame: pd.DataFrame) -> pd.DataFrame:
    """Per variant (label): steps and seconds to the target over seeds (median, min, max), how many runs
    reached it, and the best held-out accuracy's lowest value."""
    g = frame.groupby("label", sort=False)
    return pd.DataFrame(
        {
            "runs": g.size(),
            "reached": g.steps_to_target.count(),
            "steps_median": g.steps_to_target.median(),
            "steps_min": g.steps_to_target.min(),
            "steps_max": g.steps_to_target.max(),
            "time_s_median": g.time_to_target_s.median(),
            "time_s_min": g.time_to_target_s.min(),
            "time_s_max": g.time_to_target_s.max(),
            "worst_best_accuracy": g.best_accuracy.min(),
        }
    ).reset_index()
