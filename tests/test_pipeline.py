"""Pipeline parallelism: the cut, the schedules (simulated, no processes), and real runs that must train
exactly as one process does."""

from __future__ import annotations

import itertools
import math
import random
from functools import cache

import pytest
from conftest import assert_same_training, reference

from dpkit import RunConfig, RunResult, run
from dpkit.strategies.pipeline import peak_in_flight, schedule
from dpkit.strategies.pipeline_cut import balanced_split, stage_cut
from dpkit.workloads import build_model, count_parameters

SMALL = RunConfig(model="mlp", hidden=32, layers=3, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=60)


@cache
def pipeline_run(schedule_: str, p: int, m: int) -> RunResult:
    """Shared between tests: each config runs once per session."""
    return run(SMALL.replace(parallelism="pipeline", world_size=p, schedule=schedule_, microbatches=m))


# ---- the cut ----------------------------------------------------------------------------------
def test_balanced_split_minimises_the_largest_stage() -> None:
    rng = random.Random(0)
    for _ in range(200):
        sizes = [rng.randint(1, 50) for _ in range(rng.randint(1, 7))]
        parts = rng.randint(1, len(sizes))
        counts = balanced_split(sizes, parts)
        assert len(counts) == parts and min(counts) >= 1 and sum(counts) == len(sizes)
        best = min(
            max(sum(sizes[a:b]) for a, b in zip((0, *cuts), (*cuts, len(sizes)), strict=True))
            for cuts in itertools.combinations(range(1, len(sizes)), parts - 1)
        )
        bounds = list(itertools.accumulate(counts))
        assert max(sum(sizes[b - c : b]) for b, c in zip(bounds, counts, strict=True)) == best


def test_stage_cut_follows_stage_layers_when_given() -> None:
    cfg = SMALL.replace(parallelism="pipeline", world_size=2, stage_layers=(1, 4))
    assert stage_cut(cfg, 2) == [["embed"], ["block0", "block1", "block2", "head"]]


@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer"])
def test_stage_cut_balances_the_built_models_blocks(model: str) -> None:
    """The cut comes from the model's layout (no model built): it must be the cut of the model the stages build."""
    cfg = SMALL.replace(model=model, hidden=16, layers=2)
    built = build_model(cfg, 0)
    names, sizes = [n for n, _ in built.named_children()], [count_parameters(b) for b in built.children()]
    for p in range(1, len(names) + 1):
        cut = stage_cut(cfg, p)
        assert [len(blocks) for blocks in cut] == balanced_split(sizes, p)
        assert [b for blocks in cut for b in blocks] == names


# ---- the schedules, simulated -----------------------------------------------------------------
def simulate(kind: str, m: int, p: int, t_f: float = 1.0, t_b: float = 2.0) -> tuple[float, list[float]]:
    """Run every stage's actions in order, each when its input is ready (sends never block, receives do).

    Returns (makespan, busy time per stage); raises if the schedules deadlock."""
    actions = [schedule(kind, m, p, s) for s in range(p)]
    done: dict[tuple[int, str, int], float] = {}
    clock, pos = [0.0] * p, [0] * p
    while any(pos[s] < len(actions[s]) for s in range(p)):
        progressed = False
        for s in range(p):
            while pos[s] < len(actions[s]):
                kind_, i = actions[s][pos[s]]
                dep = (s - 1, "F", i) if kind_ == "F" else (s + 1, "B", i)
                needed = (kind_ == "F" and s > 0) or (kind_ == "B" and s < p - 1)
                if needed and dep not in done:
                    break
                start = max(clock[s], done[dep] if needed else 0.0)
                clock[s] = done[(s, kind_, i)] = start + (t_f if kind_ == "F" else t_b)
                pos[s] += 1
                progressed = True
        if not progressed:
            raise AssertionError(f"{kind} deadlocks at p={p}, m={m}: positions {pos}")
    return max(clock), [m * (t_f + t_b)] * p


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
def test_schedules_run_every_microbatch_once_without_deadlock_and_bubble_matches_formula(kind: str) -> None:
    for p, m in itertools.product(range(1, 6), range(1, 9)):
        for s in range(p):
            acts = schedule(kind, m, p, s)
            assert sorted(acts) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            assert all(acts.index(("F", i)) < acts.index(("B", i)) for i in range(m))
        makespan, busy = simulate(kind, m, p)
        bubble = sum(makespan - b for b in busy) / (p * makespan)
        assert math.isclose(bubble, (p - 1) / (m + p - 1)), (kind, p, m)


