"""Notebook panels: a pure function per panel (configs in, (figure, frame) out) and a thin ipywidgets wrapper.

The pure functions run headless (tests, scripts) and share one cache of results keyed by
RunConfig.run_id(), so moving a slider back shows the earlier run at once. The wrapper, `Panel`,
only reads its controls, calls the function when Run is pressed (runs take seconds, so nothing
starts by itself), drives a progress bar, and shows the figure and the table. ipywidgets is
imported here only: dpkit itself never needs it.
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ipywidgets as W
import pandas as pd
from IPython.display import clear_output, display
from matplotlib.figure import Figure
from traitlets import observe

from ..analysis import memory_compare
from ..analysis.predict import measure_compute
from ..api import run
from ..comm.link import LINK_CHOICES, describe
from ..config import ALLREDUCE_ALGOS, RunConfig
from ..cost.model import PRESETS, HostModel, Link
from ..lessons import WORKLOADS
from ..link_check import LinkNotHonourable, check_link
from ..measure import measured_run, repeat_name, run_row, summarize_repeats
from ..results import RunResult, bytes_source, role_kind
from ..runtime.cores import ONE_CORE, default_threads
from ..runtime.launch import RankFailedError, RunTimeoutError
from ..runtime.queue import reporting, turns_taken
from ..strategies.registry import spec_for
from ..verdict import experiment_verdict, scaling_verdict
from . import memory_plots, plots
from . import ps_tables as ps
from .ringtrace import trace_ring
from .run_notes import ran_on_all

Progress = Callable[[int, int, str], None]
PanelResult = tuple[Figure, pd.DataFrame]


# ---- the cache ---------------------------------------------------------------------------
class RunCache:
    """RunResults by RunConfig.run_id(), repeats by '<run_id>-r<k>' (sweep's folder names); `launched` counts the
    runs that really started. Each run's machine load is recorded as sweep() records it (measure.measured_run)."""

    def __init__(self, runner: Callable[[RunConfig], RunResult] = run) -> None:
        self.runner = runner
        self.results: dict[str, RunResult] = {}
        self.launched = 0

    def get(self, cfg: RunConfig, repeat: int = 0) -> RunResult:
        key = repeat_name(cfg, repeat)
        if key not in self.results:
            self.results[key] = measured_run(cfg, self.runner)
            self.launched += 1
        return self.results[key]

    def run_all(self, configs: Sequence[RunConfig], progress: Progress | None = None) -> list[RunResult]:
        """Every config, in order; `progress(done, total, what)` before each and once at the end."""
        out = []
        for i, cfg in enumerate(configs):
            if progress is not None:
                progress(i, len(configs), f"{cfg.parallelism}, world_size={cfg.world_size}")
            out.append(self.get(cfg))
        if progress is not None:
            progress(len(configs), len(configs), "done")
        return out

    def run_repeats(self, configs: Sequence[RunConfig], repeats: int, progress: Progress | None = None) -> list[list[RunResult]]:
        """Every config `repeats` times, round-robin (A, B, C, then A, B, C again) so a drift in the machine's
        load hits every config alike; per config, its repeats in order. Repeats already cached are not rerun."""
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"repeats={repeats!r} is not allowed: a whole number of runs per config, at least 1")
        out: list[list[RunResult]] = [[] for _ in configs]
        total = len(configs) * repeats
        for r in range(repeats):
            for i, cfg in enumerate(configs):
                if progress is not None:
                    which = f", repeat {r + 1}/{repeats}" if repeats > 1 else ""
                    progress(r * len(configs) + i, total, f"{cfg.parallelism}, world_size={cfg.world_size}{which}")
                out[i].append(self.get(cfg, r))
        if progress is not None:
            progress(total, total, "done")
        return out

    def __contains__(self, cfg: RunConfig) -> bool:
        return cfg.run_id() in self.results

    def __len__(self) -> int:
        return len(self.results)


CACHE = RunCache()


def frame_of(results: Iterable[RunResult | Sequence[RunResult]]) -> pd.DataFrame:
    """One row per item, as dpkit.sweep returns them (run_id first, spread and noisy columns last).

    An item is one RunResult or the repeats of one config (RunCache.run_repeats): those become one row of
    medians with their spread (measure.summarize_repeats); a single run still gets its within-run spread and load.
    """
    groups = []
    for item in results:
        runs = [item] if isinstance(item, RunResult) else list(item)
        groups.append(pd.concat([run_row(r, repeat=k) for k, r in enumerate(runs)], ignore_index=True))
    return summarize_repeats(groups)


def baseline_of(cfg: RunConfig) -> RunConfig:
    """The single-process run with the same model, data, batch and optimizer: what speedup divides by."""
    return spec_for(cfg).baseline(cfg)


# ---- pure functions: config in, (figure, frame) out ---------------------------------------
def one_run(cfg: RunConfig, cache: RunCache = CACHE, progress: Progress | None = None) -> PanelResult:
    """One run: its per-rank timeline and its summary row."""
    (result,) = cache.run_all([cfg], progress)
    return plots.timeline_plot(result), frame_of([result])


def scaling(
    base: RunConfig,
    world_sizes: Sequence[int] = (1, 2, 4),
    cache: RunCache = CACHE,
    progress: Progress | None = None,
    repeats: int = 3,
    device_model: str = ONE_CORE,
) -> PanelResult:
    """Strong scaling of `base` (same global batch): world size 1 is the single-process baseline.

    Each world size runs `repeats` times, interleaved, and speedups are ratios of medians with error bars
    from the repeats: a single run per point on a shared machine can show any speedup at all. device_model
    ALL_CORES gives every run cores // processes threads (the baseline all of them) unless base sets
    threads_per_rank; the figure's title then says the baseline's threads differ from the ranks'."""
    configs = [baseline_of(base) if n == 1 else base.replace(world_size=n) for n in world_sizes]
    if device_model != ONE_CORE and base.threads_per_rank is None:
        configs = [c.replace(threads_per_rank=default_threads(c.num_processes, device_model)) for c in configs]
    frame = plots.scaling_frame(frame_of(cache.run_repeats(configs, repeats, progress)))
    frame["per_rank_batch"] = frame.global_batch // frame.world_size
    return plots.speedup_plot(frame), frame


