"""A parameter server: owns one shard of the parameters and its optimizer; applies pushes, answers pulls.

Sync, one training-loop step: receive all n gradients, average them, update once, answer all n pulls.
Async, one training-loop step: apply the next n pushes, whichever workers they come from (so after
cfg.steps steps every worker's cfg.steps pushes are in), answering each pull when the SSP bound allows.

Clocks, the SSP bound's unit: a worker's clock is the number of gradients it has pushed here; the
parameters a server sends carry the slowest worker's clock (every update of an earlier step is in them).

ps_recovery='replicate' (sync only): the averaged gradient goes to the shard's backup (backup.py) before the
server applies it and answers any pull, so no worker ever sees parameters the backup does not have.
A step whose update is in already (a run relaunched from a hand-over, recovery.py) is answered, not applied again.
"""

from __future__ import annotations

import torch

from ...buffers import FlatBuffer
from ...comm import Group
from ...runtime.memory import Held
from ...workloads import build_model
from ..base import RankContext, Strategy
from .layout import ShardLayout, backup_rank, grad_views, shard_of
from .traffic import bytes_sent, bytes_sent_as

FORWARD = "forward update to backup"  # the timeline name of replication (ps_recovery='replicate')


class ParameterServer(Strategy):
    role = "server"
    other_compute = "average and pack"  # summing the pushed gradients, packing the parameters to answer with

    def __init__(self, ctx: RankContext) -> None:
        super().__init__(ctx)
        cfg, n = self.cfg, self.cfg.world_size
        self.group = ctx.comm.host_group()
        self.index = shard_of(cfg, ctx.rank)
        self.backup = backup_rank(cfg, self.index) if cfg.ps_recovery == "replicate" else None
        self.workers = list(range(n))
        self.layout = ShardLayout(build_model(cfg, cfg.seed), cfg.num_servers)  # on the host: servers hold no GPU
        self.params = self.layout.keep_only(self.index)
        self.opt = self.make_optimizer(self.params) if self.params else None
        # buffers kept from step to step (fresh ones would page-fault through every byte, every step):
        # one inbox row per worker, the averaged gradient (the parameters' .grad are views of it), the outbox
        self.inbox = torch.empty(n, self.layout.numel_of(self.index))
        self.grad = grad_views(self.params)
        self.outbox = FlatBuffer(self.params)
        self.version = 0  # updates applied to this shard
        self.pushes = [0] * n  # gradients received per worker: that worker's clock
        self.pulled_clock = [0] * n  # clock of the parameters each worker last pulled (all start from step 0's)
        self.pulled_version = [0] * n  # version each worker last pulled
        self.held: list[int] = []  # workers whose pull the SSP bound holds back
        self.staleness: list[tuple[int, int, int, int]] = []  # per update: step, worker, in steps, in updates

    def train_step(self, step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        if self.params:
            if self.cfg.sync == "ps":
                self._sync_round(step)
            else:
                for _ in self.workers:
                    self._apply_next_push()
        return 0.0, 0

    def checkpoint_extra(self) -> dict:
        """The clocks a checkpoint keeps beside the shard and its optimizer (dpkit.runtime.checkpoint)."""
        return {k: getattr(self, k) for k in ("version", "pushes", "pulled_clock", "pulled_version", "held", "staleness")}

    def load_checkpoint_extra(self, state: dict) -> None:
        self.__dict__.update(state)

    # -- sync ---------------------------------------------------------------------------------
    def _sync_round(self, step: int) -> None:
        comm = self.ctx.comm
        rows = list(self.inbox)
        comm.wait(
            [comm.irecv(row, w, self.group) for w, row in zip(self.workers, rows, strict=True)], "wait-for-gradients", "idle"
        )
        if self.version > step:  # relaunched after this step's update was applied: the pushes are repeats
            self._answer(self.workers)
            return
        self.grad.copy_(rows[0])
        for row in rows[1:]:  # fixed order: same sum, bit for bit, every run
            self.grad += row
        for w in self.workers:
            self._received_from(w)
        self.grad.div_(len(rows))
        if self.backup is not None:  # replicate first: every version a worker can pull is on the backup too
            comm.send(self.grad, self.backup, self.group, name=FORWARD)
        self._update(self.grad)
        self._answer(self.workers)

    # -- async --------------------------------------------------------------------------------
    def _apply_next_push(self) -> None:
        buf = self.inbox[0]
        w = self.ctx.comm.recv(buf, None, self.group, name="wait-for-gradient", kind="idle")  # from any worker
        self._received_from(w)
        self._update(buf.div_(len(self.workers)))  # n pushes move the model as far as one sync step
        self.held.append(w)
        self._answer(self._releasable())

    def _releasable(self) -> list[int]:
        """Held pulls the SSP bound now allows: a worker at clock c waits until the slowest is at c - s (its last
        pull is never held: nothing computes on it)."""
        slowest, bound, last = min(self.pushes), self.cfg.max_staleness, self.cfg.steps
        ready = [w for w in self.held if bound is None or self.pushes[w] == last or self.pushes[w] - slowest <= bound]
        self.held = [w for w in self.held if w not in ready]
        return ready

    # -- shared -------------------------------------------------------------------------------
    def _received_from(self, w: int) -> None:
        """Worker w's gradient for its step c is in, about to be applied: note its staleness, advance its clock."""
        c = self.pushes[w]
        self.staleness.append((c, w, c - self.pulled_clock[w], self.version - self.pulled_version[w]))
        self.pushes[w] = c + 1

    def _update(self, grad: torch.Tensor) -> None:
        """One optimizer step with `grad` (flat) as the shard's gradient; the .grad views read self.grad."""
        if grad is not self.grad:
            self.grad.copy_(grad)
        assert self.opt is not None, "a server with an empty shard never updates"
        self.optimizer_step(self.opt, zero_grad=False)  # the .grad views stay: the next gradient is copied into them
        self.version += 1

    def _answer(self, workers: list[int]) -> None:
        """Send the current shard to `workers` (their pull receives are already posted), server j starting at
        the j-th of them: were every server to answer the same worker first, that worker's incoming link would
        fill while the others wait (workers stagger their pushes the same way)."""
        if not workers:
            return
        flat = self.outbox.pack()
        comm = self.ctx.comm
        first = self.index % len(workers)
        order = workers[first:] + workers[:first]
        comm.wait([comm.isend(flat, w, self.group, name="answer-pull") for w in order], name="answer-pull")
        self._mark_pulled(workers)

    def _mark_pulled(self, workers: list[int]) -> None:
        for w in workers:
            self.pulled_clock[w], self.pulled_version[w] = min(self.pushes), self.version

    # -- what the training loop asks ------------------------------------------------------------
    def end_of_step_group(self) -> Group | None:
        return None if self.cfg.sync == "ps-async" else self.ctx.comm.world

    def owned_state(self) -> dict[str, torch.Tensor]:
        return self.layout.state_of(self.index)

    def held_tensors(self) -> Held:
        """Its shard, the averaged gradient (the shard's .grad are views of it), its optimizer's state, and the
        inbox (a row per worker) and outbox it keeps from step to step."""
        return Held(self.params, None, [self.opt], [self.inbox, self.outbox.data])

    def extra(self) -> dict:
        replicated = {"replication_bytes_out": bytes_sent_as(self.ctx.comm, FORWARD)} if self.backup is not None else {}
        return replicated | {
            "ps_shard": self.index,
            "shard_numel": self.grad.numel(),
            "shard_params": [self.layout.names[i] for i in self.layout.shards[self.index]],
            "bytes_in": sum(self.pushes) * self.outbox.nbytes,  # every push brought one gradient of the shard
            "bytes_out": bytes_sent(self.ctx.comm),
            "staleness": [list(row) for row in self.staleness],
        }
