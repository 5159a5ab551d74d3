"""Local SGD: every rank trains its own copy of the model on its slice of the batch, and the copies are
averaged every `local_steps` (H) steps instead of averaging gradients every step (Stich 2019; Lin et al. 2020;
torch's PeriodicModelAverager). One all-reduce of the parameters every H steps: about 1/H of data
parallelism's bytes per step. With H = 1 and SGD (with or without momentum) it trains exactly like data
parallelism: averaging the updated copies averages the updates, which are linear in the gradients. With
H > 1 the copies drift apart between averagings: fewer bytes, and a model that may learn differently
(notebook 08 measures how).
"""

from __future__ import annotations

import torch
from torch import nn

from ..comm import Comm, Group
from ..workloads import build_model, shard
from .base import RankContext, Strategy, broadcast_model, state_on_cpu, trainable


class LocalSGD(Strategy):
    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        self.world, self.index = ctx.comm.world.size, ctx.comm.world.me
        self.model = build_model(self.cfg, self.cfg.seed + ctx.rank).to(ctx.device)
        broadcast_model(ctx, self.model)  # every copy starts from rank 0's parameters
        self.params = trainable(self.model)
        self.opt = self.make_optimizer(self.params)
        self.local_steps = self.cfg.local_steps

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        xs, ys = shard(x, self.index, self.world), shard(y, self.index, self.world)
        loss = self.accumulate_and_step(self.model, self.opt, xs, ys)  # my own gradients only: no sync
        if (step + 1) % self.local_steps == 0 or step + 1 == self.cfg.steps:  # and the last step: one model at the end
            self.average_parameters()
        return loss, xs.shape[0]

    def average_parameters(self) -> None:
        average_parameters(self.params, self.ctx.comm)

    def owned_state(self) -> dict[str, torch.Tensor]:
        """Rank 0's copy: the average right after an averaging step, its own drifted copy between two."""
        return state_on_cpu(self.model) if self.ctx.rank == 0 else {}


def average_parameters(params: list[nn.Parameter], comm: Comm, group: Group | None = None) -> None:
    """Every copy becomes the mean of all copies: one all-reduce of the flattened parameters (what torch's
    PeriodicModelAverager does at each averaging; tests/test_sending_less.py compares the two)."""
    world = (group or comm.world).size
    with torch.no_grad():
        flat = torch.cat([p.reshape(-1) for p in params])
        comm.all_reduce(flat, group, name="average-parameters")
        flat.div_(world)
        offset = 0
        for p in params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
