"""One time base for every rank: rank 0 picks the origin, ranks of its host share its monotonic clock, a rank
on another host is shifted by its ping-pong offset. Checked by causality, which holds on any machine however
loaded: no rank leaves a barrier before the last rank entered it, no message arrives before it was sent.

(Step ends do not all agree within a couple of ms on a loaded 2-core machine even with one clock: the ranks
leave a barrier when the scheduler next runs them, measured 1-8 ms apart for data parallel and up to ~0.5 s
for a pipeline whose gloo I/O threads starve behind busy processes. Causality is the check that is true.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpkit import RunConfig, run
from dpkit.runtime.launch import launch
from dpkit.runtime.recorder import CudaClock
from dpkit.runtime.training import SHARED_CLOCK, common_time_base

BASE = dict(model="mlp", hidden=64, layers=2, global_batch=32, steps=6, warmup=1, threads_per_rank=1)
DP = RunConfig(parallelism="data", world_size=4, **BASE)
PIPE = RunConfig(parallelism="pipeline", world_size=4, schedule="gpipe", microbatches=4, **BASE)
SKEW_S = {1: 5.0, 2: -3.0}  # fake clock offsets of ranks 1 and 2 in the ping-pong test


def barrier_violations(result, barrier: str) -> list[str]:
    """Steps where some rank left the step-ending barrier (its step end) before another rank entered it."""
    tl, st = result.timeline, result.steps
    bad = []
    for step, ends in st.groupby("step"):
        entries = tl[(tl.step == step) & (tl.name == barrier)]
        assert len(entries) == len(ends), f"step {step}: expected one {barrier!r} span per rank"
        last_in, first_out = entries.start_s.max(), ends.end_s.min()
        if first_out < last_in:
            bad.append(
                f"step {step}: a rank left the barrier {(last_in - first_out) * 1e3:.2f} ms before the last one entered it"
            )
    return bad


def message_violations(result) -> list[str]:
    """Pipeline messages received (the wait's end) before they were sent (the send's start)."""
    tl = result.timeline
    sends = tl[tl.name.str.startswith("send activation") | tl.name.str.startswith("send gradient")]
    waits = tl[tl.name.str.startswith("wait for activation") | tl.name.str.startswith("wait for gradient")]
    bad = []
    for s in sends.itertuples(index=False):
        what = s.name.removeprefix("send ")
        dst = s.rank + 1 if what.startswith("activation") else s.rank - 1
        match = waits[(waits["rank"] == dst) & (waits.step == s.step) & (waits.name == f"wait for {what}")]
        assert len(match) == 1, f"no single receive for {s.name} of rank {s.rank} in step {s.step}"
        if match.end_s.iloc[0] < s.start_s:
            late = (s.start_s - match.end_s.iloc[0]) * 1e3
            bad.append(f"step {s.step}: rank {dst} got {what} {late:.2f} ms before rank {s.rank} sent it")
    return bad


def spreads_ms(result) -> pd.DataFrame:
    """Per step: how far apart the ranks' step ends and starts are, and the slowest rank's step time (for the report)."""
    g = result.steps.groupby("step")
    return pd.DataFrame(
        {
            "end_spread_ms": (g.end_s.max() - g.end_s.min()) * 1e3,
            "start_spread_ms": (g.start_s.max() - g.start_s.min()) * 1e3,
            "step_ms": (result.steps.end_s - result.steps.start_s).groupby(result.steps.step).max() * 1e3,
        }
    ).round(2)


@pytest.fixture
def loaded_machine():
    """Two processes that spin for the whole test: more runnable threads than cores, as on a busy laptop."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.2)
        yield
    finally:
        for p in busy:
            p.kill()
        for p in busy:
            p.wait()


@pytest.mark.slow
def test_ranks_share_one_clock_on_a_loaded_machine(loaded_machine) -> None:
    dp, pipe = run(DP), run(PIPE)
    for r in (dp, pipe):
        assert r.meta["clock_offsets_s"] == [0.0] * 4 and r.meta["clock_offset_uncertainty_s"] == [0.0] * 4
        assert r.meta["clock_sync"] == [SHARED_CLOCK] * 4
    report = f"\ndata parallel:\n{spreads_ms(dp)}\npipeline:\n{spreads_ms(pipe)}"
    assert not barrier_violations(dp, "end-of-step barrier"), barrier_violations(dp, "end-of-step barrier") + [report]
    assert not barrier_violations(pipe, "pipeline flush"), barrier_violations(pipe, "pipeline flush") + [report]
    assert not message_violations(pipe), message_violations(pipe) + [report]
    print(report)


class FakeEvent:
    """A CUDA event whose work runs the moment it is recorded (what an idle device does), timed by perf_counter."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.at = float("nan")

    def record(self) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, other: FakeEvent) -> float:
        return (other.at - self.at) * 1e3


def test_cuda_clock_places_event_times_on_the_common_host_origin(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    clock = CudaClock(torch.device("cpu"))
    origin = time.perf_counter() - 100.0  # rank 0 chose it long before this rank's clock was made
    clock.set_origin(origin)
    time.sleep(0.01)
    before = time.perf_counter()
    event = clock.mark()
    after = time.perf_counter()
    assert before - origin - 1e-4 <= clock.seconds(event) <= after - origin + 1e-4
    assert clock.seconds(after) == pytest.approx(after - origin, abs=1e-12)  # a host-side mark, same origin


def skewed_clock_target(payload: dict, rank: int, world: int, out_dir: str) -> None:
    """launch() target: ranks 1 and 2 read a clock off by SKEW_S; the time base must find the offsets."""
    skew = SKEW_S.get(rank, 0.0)
    measured = common_time_base(rank, world, now=lambda: time.perf_counter() + skew, measure=[1, 2, 3])
    shared = common_time_base(rank, world)  # one host: nothing to measure
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps({"measured": vars(measured), "shared": vars(shared), "skew": skew, "now": time.perf_counter()})
    )


@pytest.mark.slow
def test_ping_pong_finds_each_rank_offset_within_its_uncertainty(tmp_path: Path) -> None:
    launch("test_time_base:skewed_clock_target", {}, 4, tmp_path, threads_per_rank=1, timeout_s=60)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    base = got[0]["measured"]
    assert base["offsets_s"][0] == 0.0 and base["uncertainty_s"][0] == 0.0
    for r in (1, 2, 3):  # rank 3 reads the true clock: its offset is 0, and a one-host estimate is bounded by causality
        offset, unc = base["offsets_s"][r], base["uncertainty_s"][r]
        assert 0 < unc < 0.05, (r, unc)
        assert abs(offset - SKEW_S.get(r, 0.0)) <= unc + 1e-6, (r, offset, unc)
        assert got[r]["measured"]["offsets_s"] == base["offsets_s"]  # every rank knows every offset
        origin_on_rank0_clock = got[r]["measured"]["origin"] - SKEW_S.get(r, 0.0)
        assert abs(origin_on_rank0_clock - base["origin"]) <= unc + 1e-6
    assert base["methods"][0] == SHARED_CLOCK and all(m.startswith("ping-pong") for m in base["methods"][1:])
    for g in got:
        shared = g["shared"]
        assert shared["offsets_s"] == [0.0] * 4 and shared["methods"] == [SHARED_CLOCK] * 4
        assert shared["origin"] == got[0]["shared"]["origin"]  # literally rank 0's reading
