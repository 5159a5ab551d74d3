"""dpkit.viz.widgets: the panels' pure functions run headless on real ranks, the cache skips runs it has,
and a Panel driven like a learner would (set values, press Run) shows new results or a clear error."""

from __future__ import annotations

import pytest
from conftest import SMALL
from matplotlib.figure import Figure

from dpkit import RunConfig, run
from dpkit.viz import widgets as w

BASE = SMALL.replace(parallelism="data", world_size=2)


class CountingRunner:
    """The real dpkit.run, counted: how many runs the cache let through."""

    def __init__(self) -> None:
        self.configs: list[RunConfig] = []

    def __call__(self, cfg: RunConfig):
        self.configs.append(cfg)
        return run(cfg)


@pytest.fixture
def cache() -> w.RunCache:
    return w.RunCache(CountingRunner())


def test_cache_runs_each_config_once_and_reports_progress(cache: w.RunCache) -> None:
    seen = []
    cfgs = [BASE, BASE.replace(world_size=3), BASE]
    results = cache.run_all(cfgs, progress=lambda done, total, what: seen.append((done, total)))
    assert results[0] is results[2] and cache.launched == 2 and len(cache.runner.configs) == 2
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert BASE in cache and BASE.replace(seed=1) not in cache


def test_scaling_uses_the_single_process_baseline_and_adds_speedup(cache: w.RunCache) -> None:
    fig, frame = w.scaling(BASE, [1, 2, 3], cache=cache)
    assert isinstance(fig, Figure)
    assert frame.parallelism.tolist() == ["none", "data", "data"]
    assert frame.per_rank_batch.tolist() == [24, 12, 8]
    assert frame.speedup_measured.iloc[0] == pytest.approx(1.0)  # as measured; `speedup` is NaN where withheld
    assert frame.speedup_measured.iloc[1] == pytest.approx(frame.step_time_s.iloc[0] / frame.step_time_s.iloc[1])
    shown = frame.withheld == ""
    assert frame.speedup[shown].tolist() == pytest.approx(frame.speedup_measured[shown].tolist())
    assert frame.speedup[~shown].isna().all() and frame.withheld[~shown].str.startswith("not measurable now: ").all()


