"""grad_sync='fsdp': torch's FSDP2 (`fully_shard`) in place of the hand-written ZeRO-3, its all-gathers and
reduce-scatters through Comm (dpkit.comm.fsdp), so they are timed and counted like every other message."""

from __future__ import annotations

import torch
from torch import nn

from ...runtime.memory import Held
from ...workloads import build_model, shard
from ..base import RankContext, Strategy, broadcast_model, trainable


def fsdp2_buffer_bytes(model: nn.Module) -> int:
    """FSDP2's buffers are its own, so they are priced, not read off: the largest unit whole, three times (its
    gathered parameters, the next unit prefetched, its whole gradient before the reduce-scatter), which is
    what dpkit's ZeRO-3 holds at its peak."""
    units = [sum(p.numel() * p.element_size() for p in block.parameters()) for block in model.children()]
    return 3 * max(units, default=0)


class FSDP2(Strategy):
    """ZeRO-3 by torch: FSDP2 shards each block, gathers it before use and reduce-scatters its gradients."""

    other_compute = "gradient copies"

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        from ...comm import fsdp  # here, not at the top: torch's FSDP2 takes seconds to import, and only this needs it

        self.fsdp = fsdp
        self.world, self.index = ctx.comm.world.size, ctx.comm.world.me
        self.module = build_model(self.cfg, self.cfg.seed + ctx.rank).to(ctx.device)
        broadcast_model(ctx, self.module)  # ranks start from different seeds: the broadcast must align them
        self.model = fsdp.shard_blocks(self.module, ctx.comm)
        self.opt = self.make_optimizer(trainable(self.model))

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        accum = self.cfg.grad_accum
        xs, ys = shard(x, self.index, self.world), shard(y, self.index, self.world)
        losses = [self.forward_backward(self.model, shard(xs, i, accum), shard(ys, i, accum), 1.0 / accum) for i in range(accum)]
        self.optimizer_step(self.opt, zero_grad=False)
        self.opt.zero_grad(set_to_none=False)  # the gradient shards are kept from step to step, as ZeRO-3's
        return sum(losses) / accum, xs.shape[0]

    def owned_state(self) -> dict[str, torch.Tensor]:
        state = self.fsdp.full_state_dict(self.model)  # a collective: every rank takes part
        return state if self.ctx.rank == 0 else {}

    def held_tensors(self) -> Held:
        """This rank's parts of the parameters (frozen ones too: FSDP2 shards them), of their gradients and
        of the optimizer's state; FSDP2's own buffers priced (fsdp2_buffer_bytes)."""
        return Held(list(self.model.parameters()), None, [self.opt], [], fsdp2_buffer_bytes(self.model))

    def extra(self) -> dict:
        return {"memory": self.memory_state()}
