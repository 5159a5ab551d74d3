"""StrategySpec: everything the rest of dpkit may know about a strategy, asked of it instead of testing names.

Config validation, the launcher's process count and role names, result summaries, the cost model's
predictions and the notebook panels all ask the spec of the strategy a RunConfig selects
(`dpkit.strategies.registry.spec_for`). Each strategy's spec lives in dpkit/strategies/specs/, apart from
its algorithm, which build() imports only when a rank builds it; a spec declares its own knobs (`Knob`), the
RunConfig fields only it brings, and config.py, its checks and the CLI learn them from there. Adding a
strategy means one spec module and one line in the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..cost import memory

if TYPE_CHECKING:
    import pandas as pd

    from ..config import RunConfig
    from .base import RankContext, Strategy


def config_error(field_name: str, value: Any, allowed: str) -> ValueError:
    """The one shape of a bad-value error: the field, the value, and what is allowed."""
    return ValueError(f"RunConfig.{field_name}={value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class Knob:
    """A RunConfig field that a strategy brings: its name, type, default, help line and allowed values.

    RunConfig gets one field per knob of every registered spec (dpkit/config.py), `dpkit run` one option,
    and RunConfig's checks the allowed values below, so a bad value fails before any process starts with
    "RunConfig.<name>=<value> is not allowed: ...". Checks that need other fields go in the spec's validate().
    """

    name: str
    #: what RunConfig annotates the field with: int, float, str, bool, `int | None`, `tuple[int, ...]`
    type: Any
    default: Any
    #: one line for `dpkit run --help` and the notebook panels
    help: str
    #: a str knob's allowed values ("choose one of ...")
    choices: tuple[Any, ...] = ()
    #: an int knob's lowest value
    minimum: int = 0
    #: a float knob's range in words ("a finite number of MiB > 0"), or what a tuple knob holds
    allowed: str = ""
    #: a float knob's range as a test (every float is also finite)
    check: Callable[[Any], bool] | None = None


#: what defines the training and how it is measured; every other field is left at its default in the baseline
BASELINE_FIELDS = (
    "global_batch", "steps", "warmup", "seed", "model", "hidden", "layers", "seq_len", "freeze", "tie_weights",
    "optimizer", "lr", "momentum", "grad_accum", "device", "backend", "threads_per_rank", "gloo_loop", "timeout_s",
    "eval_every", "target_accuracy", "lr_scaling", "base_batch", "warmup_steps",
)  # fmt: skip


def baseline_config(cfg: RunConfig) -> RunConfig:
    """The single-process run with the same model, data, global batch, seed and optimizer: what every
    strategy must train exactly like, and what speedup divides by. Built from the training fields only,
    so knobs of other strategies, stragglers and fault injection never leak into it, and configs that
    differ only in how they parallelise share one baseline."""
    return type(cfg)(parallelism="none", world_size=1, **{name: getattr(cfg, name) for name in BASELINE_FIELDS})


class StrategySpec:
    """A strategy's description. Subclasses override what differs from plain one-rank-per-process training."""

    name: str = ""
    parallelism: str = ""
    description: str = ""
    #: fields only this strategy uses, whose non-default values are an error elsewhere (field -> default)
    exclusive_knobs: dict[str, Any] = {}
    #: values of shared fields only this strategy accepts, an error elsewhere (field -> values), e.g. grad_sync 'fsdp'
    exclusive_values: dict[str, tuple[Any, ...]] = {}
    #: the RunConfig fields this strategy brings (other strategies may read them, e.g. hybrid reads grad_sync)
    knobs: tuple[Knob, ...] = ()

    # ---- which configs, which processes ----------------------------------------------------
    def selects(self, cfg: RunConfig) -> bool:
        return cfg.parallelism == self.parallelism

    def num_processes(self, cfg: RunConfig) -> int:
        """Processes the launcher starts (training ranks plus any helpers such as parameter servers)."""
        return cfg.world_size

    def training_ranks(self, cfg: RunConfig) -> list[int]:
        """Ranks that compute forward/backward: what per-rank summaries average over."""
        return list(range(cfg.world_size))

    def roles(self, cfg: RunConfig) -> list[str]:
        """A name for every process ('worker 1', 'stage 0', 'parameter server 0'), for errors and plots."""
        return [f"worker {r}" for r in range(cfg.world_size)]

    def failure_hint(self, rank: int, role: str) -> str:
        """What the death of process `rank` (`role`) means for the run, said before the traceback ('' if nothing special)."""
        return ""

    # ---- validation and batch arithmetic -----------------------------------------------------
    def validate(self, cfg: RunConfig) -> None:
        """Raise ValueError (config_error) for a bad value of this strategy's own knobs."""

    def batch_split(self, cfg: RunConfig) -> tuple[int, str]:
        """(how many equal shards the global batch is cut into, how to say it): it must divide the batch."""
        return cfg.grad_accum, f"grad_accum={cfg.grad_accum}"

    def stages(self, cfg: RunConfig) -> int:
        """Pipeline stages a sample passes through (1: no pipeline)."""
        return 1

    def microbatches(self, cfg: RunConfig) -> int:
        """Micro-batches a pipeline step is cut into (1 when there is no pipeline or the schedule is naive)."""
        return 1

    def expected_bubble(self, cfg: RunConfig) -> float:
        """(p-1)/(m+p-1) for a pipeline (docs/formulas.md); NaN where there is no pipeline."""
        p, m = self.stages(cfg), self.microbatches(cfg)
        return (p - 1) / (m + p - 1) if p > 1 else float("nan")

    def baseline(self, cfg: RunConfig) -> RunConfig:
        return baseline_config(cfg)

    def trains_like_baseline(self, cfg: RunConfig) -> bool:
        """Whether this run must equal its single-process baseline step by step (every synchronous strategy
        does; an asynchronous parameter server changes what is learned, and the kit shows how)."""
        return True

    # ---- cost model hooks --------------------------------------------------------------------------
    def profile_batch(self, cfg: RunConfig) -> int:
        """Samples one rank pushes through the full model per forward: the compute profile to measure."""
        return cfg.global_batch

    def label(self, cfg: RunConfig) -> str:
        """A short name for tables and plot legends ('data/allreduce/bucketed/ring')."""
        return self.name

    def predict(self, cfg: RunConfig, model: Any, profile: Any, cores: int | None = None) -> dict[str, float]:
        """The cost model's step time and its parts (dpkit.cost.step_model); `model` is a Link or HostModel."""
        raise ValueError(f"the cost model has no step model for {self.label(cfg)}")

    def predict_memory(self, cfg: RunConfig) -> pd.DataFrame:
        """The memory model's bytes per process (dpkit.cost.memory): rank, role and the mem_* fields. Default:
        every rank holds the whole model (ZeRO stage cfg.zero_stage shards it over the ranks) with its gradient
        sync's buffers, and runs profile_batch samples in grad_accum micro-steps; other layouts override it."""
        rank = memory.replicated(cfg, cfg.world_size, self.profile_batch(cfg) // cfg.grad_accum)
        return memory.table([rank] * self.num_processes(cfg), self.roles(cfg))

    # ---- the rank side -----------------------------------------------------------------------------
    def build(self, ctx: RankContext) -> Strategy:
        """The rank-side strategy: a spec imports its algorithm module here, never at module level."""
        raise NotImplementedError(f"strategy {self.name!r} has no implementation")


class DataSplitSpec(StrategySpec):
    """A strategy whose training ranks each take an equal slice of the global batch (data parallelism in all its
    forms: all-reduce, parameter server, sharded), further cut into grad_accum micro-steps."""

    def batch_split(self, cfg: RunConfig) -> tuple[int, str]:
        return cfg.world_size * cfg.grad_accum, f"world_size*grad_accum={cfg.world_size}*{cfg.grad_accum}"

    def profile_batch(self, cfg: RunConfig) -> int:
        return cfg.global_batch // cfg.world_size
