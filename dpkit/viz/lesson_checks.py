"""Checks that a figure says what its numbers say: stacked "where a step's time goes" bars add up.

A stacked bar of a step's parts (compute, exposed comm, idle, bubble, injected delay) drawn beside a
step-time marker must reach that marker: the parts partition a rank's step (docs/formulas.md, "Where a
step goes"). If the bars are means over ranks and the marker is the slowest rank, they do not, and a
learner reads a gap that is not there. These checks read the drawn Figure itself (its bar containers and
its marker), so they test what is shown, whichever function drew it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

STEP_MARKER_WORDS = "step time"  # a step-time marker's legend label contains these words


@dataclass(frozen=True)
class BarGap:
    """One stacked bar that does not reach the step-time marker drawn beside it."""

    axes_title: str
    bar: str  # the bar's tick label
    bars_ms: float  # the stacked parts, added up
    marker_ms: float  # the step-time marker at the same x

    def __str__(self) -> str:
        return (
            f"{self.axes_title or 'figure'}: bar {self.bar!r} adds up to {self.bars_ms:.3f} ms "
            f"but its step-time marker is at {self.marker_ms:.3f} ms ({self.bars_ms - self.marker_ms:+.3f} ms)"
        )


def stacked_totals(ax: Axes) -> dict[float, float]:
    """x centre -> top of the stack, over every bar container on `ax` (stacked with bottom=)."""
    tops: dict[float, float] = {}
    for container in ax.containers:
        if not isinstance(container, BarContainer):
            continue
        for patch in container.patches:
            x = round(patch.get_x() + patch.get_width() / 2, 6)
            tops[x] = max(tops.get(x, 0.0), patch.get_y() + patch.get_height())
    return tops


def step_markers(ax: Axes) -> list[tuple[float, float]]:
    """(x, y) of every point of the scatter(s) on `ax` whose label names the step time."""
    points: list[tuple[float, float]] = []
    for artist in ax.collections:
        if isinstance(artist, PathCollection) and STEP_MARKER_WORDS in str(artist.get_label()):
            points += [(float(x), float(y)) for x, y in np.asarray(artist.get_offsets())]
    return points


def _tick_label(ax: Axes, x: float) -> str:
    for tick, text in zip(ax.get_xticks(), ax.get_xticklabels(), strict=False):
        if abs(tick - x) < 1e-6:
            return text.get_text()
    return f"x={x:g}"


def bar_gaps(fig: Figure, rtol: float = 0.01, atol: float = 1e-3) -> list[BarGap]:
    """Every stacked bar of `fig` whose top misses the step-time marker at its x by more than
    rtol x marker + atol (in the axes' units). An axes with a step-time marker but no bar at its x is a
    gap too (the marker stands beside nothing); axes with no step-time marker are not checked."""
    gaps = []
    for ax in fig.axes:
        markers = step_markers(ax)
        if not markers:
            continue
        tops = stacked_totals(ax)
        for x, y in markers:
            top = tops.get(round(x, 6), 0.0)
            if abs(top - y) > rtol * abs(y) + atol:
                gaps.append(BarGap(ax.get_title(), _tick_label(ax, x), top, y))
    return gaps


def has_stacked_step_bars(fig: Figure) -> bool:
    """Whether `fig` draws at least one step-time marker beside bars (what bar_gaps checks)."""
    return any(step_markers(ax) and stacked_totals(ax) for ax in fig.axes)


def assert_bars_add_up(fig: Figure, rtol: float = 0.01, atol: float = 1e-3) -> None:
    """AssertionError naming every bar that does not add up to its step-time marker; also when the
    figure has no step-time marker beside bars at all (nothing would have been checked)."""
    if not has_stacked_step_bars(fig):
        raise AssertionError("the figure has no stacked bars beside a step-time marker: nothing to check")
    gaps = bar_gaps(fig, rtol, atol)
    if gaps:
        raise AssertionError("stacked bars do not add up to the step time:\n" + "\n".join(map(str, gaps)))
