"""Pipeline parallelism: the model's blocks cut into stages, one stage per rank, micro-batches flowing through.

Stage s runs its blocks on micro-batch i when the activation arrives from stage s-1, and its backward
when the gradient arrives from stage s+1. A schedule is just the order of those forward (F) and backward
(B) actions on each stage:

    naive  one batch, no micro-batches: F, B (only one stage works at a time)
    gpipe  F0 .. F(m-1), then B0 .. B(m-1): m micro-batches of activations in flight at the peak
    1f1b   p-s-1 warm-up forwards, then one forward / one backward, then the cool-down backwards:
           at most p-s micro-batches in flight on stage s

Sends are non-blocking (posted, waited for at the end of the step) and receives block, so every
schedule whose order respects the data dependencies runs without deadlock. The time a stage spends
blocked in a receive is recorded as `bubble`: on one host the transfer is a small part of it, the
rest is the stage waiting for its neighbour. The end-of-step flush (waiting for the other stages to
drain) is bubble too, so the measured fraction is comparable to (p-1)/(m+p-1).

Which blocks each stage runs is pipeline_cut.stage_cut, the one cut that validation and the cost and
memory models also use (pipeline_cut.py also holds the checks of a cut and its arithmetic for the cost model).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..comm import Group, Pending
from ..workloads import build_model, count_parameters, shard
from .base import RankContext, Strategy, state_on_cpu, trainable
from .pipeline_cut import boundary_shapes, stage_cut

Action = tuple[str, int]  # ("F" | "B", micro-batch index)


# ---- schedules: the order of actions on one stage ---------------------------------------------
def schedule(kind: str, m: int, p: int, s: int) -> list[Action]:
    """Actions of stage s (of p) over m micro-batches; every stage runs its backwards in the order 0..m-1."""
    if kind == "naive":
        if m != 1:
            raise ValueError(f"the naive schedule runs one batch (m=1), not m={m}")
        return [("F", 0), ("B", 0)]
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if kind == "1f1b":
        warm = min(p - s - 1, m)
        actions = [("F", i) for i in range(warm)]
        for i in range(m - warm):
            actions += [("F", warm + i), ("B", i)]
        return actions + [("B", i) for i in range(m - warm, m)]
    raise ValueError(f"schedule {kind!r} is not allowed: choose 'naive', 'gpipe' or '1f1b'")


def peak_in_flight(actions: list[Action]) -> int:
    """Most micro-batches whose forward is done and backward not yet (their activations are kept)."""
    live = peak = 0
    for kind, _ in actions:
        live += 1 if kind == "F" else -1
        peak = max(peak, live)
    return peak


# ---- one stage --------------------------------------------------------------------------------
class PipelineStage(Strategy):
    """Stage `stage` of a pipeline whose stage k runs on global rank first_rank + k."""

    gap_kind = "bubble"

    def __init__(self, ctx: RankContext, stage: int | None = None, stages: int | None = None, first_rank: int = 0) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.stage = ctx.rank if stage is None else stage
        self.stages = cfg.world_size if stages is None else stages
        self.first, self.last = self.stage == 0, self.stage == self.stages - 1
        self.prev_rank = first_rank + self.stage - 1
        self.next_rank = first_rank + self.stage + 1
        full = build_model(cfg, cfg.seed)  # the single-process init; this stage keeps its blocks only
        self.block_names = stage_cut(cfg, self.stages)[self.stage]
        shapes = boundary_shapes(cfg, full)
        names = [n for n, _ in full.named_children()]
        self.in_shape: tuple[int, ...] = shapes[names[names.index(self.block_names[0]) - 1]] if not self.first else ()
        self.out_shape = shapes[self.block_names[-1]]
        self.model = nn.Sequential(OrderedDict((n, getattr(full, n)) for n in self.block_names)).to(ctx.device)
        self.opt = self.make_optimizer(trainable(self.model))
        self.m = 1 if cfg.schedule == "naive" else cfg.microbatches
        self.actions = schedule(cfg.schedule, self.m, self.stages, self.stage)
        self.peak = 0
        self._sends: list[Pending] = []

    # -- point-to-point through Comm (which stages CUDA tensors through the host under gloo) ------
    def _send(self, t: torch.Tensor, dst: int, what: str) -> None:
        self._sends.append(self.ctx.comm.isend(t, dst, name=f"send {what}"))

    def _recv(self, shape: tuple[int, ...], src: int, what: str) -> torch.Tensor:
        buf = torch.empty(shape, device=self.ctx.device)
        self.ctx.comm.recv(buf, src, name=f"wait for {what}", kind="bubble")  # blocked on a neighbour: bubble
        return buf

    def _finish_sends(self) -> None:
        self.ctx.comm.wait(self._sends, name="send completion")
        self._sends.clear()

    # -- hooks for the hybrid (data-parallel replicas of each stage) ----------------------------
    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def before_backward(self, last: bool) -> None:
        """Called before each micro-batch backward; `last` is the step's final one."""

    def sync_gradients(self) -> None:
        """Called after the last backward, before the optimizer step."""

    # -- one training step -----------------------------------------------------------------------
    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        xs, ys = self.local_batch(x, y)
        m, rows = self.m, xs.shape[0] // self.m
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        losses: list[float] = []
        backwards = 0
        for kind, i in self.actions:  # each action's compute is timed as "F<i>" or "B<i>", as the textbook boxes
            if kind == "F":
                if self.first:
                    inp = shard(xs, i, m)
                else:
                    inp = self._recv((rows, *self.in_shape), self.prev_rank, f"activation {i}").requires_grad_()
                out = self.forward(self.model, inp, shard(ys, i, m) if self.last else None, name=f"F{i}")
                inputs[i], outputs[i] = inp, out
                self.peak = max(self.peak, len(outputs))
                if self.last:
                    losses.append(float(out.detach()))
                else:
                    self._send(out.detach(), self.next_rank, f"activation {i}")
            else:
                backwards += 1
                inp, out = inputs.pop(i), outputs.pop(i)
                grad = None if self.last else self._recv((rows, *self.out_shape), self.next_rank, f"gradient {i}")
                self.before_backward(backwards == m)
                if out.requires_grad:  # False only if this stage and all before it are frozen
                    self.backward(self.model, out / m if self.last else out, grad, name=f"B{i}")
                if not self.first:
                    self._send(inp.grad if inp.grad is not None else torch.zeros_like(inp), self.prev_rank, f"gradient {i}")
        self._finish_sends()
        self.sync_gradients()
        self.optimizer_step(self.opt)
        self.ctx.comm.barrier(kind="bubble", name="pipeline flush")
        return (sum(losses) / m, xs.shape[0]) if self.last else (0.0, 0)

    def end_of_step_group(self) -> Group | None:
        return None  # train_step ends with its own barrier, recorded as the pipeline's flush bubble

    def owned_state(self) -> dict[str, torch.Tensor]:
        return state_on_cpu(self.model)

    def extra(self) -> dict:
        return {
            "stage": self.stage,
            "blocks": self.block_names,
            "params": count_parameters(self.model),
            "microbatches": self.m,
            "peak_in_flight": self.peak,
        }
