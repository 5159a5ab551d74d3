"""Held-out evaluation, training to a target, learning-rate rules (dpkit.runtime.evaluation, lr_rules)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from dpkit.api import run
from dpkit.config import RunConfig
from dpkit.results import step_stats
from dpkit.runtime.evaluation import EVAL_COLUMNS, learning_summary
from dpkit.runtime.lr_rules import lr_at
from dpkit.workloads import HELDOUT_FRACTION, build_dataset, build_heldout, heldout_indices, load_digits, make_tokens

LEARN = RunConfig(
    model="mlp", hidden=32, layers=2, global_batch=24, steps=4, warmup=1, threads_per_rank=1, timeout_s=120, eval_every=2
)


# ---- the held-out split -------------------------------------------------------------------
def test_digits_split_is_fixed_disjoint_and_stratified() -> None:
    train, held = heldout_indices("mlp", 32)
    _, y = load_digits()
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(train) + len(held) == len(y)
    for label in range(10):
        share = float((y[held] == label).sum()) / float((y == label).sum())
        assert abs(share - HELDOUT_FRACTION) < 0.02, (label, share)
    heldout_indices.cache_clear()
    assert torch.equal(heldout_indices("mlp", 32)[1], held)  # recomputed, the same: a fixed seed, not RunConfig.seed


def test_training_never_draws_from_the_held_out_split() -> None:
    for cfg in (LEARN, LEARN.replace(seed=3), LEARN.replace(model="transformer", hidden=16)):
        data, (hx, _) = build_dataset(cfg), build_heldout(cfg)
        full_x = load_digits()[0] if cfg.model == "mlp" else make_tokens(cfg.seq_len)[0]
        train, held = heldout_indices(cfg.model, cfg.seq_len)
        assert torch.equal(data.x, full_x[train]) and torch.equal(hx, full_x[held])
        seen = torch.cat([data.indices(s, 64) for s in range(3 * len(data) // 64)])  # three epochs of batches
        assert int(seen.max()) < len(data)  # indices into the training split only
    tokens = make_tokens(32)[0]
    train, held = heldout_indices("transformer", 32)
    assert int(held[0]) == len(tokens) - round(HELDOUT_FRACTION * len(tokens)) and int(held[-1]) == len(tokens) - 1


# ---- learning-rate rules ------------------------------------------------------------------
@pytest.mark.parametrize(("scaling", "factor"), [("none", 1.0), ("linear", 128 / 8), ("sqrt", math.sqrt(128 / 8))])
def test_lr_rules_give_the_documented_rate_per_step(scaling: str, factor: float) -> None:
    cfg = LEARN.replace(global_batch=128, base_batch=8, lr=0.01, lr_scaling=scaling, warmup_steps=4)
    assert [lr_at(cfg, s) for s in range(6)] == pytest.approx([0.01 * factor * w for w in (0.25, 0.5, 0.75, 1, 1, 1)])
    assert lr_at(cfg.replace(warmup_steps=0), 0) == pytest.approx(0.01 * factor)
    assert lr_at(cfg.replace(base_batch=None), 0) == pytest.approx(0.01 * 0.25)  # base_batch defaults to global_batch


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"target_accuracy": 0.9, "eval_every": None}, "target_accuracy"),
        ({"target_accuracy": 1.5}, "target_accuracy"),
        ({"target_accuracy": 0.0}, "target_accuracy"),
        ({"lr_scaling": "quadratic"}, "lr_scaling"),
        ({"eval_every": 0}, "eval_every"),
        ({"base_batch": 0}, "base_batch"),
        ({"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_learning_fields_name_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"RunConfig\.{field}="):
        LEARN.replace(**changes)


# ---- the learning summary ------------------------------------------------------------------
def test_learning_summary_reports_the_first_evaluation_reaching_the_target() -> None:
    evals = pd.DataFrame([[0, 0, 0.0, 2.3, 0.1], [10, 80, 0.5, 1.0, 0.96], [20, 160, 1.0, 0.5, 0.97]], columns=EVAL_COLUMNS)
    s = learning_summary(LEARN.replace(target_accuracy=0.95, steps=20), evals)
    assert (s["steps_to_target"], s["samples_to_target"], s["time_to_target_s"]) == (10, 80, 0.5)
    assert s["final_accuracy"] == 0.97 and s["best_accuracy"] == 0.97
    s = learning_summary(LEARN.replace(target_accuracy=0.99, steps=20), evals)
    assert s["steps_to_target"] is None and "not reached within steps=20" in s["target_reason"]


def test_eval_spans_between_steps_count_in_no_step_part() -> None:
    cols = ["rank", "step", "kind", "name", "start_s", "end_s", "bytes", "bytes_source", "blocking"]
    steps = pd.DataFrame(
        [[0, 0, "worker", 0.0, 1.0], [0, 1, "worker", 3.0, 4.0]], columns=["rank", "step", "role", "start_s", "end_s"]
    )
    base = [[0, 0, "compute", "forward", 0.0, 1.0, 0, "none", True], [0, 1, "compute", "forward", 3.0, 4.0, 0, "none", True]]
    with_eval = [*base, [0, 0, "eval", "held-out evaluation", 1.0, 3.0, 0, "none", True]]
    a, b = step_stats(pd.DataFrame(base, columns=cols), steps), step_stats(pd.DataFrame(with_eval, columns=cols), steps)
    pd.testing.assert_frame_equal(a, b)


# ---- real runs ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_evaluates_outside_its_steps_and_records_its_rates() -> None:
    r = run(LEARN.replace(lr_scaling="linear", base_batch=12, warmup_steps=2))
    assert list(r.evals.step) == [0, 2, 4] and list(r.evals.samples_seen) == [0, 48, 96]
    assert r.lrs == pytest.approx([lr_at(r.config, s) for s in range(4)]) and r.lrs[0] == pytest.approx(0.05)
    assert r.evals.train_time_s.is_monotonic_increasing and 0 < r.summary["final_accuracy"] <= 1
    ev = r.timeline[r.timeline.kind == "eval"]
    assert len(ev) == 3
    for span in ev.itertuples():  # every eval span lies outside every step of its rank
        inside = r.steps[(r.steps["rank"] == span.rank) & (r.steps.start_s < span.end_s) & (r.steps.end_s > span.start_s)]
        assert inside.empty
    stats = r.step_stats()
    parts = stats[["compute_s", "exposed_comm_s", "idle_s", "bubble_s", "injected_s"]].sum(axis=1)
    assert parts.to_numpy() == pytest.approx(stats.step_time_s.to_numpy(), abs=1e-9)
    last_end = float(r.steps.end_s.max())
    before = ev[ev.end_s <= last_end]  # training time = the last step's end minus the evaluations before it
    assert r.evals.train_time_s.iloc[-1] == pytest.approx(last_end - float((before.end_s - before.start_s).sum()))
    assert float((r.steps.end_s - r.steps.start_s).sum()) <= r.evals.train_time_s.iloc[-1] + 1e-9


STRATEGIES = {
    "allreduce": {"parallelism": "data", "world_size": 2},
    "zero1": {"parallelism": "data", "world_size": 2, "zero_stage": 1},
    "zero2": {"parallelism": "data", "world_size": 2, "zero_stage": 2},
    "zero3": {"parallelism": "data", "world_size": 2, "zero_stage": 3},
    "ps-sync": {"parallelism": "data", "world_size": 2, "sync": "ps"},
    "pipeline": {"parallelism": "pipeline", "world_size": 2, "microbatches": 2},
    "tensor": {"parallelism": "tensor", "world_size": 2},
    "hybrid": {"parallelism": "hybrid", "world_size": 4, "microbatches": 2},
}


@pytest.fixture(scope="module")
def single_evals() -> pd.DataFrame:
    return run(LEARN).evals


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_is_evaluated_as_the_whole_model(name: str, single_evals: pd.DataFrame) -> None:
    r = run(LEARN.replace(**STRATEGIES[name]))
    assert list(r.evals.step) == list(single_evals.step)
    assert r.evals.accuracy.to_numpy() == pytest.approx(single_evals.accuracy.to_numpy(), abs=1e-5)
    assert r.evals.loss.to_numpy() == pytest.approx(single_evals.loss.to_numpy(), abs=1e-5)


@pytest.mark.slow
def test_async_parameter_server_is_evaluated_too() -> None:
    r = run(LEARN.replace(parallelism="data", world_size=2, sync="ps-async"))
    assert list(r.evals.step) == [0, 2, 4] and r.evals.accuracy.between(0, 1).all()


TARGET = RunConfig(hidden=64, layers=2, global_batch=32, lr=0.05, steps=200, eval_every=5, target_accuracy=0.9, threads_per_rank=1, timeout_s=300)  # fmt: skip


@pytest.mark.slow
def test_data_parallel_reaches_the_target_at_the_same_step_as_one_process() -> None:
    one, first_again = run(TARGET), run(TARGET)
    two = run(TARGET.replace(parallelism="data", world_size=2))
    assert one.summary["steps_to_target"] is not None, one.summary["target_reason"]
    assert first_again.summary["steps_to_target"] == one.summary["steps_to_target"]  # same config and seed, same step
    assert two.summary["steps_to_target"] == one.summary["steps_to_target"]
    assert len(two.losses) == one.summary["steps_to_target"]  # it stopped there: steps is only the cap
    assert two.summary["samples_to_target"] == one.summary["steps_to_target"] * 32


#: the digits MLP (hidden 128, 2 blocks, SGD momentum 0.9); lr 0.01 tuned at batch 8 (see docs/formulas.md)
DIGITS = RunConfig(hidden=128, layers=2, lr=0.01, base_batch=8, eval_every=20, target_accuracy=0.95, steps=900, timeout_s=600)  # fmt: skip


@pytest.mark.slow
def test_linear_scaling_with_warmup_cuts_steps_to_target_from_batch_8_to_128() -> None:
    small = run(DIGITS.replace(global_batch=8))
    large = run(DIGITS.replace(global_batch=128, lr_scaling="linear", warmup_steps=20, steps=300))
    s8, s128 = small.summary["steps_to_target"], large.summary["steps_to_target"]
    assert s8 is not None and s128 is not None, (small.summary["target_reason"], large.summary["target_reason"])
    assert s8 >= 2 * s128, (s8, s128)


# ---- analysis and plots (no runs) ------------------------------------------------------------
def test_steps_to_target_at_says_where_each_number_comes_from() -> None:
    from dpkit.analysis.time_to_accuracy import steps_to_target_at

    measured = pd.DataFrame({"global_batch": [8, 32, 128, 512], "steps_to_target": [600, 130, 80, None]})
    assert steps_to_target_at(measured, 32) == (130, "measured")
    steps, source = steps_to_target_at(measured, 64)
    assert source == "interpolated" and steps == pytest.approx(math.sqrt(130 * 80))  # geometric mean: log-log midpoint
    assert steps_to_target_at(measured, 4) == (1200, "extrapolated")  # below: perfect scaling
    assert steps_to_target_at(measured, 1024) == (80, "extrapolated")  # above the largest reached batch (128): held


def test_time_to_accuracy_at_scale_is_steps_times_predicted_step() -> None:
    from dpkit.analysis.time_to_accuracy import time_to_accuracy_at_scale
    from dpkit.cost.model import PRESETS, allreduce_time

    measured = pd.DataFrame({"global_batch": [32, 128], "steps_to_target": [130, 80]})
    out = time_to_accuracy_at_scale(measured, 1e-4, 4e6, 32, PRESETS["10GbE"], ns=[1, 4, 1024])
    assert list(out.steps_source) == ["measured", "measured", "extrapolated"] and set(out.kind) == {"predicted"}
    row = out.iloc[2]
    assert row.time_to_target_s == pytest.approx(80 * (1e-4 * 32 + allreduce_time("ring", 4e6, 1024, PRESETS["10GbE"])))


def test_sweep_time_to_target_summary_and_speedup_frame() -> None:
    from dpkit.analysis.time_to_accuracy import time_to_target_frame
    from dpkit.measure import summarize_time_to_target
    from dpkit.viz.plots import scaling_frame

    groups = [
        pd.DataFrame({"time_to_target_s": [2.0, 4.0, 3.0], "steps_to_target": [100, 100, 100]}),
        pd.DataFrame({"time_to_target_s": [1.0, None, 1.5], "steps_to_target": [50, None, 50]}),
    ]
    s = summarize_time_to_target(groups)
    assert list(s.time_to_target_s) == [3.0, 1.5] and list(s.target_reached_repeats) == [3, 2]
    assert s.time_to_target_max_s.iloc[1] == math.inf  # a repeat that never reached the target is infinitely slow
    frame = pd.DataFrame(
        {"world_size": [1, 2], "global_batch": [32, 64], "step_time_s": [0.01, 0.012], "samples_per_s": [3200, 5333], **s}
    )
    out = scaling_frame(time_to_target_frame(frame))
    assert out.speedup.tolist() == pytest.approx([1.0, 2.0])  # T_target(1) / T_target(2), not a throughput ratio


def test_learning_config_picks_the_sync_mode() -> None:
    from dpkit.viz.learning_plots import learning_config

    base = LEARN.replace(global_batch=32)
    assert learning_config(base, 32, 1, "async PS", "linear").parallelism == "none"
    ssp = learning_config(base, 64, 2, "SSP (staleness <= 1)", "sqrt")
    assert (ssp.sync, ssp.max_staleness, ssp.world_size, ssp.global_batch, ssp.lr_scaling) == ("ps-async", 1, 2, 64, "sqrt")
    with pytest.raises(ValueError, match="sync_mode"):
        learning_config(base, 32, 2, "gossip", "none")


def test_sweep_time_to_target_needs_a_target() -> None:
    from dpkit.api import sweep

    with pytest.raises(ValueError, match="target_accuracy"):
        sweep(LEARN, metric="time_to_target", world_size=[1])
    with pytest.raises(ValueError, match="metric"):
        sweep(LEARN, metric="loss", world_size=[1])


@pytest.mark.slow
def test_the_transformer_is_evaluated_on_next_tokens_alike_under_tensor_parallelism() -> None:
    cfg = LEARN.replace(model="transformer", hidden=16, layers=1, seq_len=8, global_batch=8)
    one, tp = run(cfg), run(cfg.replace(parallelism="tensor", world_size=2))
    assert one.evals.accuracy.between(0, 1).all() and one.evals.loss.iloc[-1] < one.evals.loss.iloc[0]
    assert tp.evals.accuracy.to_numpy() == pytest.approx(one.evals.accuracy.to_numpy(), abs=1e-5)


@pytest.mark.slow
def test_sweep_and_speedup_plot_use_time_to_target() -> None:
    from dpkit.api import sweep
    from dpkit.viz.plots import speedup_plot

    base = TARGET.replace(parallelism="data", global_batch=32)
    frame = sweep(base, metric="time_to_target", progress=False, world_size=[1, 2])
    assert frame.steps_to_target.tolist()[0] == frame.steps_to_target.tolist()[1]  # same global batch: same step
    assert (frame.time_to_target_s > 0).all() and (frame.target_reached_repeats == 1).all()
    fig = speedup_plot(frame, metric="time_to_target")
    assert "time to target" in fig.axes[0].get_title()
