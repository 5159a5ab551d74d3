"""Per-rank timeline: what each rank did, when, and how many bytes it sent.

Spans have a kind (compute | comm | idle | bubble | injected: a straggler's deliberate delay).
Messages are recorded by dpkit.comm.Comm (with the bytes, where the byte count comes from, and whether
the rank waited: `blocking`); the gaps left inside a step are filled as idle (or bubble, for pipeline
stages waiting on their neighbours).

Compute is recorded as a layer around the strategies, not by them: `compute(name)` opens a region
(the training loop opens one around a step, the helpers of dpkit.strategies.base one around each
forward, backward and optimizer step), and whatever blocks inside it carves it: a blocking span
recorded while a region is open (a collective, a barrier, a receive), a wait for a message already in
flight (`blocked()`, which Comm calls), or a wait only seen afterwards (`computed_until`). So a region
becomes compute spans that stop while the rank waits: a gather waited for inside a forward is exposed
communication on the timeline, not compute, in every strategy, with no timing code in the strategy.

Spans may overlap (an all-reduce issued inside a forward, a bucket in flight during the backward); what
the rank was doing at each instant is decided afterwards by one priority, in dpkit.results.step_stats:
injected > blocking comm > compute > in-flight comm > bubble > idle. So the states of a step add up to
its time, a blocking message is exposed comm even inside a compute span, and in-flight comm is hidden
only where the rank computes meanwhile.

One time base: times are seconds since an origin rank 0 chooses before the first step. Every rank of a
host reads the same clock (perf_counter is CLOCK_MONOTONIC, shared by the host's processes), so their
spans line up; a rank on another host is shifted by its clock offset against rank 0, estimated by
ping-pong (dpkit.runtime.training.common_time_base). On GPU, CUDA events are placed on that host time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

KINDS = ("compute", "comm", "idle", "bubble", "injected")
BYTES_SOURCES = ("counted", "formula", "none")


class HostClock:
    """perf_counter: CLOCK_MONOTONIC on Linux, one clock for every process of a host.

    `t0` is the run's common origin; until the training loop sets it (set_origin) it is this process's
    own start, which is enough for a single process but not to line up several."""

    name = "perf_counter"

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.perf_counter() if t0 is None else t0

    def set_origin(self, t0: float) -> None:
        """Measure from `t0` (perf_counter seconds on this host): the origin rank 0 chose, shifted by this host's offset."""
        self.t0 = t0

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, mark: float) -> float:
        return mark - self.t0

    def sync(self) -> None:
        pass


class CudaClock:
    """CUDA events: GPU work is asynchronous, so the host clock would time the launch, not the work.

    A reference event is pinned to a host perf_counter reading, so event times land on the same origin
    as host marks (and as the other ranks' spans)."""

    name = "cuda_event"

    def __init__(self, device: torch.device, t0: float | None = None) -> None:
        self.device = device
        torch.cuda.synchronize(device)
        before = time.perf_counter()  # the device is idle: the event below runs as soon as it is recorded
        self.ref = torch.cuda.Event(enable_timing=True)
        self.ref.record()
        torch.cuda.synchronize(device)
        self.ref_at = (before + time.perf_counter()) / 2  # host time of the reference event, +- half this window
        self.t0 = self.ref_at if t0 is None else t0

    def set_origin(self, t0: float) -> None:
        self.t0 = t0

    def mark(self) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def seconds(self, mark) -> float:
        if isinstance(mark, float):  # a host-side mark (e.g. a completion callback)
            return mark - self.t0
        return (self.ref_at - self.t0) + self.ref.elapsed_time(mark) / 1000.0

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


@dataclass
class Span:
    rank: int
    step: int
    kind: str
    name: str
    start_s: float
    end_s: float
    bytes: int = 0
    bytes_source: str = "none"  # counted (dpkit's own send/recv) | formula (a backend collective) | none
    blocking: bool = True  # False: an asynchronous message in flight, which the rank's compute may hide


