"""The spec of the parameter server (sync 'ps' and async 'ps-async'): k servers on top of the n workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...cost import memory
from ...cost.model import HostModel, Link, ps_time
from ...cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ...workloads import model_layout, trainable_names
from ..spec import DataSplitSpec, Knob, config_error

if TYPE_CHECKING:
    import pandas as pd

    from ...config import RunConfig
    from ..base import RankContext, Strategy

KNOBS: tuple[Knob, ...] = (
    Knob("num_servers", int, 1, "parameter-server ranks (sync ps or ps-async), on top of world_size", minimum=1),
    Knob("max_staleness", int | None, None, "ps-async: the stale-synchronous bound in steps (none: unbounded)"),
    Knob(
        "ps_recovery",
        str,
        "none",
        "a dead server: none (the run fails) | checkpoint (every process restarts from the last checkpoint)"
        " | replicate (a backup process per server holds a current copy, which takes the dead server's place; sync ps)",
        choices=("none", "checkpoint", "replicate"),
    ),
)


class ParameterServerSpec(DataSplitSpec):
    name = "parameter-server"
    parallelism = "data"
    description = "an asynchronous parameter server (parallelism='data', sync='ps-async')"
    exclusive_knobs = {"max_staleness": None, "ps_recovery": "none"}
    knobs = KNOBS

    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == "data" and cfg.sync in ("ps", "ps-async")

    def num_processes(self, cfg: RunConfig) -> int:
        return cfg.world_size + cfg.num_servers * (2 if cfg.ps_recovery == "replicate" else 1)

    def roles(self, cfg: RunConfig) -> list[str]:
        backups = [f"backup server {k}" for k in range(cfg.num_servers)] if cfg.ps_recovery == "replicate" else []
        return (
            [f"worker {r}" for r in range(cfg.world_size)] + [f"parameter server {k}" for k in range(cfg.num_servers)] + backups
        )

    def failure_hint(self, rank: int, role: str) -> str:
        if role.startswith("parameter server"):
            return f"the parameter server (rank {rank}) died: every worker needs it, the single point of failure."
        if role.startswith("backup server"):
            return f"the backup (rank {rank}) died: ps_recovery='replicate' recovers a dead server, not a dead backup."
        return ""

    def validate(self, cfg: RunConfig) -> None:
        if cfg.ps_recovery == "checkpoint" and cfg.checkpoint_every is None:
            raise config_error(
                "ps_recovery", cfg.ps_recovery, "'none' unless checkpoint_every is set (it restarts from a checkpoint)"
            )
        if cfg.ps_recovery == "replicate" and cfg.sync != "ps":
            raise config_error(
                "ps_recovery",
                cfg.ps_recovery,
                "'none' or 'checkpoint' with sync='ps-async' ('replicate' needs sync='ps': an async server's state "
                "depends on the order pushes arrive in, which a backup cannot replay)",
            )
        if cfg.max_staleness is not None and cfg.sync != "ps-async":
            raise config_error(
                "max_staleness", cfg.max_staleness, "None unless parallelism='data' and sync='ps-async' (it bounds async updates)"
            )
        if cfg.num_servers > 1:  # a server owns whole tensors: one past their number would hold an empty shard
            tensors = len(trainable_names(cfg))
            if cfg.num_servers > tensors:
                raise config_error(
                    "num_servers",
                    cfg.num_servers,
                    f"at most {tensors}, the trainable parameter tensors of this {cfg.model} (one shard each)",
                )

    def trains_like_baseline(self, cfg: RunConfig) -> bool:
        return cfg.sync == "ps"

    def label(self, cfg: RunConfig) -> str:
        return f"data/{cfg.sync}/k={cfg.num_servers}"

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """Sync: fwd + bwd + copies (2S + 2S/k, mu) + 2 alpha + 2 max(S, nS/k)/B + the servers' opt/k."""
        if cfg.sync != "ps":
            raise ValueError(f"RunConfig.sync={cfg.sync!r} has no step model: the cost model covers synchronous steps only")
        f = step_facts(cfg, model, profile, slowest_rank_slowdown(cfg.world_size, profile.threads, cores))
        size, k = f.grad_bytes, cfg.num_servers
        # a worker packs its gradients into a flat buffer and unpacks the parameters (2S of copies); a
        # server copies the first gradient into its sum and divides it (2S/k), then steps its optimizer
        copies = (2 * size + 2 * size / k) * f.one.mu
        comm = ps_time(size, cfg.world_size, k, f.one)
        return parts(f.t_forward + f.t_backward + copies, comm, comm, extra=f.t_optimizer / k)

    def predict_memory(self, cfg: RunConfig) -> pd.DataFrame:
        """Workers: the whole model and its gradients, no optimizer, the packed gradients and pulled parameters
        (a copy each of the trained ones); server j: its shard, the averaged gradient, its optimizer's state,
        an inbox row per worker and an outbox (dpkit.cost.memory)."""
        from ..parameter_server.layout import assign_shards  # the servers' shards, as the algorithm cuts them

        trained = memory.params_of(cfg)[1]
        params, grads, _ = memory.whole_model(cfg)
        act = memory.activation_bytes(cfg, model_layout(cfg).blocks, cfg.global_batch // cfg.world_size // cfg.grad_accum)
        ranks = [memory.RankMemory(params, grads, 0.0, act, 2 * grads)] * cfg.world_size
        for shard in assign_shards(trained, cfg.num_servers):
            sizes = [trained[i] for i in shard]
            size = float(memory.VALUE_BYTES * sum(sizes))
            ranks.append(memory.RankMemory(size, size, memory.optimizer_bytes(cfg, sizes), 0.0, (cfg.world_size + 1) * size))
        if cfg.ps_recovery == "replicate":  # a backup per server: its copy, the forwarded gradient, optimizer, inbox
            ranks += [memory.RankMemory(r.params, r.grads, r.optimizer, 0.0, r.params) for r in ranks[cfg.world_size :]]
        return memory.table(ranks, self.roles(cfg))

    def build(self, ctx: RankContext) -> Strategy:
        from ..parameter_server.backup import BackupServer  # the algorithm is imported only when a rank builds it
        from ..parameter_server.server import ParameterServer
        from ..parameter_server.worker import PushPullWorker

        cfg = ctx.cfg
        if ctx.rank >= cfg.world_size + cfg.num_servers:
            return BackupServer(ctx)
        return ParameterServer(ctx) if ctx.rank >= cfg.world_size else PushPullWorker(ctx)


SPEC = ParameterServerSpec()
