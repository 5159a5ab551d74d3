"""The spec of the baseline every other strategy must match: one process, the whole global batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...cost.model import HostModel, Link
from ...cost.step_model import ComputeProfile, oversubscription, parts, step_facts
from ..spec import StrategySpec, config_error

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..base import RankContext, Strategy


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
        from ..single import SingleProcess

        return SingleProcess(ctx)


SPEC = SingleSpec()
