"""Every communication call of a strategy goes through Comm, which records a timeline span
(kind 'comm', bytes sent by this rank) around it. Async work records its true completion time."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.distributed as dist

from ..runtime.recorder import Recorder
from .algorithms import allreduce_sum, predicted_bytes_sent
from .group import nbytes


class AsyncWork:
    """A collective in flight. wait() blocks, then records the span [launch, completion]."""

    def __init__(self, comm: Comm, name: str, start: float, nbytes_sent: int) -> None:
        self.comm, self.name, self.start, self.nbytes = comm, name, start, nbytes_sent
        self.done_at: float | None = None
        self._work = None
        self._future: Future | None = None

    def _mark_done(self, *_args) -> None:
        self.done_at = time.perf_counter()

    def wait(self) -> None:
        if self._work is not None:
            self._work.wait()
        if self._future is not None:
            self.nbytes = self._future.result()
        end = self.done_at if self.done_at is not None else time.perf_counter()
        self.comm.recorder.add("comm", self.name, self.start, max(end, self.start), self.nbytes)


class Comm:
    """Instrumented collectives for one rank."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._thread: ThreadPoolExecutor | None = None

    def all_reduce(self, t: torch.Tensor, algo: str = "native", group=None, name: str = "allreduce") -> None:
        """Sum in place over the group, blocking."""
        start = self.recorder.clock.mark()
        sent = allreduce_sum(t, algo, group)
        self.recorder.add("comm", name, start, self.recorder.clock.mark(), sent)

    def all_reduce_async(self, t: torch.Tensor, algo: str = "native", group=None, name: str = "allreduce") -> AsyncWork:
        """Start a sum in place; native uses the backend's async op, hand-written ones a comm thread."""
        start = time.perf_counter()
        n = dist.get_world_size(group)
        work = AsyncWork(self, name, start, predicted_bytes_sent("native", nbytes(t), n))
        if algo == "native":
            work._work = dist.all_reduce(t, group=group, async_op=True)
            work._work.get_future().then(work._mark_done)
        else:
            if self._thread is None:  # one thread keeps the order of collectives identical on every rank
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpkit-comm")

            def job() -> int:
                sent = allreduce_sum(t, algo, group)
                work._mark_done()
                return sent

            work._future = self._thread.submit(job)
        return work

    def broadcast(self, t: torch.Tensor, src: int, group=None, name: str = "broadcast") -> None:
        me = dist.get_rank()
        n = dist.get_world_size(group)
        with self.recorder.span("comm", name, nbytes(t) * (n - 1) if me == src else 0):
            dist.broadcast(t, src, group=group)

    def send(self, t: torch.Tensor, dst: int, group=None, name: str = "send") -> None:
        with self.recorder.span("comm", name, nbytes(t)):
            dist.send(t, dst, group=group)

    def recv(self, t: torch.Tensor, src: int | None = None, group=None, name: str = "recv") -> int:
        with self.recorder.span("comm", name):
            return dist.recv(t, src, group=group)

    def isend(self, t: torch.Tensor, dst: int, group=None, name: str = "send") -> AsyncWork:
        work = AsyncWork(self, name, time.perf_counter(), nbytes(t))
        work._work = dist.isend(t, dst, group=group)
        return work

    def irecv(self, t: torch.Tensor, src: int, group=None, name: str = "recv") -> AsyncWork:
        work = AsyncWork(self, name, time.perf_counter(), 0)
        work._work = dist.irecv(t, src, group=group)
        return work

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
