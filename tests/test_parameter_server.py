"""Parameter server: sync equals single-process, async trains within its staleness bound, stragglers
hurt sync but not async, and a dead server (the single point of failure) is named, with nothing left behind."""

from __future__ import annotations

import inspect
import time

import pytest
import torch
from conftest import assert_same_training, rank_processes, reference

from dpkit import RankFailedError, RunConfig, run
from dpkit.strategies.parameter_server import layout as ps_layout
from dpkit.strategies.parameter_server.server import ParameterServer
from dpkit.strategies.parameter_server.worker import PushPullWorker
from dpkit.viz import ps_tables as ps
from dpkit.workloads import build_model

SMALL = RunConfig(model="mlp", hidden=32, layers=3, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=60)
PS = SMALL.replace(parallelism="data", sync="ps")


# ---- shard layout (no processes) -----------------------------------------------------------
def test_shards_cover_every_tensor_once_and_balance_by_size() -> None:
    sizes = [2048, 32, 4096, 128, 4096, 32, 330, 7]
    for k in (1, 2, 3, 5):
        shards = ps_layout.assign_shards(sizes, k)
        assert sorted(i for s in shards for i in s) == list(range(len(sizes)))
        loads = [sum(sizes[i] for i in s) for s in shards]
        assert max(loads) - min(loads) <= max(sizes)
    assert ps_layout.assign_shards([5, 5, 5], 2) == [[0, 2], [1]]


@pytest.mark.parametrize("model,kw", [("transformer", {"tie_weights": True}), ("mlp", {"freeze": ("embed",)})])
def test_server_states_merge_into_the_single_process_state_dict(model: str, kw: dict) -> None:
    cfg = RunConfig(model=model, hidden=16, layers=2, **kw)
    layout = ps_layout.ShardLayout(build_model(cfg, 0), 3)
    states = [layout.state_of(j) for j in range(3)]
    keys = [k for s in states for k in s]
    assert len(keys) == len(set(keys)), "a key is owned by two servers"
    full = build_model(cfg, 0).state_dict()
    assert set(keys) == set(full)
    for s in states:
        for key, value in s.items():
            assert torch.equal(value, full[key])
    assert sum(layout.numel_of(j) for j in range(3)) == sum(p.numel() for p in layout.params)


def test_the_algorithm_reads_on_one_screen_and_measures_nothing_itself() -> None:
    """Server and worker are the algorithm only: no clock reads, no byte counters (the timeline and Comm have them)."""
    for cls in (ParameterServer, PushPullWorker):
        source = inspect.getsource(cls)
        assert len(source.splitlines()) <= 150, cls.__name__
        assert "perf_counter" not in source and "bytes_in +=" not in source and "bytes_out +=" not in source


# ---- sync: the same training as one process ------------------------------------------------
@pytest.mark.parametrize(
    "workers,servers,kw",
    [
        (2, 1, {}),
        (3, 2, {"optimizer": "adam", "lr": 1e-3, "grad_accum": 2}),
        (4, 3, {}),
        (2, 3, {"freeze": ("embed",)}),
    ],
)
def test_sync_ps_matches_single_process(workers: int, servers: int, kw: dict) -> None:
    cfg = PS.replace(world_size=workers, num_servers=servers, **kw)
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    assert result.meta["world_size"] == workers and result.meta["num_processes"] == workers + servers
    assert result.meta["roles"] == ["worker"] * workers + ["server"] * servers
    stats = ps.server_stats(result)
    if servers > 1:
        assert stats.shard_numel.nunique() > 1, "this model's tensors should not split evenly"
    size = 4 * int(stats.shard_numel.sum())  # S: bytes of the trainable parameters (float32)
    # each worker pushes S and pulls S per step; each server takes in and sends out n times its shard
    for rank in range(workers):
        assert result.extra["bytes_out"][str(rank)] == result.extra["bytes_in"][str(rank)] == size * cfg.steps
    expected = (workers * 4 * stats.shard_numel).astype(float).tolist()
    assert stats.bytes_in_per_step.tolist() == stats.bytes_out_per_step.tolist() == expected
    assert (result.staleness[["staleness_steps", "staleness_updates"]] == 0).all().all()
    assert len(result.staleness) == workers * servers * cfg.steps and result.summary["staleness_max"] == 0