def test_naive_schedule_has_one_stage_busy_at_a_time() -> None:
    for p in range(1, 6):
        makespan, busy = simulate("naive", 1, p)
        assert math.isclose(makespan, sum(busy))


def test_1f1b_keeps_at_most_p_minus_s_microbatches_in_flight_gpipe_keeps_m() -> None:
    for p, m in itertools.product(range(1, 6), range(1, 9)):
        for s in range(p):
            assert peak_in_flight(schedule("1f1b", m, p, s)) == min(p - s, m)
            assert peak_in_flight(schedule("gpipe", m, p, s)) == m


# ---- real runs --------------------------------------------------------------------------------
EQUIVALENCE = [
    ("naive", 2, 1),
    ("naive", 3, 1),
    ("naive", 4, 1),
    ("gpipe", 2, 4),
    ("gpipe", 3, 2),  # m < p
    ("gpipe", 4, 6),  # m not a multiple of p
    ("1f1b", 2, 3),  # m not a multiple of p
    ("1f1b", 3, 4),
    ("1f1b", 4, 2),  # m < p
    ("1f1b", 4, 6),
]


@pytest.mark.parametrize("kind,p,m", EQUIVALENCE)
def test_pipeline_trains_like_one_process(kind: str, p: int, m: int) -> None:
    result = pipeline_run(kind, p, m)
    assert_same_training(result, reference(SMALL))
    counts = result.extra["params"]
    assert sum(counts.values()) == count_parameters(build_model(SMALL, 0))
    blocks = [b for r in sorted(result.extra["blocks"], key=int) for b in result.extra["blocks"][r]]
    assert blocks == ["embed", "block0", "block1", "block2", "head"]


def test_measured_in_flight_1f1b_at_most_p_and_below_gpipe() -> None:
    p, m = 4, 6
    f1b = pipeline_run("1f1b", p, m).extra["peak_in_flight"]
    gpipe = pipeline_run("gpipe", p, m).extra["peak_in_flight"]
    assert max(f1b.values()) <= p < max(gpipe.values()) == m
    assert f1b == {str(s): min(p - s, m) for s in range(p)}


def test_bubble_and_stage_traffic_are_measured() -> None:
    p, m = 4, 6
    result = pipeline_run("gpipe", p, m)
    s = result.summary
    assert s["bubble_fraction_formula"] == pytest.approx((p - 1) / (m + p - 1))
    assert 0 < s["bubble_fraction"] < 1
    assert "bubble" in set(result.timeline.kind)
    # each boundary carries the global batch's activations forward and their gradients back: (batch, hidden) floats
    assert s["bytes_sent_per_step_all_ranks"] == 2 * (p - 1) * SMALL.global_batch * SMALL.hidden * 4


@pytest.mark.parametrize(
    "kw",
    [
        dict(model="transformer", hidden=16, layers=2, seq_len=8, global_batch=8, schedule="1f1b", microbatches=2, world_size=3),
        dict(
            model="cnn", hidden=4, layers=2, global_batch=8, schedule="gpipe", microbatches=4, world_size=2, stage_layers=(3, 1)
        ),
    ],
    ids=["transformer", "cnn"],
)
def test_pipeline_trains_like_one_process_on_other_models(kw: dict) -> None:
    cfg = SMALL.replace(parallelism="pipeline", **kw)
    assert_same_training(run(cfg), reference(cfg))


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(world_size=6), "world_size"),  # 6 stages, 5 blocks
        (dict(world_size=2, microbatches=0), "microbatches"),
        (dict(world_size=2, stage_layers=(4, 2)), "stage_layers"),
        (dict(world_size=2, microbatches=5), "global_batch"),
    ],
)
def test_bad_pipeline_configs_fail_before_any_process_starts(kw: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}="):
        SMALL.replace(parallelism="pipeline", **kw)
