"""Notebook 09's tables, figure and panel: how often to checkpoint (Young/Daly against a sweep under injected
failures), and what each parameter-server recovery costs and survives.

The sweep is a simulation (dpkit.cost.checkpoint.simulate_waste) driven by a measured checkpoint cost and step
time and an assumed MTBF; the figure says so. No run is started, so the panel answers at once. The recovery
tables read real runs: the prices off uninterrupted runs, the outcomes off runs whose server was killed.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ..config import RunConfig
from ..cost.checkpoint import daly_interval, simulate_waste, waste_fraction, young_interval
from ..results import RunResult
from ..strategies.parameter_server.server import FORWARD

FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # intervals swept, as multiples of Young's


def checkpoint_costs(result: RunResult) -> pd.DataFrame:
    """Measured: a checkpoint save (median and range over ranks and saves) beside the run's median step time."""
    tl = result.timeline
    saves = tl[(tl.kind == "checkpoint") & (tl.name == "save checkpoint")]
    if saves.empty:
        raise ValueError("the run wrote no checkpoint: give it RunConfig.checkpoint_every below its steps")
    seconds = saves.end_s - saves.start_s
    step = float(result.summary["step_time_s"])
    return pd.DataFrame(
        {
            "median_s": [float(seconds.median()), step],
            "min_s": [float(seconds.min()), None],
            "max_s": [float(seconds.max()), None],
        },
        index=["checkpoint save (measured)", "training step (measured)"],
    )


def same_run(a: RunResult, b: RunResult) -> bool:
    """The same losses and the same final parameters, bit for bit."""
    return a.losses == b.losses and all(a.final_state_dict[k].equal(v) for k, v in b.final_state_dict.items())


def recovery_prices(runs: dict[str, RunResult]) -> pd.DataFrame:
    """Measured on uninterrupted runs, one per ps_recovery mode: what each costs while nothing fails.

    Per mode: the processes; the step time (median over the timed steps of the slowest rank, with the quartiles);
    the part of it the servers spent forwarding updates to their backups (comm spans named FORWARD, inside the
    step); checkpoint saves, which lie outside the steps, in seconds per step (each save's slowest rank, summed,
    over the steps); and bytes per step sent to backups or written to disk (every rank's checkpoint files)."""
    rows = []
    for mode, result in runs.items():
        cfg = result.config
        stats = result.step_stats()
        per_step = stats[stats.step >= cfg.warmup].groupby("step").step_time_s.max()
        tl = result.timeline
        timed = tl[tl.step >= cfg.warmup]
        forward = timed[timed.name == FORWARD]
        saves = tl[(tl.kind == "checkpoint") & (tl.name == "save checkpoint")]
        save_s = float((saves.end_s - saves.start_s).groupby(saves.step).max().sum())
        written = sum(c["bytes"] for per_rank in result.extra.get("checkpoints", {}).values() for c in per_rank)
        rows.append(
            {
                "ps_recovery": mode,
                "processes": cfg.num_processes,
                "step_ms": 1e3 * float(per_step.median()),
                "step_ms_q1": 1e3 * float(per_step.quantile(0.25)),
                "step_ms_q3": 1e3 * float(per_step.quantile(0.75)),
                "forwarding_ms_per_step": 1e3 * float((forward.end_s - forward.start_s).sum()) / max(1, len(per_step)),
                "checkpoint_ms_per_step": 1e3 * save_s / cfg.steps,
                "bytes_to_backup_per_step": float(result.meta.get("ps_replication", {}).get("bytes_per_step", 0.0)),
                "bytes_to_disk_per_step": written / cfg.steps,
            }
        )
    return pd.DataFrame(rows).set_index("ps_recovery")


def recovery_price_figure(prices: pd.DataFrame) -> Figure:
    """Two panels from recovery_prices(): bytes per step (to the backups, to disk) and time per step (the step,
    median with its quartiles, plus the checkpoint saves outside it), all measured."""
    fig = Figure(figsize=(8.4, 3.2))
    left, right = fig.subplots(1, 2)
    modes = list(prices.index)
    x = range(len(modes))
    left.bar(x, prices.bytes_to_backup_per_step / 1e3, label="sent to the backups")
    left.bar(x, prices.bytes_to_disk_per_step / 1e3, bottom=prices.bytes_to_backup_per_step / 1e3, label="written to disk")
    left.set(xticks=list(x), xticklabels=modes, ylabel="kB per step", title="bytes per step (counted)")
    left.set_ylim(0, 1.4 * max(1e-3, float((prices.bytes_to_backup_per_step + prices.bytes_to_disk_per_step).max()) / 1e3))
    left.legend(fontsize=8, loc="upper left")
    err = [prices.step_ms - prices.step_ms_q1, prices.step_ms_q3 - prices.step_ms]
    right.bar(x, prices.step_ms, yerr=err, capsize=4, label="training step (median, quartiles)")
    right.bar(x, prices.checkpoint_ms_per_step, bottom=prices.step_ms, label="checkpoint saves, per step")
    right.set(xticks=list(x), xticklabels=modes, ylabel="ms per step", title="time per step (measured)")
    right.set_ylim(0, 1.6 * float((prices.step_ms_q3 + prices.checkpoint_ms_per_step).max()))
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle("what each ps_recovery costs while nothing fails", fontsize=10)
    fig.tight_layout()
    return fig


