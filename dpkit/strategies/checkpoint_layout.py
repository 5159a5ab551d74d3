"""How a strategy's checkpoint moves to another number of ranks (dpkit.runtime.checkpoint reshards by this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import RunConfig


def reshard_kind(cfg: RunConfig) -> str | None:
    """How a checkpoint of this strategy moves to another world size: 'replicated', 'flat', or None (it cannot)."""
    if cfg.parallelism != "data" or cfg.num_processes != cfg.world_size or cfg.world_size == 1:
        return None
    if getattr(cfg, "sync", "") != "allreduce" or getattr(cfg, "grad_sync", "") == "fsdp":
        return None
    return "flat" if getattr(cfg, "zero_stage", 0) else "replicated"