@dataclass
class Recorder:
    """Collects spans for one rank; marks are resolved to seconds at the end of each step."""

    rank: int
    clock: HostClock | CudaClock
    role: str = "worker"
    spans: list[Span] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    step: int = -1
    gap_kind: str = "idle"
    _pending: list[tuple] = field(default_factory=list)
    _step_start: object = None
    _regions: list[list] = field(default_factory=list)  # open compute regions, innermost last: [name, start mark]
    _owner: int | None = None  # the thread whose compute the regions time (waits on other threads never carve it)

    def begin_step(self, step: int) -> None:
        self.step = step
        self._step_start = self.clock.mark()

    def end_step(self) -> None:
        end = self.clock.mark()
        self.clock.sync()
        start_s, end_s = self.clock.seconds(self._step_start), self.clock.seconds(end)  # type: ignore[arg-type]
        new = [
            Span(self.rank, st, kind, name, self.clock.seconds(a), self.clock.seconds(b), nbytes, source, blocking)
            for st, kind, name, a, b, nbytes, source, blocking in self._pending
        ]
        new = [s for s in new if s.kind != "compute" or s.end_s > s.start_s]  # a region's piece a wait covered whole
        self._pending.clear()
        new += self._gaps(new, start_s, end_s)
        self.spans += sorted(new, key=lambda s: s.start_s)
        self.steps.append({"rank": self.rank, "step": self.step, "role": self.role, "start_s": start_s, "end_s": end_s})

    def _gaps(self, spans: list[Span], start: float, end: float) -> list[Span]:
        busy = sorted((s.start_s, s.end_s) for s in spans if s.step == self.step)
        gaps, cursor = [], start
        for a, b in busy:
            if a > cursor:
                gaps.append(Span(self.rank, self.step, self.gap_kind, "wait", cursor, min(a, end)))
            cursor = max(cursor, b)
        if end > cursor:
            gaps.append(Span(self.rank, self.step, self.gap_kind, "wait", cursor, end))
        return [g for g in gaps if g.end_s > g.start_s]

    def add(
        self, kind: str, name: str, start, end, nbytes: int = 0, bytes_source: str | None = None, blocking: bool = True
    ) -> None:
        """Record a span from two clock marks (or host perf_counter floats for async completions)."""
        source = bytes_source or ("counted" if nbytes else "none")
        self._pending.append((self.step, kind, name, start, end, int(nbytes), source, blocking))
        if blocking and kind != "compute" and self._mine():  # the rank waited in it: the open compute stops there
            self._carve(start, end)

    @contextmanager
    def span(self, kind: str, name: str, nbytes: int = 0, bytes_source: str | None = None) -> Iterator[None]:
        if kind == "compute":
            with self.compute(name):
                yield
            return
        start = self.clock.mark()
        try:
            yield
        finally:
            self.add(kind, name, start, self.clock.mark(), nbytes, bytes_source)

    # ---- compute as a region that waits carve -----------------------------------------------------
    def _mine(self) -> bool:
        return bool(self._regions) and threading.get_ident() == self._owner

    @contextmanager
    def compute(self, name: str) -> Iterator[None]:
        """Time the block as compute named `name` (an inner region names its own part), cut where the rank waits."""
        if self._regions and threading.get_ident() != self._owner:  # another thread's work runs beside the rank's
            yield
            return
        now = self.clock.mark()
        if self._regions:
            self._close_piece(now)
        else:
            self._owner = threading.get_ident()
        self._regions.append([name, now])
        try:
            yield
        finally:
            end = self.clock.mark()
            self._close_piece(end)
            self._regions.pop()
            if self._regions:
                self._regions[-1][1] = end

    def _close_piece(self, end) -> None:
        name, start = self._regions[-1]
        if start is not None:  # None: the region's compute already ended (computed_until)
            self._pending.append((self.step, "compute", name, start, end, 0, "none", True))

    def _carve(self, start, end) -> None:
        """The rank waited from `start` to `end`: the open region's compute stops there and resumes after."""
        self._close_piece(start)
        self._regions[-1][1] = end

    @contextmanager
    def blocked(self) -> Iterator[None]:
        """The rank waits here for something already recorded elsewhere (a message in flight): not compute."""
        if not self._mine():
            yield
            return
        start = self.clock.mark()
        try:
            yield
        finally:
            self._carve(start, self.clock.mark())

    def computed_until(self, mark) -> None:
        """The open region's compute ended at the clock mark `mark`: from there until the region closes the rank
        waited (a wait seen only afterwards: DDP's for its buckets, inside backward())."""
        if self._mine():
            self._close_piece(mark)
            self._regions[-1][1] = None

    def flush_outside_step(self) -> None:
        """Spans recorded outside any step (setup broadcasts) are dropped: they are not step time."""
        self._pending.clear()
