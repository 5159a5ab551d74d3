"""The baseline every other strategy must match: one process, the whole global batch."""

from __future__ import annotations

import torch

from ..workloads import build_model
from .base import RankContext, Strategy, state_on_cpu, trainable


class SingleProcess(Strategy):
    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        self.model = build_model(self.cfg, self.cfg.seed).to(ctx.device)
        self.opt = self.make_optimizer(trainable(self.model))

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        return self.accumulate_and_step(self.model, self.opt, x, y), x.shape[0]

    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.model)
