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

Every message travels through the Comm's transport (dpkit.comm.transport): torch.distributed as it is,
or, with an emulated link (RunConfig.link, dpkit.comm.emulation), ports that make every message take at
least that link's time: point-to-point messages and the hand-written algorithms' messages are paced one by
one, a backend collective is held (`held`, the hook any new collective calls) for its cost-model time.
Comm never asks which transport it has.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from ..cost.model import Link, Terms, broadcast_terms
from .algorithms import ALGORITHMS, all_gather_into, allreduce_sum, predicted_bytes_sent, reduce_scatter_sum, shard_algo
from .emulation import sleep_until, transport_for
from .group import GroupView, nbytes

if TYPE_CHECKING:
    from ..runtime.recorder import Recorder
    from .emulation.config import Nodes

Group = GroupView  # what strategies hold: the ranks of a process group and this rank's place in it
R = TypeVar("R")


class AsyncWork:
    """A collective in flight. wait() blocks until it is done; its span [launch, completion] is recorded once.

    On an emulated link a collective run on the comm thread is done when its real run has finished and the
    link has delivered it (`deliver_at`): the comm thread does not sleep out the link itself, so the next
    collective's real transfer is not kept waiting behind this one's emulated time."""

    def __init__(self, comm: Comm, name: str, start: float, nbytes_sent: int, source: str) -> None:
        self.comm, self.name, self.start, self.nbytes, self.source = comm, name, start, nbytes_sent, source
        self.done_at: float | None = None
        self.deliver_at = 0.0  # when the emulated link delivers it (0: no link, or nothing held)
        self._work: Any = None  # the backend's Work, for a native collective
        self._future: Future | None = None
        self._recorded = False

    def _mark_done(self, *_args) -> None:
        self.done_at = time.perf_counter()

    def done(self) -> bool:
        """Finished, and delivered by the link: wait() would return at once."""
        real = self._future.done() if self._future is not None else self._work is None or self._work.is_completed()
        return real and time.perf_counter() >= self.deliver_at

    def _record(self) -> None:
        if not self._recorded:
            self._recorded = True
            end = max(self.done_at if self.done_at is not None else time.perf_counter(), self.deliver_at)
            self.comm.recorder.add("comm", self.name, self.start, max(end, self.start), self.nbytes, self.source, blocking=False)

    def wait(self) -> None:
        with self.comm.recorder.blocked():  # the rank waits: whatever compute it was timing stops here
            if self._work is not None:
                self._work.wait()
            if self._future is not None:
                self.nbytes = self._future.result()
            sleep_until(self.deliver_at)
        self._record()


