"""Where mixed precision and activation checkpointing apply: checked with the config, before any process starts.

What they do and why they apply where they do: dpkit/strategies/precision.py (the forward's autocast) and
dpkit/workloads.py (checkpoint_blocks). These rules sit with the specs, below config, and import no algorithm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec import config_error

if TYPE_CHECKING:
    from ...config import RunConfig

PRECISIONS = ("fp32", "bf16")


def precision_applies(cfg: RunConfig) -> bool:
    """Whether this run's ranks run the whole model's forward through Strategy.forward_backward."""
    return cfg.parallelism in ("none", "data")


def checkpointing_applies(cfg: RunConfig) -> bool:
    """Whether each hidden block of this run is run by its own, unsharded module."""
    if cfg.parallelism == "pipeline" or cfg.parallelism == "none":
        return True
    return cfg.parallelism == "data" and cfg.zero_stage in (0, 1, 2) and cfg.grad_sync != "fsdp"


def validate(cfg: RunConfig) -> None:
    """ValueError naming the field, before any process starts, where precision or checkpointing does not apply."""
    if cfg.precision not in PRECISIONS:
        raise config_error("precision", cfg.precision, "choose one of " + ", ".join(map(repr, PRECISIONS)))
    if cfg.precision != "fp32" and not precision_applies(cfg):
        raise config_error(
            "precision", cfg.precision, "'fp32' unless parallelism is 'none' or 'data' (pipelines and tensor parallelism)"
        )
    if cfg.checkpoint_activations and not checkpointing_applies(cfg):
        raise config_error(
            "checkpoint_activations",
            cfg.checkpoint_activations,
            "False unless parallelism is 'none', 'pipeline' or 'data' without zero_stage=3 or grad_sync='fsdp'",
        )
