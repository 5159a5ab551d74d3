"""gloo's I/O threads are scheduled as asked (dpkit/gloo_loop.py), in launched ranks and in runs."""

import json
import sys

import pytest

from dpkit import RunConfig, run
from dpkit.runtime.gloo_loop import ENV_VAR, check_mode, default_mode
from dpkit.runtime.launch import launch

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread scheduling classes are Linux's")


def test_bad_modes_are_named_with_the_allowed_values(monkeypatch):
    with pytest.raises(ValueError, match=r"gloo_loop='busy' is not allowed: choose one of \['low', 'idle', 'normal'\]"):
        check_mode("busy")
    with pytest.raises(ValueError, match="RunConfig.gloo_loop='fast' is not allowed"):
        RunConfig(gloo_loop="fast")
    monkeypatch.setenv(ENV_VAR, "spin")
    with pytest.raises(ValueError, match=f"environment variable {ENV_VAR}='spin' is not allowed"):
        default_mode()


def test_a_bad_mode_fails_before_any_rank_starts(tmp_path):
    with pytest.raises(ValueError, match=r"launch\(gloo_loop\)='x'"):
        launch("rank_targets:report_ranks", {}, 2, tmp_path, gloo_loop="x")
    assert not list(tmp_path.iterdir())


@linux_only
@pytest.mark.parametrize("mode", ["low", "idle", "normal"])
def test_launched_ranks_have_their_loop_threads_in_the_mode(tmp_path, mode):
    launch("rank_targets:report_ranks", {"new_group": True, "mode": mode}, 2, tmp_path, gloo_loop=mode, timeout_s=60)
    for rank in range(2):
        report = json.loads((tmp_path / f"gloo_loop_rank{rank}.json").read_text())
        assert report["at_start"] == [mode]  # the world group's thread, set by the launcher
        # a group made later gets its own thread, in the default class until apply() runs again
        assert sorted(report["new_group_before_apply"]) == sorted([mode, "normal"])
        assert report["applied"] == 2
        assert report["after_apply"] == [mode, mode]


@linux_only
def test_environment_variable_sets_the_launch_and_config_default(tmp_path, monkeypatch):
    assert RunConfig().gloo_loop == "low"
    monkeypatch.setenv(ENV_VAR, "normal")
    assert RunConfig().gloo_loop == "normal"
    assert RunConfig(gloo_loop="idle").gloo_loop == "idle"  # an explicit value wins
    launch("rank_targets:report_ranks", {}, 2, tmp_path, timeout_s=60)
    assert json.loads((tmp_path / "gloo_loop_rank0.json").read_text())["at_start"] == ["normal"]


@linux_only
def test_a_run_records_the_mode_and_covers_groups_its_strategy_makes():
    cfg = RunConfig(parallelism="hybrid", world_size=4, data_parallel_size=2, model="mlp", hidden=16, steps=2, warmup=1)
    result = run(cfg)
    assert result.summary["gloo_loop"] == "low"
    # rank 0: the world group and its data-parallel group (made while building the strategy) have one each
    assert result.meta["gloo_loop_threads"] == 2
    assert (
        run(RunConfig(parallelism="data", world_size=2, hidden=16, steps=2, warmup=1, gloo_loop="normal")).summary["gloo_loop"]
        == "normal"
    )
