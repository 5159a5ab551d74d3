"""Per-rank timeline: what each rank did, when, and how many bytes it sent.

Spans have a kind (compute | comm | idle | bubble | injected: a straggler's deliberate delay).
Strategies record compute; their messages are recorded by dpkit.comm.Comm (with the bytes, where the
byte count comes from, and whether the rank waited: `blocking`); the gaps left inside a step are filled
as idle (or bubble, for pipeline stages waiting on their neighbours).

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

    @contextmanager
    def span(self, kind: str, name: str, nbytes: int = 0, bytes_source: str | None = None) -> Iterator[None]:
        start = self.clock.mark()
        try:
            yield
        finally:
            self.add(kind, name, start, self.clock.mark(), nbytes, bytes_source)

    def flush_outside_step(self) -> None:
        """Spans recorded outside any step (setup broadcasts) are dropped: they are not step time."""
        self._pending.clear()