def compare(
    base: RunConfig,
    field: str,
    values: Sequence[Any],
    cache: RunCache = CACHE,
    progress: Progress | None = None,
    repeats: int = 1,
) -> PanelResult:
    """`base` with `field` set to each value: where each run's step time goes (medians over `repeats`)."""
    frame = frame_of(cache.run_repeats([base.replace(**{field: v}) for v in values], repeats, progress))
    return plots.time_breakdown_plot(frame, by=[field]), frame


def losses(
    configs: dict[str, RunConfig], x: str = "step", cache: RunCache = CACHE, progress: Progress | None = None
) -> PanelResult:
    """Loss curves of several runs against step, samples seen or wall-clock time."""
    results = cache.run_all(list(configs.values()), progress)
    named = dict(zip(configs, results, strict=True))
    rows = [
        {"run": k, "step": s, "loss": v, "time_s": t}
        for k, r in named.items()
        for s, v, t in zip(range(len(r.losses)), r.losses, plots.step_end_times(r).reindex(range(len(r.losses))), strict=True)
    ]
    return plots.loss_plot(named, x=x), pd.DataFrame(rows)


_RING: dict[tuple[int, int], pd.DataFrame] = {}


def ring_steps(world_size: int = 4, numel: int = 1 << 14, progress: Progress | None = None) -> PanelResult:
    """A real ring all-reduce traced step by step (see dpkit.ringtrace)."""
    key = (world_size, numel)
    if progress is not None:
        progress(0, 1, f"ring on {world_size} ranks")
    if key not in _RING:
        _RING[key] = trace_ring(world_size, numel)
    if progress is not None:
        progress(1, 1, "done")
    return plots.ring_steps_plot(_RING[key]), _RING[key]


def pipeline_bubble(
    base: RunConfig,
    microbatches: Sequence[int],
    show: int | None = None,
    cache: RunCache = CACHE,
    progress: Progress | None = None,
) -> PanelResult:
    """Pipeline runs over micro-batch counts: measured bubble fraction beside (p-1)/(m+p-1), and the
    timeline of the run with m = `show` (default: the last)."""
    configs = [base.replace(microbatches=m) for m in microbatches]
    results = cache.run_all(configs, progress)
    frame = frame_of(results)
    shown = results[list(microbatches).index(show) if show is not None and show in microbatches else -1]
    fig = plots.timeline_plot(shown, steps=[shown.config.warmup])
    return fig, frame


