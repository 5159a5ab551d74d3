"""The spec of sharded data parallelism (ZeRO stages 1-3 and torch FSDP2)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...comm.algorithms import shard_algo
from ...cost.model import HostModel, Link, shard_collective_time
from ...cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ..spec import DataSplitSpec, Knob, config_error

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..base import RankContext, Strategy

KNOBS: tuple[Knob, ...] = (
    Knob(
        "zero_stage",
        int,
        0,
        "sharded data parallelism (ZeRO, sync allreduce): 0 none, 1 optimizer state, 2 + gradients, 3 + parameters",
    ),
)


class ShardedDataParallelSpec(DataSplitSpec):
    name = "data-zero"
    parallelism = "data"
    description = "sharded data parallelism, ZeRO (parallelism='data', sync='allreduce', zero_stage=1, 2 or 3)"
    exclusive_knobs = {"zero_stage": 0}
    exclusive_values = {"grad_sync": ("fsdp",)}
    knobs = KNOBS

    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == "data" and cfg.sync == "allreduce" and cfg.zero_stage != 0

    def validate(self, cfg: RunConfig) -> None:
        if cfg.zero_stage not in (1, 2, 3):
            raise config_error(
                "zero_stage",
                cfg.zero_stage,
                "0 (plain data parallelism), 1 (optimizer state), 2 (+ gradients) or 3 (+ parameters)",
            )
        if cfg.grad_sync == "fsdp" and cfg.zero_stage != 3:
            raise config_error(
                "grad_sync",
                cfg.grad_sync,
                f"'flat' or 'bucketed' with zero_stage={cfg.zero_stage} ('fsdp', torch FSDP2, only with zero_stage=3)",
            )
        if cfg.grad_sync not in ("flat", "bucketed", "fsdp"):
            raise config_error(
                "grad_sync", cfg.grad_sync, "'flat' or 'bucketed' with zero_stage > 0 (or 'fsdp', torch FSDP2, with zero_stage=3)"
            )

    def label(self, cfg: RunConfig) -> str:
        algo = "fsdp2" if cfg.grad_sync == "fsdp" else cfg.grad_sync
        return f"data/zero{cfg.zero_stage}/{algo}/{shard_algo(cfg.allreduce_algo)}"

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """fwd + bwd + the optimizer on 1/n of the parameters + every unit's reduce-scatter and all-gather
        (stage 3: one more all-gather). grad_sync='flat': all of it exposed. 'bucketed' and 'fsdp': the
        reduce-scatters (and stage 3's prefetched gathers) hide behind the compute they overlap, except
        the first gather of each pass; on one host whose cores are all computing nothing hides (as for
        data parallelism: there a collective is CPU work that takes turns with the compute)."""
        from ..zero.layout import plan_units  # the units the algorithm gathers

        n, stage, algo = cfg.world_size, cfg.zero_stage, shard_algo(cfg.allreduce_algo)
        f = step_facts(cfg, model, profile, slowest_rank_slowdown(n, profile.threads, cores))
        units = [4 * (-(-sum(p.numel() for p in ps) // n) * n) for _, ps in plan_units(f.model, stage, "bucketed", cfg.bucket_mb)]
        if cfg.grad_sync == "flat" and stage < 3:
            units = [sum(units)]  # one unit: the whole model

        def t(kind: str, size: float) -> float:
            return shard_collective_time(kind, size, n, model, algo)

        rs, ag = [t("reduce-scatter", u) for u in units], [t("all-gather", u) for u in units]
        copies = f.grad_bytes * f.one.mu if stage >= 2 else 0.0  # gradients copied into the units' buffers
        compute = f.t_forward + f.t_backward + f.t_optimizer / n + copies
        comm = sum(rs) + sum(ag) * (2 if stage == 3 else 1)
        busy_host = isinstance(model, HostModel) and n * profile.threads >= (cores or os.cpu_count() or 1)
        if cfg.grad_sync == "flat" or busy_host or n == 1:
            return parts(compute, comm, comm)
        if stage < 3:  # reduce-scatters behind the backward, all-gathers after the optimizer
            exposed = max(0.0, sum(rs) - f.t_backward) + sum(ag)
        else:  # each pass waits for its first gather; the rest runs behind that pass's compute
            exposed = ag[0] + max(0.0, sum(ag[1:]) - f.t_forward) + ag[-1] + max(0.0, sum(ag[:-1]) + sum(rs) - f.t_backward)
        return parts(compute, comm, min(comm, exposed))

    def build(self, ctx: RankContext) -> Strategy:
        if ctx.cfg.grad_sync == "fsdp":
            from ..zero.fsdp2 import FSDP2

            return FSDP2(ctx)
        from ..zero.stage1 import ZeRO1
        from ..zero.stage2 import ZeRO2
        from ..zero.stage3 import ZeRO3

        return {1: ZeRO1, 2: ZeRO2, 3: ZeRO3}[ctx.cfg.zero_stage](ctx)


SPEC = ShardedDataParallelSpec()
