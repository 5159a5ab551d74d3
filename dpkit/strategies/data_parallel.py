"""Data parallelism with all-reduce: every rank holds the whole model and a slice of the batch.

Ranks build their model from different seeds, then rank 0's parameters are broadcast, so a
missing broadcast shows up as a failed equivalence test. Gradients are averaged by the chosen
`grad_sync` variant with the chosen `allreduce_algo`; with grad_accum > 1 the sync is skipped
until the last micro-step, as DDP's no_sync() does.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import torch
from torch.nn.parallel import DistributedDataParallel

from ..comm import Group
from ..cost.model import HostModel, Link, bucketed_overlap, buckets_of, comm_time
from ..cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ..workloads import build_model, shard
from .base import RankContext, Strategy, broadcast_model, state_on_cpu, trainable
from .grad_sync import make_grad_sync
from .spec import DataSplitSpec

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = ["DataParallel", "DataParallelSpec", "broadcast_model"]


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
            self.sync = make_grad_sync(cfg.grad_sync, params, ctx.comm, group, cfg.bucket_mb)
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


class DataParallelSpec(DataSplitSpec):
    name = "data-allreduce"
    parallelism = "data"
    description = "data parallelism with all-reduce (parallelism='data', sync='allreduce')"

    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == "data" and cfg.sync == "allreduce" and cfg.zero_stage == 0

    def label(self, cfg: RunConfig) -> str:
        return f"data/allreduce/{cfg.grad_sync}/{cfg.allreduce_algo}"

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """fwd + bwd + opt + gradient buffer copies (2S mu, not for per-tensor) + exposed all-reduce: all of
        it for per-tensor and flat; for bucketed/ddp what the backward does not hide (cost.model.bucketed_overlap),
        except on one host whose cores are all computing: there the copies take turns with the backward."""
        f = step_facts(cfg, model, profile, slowest_rank_slowdown(cfg.world_size, profile.threads, cores))
        algo, n, size = cfg.allreduce_algo, cfg.world_size, f.grad_bytes
        # flat, bucketed and ddp copy every gradient into a buffer and back out (2S bytes of local copies,
        # priced at the host's mu, which calibration measures with every rank copying at once, so no
        # oversubscription factor): compute-side work the single-process profile never did
        copies = 0.0 if cfg.grad_sync == "per-tensor" or n == 1 else 2 * size * f.one.mu
        if cfg.grad_sync == "per-tensor":
            comm = exposed = sum(comm_time(algo, g, n, model) for g in f.grads)
        elif cfg.grad_sync == "flat":
            comm = exposed = comm_time(algo, size, n, model)
        else:  # bucketed and ddp: both bucket by bucket_mb in reverse order and overlap with the backward
            ov = bucketed_overlap(buckets_of(f.grads, cfg.bucket_mb), f.t_backward, n, model, algo)
            comm, exposed = ov.comm_s, ov.exposed_s
            if isinstance(model, HostModel) and n * profile.threads >= (cores or os.cpu_count() or 1):
                # one host with every core computing: its "links" are kernel copies, CPU work that takes
                # turns with the backward instead of running beside it (measured here: bucketed steps as
                # long as flat ones at n = 2, 3, 4 on 2 cores)
                exposed = comm
        return parts(f.t_forward + f.t_backward + f.t_optimizer + copies, comm, exposed)

    def build(self, ctx: RankContext) -> Strategy:
        return DataParallel(ctx)


SPEC = DataParallelSpec()
