"""dpkit.viz.plots: the scaling arithmetic against hand-computed values, and every figure drawn from real
or hand-made data (headless, Agg); dpkit.viz.ringtrace: a real ring all-reduce traced step by step."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SMALL
from matplotlib.figure import Figure

from dpkit import RunResult, run
from dpkit.viz import plots
from dpkit.viz.ringtrace import trace_ring


def _frame(times: dict[int, float], batch: int | dict[int, int] = 48, **extra) -> pd.DataFrame:
    rows = []
    for n, t in times.items():
        b = batch[n] if isinstance(batch, dict) else batch
        rows.append({"world_size": n, "global_batch": b, "step_time_s": t, "samples_per_s": b / t, **extra})
    return pd.DataFrame(rows)


def test_strong_scaling_speedup_is_t1_over_tn_and_efficiency_divides_by_n() -> None:
    out = plots.scaling_frame(_frame({1: 1.0, 2: 0.8, 4: 0.5}))
    assert out.speedup.tolist() == pytest.approx([1.0, 1.25, 2.0])
    assert out.efficiency.tolist() == pytest.approx([1.0, 0.625, 0.5])


def test_weak_scaling_uses_throughput_and_an_explicit_baseline_is_a_step_time() -> None:
    weak = plots.scaling_frame(_frame({1: 1.0, 2: 1.0, 4: 2.0}, batch={1: 10, 2: 20, 4: 40}))
    assert weak.speedup.tolist() == pytest.approx([1.0, 2.0, 2.0])
    given = plots.scaling_frame(_frame({2: 0.5, 4: 0.25}), baseline=2.0)
    assert given.speedup.tolist() == pytest.approx([4.0, 8.0])
    assert given.efficiency.tolist() == pytest.approx([2.0, 2.0])  # a given baseline is T_step(1): divide by N


def test_each_hue_group_has_its_own_baseline_when_it_has_one() -> None:
    a = _frame({1: 1.0, 2: 0.5}, grad_sync="flat")
    b = _frame({1: 2.0, 2: 0.5}, grad_sync="bucketed")
    out = plots.scaling_frame(pd.concat([a, b], ignore_index=True), hue="grad_sync")
    assert out.speedup.tolist() == pytest.approx([1.0, 2.0, 1.0, 4.0])


def test_bad_frames_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="empty"):
        plots.speedup_plot(pd.DataFrame())
    with pytest.raises(ValueError, match="samples_per_s"):
        plots.scaling_frame(pd.DataFrame({"world_size": [1], "step_time_s": [1.0], "global_batch": [8]}))


def test_speedup_plot_draws_ideal_and_measured_lines() -> None:
    fig = plots.speedup_plot(_frame({1: 1.0, 2: 0.8, 4: 0.5}), hue=None)
    speed, eff = fig.axes
    ideal, measured = speed.lines[0], speed.lines[1]
    assert list(ideal.get_ydata()) == [1, 2, 4]
    assert list(measured.get_ydata()) == pytest.approx([1.0, 1.25, 2.0])
    assert list(eff.lines[-1].get_ydata()) == pytest.approx([1.0, 0.625, 0.5])


@pytest.fixture(scope="module")
def dp_run():
    return run(SMALL.replace(parallelism="data", world_size=2))


def test_time_breakdown_stacks_the_slowest_process_in_words(dp_run) -> None:
    frame = pd.concat([dp_run.to_frame(), dp_run.to_frame().assign(world_size=4)], ignore_index=True)
    fig = plots.time_breakdown_plot(frame)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["number of training processes 2", "number of training processes 4"]  # words, no field=value
    heights = [p.get_height() for p in ax.patches]  # compute bars, then exposed comm, then idle
    s = dp_run.summary
    assert heights[:2] == pytest.approx([s["slowest_compute_s"] * 1e3] * 2)
    assert heights[2:4] == pytest.approx([s["slowest_exposed_comm_s"] * 1e3] * 2)
    assert "world_size" not in ax.get_title() + ax.get_ylabel()


def _skewed(late_ms: float) -> RunResult:
    """Two ranks; rank 1 starts every step late_ms later and ends with rank 0: the slowest rank's step is
    longer than the mean rank's (what drew 05's 23 ms of bars under a 28 ms line)."""
    cfg = SMALL.replace(parallelism="data", world_size=2, steps=3, warmup=1)
    timeline, steps = [], []
    for step in range(3):
        start, end = step * 0.03, step * 0.03 + 0.025 + step * 0.001
        for rank in (0, 1):
            s0 = start + (late_ms * 1e-3 if rank else 0.0)
            c = s0 + 0.010
            steps.append({"rank": rank, "step": step, "role": f"rank {rank}", "start_s": s0, "end_s": end})
            timeline += [
                {"rank": rank, "step": step, "kind": "compute", "name": "forward", "start_s": s0, "end_s": c},
                {"rank": rank, "step": step, "kind": "idle", "name": "wait", "start_s": c, "end_s": end - 0.002},
                {"rank": rank, "step": step, "kind": "comm", "name": "allreduce", "start_s": end - 0.002, "end_s": end,
                 "bytes": 256, "bytes_source": "counted", "blocking": True},
            ]  # fmt: skip
    tl = pd.DataFrame(timeline).fillna({"bytes": 0, "bytes_source": "none", "blocking": True})
    tl["bytes"] = tl["bytes"].astype(int)
    return RunResult(cfg, [1.0, 0.9, 0.8], {}, tl, pd.DataFrame(steps), {})


@pytest.mark.parametrize("late_ms", [0.0, 5.0])
def test_time_breakdown_bars_add_up_to_the_step_time_marker(late_ms: float) -> None:
    r = _skewed(late_ms)
    s = r.summary
    mean_parts = s["compute_s"] + s["exposed_comm_s"] + s["idle_s"]
    assert s["step_time_s"] - mean_parts == pytest.approx(late_ms / 2 * 1e-3)  # means fall short when steps differ
    fig = plots.time_breakdown_plot(r.to_frame())
    drawn = fig.dpkit_data
    parts = drawn.drop(columns=["label", "step_ms"]).sum(axis=1)
    assert parts.to_numpy() == pytest.approx(drawn.step_ms.to_numpy())  # the bars reach the marker
    assert drawn.step_ms.iloc[0] == pytest.approx(s["step_time_s"] * 1e3)
    ax = fig.axes[0]
    tops = [p.get_y() + p.get_height() for p in ax.patches]
    (marker,) = [c for c in ax.collections if "step time" in str(c.get_label())]
    assert max(tops) == pytest.approx(marker.get_offsets()[0][1])  # read off the drawn artists too


def test_timeline_draws_every_span_of_the_chosen_steps_with_comm_in_the_lower_half(dp_run) -> None:
    fig = plots.timeline_plot(dp_run, steps=[1])
    ax = fig.axes[0]
    tl = dp_run.timeline[dp_run.timeline.step == 1]
    drawn = sum(len(c.get_paths()) for c in ax.collections)
    assert drawn == len(tl)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0 · worker", "rank 1 · worker"]
    with pytest.raises(ValueError, match="no spans"):
        plots.timeline_plot(dp_run, steps=[99])


def test_loss_plot_against_step_samples_and_time(dp_run) -> None:
    for x in ("step", "samples", "time"):
        fig = plots.loss_plot({"a": dp_run}, x=x)
        assert list(fig.axes[0].lines[0].get_ydata()) == pytest.approx(dp_run.losses)
    xs = plots.loss_plot(dp_run, x="samples").axes[0].lines[0].get_xdata()
    assert list(xs) == [24, 48, 72]
    with pytest.raises(ValueError, match="'step', 'samples' or 'time'"):
        plots.loss_plot(dp_run, x="epoch")


def test_ring_trace_shows_reduce_scatter_then_all_gather_on_real_ranks() -> None:
    n, numel = 3, 10  # 10 values over 3 ranks: uneven chunks of 4, 3, 3
    trace = trace_ring(n, numel)
    assert sorted(trace.step.unique()) == list(range(2 * (n - 1) + 1))
    start = trace[trace.step == 0].sort_values("rank")
    assert [h for h in start.holds] == [[1] * n, [2] * n, [4] * n]
    end = trace[trace.step == 2 * (n - 1)]
    assert all(h == [2**n - 1] * n for h in end.holds)
    after_rs = trace[trace.step == n - 1].sort_values("rank")
    for rank, holds in zip(after_rs["rank"], after_rs.holds, strict=True):  # rank r owns the full sum of chunk r+1
        assert holds[(rank + 1) % n] == 2**n - 1
    sizes = [4 * 8, 3 * 8, 3 * 8]
    for rank, g in trace[trace.step > 0].groupby("rank"):
        assert g.bytes.sum() == sum(sizes[c] for c in g.sent_chunk)
        assert (g.dst == (rank + 1) % n).all() and (g.src == (rank - 1) % n).all()
    fig = plots.ring_steps_plot(trace)
    assert sum(1 for ax in fig.axes if ax.images) == 2 * (n - 1) + 1


def test_ring_trace_refuses_what_cannot_be_a_ring() -> None:
    with pytest.raises(ValueError, match="world_size"):
        trace_ring(1)
    with pytest.raises(ValueError, match="numel"):
        trace_ring(4, 3)


def test_traffic_and_async_plots() -> None:
    frame = pd.DataFrame(
        {"world_size": [2, 4, 2, 4], "who": ["server", "server", "worker", "worker"], "bytes_per_step": [4e6, 8e6, 2e6, 2e6]}
    )
    fig = plots.traffic_plot(frame)
    assert [list(line.get_ydata()) for line in fig.axes[0].lines] == [[4.0, 8.0], [2.0, 2.0]]
    curve = pd.DataFrame({"wall_s": [0.1, 0.2], "loss": [2.0, 1.5]})
    hist = pd.DataFrame({"staleness": [0, 1, 3], "updates": [5, 2, 1]})
    fig = plots.async_plot({"sync": curve, "async": curve}, hist)
    assert [p.get_height() for p in fig.axes[1].patches] == [5, 2, 1]
    assert isinstance(plots.async_plot({"sync": curve}), Figure)


@pytest.mark.parametrize("n", [4, 6])
def test_ring_steps_plot_text_fits_its_cells(n: int) -> None:
    """Issue 16: at 6 ranks the cells' labels ("0+1+2+3+4+5") ran over their cells and the chunk labels into each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    everything = 2**n - 1  # the longest label: a chunk that holds every rank's values
    rows = [
        {"step": s, "rank": r, "holds": [everything] * n, "recv_chunk": -1, "phase": "all-gather", "start_s": 0.0, "end_s": 1e-3}
        for s in range(2 * (n - 1) + 1)
        for r in range(n)
    ]
    fig = plots.ring_steps_plot(pd.DataFrame(rows))
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in (a for a in fig.axes if a.images):
        (x0, y0), (x1, y1) = ax.transData.transform([(0, 0), (1, 1)])
        cell_w, cell_h = abs(x1 - x0), abs(y1 - y0)
        for text in ax.texts:
            box = text.get_window_extent(renderer)
            assert box.width < 0.95 * cell_w and box.height < 0.95 * cell_h, (n, text.get_text(), box, cell_w, cell_h)
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        assert all(a.x1 < b.x0 for a, b in zip(ticks, ticks[1:], strict=False)), f"chunk labels overlap at n={n}"
