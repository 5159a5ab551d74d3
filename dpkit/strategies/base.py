"""What every strategy shares: the rank's context, the optimizer, one micro-batch step, and the layers
around the algorithm: timing (forward, backward and optimizer as compute regions of dpkit.runtime.recorder,
which the rank's waits carve) and memory (read off the tensors a strategy declares it holds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..comm import Comm, Group
from ..runtime.memory import Held, held_by, held_memory
from ..runtime.recorder import Recorder
from ..workloads import loss_fn, shard
from .precision import autocast

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
    #: the name of this rank's compute outside forward, backward and the optimizer step (copies into and out of
    #: communication buffers, bookkeeping): timed_step times the whole step as compute under this name, cut
    #: where the rank waits. None: only the strategy's own compute spans count, the rest of the step is a gap.
    other_compute: str | None = None

    def __init__(self, ctx: RankContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.rec = ctx.recorder
        self._last_grad: dict[int, _LastGradient] = {}

    def timed_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """train_step, as the training loop calls it: inside the compute region `other_compute` (if any)."""
        if self.other_compute is None:
            return self.train_step(step, x, y)
        with self.rec.compute(self.other_compute):
            return self.train_step(step, x, y)

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

    def held_tensors(self) -> Held:
        """The tensors this rank holds, by kind, declared once: memory accounting reads their bytes off them.
        The default: what the attributes named model/module, opt and sync hold; a strategy whose layout differs
        declares its own (sharded data parallelism holds shards, not whole tensors)."""
        return held_by(self)

    def memory_state(self) -> dict[str, int]:
        """Bytes this rank holds, for memory accounting (dpkit.runtime.memory). Keys: params_bytes, grads_bytes,
        optimizer_bytes (its optimizer state tensors), buffers_bytes (flat and gather buffers at their peak),
        each storage counted once, read off held_tensors()."""
        return held_memory(self.held_tensors())

    def close(self) -> None:
        self.ctx.comm.close()

    # -- helpers ----------------------------------------------------------------------------
    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr)
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum)

    def forward_backward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float) -> float:
        """Forward and backward of one micro-batch; the loss is scaled so accumulated grads average. The forward
        runs in cfg.precision (bf16: under autocast; the backward follows the forward's dtypes, outside it)."""
        loss = self.forward(model, x, y)
        self.backward(model, loss * scale)
        return float(loss.detach())

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, name: str = "forward") -> torch.Tensor:
        """model(x) (with targets `y`: the loss), timed as compute named `name` (a pipeline names each micro-batch's),
        in cfg.precision (bf16: under autocast, fp32 master weights)."""
        with self.rec.compute(name), autocast(self.cfg, self.ctx.device):
            out = model(x.to(self.ctx.device))
            return out if y is None else loss_fn(out, y.to(self.ctx.device))

    def backward(self, model: nn.Module, loss: torch.Tensor, grad: torch.Tensor | None = None, name: str = "backward") -> None:
        """loss.backward(grad), timed as compute until the last gradient of `model` is accumulated: whatever
        backward() does after that is waiting (DDP waits there for its buckets' all-reduces), not compute."""
        last = self._last_grad.get(id(model))
        if last is None:  # registered on first use: after the strategy's own gradient hooks, so it fires after them
            last = self._last_grad[id(model)] = _LastGradient(model, self.rec.clock)
        last.at = None
        with self.rec.compute(name):
            torch.autograd.backward(loss, grad)
            if last.at is not None:
                self.rec.computed_until(last.at)

    def optimizer_step(self, opt: torch.optim.Optimizer, zero_grad: bool = True) -> None:
        """One optimizer step, timed as compute; then the gradients are dropped (unless not `zero_grad`)."""
        with self.rec.compute("optimizer"):
            opt.step()
            if zero_grad:
                opt.zero_grad(set_to_none=True)

    def accumulate_and_step(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward/backward over cfg.grad_accum equal micro-batches of (x, y), one optimizer step; mean loss."""
        accum = self.cfg.grad_accum
        losses = [self.forward_backward(model, shard(x, i, accum), shard(y, i, accum), 1.0 / accum) for i in range(accum)]
        self.optimizer_step(opt)
        return sum(losses) / accum


class _LastGradient:
    """When the last of a model's gradients was accumulated in the running backward (a clock mark)."""

    def __init__(self, model: nn.Module, clock: Any) -> None:
        self.clock = clock
        self.at: Any = None
        for p in model.parameters():  # plain tensors only: a sharded parameter (FSDP2's) gets its gradient otherwise
            if p.requires_grad and type(p.data) is torch.Tensor:
                p.register_post_accumulate_grad_hook(self._arrived)

    def _arrived(self, _p: torch.Tensor) -> None:
        self.at = self.clock.mark()


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Parameters that get gradients, each once (a tied weight is one parameter)."""
    return [p for p in model.parameters() if p.requires_grad]


def broadcast_model(ctx: RankContext, model: nn.Module, group: Group | None = None) -> None:
    """Copy the parameters and buffers of the group's first rank to every rank of `group`."""
    src = (group or ctx.comm.world).peer(0)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            ctx.comm.broadcast(t.data, src, group, name="broadcast-model")


def state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
