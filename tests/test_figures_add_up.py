"""Every stacked "where a step's time goes" figure the kit draws must add up to the step time it is drawn
beside (issue 27). The check reads the drawn figure (dpkit.viz.lesson_checks), so it tests what is shown.

The fast tests build RunResults from a timeline written by hand, through the same summary and step_stats
code as a real run: two pipeline-like ranks whose steps start at different times, so the slowest rank's
step is longer than the mean rank's (what made 05's bars 23 ms under a 28 ms line). The slow test runs
real ranks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from dpkit import RunConfig, RunResult, run
from dpkit.viz import plots
from dpkit.viz.lesson_checks import assert_bars_add_up, bar_gaps, has_stacked_step_bars
from dpkit.viz.lesson_figures import (
    in_words,
    microbatch_label,
    pipeline_timeline_plot,
    slowest_rank_parts,
    step_parts_frame,
    step_parts_plot,
)

MS = 1e-3
CFG = RunConfig(
    parallelism="pipeline", world_size=2, microbatches=2, model="mlp", hidden=16, layers=2, global_batch=8, steps=3, warmup=1
)


def _result(late_start_ms: float, compute_ms: tuple[float, float]) -> RunResult:
    """Two ranks, 3 steps of 25 ms on rank 0; rank 1 starts each step `late_start_ms` later and ends with
    rank 0. Rank r computes compute_ms[r], waits on a neighbour (bubble), then sends (comm)."""
    timeline, steps = [], []
    for step in range(3):
        start = step * 30 * MS
        end = start + 25 * MS + step * MS  # steps of 25, 26, 27 ms: the median step is step 1 ... and 2 is timed
        for rank in (0, 1):
            s = start + (late_start_ms * MS if rank else 0.0)
            c = s + compute_ms[rank] * MS
            steps.append({"rank": rank, "step": step, "role": f"stage {rank}", "start_s": s, "end_s": end})
            timeline += [
                {"rank": rank, "step": step, "kind": "compute", "name": "forward 0", "start_s": s, "end_s": c},
                {"rank": rank, "step": step, "kind": "bubble", "name": "wait", "start_s": c, "end_s": end - 2 * MS},
                {
                    "rank": rank,
                    "step": step,
                    "kind": "comm",
                    "name": "send activation 0",
                    "start_s": end - 2 * MS,
                    "end_s": end,
                    "bytes": 256,
                    "bytes_source": "counted",
                    "blocking": True,
                },  # fmt: skip
            ]
    tl = pd.DataFrame(timeline).fillna({"bytes": 0, "bytes_source": "none", "blocking": True})
    tl["bytes"] = tl["bytes"].astype(int)
    return RunResult(CFG, [1.0, 0.9, 0.8], {}, tl, pd.DataFrame(steps), {})


SKEWED = _result(late_start_ms=5.0, compute_ms=(10.0, 12.0))  # rank 0's step is 5 ms longer than rank 1's
ALIGNED = _result(late_start_ms=0.0, compute_ms=(10.0, 12.0))


def test_slowest_rank_parts_add_up_to_the_reported_step_time() -> None:
    for result in (SKEWED, ALIGNED):
        parts = slowest_rank_parts(result)
        total = parts[["compute_s", "exposed_comm_s", "idle_s", "bubble_s", "injected_s"]].sum()
        assert total == pytest.approx(result.summary["step_time_s"], abs=1e-12)
        assert parts.step_time_s == pytest.approx(result.summary["step_time_s"], abs=1e-12)
    # steps 1 and 2 are timed (warm-up 1): 26 and 27 ms, median 26.5; rank 0 is the slowest, computing 10 ms
    parts = slowest_rank_parts(SKEWED)
    assert parts["rank"] == 0 and parts.compute_s == pytest.approx(10 * MS)
    assert parts.step_time_s == pytest.approx(26.5 * MS)


def test_the_kit_draws_the_mean_rank_under_the_slowest_ranks_line() -> None:
    """The premise of the issue, on the summary: means over ranks fall short of the step time when ranks'
    steps differ in length, and match it when they do not."""
    s = SKEWED.summary
    mean_total = s["compute_s"] + s["exposed_comm_s"] + s["idle_s"] + s["bubble_s"] + s["injected_s"]
    assert s["step_time_s"] - mean_total == pytest.approx(2.5 * MS)  # rank 1's steps are 5 ms shorter
    a = ALIGNED.summary
    assert a["compute_s"] + a["exposed_comm_s"] + a["idle_s"] + a["bubble_s"] + a["injected_s"] == pytest.approx(a["step_time_s"])


@pytest.mark.parametrize("name", ["skewed", "aligned"])
def test_step_parts_plot_adds_up(name: str) -> None:
    fig = step_parts_plot(step_parts_frame({"slow start": SKEWED, "together": ALIGNED}))
    assert_bars_add_up(fig)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0].startswith("slow start") and "=" not in "".join(labels)  # words, no field=value


def test_time_breakdown_plot_adds_up() -> None:
    frame = pd.concat([SKEWED.to_frame(), ALIGNED.to_frame()], ignore_index=True)
    frame.insert(1, "label", ["slow start", "together"])
    assert_bars_add_up(plots.time_breakdown_plot(frame, by=["label"]))


def test_the_check_finds_a_short_bar_and_refuses_a_figure_without_a_marker() -> None:
    fig = Figure()
    ax = fig.subplots()
    ax.bar([0, 1], [10, 20])
    ax.bar([0, 1], [5, 8], bottom=[10, 20])
    ax.set_xticks([0, 1], ["a", "b"])
    with pytest.raises(AssertionError, match="nothing to check"):
        assert_bars_add_up(fig)
    ax.scatter([0, 1], [15, 30], label="step time (slowest rank)")
    gaps = bar_gaps(fig)
    assert [(g.bar, g.bars_ms, g.marker_ms) for g in gaps] == [("b", 28, 30)]
    with pytest.raises(AssertionError, match="'b' adds up to 28.000 ms but its step-time marker is at 30.000"):
        assert_bars_add_up(fig)


# every function in dpkit that stacks bars (bar(..., bottom=...)), and what it stacks (timelines, drawn with
# barh(left=...) or broken_barh, are spans in time, not stacks)
STACKED_BAR_FUNCTIONS = {
    "time_breakdown_plot": "time",  # tested above
    "step_parts_plot": "time",  # tested above
    "_breakdown": "memory",  # memory_plots: bytes per kind, no step time
    "recovery_price_figure": "time",  # failures_panel (09): tested below
}


def _stacking_functions() -> set[str]:
    found = set()
    for path in Path(plots.__file__).parents[1].rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for call in ast.walk(fn):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "bar"
                    and any(k.arg == "bottom" for k in call.keywords)
                ):
                    found.add(fn.name)
    return found


def test_recovery_prices_stack_the_saves_on_the_step() -> None:
    """09's price of each ps_recovery: a bar's top is the step plus the checkpoint saves per step, no more, no less;
    bytes to the backups and to disk stack the same way."""
    import pandas as pd

    from dpkit.viz.failures_panel import recovery_price_figure

    prices = pd.DataFrame(
        {
            "step_ms": [10.0, 14.0, 12.0],
            "step_ms_q1": [9.0, 12.0, 11.0],
            "step_ms_q3": [11.0, 18.0, 15.0],
            "checkpoint_ms_per_step": [0.0, 9.8, 0.0],
            "bytes_to_backup_per_step": [0.0, 0.0, 416e3],
            "bytes_to_disk_per_step": [0.0, 647e3, 0.0],
        },
        index=["none", "checkpoint", "replicate"],
    )
    left, right = recovery_price_figure(prices).axes[:2]

    def tops(ax) -> list[float]:
        stacks: dict[float, float] = {}
        for bar in ax.patches:
            x = round(bar.get_x() + bar.get_width() / 2, 6)
            stacks[x] = max(stacks.get(x, 0.0), bar.get_y() + bar.get_height())
        return [stacks[x] for x in sorted(stacks)]

    assert tops(right) == pytest.approx(list(prices.step_ms + prices.checkpoint_ms_per_step))
    assert tops(left) == pytest.approx(list((prices.bytes_to_backup_per_step + prices.bytes_to_disk_per_step) / 1e3))


def test_every_stacked_bar_figure_is_covered() -> None:
    """A new stacked figure of step time must be added to this file's tests (and to STACKED_BAR_FUNCTIONS)."""
    stacked = _stacking_functions()
    assert stacked - set(STACKED_BAR_FUNCTIONS) == set(), (
        "a new function stacks bars: add it to STACKED_BAR_FUNCTIONS and test it"
    )


