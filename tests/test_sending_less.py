"""Sending less, end to end: compression wired into the gradient sync, local SGD, their knobs, their bytes.

The compressors themselves are checked against torch's hooks in tests/test_compression.py; here they train.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import assert_same_training, reference

from dpkit import RunConfig, run
from dpkit.analysis.sending_less import TECHNIQUES, bytes_per_step, step_time_spread, syncs_per_step, technique_config
from dpkit.config_args import config_from_args, config_parser
from dpkit.cost.sending_less import sync_bytes_sent
from dpkit.runtime.launch import launch

BASE = RunConfig(
    parallelism="data", world_size=2, model="mlp", hidden=32, layers=2, global_batch=24, steps=4, warmup=1,
    optimizer="sgd", momentum=0.9, lr=0.05, threads_per_rank=1, timeout_s=120,
)  # fmt: skip


# ---- the knobs: checked before any process starts, and on the command line ----------------------------------
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"compression": "int8"}, "compression"),
        ({"compression": "fp16", "grad_sync": "per-tensor"}, "compression"),
        ({"compression": "powersgd", "grad_sync": "ddp"}, "compression"),
        ({"compression": "topk", "sync": "ps"}, "compression"),
        ({"compression": "fp16", "zero_stage": 1, "grad_sync": "flat"}, "compression"),
        ({"compression": "powersgd", "powersgd_rank": 0}, "powersgd_rank"),
        ({"powersgd_rank": 2}, "powersgd_rank"),
        ({"compression": "topk", "topk_ratio": 0.0}, "topk_ratio"),
        ({"compression": "topk", "topk_ratio": 1.5}, "topk_ratio"),
        ({"topk_ratio": 0.5}, "topk_ratio"),
        ({"sync": "local-sgd", "local_steps": 0}, "local_steps"),
        ({"local_steps": 4}, "local_steps"),
        ({"sync": "local-sgd", "compression": "fp16"}, "compression"),
    ],
)
def test_every_new_knob_is_validated_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RunConfig.{field}="):
        BASE.replace(**changes)


def test_the_knobs_are_command_line_options() -> None:
    parser = config_parser("dpkit run", "test")
    text = parser.format_help()
    for option in ("--compression", "--powersgd-rank", "--topk-ratio", "--local-steps"):
        assert option in text, option
    args = parser.parse_args(["--parallelism", "data", "--world-size", "2", "--compression", "topk", "--topk-ratio", "0.1"])
    cfg = config_from_args(args)
    assert (cfg.compression, cfg.topk_ratio) == ("topk", 0.1)
    args = parser.parse_args(["--parallelism", "data", "--world-size", "2", "--sync", "local-sgd", "--local-steps", "4"])
    assert config_from_args(args).local_steps == 4


def test_technique_configs_select_what_they_say() -> None:
    assert technique_config(BASE, "PowerSGD", 4).powersgd_rank == 4
    assert technique_config(BASE, "top-k", 0.1).topk_ratio == 0.1
    cfg = technique_config(BASE, "local SGD", 8, link="1GbE")
    assert (cfg.sync, cfg.local_steps, cfg.link) == ("local-sgd", 8, "1GbE")
    with pytest.raises(ValueError, match="technique="):
        technique_config(BASE, "carrier pigeon")
    with pytest.raises(ValueError, match="knob="):
        technique_config(BASE, "fp16", 3)
    assert set(TECHNIQUES) >= {"all-reduce", "fp16", "bf16", "PowerSGD", "top-k", "local SGD"}


# ---- training: what must equal what --------------------------------------------------------------------------
@pytest.mark.slow
def test_compression_none_is_todays_plain_all_reduce() -> None:
    # compression='none' runs the very lines the sync ran before compression existed: its messages, its bytes
    for grad_sync in ("flat", "bucketed"):
        cfg = BASE.replace(grad_sync=grad_sync, allreduce_algo="ring", bucket_mb=0.001)
        r = run(cfg)
        assert_same_training(r, reference(cfg))
        names = set(r.timeline[r.timeline.kind == "comm"].name) - {"broadcast"}
        expected = "allreduce-flat" if grad_sync == "flat" else "allreduce-bucket"
        assert names and all(n.startswith(expected) for n in names), names


@pytest.mark.slow
def test_topk_with_ratio_one_trains_like_no_compression() -> None:
    # error feedback keeps the residual; with ratio 1 nothing is left out: the same training as a plain average
    # (the sum arrives in another order: all-gathered values added up, not a ring's partial sums)
    for grad_sync in ("flat", "bucketed"):
        plain = run(BASE.replace(grad_sync=grad_sync, bucket_mb=0.001))
        full = run(BASE.replace(grad_sync=grad_sync, bucket_mb=0.001, compression="topk", topk_ratio=1.0))
        assert_same_training(full, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp16", "bf16", "powersgd", "topk"])
def test_each_compression_trains_and_sends_its_formula_bytes(kind: str) -> None:
    cfg = BASE.replace(grad_sync="flat", allreduce_algo="ring", compression=kind, steps=6)
    if kind == "powersgd":
        cfg = cfg.replace(powersgd_rank=2)
    r = run(cfg)
    assert all(torch.isfinite(torch.tensor(r.losses)))
    assert r.losses[-1] < r.losses[0]
    shapes = [tuple(t.shape) for t in r.final_state_dict.values()]
    expected = sync_bytes_sent(kind, shapes, 2, powersgd_rank=cfg.powersgd_rank, topk_ratio=cfg.topk_ratio)
    assert bytes_per_step(r) == pytest.approx(expected, rel=1e-3), (bytes_per_step(r), expected)
    assert bytes_per_step(r) < bytes_per_step(run(cfg.replace(compression="none", powersgd_rank=1)))


def test_local_sgd_with_one_local_step_is_data_parallelism() -> None:
    # SGD with momentum: averaging the stepped copies averages their updates, which are linear in the gradients
    cfg = BASE.replace(sync="local-sgd", local_steps=1)
    local, plain = run(cfg), run(BASE.replace(grad_sync="flat"))
    assert_same_training(local, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_local_sgd_sends_one_hth_of_the_bytes_and_drifts_between_averagings() -> None:
    # steps and warm-up multiples of H: every H-th timed step averages, the mean is exactly 1/H
    cfg = BASE.replace(sync="local-sgd", steps=12, warmup=4, allreduce_algo="ring")
    every = run(cfg.replace(local_steps=1))
    fourth = run(cfg.replace(local_steps=4))
    assert bytes_per_step(fourth) == pytest.approx(bytes_per_step(every) / 4, rel=1e-9)
    per_step = fourth.step_stats().groupby("step").bytes_sent.sum()
    assert [s for s, b in per_step.items() if b > 0] == [3, 7, 11]
    assert not torch.allclose(torch.tensor(fourth.losses), torch.tensor(every.losses))  # it learns differently


def test_local_sgd_average_equals_torchs_periodic_model_averager(tmp_path) -> None:
    launch("sending_less_targets:compare_with_periodic_model_averager", {}, 2, tmp_path, threads_per_rank=1, timeout_s=120)
    for rank in range(2):
        report = json.loads((tmp_path / f"avg{rank}.json").read_text())
        assert report["moved"] > 0.01  # the copies did differ before
        assert report["max_diff"] == 0.0  # the same flat all-reduce and division: bit for bit


@pytest.mark.slow
def test_accumulation_syncs_once_per_step_of_k_micro_steps() -> None:
    one = run(BASE.replace(grad_sync="flat", global_batch=48))
    four = run(BASE.replace(grad_sync="flat", global_batch=48, grad_accum=4))
    assert syncs_per_step(one) == syncs_per_step(four) == 1
    assert bytes_per_step(four) == bytes_per_step(one)


# ---- on an emulated 1 GbE link: fewer bytes, and (slow tier, load guard) a shorter step -----------------------
# the digits MLP at its default size: 2.1 MB of gradients, 17 ms a step on 1 GbE against a few ms of compute
LINKED = BASE.replace(hidden=None, layers=None, global_batch=32, steps=12, warmup=4, grad_sync="flat", link="1GbE")


@pytest.mark.slow
def test_powersgd_and_local_sgd_send_four_times_fewer_bytes_and_step_faster_on_1gbe() -> None:
    plain = run(LINKED)
    rows = {"PowerSGD": run(technique_config(LINKED, "PowerSGD")), "local SGD": run(technique_config(LINKED, "local SGD"))}
    for name, r in rows.items():
        assert bytes_per_step(r) * 4 <= bytes_per_step(plain), (name, bytes_per_step(r), bytes_per_step(plain))
    load = os.getloadavg()[0]
    if load > 2 * (os.cpu_count() or 1):
        pytest.skip(f"load {load:.1f} on {os.cpu_count()} cores: step times are not comparable")
    for name, r in rows.items():  # the mean step: local SGD's averaging step counts once in H
        assert step_time_spread(r)[0] < step_time_spread(plain)[0], name


# ---- the cost model prices each technique; the tables and the exercise -----------------------------------------
def test_the_spec_predicts_a_compressed_or_local_step_from_the_sending_less_formulas() -> None:
    from dpkit.cost.model import PRESETS
    from dpkit.cost.step_model import ComputeProfile
    from dpkit.strategies.registry import spec_for

    profile = ComputeProfile(batch=16, forward_s=1e-3, backward_s=2e-3, optimizer_s=1e-3, threads=1)
    cfg = RunConfig(parallelism="data", world_size=2, global_batch=32, grad_sync="flat")
    link = PRESETS["1GbE"]
    plain = spec_for(cfg).predict(cfg, link, profile, cores=4)
    for changes in ({"compression": "fp16"}, {"compression": "powersgd"}, {"sync": "local-sgd", "local_steps": 4}):
        other = cfg.replace(**changes)
        got = spec_for(other).predict(other, link, profile, cores=4)
        assert got["comm_s"] < plain["comm_s"], changes
    local = cfg.replace(sync="local-sgd", local_steps=4)
    assert spec_for(local).predict(local, link, profile, cores=4)["comm_s"] == pytest.approx(
        spec_for(local.replace(local_steps=1)).predict(local.replace(local_steps=1), link, profile, cores=4)["comm_s"] / 4
    )
    assert (
        spec_for(cfg.replace(compression="topk", topk_ratio=0.1))
        .label(cfg.replace(compression="topk", topk_ratio=0.1))
        .endswith("topk-0.1")
    )


def test_against_all_reduce_and_time_to_target_summarise_the_runs() -> None:
    import pandas as pd

    from dpkit.analysis.sending_less import against_all_reduce, time_to_target

    frame = pd.DataFrame(
        {
            "label": ["all-reduce", "PowerSGD", "all-reduce", "PowerSGD"],
            "technique": ["all-reduce", "PowerSGD"] * 2,
            "link": ["1GbE"] * 4,
            "bytes_per_step": [1000.0, 10.0, 1000.0, 10.0],
            "step_time_ms": [10.0, 4.0, 12.0, 6.0],
            "link_not_honoured": [0, 0, 1, 0],
            "steps_to_target": [100, 150, 120, None],
            "time_to_target_s": [1.0, 0.9, 1.2, None],
            "best_accuracy": [0.96, 0.955, 0.95, 0.94],
        }
    )
    t = against_all_reduce(frame).set_index("label")
    assert t.times_fewer_bytes["PowerSGD"] == 100 and t.step_vs_all_reduce["PowerSGD"] == pytest.approx(5 / 11)
    assert t.link_not_honoured["all-reduce"] == 1
    tt = time_to_target(frame).set_index("label")
    assert (tt.reached["PowerSGD"], tt.runs["PowerSGD"], tt.steps_median["all-reduce"]) == (1, 2, 110)


def test_the_topk_exercise_passes_the_reference_and_names_each_mistake() -> None:
    from dpkit.exercises import check

    # learner functions are self-contained (the checker runs them in a child process from their source text)
    def solution(g, r, ratio):
        acc = g + r
        index = acc.abs().topk(max(1, round(ratio * acc.numel()))).indices.sort().values
        rest = acc.clone()
        rest[index] = 0
        return index, acc[index], rest

    assert check("topk_error_feedback", solution).passed

    def no_residual_kept(g, r, ratio):
        acc = g + r
        index = acc.abs().topk(max(1, round(ratio * acc.numel()))).indices.sort().values
        return index, acc[index], acc.clone()

    def signed(g, r, ratio):
        acc = g + r
        index = acc.topk(max(1, round(ratio * acc.numel()))).indices
        rest = acc.clone()
        rest[index] = 0
        return index, acc[index], rest

    def forgets_feedback(g, r, ratio):
        index = g.abs().topk(max(1, round(ratio * g.numel()))).indices.sort().values
        rest = g.clone()
        rest[index] = 0
        return index, g[index], rest

    for fn, words in ((no_residual_kept, "zero them"), (signed, "magnitudes"), (forgets_feedback, "add the residual")):
        report = check("topk_error_feedback", fn)
        assert not report.passed and words in report.message, report.message


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["native", "ring", "ring-whole", "reduce-broadcast", "tree", "hierarchical"])
def test_bf16_goes_through_every_all_reduce_algorithm_at_half_the_bytes(algo: str) -> None:
    # gloo's own all-reduce takes bfloat16 on CPU in torch 2.13, so 'native' needs no detour
    cfg = BASE.replace(world_size=3, grad_sync="flat", allreduce_algo=algo)
    half, whole = run(cfg.replace(compression="bf16")), run(cfg)
    assert all(torch.isfinite(torch.tensor(half.losses)))
    assert_same_training(half, whole, rtol=0.05, atol=0.02)  # 8 bits of mantissa: close, not equal
    assert bytes_per_step(half) == pytest.approx(bytes_per_step(whole) / 2, rel=1e-3)
