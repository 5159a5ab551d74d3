"""Data parallelism with all-reduce: every rank holds the whole model and a slice of the batch.

Ranks build their model from different seeds, then rank 0's parameters are broadcast, so a
missing broadcast shows up as a failed equivalence test. Gradients are averaged by the chosen
`grad_sync` variant with the chosen `allreduce_algo`; with grad_accum > 1 the sync is skipped
until the last micro-step, as DDP's no_sync() does.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from ..comm import Group
from ..workloads import build_model, shard
from .base import RankContext, Strategy, broadcast_model, state_on_cpu, trainable
from .grad_sync import compressor_for, make_grad_sync

__all__ = ["DataParallel", "broadcast_model"]


class DataParallel(Strategy):
    """Every rank: the whole model, its slice of the batch; gradients averaged before each optimizer step."""

    other_compute = "gradient copies"  # what the step computes besides forward, backward, optimizer

    def __init__(self, ctx: RankContext, group: Group | None = None) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.group = group
        view = group or ctx.comm.world
        self.world, self.index = view.size, view.me
        self.module = build_model(cfg, cfg.seed + ctx.rank).to(ctx.device)
        broadcast_model(ctx, self.module, group)  # ranks start from different seeds: the broadcast aligns them
        params = trainable(self.module)
        self.model: torch.nn.Module = self.module
        self.sync = None
        if cfg.grad_sync == "ddp":  # torch's own, its buckets' all-reduces through Comm
            self.model = DistributedDataParallel(self.module, process_group=view.group, bucket_cap_mb=cfg.bucket_mb)
            self.model.register_comm_hook(None, self._ddp_hook)
        else:
            self.sync = make_grad_sync(
                cfg.grad_sync, params, ctx.comm, group, cfg.bucket_mb, compressor_for(cfg, ctx.comm, group)
            )
        self.opt = self.make_optimizer(params)

    def _ddp_hook(self, _state, bucket):  # no return annotation: DDP rejects the string one `from __future__` makes
        """DDP's comm hook: its buckets go through Comm (the run's algorithm, timed and counted like ours)."""
        world = self.world
        return self.ctx.comm.all_reduce_future(
            bucket.buffer(), self.group, name=f"ddp-bucket{bucket.index()}", then=lambda value: value.div_(world)
        )

    def _syncing(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradients are averaged on the last micro-step only; before it they accumulate locally (DDP's no_sync)."""
        if self.sync is None:
            return contextlib.nullcontext() if last else self.model.no_sync()  # type: ignore[operator]
        self.sync.enabled = last
        return contextlib.nullcontext()

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        accum = self.cfg.grad_accum
        xs, ys = shard(x, self.index, self.world), shard(y, self.index, self.world)
        if self.sync is not None:
            self.sync.begin()
        losses = []
        for i in range(accum):
            with self._syncing(last=i == accum - 1):
                losses.append(self.forward_backward(self.model, shard(xs, i, accum), shard(ys, i, accum), 1.0 / accum))
        if self.sync is not None:
            self.sync.finish()  # DDP's averaging finished inside the last backward
        self.optimizer_step(self.opt)
        return sum(losses) / accum, xs.shape[0]

    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.module) if self.ctx.rank == 0 else {}

    def extra(self) -> dict:
        if self.sync is not None and hasattr(self.sync, "buckets"):
            return {"buckets": [sum(p.numel() for p in b.params) for b in self.sync.buckets]}
        return {}
