"""The registry: one spec per strategy, in the order they are taught. Adding a strategy = its spec module + one line here.

It imports specs only (dpkit/strategies/specs/), never an algorithm: a spec imports its algorithm when a rank
builds it. RunConfig's strategy fields are the knobs of the specs listed here (dpkit/config.py); a strategy
kept outside the package (a notebook's, a test's) joins with `dpkit.config.register_strategy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import Knob, StrategySpec
from .specs import data_parallel, hybrid, local_sgd, parameter_server, pipeline, single, tensor_parallel, zero

if TYPE_CHECKING:
    from ..config import RunConfig

#: every strategy dpkit runs (a list, changed in place by add/remove, so every importer sees the same one)
SPECS: list[StrategySpec] = [
    single.SPEC,
    zero.SPEC,
    data_parallel.SPEC,
    parameter_server.SPEC,
    local_sgd.SPEC,
    pipeline.SPEC,
    tensor_parallel.SPEC,
    hybrid.SPEC,
]
#: the values of RunConfig.parallelism, one per spec's parallelism (kept in step with SPECS)
PARALLELISMS: list[str] = []


def knobs() -> dict[str, Knob]:
    """Every registered spec's knobs by name, in registry order. Two specs may declare the same Knob (a subclass
    inherits its parent's); two different knobs of one name are an error."""
    found: dict[str, Knob] = {}
    for spec in SPECS:
        for knob in spec.knobs:
            if found.setdefault(knob.name, knob) != knob:
                raise ValueError(f"two strategies declare a different knob {knob.name!r}: {found[knob.name]} and {knob}")
    return found


def add(spec: StrategySpec) -> None:
    """Register `spec` (after the others). Use dpkit.config.register_strategy, which also gives RunConfig its knobs."""
    if any(s.name == spec.name for s in SPECS):
        raise ValueError(f"a strategy named {spec.name!r} is registered already")
    SPECS.append(spec)
    try:
        knobs()
    except ValueError:
        SPECS.remove(spec)
        raise
    _sync_parallelisms()


def remove(spec: StrategySpec) -> None:
    SPECS.remove(spec)
    _sync_parallelisms()


def _sync_parallelisms() -> None:
    PARALLELISMS[:] = list(dict.fromkeys(spec.parallelism for spec in SPECS))


_sync_parallelisms()


def spec_for(cfg: RunConfig) -> StrategySpec:
    """The spec of the strategy `cfg` selects (exactly one does for a config that passed the field checks)."""
    for spec in SPECS:
        if spec.selects(cfg):
            return spec
    raise ValueError(f"no strategy runs parallelism={cfg.parallelism!r} with sync={cfg.sync!r}")
