"""Sharded data parallelism (ZeRO stages 1-3, hand-written, and torch FSDP2) equals single-process training.

The transformer ties its embedding to its output head (one parameter used by two blocks) and freezes its
positional embedding; its flat buffers are not multiples of the world size, so shards are padded. The
attention key biases are frozen too: softmax ignores a shift of the keys, so their gradient is exactly
zero in exact arithmetic and rounding noise of order 1e-10 in any parallel sum, which Adam (dividing by
the gradient's own size) turns into full learning-rate steps; plain data parallelism with Adam differs
from single-process training there just as much. Bytes per rank are checked exactly against the ring's
count, and memory against what a shard holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_same_training, reference, reference_config

from dpkit import RunConfig, run
from dpkit.cli import main as cli_main
from dpkit.cost.model import Link, allreduce_time, ring_terms, zero_bytes_per_rank, zero_comm_time, zero_terms
from dpkit.cost.step_model import ComputeProfile
from dpkit.runtime.launch import launch
from dpkit.strategies.registry import spec_for
from dpkit.strategies.specs.zero import SPEC as ZERO
from dpkit.workloads import build_model

TRICKY = RunConfig(
    parallelism="data",
    model="transformer",
    hidden=16,
    layers=2,
    seq_len=8,
    tie_weights=True,
    freeze=("embed.pos", "block0.attn.k.bias", "block1.attn.k.bias"),
    global_batch=24,
    steps=3,
    threads_per_rank=1,
    bucket_mb=0.01,  # several units for stages 1 and 2 even in this small model
    timeout_s=120,
)
MLP = RunConfig(parallelism="data", model="mlp", hidden=64, layers=3, global_batch=24, steps=3, threads_per_rank=1, timeout_s=120)


def shard_numel(numel: int, n: int) -> int:
    return -(-numel // n)


def expected_ring_bytes(result, cfg: RunConfig) -> int:
    """Exactly what a rank sends per step with the ring: n-1 shards per collective per unit; stage 3 gathers
    each block's unit twice (forward, backward) and the shared (tied) unit once; stages 2 and 3 reduce-scatter
    every micro-step, stage 1 once per step."""
    n, stage = cfg.world_size, cfg.zero_stage
    total = 0
    for name, numel in result.extra["units"]["0"].items():
        gathers = 2 if stage == 3 and name != "shared" else 1
        reduces = cfg.grad_accum if stage >= 2 else 1
        gathers *= cfg.grad_accum if stage == 3 else 1
        total += (gathers + reduces) * (n - 1) * shard_numel(numel, n) * 4
    return total


def check_memory(result, cfg: RunConfig) -> None:
    """Every rank's optimizer state is its shards' (SGD: one momentum; Adam: two moments and a step count per
    unit); gradients are whole in stage 1 and shards after; parameters are shards (plus frozen ones) in stage 3."""
    n = cfg.world_size
    units = result.extra["units"]["0"]
    shards = sum(shard_numel(numel, n) * 4 for numel in units.values())
    whole = shards * n
    optimizer = 2 * shards + 4 * len(units) if cfg.optimizer == "adam" else shards
    frozen = sum(p.numel() * 4 for p in build_model(cfg, 0).parameters() if not p.requires_grad)
    for rank in range(n):
        mem = result.extra["memory"][str(rank)]
        assert mem["optimizer_bytes"] == optimizer, (rank, mem)
        assert mem["grads_bytes"] == (whole if cfg.zero_stage == 1 else shards)
        assert mem["params_bytes"] == (shards + frozen if cfg.zero_stage == 3 else whole + frozen)


# ---- equivalence --------------------------------------------------------------------------------
# Adam at every stage runs in the fast tier in test_ring_matches_and_sends_exactly_its_count (4 ranks, with the same
# memory check); here, at 3 ranks, it is in the slow tier.
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adam", marks=pytest.mark.slow)])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_every_stage_matches_single_process(stage: int, optimizer: str) -> None:
    cfg = TRICKY.replace(world_size=3, zero_stage=stage, optimizer=optimizer)
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    assert any(numel % 3 for numel in result.extra["units"]["0"].values()), "no unit needed padding: shards were even"
    if stage == 3:
        assert "shared" in result.extra["units"]["0"]  # the tied weight, used by the embedding and the head
    check_memory(result, cfg)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_ring_matches_and_sends_exactly_its_count(stage: int) -> None:
    cfg = TRICKY.replace(world_size=4, zero_stage=stage, allreduce_algo="ring", grad_sync="flat", optimizer="adam")
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    assert result.summary["bytes_sent_per_step"] == expected_ring_bytes(result, cfg)
    assert set(result.timeline[result.timeline.kind == "comm"].bytes_source) == {"counted"}
    check_memory(result, cfg)  # Adam's two moments and step count per unit, sharded
    if stage < 3:  # the formula within the padding (stage 3 gathers the tied weight once: below 3(n-1)/n P)
        params = sum(p.numel() for p in build_model(cfg, 0).parameters() if p.requires_grad) * 4
        assert result.summary["bytes_sent_per_step"] == pytest.approx(zero_bytes_per_rank(stage, params, 4), rel=0.01)


def test_stage3_bytes_are_three_halves_of_data_parallel() -> None:
    """An MLP of equal blocks (no tied weight): ZeRO-3 sends 3(n-1)/n P, plain data parallelism 2(n-1)/n P."""
    cfg = MLP.replace(world_size=2, zero_stage=3, allreduce_algo="ring", grad_sync="bucketed")
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    params = sum(p.numel() for p in build_model(cfg, 0).parameters()) * 4
    assert result.summary["bytes_sent_per_step"] == expected_ring_bytes(result, cfg) == zero_bytes_per_rank(3, params, 2)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_gradient_accumulation(stage: int) -> None:
    """Stage 1 reduces once per step (like DDP's no_sync); stages 2 and 3 reduce every micro-step into the shard."""
    cfg = TRICKY.replace(world_size=2, zero_stage=stage, grad_accum=2, allreduce_algo="ring")
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    assert result.summary["bytes_sent_per_step"] == expected_ring_bytes(result, cfg)


@pytest.mark.parametrize(("world_size", "optimizer"), [(2, "sgd"), (4, "adam")])
def test_fsdp2_matches_single_process(world_size: int, optimizer: str) -> None:
    cfg = TRICKY.replace(world_size=world_size, zero_stage=3, grad_sync="fsdp", optimizer=optimizer)
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    names = set(result.timeline[result.timeline.kind == "comm"].name)
    assert {"fsdp-all-gather", "fsdp-reduce-scatter"} <= names  # FSDP2's collectives went through Comm


def test_fsdp2_sends_what_zero3_sends() -> None:
    cfg = MLP.replace(world_size=2, zero_stage=3, grad_sync="fsdp")
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    params = sum(p.numel() for p in build_model(cfg, 0).parameters()) * 4
    assert result.summary["bytes_sent_per_step"] == zero_bytes_per_rank(3, params, 2)


def test_stage3_prefetch_gathers_while_computing() -> None:
    cfg = MLP.replace(world_size=2, zero_stage=3, grad_sync="bucketed")
    tl = run(cfg).timeline
    tl = tl[tl.step >= cfg.warmup]
    compute = tl[tl.kind == "compute"]
    gathers = tl[tl.name.str.startswith("all-gather-block")]
    assert not gathers.blocking.any()
    inside = 0
    for g in gathers.itertuples():
        mine = compute[(compute["rank"] == g.rank) & (compute.step == g.step)]
        inside += int(((mine.start_s <= g.start_s) & (g.start_s < mine.end_s)).any())
    assert inside > 0, "no gather started while the rank computed: nothing was prefetched"


# ---- the collectives themselves -------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 3, 4])
def test_reduce_scatter_and_all_gather(world: int, tmp_path: Path) -> None:
    payload = {"shard_lengths": [1, 2, 7, 333], "ring_lengths": [0, 1, 5, 7, 1001]}
    launch("sharded_targets:check_collectives", payload, world, tmp_path, threads_per_rank=1, timeout_s=120)
    rows = json.loads((tmp_path / "collectives.json").read_text())
    cases = [r for r in rows if "shard_len" in r]
    assert len(cases) == world * 3 * 2 * 4
    for r in cases:
        assert r["rs_equal"] and r["rs_async_equal"] and r["ag_equal"] and r["ag_async_equal"], r
        assert r["rs_sent"] == r["rs_async_sent"] == r["ag_sent"] == r["ag_async_sent"] == r["predicted"], r
    assert all(r["uneven_refused"] for r in rows if "uneven_refused" in r)
    ring = [r for r in rows if "ring_length" in r]
    assert ring and all(r["halves_equal"] and r["same_bytes"] for r in ring)


# ---- configuration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"sync": "ps", "zero_stage": 1}, "zero_stage", "0 unless"),
        ({"sync": "ps-async", "zero_stage": 2}, "zero_stage", "0 unless"),
        ({"parallelism": "pipeline", "zero_stage": 3}, "zero_stage", "0 unless"),
        ({"parallelism": "tensor", "zero_stage": 1}, "zero_stage", "0 unless"),
        ({"parallelism": "hybrid", "world_size": 4, "zero_stage": 1}, "zero_stage", "0 unless"),
        ({"parallelism": "none", "world_size": 1, "zero_stage": 1}, "zero_stage", "0 unless"),
        ({"zero_stage": 4}, "zero_stage", "1 (optimizer state), 2 (+ gradients) or 3"),
        ({"zero_stage": -1}, "zero_stage", ">= 0"),
        ({"zero_stage": 1, "grad_sync": "fsdp"}, "grad_sync", "only with zero_stage=3"),
        ({"zero_stage": 2, "grad_sync": "ddp"}, "grad_sync", "'flat' or 'bucketed'"),
        ({"zero_stage": 0, "grad_sync": "fsdp"}, "grad_sync", "sharded data parallelism"),
        ({"parallelism": "pipeline", "grad_sync": "fsdp"}, "grad_sync", "sharded data parallelism"),
    ],
)
def test_bad_combinations_are_refused_before_any_process_starts(changes: dict, field: str, words: str) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}=") as info:
        RunConfig(**{"parallelism": "data", "world_size": 2, "global_batch": 24, **changes})
    assert words in str(info.value)