# ---- async: trains, and stays within its bound -----------------------------------------------
ASYNC = RunConfig(
    model="mlp", hidden=32, layers=2, global_batch=48, steps=16, warmup=1, threads_per_rank=1, timeout_s=60,
    parallelism="data", sync="ps-async", world_size=3, num_servers=2, straggler_ranks=(0,), straggler_delay_s=0.03,
)  # fmt: skip


def test_async_ps_trains_within_the_staleness_bound() -> None:
    bound = 1
    result = run(ASYNC.replace(max_staleness=bound))
    first, last = result.losses[0], sum(result.losses[-3:]) / 3
    assert last < first - 0.1, result.losses
    ups = result.staleness
    assert len(ups) == ASYNC.world_size * ASYNC.steps * ASYNC.num_servers
    assert ups.staleness_steps.max() <= bound
    n = ASYNC.world_size
    assert ups.staleness_updates.max() <= (n - 1) * (2 * bound + 1)
    curve = ps.loss_curve(result)
    assert curve.samples_seen.iloc[-1] == ASYNC.global_batch * ASYNC.steps
    assert curve.wall_s.is_monotonic_increasing


def test_straggler_slows_sync_but_not_async() -> None:
    delay = 0.2
    cfg = SMALL.replace(parallelism="data", world_size=2, steps=5, straggler_ranks=(0,), straggler_delay_s=delay)
    sync, asyn = run(cfg.replace(sync="ps")), run(cfg.replace(sync="ps-async"))

    def fast_worker_step_s(result) -> float:
        steps = result.steps[(result.steps["rank"] == 1) & (result.steps.step >= cfg.warmup)]
        return float((steps.end_s - steps.start_s).median())

    assert fast_worker_step_s(sync) >= 0.9 * delay  # sync: the fast worker waits for the straggler every step
    assert fast_worker_step_s(asyn) < 0.5 * fast_worker_step_s(sync)
    assert ps.worker_wait(sync).query("rank == 1 and step >= 1").wait_s.median() >= 0.8 * delay
    # unbounded async lets the fast worker run ahead: its gradients were computed many straggler steps ago
    assert asyn.staleness.staleness_steps.max() >= 2
    hist = ps.staleness_histogram(asyn)
    assert hist.updates.sum() == 2 * cfg.steps


# ---- failure: the single point of failure, named; nothing left behind ---------------------------
def _fails(cfg: RunConfig) -> RankFailedError:
    t0 = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        run(cfg)
    assert time.monotonic() - t0 < 30
    deadline = time.monotonic() + 10
    while rank_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not rank_processes()
    return info.value


@pytest.mark.parametrize("sync", ["ps", "ps-async"])
def test_dead_server_is_named_as_the_single_point_of_failure(sync: str) -> None:
    cfg = PS.replace(sync=sync, world_size=2, num_servers=2, steps=4, fail_rank=3, fail_at_step=2)
    err = _fails(cfg)
    assert err.rank == 3 and err.role == "parameter server 1"
    assert "parameter server (rank 3) died" in str(err) and "SIGKILL" in str(err)


def test_dead_async_worker_fails_the_run_clearly() -> None:
    cfg = PS.replace(sync="ps-async", world_size=2, num_servers=1, steps=4, fail_rank=1, fail_at_step=2)
    err = _fails(cfg)
    assert err.rank == 1 and err.role == "worker 1"
    assert "SIGKILL" in str(err) and "parameter server" not in str(err).splitlines()[0]


def test_bad_ps_configs_fail_before_any_process_starts() -> None:
    with pytest.raises(ValueError, match="max_staleness"):
        PS.replace(world_size=2, max_staleness=1)
    with pytest.raises(ValueError, match="fail_rank"):
        PS.replace(world_size=2, num_servers=1, fail_rank=3)
    with pytest.raises(ValueError, match="fail_at_step"):
        PS.replace(world_size=2, fail_rank=0, fail_at_step=3)
    with pytest.raises(ValueError, match="num_servers"):
        PS.replace(world_size=2, num_servers=0)


def test_async_is_labelled_not_reproducible_and_sync_is() -> None:
    """Async updates land in the order the workers happen to arrive: the result says so, sync says the opposite."""
    cfg = PS.replace(world_size=2, steps=2)
    assert run(cfg).summary["reproducible"] is True
    assert run(cfg.replace(sync="ps-async")).summary["reproducible"] is False
