"""Per-rank timeline: what each rank did, when, and how many bytes it sent.

Spans have a kind (compute | comm | idle | bubble | injected: a straggler's deliberate delay).
Strategies record compute; their messages are recorded by dpkit.comm.Comm (with the bytes, where the
byte count comes from, and whether the rank waited); the gaps left inside a step are filled as idle
(or bubble, for pipeline stages waiting on their neighbours). Times are seconds since the run's common start (a barrier), read from
time.perf_counter on CPU and from CUDA events on GPU, resolved after a synchronize.
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
    """perf_counter: monotonic, machine-wide, so spans from ranks on one host line up."""

    name = "perf_counter"

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, mark: float) -> float:
        return mark - self.t0

    def sync(self) -> None:
        pass


class CudaClock:
    """CUDA events: GPU work is asynchronous, so the host clock would time the launch, not the work."""

    name = "cuda_event"

    def __init__(self, device: torch.device) -> None:
        self.device = device
        torch.cuda.synchronize(device)
        self.t0_host = time.perf_counter()
        self.ref = torch.cuda.Event(enable_timing=True)
        self.ref.record()
        torch.cuda.synchronize(device)
        self.ref_host = time.perf_counter() - self.t0_host

    def mark(self) -> torch.cuda.Event:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def seconds(self, mark) -> float:
        if isinstance(mark, float):  # a host-side mark (e.g. a completion callback)
            return mark - self.t0_host
        return self.ref_host + self.ref.elapsed_time(mark) / 1000.0

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
        start_s, end_s = self.clock.seconds(self._step_start), self.clock.seconds(end)
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