def server_failure_outcomes(outcomes: dict[str, RunResult | BaseException], whole: RunResult) -> pd.DataFrame:
    """One row per ps_recovery mode of a run whose server was killed: whether it finished, the step it went on
    from, the updates lost and the steps done again (meta['ps_recovery']), the seconds from the state it kept to
    the failure being seen, and whether it ended as the uninterrupted run `whole` did."""
    rows = []
    for mode, got in outcomes.items():
        if isinstance(got, BaseException):
            rows.append({"ps_recovery": mode, "finished": False, "went_on_after_step": None, "updates_lost": None})
            continue
        kept = got.meta["ps_recovery"]
        rows.append(
            {
                "ps_recovery": mode,
                "finished": True,
                "went_on_after_step": kept.get("resumed_step", kept.get("checkpoint_step")),
                "updates_lost": kept["lost_updates"],
                "steps_done_again": kept["redone_steps"],
                "seconds_lost": kept["lost_s"],
                "same_end_as_uninterrupted": same_run(got, whole),
            }
        )
    return pd.DataFrame(rows).set_index("ps_recovery")


def interval_sweep(
    checkpoint_s: float, step_s: float, mtbf_steps: float, work_steps: int = 2000, trials: int = 300, seed: int = 1
) -> tuple[Figure, pd.DataFrame]:
    """(figure, frame): the lost share of the time at intervals around Young's, simulated with failures injected
    at exponential times of mean mtbf_steps x step_s, beside the first-order formula C/τ + τ/(2·MTBF)."""
    mtbf, work = mtbf_steps * step_s, work_steps * step_s
    tau = young_interval(checkpoint_s, mtbf)
    frame = pd.DataFrame(
        {
            "interval_s": [f * tau for f in FACTORS],
            "interval_steps": [f * tau / step_s for f in FACTORS],
            "simulated_waste": [simulate_waste(f * tau, checkpoint_s, mtbf, work, trials=trials, seed=seed) for f in FACTORS],
            "formula_waste": [waste_fraction(f * tau, checkpoint_s, mtbf) for f in FACTORS],
        },
        index=pd.Index(FACTORS, name="x Young"),
    )
    frame.attrs.update(young_s=tau, daly_s=daly_interval(checkpoint_s, mtbf), mtbf_s=mtbf)
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.subplots()
    ax.plot(frame.interval_steps, frame.simulated_waste, "o-", label=f"simulated: {trials} jobs, injected failures")
    ax.plot(frame.interval_steps, frame.formula_waste, "s--", label="first-order formula C/τ + τ/(2·MTBF)")
    ax.axvline(tau / step_s, ls=":", c="k", label=f"Young √(2·C·MTBF): {tau / step_s:.1f} steps")
    ax.set(
        xscale="log",
        xlabel="checkpoint interval (steps)",
        ylabel="time lost (share of the work)",
        title=f"C = {checkpoint_s * 1e3:.0f} ms (measured), MTBF = {mtbf_steps:g} steps (assumed)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig, frame


def interval_panel(base: RunConfig, cache: Any = None) -> Any:
    """A panel: the assumed MTBF (in steps) and the checkpoint cost (x the one measured on `base`, which must
    checkpoint); Run measures once (cached), then redraws the sweep."""
    from . import widgets

    cache = cache or widgets.CACHE

    controls = {
        "mtbf_steps": widgets._dropdown([50, 200, 1000, 5000], 200, "MTBF (steps, assumed)"),
        "cost_factor": widgets._dropdown([0.1, 1.0, 10.0], 1.0, "checkpoint cost (x measured)"),
    }

    def compute(mtbf_steps: int, cost_factor: float, progress: Any = None) -> tuple[Figure, pd.DataFrame]:
        (result,) = cache.run_all([base], progress)
        costs = checkpoint_costs(result).median_s
        return interval_sweep(costs.iloc[0] * cost_factor, costs.iloc[1], mtbf_steps)

    return widgets.Panel("How often to checkpoint", controls, compute)
