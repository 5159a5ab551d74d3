"""Predicted against measured: the cost model's step time for a RunConfig, next to a real run's.

Compute is measured, not modelled (dpkit.cost.step_model): a single-process run of the same model at
the batch one rank sees, with the threads one rank gets, gives forward, backward and optimizer seconds.
Each strategy prices its own step from that profile and the link (its spec's `predict`, next to the
strategy's code in dpkit/strategies/); communication comes from dpkit.cost.model: a HostModel (the
single-host view, per world size, as `dpkit bench calibrate` saves it) for runs on this machine, or a
Link (cluster view).
"""

from __future__ import annotations

import statistics

import pandas as pd

from ..api import run
from ..config import RunConfig
from ..cost.model import HostModel, Link
from ..cost.step_model import QUANTITIES, ComputeProfile, oversubscription, slowest_rank_slowdown
from ..runtime.launch import default_threads
from ..strategies.registry import spec_for
from ..strategies.spec import baseline_config

__all__ = [
    "QUANTITIES",
    "ComputeProfile",
    "compare",
    "compare_many",
    "measure_compute",
    "median_profile",
    "oversubscription",
    "predict_step",
    "slowest_rank_slowdown",
]

_PROFILES: dict[str, ComputeProfile] = {}
PROFILE_STEPS = 12  # 2 warm-up + 10 timed


def _single(cfg: RunConfig, batch: int, threads: int, steps: int) -> RunConfig:
    """The one-process config whose compute a rank of `cfg` repeats on `batch` samples."""
    return baseline_config(cfg).replace(
        global_batch=batch, steps=steps, warmup=min(2, steps - 1), threads_per_rank=threads, grad_accum=1
    )


def profile_once(single: RunConfig) -> ComputeProfile:
    """One run of the one-process config: median forward, backward and optimizer seconds of its timed steps."""
    tl = run(single).timeline
    tl = tl[(tl.kind == "compute") & (tl.step >= single.warmup)]
    per_step = tl.assign(d=tl.end_s - tl.start_s).groupby(["step", "name"]).d.sum().unstack(fill_value=0.0).median()
    return ComputeProfile(
        single.global_batch,
        float(per_step.get("forward", 0.0)),
        float(per_step.get("backward", 0.0)),
        float(per_step.get("optimizer", 0.0)),
        int(single.threads_per_rank or 1),
    )


def median_profile(profiles: list[ComputeProfile]) -> ComputeProfile:
    """Component by component, the median of several runs' profiles (same batch and threads)."""
    first = profiles[0]
    return ComputeProfile(
        first.batch,
        statistics.median(p.forward_s for p in profiles),
        statistics.median(p.backward_s for p in profiles),
        statistics.median(p.optimizer_s for p in profiles),
        first.threads,
    )


def measure_compute(cfg: RunConfig, batch: int, threads: int, steps: int = PROFILE_STEPS, runs: int = 1) -> ComputeProfile:
    """Run the full model in one process on `batch` samples per step (`runs` times: the median);
    cached per (model, batch, threads)."""
    single = _single(cfg, batch, threads, steps)
    key = single.run_id()
    if key not in _PROFILES:
        _PROFILES[key] = median_profile([profile_once(single) for _ in range(runs)])
    return _PROFILES[key]


def profile_batch(cfg: RunConfig) -> int:
    """Samples one rank pushes through the full model per forward: what measure_compute should run."""
    return spec_for(cfg).profile_batch(cfg)


def target_threads(cfg: RunConfig) -> int:
    return cfg.threads_per_rank or default_threads(cfg.num_processes)


def predict_step(cfg: RunConfig, link: Link | HostModel, profile: ComputeProfile, cores: int | None = None) -> dict[str, float]:
    """The cost model's step time and its parts for `cfg` (seconds; per rank, as RunResult.summary has them).
    With a HostModel, messages are priced at this run's process count (the machine is shared by all)."""
    return spec_for(cfg).predict(cfg, link, profile, cores)


def measured_quantities(results: list) -> dict[str, float]:
    """Each of QUANTITIES as the median over runs of the same config (each run's value is already a
    median over its timed steps): one run on a shared 2-core machine can be 20% off the next."""
    out = {}
    for q in QUANTITIES:
        values = [float(r.summary[q]) for r in results if r.summary.get(q) is not None]
        out[q] = statistics.median(values) if values else float("nan")
    return out


def compare(cfg: RunConfig, link: Link | HostModel, result=None, profile: ComputeProfile | None = None) -> pd.DataFrame:
    """Predicted and measured side by side for one config: a row per quantity, with the relative error.
    Runs `cfg` (and the single-process compute profile) unless given; `result` may be a list of runs."""
    if result is None:
        result = run(cfg)
    measured = measured_quantities(result if isinstance(result, list) else [result])
    profile = profile or measure_compute(cfg, profile_batch(cfg), target_threads(cfg))
    pred = predict_step(cfg, link, profile)
    rows = []
    for q in QUANTITIES:
        err = (pred[q] - measured[q]) / measured[q] if measured[q] else float("nan")
        rows.append({"quantity": q, "predicted": pred[q], "measured": measured[q], "rel_error": err})
    return pd.DataFrame(rows)


def strategy_name(cfg: RunConfig) -> str:
    return spec_for(cfg).label(cfg)


def compare_many(configs: list[RunConfig], link: Link | HostModel, repeats: int = 1) -> pd.DataFrame:
    """One row per config: world size, strategy, and predicted/measured step and comm time (for the plot).
    Each config runs `repeats` times, the configs taking turns (so drift in the machine's load hits all
    alike); measured values are medians over those runs."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is not allowed: at least 1 run per config")
    single_of = [_single(cfg, profile_batch(cfg), target_threads(cfg), PROFILE_STEPS) for cfg in configs]
    specs = {single.run_id(): single for single in single_of}  # each distinct profile once per round
    results: list[list] = [[] for _ in configs]
    profiles: dict[str, list[ComputeProfile]] = {key: [] for key in specs}
    for _ in range(repeats):  # the compute profiles take their turns with the runs, so drift hits both
        for mine, cfg in zip(results, configs, strict=True):
            mine.append(run(cfg))
        for key, single in specs.items():
            profiles[key].append(profile_once(single))
    rows = []
    for cfg, single, mine in zip(configs, single_of, results, strict=True):
        profile = median_profile(profiles[single.run_id()])
        c = compare(cfg, link, result=mine, profile=profile).set_index("quantity")
        row = {"strategy": strategy_name(cfg), "world_size": cfg.world_size, "run_id": cfg.run_id(), "runs": len(mine)}
        for q in ("step_time_s", "comm_s", "bubble_s"):
            row[f"predicted_{q}"], row[f"measured_{q}"] = c.loc[q, "predicted"], c.loc[q, "measured"]
        row["rel_error"] = c.loc["step_time_s", "rel_error"]
        rows.append(row)
    return pd.DataFrame(rows)
