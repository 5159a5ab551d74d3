"""Three hand-rolled ways to average gradients across data-parallel replicas, slow to fast.

per-tensor: one all-reduce per gradient after backward (many small messages: latency-bound).
flat:       all gradients copied into one buffer, one all-reduce (one big message, no overlap).
bucketed:   gradients packed into ~bucket_mb buckets in reverse parameter order; a bucket's
            all-reduce starts from a gradient hook the moment its last gradient is ready, so
            communication overlaps the rest of the backward pass (what DDP does).
The buffers and the bucket plan are dpkit.buffers' (shared with ZeRO and the cost model).

flat and bucketed may send less (RunConfig.compression, dpkit/strategies/compression.py): the all-reduce of
a buffer becomes `compressor.average(buffer, per-parameter views, key=bucket index)`. A compressed bucket is
averaged when the backward is over, one bucket after another (its collectives block), so it gives up the overlap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..buffers import FlatBuffer, plan_buckets
from ..comm import AsyncWork, Comm, Group
from .compression import Compressor, make_compressor

if TYPE_CHECKING:
    from ..config import RunConfig


class GradSync:
    """Averages the gradients of `params` over `group` once `enabled` (last accumulation micro-step)."""

    def __init__(self, params: list[nn.Parameter], comm: Comm, group: Group | None = None) -> None:
        self.params, self.comm, self.group = params, comm, group
        self.world = (group or comm.world).size
        self.enabled = True

    def begin(self) -> None:
        """Called before the backward passes of a step."""

    def finish(self) -> None:
        """Called after the last backward: on return every gradient holds the average."""
        raise NotImplementedError

    def buffers(self) -> list[torch.Tensor]:
        """The buffers it keeps from step to step (memory accounting): none for per-tensor."""
        return []


def set_grads(params: list[nn.Parameter], flat: FlatBuffer) -> None:
    """Each parameter's gradient := its place in `flat` (a parameter that got none gets a copy)."""
    for p in params:
        if p.grad is None:
            p.grad = flat.view(p).clone()
        else:
            p.grad.copy_(flat.view(p))


class PerTensorSync(GradSync):
    def finish(self) -> None:
        for p in reversed(self.params):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            self.comm.all_reduce(p.grad, self.group, name="allreduce-grad")
            p.grad.div_(self.world)


def compressed_average(compressor: Compressor, flat: FlatBuffer, params: list[nn.Parameter], key: int) -> None:
    """The buffer := the (approximate) average over the group, sent the compressor's way."""
    compressor.average(flat.data, [flat.view(p) for p in params], key)


class FlatSync(GradSync):
    """Copy every gradient into one flat buffer (kept from step to step), one all-reduce, copy back."""

    def __init__(
        self, params: list[nn.Parameter], comm: Comm, group: Group | None = None, compressor: Compressor | None = None
    ) -> None:
        super().__init__(params, comm, group)
        self.flat = FlatBuffer(params)
        self.compressor = compressor

    def buffers(self) -> list[torch.Tensor]:
        return [self.flat.data]

    def finish(self) -> None:
        self.flat.pack([p.grad for p in self.params])
        if self.compressor is not None:
            compressed_average(self.compressor, self.flat, self.params, key=0)
        else:
            self.comm.all_reduce(self.flat.data, self.group, name="allreduce-flat")
            self.flat.data.div_(self.world)
        set_grads(self.params, self.flat)


class Bucket:
    """Some parameters' gradients in one flat buffer, and the all-reduce that carries them."""

    def __init__(self, index: int, params: list[nn.Parameter]) -> None:
        self.index, self.params = index, params
        self.flat = FlatBuffer(params)
        self.ready: set[nn.Parameter] = set()
        self.work: AsyncWork | None = None


