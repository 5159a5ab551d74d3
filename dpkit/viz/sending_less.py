"""Sending less, drawn: bytes per step and step time of each technique beside plain all-reduce (notebook 08),
and the panel to pick a technique, its knob and the emulated link. The measuring is dpkit.analysis.sending_less."""

from __future__ import annotations

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ..analysis.sending_less import KNOB_OF, TECHNIQUES, label, row, technique_config
from ..config import RunConfig

LINKS = ("1GbE", "10GbE", "100GbE", "none")


def bytes_and_time(frame: pd.DataFrame, title: str = "") -> Figure:
    """Left: counted bytes per step per rank (log scale). Right: step time, mean over the timed steps with the
    quartiles as bars; a run whose emulated link was not honoured for some messages is marked so."""
    fig = Figure(figsize=(11, 0.5 * len(frame) + 1.8), layout="constrained")
    ax_b, ax_t = fig.subplots(1, 2, sharey=True)
    names = [f"{lab} ({link})" for lab, link in zip(frame["label"], frame["link"], strict=True)]
    ax_b.barh(names, frame.bytes_per_step, color="C0")
    ax_b.set(xscale="log", xlabel="bytes sent per step per rank (counted)")
    err = [frame.step_time_ms - frame.step_time_q25_ms, frame.step_time_q75_ms - frame.step_time_ms]
    colors = ["C3" if late else "C1" for late in frame.link_not_honoured]
    ax_t.barh(names, frame.step_time_ms, xerr=err, color=colors)
    ax_t.set(xlabel="step time, ms (mean; bars: quartiles of the timed steps)")
    if frame.link_not_honoured.any():
        ax_t.text(0.99, 0.01, "red: link not honoured for some messages", transform=ax_t.transAxes, ha="right", fontsize=8)
    for ax in (ax_b, ax_t):
        ax.grid(alpha=0.3, axis="x")
    ax_b.invert_yaxis()
    fig.suptitle(title or "measured on this machine; links emulated", fontsize=9)
    return fig


def sending_less_compare(
    base: RunConfig, technique: str, knob: float, link: str, cache: Any, progress: Any = None
) -> tuple[Figure, pd.DataFrame]:
    """The panel's pure function: plain all-reduce and `technique` (knob <= 0: its default) on `link`."""
    value = knob if technique in KNOB_OF and knob > 0 else None
    chosen = technique_config(base, technique, value, link)
    plain = technique_config(base, "all-reduce", None, link)
    results = cache.run_all([plain, chosen], progress)
    frame = pd.DataFrame(
        [
            {"label": "all-reduce", **row("all-reduce", results[0])},
            {"label": label(technique, value), **row(technique, results[1])},
        ]
    )
    return bytes_and_time(frame, f"measured on this machine; emulated {link}"), frame


def sending_less_panel(base: RunConfig, cache: Any = None) -> Any:
    """A panel: technique, its knob (PowerSGD's rank, top-k's ratio, local SGD's H; 0: the default) and the
    link; Run measures it beside plain all-reduce on the same link."""
    import ipywidgets as W

    from . import widgets

    cache = cache or widgets.CACHE
    controls = {
        "technique": widgets._dropdown(list(TECHNIQUES), "PowerSGD", "technique"),
        "knob": W.FloatText(value=0.0, description="knob: rank, ratio or H (0: default)"),
        "link": widgets._dropdown(list(LINKS), "1GbE", "emulated link"),
    }

    def compute(technique: str, knob: float, link: str, progress: Any = None) -> tuple:
        return sending_less_compare(base, technique, knob, link, cache, progress)

    columns = ["label", "link", "bytes_per_step", "step_time_ms", "step_time_q25_ms", "step_time_q75_ms", "link_not_honoured"]
    return widgets.Panel("Sending less: bytes and step time", controls, compute, columns)
