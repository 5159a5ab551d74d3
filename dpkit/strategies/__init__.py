"""One module per strategy, each with its spec (dpkit.strategies.spec) next to its code; the registry lists them.

make_strategy builds, on a rank, the strategy a RunConfig selects.
"""

from __future__ import annotations

from .base import RankContext, Strategy
from .registry import SPECS, spec_for

__all__ = ["SPECS", "RankContext", "Strategy", "make_strategy", "spec_for"]


def make_strategy(ctx: RankContext) -> Strategy:
    return spec_for(ctx.cfg).build(ctx)
