"""Sharded data parallelism (ZeRO): data parallelism in which each rank keeps 1/n of the training state.

Plain data parallelism keeps everything whole on every rank: the parameters (P bytes in fp32), their
gradients (P) and the optimizer's state (2P for Adam), 16 bytes per parameter. ZeRO (Rajbhandari et
al., 2020) cuts that state into n shards, one per rank, in three stages:

  stage 1  shards the optimizer state. Gradients are reduce-scattered (each rank receives the sum of its
           own shard only), each rank updates its shard of the parameters, and the updated parameters are
           all-gathered. A ring all-reduce *is* a reduce-scatter followed by an all-gather, so stage 1 sends
           exactly what plain data parallelism sends: 2(n-1)/n P per rank per step.
  stage 2  also shards the gradients: a rank keeps only its gradient shard. A full gradient lives only
           until it is reduce-scattered (bucket by bucket during the backward with grad_sync='bucketed').
  stage 3  also shards the parameters: a rank keeps only its shard. A block's parameters are all-gathered
           just before its forward and freed after it, gathered again just before its backward and freed
           when its gradients are reduce-scattered: 3(n-1)/n P per rank per step, 1.5x plain data
           parallelism. With grad_sync='bucketed' the next block's gather is started (prefetched) while
           this block computes, and reduce-scatters run while the backward goes on.

The layout. Trainable parameters are grouped into units: with grad_sync='flat' one unit holds the whole
model, with 'bucketed' units of about bucket_mb (in reverse order, as gradients arrive), in stage 3 one
unit per block. A unit's parameters lie end to end in one flat buffer, padded with zeros to a multiple
of n so that it splits into n equal shards; rank r owns shard r of every unit. The optimizer is an
ordinary torch.optim optimizer over the shards (one nn.Parameter per unit): SGD and Adam update every
element on its own, so stepping n shards is exactly stepping the whole model (the zero padding gets zero
gradients and stays zero).

grad_sync='fsdp' (stage 3 only) runs torch's FSDP2 instead (dpkit.comm.fsdp), the reference to compare
with: the same schedule, written by PyTorch.

Simplifications, said so: frozen parameters and buffers stay whole on every rank (they never change;
FSDP2 shards them too, to save their memory); a parameter that two blocks share (a tied embedding and
output head) belongs to a unit that stays gathered from the start of the forward to the end of its
backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from ..comm import AsyncWork
from ..runtime.recorder import Recorder
from ..workloads import build_model, loss_fn, shard
from .base import RankContext, Strategy, state_on_cpu, trainable
from .data_parallel import broadcast_model

#: reduce-scatters in flight at once (grad_sync='bucketed'): each holds a unit's whole gradient until it is done,
#: so without a bound a backward faster than the network would pile up every gradient, as if not sharded
MAX_REDUCES_IN_FLIGHT = 2


# ---- units: parameters laid end to end, cut into n equal shards ------------------------------------
def plan_units(model: nn.Module, stage: int, grad_sync: str, bucket_mb: float) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, trainable parameters) of every unit, in the order their gradients arrive in the backward
    (stage 3: block order, with the parameters two blocks share first). Every rank plans the same units."""
    params = trainable(model)
    if stage < 3:
        if grad_sync == "flat":
            return [("all", list(reversed(params)))]
        units: list[tuple[str, list[nn.Parameter]]] = []
        size, limit = 0, bucket_mb * 2**20
        for p in reversed(params):  # gradients of the last layers are ready first
            if not units or (units[-1][1] and size + p.numel() * p.element_size() > limit):
                units.append((f"bucket{len(units)}", []))
                size = 0
            units[-1][1].append(p)
            size += p.numel() * p.element_size()
        return units
    owners: dict[nn.Parameter, list[str]] = {}
    for name, block in model.named_children():
        for p in block.parameters():
            if p.requires_grad:
                owners.setdefault(p, []).append(name)
    shared = [p for p in params if len(owners[p]) > 1]
    units = [("shared", shared)] if shared else []
    for name, _block in model.named_children():
        mine = [p for p in params if owners[p] == [name]]
        if mine:
            units.append((name, mine))
    return units


