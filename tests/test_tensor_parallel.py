"""Tensor parallelism: shards reassemble into the model, and real runs train exactly as one process does."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_training, reference

from dpkit import RunConfig, run
from dpkit.strategies.tensor_parallel import TensorParallel, parallelize, sharded_state
from dpkit.strategies.tp_layers import SHARD_DIM
from dpkit.workloads import build_model, count_parameters

MLP = RunConfig(model="mlp", hidden=32, layers=2, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=60)
TRANSFORMER = MLP.replace(model="transformer", hidden=16, layers=2, seq_len=8, global_batch=8)


@pytest.mark.parametrize("cfg", [MLP, TRANSFORMER], ids=["mlp", "transformer"])
@pytest.mark.parametrize("tp", [2, 4])
def test_shards_merge_back_into_the_full_model(cfg: RunConfig, tp: int) -> None:
    states = [sharded_state(parallelize(build_model(cfg, 0), r, tp, comm=None), replicated=r == 0) for r in range(tp)]
    merged = TensorParallel.merge_states(states)
    full = build_model(cfg, 0).state_dict()
    assert set(merged) == set(full)
    for k, v in full.items():
        assert torch.equal(merged[k], v), k
    shards = [p for p in parallelize(build_model(cfg, 0), 0, tp, comm=None).parameters() if hasattr(p, SHARD_DIM)]
    # per FeedForward: up.weight, up.bias, down.weight (down.bias is replicated); attention adds q/k/v weights + biases, proj.weight
    per_block = 3 + (7 if cfg.model == "transformer" else 0)
    assert len(shards) == per_block * cfg.layers


@pytest.mark.parametrize(
    "cfg",
    [
        MLP.replace(parallelism="tensor", world_size=2),
        MLP.replace(parallelism="tensor", world_size=4),
        TRANSFORMER.replace(parallelism="tensor", world_size=2),
        TRANSFORMER.replace(parallelism="tensor", world_size=4),
        MLP.replace(parallelism="tensor", world_size=2, allreduce_algo="ring", grad_accum=2),
    ],
    ids=["mlp-2", "mlp-4", "transformer-2", "transformer-4", "mlp-2-ring-accum"],
)
def test_tensor_parallel_trains_like_one_process(cfg: RunConfig) -> None:
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    tp = cfg.world_size
    held, sharded = result.extra["params"], result.extra["sharded_params"]
    replicated = held["0"] - sharded["0"]
    assert all(held[r] - sharded[r] == replicated for r in held)  # every rank holds the same replicated part
    assert replicated + sum(sharded.values()) == count_parameters(build_model(cfg, 0))
    # one f (backward) and one g (forward) all-reduce per parallel block and micro-step, on every rank
    blocks = cfg.layers * (2 if cfg.model == "transformer" else 1)
    names = result.timeline[result.timeline.kind == "comm"].groupby(["rank", "step"]).name
    for (_rank, _step), group in names:
        assert group.str.startswith("tp g").sum() == blocks * cfg.grad_accum
        assert group.str.startswith("tp f").sum() == blocks * cfg.grad_accum
    assert set(result.timeline["rank"]) == set(range(tp))


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(hidden=30, world_size=4), "hidden"),  # not divisible by the tensor-parallel degree
        (dict(model="transformer", hidden=24, world_size=3), "world_size"),  # 4 heads do not split 3 ways
        (dict(model="cnn", hidden=8, world_size=2), "model"),
    ],
)
def test_bad_tensor_parallel_configs_fail_before_any_process_starts(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}="):
        MLP.replace(parallelism="tensor", **kw)
