"""Notebook 09's figure and panel: how often to checkpoint, Young/Daly against a sweep under injected failures.

The sweep is a simulation (dpkit.cost.checkpoint.simulate_waste) driven by a measured checkpoint cost and step
time and an assumed MTBF; the figure says so. No run is started, so the panel answers at once.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ..config import RunConfig
from ..cost.checkpoint import daly_interval, simulate_waste, waste_fraction, young_interval
from ..results import RunResult

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
