"""The workloads the notebooks, panels and demo default to, each chosen for what it teaches on a laptop.

On 2 cores with one rank per core, data parallelism only pays when a step's compute dwarfs the all-reduce:
COMPUTE_BOUND is that case (2 ranks beat 1 on a quiet machine: `dpkit bench scaling` records the ratio);
COMM_BOUND is a small model on an emulated 1 GbE link, where communication decides which strategy wins.
Both are offered in words, so a learner picks the lesson, not a parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import RunConfig


@dataclass(frozen=True)
class Workload:
    """A named configuration and the sentence that says what it shows."""

    key: str
    words: str
    config: RunConfig


COMPUTE_BOUND = Workload(
    "compute",
    "a large model: compute dominates",
    RunConfig(parallelism="data", model="mlp", hidden=128, layers=2, global_batch=960, steps=4, warmup=1, grad_sync="bucketed"),
)
COMM_BOUND = Workload(
    "comm",
    "a small model on 1 GbE: communication dominates",
    RunConfig(parallelism="data", model="mlp", hidden=64, layers=2, global_batch=48, steps=4, warmup=1, link="1GbE"),
)
WORKLOADS = {w.key: w for w in (COMPUTE_BOUND, COMM_BOUND)}