def test_the_spec_selects_and_the_baseline_is_single_process() -> None:
    cfg = TRICKY.replace(world_size=2, zero_stage=2)
    assert spec_for(cfg) is ZERO and spec_for(cfg.replace(zero_stage=0)) is not ZERO
    base = reference_config(cfg)
    assert base.zero_stage == 0 and base.world_size == 1 and spec_for(base).parallelism == "none"
    assert ZERO.label(cfg) == "data/zero2/bucketed/native"
    assert ZERO.label(cfg.replace(zero_stage=3, grad_sync="fsdp", allreduce_algo="tree")) == "data/zero3/fsdp2/native"


# ---- the cost model ----------------------------------------------------------------------------------
def test_zero_traffic_formulas() -> None:
    p, n = 4e6, 4
    assert zero_terms(1, p, n) == zero_terms(2, p, n) == ring_terms(p, n)  # reduce-scatter + all-gather = all-reduce
    assert zero_bytes_per_rank(0, p, n) == zero_bytes_per_rank(1, p, n) == 2 * (n - 1) / n * p
    assert zero_bytes_per_rank(3, p, n) == 3 * (n - 1) / n * p
    assert zero_bytes_per_rank(3, p, 1) == 0
    link = Link(alpha=30e-6, bandwidth=1.25e9, gamma=1e-10)
    assert zero_comm_time(2, p, n, link) == pytest.approx(allreduce_time("ring", p, n, link))
    with pytest.raises(ValueError, match="stage 4"):
        zero_terms(4, p, n)


