"""The spec of data x pipeline: `data_parallel_size` replicas of a pipeline, on a 2-D grid of ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec import Knob, config_error
from .pipeline import PipelineSpec

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..base import RankContext, Strategy

KNOBS: tuple[Knob, ...] = (Knob("data_parallel_size", int, 2, "pipeline replicas (parallelism hybrid)", minimum=1),)


class HybridSpec(PipelineSpec):
    name = "hybrid"
    parallelism = "hybrid"
    description = "data x pipeline (parallelism='hybrid')"
    knobs = KNOBS

    def stages(self, cfg: RunConfig) -> int:
        return cfg.world_size // cfg.data_parallel_size

    def replicas(self, cfg: RunConfig) -> int:
        return cfg.data_parallel_size

    def roles(self, cfg: RunConfig) -> list[str]:
        stages = self.stages(cfg)
        return [f"replica {r // stages} stage {r % stages}" for r in range(cfg.world_size)]

    def validate(self, cfg: RunConfig) -> None:
        if cfg.world_size % cfg.data_parallel_size:
            raise config_error("data_parallel_size", cfg.data_parallel_size, f"a divisor of world_size={cfg.world_size}")
        from ..pipeline_cut import validate_stages  # where the algorithm can cut the model

        validate_stages(cfg, self.stages(cfg))
        if cfg.grad_sync == "ddp":
            raise config_error("grad_sync", cfg.grad_sync, "'per-tensor', 'flat' or 'bucketed' with parallelism='hybrid'")

    def batch_split(self, cfg: RunConfig) -> tuple[int, str]:
        m, d = self.microbatches(cfg), cfg.data_parallel_size
        return d * m, f"data_parallel_size*microbatches={d}*{m}"

    def build(self, ctx: RankContext) -> Strategy:
        from ..hybrid import HybridStage

        return HybridStage(ctx)


SPEC = HybridSpec()
