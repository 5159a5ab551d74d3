"""Data parallelism with all-reduce equals single-process training, for every variant and algorithm.

The model has a frozen parameter (the positional embedding) and a parameter shared by two layers
(token embedding tied to the output head); world sizes 2, 3, 4; gradient accumulation too.
"""

from __future__ import annotations

import pytest
from conftest import assert_same_training, reference

from dpkit import RunConfig, run
from dpkit.config import ALLREDUCE_ALGOS, GRAD_SYNCS

DP_SYNCS = [g for g in GRAD_SYNCS if g != "fsdp"]  # 'fsdp' is sharded data parallelism's (test_sharded_data_parallel.py)

TRICKY = RunConfig(
    parallelism="data",
    model="transformer",
    hidden=16,
    layers=2,
    seq_len=8,
    tie_weights=True,
    freeze=("embed.pos",),
    global_batch=24,
    steps=3,
    threads_per_rank=1,
    bucket_mb=0.01,  # several buckets even for this small model
    timeout_s=120,
)


WORLD_SIZES = [2, 3, 4]
# Every (world size, variant, algorithm) is 72 runs. The fast tier keeps 24 that cover every pair: every variant
# with every algorithm once, at a world size rotated so that every variant and every algorithm also meets every
# world size (test_the_fast_tier_covers_every_pair). The other 48 are in the slow tier; the full suite runs all 72.
FAST_VARIANTS = {
    (WORLD_SIZES[(i + k) % len(WORLD_SIZES)], grad_sync, algo)
    for i, grad_sync in enumerate(DP_SYNCS)
    for k, algo in enumerate(ALLREDUCE_ALGOS)
}
VARIANT_CASES = [
    pytest.param(
        n, grad_sync, algo, id=f"{algo}-{grad_sync}-{n}", marks=() if (n, grad_sync, algo) in FAST_VARIANTS else pytest.mark.slow
    )
    for algo in ALLREDUCE_ALGOS
    for grad_sync in DP_SYNCS
    for n in WORLD_SIZES
]


def test_the_fast_tier_covers_every_pair() -> None:
    pairs = {(s, a) for _, s, a in FAST_VARIANTS}, {(n, a) for n, _, a in FAST_VARIANTS}, {(n, s) for n, s, _ in FAST_VARIANTS}
    assert pairs[0] == {(s, a) for s in DP_SYNCS for a in ALLREDUCE_ALGOS}
    assert pairs[1] == {(n, a) for n in WORLD_SIZES for a in ALLREDUCE_ALGOS}
    assert pairs[2] == {(n, s) for n in WORLD_SIZES for s in DP_SYNCS}
    assert len(VARIANT_CASES) == len(WORLD_SIZES) * len(DP_SYNCS) * len(ALLREDUCE_ALGOS)


@pytest.mark.parametrize(("world_size", "grad_sync", "algo"), VARIANT_CASES)
def test_every_variant_and_algorithm_matches_single_process(world_size: int, grad_sync: str, algo: str) -> None:
    cfg = TRICKY.replace(world_size=world_size, grad_sync=grad_sync, allreduce_algo=algo)
    result = run(cfg)
    ref = reference(cfg)
    assert_same_training(result, ref)
    frozen = "embed.pos"
    assert (result.final_state_dict[frozen] == ref.final_state_dict[frozen]).all()


@pytest.mark.slow
@pytest.mark.parametrize("grad_sync", DP_SYNCS)
def test_gradient_accumulation_matches_single_process(grad_sync: str) -> None:
    cfg = TRICKY.replace(world_size=3, grad_sync=grad_sync, grad_accum=2, allreduce_algo="ring")
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    # the sync is skipped on the first micro-step: one set of all-reduces per step, not two
    one_micro = run(cfg.replace(grad_accum=1))
    assert result.summary["bytes_sent_per_step"] == pytest.approx(one_micro.summary["bytes_sent_per_step"], rel=0.01)


def test_broadcast_really_aligns_differently_seeded_ranks() -> None:
    """Ranks build their model from seed + rank; without the broadcast the replicas would differ."""
    from dpkit.workloads import build_model

    a, b = build_model(TRICKY, TRICKY.seed), build_model(TRICKY, TRICKY.seed + 1)
    assert any((pa != pb).any() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
    assert_same_training(run(TRICKY.replace(world_size=2)), reference(TRICKY))


def test_bucketed_overlap_puts_bucket_allreduces_inside_backward() -> None:
    cfg = RunConfig(parallelism="data", world_size=2, hidden=64, layers=4, global_batch=32, steps=3,
                    grad_sync="bucketed", bucket_mb=0.1, threads_per_rank=1)  # fmt: skip
    tl = run(cfg).timeline
    timed = tl[tl.step >= cfg.warmup]
    backward = timed[timed.name == "backward"]
    buckets = timed[timed.name.str.startswith("allreduce-bucket")]
    assert buckets.name.nunique() >= 3
    started_inside = 0
    for (rank, step), b in buckets.groupby(["rank", "step"]):
        bw = backward[(backward["rank"] == rank) & (backward.step == step)].iloc[0]
        started_inside += int((b.start_s < bw.end_s).sum())
    assert started_inside > 0  # at least some buckets launched before backward finished


def test_bytes_per_rank_follow_the_algorithm() -> None:
    """Per-rank bytes: ring 2(n-1)/n S, whole-tensor ring (n-1) S (docs/formulas.md)."""
    base = RunConfig(parallelism="data", world_size=4, hidden=32, layers=2, global_batch=16, steps=2,
                     grad_sync="flat", threads_per_rank=1)  # fmt: skip
    ring = run(base.replace(allreduce_algo="ring")).summary["bytes_sent_per_step"]
    whole = run(base.replace(allreduce_algo="ring-whole")).summary["bytes_sent_per_step"]
    assert whole / ring == pytest.approx((4 - 1) / (2 * (4 - 1) / 4), rel=0.01)


@pytest.mark.slow
def test_ddp_waiting_inside_backward_is_exposed_comm_not_compute() -> None:
    """DDP waits for its buckets' all-reduces inside backward(); the timing layer ends the backward's compute at
    its last gradient, so that wait is exposed comm. On a link with 20 ms latency the last bucket is delivered at
    least 20 ms after it was launched (sleeps only get longer under load: no load guard needed)."""
    cfg = TRICKY.replace(world_size=2, grad_sync="ddp", link="custom", link_latency_s=0.02, link_bandwidth_Bps=5e6)
    result = run(cfg)
    assert_same_training(result, reference(cfg))
    stats = result.step_stats()
    timed = stats[stats.step >= cfg.warmup]
    assert len(timed) == 2 * (cfg.steps - cfg.warmup)
    for s in timed.itertuples():  # counted as compute, the wait would hide the buckets: exposed would be ~0
        assert s.exposed_comm_s > 0.015, s
        assert s.hidden_comm_s < s.comm_s - 0.015, s
