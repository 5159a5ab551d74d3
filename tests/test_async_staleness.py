"""Staleness of parameter-server updates (issues 23 and 24): recorded for every update a server applies, in
steps (the SSP bound's unit) and in updates; the bound holds in steps; saved and loaded with the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpkit import RunConfig, RunResult, run
from dpkit.strategies.parameter_server.staleness import STALENESS_COLUMNS, staleness_frame, staleness_summary
from dpkit.viz import ps_tables as ps

# 4 workers, 2 servers, worker 0 a straggler: the others run ahead until the bound holds them
SSP = RunConfig(
    model="mlp", hidden=32, layers=2, global_batch=48, steps=10, warmup=1, threads_per_rank=1, timeout_s=60,
    parallelism="data", sync="ps-async", world_size=4, num_servers=2, straggler_ranks=(0,), straggler_delay_s=0.03,
)  # fmt: skip


def check_recorded_once_in_order(result: RunResult) -> None:
    """Every server rated every worker's every step exactly once, each worker's steps in order."""
    cfg, frame = result.config, result.staleness
    assert list(frame.columns) == STALENESS_COLUMNS
    assert len(frame) == cfg.world_size * cfg.num_servers * cfg.steps
    for (_, _), g in frame.groupby(["server", "worker"]):
        assert g.step.tolist() == list(range(cfg.steps))
    first = frame[frame.step == 0]
    assert (first.staleness_steps == 0).all(), "every worker starts from step 0's parameters"
    assert (frame.staleness_steps >= 0).all() and (frame.staleness_updates >= 0).all()


# bound 2 (here) and bound 1 (test_parameter_server) check the same bound in the fast tier; bound 0 holds every
# worker to the straggler at every step (the slowest of them: 6 processes in lockstep), so it is in the slow tier
@pytest.mark.parametrize("bound", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_ssp_staleness_in_steps_never_exceeds_its_bound(bound: int, tmp_path: Path) -> None:
    result = run(SSP.replace(max_staleness=bound))
    check_recorded_once_in_order(result)
    frame, n = result.staleness, SSP.world_size
    assert frame.staleness_steps.max() <= bound
    # the other unit: the updates applied meanwhile reach past the bound (issue 23's 0-3 at bound 0), within
    # (n-1)(2s+1): each other worker may push from s steps behind to s steps ahead of this one's step
    assert frame.staleness_updates.max() <= (n - 1) * (2 * bound + 1)
    assert frame.staleness_updates.max() >= 1
    if bound:
        assert frame.staleness_steps.max() >= 1, "the straggler let the others run ahead: staleness must occur"
    assert result.summary["staleness_max"] == frame.staleness_steps.max()
    assert result.summary["staleness_mean"] == pytest.approx(frame.staleness_steps.mean())
    # saved and loaded with the result folder (the servers' records travel in extra.json, checksummed)
    loaded = RunResult.load(result.save(tmp_path / "run"))
    assert loaded.staleness.equals(frame)
    assert loaded.summary["staleness_max"] == result.summary["staleness_max"]


@pytest.mark.slow  # test_parameter_server's straggler test checks the same in the fast tier
def test_unbounded_async_staleness_grows_with_a_straggler() -> None:
    result = run(SSP.replace(world_size=3, steps=8, straggler_delay_s=0.1))
    check_recorded_once_in_order(result)
    assert result.staleness.staleness_steps.max() >= 2  # nothing holds the fast workers back


def test_staleness_tables_name_both_units() -> None:
    extra = {
        "ps_shard": {"2": 0},
        "staleness": {"2": [[0, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1], [1, 0, 0, 2]]},
    }
    frame = staleness_frame(extra)
    assert frame.server.tolist() == [0] * 4 and frame.staleness_updates.tolist() == [0, 1, 1, 2]
    assert staleness_summary(frame) == {"staleness_mean": 0.25, "staleness_max": 1}
    assert staleness_frame({}).empty and staleness_summary(staleness_frame({})) == {}

    class Result:  # the two attributes the tables read
        staleness = frame
        config = RunConfig(parallelism="data", sync="ps-async", world_size=2, max_staleness=1)

    hist = ps.staleness_histogram(Result(), "staleness_updates")  # type: ignore[arg-type]
    assert hist.to_dict("list") == {"staleness_updates": [0, 1, 2], "updates": [1, 2, 1]}
    both = ps.staleness_both_units(Result())  # type: ignore[arg-type]
    assert set(both.unit) == set(ps.STALENESS_UNITS.values()) and both.attrs["bound"] == 1
    assert both.groupby("unit").updates.sum().tolist() == [4, 4]
    with pytest.raises(ValueError, match="staleness_steps"):
        ps.staleness_histogram(Result(), "staleness")  # type: ignore[arg-type]