def test_microbatch_labels() -> None:
    assert [microbatch_label(n) for n in ("forward 3", "F3", "backward 12", "B0", "optimizer", "send activation 1")] == [
        "F3", "F3", "B12", "B0", None, None,
    ]  # fmt: skip


def test_pipeline_timeline_names_every_compute_box() -> None:
    fig = pipeline_timeline_plot(SKEWED)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count("F0") == 2  # one forward of micro-batch 0 per stage in the hand-made step
    assert "world_size" not in fig.axes[0].get_title()


@pytest.mark.slow
def test_real_runs_add_up_and_name_their_micro_batches() -> None:
    """Real ranks: a pipeline (stages start their steps at different times) and data parallelism."""
    pipe = RunConfig(
        parallelism="pipeline", world_size=2, microbatches=4, model="mlp", hidden=32, layers=2, global_batch=16, steps=4, warmup=1
    )
    results = {"pipeline, 2 stages": run(pipe), "data parallel, 2 ranks": run(pipe.replace(parallelism="data"))}
    fig = step_parts_plot(step_parts_frame(results))
    assert has_stacked_step_bars(fig)
    assert_bars_add_up(fig)
    timeline = pipeline_timeline_plot(results["pipeline, 2 stages"])
    texts = [t.get_text() for t in timeline.axes[0].texts]
    assert sorted(texts) == sorted([f"{d}{i}" for d in "FB" for i in range(4)] * 2)  # 2 stages x (F0..F3, B0..B3)