def compare_configs(
    configs: dict[str, RunConfig], cache: RunCache = CACHE, progress: Progress | None = None, repeats: int = 1
) -> PanelResult:
    """Differently configured runs under the names given (e.g. one per strategy), side by side (medians over `repeats`)."""
    groups = cache.run_repeats(list(configs.values()), repeats, progress)
    frame = frame_of(groups)
    frame.insert(1, "label", list(configs))
    for i, runs in enumerate(groups):  # the bars: one real run's parts (the median repeat), which add up to its step
        shown = sorted(runs, key=lambda r: r.summary["step_time_s"])[(len(runs) - 1) // 2]
        for key, value in shown.summary.items():
            if key.startswith("slowest_"):
                frame.at[frame.index[i], key] = value
    return plots.time_breakdown_plot(frame, by=["label"]), frame


def ps_traffic(
    base: RunConfig,
    workers: Sequence[int] = (2, 3, 4),
    num_servers: int = 1,
    cache: RunCache = CACHE,
    progress: Progress | None = None,
) -> PanelResult:
    """Bytes per step of a sync PS server and worker, beside a ring all-reduce rank, as workers grow."""
    ps_cfgs = [base.replace(parallelism="data", sync="ps", world_size=n, num_servers=num_servers) for n in workers]
    ring_cfgs = [
        base.replace(parallelism="data", sync="allreduce", world_size=n, grad_sync="flat", allreduce_algo="ring") for n in workers
    ]
    results = cache.run_all(ps_cfgs + ring_cfgs, progress)
    rows = []
    for n, r in zip(workers, results[: len(workers)], strict=True):
        servers = ps.server_stats(r)
        busiest = (servers.bytes_in_per_step + servers.bytes_out_per_step).max()
        stats = r.step_stats()
        worker = stats[stats["rank"].isin(r.training_ranks()) & (stats.step >= r.config.warmup)].bytes_sent.mean()
        rows += [
            {"world_size": n, "who": f"PS server (busiest of {num_servers})", "bytes_per_step": busiest},
            {"world_size": n, "who": "PS worker", "bytes_per_step": 2 * worker},
        ]
    for n, r in zip(workers, results[len(workers) :], strict=True):
        rows.append({"world_size": n, "who": "ring all-reduce rank", "bytes_per_step": 2 * r.summary["bytes_sent_per_step"]})
    frame = pd.DataFrame(rows)
    return plots.traffic_plot(frame), frame


def ps_sync_vs_async(base: RunConfig, cache: RunCache = CACHE, progress: Progress | None = None) -> PanelResult:
    """The same PS config run sync and async (base.max_staleness bounds the async run only):
    loss against wall-clock, staleness, waiting time."""
    asyn_cfg = base.replace(sync="ps-async")
    sync, asyn = cache.run_all([asyn_cfg.replace(sync="ps", max_staleness=None), asyn_cfg], progress)
    fig = plots.async_plot({"sync": ps.loss_curve(sync), "async": ps.loss_curve(asyn)}, ps.staleness_histogram(asyn))
    frame = frame_of([sync, asyn])
    waits = [ps.worker_wait(r).groupby("rank").wait_s.mean() for r in (sync, asyn)]
    frame["mean_wait_for_server_s"] = [float(w.mean()) for w in waits]
    return fig, frame


# ---- the ipywidgets wrapper --------------------------------------------------------------
class Panel(W.VBox):
    """Controls, a Run button, a progress bar, and an output area for `compute(**values, progress=...)`.

    After a run, `figure`, `frame` and `error` hold what it produced (tests read them); a bad
    value or a failed rank is shown as a message, never raised into the notebook.
    """

    def __init__(
        self,
        title: str,
        controls: dict[str, W.ValueWidget],
        compute: Callable[..., PanelResult],
        columns: Sequence[str] = (),
        verdict: Callable[[pd.DataFrame], list[str]] | None = None,
    ) -> None:
        self.controls = controls
        self.compute = compute
        self.columns = list(columns)
        self.verdict_of = verdict
        self.where = ""  # which cores its last runs had, and beside how many other runs (dpkit.viz.run_notes)
        self.verdict: list[str] = []  # the sentences under the figure after a run (dpkit.verdict)
        # "Figure 2, computed with: largest world size 3; ...": the settings the figure below was computed with
        self.shown_with = ""
        self.figure: Figure | None = None
        self.frame: pd.DataFrame | None = None
        self.error: Exception | None = None
        self.runs = 0
        self.button = W.Button(description="Run", button_style="primary", icon="play")
        self.bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="200px"))
        self.status = W.HTML()
        self._before_wait: str | None = None  # the status a wait for the machine's turn replaced
        self.output = W.Output()
        self.button.on_click(lambda _button: self.run())
        for name, control in controls.items():
            control.description = control.description or name
            if isinstance(control, W.ToggleButtons):  # whole labels, never 'strong (same glo...'
                control.style = {"description_width": "initial", "button_width": "auto"}
            else:  # a long description must not squash its slider: the control takes its cell's width
                control.style = {"description_width": "initial"}
                control.layout.width = "98%"
        for control in controls.values():
            control.observe(self._settings_changed, names="value")
        box = W.GridBox(list(controls.values()), layout=W.Layout(grid_template_columns="repeat(2, minmax(380px, max-content))"))
        super().__init__([W.HTML(f"<b>{title}</b>"), box, W.HBox([self.button, self.bar, self.status]), self.output])

    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items()}

    def settings(self) -> str:
        """The controls as the learner sees them ('largest world size 3, scaling strong (same global batch), ...').
        Shown above each figure: a control moved while a run was in flight (or just before Run, while the
        browser still holds the new value back) must not leave a figure that seems to answer the new setting."""
        parts = []
        for name, control in self.controls.items():
            if getattr(control, "disabled", False):
                continue
            if hasattr(control, "label"):  # Dropdown, ToggleButtons: the option's words; SelectMultiple: a tuple of them
                label = control.label
                shown = ", ".join(label) if isinstance(label, tuple) else ("-" if label is None else label)
            else:  # sliders
                shown = control.value
            parts.append(f"{control.description or name} {shown}")
        return "; ".join(parts)

    def set(self, **values: Any) -> Panel:
        """Set controls by name (what a learner does with the mouse); returns the panel."""
        for name, value in values.items():
            if name not in self.controls:
                raise ValueError(f"panel has no control {name!r}; it has {sorted(self.controls)}")
            self.controls[name].value = value
        return self

    STALE = "the settings changed since the figure below was computed: press Run to update it"

    def _settings_changed(self, _change: Any = None) -> None:
        """A moved control makes the figure below answer an old question: say so (during a run, run() says it)."""
        if self.runs and not self.button.disabled:
            self.status.value = self.STALE

    def _progress(self, done: int, total: int, what: str) -> None:
        self.bar.max = max(total, 1)
        self.bar.value = done
        self.status.value = f"{done}/{total} runs" + ("" if what == "done" else f": {what}")

    def _waiting(self, ahead: int) -> None:
        """While a run waits for this machine's turn (other kernels' runs first), say so; then put the status back."""
        if ahead > 0:
            if self._before_wait is None:
                self._before_wait = self.status.value
            self.status.value = f"waiting: {ahead} run{'s' if ahead != 1 else ''} ahead of you"
        elif self._before_wait is not None:
            self.status.value, self._before_wait = self._before_wait, None

    def run(self) -> None:
        """What the Run button does: compute, then show the figure and the table (or the error)."""
        self.button.disabled = True
        self.error = None
        self._before_wait = None
        values, settings = self.values(), self.settings()  # read once: the figure says what it was computed with
        self.status.value = "running"  # compute's progress() replaces it
        try:
            with reporting(self._waiting), turns_taken() as turns:  # the runs' queue places and cores, reported here
                fig, frame = self.compute(**values, progress=self._progress)
        except (ValueError, NotImplementedError, RankFailedError, RunTimeoutError) as exc:
            self.error = exc
            self.status.value = f"<span style='color:#b00'>{type(exc).__name__}: {html.escape(str(exc))}</span>"
            return
        except Exception as exc:  # a bug of the kit's: say so in the panel, never fail silently in a widget callback
            self.error = exc
            where = traceback.format_exc(limit=-3).strip().splitlines()
            self.status.value = (
                f"<span style='color:#b00'>Error in the panel: {type(exc).__name__}: {html.escape(str(exc))}"
                f"<br><small>{'<br>'.join(html.escape(line) for line in where[-6:])}</small></span>"
            )
            return
        finally:
            self.button.disabled = False
        self.figure, self.frame = fig, frame
        self.verdict = self.verdict_of(frame) if self.verdict_of is not None else []
        self.where = ran_on_all(t.meta() for t in turns)  # "ran on cores 4-7 beside 3 other runs" ('' if all cached)
        self.runs += 1
        self.shown_with = f"Figure {self.runs}, computed with: {settings}"
        if self.values() != values:  # a control moved while the runs were in flight
            self.status.value = self.STALE
        elif self.status.value == "running":  # a compute without progress reports
            self.status.value = "done"
        with self.output:
            clear_output(wait=True)
            display(W.HTML(f"<small class='dpkit-shown-with'>{html.escape(self.shown_with)}</small>"))
            display(fig)
            if self.verdict:
                items = "".join(f"<li>{html.escape(line)}</li>" for line in self.verdict)
                display(W.HTML(f"<b>Verdict (from these runs)</b><ul style='margin-top:2px'>{items}</ul>"))
            if self.where:
                display(W.HTML(f"<small>{html.escape(self.where)}</small>"))
            cols = [c for c in self.columns if c in frame.columns]
            display(frame[cols] if cols else frame)


