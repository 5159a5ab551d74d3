"""The spec of a pipeline: stages, micro-batches, schedules (GPipe, 1F1B), the bubble."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...cost import memory
from ...cost.model import HostModel, Link, bubble_fraction, comm_time, pipeline_p2p_time, pipeline_step_time
from ...cost.step_model import ComputeProfile, oversubscription, parts, step_facts
from ..spec import Knob, StrategySpec

if TYPE_CHECKING:
    import pandas as pd

    from ...config import RunConfig
    from ..base import RankContext, Strategy

SCHEDULES = ("naive", "gpipe", "1f1b")

KNOBS: tuple[Knob, ...] = (
    Knob("schedule", str, "1f1b", "pipeline schedule: " + " | ".join(SCHEDULES), choices=SCHEDULES),
    Knob("microbatches", int, 4, "micro-batches per pipeline step", minimum=1),
    Knob(
        "stage_layers",
        tuple[int, ...],
        (),
        "blocks per pipeline stage, comma-separated (empty: balanced by parameter count)",
        allowed="a tuple of block counts per pipeline stage (integers >= 1) such as (3, 3)",
    ),
)


class PipelineSpec(StrategySpec):
    name = "pipeline"
    parallelism = "pipeline"
    description = "a pipeline (parallelism='pipeline')"
    knobs = KNOBS

    def stages(self, cfg: RunConfig) -> int:
        return cfg.world_size

    def replicas(self, cfg: RunConfig) -> int:
        """Copies of the pipeline that train on slices of the batch (1 here; the hybrid has more)."""
        return 1

    def microbatches(self, cfg: RunConfig) -> int:
        return 1 if cfg.schedule == "naive" else cfg.microbatches

    def roles(self, cfg: RunConfig) -> list[str]:
        return [f"stage {r}" for r in range(cfg.world_size)]

    def validate(self, cfg: RunConfig) -> None:
        from ..pipeline_cut import validate_stages  # where the algorithm can cut the model

        validate_stages(cfg, self.stages(cfg))

    def batch_split(self, cfg: RunConfig) -> tuple[int, str]:
        m = self.microbatches(cfg)
        return m, f"microbatches={m}"

    def profile_batch(self, cfg: RunConfig) -> int:
        return cfg.global_batch // (self.replicas(cfg) * self.microbatches(cfg))

    def label(self, cfg: RunConfig) -> str:
        return f"{cfg.parallelism}/{cfg.schedule}/m={cfg.microbatches}"

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """(m+p-1)(t_f + t_b + 2 boundary messages) of the slowest stage + its optimizer; with replicas,
        each stage's gradients all-reduced over them. A pipeline's stages hand work along, so the average
        share of the cores sets the pace: the stages busy outside the bubble, N (1 - bubble)."""
        from ..pipeline_cut import activation_bytes, stage_shares  # the stage cut the algorithm makes

        p, d, m = self.stages(cfg), self.replicas(cfg), self.microbatches(cfg)
        busy = float(cfg.num_processes)
        if cfg.schedule != "naive":
            busy *= 1 - bubble_fraction(p, cfg.microbatches)  # stages idle in the bubble leave their core to others
        f = step_facts(cfg, model, profile, oversubscription(busy, profile.threads, cores))
        shares, blocks = stage_shares(cfg, f.model, p)
        share = max(shares)
        act = activation_bytes(cfg, f.model, blocks, self.profile_batch(cfg))
        step = pipeline_step_time(share * f.t_forward, share * f.t_backward, p, m, act, f.one)
        comm = 2 * m * pipeline_p2p_time(act, f.one) if p > 1 else 0.0
        sync = comm_time(cfg.allreduce_algo, share * f.grad_bytes, d, model) if d > 1 else 0.0
        out = parts(m * share * (f.t_forward + f.t_backward) + share * f.t_optimizer, comm + sync, sync)
        out["step_time_s"] = step + share * f.t_optimizer + sync
        out["bubble_s"] = bubble_fraction(p, m) * step
        return out

    def predict_memory(self, cfg: RunConfig) -> pd.DataFrame:
        """Each stage its blocks' parameters, gradients and optimizer state, and its blocks' activations for one
        micro-batch times the micro-batches its schedule keeps in flight (GPipe m, 1F1B at most p-s); with
        replicas, its gradient sync's buffers (dpkit.cost.memory)."""
        from ..pipeline import peak_in_flight, schedule  # as the algorithm runs it
        from ..pipeline_cut import stage_cut  # as the algorithm cuts it

        p, d, m = self.stages(cfg), self.replicas(cfg), self.microbatches(cfg)
        stages = []
        for s, names in enumerate(stage_cut(cfg, p)):
            params, grads, state = memory.whole_model(cfg, names)
            in_flight = peak_in_flight(schedule(cfg.schedule, m, p, s))
            act = memory.activation_bytes(cfg, names, cfg.global_batch // (d * m), in_flight=in_flight)
            buffers = memory.sync_buffers(cfg, [grads], d, memory.params_of(cfg, names)[1])
            stages.append(memory.RankMemory(params, grads, state, act, buffers))
        return memory.table([stages[r % p] for r in range(cfg.world_size)], self.roles(cfg))

    def build(self, ctx: RankContext) -> Strategy:
        from ..pipeline import PipelineStage

        return PipelineStage(ctx)


SPEC = PipelineSpec()
