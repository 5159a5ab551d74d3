"""run(), RunResult and sweep(): the contract notebooks and other code rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from dpkit import RunConfig, RunResult, run, sweep
from dpkit.workloads import build_model


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_single_process_loss_decreases_on_each_workload(model: str) -> None:
    cfg = RunConfig(model=model, steps=25, global_batch=64, lr=0.05, threads_per_rank=2)
    losses = run(cfg).losses
    assert len(losses) == 25
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.9 * first, (model, losses)


def test_same_seed_gives_bit_identical_losses(small: RunConfig) -> None:
    cfg = small.replace(parallelism="data", world_size=2)
    a, b = run(cfg), run(cfg)
    assert a.losses == b.losses
    for k, v in a.final_state_dict.items():
        assert torch.equal(v, b.final_state_dict[k])
    assert run(cfg.replace(seed=1)).losses != a.losses


def test_result_contract(small: RunConfig) -> None:
    cfg = small.replace(parallelism="data", world_size=2, steps=4)
    r = run(cfg)
    assert len(r.losses) == 4 and all(isinstance(v, float) for v in r.losses)
    expected_keys = set(build_model(cfg, 0).state_dict())
    assert set(r.final_state_dict) == expected_keys
    assert all(v.device.type == "cpu" for v in r.final_state_dict.values())
    tl = r.timeline
    assert list(tl.columns[:7]) == ["rank", "step", "kind", "name", "start_s", "end_s", "bytes"]
    assert set(tl.kind) <= {"compute", "comm", "idle", "bubble"}
    assert {"compute", "comm"} <= set(tl.kind)
    assert set(tl["rank"]) == {0, 1} and set(tl.step) == set(range(4))
    assert (tl.end_s >= tl.start_s).all()
    s = r.summary
    for key in ("step_time_s", "samples_per_s", "comm_s", "exposed_comm_s", "compute_s", "bytes_sent_per_step"):
        assert s[key] >= 0, key
    assert s["clock"] == "perf_counter" and s["threads_per_rank"] == 1
    assert s["backend"] == "gloo" and s["device"] == "cpu"
    assert s["bytes_sent_per_step"] > 0 and s["exposed_comm_s"] <= s["comm_s"] + 1e-9
    assert s["samples_per_s"] == pytest.approx(cfg.global_batch / s["step_time_s"])
    frame = r.to_frame()
    assert len(frame) == 1 and frame.world_size[0] == 2 and "step_time_s" in frame


def test_warmup_steps_are_excluded_from_summary(small: RunConfig) -> None:
    r = run(small.replace(steps=4, warmup=2))
    stats = r.step_stats()
    timed = stats[stats.step >= 2].groupby("step").step_time_s.max().median()
    assert r.summary["step_time_s"] == pytest.approx(timed)
    assert r.summary["timed_steps"] == 2


def test_save_and_load_round_trip_without_pickle(tmp_path: Path, small: RunConfig) -> None:
    r = run(small.replace(parallelism="data", world_size=2), out=tmp_path / "r")
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"config.json", "summary.json", "losses.csv", "timeline.csv", "state_dict.npz", "trace.json"} <= files
    back = RunResult.load(tmp_path / "r")
    assert back.losses == r.losses and back.config == r.config and back.summary == r.summary
    for k, v in r.final_state_dict.items():
        assert torch.equal(back.final_state_dict[k], v)
    pd.testing.assert_frame_equal(back.timeline, r.timeline, check_dtype=False)


def test_chrome_trace_has_one_process_per_rank(tmp_path: Path, small: RunConfig) -> None:
    r = run(small.replace(parallelism="data", world_size=2), out=tmp_path)
    trace = json.loads((tmp_path / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    assert len(spans) == len(r.timeline)
    assert all(e["dur"] >= 0 and e["cat"] in ("compute", "comm", "idle", "bubble") for e in spans)


def test_sweep_saves_each_run_and_resumes(tmp_path: Path, small: RunConfig, monkeypatch) -> None:
    base = small.replace(parallelism="data", steps=2)
    frame = sweep(base, out=tmp_path, progress=False, world_size=[1, 2])
    assert list(frame.world_size) == [1, 2] and not frame.resumed.any()
    assert len([p for p in tmp_path.iterdir() if (p / "summary.json").exists()]) == 2

    import dpkit.api

    calls = []
    real_run = dpkit.api.run
    monkeypatch.setattr(dpkit.api, "run", lambda cfg, out=None: calls.append(cfg) or real_run(cfg, out))
    again = sweep(base, out=tmp_path, progress=False, world_size=[1, 2, 3])
    assert [c.world_size for c in calls] == [3]  # only the new point ran
    assert list(again.resumed) == [True, True, False]
    pd.testing.assert_series_equal(again.step_time_s[:2], frame.step_time_s, check_names=False)


def test_sweep_validates_every_point_before_running(small: RunConfig, monkeypatch) -> None:
    import dpkit.api

    monkeypatch.setattr(dpkit.api, "run", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(ValueError, match="global_batch"):
        sweep(small.replace(parallelism="data"), progress=False, world_size=[2, 5])
