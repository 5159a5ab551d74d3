"""Pieces every strategy's step model is built from (each strategy's spec prices its own step with them).

Compute is measured, not modelled: a ComputeProfile is a single-process run's forward, backward and
optimizer seconds at the batch one rank sees (dpkit.analysis.predict measures it). That process had the
machine to itself; N ranks of t threads on c cores share them when N t > c, so a rank computes
`slowest_rank_slowdown` (synchronous strategies: the slowest rank sets the pace) or `oversubscription`
(pipelines: the average share) times slower. Communication is priced by dpkit.cost.model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..workloads import build_model
from .model import HostModel, Link

if TYPE_CHECKING:
    from torch import nn

    from ..config import RunConfig

QUANTITIES = ["step_time_s", "compute_s", "comm_s", "exposed_comm_s", "bubble_s"]


@dataclass(frozen=True)
class ComputeProfile:
    """Median seconds per step of one process training the full model on `batch` samples."""

    batch: int
    forward_s: float
    backward_s: float
    optimizer_s: float
    threads: int


def oversubscription(processes: float, threads: int, cores: int | None = None) -> float:
    """How much slower a rank computes than the profile's lone process: max(1, N t / c)."""
    cores = cores or os.cpu_count() or 1
    return max(1.0, processes * threads / cores)


def slowest_rank_slowdown(processes: int, threads: int, cores: int | None = None) -> float:
    """How much slower the *slowest* of `processes` ranks computes than the profile's lone process:
    ceil(N t / c). The scheduler places whole processes on cores and does not rotate them to even out
    a remainder: measured with 3 ranks on 2 cores, one rank reached the all-reduce after ~1x the
    profile's compute and the two sharing the other core after ~2x, and a synchronous step waits
    for them (N t / c = 1.5 would be the average, not the slowest)."""
    cores = cores or os.cpu_count() or 1
    return float(max(1, math.ceil(processes * threads / cores)))


@dataclass(frozen=True)
class StepFacts:
    """What a step model needs: compute seconds already slowed for the shared host, the model's
    gradient bytes, and the link(s) messages are priced on."""

    t_forward: float
    t_backward: float
    t_optimizer: float
    model: nn.Module
    grads: list[int]  # bytes of each trainable parameter's gradient
    link: Link | HostModel  # collectives: either view
    one: Link  # point-to-point and PS terms: the host's link at this run's process count, or the cluster link

    @property
    def grad_bytes(self) -> float:
        return float(sum(self.grads))


def step_facts(cfg: RunConfig, link: Link | HostModel, profile: ComputeProfile, slowdown: float) -> StepFacts:
    model = build_model(cfg, cfg.seed)
    grads = [p.numel() * p.element_size() for p in model.parameters() if p.requires_grad]
    one = link.link(cfg.num_processes) if isinstance(link, HostModel) else link
    return StepFacts(
        slowdown * profile.forward_s, slowdown * profile.backward_s, slowdown * profile.optimizer_s, model, grads, link, one
    )


def parts(compute: float, comm: float, exposed: float, extra: float = 0.0) -> dict[str, float]:
    """A prediction in RunResult.summary's terms: the step is compute + exposed comm (+ extra serial work)."""
    return {
        "step_time_s": compute + exposed + extra,
        "compute_s": compute,
        "comm_s": comm,
        "exposed_comm_s": exposed,
        "bubble_s": 0.0,
    }
