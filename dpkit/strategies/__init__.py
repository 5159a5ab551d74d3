"""The strategies: one algorithm module each (data_parallel, pipeline, ...), and their specs (specs/, listed by
registry.py), which the rest of dpkit asks instead of importing an algorithm.

make_strategy builds, on a rank, the strategy a RunConfig selects: only then is its algorithm imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .registry import SPECS, spec_for

if TYPE_CHECKING:
    from .base import RankContext, Strategy

__all__ = ["SPECS", "make_strategy", "spec_for"]


def make_strategy(ctx: RankContext) -> Strategy:
    return spec_for(ctx.cfg).build(ctx)
