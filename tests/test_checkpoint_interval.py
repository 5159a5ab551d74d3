"""The Young/Daly checkpoint interval (dpkit.cost.checkpoint): the formula, its optimum, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpkit.cost.checkpoint import daly_interval, waste_fraction, young_interval


def test_young_is_the_square_root_of_two_c_m() -> None:
    assert young_interval(60.0, 24 * 3600.0) == pytest.approx(math.sqrt(2 * 60 * 86400))  # 3220 s: ~54 min
    assert young_interval(2.0, 100.0) == pytest.approx(20.0)


def test_young_minimises_the_first_order_waste() -> None:
    c, m = 30.0, 6 * 3600.0
    grid = np.linspace(10.0, 5000.0, 4991)  # 1 s apart
    best = grid[np.argmin([waste_fraction(float(t), c, m) for t in grid])]
    assert abs(best - young_interval(c, m)) <= 1.0  # 1610 s
    assert waste_fraction(young_interval(c, m), c, m) == pytest.approx(math.sqrt(2 * c / m))  # = √(2C/M) there


def test_daly_corrects_young_when_checkpoints_are_not_cheap() -> None:
    assert daly_interval(1.0, 1e6) == pytest.approx(young_interval(1.0, 1e6), rel=1e-3)  # C << M: the same
    c, m = 600.0, 3600.0  # a 10-minute checkpoint, a failure an hour
    r = c / (2 * m)
    assert daly_interval(c, m) == pytest.approx(math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c)
    assert daly_interval(c, m) < young_interval(c, m)  # the checkpoint's own time is not work
    assert daly_interval(7200.0, 3600.0) == 3600.0  # C >= 2M: checkpoint once per MTBF


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_times_are_refused_by_name(bad: float) -> None:
    with pytest.raises(ValueError, match="checkpoint_s"):
        young_interval(bad, 100.0)
    with pytest.raises(ValueError, match="mtbf_s"):
        daly_interval(1.0, bad)
    with pytest.raises(ValueError, match="interval_s"):
        waste_fraction(bad, 1.0, 100.0)