# ---- panels the notebooks show ---------------------------------------------------------
class _Dropdown(W.Dropdown):
    """A Dropdown where None may be an option's value, e.g. ("unbounded", None). ipywidgets reads value None as
    "nothing selected" and shows an empty box (issue 16), also right after the learner picked that option;
    here None selects the option whose value is None."""

    @observe("value")
    def _propagate_value(self, change: dict) -> None:
        if change["new"] is None and None in self._options_values:
            self.index = self._options_values.index(None)
        else:
            super()._propagate_value(change)


def _dropdown(options: Sequence, value: Any, description: str) -> W.Dropdown:
    """A dropdown over values or (label, value) pairs."""
    return _Dropdown(options=list(options), value=value, description=description)


def _powers_up_to(n: int) -> list[int]:
    return [1] + [k for k in (2, 3, 4, 6, 8) if k <= n]


SUMMARY_COLUMNS = [
    "world_size",
    "global_batch",
    "step_time_s",
    "compute_s",
    "comm_s",
    "exposed_comm_s",
    "idle_s",
    "bytes_sent_per_step",
    "final_loss",
    "step_time_run_iqr_s",
    "noisy",
    "noise_reason",
]
SCALING_COLUMNS = [  # compact: the spread's bounds are the figure's bars; the reason for a blank is `withheld`
    "world_size",
    "per_rank_batch",
    "step_time_s",
    "step_time_iqr_s",
    "cpu_s",
    "waiting_for_core_s",
    "exposed_comm_s",
    "speedup",
    "efficiency",
    "withheld",
]


def run_panel(base: RunConfig, cache: RunCache = CACHE) -> Panel:
    """One data-parallel run: world size and batch, then the timeline."""
    controls = {
        "world_size": W.IntSlider(value=base.world_size, min=1, max=4, description="world size"),
        "global_batch": _dropdown([24, 48, 96, 192], base.global_batch, "global batch"),
    }

    def compute(world_size: int, global_batch: int, progress: Progress | None = None) -> PanelResult:
        cfg = base.replace(global_batch=global_batch, world_size=world_size)
        return one_run(baseline_of(cfg) if world_size == 1 else cfg, cache, progress)

    return Panel("One run: per-rank timeline", controls, compute, SUMMARY_COLUMNS)


def _workload_dropdown(value: str = "compute") -> W.Dropdown:
    """The lesson workloads offered in words (dpkit.lessons), not as parameter counts."""
    return _dropdown([(w.words, k) for k, w in WORKLOADS.items()], value, "workload")


def lesson_config(base: RunConfig, workload: str) -> RunConfig:
    """`base` with the model, batch and link of a lesson workload (dpkit.lessons.WORKLOADS)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload={workload!r} is not allowed: choose one of {', '.join(map(repr, WORKLOADS))}")
    w = WORKLOADS[workload].config
    return base.replace(
        model=w.model, hidden=w.model_hidden, layers=w.model_layers, global_batch=w.global_batch,
        link=w.link, link_latency_s=None, link_bandwidth_Bps=None,
    )  # fmt: skip


def check_link_before_running(cfg: RunConfig) -> None:
    """Refuse, before any run, an emulated link this machine cannot honour for cfg's messages, offering one it can."""
    verdict = check_link(cfg)
    if verdict is not None and not verdict.honoured:
        raise LinkNotHonourable(verdict.text())


def scaling_panel(base: RunConfig, cache: RunCache = CACHE) -> Panel:
    """Speedup and efficiency against world size for a lesson workload (in words), with grad sync as a knob;
    one rank = one core, the baseline too (dpkit.runtime.cores), and a verdict in words under the figure."""
    controls = {
        "max_world_size": W.IntSlider(value=2, min=2, max=4, description="largest world size"),
        "grad_sync": _dropdown(["per-tensor", "flat", "bucketed", "ddp"], base.grad_sync, "grad sync"),
        "repeats": W.IntSlider(value=2, min=1, max=5, description="runs per world size (interleaved)"),
        "workload": _workload_dropdown(),
    }

    def compute(
        workload: str, max_world_size: int, grad_sync: str, repeats: int = 2, progress: Progress | None = None
    ) -> PanelResult:
        cfg = lesson_config(base, workload).replace(grad_sync=grad_sync)
        check_link_before_running(cfg.replace(world_size=max_world_size))
        return scaling(cfg, list(range(1, max_world_size + 1)), cache, progress, repeats=repeats)

    return Panel("Scaling: speedup and efficiency", controls, compute, SCALING_COLUMNS, verdict=scaling_verdict)


def compare_panel(
    base: RunConfig,
    field: str,
    choices: Sequence[Any],
    title: str,
    world_sizes: Sequence[int] = (2, 3, 4),
    cache: RunCache = CACHE,
) -> Panel:
    """Every value of `field` side by side (the ladder, the all-reduce algorithms, ...), at a world size."""
    controls = {
        "world_size": _dropdown(world_sizes, base.world_size if base.world_size in world_sizes else world_sizes[0], "world size"),
        "hidden": _dropdown([32, 128, 512], base.model_hidden, "model width (hidden)"),
    }

    def compute(world_size: int, hidden: int, progress: Progress | None = None) -> PanelResult:
        return compare(base.replace(world_size=world_size, hidden=hidden), field, choices, cache, progress)

    return Panel(
        title, controls, compute, [field, "step_time_s", "compute_s", "comm_s", "exposed_comm_s", "idle_s", "bytes_sent_per_step"]
    )


