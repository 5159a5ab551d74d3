"""Parameter server: workers push gradients to dedicated server ranks and pull fresh parameters back.

Layout: `world_size` counts the workers (ranks 0..n-1); the `num_servers` = k servers come on top
(ranks n..n+k-1). The trainable parameters are split into k shards, whole tensors, balanced by size
(greedy: largest tensor to the lightest shard). Every worker and server builds the model from
`cfg.seed`, the single-process initialisation, so they start equal; each server keeps its shard and
an optimizer for it, and returns that shard as its part of the final state dict.

One worker step: forward/backward on its slice of the global batch, push each shard's gradient to
that shard's server, pull the shard back. Messages go over send/recv on a gloo group (host memory,
as classic parameter servers used TCP; on GPU runs the gradients are copied to the host).

- sync ("ps"): a server waits for all n gradients, averages them (in worker order, so runs are
  reproducible), steps its optimizer and answers every pull: the same parameters as single-process
  training on the global batch.
- async ("ps-async"): a server applies each gradient as it arrives, divided by n (so n pushes move
  the model as far as one sync step), and answers that worker's pull with its current parameters. Each update records its `staleness`: the
  updates this server applied between that worker's pull and its push (n-1 when workers move in
  lockstep). `max_staleness` = s is the stale-synchronous-parallel bound, counted in steps (clocks):
  a worker that has finished c steps gets the parameters for step c only once every worker has
  finished c - s steps, so it waits, not the others. Each update records that `clock_staleness`
  (c minus the slowest worker's step count when it pulled; always <= s). In update units this
  bounds staleness by (n-1)(2s+1). Servers only see step counts, so the bound needs no extra messages
  and k servers enforcing it independently cannot deadlock: the slowest worker is never held.

Failure: the servers are a single point of failure. If one dies the workers' pulls fail, and run()
raises an error naming the parameter server's rank. If an async worker dies the run fails too (the
servers would wait for its pushes forever), naming that worker: dpkit does not continue without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..cost import memory
from ..cost.model import HostModel, Link, ps_time
from ..cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ..workloads import model_layout, trainable_names
from .base import RankContext, Strategy
from .ps_layout import assign_shards
from .ps_server import ParameterServer
from .ps_worker import PushPullWorker
from .spec import DataSplitSpec, config_error

if TYPE_CHECKING:
    import pandas as pd

    from ..config import RunConfig


class ParameterServerSpec(DataSplitSpec):
    name = "parameter-server"
    parallelism = "data"
    description = "an asynchronous parameter server (parallelism='data', sync='ps-async')"
    exclusive_knobs = {"max_staleness": None}

    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == "data" and cfg.sync in ("ps", "ps-async")

    def num_processes(self, cfg: RunConfig) -> int:
        return cfg.world_size + cfg.num_servers

    def roles(self, cfg: RunConfig) -> list[str]:
        return [f"worker {r}" for r in range(cfg.world_size)] + [f"parameter server {k}" for k in range(cfg.num_servers)]

    def failure_hint(self, rank: int, role: str) -> str:
        if role.startswith("parameter server"):
            return f"the parameter server (rank {rank}) died: every worker needs it, the single point of failure."
        return ""

    def validate(self, cfg: RunConfig) -> None:
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
        trained = memory.params_of(cfg)[1]
        params, grads, _ = memory.whole_model(cfg)
        act = memory.activation_bytes(cfg, model_layout(cfg).blocks, cfg.global_batch // cfg.world_size // cfg.grad_accum)
        ranks = [memory.RankMemory(params, grads, 0.0, act, 2 * grads)] * cfg.world_size
        for shard in assign_shards(trained, cfg.num_servers):
            sizes = [trained[i] for i in shard]
            size = float(memory.VALUE_BYTES * sum(sizes))
            ranks.append(memory.RankMemory(size, size, memory.optimizer_bytes(cfg, sizes), 0.0, (cfg.world_size + 1) * size))
        return memory.table(ranks, self.roles(cfg))

    def build(self, ctx: RankContext) -> Strategy:
        return ParameterServer(ctx) if ctx.rank >= ctx.cfg.world_size else PushPullWorker(ctx)


SPEC = ParameterServerSpec()