class BucketedOverlapSync(GradSync):
    def __init__(
        self,
        params: list[nn.Parameter],
        comm: Comm,
        group: Group | None = None,
        bucket_mb: float = 1.0,
        compressor: Compressor | None = None,
    ) -> None:
        super().__init__(params, comm, group)
        self.compressor = compressor
        arrival = list(reversed(params))  # gradients of the last layers are ready first
        plan = plan_buckets([p.numel() * p.element_size() for p in arrival], bucket_mb)
        self.buckets = [Bucket(i, [arrival[j] for j in group]) for i, group in enumerate(plan)]
        self.bucket_of = {p: b for b in self.buckets for p in b.params}
        self.launch_order: list[Bucket] = []
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in params]

    def buffers(self) -> list[torch.Tensor]:
        return [b.flat.data for b in self.buckets]

    def begin(self) -> None:
        self.launch_order = []
        for b in self.buckets:
            b.ready.clear()
            b.work = None

    def _on_grad_ready(self, p: nn.Parameter) -> None:
        if not self.enabled:
            return
        bucket = self.bucket_of[p]
        assert p.grad is not None  # the hook runs after the gradient was accumulated
        bucket.flat.view(p).copy_(p.grad)
        bucket.ready.add(p)
        if len(bucket.ready) == len(bucket.params) and self.compressor is None:
            self._launch(bucket)

    def _launch(self, bucket: Bucket) -> None:
        bucket.work = self.comm.all_reduce_async(bucket.flat.data, self.group, name=f"allreduce-bucket{bucket.index}")
        self.launch_order.append(bucket)

    def finish(self) -> None:
        if self.compressor is not None:
            self._finish_compressed(self.compressor)
            return
        for bucket in self.buckets:  # a parameter that got no gradient this step still takes part
            if bucket.work is None:
                for p in bucket.params:
                    if p not in bucket.ready:
                        bucket.flat.view(p).zero_()
                self._launch(bucket)
        for bucket in self.launch_order:
            assert bucket.work is not None
            bucket.work.wait()
        for bucket in self.buckets:
            bucket.flat.data.div_(self.world)
            set_grads(bucket.params, bucket.flat)

    def _finish_compressed(self, compressor: Compressor) -> None:
        """Each bucket, in the order its gradients became ready, averaged the compressor's way (blocking)."""
        for bucket in self.buckets:
            for p in bucket.params:
                if p not in bucket.ready:
                    bucket.flat.view(p).zero_()
            compressed_average(compressor, bucket.flat, bucket.params, key=bucket.index)
            set_grads(bucket.params, bucket.flat)

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()


def make_grad_sync(
    kind: str,
    params: list[nn.Parameter],
    comm: Comm,
    group: Group | None = None,
    bucket_mb: float = 1.0,
    compressor: Compressor | None = None,
) -> GradSync:
    """The hand-written sync `kind` over `group` (default: every rank), with the run's all-reduce algorithm;
    flat and bucketed average through `compressor` when one is given (None: a plain all-reduce)."""
    if compressor is not None and kind not in ("flat", "bucketed"):
        raise ValueError(f"grad_sync {kind!r} cannot compress: compression works with 'flat' or 'bucketed'")
    if kind == "per-tensor":
        return PerTensorSync(params, comm, group)
    if kind == "flat":
        return FlatSync(params, comm, group, compressor)
    if kind == "bucketed":
        return BucketedOverlapSync(params, comm, group, bucket_mb, compressor)
    raise ValueError(f"grad_sync {kind!r} is not allowed: choose 'per-tensor', 'flat' or 'bucketed' (or 'ddp')")


def compressor_for(cfg: RunConfig, comm: Comm, group: Group | None = None) -> Compressor | None:
    """The run's compressor (RunConfig.compression), or None for a plain all-reduce (compression='none')."""
    if cfg.compression == "none":
        return None
    return make_compressor(
        cfg.compression, comm, group, powersgd_rank=cfg.powersgd_rank, topk_ratio=cfg.topk_ratio, seed=cfg.seed
    )
