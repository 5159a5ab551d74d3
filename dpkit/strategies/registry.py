"""The registry: one spec per strategy, in the order they are taught. Adding a strategy = its module + one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import data_parallel, hybrid, parameter_server, pipeline, sharded_data_parallel, single, tensor_parallel
from .spec import StrategySpec

if TYPE_CHECKING:
    from ..config import RunConfig

SPECS: tuple[StrategySpec, ...] = (
    single.SPEC,
    sharded_data_parallel.SPEC,
    data_parallel.SPEC,
    parameter_server.SPEC,
    pipeline.SPEC,
    tensor_parallel.SPEC,
    hybrid.SPEC,
)
PARALLELISMS: tuple[str, ...] = tuple(dict.fromkeys(spec.parallelism for spec in SPECS))


def spec_for(cfg: RunConfig) -> StrategySpec:
    """The spec of the strategy `cfg` selects (exactly one does for a config that passed the field checks)."""
    for spec in SPECS:
        if spec.selects(cfg):
            return spec
    raise ValueError(f"no strategy runs parallelism={cfg.parallelism!r} with sync={cfg.sync!r}")