def ring_panel() -> Panel:
    """The ring all-reduce, step by step, on 2 to 6 ranks."""
    controls = {"world_size": W.IntSlider(value=4, min=2, max=6, description="ranks in the ring")}

    def compute(world_size: int, progress: Progress | None = None) -> PanelResult:
        return ring_steps(world_size, 1 << 14, progress=progress)

    return Panel(
        "Ring all-reduce, step by step", controls, compute, ["rank", "step", "phase", "sent_chunk", "recv_chunk", "bytes"]
    )


def pipeline_panel(base: RunConfig, cache: RunCache = CACHE) -> Panel:
    """Micro-batches against the bubble: the timeline of one step, and measured beside formula.

    The work per stage is a knob too (model width and global batch): with little work per micro-batch,
    fixed costs per message and per call hide the bubble the formula describes. Every batch offered splits
    into every micro-batch count offered (1, 2, 3, 4, 6, 8)."""
    widths = sorted({base.model_hidden, 128, 512})
    batches = sorted({base.global_batch, 48, 384})
    controls = {
        "world_size": W.IntSlider(value=base.world_size, min=2, max=4, description="stages p"),
        "microbatches": _dropdown([1, 2, 3, 4, 6, 8], base.microbatches, "micro-batches m"),
        "schedule": _dropdown(["naive", "gpipe", "1f1b"], base.schedule, "schedule"),
        "hidden": _dropdown(widths, base.model_hidden, "work per stage: model width"),
        "global_batch": _dropdown(batches, base.global_batch, "work per stage: global batch"),
    }

    def compute(
        world_size: int, microbatches: int, schedule: str, hidden: int, global_batch: int, progress: Progress | None = None
    ) -> PanelResult:
        cfg = base.replace(world_size=world_size, schedule=schedule, hidden=hidden, global_batch=global_batch)
        return pipeline_bubble(cfg, [microbatches], microbatches, cache, progress)

    return Panel(
        "Pipeline: micro-batches against the bubble",
        controls,
        compute,
        ["schedule", "world_size", "microbatches", "step_time_s", "bubble_fraction", "bubble_fraction_formula"],
    )


def ps_panel(base: RunConfig, cache: RunCache = CACHE) -> Panel:
    """Sync against async parameter server with workers, servers, a straggler and a staleness bound."""
    controls = {
        "world_size": W.IntSlider(value=base.world_size, min=2, max=4, description="workers"),
        "num_servers": W.IntSlider(value=base.num_servers, min=1, max=2, description="servers"),
        "straggler_delay_s": W.FloatSlider(
            value=base.straggler_delay_s, min=0.0, max=0.05, step=0.01, description="worker 0 delay (s)"
        ),
        "max_staleness": _dropdown([("unbounded", None), ("0", 0), ("1", 1), ("2", 2)], base.max_staleness, "staleness bound"),
    }

    def compute(
        world_size: int, num_servers: int, straggler_delay_s: float, max_staleness: int | None, progress: Progress | None = None
    ) -> PanelResult:
        cfg = base.replace(
            world_size=world_size,
            num_servers=num_servers,
            straggler_delay_s=straggler_delay_s,
            straggler_ranks=(0,) if straggler_delay_s else (),
        )
        return ps_sync_vs_async(cfg.replace(sync="ps-async", max_staleness=max_staleness), cache, progress)

    return Panel(
        "Parameter server: sync against async",
        controls,
        compute,
        ["sync", "world_size", "num_servers", "step_time_s", "mean_wait_for_server_s", "final_loss"],
    )


def strategy_panel(configs: Callable[[int, int], dict[str, RunConfig]], cache: RunCache = CACHE) -> Panel:
    """Every strategy on one workload; `configs(world_size, hidden)` names the runs to compare."""
    controls = {
        "world_size": _dropdown([2, 4], 4, "ranks"),
        "hidden": _dropdown([32, 128, 512], 128, "model width (hidden)"),
    }

    def compute(world_size: int, hidden: int, progress: Progress | None = None) -> PanelResult:
        return compare_configs(configs(world_size, hidden), cache, progress)

    return Panel(
        "Compare strategies on one workload",
        controls,
        compute,
        ["label", "num_processes", "step_time_s", "compute_s", "comm_s", "bubble_s", "bytes_sent_per_step", "final_loss"],
    )


# ---- will it fit? ---------------------------------------------------------------------------
MEMORY_COLUMNS = [
    "label", "predicted_peak_bytes", "measured_peak_bytes", "budget_bytes", "fits",
    "predicted_wire_bytes_per_step", "predicted_step_time_s",
]  # fmt: skip


def memory_fit(
    base: RunConfig,
    world_size: int,
    strategy: str,
    budget_bytes: float,
    link: Link | HostModel = PRESETS["10GbE"],
    cache: RunCache = CACHE,
    progress: Progress | None = None,
) -> PanelResult:
    """Every strategy of memory_compare.strategy_configs at `world_size`: predicted bytes of its busiest rank
    against a device of `budget_bytes`, predicted bytes on the wire and step time on `link`; `strategy` is
    also run, so its measured bytes stand beside the prediction."""
    configs = memory_compare.strategy_configs(base, world_size)
    if strategy not in configs:
        raise ValueError(f"strategy {strategy!r} is not allowed at world_size={world_size}: choose one of {sorted(configs)}")
    (result,) = cache.run_all([configs[strategy]], progress)
    profile = measure_compute(base, base.global_batch, 1, steps=4)  # one single-process run, scaled per strategy
    costs = memory_compare.costs(configs, budget_bytes, link, profile)
    measured = result.memory_frame()
    costs["measured_peak_bytes"] = [
        float(measured.loc[measured["rank"] == memory_compare.busiest_rank(memory_compare.predicted_frame(cfg), cfg), "mem_peak_bytes"].iloc[0])
        if label == strategy else float("nan")
        for label, cfg in configs.items()
    ]  # fmt: skip
    breakdown = memory_compare.breakdown(configs, {strategy: result})
    name = link.name if isinstance(link, Link) else "this machine"
    return memory_plots.memory_fit_plot(breakdown, costs, budget_bytes, name), costs


