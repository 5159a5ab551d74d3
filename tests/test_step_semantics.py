"""Where a step's time goes and who sends what: the per-rank partition of step_stats (hand-made timelines and
real runs of every strategy), injected straggler delay, every role's traffic with its byte source, and the
figures that show them."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dpkit import RunConfig, RunResult, run
from dpkit.results import STATES, TIMELINE_COLUMNS, partition, role_kind, step_stats
from dpkit.runtime.recorder import Recorder
from dpkit.viz import plots
from dpkit.workloads import build_model

PARTS = ["compute_s", "exposed_comm_s", "idle_s", "bubble_s", "injected_s"]


def timeline(*spans: tuple, rank: int = 0, step: int = 0) -> pd.DataFrame:
    """Spans as (kind, start, end[, blocking[, name]]) on one rank and step."""
    rows = []
    for s in spans:
        kind, a, b = s[:3]
        blocking = s[3] if len(s) > 3 else True
        name = s[4] if len(s) > 4 else kind
        rows.append((rank, step, kind, name, a, b, 8 if kind == "comm" else 0, "counted" if kind == "comm" else "none", blocking))
    return pd.DataFrame(rows, columns=TIMELINE_COLUMNS)


def one_step(start: float = 0.0, end: float = 1.0, rank: int = 0, role: str = "worker") -> pd.DataFrame:
    return pd.DataFrame([(rank, 0, role, start, end)], columns=["rank", "step", "role", "start_s", "end_s"])


def stats_of(tl: pd.DataFrame, start: float = 0.0, end: float = 1.0) -> dict:
    return step_stats(tl, one_step(start, end)).iloc[0].to_dict()


# ---- the sweep, on hand-made timelines --------------------------------------------------------
def test_blocking_comm_inside_compute_is_exposed_not_hidden() -> None:
    s = stats_of(timeline(("compute", 0.0, 1.0), ("comm", 0.2, 0.5)))  # a TP all-reduce issued inside forward
    assert s["exposed_comm_s"] == pytest.approx(0.3) and s["hidden_comm_s"] == pytest.approx(0.0)
    assert s["compute_s"] == pytest.approx(0.7) and s["comm_s"] == pytest.approx(0.3)


def test_in_flight_comm_is_hidden_only_where_the_rank_computes() -> None:
    tl = timeline(("compute", 0.0, 0.5), ("comm", 0.3, 0.8, False), ("idle", 0.8, 1.0, True, "wait"))
    s = stats_of(tl)
    assert s["compute_s"] == pytest.approx(0.5)
    assert s["hidden_comm_s"] == pytest.approx(0.2) and s["exposed_comm_s"] == pytest.approx(0.3)
    assert s["comm_s"] == pytest.approx(0.5) and s["idle_s"] == pytest.approx(0.2)


def test_injected_delay_outranks_everything_and_is_never_compute() -> None:
    s = stats_of(timeline(("injected", 0.0, 0.2), ("compute", 0.1, 0.6), ("comm", 0.15, 0.3)))
    assert s["injected_s"] == pytest.approx(0.2)
    assert s["exposed_comm_s"] == pytest.approx(0.1)  # 0.2-0.3: blocking comm outranks compute
    assert s["compute_s"] == pytest.approx(0.3)  # 0.3-0.6 only
    assert s["idle_s"] == pytest.approx(0.4)  # 0.6-1.0: covered by nothing, this rank's gap kind


def test_uncovered_time_is_the_kind_the_rank_fills_gaps_with() -> None:
    stage = timeline(
        ("compute", 0.0, 0.2), ("bubble", 0.2, 0.4, True, "wait"), ("bubble", 0.5, 0.6, True, "wait for activation 0")
    )
    s = stats_of(stage)
    assert s["bubble_s"] == pytest.approx(0.8) and s["idle_s"] == 0.0  # 0.4-0.5 and 0.6-1.0 are bubble too
    assert stats_of(timeline(("compute", 0.0, 0.2)))["idle_s"] == pytest.approx(0.8)


def test_spans_are_clipped_to_their_step() -> None:
    s = stats_of(timeline(("compute", -0.5, 0.4), ("comm", 0.9, 1.7, False)))
    assert s["compute_s"] == pytest.approx(0.4) and s["exposed_comm_s"] == pytest.approx(0.1)
    assert sum(s[c] for c in PARTS) == pytest.approx(1.0)


def test_timelines_saved_without_a_blocking_column_count_every_comm_as_blocking() -> None:
    tl = timeline(("compute", 0.0, 0.5), ("comm", 0.3, 0.8, False)).drop(columns="blocking")
    s = stats_of(tl)
    assert s["exposed_comm_s"] == pytest.approx(0.5) and s["hidden_comm_s"] == pytest.approx(0.0)
    text = timeline(("compute", 0.0, 0.5), ("comm", 0.3, 0.8, False)).assign(blocking=["True", "False"])  # as read back from CSV
    assert stats_of(text)["hidden_comm_s"] == pytest.approx(0.2)


def _state_at(spans: list[tuple], t: float) -> str:
    """The state at instant t by the rule itself: the highest-priority span covering t."""
    covering = {("blocking comm" if b else "in-flight comm") if k == "comm" else k for k, a, e, b in spans if a <= t < e}
    return next((s for s in STATES if s in covering), "idle")


def test_the_sweep_agrees_with_the_rule_at_every_instant_on_random_timelines() -> None:
    rng = np.random.default_rng(0)
    kinds = ["compute", "comm", "comm", "idle", "bubble", "injected"]
    for _ in range(200):
        spans = []
        for _ in range(rng.integers(0, 9)):
            a = int(rng.integers(-2, 20))
            spans.append((kinds[rng.integers(len(kinds))], a, a + int(rng.integers(1, 8)), bool(rng.integers(2))))
        frame = pd.DataFrame(spans, columns=["kind", "start_s", "end_s", "blocking"])
        got = partition(frame, 0.0, 20.0, "idle", frame["blocking"].to_numpy(dtype=bool))
        want = dict.fromkeys(STATES, 0.0)
        for t in range(20):  # spans sit on whole units: the state is constant over [t, t+1)
            want[_state_at(spans, t + 0.5)] += 1.0
        assert {k: got[k] for k in STATES} == pytest.approx(want), spans
        comm_units = sum(any(k == "comm" and a <= t + 0.5 < e for k, a, e, _ in spans) for t in range(20))
        assert got["comm_s"] == pytest.approx(comm_units)


# ---- the recorder: compute is a region that the rank's waits carve -------------------------------
class TickClock:
    """A clock that reads whatever the test sets (seconds since 0)."""

    name = "test"

    def __init__(self) -> None:
        self.t0, self.now = 0.0, 0.0

    def mark(self) -> float:
        return self.now

    def seconds(self, mark: float) -> float:
        return mark

    def sync(self) -> None:
        pass


def recorded(run) -> pd.DataFrame:
    clock = TickClock()
    rec = Recorder(0, clock)  # type: ignore[arg-type]
    rec.begin_step(0)
    run(rec, clock)
    clock.now = 10.0
    rec.end_step()
    return pd.DataFrame([(s.kind, s.name, s.start_s, s.end_s) for s in rec.spans], columns=["kind", "name", "start", "end"])


def test_waits_carve_the_open_compute_region() -> None:
    def step(rec: Recorder, clock: TickClock) -> None:
        with rec.compute("other"):
            clock.now = 1.0
            with rec.compute("forward"):
                clock.now = 2.0
                rec.add("comm", "all-gather", 2.0, 3.0)  # a blocking collective inside the forward
                clock.now = 4.0
                with rec.blocked():  # waiting for a message in flight
                    clock.now = 5.0
                clock.now = 6.0
            rec.add("comm", "prefetch", 6.0, 9.0, blocking=False)  # in flight: the rank goes on computing
            clock.now = 7.0
            with rec.compute("backward"):
                clock.now = 8.0
                rec.computed_until(7.5)  # a wait seen only afterwards (DDP's, inside backward())
            clock.now = 9.0

    tl = recorded(step)
    compute = tl[tl.kind == "compute"].sort_values("start")
    assert list(zip(compute.name, compute.start, compute.end, strict=True)) == [
        ("other", 0.0, 1.0),
        ("forward", 1.0, 2.0),
        ("forward", 3.0, 4.0),
        ("forward", 5.0, 6.0),
        ("other", 6.0, 7.0),
        ("backward", 7.0, 7.5),
        ("other", 8.0, 9.0),
    ]
    in_flight = (tl.kind == "comm") & (tl.name == "prefetch")
    frame = tl.assign(rank=0, step=0, bytes=0, bytes_source="none", blocking=~in_flight, start_s=tl.start, end_s=tl.end)
    s = stats_of(frame[TIMELINE_COLUMNS], 0.0, 10.0)
    assert s["compute_s"] == pytest.approx(6.5)
    # exposed: the all-gather (2-3) and the prefetch where the backward waited for it (7.5-8); hidden: the
    # prefetch where the rank computed (6-7.5, 8-9); the wait in flight at 4-5 had nothing in flight: idle
    assert s["exposed_comm_s"] == pytest.approx(1.5) and s["hidden_comm_s"] == pytest.approx(2.5)
    assert s["idle_s"] == pytest.approx(2.0)  # 4-5 and 9-10


def test_another_threads_waits_never_carve_the_ranks_compute() -> None:
    import threading

    def step(rec: Recorder, clock: TickClock) -> None:
        with rec.compute("forward"):
            clock.now = 2.0
            t = threading.Thread(target=lambda: rec.add("comm", "comm thread", 0.5, 1.5))
            t.start()
            t.join()

    tl = recorded(step)
    compute = tl[tl.kind == "compute"]
    assert list(zip(compute.start, compute.end, strict=True)) == [(0.0, 2.0)]


# ---- real runs -----------------------------------------------------------------------------
RUNS = {
    "data bucketed": SMALL.replace(parallelism="data", world_size=2, grad_sync="bucketed"),
    "data ddp": SMALL.replace(parallelism="data", world_size=2, grad_sync="ddp"),
    "ps sync": SMALL.replace(parallelism="data", world_size=2, sync="ps"),
    "pipeline 1f1b": SMALL.replace(parallelism="pipeline", world_size=2, schedule="1f1b", microbatches=4),
    "tensor": SMALL.replace(parallelism="tensor", world_size=2, hidden=64),
    "hybrid": SMALL.replace(parallelism="hybrid", world_size=4, data_parallel_size=2, microbatches=2),
    # a ring all-reduce (counted bytes) with a straggler on rank 0
    "ring straggler": SMALL.replace(
        parallelism="data", world_size=2, grad_sync="flat", allreduce_algo="ring", straggler_ranks=(0,), straggler_delay_s=0.02
    ),
    "reduce-broadcast n=3": SMALL.replace(parallelism="data", world_size=3, grad_sync="flat", allreduce_algo="reduce-broadcast"),
}
_DONE: dict[str, RunResult] = {}


def result(name: str) -> RunResult:
    if name not in _DONE:
        _DONE[name] = run(RUNS[name])
    return _DONE[name]


def model_bytes(cfg: RunConfig) -> int:
    return sum(p.numel() * p.element_size() for p in build_model(cfg, cfg.seed).parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_the_five_states_sum_to_the_step_time_on_every_rank_and_step(name: str) -> None:
    stats = result(name).step_stats()
    assert len(stats) == RUNS[name].num_processes * RUNS[name].steps
    np.testing.assert_allclose(stats[PARTS].sum(axis=1), stats.step_time_s, rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats.exposed_comm_s + stats.hidden_comm_s, stats.comm_s, rtol=0, atol=1e-9)
    assert (stats[[*PARTS, "hidden_comm_s"]] >= -1e-12).all().all()


@pytest.mark.slow
def test_tensor_parallel_all_reduces_are_exposed_comm() -> None:
    r = result("tensor")
    stats = r.step_stats().set_index(["rank", "step"])
    tl = r.timeline[(r.timeline.kind == "comm") & r.timeline.blocking.astype(bool)]
    assert len(tl), "a TP run records blocking all-reduces"
    for (rank, step), g in tl.groupby(["rank", "step"]):
        union, end = 0.0, -np.inf
        for a, b in sorted(zip(g.start_s, g.end_s, strict=True)):
            union += max(0.0, b - max(a, end))
            end = max(end, b)
        assert stats.loc[(rank, step), "exposed_comm_s"] == pytest.approx(union, abs=1e-9)
    assert r.summary["exposed_comm_s"] > 0 and r.summary["hidden_comm_s"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_a_stragglers_delay_is_injected_not_compute() -> None:
    r = result("ring straggler")
    stats = r.step_stats()
    timed = stats[stats.step >= r.config.warmup].groupby("rank").median(numeric_only=True)
    assert 0.02 <= timed.loc[0, "injected_s"] < 0.05  # a sleep lasts at least what it was asked
    assert timed.loc[1, "injected_s"] == 0.0
    assert timed.loc[0, "compute_s"] < timed.loc[1, "compute_s"] + 0.01  # the same work, not 20 ms more
    assert r.summary["injected_s"] == pytest.approx(timed.injected_s.mean(), rel=0.5)


@pytest.mark.slow
def test_the_parameter_server_is_the_busiest_process() -> None:
    r = result("ps sync")
    n = r.config.world_size  # workers 0..n-1, the server is rank n
    shard = int(r.extra["shard_numel"][str(n)]) * 4
    s = r.summary
    assert s["bytes_sent_per_step_busiest"] == n * shard  # it answers every worker's pull with its shard
    assert s["bytes_sent_per_step_busiest"] > s["bytes_sent_per_step"] == model_bytes(r.config)
    assert s["bytes_sent_per_step_by_role"] == {"worker": model_bytes(r.config), "parameter server": n * shard}
    by_rank = r.bytes_by_rank().set_index("rank")
    assert by_rank.loc[n, "role"] == "parameter server 0" and by_rank.loc[n, "bytes_received_per_step"] == n * shard
    assert s["bytes_source"] == "counted"


@pytest.mark.slow
def test_reduce_broadcast_root_sends_n_minus_1_times_the_model() -> None:
    r = result("reduce-broadcast n=3")
    size, n = model_bytes(r.config), 3
    by_rank = r.bytes_by_rank().set_index("rank")
    assert by_rank.bytes_sent_per_step.tolist() == [(n - 1) * size, size, size]
    assert r.summary["bytes_sent_per_step_busiest"] == (n - 1) * size
    assert r.summary["bytes_sent_per_step"] == pytest.approx((n + 1) / n * size)  # the mean hides the root
    assert r.summary["bytes_source"] == "counted"


@pytest.mark.slow
def test_byte_sources_native_is_formula_ring_is_counted() -> None:
    assert result("data bucketed").summary["bytes_source"] == "formula"
    assert result("ring straggler").summary["bytes_source"] == "counted"
    assert result("pipeline 1f1b").summary["bytes_sent_per_step_by_role"].keys() == {"stage"}


def test_role_kind_drops_indices() -> None:
    assert [role_kind(r) for r in ("worker 3", "parameter server 0", "replica 1 stage 0", "tensor rank 2", "single process")] == [
        "worker",
        "parameter server",
        "replica stage",
        "tensor rank",
        "single process",
    ]


# ---- figures -------------------------------------------------------------------------------
def _drawn(fig):
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _legend_clear_of_title_and_axes(fig) -> None:
    renderer = _drawn(fig)
    ax = fig.axes[0]
    legend = fig.legends[0].get_window_extent(renderer)
    assert not legend.overlaps(ax.title.get_window_extent(renderer)), "the legend covers the title"
    assert legend.y1 <= ax.get_window_extent(renderer).y0, "the legend sits on the axes"


def _hand_made(ranks: int = 6, straggler: int | None = 0) -> RunResult:
    """A data-parallel run of `ranks` ranks, two steps, drawn by hand (no processes)."""
    rows, steps = [], []
    for r, s in itertools.product(range(ranks), range(2)):
        t = s * 1.0
        if r == straggler:
            rows.append((r, s, "injected", "straggler delay", t, t + 0.2, 0, "none", True))
        rows += [
            (r, s, "compute", "forward", t + 0.2, t + 0.5, 0, "none", True),
            (r, s, "comm", "allreduce-bucket0", t + 0.4, t + 0.7, 1000, "formula", False),
            (r, s, "idle", "end-of-step barrier", t + 0.7, t + 0.9, 0, "none", True),
        ]
        steps.append((r, s, "worker", t, t + 0.9))
    cfg = RunConfig(parallelism="data", world_size=ranks, global_batch=6 * ranks, steps=2, warmup=0)
    return RunResult(
        config=cfg,
        losses=[1.0, 0.9],
        final_state_dict={},
        timeline=pd.DataFrame(rows, columns=TIMELINE_COLUMNS),
        steps=pd.DataFrame(steps, columns=["rank", "step", "role", "start_s", "end_s"]),
        meta={},
    )


def test_time_breakdown_stacks_injected_delay_and_labels_formula_bytes() -> None:
    r = _hand_made()
    frame = pd.concat([r.to_frame(), r.to_frame().assign(bytes_source="counted", world_size=3)], ignore_index=True)
    fig = plots.time_breakdown_plot(frame)
    ax = fig.axes[0]
    injected = [p for p in ax.patches if p.get_facecolor()[:3] == pytest.approx(plots.matplotlib.colors.to_rgb("#8172B3"))]
    assert [p.get_height() for p in injected] == pytest.approx(
        [r.summary["slowest_injected_s"] * 1e3] * 2
    )  # the slowest process's parts
    assert "injected delay (straggler)" in [t.get_text() for t in fig.legends[0].get_texts()]
    notes = [t.get_text() for t in ax.texts]
    assert notes[0].endswith("MB/step sent\n(formula)") and "formula" not in notes[1]
    assert "backend collective" in ax.get_xlabel() and "priced by formula" in ax.get_xlabel()
    hidden = r.summary["hidden_comm_s"] * 1e3
    assert f"({hidden:.1f} hidden)" in notes[0]
    stack = sum(p.get_height() for p in ax.patches) / 2  # the states partition every rank's 0.9 s step
    assert stack == pytest.approx(900.0)
    _legend_clear_of_title_and_axes(fig)


def test_timeline_draws_injected_delay_in_its_own_colour_with_readable_lanes_at_6_ranks() -> None:
    r = _hand_made(6)
    fig = plots.timeline_plot(r, steps=[0, 1])
    ax = fig.axes[0]
    assert sum(len(c.get_paths()) for c in ax.collections) == len(r.timeline)  # every span, injected included
    colours = {tuple(np.round(c.get_facecolor()[0][:3], 3)) for c in ax.collections}
    assert tuple(np.round(plots.matplotlib.colors.to_rgb(plots.KIND_COLORS["injected"]), 3)) in colours
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "injected delay (straggler)" in labels and "comm in flight (async)" in labels
    renderer = _drawn(fig)
    boxes = [t.get_window_extent(renderer) for t in ax.get_yticklabels()]
    assert len(boxes) == 6 and not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), "rank labels collide"
    lane_px = ax.get_window_extent(renderer).height / 6
    assert lane_px >= 2 * boxes[0].height, "a lane is too thin for its label"
    _legend_clear_of_title_and_axes(fig)
