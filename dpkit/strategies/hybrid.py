"""Data x pipeline: `data_parallel_size` replicas of a pipeline, on a 2-D grid of ranks.

    rank = replica * stages + stage        e.g. 4 ranks, 2 x 2:   replica 0: ranks 0 -> 1
                                                                  replica 1: ranks 2 -> 3
Each replica trains on its slice of the global batch, cut into micro-batches and pushed through its
pipeline; then every stage averages its gradients with the same stage of the other replicas (a
process subgroup per stage, ranks {stage, stage + stages, ...}). With grad_sync='bucketed' that
all-reduce starts during the last micro-batch's backward, as in data parallelism.
"""

from __future__ import annotations

import torch

from ..workloads import shard
from .base import RankContext, trainable
from .grad_sync import make_grad_sync
from .pipeline import PipelineStage


def grid_position(rank: int, world_size: int, data_parallel_size: int) -> tuple[int, int]:
    """(replica, stage) of a global rank."""
    return divmod(rank, world_size // data_parallel_size)


class HybridStage(PipelineStage):
    """A pipeline stage of one replica whose gradients are averaged with the same stage of the other replicas."""

    other_compute = "gradient copies"  # the sync's copies into and out of its buffers (else they would show as bubble)

    def __init__(self, ctx: RankContext) -> None:
        cfg = ctx.cfg
        dp, stages = cfg.data_parallel_size, cfg.world_size // cfg.data_parallel_size
        self.replica, stage = grid_position(ctx.rank, cfg.world_size, dp)
        # every rank creates every group, in the same order (a rule of process groups)
        groups = [ctx.comm.new_group(list(range(s, cfg.world_size, stages))) for s in range(stages)]
        super().__init__(ctx, stage=stage, stages=stages, first_rank=self.replica * stages)
        self.dp, self.dp_group = dp, groups[stage]
        params = trainable(self.model)
        self.sync = None
        if params:
            self.sync = make_grad_sync(cfg.grad_sync, params, ctx.comm, self.dp_group, cfg.bucket_mb)

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return shard(x, self.replica, self.dp), shard(y, self.replica, self.dp)

    def before_backward(self, last: bool) -> None:
        if self.sync is not None:  # accumulate locally until the last micro-batch, then sync (as DDP's no_sync)
            self.sync.enabled = last

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        if self.sync is not None:
            self.sync.begin()
        return super().train_step(step, x, y)

    def sync_gradients(self) -> None:
        if self.sync is not None:
            self.sync.finish()

    def owned_state(self) -> dict[str, torch.Tensor]:
        return super().owned_state() if self.replica == 0 else {}

    def extra(self) -> dict:
        return {**super().extra(), "replica": self.replica}

    def close(self) -> None:
        if self.sync is not None and hasattr(self.sync, "remove_hooks"):
            self.sync.remove_hooks()
        super().close()