class Unit:
    """Trainable parameters laid end to end in one flat buffer (`full`), padded to n equal shards; this
    rank owns shard `me` (`shard`, the nn.Parameter the optimizer steps). The model's parameters become
    views into `full`, so whatever is written there is what the model computes with."""

    def __init__(self, name: str, params: list[nn.Parameter], n: int, me: int, own_copy: bool) -> None:
        self.name, self.params = name, params
        self.numel = sum(p.numel() for p in params)
        self.shard_numel = -(-self.numel // n)  # ceil: the padded length splits evenly
        p0 = params[0]
        self.full = torch.zeros(self.shard_numel * n, dtype=p0.dtype, device=p0.device)
        self.offsets: dict[nn.Parameter, int] = {}
        offset = 0
        with torch.no_grad():
            for p in params:
                self.offsets[p] = offset
                self.full[offset : offset + p.numel()].copy_(p.reshape(-1))
                p.data = self.full[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        mine = self.full.view(n, -1)[me]
        # stages 1, 2: the shard is this rank's part of `full` itself (the optimizer updates it in place, the
        # all-gather then fills in the others); stage 3 frees `full`, so the shard is a copy of its own
        self.shard = nn.Parameter(mine.clone() if own_copy else mine)
        self.grad_flat: torch.Tensor | None = None  # the whole gradient, padded; stage 1 keeps it, 2 and 3 only for a moment
        self.ready: set[nn.Parameter] = set()  # parameters whose gradient arrived in this backward
        self.reduce: tuple[AsyncWork, Any] | None = None  # a reduce-scatter in flight
        self.gather: AsyncWork | None = None  # stage 3: an all-gather in flight
        self.gathered = True  # stage 3: whether `full` holds the parameters now

    @property
    def full_bytes(self) -> int:
        return self.full.numel() * self.full.element_size()

    def grad_view(self, p: nn.Parameter) -> torch.Tensor:
        assert self.grad_flat is not None
        return self.grad_flat[self.offsets[p] : self.offsets[p] + p.numel()].view_as(p)

    def free_params(self) -> None:
        """Stage 3: release the gathered parameters' memory. The parameters stay views of `full` (so the
        tensors autograd saved for the backward stay valid); their storage shrinks to nothing."""
        self.full.untyped_storage().resize_(0)
        self.gathered = False

    def allocate_params(self) -> None:
        self.full.untyped_storage().resize_(self.full_bytes)


# ---- compute spans that stop while the rank waits ---------------------------------------------------
class ComputeSpans:
    """Records compute as spans that stop while the rank waits for a message: a gather waited for inside
    the forward is exposed communication, not compute, and the timeline says so."""

    def __init__(self, recorder: Recorder) -> None:
        self.rec = recorder
        self.name: str | None = None
        self.start: Any = None

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[None]:
        self.name, self.start = name, self.rec.clock.mark()
        try:
            yield
        finally:
            self.rec.add("compute", name, self.start, self.rec.clock.mark())
            self.name = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self.name is None:  # not computing: nothing to split
            yield
            return
        self.rec.add("compute", self.name, self.start, self.rec.clock.mark())
        try:
            yield
        finally:
            self.start = self.rec.clock.mark()


# ---- the strategies ---------------------------------------------------------------------------------
class _ShardedBase(Strategy):
    """The step every sharded strategy takes: micro-steps of forward and backward, then the optimizer."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        self.world, self.index = ctx.comm.world.size, ctx.comm.world.me
        self.module = build_model(self.cfg, self.cfg.seed + ctx.rank).to(ctx.device)
        broadcast_model(ctx, self.module)  # ranks start from different seeds: the broadcast must align them
        self.compute = ComputeSpans(self.rec)
        self.syncing = True  # whether this micro-step's gradients are reduced (stage 1: only the last one)
        self.opt: torch.optim.Optimizer  # each subclass makes it over the parameters it steps

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        accum = self.cfg.grad_accum
        xs, ys = shard(x, self.index, self.world), shard(y, self.index, self.world)
        losses = []
        for i in range(accum):
            self.syncing = self.cfg.zero_stage >= 2 or i == accum - 1
            with self.compute.running("forward"):
                loss = loss_fn(self.module(shard(xs, i, accum).to(self.ctx.device)), shard(ys, i, accum).to(self.ctx.device))
            with self.compute.running("backward"):
                (loss * (1.0 / accum)).backward()
            losses.append(float(loss.detach()))
            if self.syncing:
                self.finish_reduce()
        with self.rec.span("compute", "optimizer"):
            self.opt.step()
        self.after_step()
        return sum(losses) / accum, xs.shape[0]

    def finish_reduce(self) -> None:
        """After a backward whose gradients are reduced: every shard's gradient holds the average."""

    def after_step(self) -> None:
        """After the optimizer step: make the parameters whole where the stage needs them, reset the gradients."""

    def extra(self) -> dict:
        return {"memory": self.memory_state()}

    def optimizer_bytes(self) -> int:
        """Bytes of the optimizer's state tensors on this rank (SGD's momentum; Adam's two moments and step)."""
        return sum(
            int(self.local_bytes(t)) for state in self.opt.state.values() for t in state.values() if isinstance(t, torch.Tensor)
        )

    def local_bytes(self, t: torch.Tensor) -> int:
        return t.numel() * t.element_size()


class ShardedDataParallel(_ShardedBase):
    """ZeRO stages 1, 2 and 3, hand-written: reduce-scatter and all-gather through Comm."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        cfg, comm = self.cfg, ctx.comm
        self.stage, self.comm = cfg.zero_stage, comm
        self.overlap = cfg.grad_sync == "bucketed"  # reduce-scatter during the backward; stage 3 also prefetches
        plan = plan_units(self.module, self.stage, cfg.grad_sync, cfg.bucket_mb)
        self.units = [Unit(name, params, self.world, self.index, own_copy=self.stage == 3) for name, params in plan]
        self.unit_of = {p: u for u in self.units for p in u.params}
        self.launched: list[Unit] = []  # units whose reduce-scatter started, in order
        self.buffer_bytes = self.peak_buffer_bytes = 0  # transient gradient and gather buffers (memory_state)
        if self.stage == 1:  # the whole gradient stays: each parameter's .grad is a view of its unit's buffer
            for u in self.units:
                u.grad_flat = torch.zeros_like(u.full)
                for p in u.params:
                    p.grad = u.grad_view(p)
        else:  # a rank keeps only its gradient shard, summed over micro-steps
            for u in self.units:
                u.shard.grad = torch.zeros_like(u.shard)
        if self.stage >= 2 or self.overlap:
            for p in self.unit_of:
                p.register_post_accumulate_grad_hook(self._on_grad)
        if self.stage == 3:
            self._install_gather_hooks()
        self.opt = self.make_optimizer([u.shard for u in self.units])

    # -- gradients: reduce-scatter each unit once all its gradients are in ----------------------------
    def _on_grad(self, p: nn.Parameter) -> None:
        """A parameter's gradient has been accumulated (autograd calls this once per backward)."""
        if not self.syncing:
            return
        self._collect_finished()
        unit = self.unit_of[p]
        if self.stage >= 2:  # move the gradient into the unit's buffer, free the parameter's own
            if unit.grad_flat is None:
                unit.grad_flat = torch.zeros_like(unit.full)
                self._buffers(+unit.full_bytes)
            assert p.grad is not None  # the hook runs after the gradient was accumulated
            unit.grad_view(p).copy_(p.grad)
            p.grad = None
        unit.ready.add(p)
        if len(unit.ready) == len(unit.params):
            if self.stage == 3 and unit.name != "shared":
                self._free(unit)  # every use of these parameters in the backward is done
            if self.overlap or self.stage >= 2:
                self._reduce(unit)

    def _reduce(self, unit: Unit) -> None:
        assert unit.grad_flat is not None
        name = f"reduce-scatter-{unit.name}"
        if self.overlap:
            in_flight = [u for u in self.launched if u.reduce is not None]
            if len(in_flight) >= MAX_REDUCES_IN_FLIGHT:  # bound the whole gradients alive at once: wait for the oldest
                with self.compute.paused():
                    self._collect(in_flight[0])
            unit.reduce = self.comm.reduce_scatter_async(unit.grad_flat, name=name)
        else:
            with self.compute.paused():
                result = self.comm.reduce_scatter(unit.grad_flat, name=name)
            self._take_shard_grad(unit, result)
        self.launched.append(unit)

    def _collect_finished(self) -> None:
        """Take the shard gradients of the reduce-scatters already done, so their whole-gradient buffers
        are freed during the backward, not at its end (stages 2 and 3 keep little more than shards)."""
        for unit in self.launched:
            if unit.reduce is not None and unit.reduce[0].done():
                self._collect(unit)

    def _collect(self, unit: Unit) -> None:
        assert unit.reduce is not None
        work, summed = unit.reduce
        work.wait()
        self._take_shard_grad(unit, summed.result())
        unit.reduce = None

    def _take_shard_grad(self, unit: Unit, summed: torch.Tensor) -> None:
        """This rank's shard of the summed gradient -> the average, into the optimizer's shard."""
        if self.stage == 1:
            unit.shard.grad = summed.div_(self.world)
        else:
            assert unit.shard.grad is not None  # stages 2 and 3 keep the shard's gradient between micro-steps
            unit.shard.grad.add_(summed.div_(self.world))
            unit.grad_flat = None  # the whole gradient is no longer needed
            self._buffers(-unit.full_bytes)

    def finish_reduce(self) -> None:
        for unit in self.units:  # a unit with a parameter that got no gradient this step still takes part
            if unit not in self.launched:
                if unit.grad_flat is None:
                    unit.grad_flat = torch.zeros_like(unit.full)
                    self._buffers(+unit.full_bytes)
                if self.stage >= 2:
                    for p in unit.params:
                        if p not in unit.ready:
                            unit.grad_view(p).zero_()
                self._reduce(unit)
        for unit in self.launched:
            if unit.reduce is not None:
                self._collect(unit)
            unit.ready.clear()
        self.launched = []
        if self.stage == 3:  # the backward is over: nothing stays gathered (the shared unit; a prefetch never used)
            for unit in self.units:
                if unit.gather is not None:
                    self._wait_gathered(unit)
                self._free(unit)

    def after_step(self) -> None:
        for unit in self.units:
            if self.stage < 3:  # the shard was updated in place in `full`: gather everyone else's
                self.comm.all_gather(unit.shard.detach(), unit.full, name=f"all-gather-{unit.name}")
            if self.stage == 1:
                assert unit.grad_flat is not None
                unit.grad_flat.zero_()
                unit.shard.grad = None
            else:
                assert unit.shard.grad is not None
                unit.shard.grad.zero_()

    # -- stage 3: gather a block's parameters just before they are used, free them after ---------------
    def _install_gather_hooks(self) -> None:
        self.order = [u for u in self.units if u.name != "shared"]  # forward order of the blocks' units
        self.module.register_forward_pre_hook(self._before_model)
        for name, block in self.module.named_children():
            unit = next((u for u in self.order if u.name == name), None)
            if unit is not None:
                block.register_forward_pre_hook(partial(self._before_block, unit))
                block.register_forward_hook(partial(self._after_block, unit))
        for unit in self.units:
            unit.free_params()  # from now on a rank holds only its shards

    def _neighbour(self, unit: Unit, step: int) -> Unit | None:
        i = self.order.index(unit) + step
        return self.order[i] if 0 <= i < len(self.order) else None

    def _before_model(self, _module: nn.Module, _args: Any) -> None:
        for unit in self.units:
            if unit.name == "shared":  # used by two blocks: gathered for the whole forward and backward
                self._wait_gathered(unit)
        if self.overlap and self.order:
            self._start_gather(self.order[0])

    def _before_block(self, unit: Unit, _module: nn.Module, _args: Any) -> None:
        self._wait_gathered(unit)
        if self.overlap and (nxt := self._neighbour(unit, +1)) is not None:
            self._start_gather(nxt)  # prefetch: the next block's gather runs while this one computes

    def _after_block(self, unit: Unit, _module: nn.Module, _args: Any, output: Any) -> None:
        self._free(unit)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda _grad: self._before_block_backward(unit))  # fires just before the block's backward

    def _before_block_backward(self, unit: Unit) -> None:
        self._wait_gathered(unit)
        if self.overlap and (prev := self._neighbour(unit, -1)) is not None:
            self._start_gather(prev)  # the backward runs the blocks in reverse: prefetch the one before

    def _start_gather(self, unit: Unit) -> None:
        if not unit.gathered and unit.gather is None:
            unit.allocate_params()
            self._buffers(+unit.full_bytes)
            unit.gather = self.comm.all_gather_async(unit.shard.detach(), unit.full, name=f"all-gather-{unit.name}")

    def _wait_gathered(self, unit: Unit) -> None:
        if unit.gathered:
            return
        with self.compute.paused():
            if self.overlap:  # every collective through the comm thread, so all ranks issue them in one order
                self._start_gather(unit)
                assert unit.gather is not None
                unit.gather.wait()
            else:
                unit.allocate_params()
                self._buffers(+unit.full_bytes)
                self.comm.all_gather(unit.shard.detach(), unit.full, name=f"all-gather-{unit.name}")
        unit.gather, unit.gathered = None, True

    def _free(self, unit: Unit) -> None:
        if unit.gathered:
            unit.free_params()
            self._buffers(-unit.full_bytes)

    def _buffers(self, change: int) -> None:
        self.buffer_bytes += change
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, self.buffer_bytes)

    # -- results ---------------------------------------------------------------------------------------
    def owned_state(self) -> dict[str, torch.Tensor]:
        if self.stage == 3:  # the parameters are sharded: gather every unit (all ranks), copy, free
            peak = self.peak_buffer_bytes  # gathering everything for the result is not training's memory
            for unit in self.units:
                self._wait_gathered(unit)
            state = state_on_cpu(self.module) if self.ctx.rank == 0 else {}
            for unit in self.units:
                self._free(unit)
            self.peak_buffer_bytes = peak
            return state
        return state_on_cpu(self.module) if self.ctx.rank == 0 else {}

    def memory_state(self) -> dict[str, int]:
        """Bytes this rank holds between steps, read off the tensors it holds: parameters (stages 1, 2: whole;
        3: shards, and whatever is still gathered, which should be nothing; frozen ones whole), gradients
        (stage 1: the whole buffer; 2, 3: shards, plus any whole gradient left behind, which should be none),
        the optimizer's state, and the peak of the transient buffers during the steps (stages 2, 3: whole
        gradients of units being reduce-scattered; stage 3: gathered parameters)."""

        def size(t: torch.Tensor | None) -> int:
            return 0 if t is None else t.numel() * t.element_size()

        frozen = sum(size(p) for p in self.module.parameters() if not p.requires_grad)
        params = frozen + sum(u.full.untyped_storage().nbytes() for u in self.units)  # stage 3: gathered units only
        grads = sum(size(u.grad_flat) for u in self.units)
        if self.stage == 3:
            params += sum(size(u.shard) for u in self.units)
        if self.stage >= 2:
            grads += sum(size(u.shard.grad) for u in self.units) + sum(size(p.grad) for p in self.unit_of)
        return {
            "params_bytes": params,
            "grads_bytes": grads,
            "optimizer_bytes": self.optimizer_bytes(),
            "buffers_bytes": self.peak_buffer_bytes,
        }

    def extra(self) -> dict:
        return {"memory": self.memory_state(), "units": {u.name: u.numel for u in self.units}}