def test_predict_prices_the_stages() -> None:
    link = Link(alpha=0.0, bandwidth=1.25e9, name="10GbE, no latency")  # bytes alone: stage 3 has more units, so more messages
    profile = ComputeProfile(batch=16, forward_s=0.01, backward_s=0.02, optimizer_s=0.004, threads=1)
    cfg = MLP.replace(world_size=4, global_batch=64, grad_sync="flat")
    one, three = (ZERO.predict(cfg.replace(zero_stage=s), link, profile, cores=64) for s in (1, 3))
    assert three["comm_s"] == pytest.approx(1.5 * one["comm_s"], rel=0.01)  # one more all-gather (units pad differently)
    assert one["exposed_comm_s"] == one["comm_s"]  # flat: nothing overlaps
    assert one["compute_s"] == pytest.approx(0.01 + 0.02 + 0.004 / 4)  # a rank steps a quarter of the parameters
    hidden = ZERO.predict(cfg.replace(zero_stage=3, grad_sync="bucketed"), link, profile, cores=64)
    assert hidden["exposed_comm_s"] < hidden["comm_s"]


@pytest.mark.slow
def test_bench_zero_quick(tmp_path: Path, capsys) -> None:
    """`dpkit bench zero --quick` runs every variant and writes what it promises (speed is not asserted)."""
    assert cli_main(["bench", "zero", "--quick", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "zero.csv").set_index("variant")
    assert list(table.index) == ["zero0 (data parallel)", "zero1", "zero2", "zero3", "fsdp2"]
    sent = table.bytes_sent_per_step
    assert sent["zero1"] == sent["zero2"] == pytest.approx(sent["zero0 (data parallel)"], rel=1e-4)  # up to the padding
    assert sent["zero0 (data parallel)"] == table.bytes_formula["zero1"]
    assert sent["zero3"] == pytest.approx(1.5 * sent["zero1"], rel=0.01) and sent["fsdp2"] == pytest.approx(
        sent["zero3"], rel=0.01
    )
    adam = table.optimizer_bytes
    assert adam["zero1"] == pytest.approx(
        adam["zero0 (data parallel)"] / 4, rel=0.01
    )  # a quarter of the state on each of 4 ranks
    assert adam["zero2"] == adam["zero1"] == pytest.approx(adam["zero3"], rel=1e-3)  # units differ: padding, step counts
    assert adam["fsdp2"] == pytest.approx(adam["zero3"], rel=0.01)
    assert "ZeRO-3 / FSDP2 median step time" in capsys.readouterr().out


# ---- the whole grid (slow) --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algo", ["native", "ring"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_grid_matches_single_process(world_size: int, stage: int, optimizer: str, algo: str) -> None:
    cfg = TRICKY.replace(world_size=world_size, zero_stage=stage, optimizer=optimizer, allreduce_algo=algo)
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    check_memory(result, cfg)
    if algo == "ring":
        assert result.summary["bytes_sent_per_step"] == expected_ring_bytes(result, cfg)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["native", "ring"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_fsdp2_grid_matches_single_process(world_size: int, optimizer: str, algo: str) -> None:
    cfg = TRICKY.replace(world_size=world_size, zero_stage=3, grad_sync="fsdp", optimizer=optimizer, allreduce_algo=algo)
    assert_same_training(run(cfg), reference(cfg))
