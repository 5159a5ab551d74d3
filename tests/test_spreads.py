"""Spread on every number: repeats run round-robin and resume one by one, rows carry medians with their spread,
noisy rows say why, plots draw the repeats' range and a red warning, and the demo never shows a superlinear
efficiency without a sentence explaining it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import ErrorbarContainer

import dpkit.api
from dpkit import RunConfig, RunResult, sweep
from dpkit.demo import report
from dpkit.measure import flag_noise, runnable_outside, summarize_repeats, within_run_iqr
from dpkit.viz import plots
from dpkit.viz import widgets as w

ROOT = Path(__file__).resolve().parent.parent
BASE = RunConfig(
    parallelism="data", model="mlp", hidden=16, layers=2, global_batch=8, steps=3, warmup=1, threads_per_rank=1, timeout_s=60
)


def counting_run(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """dpkit.api.run, really run and recorded in launch order."""
    calls: list[RunConfig] = []
    real = dpkit.api.run
    monkeypatch.setattr(dpkit.api, "run", lambda cfg, out=None: calls.append(cfg) or real(cfg, out))
    return calls


# ---- sweep: real runs ----------------------------------------------------------------------------
def test_sweep_repeats_round_robin_gives_medians_and_resumes_per_repeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_run(monkeypatch)
    frame = sweep(BASE, out=tmp_path, progress=False, repeats=3, world_size=[1, 2])
    assert [c.world_size for c in calls] == [1, 2, 1, 2, 1, 2]  # round-robin, not 1, 1, 1, 2, 2, 2
    ids = [BASE.replace(world_size=n).run_id() for n in (1, 2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}{s}" for i in ids for s in ("", "-r1", "-r2"))

    assert frame.run_id.tolist() == ids and frame.repeats.tolist() == [3, 3]
    for row, run_id in zip(frame.itertuples(), ids, strict=True):
        runs = [RunResult.load(tmp_path / f"{run_id}{s}") for s in ("", "-r1", "-r2")]
        times = np.array([r.summary["step_time_s"] for r in runs])
        q25, q75 = np.percentile(times, [25, 75])
        assert row.step_time_s == pytest.approx(np.median(times))
        assert row.step_time_iqr_s == pytest.approx(q75 - q25)
        assert (row.step_time_min_s, row.step_time_max_s) == pytest.approx((times.min(), times.max()))
        assert row.samples_per_s == pytest.approx(BASE.global_batch / np.median(times))
        assert row.comm_s == pytest.approx(np.median([r.summary["comm_s"] for r in runs]))
        per_run = []
        for r in runs:  # within a run: per timed step, the slowest rank; then the IQR over the steps
            stats = r.step_stats()
            steps = stats[stats.step >= BASE.warmup].groupby("step").step_time_s.max()
            per_run.append(np.subtract(*np.percentile(steps, [75, 25])))
            assert "busy_outside" in r.meta["load"]  # the load it ran under is saved with it
        assert row.step_time_run_iqr_s == pytest.approx(np.median(per_run))
    assert frame.noisy.dtype == bool and all(isinstance(r, str) for r in frame.noise_reason)
    assert (frame.cpu_count >= 1).all() and (frame.busy_processes >= frame.other_busy_processes).all()
    assert not frame.resumed.any()

    shutil.rmtree(tmp_path / f"{ids[1]}-r1")  # lose one repeat of one config
    calls.clear()
    again = sweep(BASE, out=tmp_path, progress=False, repeats=3, world_size=[1, 2])
    assert [(c.world_size) for c in calls] == [2]
    assert again.resumed.tolist() == [True, False] and again.resumed_repeats.tolist() == [3, 2]
    assert again.step_time_s.iloc[0] == frame.step_time_s.iloc[0]  # the same three runs, loaded

    calls.clear()
    more = sweep(BASE, out=tmp_path, progress=False, repeats=4, world_size=[1, 2])
    assert [c.world_size for c in calls] == [1, 2] and more.repeats.tolist() == [4, 4]
    assert (tmp_path / f"{ids[0]}-r3").is_dir()


def test_sweep_refuses_bad_repeats_before_running_and_defaults_to_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_run(monkeypatch)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="repeats"):
            sweep(BASE, out=tmp_path, progress=False, repeats=bad, world_size=[1])
    assert calls == [] and not list(tmp_path.iterdir())
    one = sweep(BASE, progress=False, world_size=[1])
    assert len(calls) == 1 and one.repeats.tolist() == [1] and one.step_time_iqr_s.tolist() == [0.0]


def test_within_run_iqr_uses_the_slowest_rank_of_each_timed_step() -> None:
    steps = pd.DataFrame(
        {"rank": [0, 1] * 4, "step": [0, 0, 1, 1, 2, 2, 3, 3], "role": ["worker"] * 8,
         "start_s": [0.0] * 8, "end_s": [9.0, 9.0, 1.0, 2.0, 1.0, 4.0, 3.0, 1.0]}
    )  # fmt: skip
    timeline = pd.DataFrame(columns=["rank", "step", "kind", "name", "start_s", "end_s", "bytes", "bytes_source", "blocking"])
    result = RunResult(BASE.replace(world_size=2, steps=4), [1.0] * 4, {}, timeline, steps, {})
    assert within_run_iqr(result) == pytest.approx(np.subtract(*np.percentile([2.0, 4.0, 3.0], [75, 25])))  # step 0 is warm-up


def test_load_counts_busy_processes_outside_the_run_only() -> None:
    spin = [sys.executable, "-c", "while True: pass"]
    busy = subprocess.Popen(spin)  # our child, as a run's ranks are
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # unrelated to `busy`
    try:
        time.sleep(0.5)
        seen_from_us = [runnable_outside() for _ in range(5)]
        seen_from_idle = [runnable_outside(me=idle.pid) for _ in range(5)]
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
    assert all(s is not None and busy.pid not in s for s in seen_from_us)
    assert any(s is not None and busy.pid in s for s in seen_from_idle)


# ---- noise flags on hand-made rows (no processes) ---------------------------------------------------
def _runs(times: list[float], **cols) -> pd.DataFrame:
    """Per-run rows of one config, as run_row() makes them."""
    return pd.DataFrame(
        {"run_id": "x", "world_size": 1, "global_batch": 8, "step_time_s": times, "repeat": range(len(times)), **cols}
    )


def test_repeats_are_summarised_and_flagged_when_their_spread_exceeds_a_fifth_of_the_median() -> None:
    calm, wide, two = summarize_repeats([_runs([1.0, 1.05, 1.1]), _runs([1.0, 1.1, 1.5]), _runs([1.0, 1.3])]).itertuples()
    assert (calm.step_time_s, calm.step_time_iqr_s, calm.samples_per_s) == pytest.approx((1.05, 0.05, 8 / 1.05))
    assert not calm.noisy and calm.noise_reason == ""
    assert wide.step_time_iqr_s == pytest.approx(0.25) and wide.noisy  # quartiles 1.05 and 1.3
    assert wide.noise_reason == "spread 23% of the median over 3 repeats"
    assert two.step_time_iqr_s == pytest.approx(0.3) and two.repeats == 2  # below 3 repeats: max - min
    assert two.noise_reason == "spread (max - min) 26% of the median over 2 repeats"
    single = summarize_repeats([_runs([1.0])]).iloc[0]
    assert single.step_time_iqr_s == 0.0 and not single.noisy


def test_a_run_whose_own_steps_disagree_is_noisy() -> None:
    ok, bad = flag_noise(
        pd.DataFrame({"step_time_s": [1.0, 1.0], "repeats": [1, 1], "step_time_run_iqr_s": [0.3, 0.31]})
    ).itertuples()
    assert not ok.noisy
    assert bad.noisy and bad.noise_reason == "steps within a run spread 31% of the median step"


def test_busy_processes_beyond_the_cores_are_noisy_only_when_others_compete() -> None:
    frame = flag_noise(
        pd.DataFrame(
            {
                "step_time_s": [1.0] * 4,
                "busy_processes": [5.0, 4.0, 2.0, 3.0],
                "other_busy_processes": [3.0, 0.0, 1.0, 0.2],
                "cpu_count": [2, 2, 2, 2],
            }
        )
    )
    assert frame.noisy.tolist() == [True, False, False, False]  # 4 ranks alone on 2 cores; 2 on 2; a blip of 0.2
    assert frame.noise_reason[0] == "5 busy processes on 2 cores while measuring (3 of them outside the run)"
    bare = flag_noise(pd.DataFrame({"step_time_s": [1.0], "world_size": [2]}))
    assert bare.noisy.tolist() == [False] and bare.noise_reason.tolist() == [""]


# ---- plots ------------------------------------------------------------------------------------------
def _scaling(times: dict[int, tuple[float, float, float]], noisy: dict[int, str] | None = None, **extra) -> pd.DataFrame:
    """A sweep-like frame: world size -> (median, min, max) step time, one row each."""
    rows = []
    for n, (t, lo, hi) in times.items():
        reason = (noisy or {}).get(n, "")
        rows.append({"world_size": n, "global_batch": 48, "step_time_s": t, "samples_per_s": 48 / t, "step_time_min_s": lo,
                     "step_time_max_s": hi, "repeats": 3, "noisy": bool(reason), "noise_reason": reason,
                     **{k: (v[n] if isinstance(v, dict) else v) for k, v in extra.items()}})  # fmt: skip
    return pd.DataFrame(rows)


def test_speedup_bounds_pair_each_rows_range_with_the_baselines() -> None:
    out = plots.scaling_frame(_scaling({1: (1.0, 0.9, 1.2), 2: (0.5, 0.4, 0.6)}))
    assert out.speedup.tolist() == pytest.approx([1.0, 2.0])
    assert out.speedup_low.tolist() == pytest.approx([1 / 1.2, 0.9 / 0.6])  # slowest here against fastest baseline
    assert out.speedup_high.tolist() == pytest.approx([1 / 0.9, 1.2 / 0.4])
    assert out.efficiency_high.tolist() == pytest.approx([1 / 0.9, 1.2 / 0.4 / 2])
    plain = plots.scaling_frame(
        pd.DataFrame({"world_size": [1, 2], "global_batch": 8, "step_time_s": [1.0, 0.5], "samples_per_s": [8, 16]})
    )
    assert plain.speedup_low.tolist() == plain.speedup_high.tolist() == pytest.approx([1.0, 2.0])


def test_speedup_plot_draws_error_bars_integer_ticks_and_a_red_warning_for_noisy_rows() -> None:
    frame = _scaling(
        {1: (1.0, 0.9, 1.2), 2: (0.6, 0.5, 0.9), 4: (0.4, 0.35, 0.5)}, noisy={2: "spread 34% of the median over 3 repeats"}
    )
    frame["world_size"] = frame.world_size.astype(float)  # even float sizes get whole-number ticks
    fig = plots.speedup_plot(frame)
    data = plots.scaling_frame(frame)
    for ax, col in zip(fig.axes, ("speedup", "efficiency"), strict=True):
        (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        segments = [seg for seg in bars.lines[2][0].get_segments() if len(seg) and np.isfinite(seg).all()]
        shown = data[data.withheld == ""]  # the noisy point is withheld: no bar, a cross labelled 'withheld'
        assert [seg[0][1] for seg in segments] == pytest.approx(shown[f"{col}_low"].tolist())
        assert [seg[1][1] for seg in segments] == pytest.approx(shown[f"{col}_high"].tolist())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
        labels = [t.get_text() for t in ax.texts]
        assert [t for t in labels if not t.endswith(" ms")] == ["withheld"]
        if col == "speedup":  # the absolute median step time beside every speedup shown
            assert [t for t in labels if t.endswith(" ms")] == ["1000 ms", "400 ms"]
    warned = [t for t in fig.texts if "speedup withheld at world size 2, not measurable now" in t.get_text()]
    assert len(warned) == 1 and "spread 34%" in warned[0].get_text() and warned[0].get_color() == plots.WARNING_COLOR
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]  # one legend, off the data
    for ax in fig.axes:
        assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        assert not legend.get_window_extent(renderer).overlaps(ax.title.get_window_extent(renderer))
    calm = plots.speedup_plot(_scaling({1: (1.0, 0.95, 1.05), 2: (0.6, 0.58, 0.62)}))
    assert not any("Warning" in t.get_text() for t in calm.texts)


# ---- the demo's report ------------------------------------------------------------------------------
DEMO_CORES = {"threads_per_rank": 1, "num_processes": {1: 1, 2: 2, 4: 4}, "cpu_count": 2, "comm_s": 0.01, "exposed_comm_s": 0.01}
ALL_THREADS_BASELINE = {**DEMO_CORES, "threads_per_rank": {1: 2, 2: 1, 4: 1}}


def test_demo_report_withholds_an_efficiency_above_what_the_cores_can_give() -> None:
    frame = _scaling(
        {1: (1.0, 0.7, 1.3), 2: (1 / 5.08, 0.18, 0.21), 4: (0.6, 0.55, 0.65)},
        noisy={1: "spread 34% of the median over 3 repeats"},
        **DEMO_CORES,
    )
    text = report(frame)
    assert "2.54" not in text and "5.08" in text  # the efficiency is never printed; the reason names the speedup
    assert "speedup withheld at world size 2, not measurable now:" in text
    assert "speedup 5.08 is above the 2x the cores allow" in text and "the baseline's spread 34%" in text
    assert "Fastest" not in text and "Rerun `dpkit demo` when the machine is quieter" in text
    data = plots.scaling_frame(frame)
    assert data.efficiency.isna().all() and (data.withheld != "").all()  # the baseline's own noise: every row
    fig = plots.speedup_plot(frame)
    for ax in fig.axes:  # nothing drawn above what the cores allow; a cross where each point would be
        ys = [y for line in ax.lines for y in np.asarray(line.get_ydata(), dtype=float) if np.isfinite(y)]
        assert max(ys, default=0) <= 4.0
        assert sum(t.get_text() == "withheld" for t in ax.texts) == 3
    plot_text = " ".join(t.get_text() for t in fig.texts).replace("\n    ", " ")
    assert "speedup withheld at world size 2, not measurable now" in plot_text


def test_a_superlinear_speedup_against_an_all_threads_baseline_is_withheld_even_when_the_repeats_agree() -> None:
    frame = _scaling({1: (1.0, 0.99, 1.01), 2: (1 / 2.6, 0.38, 0.39), 4: (0.6, 0.59, 0.61)}, **ALL_THREADS_BASELINE)
    data = plots.scaling_frame(frame)
    assert data.withheld.tolist()[:2] == ["", "not measurable now: speedup 2.60 is above the 1x the cores allow"]
    assert data.speedup_measured[1] == pytest.approx(2.6) and np.isnan(data.speedup[1])
    assert data.withheld[2] == "not measurable now: speedup 1.67 is above the 1x the cores allow"  # 4 ranks, 2 cores
    text = report(frame)
    assert "speedup withheld at world size 2" in text and "the baseline's threads differ" in text


def test_waiting_for_a_core_or_outside_load_withholds_with_the_reason() -> None:
    frame = _scaling({1: (1.0, 0.99, 1.01), 2: (0.6, 0.59, 0.61)}, **DEMO_CORES)
    frame["waiting_for_core_s"] = [0.0, 0.3]
    frame["other_busy_processes"] = [2.0, 0.0]
    frame["busy_processes"] = [3.0, 2.0]
    data = plots.scaling_frame(frame)
    assert data.withheld[0] == "not measurable now: 2 busy processes outside the run (3 busy on 2 cores)"
    assert data.withheld[1] == ("not measurable now: the ranks waited for a core 50% of the step")
    quiet = plots.scaling_frame(_scaling({1: (1.0, 0.99, 1.01), 2: (0.6, 0.59, 0.61)}, **DEMO_CORES))
    assert (quiet.withheld == "").all() and quiet.speedup[1] == pytest.approx(1 / 0.6)


def test_demo_report_conclusion_follows_the_numbers_when_they_are_clean() -> None:
    faster = report(_scaling({1: (1.0, 0.99, 1.01), 2: (0.7, 0.69, 0.71), 4: (0.8, 0.79, 0.81)}, **DEMO_CORES))
    assert "WARNING" not in faster and "Fastest: world size 2, 1.43x the single process" in faster
    assert "each process: 1 core" in faster and "4 processes x 1 thread(s) share 2 cores" in faster
    slower = report(_scaling({1: (1.0, 0.99, 1.01), 2: (1.2, 1.19, 1.21), 4: (1.3, 1.29, 1.31)}, **DEMO_CORES))
    assert "No world size beat the single process (best speedup 0.83, at world size 2)" in slower


@pytest.mark.slow
def test_demo_quick_writes_spread_columns(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dpkit.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "demo.csv", keep_default_na=False, na_values=[""])
    spread = ["step_time_iqr_s", "step_time_min_s", "step_time_max_s", "step_time_run_iqr_s", "speedup_low", "speedup_high",
              "repeats", "busy_processes", "cpu_count", "noisy", "noise_reason"]  # fmt: skip
    assert set(spread) <= set(frame.columns)
    assert frame.world_size.tolist() == [1, 2, 4] and frame.repeats.tolist() == [3, 3, 3]
    assert ((frame.step_time_min_s <= frame.step_time_s) & (frame.step_time_s <= frame.step_time_max_s)).all()
    assert len(list((tmp_path / "runs").iterdir())) == 9
    assert "step_time_iqr_s" in done.stdout
    assert {"cpu_s", "waiting_for_core_s", "withheld", "speedup_measured"} <= set(frame.columns)
    for row in frame.itertuples():
        if isinstance(row.withheld, str) and row.withheld:  # never printed as a result: blank in the table, the reason under it
            assert np.isnan(row.speedup) and f"speedup withheld at world size {row.world_size}" in done.stdout
        else:  # shown: within what the cores allow (one core per process, 2 processes at most on 2 cores...)
            assert row.speedup <= 1.2 * min(row.world_size, row.cpu_count)


# ---- widgets ----------------------------------------------------------------------------------------
def test_widget_scaling_repeats_interleaved_and_reuses_cached_repeats() -> None:
    launched: list[int] = []
    cache = w.RunCache(lambda cfg: launched.append(cfg.world_size) or dpkit.api.run(cfg))
    fig, frame = w.scaling(BASE, [1, 2], cache=cache, repeats=2)
    assert launched == [1, 2, 1, 2] and frame.repeats.tolist() == [2, 2]
    assert {"speedup_low", "speedup_high", "step_time_iqr_s", "noisy"} <= set(frame.columns)
    assert any(isinstance(c, ErrorbarContainer) for c in fig.axes[0].containers)
    launched.clear()
    _, frame = w.scaling(BASE, [1, 2], cache=cache)  # default: 3 repeats; the first two are cached
    assert launched == [1, 2] and frame.repeats.tolist() == [3, 3]
    panel = w.scaling_panel(BASE.replace(global_batch=24, hidden=32), cache)
    assert panel.values() == {"max_world_size": 2, "grad_sync": BASE.grad_sync, "repeats": 2, "workload": "compute"}


# ---- device model, CPU time, verdicts, links the machine can honour --------------------------------
def test_one_rank_is_one_core_by_default_and_figures_say_when_ranks_share_cores() -> None:
    from dpkit.runtime.cores import cores_note, default_threads

    assert default_threads(1) == default_threads(4) == 1
    with pytest.raises(ValueError, match="device_model"):
        default_threads(2, "half a core")
    assert cores_note(2, 1, 2) == "each process: 1 core" and cores_note(1, 1, 2) == "one process: 1 core"
    assert cores_note(4, 1, 2) == "4 processes x 1 thread(s) share 2 cores: not one core each"
    frame = _scaling({1: (1.0, 0.99, 1.01), 2: (0.6, 0.59, 0.61), 4: (0.7, 0.69, 0.71)}, **DEMO_CORES)
    title = plots.speedup_plot(frame).get_suptitle()
    assert "each process: 1 core" in title and "4 processes x 1 thread(s) share 2 cores" in title


def test_waiting_for_a_core_is_the_compute_the_cpu_clock_did_not_cover() -> None:
    from dpkit.runtime.cpu_time import StepCpuClock, waiting_for_core

    assert waiting_for_core(0.10, 0.06) == pytest.approx(0.04)
    assert waiting_for_core(0.10, 0.12) == 0.0  # comm threads' CPU on top: never negative
    assert np.isnan(waiting_for_core(0.10, float("nan")))
    clock = StepCpuClock()
    clock.begin()
    deadline = time.process_time() + 0.02
    while time.process_time() < deadline:  # busy: the CPU clock runs
        pass
    busy = clock.end()
    clock.begin()
    time.sleep(0.05)  # asleep: it does not
    assert busy >= 0.02 and clock.end() < 0.02


def test_verdict_says_which_is_faster_by_how_much_and_why_or_no_reliable_difference() -> None:
    from dpkit.verdict import compare_rows, scaling_verdict

    ring = pd.Series({"step_time_s": 0.010, "step_time_min_s": 0.009, "step_time_max_s": 0.011, "exposed_comm_s": 0.002,
                      "worker_bytes_per_step": 1e5, "withheld": ""})  # fmt: skip
    ps = pd.Series({"step_time_s": 0.020, "step_time_min_s": 0.018, "step_time_max_s": 0.022, "exposed_comm_s": 0.0058,
                    "server_bytes_per_step": 3e5, "worker_bytes_per_step": 1e5, "server_exposed_comm_s": 0.004, "withheld": ""})  # fmt: skip
    text = compare_rows(ring, ps, "all-reduce", "parameter server")
    assert text.startswith("all-reduce is 2.00x faster than parameter server (10 ms against 20 ms per step): ")
    assert (
        "its server sends 3x a worker's bytes" in text
        and "exposed comm 5.8 ms per step for parameter server against 2 ms for all-reduce" in text
    )
    close = ps.copy()
    close[["step_time_s", "step_time_min_s", "step_time_max_s"]] = [0.0105, 0.0095, 0.012]
    assert compare_rows(ring, close, "a", "b").startswith("no reliable difference between a and b")
    busy = ps.copy()
    busy["withheld"] = "not measurable now: 2 busy processes outside the run (4 busy on 2 cores)"
    assert compare_rows(ring, busy, "a", "b") == "b: not measurable now: 2 busy processes outside the run (4 busy on 2 cores)."
    frame = _scaling({1: (1.0, 0.95, 1.05), 2: (0.7, 0.68, 0.72)}, **DEMO_CORES)
    assert scaling_verdict(plots.scaling_frame(frame)) == [
        "2 ranks is 1.43x faster than one process (700 ms against 1e+03 ms per step)."
    ]


def test_a_link_the_machine_cannot_honour_is_refused_before_running_with_one_it_can() -> None:
    from dpkit.lessons import COMM_BOUND
    from dpkit.link_check import check_link, message_bytes

    cfg = COMM_BOUND.config.replace(world_size=2)
    size = message_bytes(cfg)
    assert size == 4 * sum(v.numel() for v in dpkit.workloads.build_model(cfg, 0).state_dict().values()) // 2
    quick = check_link(cfg, floors=lambda sizes: {s: 1e-4 for s in sizes})  # a 0.1 ms loopback: 1 GbE is slower
    assert quick is not None and quick.honoured and quick.text().startswith("1GbE can be emulated here")
    slow = check_link(cfg.replace(link="100GbE"), floors=lambda sizes: {s: 4e-4 for s in sizes})
    assert slow is not None and not slow.honoured and slow.fastest_honoured == "1GbE"
    assert slow.text().startswith("this machine cannot honour 100GbE for these messages") and "is 1GbE" in slow.text()
    assert check_link(cfg.replace(link="none")) is None
    import dpkit.link_check as lc

    panel = w.experiment_panel(cfg).set(workload="comm", max_world_size=2)
    panel.set(link="NVLink")
    sizes = [message_bytes(w.mode_config(cfg.replace(link="NVLink"), mode, 2)) for mode in ("allreduce", "ps")]
    saved = dict(lc._FLOORS)
    lc._FLOORS.update({s: 4e-4 for s in sizes})  # as if calibrated: a 0.4 ms loopback
    try:
        panel.run()
    finally:
        lc._FLOORS.clear()
        lc._FLOORS.update(saved)
    assert isinstance(panel.error, lc.LinkNotHonourable) and "cannot honour NVLink" in str(panel.error)
    assert "the fastest link it can honour for them is 1GbE" in panel.status.value and panel.runs == 0


@pytest.mark.slow
def test_sweep_prints_the_noisy_verdict_and_withholds_speedups_as_the_figures_do(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dpkit.cli", "sweep", "--parallelism", "data", "--model", "mlp", "--hidden", "16", "--layers", "1", "--global-batch", "8",
         "--steps", "3", "--warmup", "1", "--out", str(tmp_path), "world-size=1,2"],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert {"cpu_s", "waiting_for_core_s", "speedup", "efficiency", "withheld", "noisy", "noise_reason"} <= set(header)


def test_lesson_workloads_split_over_every_world_size_a_panel_offers_and_are_offered_by_the_experiment_panel() -> None:
    from dpkit.lessons import WORKLOADS

    for workload in WORKLOADS.values():
        for n in (1, 2, 3, 4):
            workload.config.replace(world_size=n)  # a batch that does not split raises ValueError
        assert workload.config.global_batch in w.EXPERIMENT_BATCHES and workload.config.model_hidden in w.EXPERIMENT_HIDDEN


@pytest.mark.slow
def test_a_run_records_cpu_time_per_step_and_rank_beside_wall_time(tmp_path: Path) -> None:
    result = dpkit.api.run(BASE.replace(world_size=2), out=tmp_path / "run")
    stats = result.step_stats()
    assert stats.cpu_s.notna().all() and (stats.cpu_s > 0).all()
    assert (stats.waiting_for_core_s >= 0).all()
    assert (stats.compute_s - stats.cpu_s).clip(lower=0).tolist() == pytest.approx(stats.waiting_for_core_s.tolist())
    s = result.summary
    assert s["cpu_s"] > 0 and 0 <= s["waiting_for_core_s"] <= s["step_time_s"] and s["threads_per_rank"] == 1
    assert RunResult.load(tmp_path / "run").summary["cpu_s"] == s["cpu_s"]


def test_the_all_cores_baseline_stays_available_and_is_labelled() -> None:
    seen: list[RunConfig] = []
    cache = w.RunCache(lambda cfg: seen.append(cfg) or dpkit.api.run(cfg))
    base = BASE.replace(threads_per_rank=None)
    w.scaling(base, [1, 2], cache=cache, repeats=1, device_model="all cores")
    from dpkit.runtime.cores import cores_available

    assert [c.threads_per_rank for c in seen] == [cores_available(), max(1, cores_available() // 2)]
    with pytest.raises(ValueError, match="device_model"):
        w.scaling(base, [1, 2], cache=w.RunCache(), repeats=1, device_model="a GPU")