class FSDP2DataParallel(_ShardedBase):
    """grad_sync='fsdp': torch's FSDP2 shards and gathers (dpkit.comm.fsdp), its messages through Comm."""

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        from ..comm import fsdp  # here, not at the top: torch's FSDP2 takes seconds to import, and only this needs it

        self.fsdp = fsdp
        self.model = fsdp.shard_blocks(self.module, ctx.comm, around=self.compute.paused)
        self.opt = self.make_optimizer(trainable(self.model))

    def local_bytes(self, t: torch.Tensor) -> int:
        return self.fsdp.local_bytes(t)  # this rank's part of a sharded tensor

    def after_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def owned_state(self) -> dict[str, torch.Tensor]:
        state = self.fsdp.full_state_dict(self.model)  # a collective: every rank takes part
        return state if self.ctx.rank == 0 else {}

    def memory_state(self) -> dict[str, int]:
        """Like ShardedDataParallel's. FSDP2's buffers are its own, so buffers_bytes is an estimate, not a
        measurement: the largest unit whole, three times (its gathered parameters, the next unit prefetched,
        its whole gradient before the reduce-scatter), which is what dpkit's ZeRO-3 holds at its peak."""
        params = list(self.model.parameters())
        units = [sum(p.numel() * p.element_size() for p in block.parameters()) for block in self.model.children()]
        return {
            "params_bytes": sum(self.local_bytes(p) for p in params),
            "grads_bytes": sum(self.local_bytes(p) for p in params if p.requires_grad),
            "optimizer_bytes": self.optimizer_bytes(),
            "buffers_bytes": 3 * max(units, default=0),
        }
