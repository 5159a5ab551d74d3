"""ZeRO stage 1: every rank keeps the whole parameters and gradients, and 1/n of the optimizer state.

One step: forward and backward on this rank's slice of the batch; reduce-scatter the gradients (each rank
receives the sum of its own shard only); the optimizer steps this rank's shard of the parameters; all-gather
the parameters (every rank's updated shard into every rank's whole model). exercises/solutions/zero1_step.py
is the same on one flat tensor. With grad_sync='bucketed' each unit's reduce-scatter starts during the
backward, as soon as the unit's last gradient is in.
"""

from __future__ import annotations

import torch
from torch import nn

from ...runtime.memory import Held
from ...workloads import build_model, shard
from ..base import RankContext, Strategy, broadcast_model, state_on_cpu, trainable
from .layout import Unit, bucket_units, done

#: reduce-scatters in flight at once (grad_sync='bucketed'): each holds a unit's whole gradient until it is done,
#: so without a bound a backward faster than the network would pile up every gradient, as if not sharded
MAX_REDUCES_IN_FLIGHT = 2


class ZeRO1(Strategy):
    """Optimizer state sharded; reduce-scatter and all-gather through Comm."""

    other_compute = "gradient copies"
    keeps_whole_gradients = True  # stage 1: the gradients stay whole (a unit's buffer), reduced once per step
    own_shard_copy = False  # stage 3: the shard is a copy (the whole parameters are freed)

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.comm, self.world, self.index = ctx.comm, ctx.comm.world.size, ctx.comm.world.me
        self.module = build_model(cfg, cfg.seed + ctx.rank).to(ctx.device)
        broadcast_model(ctx, self.module)  # ranks start from different seeds: the broadcast must align them
        self.overlap = cfg.grad_sync == "bucketed"  # reduce-scatters in the background, during the backward
        self.units = [
            Unit(name, params, self.world, self.index, self.own_shard_copy, self.keeps_whole_gradients)
            for name, params in self.plan()
        ]
        self.unit_of = {p: u for u in self.units for p in u.params}
        self.launched: list[Unit] = []  # units whose reduce-scatter started in this backward, in order
        self.syncing = True  # whether this micro-step's gradients are reduced
        self.prepare_units()
        for p in self.unit_of:
            p.register_post_accumulate_grad_hook(self._on_grad)
        self.opt = self.make_optimizer([u.shard for u in self.units])

    def plan(self) -> list[tuple[str, list[nn.Parameter]]]:
        return bucket_units(trainable(self.module), self.cfg.grad_sync, self.cfg.bucket_mb)

    def prepare_units(self) -> None:
        """Each parameter's .grad is a view of its unit's gradient buffer: the backward writes it in place."""
        for u in self.units:
            for p in u.params:
                p.grad = u.grad.view(p)

    # -- one step ----------------------------------------------------------------------------------
    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        accum = self.cfg.grad_accum
        xs, ys = shard(x, self.index, self.world), shard(y, self.index, self.world)
        losses = []
        for i in range(accum):
            self.syncing = not self.keeps_whole_gradients or i == accum - 1  # stage 1: like DDP's no_sync
            losses.append(self.forward_backward(self.module, shard(xs, i, accum), shard(ys, i, accum), 1.0 / accum))
            if self.syncing:
                self.reduce_gradients()
        self.optimizer_step(self.opt, zero_grad=False)  # this rank's shard only
        self.gather_parameters()
        return sum(losses) / accum, xs.shape[0]

    # -- gradients: reduce-scatter each unit once all its gradients are in ----------------------------
    def _on_grad(self, p: nn.Parameter) -> None:
        """A parameter's gradient has been accumulated (autograd calls this once per backward)."""
        if not self.syncing:
            return
        self.collect_finished()
        unit = self.unit_of[p]
        self.gradient_arrived(unit, p)
        unit.ready.add(p)
        if len(unit.ready) == len(unit.params):
            self.unit_complete(unit)

    def gradient_arrived(self, unit: Unit, p: nn.Parameter) -> None:
        """Stage 1: nothing to do, the gradient already lies in the unit's buffer."""

    def unit_complete(self, unit: Unit) -> None:
        """Every gradient of the unit is in: reduce-scatter it."""
        self.start_reduce(unit)

    def start_reduce(self, unit: Unit) -> None:
        """Reduce-scatter the unit's whole gradient: this rank receives the sum of its own shard only."""
        name = f"reduce-scatter-{unit.name}"
        if self.overlap:  # in the background; bound the whole gradients alive at once: wait for the oldest
            in_flight = [u for u in self.launched if u.reduce is not None]
            if len(in_flight) >= MAX_REDUCES_IN_FLIGHT:
                self.collect(in_flight[0])
            unit.reduce = self.comm.reduce_scatter_async(unit.grad.data, name=name)
        else:
            unit.reduce = None, done(self.comm.reduce_scatter(unit.grad.data, name=name))
        self.launched.append(unit)
        self.collect_finished()  # a blocking one at once: its whole gradient is not kept while the backward goes on

    def collect_finished(self) -> None:
        """Take the shard gradients of the reduce-scatters already done, so their whole-gradient buffers
        are freed during the backward, not at its end (stages 2 and 3 keep little more than shards)."""
        for unit in self.launched:
            if unit.reduce is not None and (unit.reduce[0] is None or unit.reduce[0].done()):
                self.collect(unit)

    def collect(self, unit: Unit) -> None:
        assert unit.reduce is not None
        work, summed = unit.reduce
        if work is not None:
            work.wait()
        unit.reduce = None
        self.take_shard_grad(unit, summed.result().div_(self.world))  # the average: the full-batch gradient

    def take_shard_grad(self, unit: Unit, mean: torch.Tensor) -> None:
        unit.shard.grad = mean

    def reduce_gradients(self) -> None:
        """After a backward whose gradients are reduced: every shard's gradient holds the average."""
        for unit in self.units:  # a unit with a parameter that got no gradient this step still takes part
            if unit not in self.launched:
                self.start_reduce(unit)
        for unit in self.launched:
            if unit.reduce is not None:
                self.collect(unit)
            unit.ready.clear()
        self.launched = []

    # -- parameters: all-gather every rank's updated shard ----------------------------------------------
    def gather_parameters(self) -> None:
        for unit in self.units:  # the shard was updated in place in `flat`: gather everyone else's
            self.comm.all_gather(unit.shard.detach(), unit.flat.data, name=f"all-gather-{unit.name}")
            unit.grad.data.zero_()
            unit.shard.grad = None

    # -- results -----------------------------------------------------------------------------------------
    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.module) if self.ctx.rank == 0 else {}

    def held_tensors(self) -> Held:
        """Whole parameters (frozen ones too) and gradients; the optimizer's state of the shards only."""
        frozen = [p for p in self.module.parameters() if not p.requires_grad]
        params = [*frozen, *(u.flat.data for u in self.units), *(u.shard for u in self.units)]
        return Held(params, [u.grad.data for u in self.units], [self.opt])

    def extra(self) -> dict:
        return {"memory": self.memory_state(), "units": {u.name: u.numel for u in self.units}}