def memory_panel(base: RunConfig, cache: RunCache = CACHE, link: Link | HostModel = PRESETS["10GbE"]) -> Panel:
    """Will it fit? Model size, world size, the strategy to run, and a device's memory: which strategies
    fit, and what each costs on the wire and in step time (predicted), the chosen one measured too."""
    widths = (64, 128, 256)
    sizes = [(f"{memory_compare.parameters(base.replace(hidden=h)) / 1e6:.2g}M parameters (hidden {h})", h) for h in widths]
    names = list(memory_compare.strategy_configs(base, 4))
    hidden = base.model_hidden if base.model_hidden in widths else 128
    controls = {
        "hidden": W.Dropdown(options=sizes, value=hidden, description="model size"),
        "world_size": _dropdown([2, 4], 4, "ranks (devices)"),
        "strategy": _dropdown(names, names[0], "run and measure"),
        "budget_mb": _dropdown([1, 2, 4, 8, 16, 32, 64], 8, "memory per device (MB)"),
    }

    def compute(hidden: int, world_size: int, strategy: str, budget_mb: float, progress: Progress | None = None) -> PanelResult:
        return memory_fit(base.replace(hidden=hidden), world_size, strategy, budget_mb * 1e6, link, cache, progress)

    return Panel("Will it fit? Memory per device, bytes on the wire, step time", controls, compute, MEMORY_COLUMNS)


# ---- the experiment: world size x sync mode, speedup and where the time goes ----------------
SYNC_MODES = {"allreduce": "all-reduce", "ps": "parameter server", "ps-async": "async parameter server"}
SCALINGS = ("strong", "weak")
#: links a dropdown can offer: "custom" needs numbers a dropdown has no room for
EXPERIMENT_LINKS: tuple[str, ...] = tuple(c for c in LINK_CHOICES if c != "custom")
EXPERIMENT_STEPS = 4  # the panel's runs: 1 + modes x (N-1) configs x repeats of them must finish in a minute or two on 2 cores
EXPERIMENT_HIDDEN = (32, 64, 128, 256, 512)
EXPERIMENT_BATCHES = (12, 24, 48, 96, 192, 384, 960)  # split over 1..4 ranks (strong); per-rank batches (weak)
EXPERIMENT_COLUMNS = [  # compact: the figure has the spreads and the per-role comm; `withheld` says why a blank
    "mode", "world_size", "processes", "step_time_s", "step_time_iqr_s", "waiting_for_core_s", "speedup", "efficiency",
    "worker_exposed_comm_s", "server_exposed_comm_s", "worker_bytes_per_step", "server_bytes_per_step", "withheld",
]  # fmt: skip
ROLE_COLUMNS = ["role", "processes", "comm_s", "exposed_comm_s", "comm_iqr_s", "bytes_sent_per_step", "bytes_source", "repeats"]
ROLE_SLUGS = {"parameter server": "server"}  # the wide columns' prefix per role kind; training roles are "worker"


def mode_label(cfg: RunConfig) -> str:
    """'all-reduce (ring)', 'parameter server (1 server)': the sync mode with the knob that shapes its traffic."""
    servers = spec_for(cfg).num_processes(cfg) - cfg.world_size  # processes the strategy adds: parameter servers
    if not servers:
        return f"{SYNC_MODES[cfg.sync]} ({cfg.allreduce_algo})"
    return f"{SYNC_MODES[cfg.sync]} ({servers} server{'s' if servers != 1 else ''})"


def processes_label(cfg: RunConfig) -> str:
    """What the launcher starts, in words: a PS's world_size counts its workers and the servers come on top."""
    total = spec_for(cfg).num_processes(cfg)
    if total == 1:
        return "1 (single process)"
    n, k = cfg.world_size, total - cfg.world_size
    if k:
        return f"{total} ({n} worker{'s' if n != 1 else ''} + {k} server{'s' if k != 1 else ''})"
    return str(total)


def mode_config(base: RunConfig, sync: str, world_size: int) -> RunConfig:
    """`base` as a data-parallel run with `sync` on `world_size` training ranks (1: the single-process baseline).

    Knobs the mode ignores are put back to their defaults (the all-reduce algorithm for a PS, the servers for
    all-reduce), so changing them does not rerun configs they cannot affect."""
    if sync not in SYNC_MODES:
        raise ValueError(f"sync mode {sync!r} is not allowed: choose from {', '.join(map(repr, SYNC_MODES))}")
    if sync == "allreduce":
        cfg = base.replace(parallelism="data", sync=sync, world_size=world_size, num_servers=1, max_staleness=None)
    else:
        staleness = base.max_staleness if sync == "ps-async" else None
        cfg = base.replace(
            parallelism="data", sync=sync, world_size=world_size, allreduce_algo="native", zero_stage=0, max_staleness=staleness
        )
    return baseline_of(cfg) if world_size == 1 else cfg


def _spread(values: pd.Series) -> float:
    """IQR over repeats from 3 on, max - min below (as measure.summarize_repeats gives step_time_iqr_s)."""
    values = values.astype(float)
    if len(values) >= 3:
        return float(values.quantile(0.75) - values.quantile(0.25))
    return float(values.max() - values.min())


