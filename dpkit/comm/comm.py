"""Comm: the one path every message of a strategy takes.

Collectives (with the run's all-reduce algorithm: the backend's own or a hand-written one), point-to-
point sends and receives (pipeline activations, parameter-server pushes and pulls), barriers, process
groups, DDP's comm hook: all go through one Comm per rank, which times each call on the rank's
timeline and counts its bytes. Strategies never call torch.distributed themselves, so whatever is
done to a message (timing, byte counting, staging CUDA tensors through the host for gloo) is done
once, here, for every strategy.

Each span says where its bytes come from (`bytes_source`): "counted" for messages dpkit sends itself
(send/recv and the hand-written algorithms built from them), "formula" for a backend collective whose
bytes dpkit cannot see (native all-reduce, broadcast, DDP's buckets), "none" when nothing is sent. A
span is `blocking` when the rank waits in it; an asynchronous collective's span covers the time it was
in flight and is not blocking (it is hidden where the rank computes meanwhile).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .algorithms import ALGORITHMS, allreduce_sum, predicted_bytes_sent
from .group import GroupView, nbytes

if TYPE_CHECKING:
    from ..runtime.recorder import Recorder

Group = GroupView  # what strategies hold: the ranks of a process group and this rank's place in it


class AsyncWork:
    """A collective in flight. wait() blocks until it is done; its span [launch, completion] is recorded once."""

    def __init__(self, comm: Comm, name: str, start: float, nbytes_sent: int, source: str) -> None:
        self.comm, self.name, self.start, self.nbytes, self.source = comm, name, start, nbytes_sent, source
        self.done_at: float | None = None
        self._work = None
        self._future: Future | None = None
        self._recorded = False

    def _mark_done(self, *_args) -> None:
        self.done_at = time.perf_counter()

    def _record(self) -> None:
        if not self._recorded:
            self._recorded = True
            end = self.done_at if self.done_at is not None else time.perf_counter()
            self.comm.recorder.add("comm", self.name, self.start, max(end, self.start), self.nbytes, self.source, blocking=False)

    def wait(self) -> None:
        if self._work is not None:
            self._work.wait()
        if self._future is not None:
            self.nbytes = self._future.result()
        self._record()


class Pending:
    """A point-to-point message posted but not yet complete; Comm.wait completes a list of them."""

    def __init__(self, work, keep: torch.Tensor, copy_back: tuple[torch.Tensor, torch.Tensor] | None, received: int) -> None:
        self.work, self.keep, self.copy_back, self.received = work, keep, copy_back, received

    def complete(self) -> int | None:
        self.work.wait()
        if self.copy_back is not None:
            dst, host = self.copy_back
            dst.copy_(host)
        return self.received


class Comm:
    """One rank's messages: `algo` is the run's all-reduce algorithm (RunConfig.allreduce_algo)."""

    def __init__(self, recorder: Recorder, algo: str = "native") -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"allreduce algo {algo!r} is not allowed: choose one of {sorted(ALGORITHMS)}")
        self.recorder = recorder
        self.algo = algo
        self.bytes_received = 0
        self._thread: ThreadPoolExecutor | None = None
        self._world: Group | None = None

    # ---- groups ------------------------------------------------------------------------------
    @property
    def world(self) -> Group:
        if self._world is None:
            self._world = GroupView.of(None)
        return self._world

    @property
    def rank(self) -> int:
        return self.world.me

    def new_group(self, ranks: list[int], backend: str | None = None) -> Group:
        """A subgroup of `ranks`. Every rank must create every group, in the same order (a torch.distributed rule)."""
        pg = dist.new_group(ranks, backend=backend)
        members = tuple(ranks)
        return GroupView(members, members.index(self.rank) if self.rank in members else -1, pg)

    def host_group(self) -> Group:
        """A group whose messages travel through host memory (gloo): the world under gloo, a new gloo group
        beside NCCL (parameter servers need receive-from-any-source, which NCCL lacks). Every rank calls it once."""
        if dist.get_backend() == "gloo":
            return self.world
        return self.new_group(list(range(self.world.size)), backend="gloo")

    def _pg(self, group: Group | None):
        return None if group is None else group.group

    def _needs_host(self, t: torch.Tensor, group: Group | None) -> bool:
        """gloo moves CUDA tensors in collectives but not in send/recv: those are staged through the host."""
        return t.is_cuda and dist.get_backend(self._pg(group)) == "gloo"

    # ---- collectives ---------------------------------------------------------------------------
    def all_reduce(self, t: torch.Tensor, group: Group | None = None, name: str = "allreduce", algo: str | None = None) -> None:
        """Sum `t` in place over the group, blocking, with the run's algorithm (or `algo`)."""
        algo = algo or self.algo
        start = self.recorder.clock.mark()
        sent = allreduce_sum(t, algo, self._pg(group))
        self.recorder.add("comm", name, start, self.recorder.clock.mark(), sent, _source(algo))

    def all_reduce_async(
        self, t: torch.Tensor, group: Group | None = None, name: str = "allreduce", algo: str | None = None
    ) -> AsyncWork:
        """Start a sum in place; native uses the backend's async op, hand-written ones a comm thread
        (one thread keeps the order of collectives identical on every rank)."""
        algo = algo or self.algo
        view = group or self.world
        start = time.perf_counter()
        work = AsyncWork(self, name, start, predicted_bytes_sent("native", nbytes(t), view.size), _source(algo))
        if algo == "native":
            work._work = dist.all_reduce(t, group=self._pg(group), async_op=True)
            work._work.get_future().then(work._mark_done)
        else:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpkit-comm")

            def job() -> int:
                sent = allreduce_sum(t, algo, self._pg(group))
                work._mark_done()
                return sent

            work._future = self._thread.submit(job)
        return work

    def all_reduce_future(
        self, t: torch.Tensor, group: Group | None = None, name: str = "allreduce", then: Callable | None = None
    ) -> torch.futures.Future:
        """DDP's comm hook: a Future of `t` summed over the group (then passed through `then`), timed like
        every other all-reduce. DDP itself is untouched; it waits on the Future inside its backward."""
        work = self.all_reduce_async(t, group, name)
        finish = then or (lambda value: value)
        if work._work is not None:

            def native_done(fut: torch.futures.Future) -> torch.Tensor:
                work._mark_done()
                work._record()
                return finish(fut.value()[0])

            return work._work.get_future().then(native_done)
        out: torch.futures.Future = torch.futures.Future()

        def thread_done(fut: Future) -> None:
            try:
                work.nbytes = fut.result()
                work._record()
                out.set_result(finish(t))
            except Exception as exc:  # surface in the training thread, not a silent hang
                out.set_exception(exc)

        assert work._future is not None
        work._future.add_done_callback(thread_done)
        return out

    def broadcast(self, t: torch.Tensor, src: int, group: Group | None = None, name: str = "broadcast") -> None:
        """Copy global rank `src`'s `t` to every rank of the group (the backend's broadcast: formula bytes)."""
        n = (group or self.world).size
        with self.recorder.span("comm", name, nbytes(t) * (n - 1) if self.rank == src else 0, "formula"):
            dist.broadcast(t, src, group=self._pg(group))

    def barrier(self, group: Group | None = None, kind: str = "idle", name: str = "barrier") -> None:
        """Wait for every rank of the group; recorded as `kind` (idle: waiting for the slowest rank)."""
        with self.recorder.span(kind, name):
            dist.barrier(group=self._pg(group))

    # ---- point to point ----------------------------------------------------------------------
    def isend(self, t: torch.Tensor, dst: int, group: Group | None = None, name: str = "send") -> Pending:
        """Post a send to global rank `dst`; the post is recorded with the bytes, the completion by `wait`."""
        with self.recorder.span("comm", name, nbytes(t), "counted"):
            src = t.detach().to("cpu") if self._needs_host(t, group) else t.detach()
            src = src.contiguous()
            work = dist.isend(src, dst, group=self._pg(group))
        return Pending(work, src, None, 0)

    def irecv(self, t: torch.Tensor, src: int, group: Group | None = None) -> Pending:
        """Post a receive into `t` from global rank `src` (nothing is recorded until `wait`)."""
        if self._needs_host(t, group):
            host = torch.empty_like(t, device="cpu")
            return Pending(dist.irecv(host, src, group=self._pg(group)), host, (t, host), nbytes(t))
        return Pending(dist.irecv(t, src, group=self._pg(group)), t, None, nbytes(t))

    def wait(self, pending: list[Pending], name: str = "wait", kind: str = "comm") -> None:
        """Complete posted messages; the time spent waiting is one span of `kind` (comm, bubble or idle)."""
        with self.recorder.span(kind, name):
            for p in pending:
                self.bytes_received += p.complete() or 0

    def send(self, t: torch.Tensor, dst: int, group: Group | None = None, name: str = "send") -> None:
        self.wait([self.isend(t, dst, group, name)], name)

    def recv(self, t: torch.Tensor, src: int | None = None, group: Group | None = None, name: str = "recv", kind: str = "comm") -> int:
        """Receive into `t` from global rank `src` (None: from any rank); returns the sender's rank. The wait
        is recorded as `kind`: a pipeline stage waiting for its neighbour is in the bubble, a server waiting
        for gradients is idle."""
        with self.recorder.span(kind, name):
            if self._needs_host(t, group):
                host = torch.empty_like(t, device="cpu")
                sender = dist.recv(host, src, group=self._pg(group))
                t.copy_(host)
            else:
                sender = dist.recv(t, src, group=self._pg(group))
        self.bytes_received += nbytes(t)
        return sender

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None


def _source(algo: str) -> str:
    """Hand-written algorithms count the bytes they send; the backend's own are priced by formula."""
    return "formula" if algo == "native" else "counted"
