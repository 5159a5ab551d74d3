"""RunConfig(profile=True): torch.profiler's ops land in trace.json beside dpkit's spans, on one time axis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpkit import RunConfig, RunResult, run
from dpkit.runtime.profiler import EXTRA_KEY, TID_BASE, clock_map, trace_events
from dpkit.viz.trace_plots import trace_step_plot


def test_clock_map_is_the_line_through_the_two_markers() -> None:
    to_run = clock_map([1_000.0, 2_001_000.0], [5.0, 7.0])  # profiler µs -> run s; the profiler runs at the same rate
    assert to_run(1_000.0) == pytest.approx(5.0)
    assert to_run(1_001_000.0) == pytest.approx(6.0)
    drifting = clock_map([0.0, 1_000_000.0], [0.0, 1.001])  # 1 ms per s apart: the rate is corrected too
    assert drifting(500_000.0) == pytest.approx(0.5005)


def test_trace_events_put_each_profiler_thread_on_its_own_track_under_its_rank() -> None:
    extra = {
        EXTRA_KEY: {
            "1": [{"name": "aten::mm", "start_s": 0.002, "end_s": 0.003, "thread": 7, "device": "cpu"}],
            "0": [
                {"name": "aten::addmm", "start_s": 0.001, "end_s": 0.0015, "thread": 7, "device": "cpu"},
                {"name": "gemm", "start_s": 0.0012, "end_s": 0.0014, "thread": -1, "device": "cuda"},
            ],
        }
    }
    events = trace_events(extra)
    spans = [e for e in events if e["ph"] == "X"]
    assert [(e["pid"], e["name"]) for e in spans] == [(0, "aten::addmm"), (0, "gemm"), (1, "aten::mm")]
    assert spans[0]["ts"] == pytest.approx(1000.0) and spans[0]["dur"] == pytest.approx(500.0)
    assert all(e["tid"] >= TID_BASE for e in events)  # never on dpkit's own tracks (0-2)
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M"}
    assert names == {(0, "torch.profiler: CPU thread 7"), (0, "torch.profiler: GPU 0"), (1, "torch.profiler: CPU thread 7")}
    assert trace_events({}) == []


@pytest.mark.slow  # two runs of 2 ranks each
def test_profiled_run_writes_one_trace_with_both_and_aligned(tmp_path: Path) -> None:
    cfg = RunConfig(parallelism="data", world_size=2, model="mlp", hidden=32, layers=3, global_batch=24, steps=3,
                    threads_per_rank=1, timeout_s=120)  # fmt: skip
    plain, profiled = run(cfg), run(cfg.replace(profile=True))
    assert profiled.losses == plain.losses  # profiling watches; it does not change training
    assert EXTRA_KEY not in plain.extra and "torch.profiler" not in json.dumps(plain.chrome_trace())

    folder = profiled.save(tmp_path / "run")
    trace = json.loads((folder / "trace.json").read_text())  # what Perfetto / chrome://tracing load
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans if e["cat"] == "torch.profiler"} == {0, 1}
    assert RunResult.load(folder).extra[EXTRA_KEY].keys() == {"0", "1"}

    fig = trace_step_plot(profiled, rank=1)  # the docs' figure: dpkit's lanes over the profiler's
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "dpkit: compute" in labels and any(t.startswith("torch.profiler: thread") for t in labels)
    with pytest.raises(ValueError, match="profile=True"):
        trace_step_plot(plain)

    for rank in (0, 1):
        # one axis: every forward span of dpkit holds the profiler's aten::linear calls of that forward,
        # to within the measured alignment uncertainty (a few µs) plus a margin for the profiler's own stamps
        tol_us = 50 + 2e6 * profiled.extra["profiler_alignment_uncertainty_s"][str(rank)]
        forwards = [e for e in spans if e["pid"] == rank and e["cat"] == "compute" and e["name"] == "forward"]
        linears = [e for e in spans if e["pid"] == rank and e["cat"] == "torch.profiler" and e["name"] == "aten::linear"]
        step_spans = [(s.start_s * 1e6, s.end_s * 1e6) for s in profiled.steps[profiled.steps["rank"] == rank].itertuples()]
        assert len(forwards) == cfg.steps and linears
        for f in forwards:
            inside = [e for e in linears if f["ts"] - tol_us <= e["ts"] <= f["ts"] + f["dur"] + tol_us]
            assert len(inside) >= cfg.model_layers, (f, linears)
            assert all(e["ts"] + e["dur"] <= f["ts"] + f["dur"] + tol_us for e in inside)
        in_steps = [e for e in linears if any(a <= e["ts"] <= b for a, b in step_spans)]
        assert len(in_steps) >= cfg.steps * cfg.model_layers
        for e in in_steps:  # within a step, every linear is inside a forward (a clock shift would push some out)
            assert any(f["ts"] - tol_us <= e["ts"] and e["ts"] + e["dur"] <= f["ts"] + f["dur"] + tol_us for f in forwards), e


def test_profile_false_keeps_the_run_ids_of_before() -> None:
    """Result folders and sweeps saved before the field existed still match their configs; a profiled run is another run."""
    import hashlib

    cfg = RunConfig(parallelism="data", world_size=2)
    from dpkit.config import ADDED_AT_DEFAULT

    without = {k: v for k, v in cfg.to_dict().items() if k not in ADDED_AT_DEFAULT}
    assert cfg.run_id() == hashlib.sha1(json.dumps(without, sort_keys=True).encode()).hexdigest()[:12]
    assert cfg.replace(profile=True).run_id() != cfg.run_id()
