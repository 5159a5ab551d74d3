"""Data x pipeline hybrid: replicas of a pipeline on a 2-D grid must train exactly as one process does."""

from __future__ import annotations

import pytest
from conftest import assert_same_training, reference

from dpkit import RunConfig, run
from dpkit.api import roles_of
from dpkit.strategies.hybrid import grid_position
from dpkit.workloads import build_model, count_parameters

SMALL = RunConfig(model="mlp", hidden=32, layers=3, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=60)


def test_grid_puts_consecutive_ranks_in_one_pipeline() -> None:
    assert [grid_position(r, 4, 2) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [grid_position(r, 6, 3) for r in range(6)] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert roles_of(SMALL.replace(parallelism="hybrid", world_size=4, microbatches=2))[3] == "replica 1 stage 1"


@pytest.mark.parametrize(
    "kw",
    [
        dict(schedule="1f1b", microbatches=2, grad_sync="bucketed"),
        dict(schedule="gpipe", microbatches=3, grad_sync="flat", allreduce_algo="ring"),
    ],
    ids=["2x2-1f1b-bucketed", "2x2-gpipe-flat-ring"],
)
def test_hybrid_trains_like_one_process(kw: dict) -> None:
    cfg = SMALL.replace(parallelism="hybrid", world_size=4, **kw)
    result = run(cfg)
    assert_same_training(result, reference(SMALL))
    extra = result.extra
    assert extra["replica"] == {"0": 0, "1": 0, "2": 1, "3": 1} and extra["stage"] == {"0": 0, "1": 1, "2": 0, "3": 1}
    full = count_parameters(build_model(cfg, 0))
    assert extra["params"]["0"] + extra["params"]["1"] == full  # one replica's stages hold the whole model
    assert extra["params"]["0"] == extra["params"]["2"]
    grad_comm = result.timeline[(result.timeline.kind == "comm") & result.timeline.name.str.startswith("allreduce")]
    assert set(grad_comm["rank"]) == {0, 1, 2, 3}  # every stage averages its gradients with its other replica
    assert result.summary["bubble_fraction_formula"] == pytest.approx(1 / (kw["microbatches"] + 1))


def test_bad_hybrid_configs_fail_before_any_process_starts() -> None:
    with pytest.raises(ValueError, match="RunConfig.data_parallel_size="):
        SMALL.replace(parallelism="hybrid", world_size=4, data_parallel_size=3)
    with pytest.raises(ValueError, match="RunConfig.grad_sync="):
        SMALL.replace(parallelism="hybrid", world_size=4, microbatches=2, grad_sync="ddp")
