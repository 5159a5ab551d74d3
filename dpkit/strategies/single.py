"""The baseline every other strategy must match: one process, the whole global batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..cost.model import HostModel, Link
from ..cost.step_model import ComputeProfile, oversubscription, parts, step_facts
from ..workloads import build_model
from .base import RankContext, Strategy, state_on_cpu, trainable
from .spec import StrategySpec, config_error

if TYPE_CHECKING:
    from ..config import RunConfig


class SingleProcess(Strategy):
    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        self.model = build_model(self.cfg, self.cfg.seed).to(ctx.device)
        self.opt = self.make_optimizer(trainable(self.model))

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        return self.accumulate_and_step(self.model, self.opt, x, y), x.shape[0]

    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.model)


class SingleSpec(StrategySpec):
    name = "single"
    parallelism = "none"
    description = "one process (parallelism='none')"

    def roles(self, cfg: RunConfig) -> list[str]:
        return ["single process"]

    def validate(self, cfg: RunConfig) -> None:
        if cfg.world_size != 1:
            raise config_error("world_size", cfg.world_size, "1 when parallelism='none' (single process)")

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        f = step_facts(cfg, model, profile, oversubscription(cfg.num_processes, profile.threads, cores))
        return parts(f.t_forward + f.t_backward + f.t_optimizer, 0.0, 0.0)

    def build(self, ctx: RankContext) -> Strategy:
        return SingleProcess(ctx)


SPEC = SingleSpec()
