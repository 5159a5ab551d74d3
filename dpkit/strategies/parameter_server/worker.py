"""A parameter-server worker: compute gradients on its batch slice, push them per shard, pull the shard back.

The pull's receive is posted together with the push, so a server never waits on a worker to answer it;
the time from the push leaving to the parameters arriving is the worker's wait for the server (in
sync mode that includes waiting for the slowest worker, whose gradient the server needs first): the
timeline's PULL_WAIT span (dpkit.viz.ps_tables.worker_wait reads it).
"""

from __future__ import annotations

import torch

from ...buffers import FlatBuffer
from ...comm import Group
from ...runtime.memory import Held
from ...workloads import build_model, shard
from ..base import RankContext, Strategy
from .layout import ShardLayout, server_rank
from .traffic import bytes_sent

PULL_WAIT = "pull-parameters (wait for server)"  # the timeline span of a worker waiting for its parameters


class PushPullWorker(Strategy):
    role = "worker"
    other_compute = "pack and unpack"  # copying gradients into the pushed buffers and parameters out of the pulled

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.group = ctx.comm.host_group()  # host memory, as classic parameter servers used TCP
        self.model = build_model(cfg, cfg.seed).to(ctx.device)  # the servers' initial parameters, by construction
        layout = ShardLayout(self.model, cfg.num_servers)
        self.shards = [(server_rank(cfg, j), layout.params_of(j)) for j in range(cfg.num_servers) if layout.shards[j]]
        # one flat host buffer per shard each way, kept from step to step: one message per shard, not one per tensor
        self.packed = [FlatBuffer(params, device="cpu") for _, params in self.shards]  # gradients out
        self.pulled = [FlatBuffer(params, device="cpu") for _, params in self.shards]  # parameters in
        self.losses: list[float] = []

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        accum, n = self.cfg.grad_accum, self.cfg.world_size
        xs, ys = shard(x, self.ctx.rank, n), shard(y, self.ctx.rank, n)
        losses = [self.forward_backward(self.model, shard(xs, i, accum), shard(ys, i, accum), 1.0 / accum) for i in range(accum)]
        for (_, params), buf in zip(self.shards, self.packed, strict=True):
            buf.pack([p.grad for p in params])  # a parameter that got no gradient sends zeros
        self.model.zero_grad(set_to_none=True)
        self._push_pull()
        for buf in self.pulled:
            buf.unpack()  # the shard's new parameters into the model
        loss = sum(losses) / accum
        self.losses.append(loss)
        return loss, xs.shape[0]

    def _push_pull(self) -> None:
        """Post every pull first (so no server ever waits on a worker to answer), then push and wait. Worker w
        pushes to its shards starting at shard w mod k: were every worker to start at the same server, that
        server's incoming link would fill while the others wait (on an emulated link, k servers would take
        up to twice their formula's time)."""
        comm = self.ctx.comm
        pulls = [comm.irecv(buf.data, srv, self.group) for (srv, _), buf in zip(self.shards, self.pulled, strict=True)]
        k = len(self.shards)
        order = [(self.ctx.rank + j) % k for j in range(k)]
        pushes = [comm.isend(self.packed[i].data, self.shards[i][0], self.group, name="push-gradients") for i in order]
        comm.wait(pushes, name="push-gradients")
        comm.wait(pulls, name=PULL_WAIT)

    def end_of_step_group(self) -> Group | None:
        return None if self.cfg.sync == "ps-async" else self.ctx.comm.world

    def held_tensors(self) -> Held:
        """The model and its gradients (counted as every backward ends), and the packed gradients and pulled
        parameters, kept from step to step: a worker holds the whole model, a server only its shard."""
        held = super().held_tensors()
        held.buffers = [buf.data for buf in (*self.packed, *self.pulled)]
        return held

    def extra(self) -> dict:
        return {
            "bytes_in": len(self.losses) * sum(buf.nbytes for buf in self.pulled),  # one pull per step
            "bytes_out": bytes_sent(self.ctx.comm),
            "worker_losses": self.losses,
        }
