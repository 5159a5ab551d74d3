"""The experiment panel (dpkit.viz.widgets.experiment / experiment_panel, plots.experiment_plot): one row per
sync mode and world size from real repeated runs, per-role communication, a figure whose lines follow the
controls, and a panel driven as a learner would (set, Run) that reuses the cache and scales weakly on request."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SMALL
from matplotlib.figure import Figure

from dpkit import RunConfig, run
from dpkit.viz import plots
from dpkit.viz import widgets as w

BASE = SMALL.replace(parallelism="data", world_size=2)  # hidden 32, 3 steps, global batch 24
AR, PS = "all-reduce (native)", "parameter server (1 server)"


class CountingRunner:
    """The real dpkit.run, counted: which configs the cache let through."""

    def __init__(self) -> None:
        self.configs: list[RunConfig] = []

    def __call__(self, cfg: RunConfig):
        self.configs.append(cfg)
        return run(cfg)


def _refuse(cfg: RunConfig):
    raise AssertionError(f"no run should start: {cfg}")


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _labels(ax) -> list[str]:
    return [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]


@pytest.fixture(scope="module")
def cache() -> w.RunCache:
    return w.RunCache(CountingRunner())


@pytest.fixture(scope="module")
def two_modes(cache: w.RunCache) -> tuple[Figure, pd.DataFrame, pd.DataFrame]:
    """All-reduce and sync PS at world sizes 1..2, twice each, interleaved: 3 configs (one shared baseline), 6 runs."""
    fig, frame = w.experiment(BASE, [1, 2], ["allreduce", "ps"], repeats=2, cache=cache)
    _, per_role = w.experiment_frames(BASE, [1, 2], ["allreduce", "ps"], repeats=2, cache=cache)  # all cached
    return fig, frame, per_role


# ---- the pure function, on real runs --------------------------------------------------------
@pytest.mark.slow
def test_one_row_per_mode_and_world_size_with_medians_spreads_and_a_shared_baseline(cache, two_modes) -> None:
    _, frame, _ = two_modes
    assert list(zip(frame["mode"], frame.world_size, strict=True)) == [(AR, 1), (AR, 2), (PS, 1), (PS, 2)]
    assert frame.parallelism.tolist() == ["none", "data", "none", "data"]  # world size 1: the single-process baseline
    assert cache.launched == 6 and len(cache.runner.configs) == 6  # the baseline ran once (x2 repeats) for both modes
    assert frame.processes.tolist() == ["1 (single process)", "2", "1 (single process)", "3 (2 workers + 1 server)"]
    assert (frame.repeats == 2).all() and frame.step_time_iqr_s.notna().all()
    assert (frame.step_time_min_s <= frame.step_time_s).all() and (frame.step_time_s <= frame.step_time_max_s).all()
    assert frame.speedup_measured[frame.world_size == 1].tolist() == pytest.approx([1.0, 1.0])
    shown = frame[frame.withheld == ""]  # on a busy machine a speedup is withheld (NaN), with the reason
    assert (shown.speedup_low <= shown.speedup).all() and (shown.speedup <= shown.speedup_high).all()
    assert frame[frame.withheld != ""].speedup.isna().all()
    assert frame.per_rank_batch.tolist() == [24, 12, 24, 12] and (frame.global_batch == 24).all()


@pytest.mark.slow
def test_comm_is_split_by_role_and_a_parameter_server_sends_the_model_to_every_worker(two_modes) -> None:
    _, frame, per_role = two_modes
    ar2, ps2 = frame.iloc[1], frame.iloc[3]
    assert frame.worker_comm_s[frame.world_size == 1].tolist() == [0.0, 0.0]  # one process talks to no one
    assert ar2.worker_comm_s > 0 and ps2.worker_comm_s > 0 and ps2.server_comm_s > 0
    assert pd.isna(ar2.server_comm_s)  # a ring has no server: every rank alike
    assert ar2.worker_comm_s == pytest.approx(ar2.comm_s)  # the training role's comm is the summary's comm
    assert ar2.worker_exposed_comm_s <= ar2.worker_comm_s + 1e-12
    assert ps2.server_bytes_per_step == pytest.approx(2 * ps2.worker_bytes_per_step)  # answers 2 pulls of what each pushes
    roles = per_role[per_role.world_size == 2].set_index(["mode", "role"])
    assert sorted(roles.index) == [(AR, "worker"), (PS, "parameter server"), (PS, "worker")]
    assert roles.loc[(PS, "parameter server"), "processes"] == 1 and roles.loc[(PS, "worker"), "processes"] == 2
    assert roles.loc[(AR, "worker"), "bytes_source"] == "formula"  # gloo's own all-reduce: dpkit prices it by formula
    assert roles.loc[(PS, "worker"), "bytes_source"] == "counted"
    assert (roles.comm_iqr_s >= 0).all() and (roles.repeats == 2).all()


@pytest.mark.slow
def test_the_figure_has_both_rows_and_follows_the_modes_and_the_world_sizes(cache, two_modes) -> None:
    fig, _, _ = two_modes
    speed, eff, comm, traffic = fig.axes
    assert set(_legend(speed)) >= {"ideal (linear)", AR, PS} and set(_legend(eff)) >= {AR, PS}
    assert set(_labels(comm)) == {
        f"{m} · {r} · {k}" for m, r in ((AR, "worker"), (PS, "worker"), (PS, "parameter server")) for k in ("total", "exposed")
    }
    assert f"{AR} · worker (formula)" in _legend(traffic) and "(formula)" in traffic.get_xlabel()
    assert "cores" in fig.get_suptitle() and "2 runs per point" in fig.get_suptitle()
    assert [list(line.get_xdata()) for line in comm.lines if line.get_label().startswith(f"{AR} · worker")][0] == [1, 2]

    launched = cache.launched
    fig_ar, frame_ar = w.experiment(BASE, [1, 2], ["allreduce"], repeats=2, cache=cache)  # fewer modes: all cached
    assert cache.launched == launched and frame_ar["mode"].unique().tolist() == [AR]
    assert PS not in _legend(fig_ar.axes[0]) and all(PS not in label for label in _labels(fig_ar.axes[2]))

    fig3, frame3 = w.experiment(BASE, [1, 2, 3], ["allreduce"], repeats=1, cache=cache)  # one more world size: one new run
    assert cache.launched == launched + 1 and frame3.world_size.tolist() == [1, 2, 3]
    assert list(fig3.axes[0].lines[0].get_xdata()) == [1, 2, 3]  # the ideal line, and every axis, reach 3 now
    assert [list(line.get_xdata()) for line in fig3.axes[2].lines][0] == [1, 2, 3]


# ---- the panel, driven headless ---------------------------------------------------------------
@pytest.mark.slow
def test_panel_runs_from_its_controls_reuses_the_cache_and_scales_weakly(cache, two_modes) -> None:
    panel = w.experiment_panel(BASE, cache)
    assert (
        panel.values()["max_world_size"] == 2 and panel.values()["repeats"] == 2 and panel.values()["hidden"] == 32
    )  # 6 runs: quick
    assert "link" in panel.controls and "1GbE" in panel.controls["link"].options
    launched = cache.launched
    panel.set(max_world_size=2, repeats=2).run()  # the defaults are two_modes' runs
    assert panel.error is None, panel.error
    assert cache.launched == launched and len(panel.frame) == 4 and set(_legend(panel.figure.axes[0])) >= {AR, PS}
    assert panel.bar.value == panel.bar.max == 6
    first = panel.figure

    panel.set(sync_modes=("allreduce",)).run()
    assert panel.figure is not first and PS not in _legend(panel.figure.axes[0]) and panel.runs == 2
    assert panel.controls["num_servers"].disabled and not panel.controls["allreduce_algo"].disabled

    panel.set(scaling="weak", batch=12, repeats=1)
    assert (
        panel.controls["batch"].description == "per-rank batch"
        and "global batch at world size 1..2: 12, 24" in panel.batch_note.value
    )
    panel.run()
    assert panel.error is None, panel.error
    assert panel.frame.global_batch.tolist() == [12, 24] and panel.frame.per_rank_batch.tolist() == [12, 12]
    assert cache.launched == launched + 1  # world size 2 at 24 is the strong run already cached; only the baseline at 12 is new
    assert "weak scaling" in panel.figure.axes[0].get_title()

    panel.set(scaling="strong", batch=24)
    assert "per-rank batch at world size 1..2: 24, 12" in panel.batch_note.value
    panel.set(sync_modes=()).run()
    assert isinstance(panel.error, ValueError) and "sync_modes is empty" in panel.status.value


# ---- fast: arguments, configs, and the figure from a hand-made frame --------------------------
def test_bad_arguments_are_refused_before_any_run() -> None:
    never = w.RunCache(_refuse)
    for kwargs, match in (
        ({"scaling": "medium"}, "scaling='medium'"),
        ({"sync_modes": ["gossip"]}, "'gossip'"),
        ({"sync_modes": []}, "empty"),
        ({"world_sizes": [2, 3]}, "must include 1"),
    ):
        with pytest.raises(ValueError, match=match):
            w.experiment(BASE, **{"world_sizes": [1, 2], "sync_modes": ["allreduce"], **kwargs}, cache=never)
    assert never.launched == 0


def test_mode_configs_ignore_knobs_the_mode_does_not_use_and_share_one_baseline() -> None:
    ring = BASE.replace(allreduce_algo="ring", num_servers=2)
    assert w.mode_config(ring, "ps", 2) == w.mode_config(BASE, "ps", 2).replace(num_servers=2)  # the algorithm: PS ignores it
    assert w.mode_config(ring, "allreduce", 2).num_servers == 1
    assert w.mode_config(ring, "allreduce", 1) == w.mode_config(ring, "ps-async", 1) == w.baseline_of(BASE)
    assert w.processes_label(w.mode_config(ring, "ps", 3)) == "5 (3 workers + 2 servers)"
    assert w.mode_label(w.mode_config(ring, "allreduce", 2)) == "all-reduce (ring)"


def _hand_made(modes: dict[str, dict[int, float]], link: str = "none") -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, roles = [], []
    for mode, times in modes.items():
        for n, t in times.items():
            rows.append({"mode": mode, "world_size": n, "global_batch": 48, "step_time_s": t, "samples_per_s": 48 / t,
                         "step_time_min_s": 0.9 * t, "step_time_max_s": 1.1 * t, "noisy": False, "noise_reason": "",
                         "repeats": 3, "cpu_count": 2, "threads_per_rank": 1, "device": "cpu", "backend": "gloo",
                         "link": link, "link_latency_s": None, "link_bandwidth_Bps": None})  # fmt: skip
            role = "single process" if n == 1 else "worker"
            roles.append({"mode": mode, "world_size": n, "role": role, "comm_s": 0.001 * (n - 1), "exposed_comm_s": 0.0005 * (n - 1),
                          "bytes_sent_per_step": 1e5 * (n > 1), "bytes_source": "counted" if n > 1 else "none"})  # fmt: skip
            if mode.startswith("parameter") and n > 1:
                roles.append({"mode": mode, "world_size": n, "role": "parameter server", "comm_s": 0.002, "exposed_comm_s": 0.002,
                              "bytes_sent_per_step": 1e5 * n, "bytes_source": "counted"})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(roles)


def test_experiment_plot_draws_speedup_and_per_role_comm_from_a_hand_made_frame() -> None:
    frame, per_role = _hand_made({"ring": {1: 1.0, 2: 0.6, 3: 0.5}, "parameter server": {1: 1.0, 2: 0.8, 3: 0.9}}, link="1GbE")
    fig = plots.experiment_plot(frame, per_role)
    speed, eff, comm, traffic = fig.axes
    measured = list(speed.containers)
    assert [c.get_label() for c in measured] == ["ring", "parameter server"]
    assert list(measured[0].lines[0].get_ydata()) == pytest.approx([1.0, 1 / 0.6, 2.0])
    assert list(eff.containers[1].lines[0].get_ydata()) == pytest.approx([1.0, 1.25 / 2, 1 / 0.9 / 3])
    server = [line for line in comm.lines if line.get_label() == "parameter server · parameter server · exposed"][0]
    assert list(server.get_xdata()) == [2, 3] and list(server.get_ydata()) == pytest.approx([2.0, 2.0])  # ms
    worker = [line for line in comm.lines if line.get_label() == "ring · worker · total"][0]
    assert list(worker.get_xdata()) == [1, 2, 3]  # the single process is the worker line's first point
    assert "emulated link: 1GbE" in fig.get_suptitle() and "3 runs per point (interleaved)" in fig.get_suptitle()
    assert "(formula)" not in " ".join(_legend(traffic))

    fewer = plots.experiment_plot(*_hand_made({"ring": {1: 1.0, 2: 0.6}}))
    assert [c.get_label() for c in fewer.axes[0].containers] == ["ring"] and "emulated" not in fewer.get_suptitle()
    assert list(fewer.axes[0].lines[0].get_xdata()) == [1, 2]


def test_experiment_plot_warns_about_noise_and_refuses_frames_without_modes() -> None:
    frame, per_role = _hand_made({"ring": {1: 1.0, 2: 0.6}, "ps": {1: 1.0, 2: 0.7}})
    frame.loc[frame.world_size == 1, ["noisy", "noise_reason"]] = [True, "spread 80% of the median"]
    text = plots.experiment_plot(frame, per_role).get_supxlabel()
    assert text.count("world size 1 (the baseline)") == 1  # said once, not once per mode
    assert text.count("not measurable now: the baseline's spread 80% of the median") == 2  # each mode's world size 2
    with pytest.raises(ValueError, match="'mode' column"):
        plots.experiment_plot(frame.drop(columns="mode"), per_role)
    with pytest.raises(ValueError, match="empty"):
        plots.experiment_plot(frame.iloc[:0], per_role)
