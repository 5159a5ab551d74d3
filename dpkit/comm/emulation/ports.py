"""Emulated network links: every message between ranks takes at least the time a named link needs.

On one laptop every "network" is a loopback copy, faster than Ethernet for big messages and with no
queueing worth seeing, so the lessons about communication (a parameter server's incoming link fills up
with n workers, a ring's links work in parallel, buckets hide the all-reduce behind the backward) do not
show. With `RunConfig.link` set, each rank's Comm gets a LinkEmulator as its transport (dpkit.comm.transport):
every message its groups send is paced by it.
The real transfer still happens (results stay exactly those of single-process training); the emulator
only makes the rank wait until the link would have delivered it.

The model (alpha: latency per message, B: bandwidth per direction), on each rank:
- one outgoing and one incoming port, each carrying B bytes/s; a message of S bytes occupies a port for
  S/B, and messages queue on a busy port (first come, first served in the order the rank handles them);
- a send posted at `now` leaves at out_start = max(now, out_free) and is complete at out_free = out_start
  + S/B (the sender's buffer is free then: a send's wait sleeps until that time);
- the receiver takes the message in at arrival = max(out_start + alpha, in_free) + o + S/B, in_free =
  arrival (o: the link's per-message overhead at the receiving port, Link.overhead): a receive's wait
  sleeps until then. So one message costs alpha + o + S/B; n workers pushing S to one server take
  n*(o + S/B) at the server's incoming port; the links of a ring carry their traffic in
  parallel (every rank sends on its own outgoing port).
- the receiver learns out_start from a header: a one-number tensor (float64 seconds, the sender's
  time.perf_counter) sent with tag HEADER_TAG just before each paced payload. All ranks of a run live on
  one host and read one CLOCK_MONOTONIC, so the sender's time is the receiver's time: no shared state.
- a backend collective (native all-reduce, broadcast, DDP's buckets) is opaque, so it is held instead:
  the ranks agree (through the run's store: a set and a blocking read, no gloo message) on when the last
  of them was ready (started it, with its ports free), and each waits until that time plus the
  collective's cluster-view cost on the link (dpkit.cost.model terms for its algorithm, S and n); both
  ports are busy until then. One started in the background (Comm.all_reduce_async, DDP's hook) counts as
  ready from when it was started, not from when the comm thread got to it, and the comm thread does not
  sleep out its link time: it goes on to the next one, and whoever uses the result waits for the delivery.
- while it waits for the link, a rank sleeps (no spinning), so computation on another thread (the comm
  thread of async all-reduces) really overlaps the emulated transfer.

Honest labels: where the real transfer was slower than the link asked for (the payload was not there at
its emulated arrival, or a held collective's real run ended after its deadline), the emulation could not
be honoured: those messages are counted with their worst lateness (LinkEmulator.stats, meta
"link_not_honoured"). Lateness under LATE_SLACK_S is timer and scheduler noise and not counted.
Barriers are not paced (they carry no data). Limits: FIFO order on a port is the order in which the
rank handles its messages (a receive handled late cannot take an earlier idle slot); ranks on several
hosts would need their clock offsets, so emulation assumes one host.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ...cost.model import Link, Terms
from ..transport import Delivery, Transport

HEADER_TAG = 0x6C6E6B  # headers travel apart from payloads (tag 0): an any-source receive sees headers only
LATE_SLACK_S = 50e-6  # lateness under this is what waking up and returning from a wait costs: not counted

T = TypeVar("T")


# ---- waiting without spinning -------------------------------------------------------------------
_thread_state = threading.local()


def _fine_timer_slack() -> None:
    """Linux rounds a sleeping thread's wake-up up by its timer slack (50 us by default): set this thread's
    to 1 us once, so a 574 us message (64 KiB on 1 GbE) is not over-slept by 10%."""
    if getattr(_thread_state, "slack_set", False):
        return
    _thread_state.slack_set = True
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, in ns; this thread only
        except (OSError, AttributeError):
            pass


WAKE_HISTORY = 16  # recent wake-up delays a thread remembers
MAX_SPIN_S = 100e-6  # the most a wait spins at its end (a busy machine's wake-up delays can be milliseconds)


def sleep_until(deadline: float) -> None:
    """Sleep (not spin) until time.perf_counter() >= deadline, and wake up close to it.

    A sleeping thread resumes some tens of microseconds after its timer (the scheduler's wake-up delay,
    longer on a busy machine): 10% of a 64 KiB message on 1 GbE. So the timer is set that much early, by
    the smallest delay among this thread's recent sleeps, and whatever is left once the wait is within that
    margin (a thread woken a little early, or a wait that short) is spun out: sleeping again would cost
    another wake-up delay. So a wait spins at most the smallest recent wake-up delay (tens of microseconds;
    never more than MAX_SPIN_S), and nothing is ever let through early."""
    _fine_timer_slack()
    history: list[float] = _thread_state.__dict__.setdefault("wake_delays", [])
    early = min(min(history, default=0.0), MAX_SPIN_S)
    while (left := deadline - time.perf_counter()) > 0:
        if left <= early:
            while time.perf_counter() < deadline:
                pass
            return
        target = left - early
        before = time.perf_counter()
        time.sleep(target)
        history.append(max(0.0, time.perf_counter() - before - target))
        del history[:-WAKE_HISTORY]


_UNSET = object()


def _agreement_store() -> Any:
    """This thread's own client of the run's rendezvous store (TCPStore), or None where there is none to clone.
    Keys are a few tens of bytes per rank and held collective, kept until the run ends."""
    store = getattr(_thread_state, "store", _UNSET)
    if store is _UNSET:
        store = None
        try:
            base = dist.distributed_c10d._get_default_store()
            while hasattr(base, "underlying_store"):  # PrefixStores: their keys would be prefixed, harmless
                base = base.underlying_store
            store = base.clone()  # type: ignore[attr-defined]  # TCPStore has it; the stubs say Store
        except (AttributeError, RuntimeError, ValueError):
            store = None
        _thread_state.store = store
    return store


# ---- the emulator ---------------------------------------------------------------------------------
class PacedSend:
    """A paced send in flight: wait() is the real send plus sleeping until the outgoing port is done."""

    def __init__(self, works: list, done_at: float) -> None:
        self.works, self.done_at = works, done_at
        self._done = False

    def wait(self) -> None:
        if not self._done:
            for w in self.works:
                w.wait()
            sleep_until(self.done_at)
            self._done = True


class PacedRecv:
    """A paced receive: its header says when the message left the sender; wait() sleeps until it arrives."""

    def __init__(self, emulator: LinkEmulator, header: torch.Tensor, header_work, payload_work, size: int) -> None:
        self.emulator, self.header, self.size = emulator, header, size
        self.header_work, self.payload_work = header_work, payload_work
        self.left_at: float | None = None
        self.arrival: float | None = None
        self.late_s = 0.0  # how long after its emulated arrival the real transfer was seen to end (0: on time)
        self._done = False

    def read_header(self) -> float:
        if self.left_at is None:
            self.header_work.wait()
            self.left_at = float(self.header.item())
        return self.left_at

    def wait(self) -> None:
        if not self._done:
            self.emulator.complete([self])


class LinkEmulator(Transport):
    """One rank's ports on an emulated link, as the transport under its Comm: paced point-to-point messages
    and held collectives. Thread-safe (the comm thread and the training thread may both send)."""

    backend_async = False  # a native collective is held on the comm thread, not run as the backend's async op

    def __init__(self, link: Link, ranks_per_node: int = 1) -> None:
        super().__init__(ranks_per_node)
        self.link = link
        self.out_free = self.in_free = 0.0
        self._lock = threading.Lock()
        self.messages = self.collectives = self.late = 0
        self.bytes_in = 0  # payload bytes of the paced receives (held collectives are not counted)
        self.worst_late_s = self.late_s = 0.0  # the worst lateness, and all of it added up
        self._agreed: dict[tuple[int, ...], int] = {}  # held collectives agreed so far, per group

    def seconds(self, terms: Terms) -> float:
        """A pattern's time on this link from its cost-model terms (messages, bytes on the busiest link, ...)."""
        messages, moved, *_ = terms
        return messages * (self.link.alpha + self.link.overhead) + moved / self.link.bandwidth

    # -- point to point -----------------------------------------------------------------------
    def isend(self, t: torch.Tensor, dst: int, group=None) -> PacedSend:
        """Post `t` to global rank `dst`: its header, then the payload; the outgoing port is booked now."""
        size = t.numel() * t.element_size()
        with self._lock:
            left = max(time.perf_counter(), self.out_free)
            self.out_free = left + size / self.link.bandwidth
            done = self.out_free
        header = torch.tensor([left], dtype=torch.float64, device=t.device)
        works = [dist.isend(header, dst, group=group, tag=HEADER_TAG), dist.isend(t, dst, group=group)]
        return PacedSend(works, done)

    def irecv(self, t: torch.Tensor, src: int, group=None) -> PacedRecv:
        """Post a receive into `t` from global rank `src` (header and payload, in the order they were sent)."""
        header = torch.empty(1, dtype=torch.float64, device=t.device)
        header_work = dist.irecv(header, src, group=group, tag=HEADER_TAG)
        return PacedRecv(self, header, header_work, dist.irecv(t, src, group=group), t.numel() * t.element_size())

    def send(self, t: torch.Tensor, dst: int, group=None) -> None:
        self.isend(t, dst, group).wait()

    def recv(self, t: torch.Tensor, src: int | None, group=None) -> int:
        """Blocking receive into `t` from `src` (None: any rank); returns the sender's global rank."""
        return paced_recv(t, src, group, lambda peer: self)

    def complete(self, works: list) -> None:
        complete_paced(works)

    def _arrival(self, w: PacedRecv, left_at: float) -> float:
        """When this incoming port has taken in `w`, which left its sender at `left_at` (booked once)."""
        with self._lock:
            if w.arrival is None:
                taken = max(left_at + self.link.alpha, self.in_free) + self.link.overhead  # o: this port's per-message work
                w.arrival = self.in_free = taken + w.size / self.link.bandwidth
            return w.arrival

    # -- backend collectives ----------------------------------------------------------------------
    def hold(self, terms: Terms, group, run: Callable[[], T], device: torch.device | None = None) -> T:
        """Run a backend collective (every rank of `group` calls this in the same order) and hold it until
        the last rank was ready plus the pattern's time on the link (`terms`: cost.model's cluster view).

        Inside `deliver_later`, it does not sleep: it returns once the real collective is done and leaves the
        waiting to whoever uses the result (the comm thread goes on to the next collective meanwhile)."""
        later: Delivery | None = getattr(_thread_state, "delivery", None)
        with self._lock:
            now = time.perf_counter() if later is None else later.posted_at
            ready = max(now, self.out_free, self.in_free)
        deadline = self._last_ready(ready, group, device) + self.seconds(terms)
        result = run()
        with self._lock:  # both ports are busy until then: the next message or collective queues behind it
            self.out_free, self.in_free = max(self.out_free, deadline), max(self.in_free, deadline)
        late = time.perf_counter() - deadline
        self._count(late if late > LATE_SLACK_S else 0.0, collective=True)
        if later is None:
            sleep_until(deadline)
        else:
            later.at = max(later.at, deadline)
        return result

    def deliver_later(self, posted_at: float):  # type: ignore[override]  # the same context manager
        return deliver_later(posted_at)

    def _last_ready(self, ready: float, group, device: torch.device | None) -> float:
        """When the last rank of `group` was ready for this collective. Through the run's store where there is
        one: a set and a blocking read, with no gloo message (gloo's I/O thread polls hard while a message is in
        flight, taking CPU from the ranks on a small machine). Else a one-number MAX all-reduce."""
        store = _agreement_store()
        if store is not None:
            ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else tuple(range(dist.get_world_size()))
            with self._lock:
                seq = self._agreed.get(ranks, 0)
                self._agreed[ranks] = seq + 1
            prefix = f"dpkit/link/{'-'.join(map(str, ranks))}/{seq}/"
            store.set(prefix + str(dist.get_rank()), repr(ready))
            return max(float(v) for v in store.multi_get([prefix + str(r) for r in ranks]))
        stamp = torch.tensor([ready], dtype=torch.float64, device=device)
        dist.all_reduce(stamp, op=dist.ReduceOp.MAX, group=group)
        return float(stamp.item())

    # -- honesty ------------------------------------------------------------------------------------
    def _count(self, late: float, collective: bool, size: int = 0) -> None:
        with self._lock:
            if collective:
                self.collectives += 1
            else:
                self.messages += 1
                self.bytes_in += size
            if late > 0:
                self.late += 1
                self.worst_late_s = max(self.worst_late_s, late)
                self.late_s += late

    def reset_counts(self) -> None:
        """Start counting afresh (a benchmark measures its repeats apart from its warm-up)."""
        with self._lock:
            self.messages = self.collectives = self.late = self.bytes_in = 0
            self.worst_late_s = self.late_s = 0.0

    def stats(self) -> dict:
        """Paced receives and held collectives on this rank, and how many the machine could not honour."""
        with self._lock:
            return {
                "messages": self.messages,
                "collectives": self.collectives,
                "late": self.late,
                "worst_late_s": self.worst_late_s,
                "late_s": self.late_s,
                "bytes_in": self.bytes_in,
            }


