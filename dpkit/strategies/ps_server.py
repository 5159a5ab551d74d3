"""A parameter server: owns one shard of the parameters and its optimizer; applies pushes, answers pulls.

Sync, one training-loop step: receive all n gradients, average, update, answer all n pulls.
Async, one training-loop step: apply the next n pushes, whichever workers they come from (so after
cfg.steps steps every worker's cfg.steps pushes are in), answering each pull when the SSP bound allows.
Waiting for pushes is recorded as idle; busy time is updating plus sending parameters.
"""

from __future__ import annotations

import time

import torch

from ..comm import Group
from ..runtime.memory import held_bytes
from ..workloads import build_model
from .base import RankContext, Strategy
from .ps_layout import ShardLayout, flatten


class ParameterServer(Strategy):
    role = "server"

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.group = ctx.comm.host_group()
        self.index = ctx.rank - cfg.world_size
        self.workers = list(range(cfg.world_size))
        self.layout = ShardLayout(build_model(cfg, cfg.seed), cfg.num_servers)  # on the host: servers hold no GPU
        self.params = self.layout.params_of(self.index)
        self.numel = self.layout.numel_of(self.index)
        mine = {id(p) for p in self.params}
        for p in self.layout.params:  # a server keeps its shard only: the others' values are never read here
            if id(p) not in mine:
                p.data = torch.empty(0)
        self.opt = self.make_optimizer(self.params) if self.params else None
        # buffers kept from step to step (fresh ones would page-fault through every byte, every step):
        # one inbox row per worker, the averaged gradient (the parameters' .grad are views of it), the outbox
        n = cfg.world_size
        self.inbox = torch.empty(n, self.numel)
        self.grad = torch.zeros(self.numel)
        offset = 0
        for p in self.params:
            p.grad = self.grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.outbox = torch.empty(self.numel)
        self.bytes_in = self.bytes_out = 0
        self.busy: list[float] = []
        self.version = 0  # updates applied to this shard
        n = cfg.world_size
        self.pushes = [0] * n  # gradients received per worker = that worker's finished steps
        self.pulled_version = [0] * n  # version each worker last pulled (all start from the initial parameters)
        self.pulled_slowest = [0] * n  # the slowest worker's step count at that pull
        self.waiting: list[int] = []  # workers whose pull is held back by max_staleness
        self.updates: list[list[int]] = []  # [worker, worker step, staleness, clock staleness]

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        self._busy_s = 0.0
        if self.params:
            if self.cfg.sync == "ps":
                self._sync_round()
            else:
                for _ in self.workers:
                    self._apply_next_push()
        self.busy.append(self._busy_s)
        return 0.0, 0

    # -- sync ---------------------------------------------------------------------------------
    def _sync_round(self) -> None:
        bufs = list(self.inbox)
        comm = self.ctx.comm
        comm.wait([comm.irecv(b, w, self.group) for w, b in zip(self.workers, bufs, strict=True)], "wait-for-gradients", "idle")
        self.bytes_in += sum(b.numel() * b.element_size() for b in bufs)
        t0 = time.perf_counter()
        with self.rec.span("compute", "average+update"):
            self.grad.copy_(bufs[0])
            for b in bufs[1:]:  # fixed order: same sum, bit for bit, every run
                self.grad += b
            self._update(self.grad.div_(len(bufs)))
        for w in self.workers:
            self.updates.append([w, self.pushes[w], 0, 0])
            self.pushes[w] += 1
        self._busy_s += time.perf_counter() - t0
        self._answer(self.workers)

    # -- async --------------------------------------------------------------------------------
    def _apply_next_push(self) -> None:
        buf = self.inbox[0]
        w = self.ctx.comm.recv(buf, None, self.group, name="wait-for-gradient", kind="idle")  # from any worker
        self.bytes_in += buf.numel() * buf.element_size()
        t0 = time.perf_counter()
        c = self.pushes[w]
        self.updates.append([w, c, self.version - self.pulled_version[w], c - self.pulled_slowest[w]])
        with self.rec.span("compute", "update"):
            self._update(buf.div_(len(self.workers)))  # n pushes move the model as far as one sync step
        self.pushes[w] += 1
        self.waiting.append(w)
        self._busy_s += time.perf_counter() - t0
        self._answer(self._releasable())

    def _releasable(self) -> list[int]:
        """Held pulls the SSP bound now allows (a worker's last pull is never held: nothing computes on it)."""
        slowest, bound, last = min(self.pushes), self.cfg.max_staleness, self.cfg.steps
        ready = [w for w in self.waiting if bound is None or self.pushes[w] == last or self.pushes[w] - slowest <= bound]
        self.waiting = [w for w in self.waiting if w not in ready]
        return ready

    # -- shared -------------------------------------------------------------------------------
    def _update(self, grad: torch.Tensor) -> None:
        """One optimizer step with `grad` (flat) as the shard's gradient; the .grad views read self.grad."""
        if grad is not self.grad:
            self.grad.copy_(grad)
        assert self.opt is not None, "a server with an empty shard never updates"
        self.opt.step()
        self.version += 1

    def _answer(self, workers: list[int]) -> None:
        """Send the current shard to `workers` (their pull receives are already posted), server j starting at
        the j-th of them: were every server to answer the same worker first, that worker's incoming link would
        fill while the others wait (workers stagger their pushes the same way)."""
        if not workers:
            return
        t0 = time.perf_counter()
        flat = flatten(self.params, out=self.outbox)
        comm = self.ctx.comm
        first = self.index % len(workers)
        order = workers[first:] + workers[:first]
        comm.wait([comm.isend(flat, w, self.group, name="answer-pull") for w in order], name="answer-pull")
        slowest = min(self.pushes)
        for w in workers:
            self.pulled_version[w], self.pulled_slowest[w] = self.version, slowest
        self.bytes_out += len(workers) * flat.numel() * flat.element_size()
        self._busy_s += time.perf_counter() - t0

    def end_of_step_group(self) -> Group | None:
        return None if self.cfg.sync == "ps-async" else self.ctx.comm.world

    def owned_state(self) -> dict[str, torch.Tensor]:
        return self.layout.state_of(self.index)

    def memory_state(self) -> dict[str, int]:
        """Its shard, the averaged gradient (the shard's .grad are views of it), its optimizer's state, and the
        inbox (a row per worker) and outbox it keeps from step to step."""
        return held_bytes(self.params, [self.opt], [self.inbox, self.outbox])

    def extra(self) -> dict:
        return {
            "ps_shard": self.index,
            "shard_numel": self.numel,
            "shard_params": [self.layout.names[i] for i in self.layout.shards[self.index]],
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "busy_s": self.busy,
            "updates": self.updates,
        }