def role_comm(runs: Sequence[RunResult]) -> pd.DataFrame:
    """Per role kind (worker, parameter server, single process) of one config: comm and exposed comm per step
    (per step the mean over that role's processes, then the median over timed steps, as summarize() takes
    comm_s), bytes sent per step per process (mean, as bytes_sent_per_step_by_role) and whether they were
    counted or priced by formula; medians over the repeats, with the comm time's spread over them.

    A parameter server's comm time is its own: the mean over training ranks that summaries report hides it."""
    rows = []
    for r in runs:
        cfg = r.config
        kinds = [role_kind(role) for role in spec_for(cfg).roles(cfg)]
        stats = r.step_stats()
        timed = stats[stats.step >= cfg.warmup].copy()
        timed["role_kind"] = [kinds[int(k)] if int(k) < len(kinds) else f"rank {k}" for k in timed["rank"]]
        for kind, g in timed.groupby("role_kind", sort=False):
            per_step = g.groupby("step")[["comm_s", "exposed_comm_s"]].mean().median()
            ranks = sorted(int(k) for k in pd.unique(g["rank"]))
            tl = r.timeline
            rows.append(
                {
                    "role": kind,
                    "processes": len(ranks),
                    "comm_s": float(per_step.comm_s),
                    "exposed_comm_s": float(per_step.exposed_comm_s),
                    "bytes_sent_per_step": float(g.groupby("rank").bytes_sent.mean().mean()),
                    "bytes_source": bytes_source(tl[tl["rank"].isin(ranks)] if len(tl) else tl),
                }
            )
    if not rows:
        return pd.DataFrame(columns=ROLE_COLUMNS)
    per_run = pd.DataFrame(rows)
    out = []
    for kind, g in per_run.groupby("role", sort=False):
        sources = set(g.bytes_source)
        out.append(
            {
                "role": kind,
                "processes": int(g.processes.iloc[0]),
                "comm_s": float(g.comm_s.median()),
                "exposed_comm_s": float(g.exposed_comm_s.median()),
                "comm_iqr_s": _spread(g.comm_s),
                "bytes_sent_per_step": float(g.bytes_sent_per_step.median()),
                "bytes_source": sources.pop() if len(sources) == 1 else "mixed",
                "repeats": len(g),
            }
        )
    return pd.DataFrame(out)


def _check_experiment(world_sizes: Sequence[int], sync_modes: Sequence[str], scaling: str) -> list[int]:
    if scaling not in SCALINGS:
        raise ValueError(
            f"scaling={scaling!r} is not allowed: choose 'strong' (same global batch) or 'weak' (same per-rank batch)"
        )
    if not sync_modes:
        raise ValueError("sync_modes is empty: choose at least one of " + ", ".join(SYNC_MODES.values()))
    for mode in sync_modes:
        if mode not in SYNC_MODES:
            raise ValueError(f"sync mode {mode!r} is not allowed: choose from {', '.join(map(repr, SYNC_MODES))}")
    sizes = sorted({int(n) for n in world_sizes})
    if not sizes or sizes[0] != 1:
        raise ValueError(
            f"world_sizes={list(world_sizes)!r} must include 1: the single-process baseline every speedup divides by"
        )
    return sizes


