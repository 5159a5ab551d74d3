"""Data parallelism with all-reduce: every rank holds the whole model and a slice of the batch.

Ranks build their model from different seeds, then rank 0's parameters are broadcast, so a
missing broadcast shows up as a failed equivalence test. Gradients are averaged by the chosen
`grad_sync` variant with the chosen `allreduce_algo`; with grad_accum > 1 the sync is skipped
until the last micro-step, as DDP's no_sync() does.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from ..comm import Group
from ..workloads import build_model, loss_fn, shard
from .base import RankContext, Strategy, state_on_cpu, trainable
from .grad_sync import make_grad_sync


def broadcast_model(ctx: RankContext, model: torch.nn.Module, group: Group | None = None) -> None:
    """Copy the parameters and buffers of the group's first rank to every rank of `group`."""
    src = (group or ctx.comm.world).peer(0)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            ctx.comm.broadcast(t.data, src, group, name="broadcast-model")


class DataParallel(Strategy):
    def __init__(self, ctx: RankContext, group: Group | None = None) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.group = group
        view = group or ctx.comm.world
        self.world, self.index = view.size, view.me
        model = build_model(cfg, cfg.seed + ctx.rank).to(ctx.device)
        broadcast_model(ctx, model, group)
        self.module = model
        self.model: torch.nn.Module
        params = trainable(model)
        if cfg.grad_sync == "ddp":
            self.model = DistributedDataParallel(model, process_group=view.group, bucket_cap_mb=cfg.bucket_mb)
            self.model.register_comm_hook(None, self._ddp_hook)
            self.sync = None
            # DDP waits for its all-reduces inside backward(); the last gradient's arrival marks where
            # backward's compute ends, so that wait is not counted as compute (it is exposed comm).
            self._last_grad_at: float | None = None
            for p in params:
                p.register_post_accumulate_grad_hook(self._note_grad)
        else:
            self.model = model
            self.sync = make_grad_sync(cfg.grad_sync, params, ctx.comm, group, cfg.bucket_mb)
        self.opt = self.make_optimizer(params)

    def _ddp_hook(self, _state, bucket):  # no return annotation: DDP rejects the string one `from __future__` makes
        """DDP's comm hook: its buckets go through Comm (the run's algorithm, timed and counted like ours)."""
        world = self.world
        return self.ctx.comm.all_reduce_future(
            bucket.buffer(), self.group, name=f"ddp-bucket{bucket.index()}", then=lambda value: value.div_(world)
        )

    def _note_grad(self, _p) -> None:
        self._last_grad_at = time.perf_counter()

    def _ddp_forward_backward(self, x: torch.Tensor, y: torch.Tensor, scale: float) -> float:
        with self.rec.span("compute", "forward"):
            loss = loss_fn(self.model(x.to(self.ctx.device)), y.to(self.ctx.device))
        self._last_grad_at = None
        start = time.perf_counter()
        (loss * scale).backward()
        end = time.perf_counter()
        self.rec.add("compute", "backward", start, self._last_grad_at or end)
        return float(loss.detach())

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        accum = self.cfg.grad_accum
        xs, ys = shard(x, self.index, self.world), shard(y, self.index, self.world)
        if self.sync is not None:
            self.sync.begin()
        losses = []
        for i in range(accum):
            last = i == accum - 1
            if self.sync is not None:
                self.sync.enabled = last
                ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
            else:
                ctx = contextlib.nullcontext() if last else self.model.no_sync()  # type: ignore[operator]
            with ctx:
                mx, my = shard(xs, i, accum), shard(ys, i, accum)
                if self.sync is None:
                    losses.append(self._ddp_forward_backward(mx, my, 1.0 / accum))
                else:
                    losses.append(self.forward_backward(self.model, mx, my, 1.0 / accum))
        if self.sync is not None:
            self.sync.finish()
        with self.rec.span("compute", "optimizer"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return sum(losses) / accum, xs.shape[0]

    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.module) if self.ctx.rank == 0 else {}

    def extra(self) -> dict:
        if self.sync is not None and hasattr(self.sync, "buckets"):
            return {"buckets": [sum(p.numel() for p in b.params) for b in self.sync.buckets]}
        return {}