def test_in_words_shows_seconds_as_milliseconds_under_word_headers() -> None:
    frame = pd.DataFrame({"label": ["a"], "step_time_s": [0.01234], "bubble_fraction": [0.25]})
    table = in_words(frame, {"label": "run", "step_time_s": "step (ms)", "bubble_fraction": "bubble, share of step"})
    assert table.columns.tolist() == ["run", "step (ms)", "bubble, share of step"]
    assert table.iloc[0].tolist() == ["a", 12.3, 0.25]
    with pytest.raises(ValueError, match="no column"):
        in_words(frame, {"nope": "x"})


def test_bench_plot_draws_the_spread_of_repeats() -> None:
    """02's benchmark figure: error bars from the fastest to the slowest repeat (measure stores them as text)."""
    from dpkit.viz.cost_plots import allreduce_bench_plot

    frame = pd.DataFrame(
        {"world_size": [2, 2], "algo": ["ring", "ring"], "size_bytes": [4096, 65536], "time_s": [1e-3, 2e-3],
         "times_s": ["0.0009 0.001 0.0013", "0.0019 0.002 0.0021"], "busbw_GBps": [0.1, 0.2]}
    )  # fmt: skip
    bars = allreduce_bench_plot(frame).axes[0].collections[0]
    (low0, high0), (low1, high1) = (seg[:, 1] for seg in bars.get_segments())
    assert (low0, high0, low1, high1) == pytest.approx((0.0009, 0.0013, 0.0019, 0.0021))
