"""What every strategy shares: the rank's context, the optimizer, and one micro-batch step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..comm import Comm, Group
from ..runtime.memory import held_by
from ..runtime.recorder import Recorder
from ..workloads import loss_fn, shard

if TYPE_CHECKING:
    from ..config import RunConfig


@dataclass
class RankContext:
    """Everything a strategy needs to know about where it runs."""

    cfg: RunConfig
    rank: int
    num_processes: int
    device: torch.device
    recorder: Recorder
    comm: Comm


class Strategy:
    """One rank's share of a training step. Subclasses set up their model shard in __init__."""

    role = "worker"
    gap_kind = "idle"

    def __init__(self, ctx: RankContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.rec = ctx.recorder

    # -- the interface the training loop calls ----------------------------------------------
    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """Train on the global batch (x, y); return (mean loss over the samples this rank saw, their count)."""
        raise NotImplementedError

    def end_of_step_group(self) -> Group | None:
        """Group to barrier with at the end of a step (timed as idle: waiting for the slowest rank); None
        for no barrier (asynchronous strategies, or a pipeline that ends its step with its own flush)."""
        return self.ctx.comm.world

    def owned_state(self) -> dict[str, torch.Tensor]:
        """The parameters this rank is authoritative for, keyed like the single-process model."""
        return {}

    @staticmethod
    def merge_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        merged: dict[str, torch.Tensor] = {}
        for s in states:
            merged.update(s)
        return merged

    def extra(self) -> dict:
        """Strategy-specific measurements that go into the result (JSON-able)."""
        return {}

    def memory_state(self) -> dict[str, int]:
        """Bytes this rank holds, for memory accounting (dpkit.runtime.memory). Keys: params_bytes, grads_bytes,
        optimizer_bytes (its optimizer state tensors), buffers_bytes (flat and gather buffers at their peak).
        The default counts what the attributes named model/module, opt and sync hold, each storage once;
        a strategy whose layout differs overrides it (sharded data parallelism holds shards, not whole tensors)."""
        return held_by(self)

    def close(self) -> None:
        self.ctx.comm.close()

    # -- helpers ----------------------------------------------------------------------------
    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr)
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum)

    def forward_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float) -> float:
        """Forward and backward of one micro-batch; the loss is scaled so accumulated grads average."""
        with self.rec.span("compute", "forward"):
            loss = loss_fn(model(x.to(self.ctx.device)), y.to(self.ctx.device))
        with self.rec.span("compute", "backward"):
            (loss * scale).backward()
        return float(loss.detach())

    def accumulate_and_step(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward/backward over cfg.grad_accum equal micro-batches of (x, y), one optimizer step; mean loss."""
        accum = self.cfg.grad_accum
        losses = [self.forward_backward(model, shard(x, i, accum), shard(y, i, accum), 1.0 / accum) for i in range(accum)]
        with self.rec.span("compute", "optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        return sum(losses) / accum


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that get gradients, each once (a tied weight is one parameter)."""
    return [p for p in model.parameters() if p.requires_grad]


def state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