class Pending:
    """A point-to-point message posted but not yet complete; Comm.wait completes a list of them."""

    def __init__(self, work, keep: torch.Tensor, copy_back: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        self.work, self.keep, self.copy_back = work, keep, copy_back

    def copy_home(self) -> None:
        """Once complete: a receive staged through the host lands in its CUDA tensor."""
        if self.copy_back is not None:
            dst, host = self.copy_back
            dst.copy_(host)


class Comm:
    """One rank's messages: `algo` is the run's all-reduce algorithm (RunConfig.allreduce_algo); `link`, if
    given, the emulated network every message is paced by (RunConfig.link; a Nodes for emulated nodes,
    dpkit.comm.emulation.network_for)."""

    def __init__(self, recorder: Recorder, algo: str = "native", link: Link | Nodes | None = None) -> None:
        if algo not in ALGORITHMS:
            raise ValueError(f"allreduce algo {algo!r} is not allowed: choose one of {sorted(ALGORITHMS)}")
        self.recorder = recorder
        self.algo = algo
        self.transport = transport_for(link)  # where the run's link enters the emulation, once
        self._thread: ThreadPoolExecutor | None = None
        self._delivery: ThreadPoolExecutor | None = None
        self._world: Group | None = None

    # ---- groups ------------------------------------------------------------------------------
    @property
    def world(self) -> Group:
        if self._world is None:
            self._world = GroupView.of(None, self.transport)
        return self._world

    @property
    def rank(self) -> int:
        return self.world.me

    def new_group(self, ranks: list[int], backend: str | None = None) -> Group:
        """A subgroup of `ranks`. Every rank must create every group, in the same order (a torch.distributed rule)."""
        pg = dist.new_group(ranks, backend=backend)
        members = tuple(ranks)
        return GroupView(members, members.index(self.rank) if self.rank in members else -1, pg, self.transport)

    def host_group(self) -> Group:
        """A group whose messages travel through host memory (gloo): the world under gloo, a new gloo group
        beside NCCL (parameter servers need receive-from-any-source, which NCCL lacks). Every rank calls it once."""
        if dist.get_backend() == "gloo":
            return self.world
        return self.new_group(list(range(self.world.size)), backend="gloo")

    def _pg(self, group: Group | None):
        return None if group is None else group.group

    def held(self, run: Callable[[], R], terms: Terms, group: Group | None = None, device: torch.device | None = None) -> R:
        """Run a backend collective whose messages dpkit cannot see; on an emulated link, hold it until the
        pattern's time there (`terms`: its dpkit.cost.model terms, e.g. ring_terms(S, n)) after the last rank
        of the group was ready. Every collective that is not built from Comm's send/recv goes through here."""
        return self.transport.hold(terms, self._pg(group), run, device)

    def link_stats(self) -> dict | None:
        """Paced messages and held collectives, and how many the machine could not honour (None: no link)."""
        return self.transport.stats()

    def _needs_host(self, t: torch.Tensor, group: Group | None) -> bool:
        """gloo moves CUDA tensors in collectives but not in send/recv: those are staged through the host."""
        return t.is_cuda and dist.get_backend(self._pg(group)) == "gloo"

    # ---- collectives ---------------------------------------------------------------------------
    def all_reduce(self, t: torch.Tensor, group: Group | None = None, name: str = "allreduce", algo: str | None = None) -> None:
        """Sum `t` in place over the group, blocking, with the run's algorithm (or `algo`)."""
        algo = algo or self.algo
        start = self.recorder.clock.mark()
        sent = allreduce_sum(t, algo, self._view(group))
        self.recorder.add("comm", name, start, self.recorder.clock.mark(), sent, _source(algo))

    def all_reduce_async(
        self, t: torch.Tensor, group: Group | None = None, name: str = "allreduce", algo: str | None = None
    ) -> AsyncWork:
        """Start a sum in place; native uses the backend's async op, hand-written ones a comm thread
        (one thread keeps the order of collectives identical on every rank); on an emulated link native
        runs on the comm thread too, held for the link's time from when it was started."""
        algo = algo or self.algo
        view = group or self.world
        start = time.perf_counter()
        work = AsyncWork(self, name, start, predicted_bytes_sent("native", nbytes(t), view.size), _source(algo))
        if algo == "native" and self.transport.backend_async:
            work._work = dist.all_reduce(t, group=self._pg(group), async_op=True)
            work._work.get_future().then(work._mark_done)
        else:
            self._submit(work, lambda: allreduce_sum(t, algo, self._view(group)))
        return work

    def _submit(self, work: AsyncWork, collective: Callable[[], int]) -> None:
        """Queue `work` on the comm thread: one thread runs them in the order they were started, so every
        rank issues its collectives in the same order."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpkit-comm")
        work._future = self._thread.submit(self._job, work, collective)

    def _job(self, work: AsyncWork, collective: Callable[[], int]) -> int:
        """The comm thread's run of `work`. On an emulated link its held collectives count as ready from when
        the work was started (not from when this thread got to them), and their delivery time is left on the
        work (whoever waits sleeps until then) instead of being slept out here, which would keep the next
        collective's real transfer waiting behind this one's emulated time."""
        with self.transport.deliver_later(work.start) as delivery:
            sent = collective()
        work.deliver_at = delivery.at
        work._mark_done()
        return sent

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

        def deliver(fut: Future) -> None:
            try:
                work.wait()  # the real run is done; sleeps until the emulated link delivers it
                out.set_result(finish(t))
            except Exception as exc:  # surface in the training thread, not a silent hang
                out.set_exception(exc)

        def thread_done(fut: Future) -> None:
            if fut.exception() is None and work.deliver_at > time.perf_counter():
                self._delivery_thread().submit(deliver, fut)  # not on the comm thread: it goes on to the next
            else:
                deliver(fut)

        assert work._future is not None
        work._future.add_done_callback(thread_done)
        return out

    def _delivery_thread(self) -> ThreadPoolExecutor:
        """Completes DDP's Futures when the emulated link delivers them, in the order they were started."""
        if self._delivery is None:
            self._delivery = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpkit-deliver")
        return self._delivery

    # ---- the ring's halves as collectives of their own: sharded data parallelism -------------------
    # Both run algorithms.shard_algo(the run's all-reduce algorithm): the hand-written ring's halves for
    # "ring", the backend's own (reduce_scatter_single, all_gather_single) for every other choice.
    def reduce_scatter(self, flat: torch.Tensor, group: Group | None = None, name: str = "reduce-scatter") -> torch.Tensor:
        """Sum the 1-D `flat` over the group, blocking; returns this rank's shard of the sum (the part at
        flat.view(n, -1)[me]); `flat` is scratch afterwards. Its length must be a multiple of the group size:
        pad it, as ZeRO and FSDP do."""
        algo = shard_algo(self.algo)
        start = self.recorder.clock.mark()
        shard, sent = reduce_scatter_sum(flat, algo, self._view(group))
        self.recorder.add("comm", name, start, self.recorder.clock.mark(), sent, _source(algo))
        return shard

    def all_gather(self, shard: torch.Tensor, flat: torch.Tensor, group: Group | None = None, name: str = "all-gather") -> None:
        """Fill `flat` with every rank's `shard` (rank i's at flat.view(n, -1)[i]), blocking; `shard` may be
        this rank's own view of `flat` (in place)."""
        algo = shard_algo(self.algo)
        start = self.recorder.clock.mark()
        sent = all_gather_into(shard, flat, algo, self._view(group))
        self.recorder.add("comm", name, start, self.recorder.clock.mark(), sent, _source(algo))

    def reduce_scatter_async(
        self, flat: torch.Tensor, group: Group | None = None, name: str = "reduce-scatter"
    ) -> tuple[AsyncWork, Future]:
        """Start reduce_scatter on the comm thread: (the work, a Future of this rank's shard of the sum)."""
        algo, view = shard_algo(self.algo), self._view(group)
        shard: Future = Future()

        def job() -> int:
            result, sent = reduce_scatter_sum(flat, algo, view)
            shard.set_result(result)
            return sent

        return self._in_background(job, name, (view.size - 1) * nbytes(flat) // view.size, algo), shard

    def all_gather_async(
        self, shard: torch.Tensor, flat: torch.Tensor, group: Group | None = None, name: str = "all-gather"
    ) -> AsyncWork:
        """Start all_gather on the comm thread (ZeRO-3 prefetches the next block's parameters so)."""
        algo, view = shard_algo(self.algo), self._view(group)
        return self._in_background(lambda: all_gather_into(shard, flat, algo, view), name, (view.size - 1) * nbytes(shard), algo)

    def _in_background(self, job: Callable[[], int], name: str, predicted_bytes: int, algo: str) -> AsyncWork:
        """Run `job` (a collective that returns the bytes it sent) on the comm thread. One thread runs them
        one at a time in the order they were started, so every rank issues its collectives in the same order."""
        work = AsyncWork(self, name, time.perf_counter(), predicted_bytes, _source(algo))
        self._submit(work, job)
        return work

    def _view(self, group: Group | None) -> GroupView:
        """The group as the algorithms address it, sending through this Comm's transport."""
        return GroupView.of(self._pg(group), self.transport)

    def broadcast(self, t: torch.Tensor, src: int, group: Group | None = None, name: str = "broadcast") -> None:
        """Copy global rank `src`'s `t` to every rank of the group (the backend's broadcast: formula bytes)."""
        n = (group or self.world).size
        with self.recorder.span("comm", name, nbytes(t) * (n - 1) if self.rank == src else 0, "formula"):
            self.held(lambda: dist.broadcast(t, src, group=self._pg(group)), broadcast_terms(nbytes(t), n), group, t.device)

    def barrier(self, group: Group | None = None, kind: str = "idle", name: str = "barrier") -> None:
        """Wait for every rank of the group; recorded as `kind` (idle: waiting for the slowest rank).
        Not paced on an emulated link: it carries no data, and its wait is the lesson (idle time)."""
        with self.recorder.span(kind, name):
            dist.barrier(group=self._pg(group))

    # ---- point to point ----------------------------------------------------------------------
    def isend(self, t: torch.Tensor, dst: int, group: Group | None = None, name: str = "send") -> Pending:
        """Post a send to global rank `dst`; the post is recorded with the bytes, the completion by `wait`."""
        with self.recorder.span("comm", name, nbytes(t), "counted"):
            src = t.detach().to("cpu") if self._needs_host(t, group) else t.detach()
            src = src.contiguous()
            work = self.transport.isend(src, dst, self._pg(group))
        return Pending(work, src, None)

    def irecv(self, t: torch.Tensor, src: int, group: Group | None = None) -> Pending:
        """Post a receive into `t` from global rank `src` (nothing is recorded until `wait`)."""
        if self._needs_host(t, group):
            host = torch.empty_like(t, device="cpu")
            return Pending(self.transport.irecv(host, src, self._pg(group)), host, (t, host))
        return Pending(self.transport.irecv(t, src, self._pg(group)), t, None)

    def wait(self, pending: list[Pending], name: str = "wait", kind: str = "comm") -> None:
        """Complete posted messages; the time spent waiting is one span of `kind` (comm, bubble or idle)."""
        with self.recorder.span(kind, name):
            self.transport.complete([p.work for p in pending])  # emulated: receives queue in sending order
            for p in pending:
                p.copy_home()

    def send(self, t: torch.Tensor, dst: int, group: Group | None = None, name: str = "send") -> None:
        self.wait([self.isend(t, dst, group, name)], name)

    def recv(
        self, t: torch.Tensor, src: int | None = None, group: Group | None = None, name: str = "recv", kind: str = "comm"
    ) -> int:
        """Receive into `t` from global rank `src` (None: from any rank); returns the sender's rank. The wait
        is recorded as `kind`: a pipeline stage waiting for its neighbour is in the bubble, a server waiting
        for gradients is idle."""
        with self.recorder.span(kind, name):
            if self._needs_host(t, group):
                host = torch.empty_like(t, device="cpu")
                sender = self.transport.recv(host, src, self._pg(group))
                t.copy_(host)
            else:
                sender = self.transport.recv(t, src, self._pg(group))
        return sender

    def close(self) -> None:
        for pool in (self._thread, self._delivery):
            if pool is not None:
                pool.shutdown(wait=True)
        self._thread = self._delivery = None


def _source(algo: str) -> str:
    """Hand-written algorithms count the bytes they send; the backend's own are priced by formula."""
    return "formula" if algo == "native" else "counted"
