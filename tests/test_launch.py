"""The launcher: failures are loud and clean, nothing is orphaned, runs do not collide."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from conftest import alive, rank_processes

from dpkit import RankFailedError, RunConfig, RunTimeoutError, run
from dpkit.runtime.launch import launch


def test_healthy_job_returns_and_leaves_nothing(tmp_path: Path) -> None:
    launch("dpkit.benchmarks.launch:all_reduce_ranks", {}, 3, tmp_path, threads_per_rank=1, timeout_s=60)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sum"] == 0 + 1 + 2
    assert result["threads"] == 1
    assert not any(alive(p) for p in result["pids"])
    assert not rank_processes()


def test_rank_exception_names_rank_and_traceback(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        launch("rank_targets:raise_on_rank", {"rank": 1}, 2, tmp_path, timeout_s=60)
    assert time.monotonic() - t0 < 20
    err = info.value
    assert err.rank == 1
    assert "deliberate failure on rank 1" in str(err)
    assert "Traceback" in err.traceback and "raise_on_rank" in err.traceback
    assert not rank_processes()


def test_killed_rank_is_reported_and_the_others_are_reaped(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        launch("rank_targets:kill_on_rank", {"rank": 1}, 3, tmp_path, timeout_s=60)
    assert time.monotonic() - t0 < 20
    assert info.value.rank == 1 and "SIGKILL" in str(info.value)
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(3)]
    assert not any(alive(p) for p in pids)
    assert not rank_processes()


@pytest.mark.slow
def test_hang_times_out_and_kills_every_rank(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(RunTimeoutError) as info:
        launch("rank_targets:hang_on_rank", {"rank": 0}, 2, tmp_path, timeout_s=3)
    elapsed = time.monotonic() - t0
    assert 3 <= elapsed < 15
    assert sorted(info.value.ranks) == [0, 1]
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(2)]
    assert not any(alive(p) for p in pids)
    assert not rank_processes()


@pytest.mark.slow
def test_caller_keeps_working_after_a_failure(tmp_path: Path, small: RunConfig) -> None:
    with pytest.raises(RankFailedError):
        launch("rank_targets:raise_on_rank", {"rank": 0}, 2, tmp_path, timeout_s=60)
    result = run(small.replace(parallelism="data", world_size=2))
    assert len(result.losses) == small.steps


def test_two_runs_at_once_do_not_collide(small: RunConfig) -> None:
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            results[i] = run(small.replace(parallelism="data", world_size=2, seed=i), queue=False)  # at once, not in turn
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results[0].losses != results[1].losses  # different seeds really ran apart
    for i in range(2):
        assert results[i].losses == run(small.replace(parallelism="data", world_size=2, seed=i)).losses


def test_default_threads_count_the_cores_this_process_may_use(monkeypatch) -> None:
    """One rank = one core: 1 thread per rank by default; the all-cores model splits the cores this process may
    use (a container granted 1 of the host's cores gets 1 thread per rank, not host cores / ranks)."""
    import os

    from dpkit.runtime import launch as launch_module
    from dpkit.runtime.cores import cores_available

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cores_available() == 1
    assert launch_module.default_threads(1, "all cores") == 1 and launch_module.default_threads(4, "all cores") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert launch_module.default_threads(2, "all cores") == 4
    assert launch_module.default_threads(1) == 1 and launch_module.default_threads(2) == 1