# ---- receiving, on one or several links' ports --------------------------------------------------------
def paced_recv(t: torch.Tensor, src: int | None, group: Any, port_for: Callable[[int], LinkEmulator]) -> int:
    """Blocking receive into `t` from `src` (None: any rank) on the ports `port_for(sender)`; returns the sender.
    Any source: the first header to come names the sender, whose payload follows it."""
    if src is None:
        header = torch.empty(1, dtype=torch.float64, device=t.device)
        src = dist.recv(header, None, group=group, tag=HEADER_TAG)
        work = PacedRecv(port_for(src), header, None, dist.irecv(t, src, group=group), t.numel() * t.element_size())
        work.left_at = float(header.item())
    else:
        work = port_for(src).irecv(t, src, group)
    work.wait()
    return src


def complete_paced(works: list) -> None:
    """Finish paced messages: the receives take their incoming port in the order their senders let them go
    (so a server's n pushes queue as on a real port) and are waited for in the order they arrive (on
    whichever link's port each came in), then every send (and any unpaced work) is waited for."""
    receives = [w for w in works if isinstance(w, PacedRecv) and not w._done]
    left = sorted(((w.read_header(), w) for w in receives), key=lambda p: p[0])
    due = [(w.emulator._arrival(w, left_at), w) for left_at, w in left]
    for arrival, w in sorted(due, key=lambda p: p[0]):
        late = 0.0
        if time.perf_counter() > arrival:  # the header itself came after the message was due
            w.payload_work.wait()
            late = time.perf_counter() - arrival
            late = late if late > LATE_SLACK_S else 0.0
        else:
            sleep_until(arrival)
            before = time.perf_counter()
            w.payload_work.wait()
            after = time.perf_counter()
            if after - before > LATE_SLACK_S:  # the payload was not there when the link had delivered it
                late = after - arrival
        w._done, w.late_s = True, late
        w.emulator._count(late, collective=False, size=w.size)
    for w in works:
        if not isinstance(w, PacedRecv):
            w.wait()


@contextmanager
def deliver_later(posted_at: float) -> Iterator[Delivery]:
    """For a collective started on the comm thread at `posted_at`: its held collectives are ready from then
    (not from when the thread got to them) and do not sleep; the Delivery says when the link delivers."""
    delivery = Delivery(posted_at)
    _thread_state.delivery = delivery
    try:
        yield delivery
    finally:
        _thread_state.delivery = None