def test_compare_gives_one_row_per_value(cache: w.RunCache) -> None:
    fig, frame = w.compare(BASE, "grad_sync", ["per-tensor", "flat"], cache=cache)
    assert frame.grad_sync.tolist() == ["per-tensor", "flat"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["gradient sync per-tensor", "gradient sync flat"]  # in words
    labelled = w.compare_configs({"a": BASE.replace(grad_sync="per-tensor"), "b": BASE.replace(grad_sync="flat")}, cache=cache)[1]
    assert labelled.label.tolist() == ["a", "b"] and cache.launched == 2  # both already in the cache


def test_one_run_and_losses(cache: w.RunCache) -> None:
    fig, frame = w.one_run(BASE, cache=cache)
    assert len(frame) == 1 and frame.run_id[0] == BASE.run_id()
    _, curves = w.losses({"dp": BASE, "single": w.baseline_of(BASE)}, cache=cache)
    assert set(curves.run) == {"dp", "single"} and len(curves) == 2 * BASE.steps


def test_pipeline_bubble_reports_measured_beside_formula(cache: w.RunCache) -> None:
    pipe = BASE.replace(parallelism="pipeline", schedule="gpipe", microbatches=2)
    fig, frame = w.pipeline_bubble(pipe, [2, 4], cache=cache)
    assert frame.microbatches.tolist() == [2, 4]
    assert frame.bubble_fraction_formula.tolist() == pytest.approx([1 / 3, 1 / 5])
    assert ((frame.bubble_fraction > 0) & (frame.bubble_fraction < 1)).all()


def test_panel_run_button_shows_new_results_and_reuses_the_cache(cache: w.RunCache) -> None:
    panel = w.run_panel(BASE, cache)
    panel.button.click()
    first = panel.frame
    assert panel.error is None and first.world_size.tolist() == [2]
    panel.set(world_size=3, global_batch=48).button.click()
    assert panel.frame.world_size.tolist() == [3] and panel.frame.global_batch.tolist() == [48]
    assert panel.bar.value == panel.bar.max == 1
    panel.set(world_size=2, global_batch=24).button.click()  # back to the first setting: no new run
    assert panel.frame.equals(first) and cache.launched == 2 and panel.runs == 3


def test_panel_shows_a_bad_value_as_a_message_instead_of_raising() -> None:
    panel = w.run_panel(BASE)
    panel.compute = lambda **kw: w.one_run(BASE.replace(global_batch=25))  # 25 does not split over 2 ranks
    panel.run()
    assert isinstance(panel.error, ValueError) and "global_batch" in panel.status.value
    assert panel.frame is None and not panel.button.disabled
    with pytest.raises(ValueError, match="no control 'hidden'"):
        panel.set(hidden=64)


def test_ps_panel_runs_sync_and_async_with_the_bound_on_async_only(cache: w.RunCache) -> None:
    ps = BASE.replace(sync="ps", world_size=2, steps=4)
    panel = w.ps_panel(ps, cache)
    panel.set(max_staleness=1).button.click()
    assert panel.error is None, panel.error
    assert panel.frame.sync.tolist() == ["ps", "ps-async"]
    assert panel.frame.max_staleness.tolist()[1] == 1 and panel.frame.mean_wait_for_server_s.notna().all()


def test_a_dropdown_option_whose_value_is_none_shows_its_label() -> None:
    """Issue 16: the staleness bound's "unbounded" (None) showed as an empty box, ipywidgets' "nothing selected"."""
    panel = w.ps_panel(BASE.replace(sync="ps", world_size=3))
    bound = panel.controls["max_staleness"]
    assert (bound.label, bound.value) == ("unbounded", None)
    panel.set(max_staleness=1)
    assert (bound.label, bound.value) == ("1", 1)
    bound.index = 0  # what the browser sends when the learner picks "unbounded" again
    assert (bound.index, bound.label, bound.value) == (0, "unbounded", None)
    assert panel.set(max_staleness=None).values()["max_staleness"] is None and bound.label == "unbounded"


def test_a_panel_shows_its_verdict_in_words_under_the_figure() -> None:
    import pandas as pd
    from matplotlib.figure import Figure as _Figure

    frame = pd.DataFrame({"world_size": [1, 2], "step_time_s": [1.0, 0.5]})
    panel = w.Panel("t", {}, lambda progress=None: (_Figure(), frame), ["world_size"], verdict=lambda f: [f"{len(f)} rows"])
    panel.run()
    assert panel.error is None and panel.verdict == ["2 rows"]  # shown as an HTML list between figure and table
    plain = w.Panel("t", {}, lambda progress=None: (_Figure(), frame))
    plain.run()
    assert plain.verdict == []


def test_a_panel_says_what_its_figure_was_computed_with_and_when_the_settings_moved_on() -> None:
    """Issue 23 (found in the browser): a control moved while a run is in flight, or just before Run while the browser
    still holds the new value back, must not leave a figure that seems to answer the new setting."""
    import ipywidgets as W
    import pandas as pd
    from matplotlib.figure import Figure as _Figure

    seen: list[int] = []
    controls = {
        "n": W.IntSlider(value=2, min=2, max=4, description="largest world size"),
        "mode": W.Dropdown(options=[("all-reduce", "allreduce"), ("parameter server", "ps")], description="sync"),
    }

    def compute(n: int, mode: str, progress=None):
        seen.append(n)
        if len(seen) == 2:  # the learner moves the slider while this press's runs are in flight
            controls["n"].value = 4
        return _Figure(), pd.DataFrame({"world_size": [n]})

    panel = w.Panel("t", controls, compute)
    assert panel.settings() == "largest world size 2; sync all-reduce"
    panel.run()
    assert panel.shown_with == "Figure 1, computed with: largest world size 2; sync all-reduce"
    assert panel.status.value != panel.STALE
    panel.set(n=3, mode="ps")
    assert panel.status.value == panel.STALE  # the figure below answers the old question
    panel.run()
    assert seen == [2, 3] and panel.shown_with == "Figure 2, computed with: largest world size 3; sync parameter server"
    assert panel.status.value == panel.STALE  # moved to 4 during the run: the figure shows 3, and says so
    panel.run()
    assert seen == [2, 3, 4] and panel.shown_with.startswith("Figure 3, computed with: largest world size 4;")
    assert panel.status.value != panel.STALE