def experiment_frames(
    base: RunConfig,
    world_sizes: Sequence[int] = (1, 2, 3),
    sync_modes: Sequence[str] = ("allreduce", "ps"),
    scaling: str = "strong",
    repeats: int = 3,
    cache: RunCache = CACHE,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs behind `experiment`, as (frame, per_role): frame has one row per (mode, world size) with
    medians over the repeats, their spread, speedup/efficiency and the per-role comm as worker_*/server_*
    columns; per_role has one row per (mode, world size, role kind) (role_comm).

    Strong scaling keeps base.global_batch at every world size; weak scaling takes it as the per-rank batch,
    so world size N runs N times it. World size 1 is the single-process baseline, one run shared by every
    mode. Every config runs `repeats` times, round-robin (RunCache.run_repeats), so a drift in the machine's
    load hits all points alike."""
    sizes = _check_experiment(world_sizes, sync_modes, scaling)
    modes = list(dict.fromkeys(sync_modes))
    grid: list[tuple[str, int, RunConfig]] = []
    for mode in modes:
        for n in sizes:
            batch = base.global_batch * n if scaling == "weak" else base.global_batch
            cfg = mode_config(base.replace(global_batch=batch), mode, n)
            grid.append((mode_label(mode_config(base, mode, 2)), n, cfg))
    unique = list({cfg.run_id(): cfg for _, _, cfg in grid}.values())
    runs = dict(zip([c.run_id() for c in unique], cache.run_repeats(unique, repeats, progress), strict=True))
    frame = frame_of([runs[cfg.run_id()] for _, _, cfg in grid])
    frame.insert(1, "mode", [label for label, _, _ in grid])
    frame.insert(2, "scaling", scaling)
    frame["processes"] = [processes_label(cfg) for _, _, cfg in grid]
    frame["per_rank_batch"] = frame.global_batch // frame.world_size
    frame["link_description"] = [describe(cfg) for _, _, cfg in grid]  # the baseline has none: one process sends nothing
    frame["link_not_honoured"] = [sum(bool(r.meta.get("link_not_honoured")) for r in runs[cfg.run_id()]) for _, _, cfg in grid]
    parts = []
    for label, n, cfg in grid:
        roles = role_comm(runs[cfg.run_id()])
        roles.insert(0, "mode", label)
        roles.insert(1, "world_size", n)
        parts.append(roles)
    per_role = pd.concat(parts, ignore_index=True)
    for i, (label, n, _) in enumerate(grid):
        for _, row in per_role[(per_role["mode"] == label) & (per_role.world_size == n)].iterrows():
            slug = ROLE_SLUGS.get(row.role, "worker")
            for col, value in (
                ("comm_s", row.comm_s),
                ("exposed_comm_s", row.exposed_comm_s),
                ("bytes_per_step", row.bytes_sent_per_step),
            ):
                frame.loc[frame.index[i], f"{slug}_{col}"] = value
    return plots.scaling_frame(frame, hue="mode"), per_role


def experiment(
    base: RunConfig,
    world_sizes: Sequence[int] = (1, 2, 3),
    sync_modes: Sequence[str] = ("allreduce", "ps"),
    scaling: str = "strong",
    repeats: int = 3,
    cache: RunCache = CACHE,
    progress: Progress | None = None,
) -> PanelResult:
    """Speedup and communication per sync mode against world size (the kit's promised experiment): the
    speedup says how well a mode scales, the comm rows say why; see experiment_frames for the runs and
    plots.experiment_plot for the figure. The frame is experiment_frames' first."""
    frame, per_role = experiment_frames(base, world_sizes, sync_modes, scaling, repeats, cache, progress)
    return plots.experiment_plot(frame, per_role), frame


def _batch_note(batch: int, scaling: str, max_world_size: int) -> str:
    """The batch the control does not set, at every world size: the per-rank batch (strong) or the global one (weak)."""
    sizes = range(1, max_world_size + 1)
    if scaling == "weak":
        return f"weak scaling: per-rank batch {batch}; global batch at world size 1..{max_world_size}: " + ", ".join(
            str(batch * n) for n in sizes
        )
    per = ", ".join(str(batch // n) if batch % n == 0 else f"{batch / n:g} (does not split)" for n in sizes)
    return f"strong scaling: global batch {batch}; per-rank batch at world size 1..{max_world_size}: {per}"


def experiment_panel(base: RunConfig, cache: RunCache = CACHE) -> Panel:
    """World size, batch and sync mode against speedup and communication time (see `experiment`).

    Runs at most EXPERIMENT_STEPS steps each and offers small models first: a press of Run is
    1 + modes x (N - 1) configs, each `repeats` times, on a laptop's few cores."""
    steps = min(base.steps, EXPERIMENT_STEPS)
    quick = base.replace(steps=steps, warmup=min(base.warmup, steps - 1))
    modes = [(label, key) for key, label in SYNC_MODES.items()]
    chosen = tuple(dict.fromkeys(["allreduce", "ps", base.sync]))  # the base's own mode is always offered pre-selected
    sizes = [
        (f"{memory_compare.parameters(quick.replace(hidden=h)) / 1e3:.3g}k parameters (hidden {h})", h) for h in EXPERIMENT_HIDDEN
    ]
    small = base.model_hidden if base.model_hidden in EXPERIMENT_HIDDEN[:2] else EXPERIMENT_HIDDEN[0]
    controls: dict[str, W.ValueWidget] = {
        "max_world_size": W.IntSlider(value=2, min=2, max=4, description="largest world size"),
        "scaling": W.ToggleButtons(
            options=[("strong (same global batch)", "strong"), ("weak (same per-rank batch)", "weak")], description="scaling"
        ),
        "batch": _dropdown(
            EXPERIMENT_BATCHES, base.global_batch if base.global_batch in EXPERIMENT_BATCHES else 24, "global batch"
        ),
        "sync_modes": W.SelectMultiple(options=modes, value=chosen, rows=3, description="sync modes"),
        "allreduce_algo": _dropdown(ALLREDUCE_ALGOS, base.allreduce_algo, "all-reduce algorithm"),
        "num_servers": W.IntSlider(value=base.num_servers, min=1, max=2, description="parameter servers"),
        "hidden": W.Dropdown(options=sizes, value=small, description="model size"),
        "link": _dropdown(EXPERIMENT_LINKS, base.link if base.link in EXPERIMENT_LINKS else "none", "emulated link"),
        "repeats": W.IntSlider(value=2, min=1, max=5, description="runs per point (interleaved)"),
        "workload": _dropdown(
            [("as set by the controls", "custom")] + [(w.words, k) for k, w in WORKLOADS.items()], "custom", "workload"
        ),
    }
    if len(EXPERIMENT_LINKS) < 2:  # no emulated links to offer
        del controls["link"]

    def compute(
        max_world_size: int,
        scaling: str,
        batch: int,
        sync_modes: Sequence[str],
        allreduce_algo: str,
        num_servers: int,
        hidden: int,
        repeats: int,
        link: str = "none",
        workload: str = "custom",
        progress: Progress | None = None,
    ) -> PanelResult:
        cfg = quick.replace(global_batch=batch, hidden=hidden, allreduce_algo=allreduce_algo, num_servers=num_servers)
        if link != cfg.link:
            cfg = cfg.replace(link=link, link_latency_s=None, link_bandwidth_Bps=None)
        for mode in sync_modes:  # before any run: a link this machine cannot honour is refused, with one it can
            check_link_before_running(mode_config(cfg, mode, max_world_size))
        return experiment(cfg, range(1, max_world_size + 1), list(sync_modes), scaling, repeats, cache, progress)

    panel = Panel(
        "Experiment: world size, batch and sync mode against speedup and communication",
        controls,
        compute,
        EXPERIMENT_COLUMNS,
        verdict=experiment_verdict,
    )
    note = W.HTML()
    panel.batch_note = note  # type: ignore[attr-defined]

    def update(_change: Any = None) -> None:
        c = panel.controls
        c["batch"].description = "per-rank batch" if c["scaling"].value == "weak" else "global batch"
        note.value = _batch_note(c["batch"].value, c["scaling"].value, c["max_world_size"].value)
        chosen_modes = set(c["sync_modes"].value)
        c["allreduce_algo"].disabled = "allreduce" not in chosen_modes
        c["num_servers"].disabled = not chosen_modes & {"ps", "ps-async"}

    def choose_workload(change: Any) -> None:
        """A lesson workload in words sets the model size, batch and link controls (dpkit.lessons)."""
        if change["new"] in WORKLOADS:
            w = WORKLOADS[change["new"]].config
            c = panel.controls
            c["hidden"].value, c["batch"].value = w.model_hidden, w.global_batch
            if "link" in c:
                c["link"].value = w.link

    controls["workload"].observe(choose_workload, names="value")
    for name in ("batch", "scaling", "max_world_size", "sync_modes"):
        controls[name].observe(update, names="value")
    update()
    grid = next(child for child in panel.children if isinstance(child, W.GridBox))
    grid.children = (*grid.children, note)
    return panel
