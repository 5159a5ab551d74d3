"""The spec of tensor parallelism (Megatron-LM): every layer's weight matrices split across the ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...cost import memory
from ...cost.model import HostModel, Link, tensor_parallel_comm_time
from ...cost.step_model import ComputeProfile, parts, slowest_rank_slowdown, step_facts
from ...workloads import Attention, FeedForward, model_layout, trainable_names
from ..spec import StrategySpec, config_error

if TYPE_CHECKING:
    import pandas as pd

    from ...config import RunConfig
    from ..base import RankContext, Strategy


class TensorParallelSpec(StrategySpec):
    name = "tensor"
    parallelism = "tensor"
    description = "tensor parallelism (parallelism='tensor')"

    def roles(self, cfg: RunConfig) -> list[str]:
        return [f"tensor rank {r}" for r in range(cfg.world_size)]

    def validate(self, cfg: RunConfig) -> None:
        tp, hidden = cfg.world_size, cfg.model_hidden
        if cfg.model == "cnn":
            raise config_error("model", cfg.model, "'mlp' or 'transformer' with parallelism='tensor'")
        if cfg.model == "transformer" and 4 % tp:
            raise config_error("world_size", tp, "1, 2 or 4 for the transformer's 4 attention heads")
        width = 4 if cfg.model == "transformer" else hidden * 4
        if width % tp or hidden % tp:
            raise config_error("hidden", hidden, f"a size divisible by the tensor-parallel degree world_size={tp}")

    def predict(
        self, cfg: RunConfig, model: Link | HostModel, profile: ComputeProfile, cores: int | None = None
    ) -> dict[str, float]:
        """(fwd + bwd + opt)/tp + 2 all-reduces of the activations per parallel block."""
        f = step_facts(cfg, model, profile, slowest_rank_slowdown(cfg.world_size, profile.threads, cores))
        blocks = sum(1 for m in f.model.modules() if isinstance(m, (FeedForward, Attention)))
        act = 4.0 * cfg.global_batch * cfg.model_hidden * (cfg.seq_len if cfg.model == "transformer" else 1)
        comm = tensor_parallel_comm_time(act, cfg.world_size, 2 * blocks, model, cfg.allreduce_algo)
        return parts((f.t_forward + f.t_backward + f.t_optimizer) / cfg.world_size, comm, comm)

    def predict_memory(self, cfg: RunConfig) -> pd.DataFrame:
        """Each rank: the split matrices / t (column-parallel q, k, v and up with their biases, row-parallel
        proj and down weights), the rest whole; the whole batch's activations, the wide ones / t (dpkit.cost.memory)."""
        from ..tensor_parallel import TP_SPLIT  # the parameters the algorithm splits

        t, layout, trained = cfg.world_size, model_layout(cfg), set(trainable_names(cfg))
        sizes = [(name, n // t if name.endswith(TP_SPLIT) else n) for name, n in layout.params]
        mine = [n for name, n in sizes if name in trained]
        act = memory.activation_bytes(cfg, layout.blocks, cfg.global_batch // cfg.grad_accum, tp=t)
        params, grads = float(memory.VALUE_BYTES * sum(n for _, n in sizes)), float(memory.VALUE_BYTES * sum(mine))
        rank = memory.RankMemory(params, grads, memory.optimizer_bytes(cfg, mine), act)
        return memory.table([rank] * cfg.world_size, self.roles(cfg))

    def build(self, ctx: RankContext) -> Strategy:
        from ..tensor_parallel import TensorParallel

        return TensorParallel(ctx)


SPEC = TensorParallelSpec()
