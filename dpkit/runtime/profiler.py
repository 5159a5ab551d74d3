"""torch.profiler beside dpkit's timeline (RunConfig(profile=True)): torch's own ops, on the run's time axis.

dpkit's spans say what a step spent its time on (forward, all-reduce, waiting); torch.profiler says which
operators ran inside them (aten::addmm, the backward's kernels, gloo's collectives). trace.json holds both,
one process per rank, so Perfetto shows a dpkit "forward" span above the aten ops that made it up.

One clock: the profiler stamps events on its own time base (µs since its trace started), dpkit on
perf_counter minus the run's common origin. At the start and at the end of the profiled window this rank
runs empty record_function markers between two perf_counter reads and keeps the narrowest; the marker's
midpoint in the profiler's clock and the midpoint of the two reads in dpkit's clock are the same instant,
to within half the window (a few µs; recorded as extra["profiler_alignment_uncertainty_s"]). The two pairs give a linear map (offset and rate) from the profiler's clock to the
run's seconds. With profile=False nothing here runs: no profiler, no markers, no events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

MARKER = "dpkit.clock_marker"
MARKER_TRIES = 5
EXTRA_KEY = "profiler_events"  # RunResult.extra[EXTRA_KEY][str(rank)]: this rank's events, in run seconds
TID_BASE = 10  # trace.json: dpkit's own tracks are tids 0-2 of each rank; the profiler's threads come after
MAX_EVENTS_PER_RANK = 200_000  # a long profiled run is cut here (and says so) rather than filling memory


@dataclass
class RankProfiler:
    """One rank's torch.profiler session: start() before the first step, finish() after the last."""

    device: torch.device
    origin: float  # the run's t = 0 on this host's perf_counter (TimeBase.origin)
    _prof: Any = None
    _marks: list[tuple[float, float, str]] = field(default_factory=list)  # (perf_counter midpoint, half window, name)

    def start(self) -> RankProfiler:
        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._prof = profile(activities=activities)
        self._prof.start()
        self._mark()
        return self

    def _mark(self, tries: int = MARKER_TRIES) -> None:
        """Markers between perf_counter reads; the narrowest window is kept (the first call is slow: ~1 ms)."""
        windows = []
        for i in range(tries):
            before = time.perf_counter()
            with record_function(f"{MARKER} {len(self._marks)}.{i}"):
                pass
            after = time.perf_counter()
            windows.append(((before + after) / 2, (after - before) / 2, i))
        mid, half, best = min(windows, key=lambda w: w[1])
        self._marks.append((mid, half, f"{MARKER} {len(self._marks)}.{best}"))

    def finish(self) -> dict[str, Any]:
        """Stop; this rank's events as {EXTRA_KEY: [...]}, each with start_s/end_s in the run's seconds."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._mark()
        self._prof.stop()
        events = list(self._prof.events())
        by_name = {e.name: e for e in events if e.name.startswith(MARKER)}
        missing = [name for _, _, name in self._marks if name not in by_name]
        if missing:
            raise RuntimeError(f"torch.profiler did not record the clock markers {missing}: cannot align its events")
        markers = [by_name[name] for _, _, name in self._marks]
        to_run_s = clock_map(
            [(m.time_range.start + m.time_range.end) / 2 for m in markers],
            [mid - self.origin for mid, _, _ in self._marks],
        )
        out = []
        for e in events:
            if e.name.startswith(MARKER) or e.time_range.end <= e.time_range.start:
                continue
            on_device = "cuda" in str(getattr(e, "device_type", "")).lower()
            out.append(
                {
                    "name": e.name,
                    "start_s": to_run_s(e.time_range.start),
                    "end_s": to_run_s(e.time_range.end),
                    "thread": int(e.thread) if not on_device else -1 - int(getattr(e, "device_index", 0) or 0),
                    "device": "cuda" if on_device else "cpu",
                }
            )
        out.sort(key=lambda r: r["start_s"])
        return {
            EXTRA_KEY: out[:MAX_EVENTS_PER_RANK],
            "profiler_events_truncated": len(out) > MAX_EVENTS_PER_RANK,
            "profiler_alignment_uncertainty_s": self.alignment_uncertainty_s(),
        }

    def alignment_uncertainty_s(self) -> float:
        """Half the widest marker window: how far apart the two clocks' readings of one instant can be."""
        return max((w for _, w, _ in self._marks), default=0.0)


def clock_map(profiler_us: list[float], run_s: list[float]):
    """The line through two (profiler µs, run seconds) pairs of the same instants: profiler µs -> run seconds."""
    (p0, p1), (r0, r1) = profiler_us, run_s
    rate = (r1 - r0) / ((p1 - p0) * 1e-6) if p1 > p0 else 1.0  # run seconds per profiler second (~1)
    return lambda us: r0 + (us - p0) * 1e-6 * rate


def start_profiler(enabled: bool, device: torch.device, origin: float) -> RankProfiler | None:
    """A started RankProfiler when RunConfig.profile is set; None (nothing runs) otherwise."""
    return RankProfiler(device, origin).start() if enabled else None


def finish_profiler(profiler: RankProfiler | None, gathered: dict[str, Any]) -> None:
    """Stop `profiler` and add its events to this rank's gathered["extra"] (nothing when not profiling)."""
    if profiler is not None:
        gathered["extra"].update(profiler.finish())


def trace_events(extra: dict[str, Any]) -> list[dict]:
    """Chrome-trace events for RunResult.extra's profiler events: one track per profiler thread under each rank."""
    events: list[dict] = []
    for rank, rows in sorted(extra.get(EXTRA_KEY, {}).items(), key=lambda kv: int(kv[0])):
        threads = sorted({r["thread"] for r in rows}, key=lambda t: (t < 0, abs(t)))
        tid = {t: TID_BASE + i for i, t in enumerate(threads)}
        for t in threads:
            label = f"torch.profiler: CPU thread {t}" if t >= 0 else f"torch.profiler: GPU {-1 - t}"
            events.append({"ph": "M", "name": "thread_name", "pid": int(rank), "tid": tid[t], "args": {"name": label}})
        for r in rows:
            events.append(
                {
                    "name": r["name"],
                    "cat": "torch.profiler",
                    "ph": "X",
                    "pid": int(rank),
                    "tid": tid[r["thread"]],
                    "ts": r["start_s"] * 1e6,
                    "dur": max(r["end_s"] - r["start_s"], 0.0) * 1e6,
                    "args": {"device": r["device"]},
                }
            )
    return events
