"""Notebook panels: a pure function per panel (configs in, (figure, frame) out) and a thin ipywidgets wrapper.

The pure functions run headless (tests, scripts) and share one cache of results keyed by
RunConfig.run_id(), so moving a slider back shows the earlier run at once. The wrapper, `Panel`,
only reads its controls, calls the function when Run is pressed (runs take seconds, so nothing
starts by itself), drives a progress bar, and shows the figure and the table. ipywidgets is
imported here only: dpkit itself never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ipywidgets as W
import pandas as pd
from IPython.display import clear_output, display
from matplotlib.figure import Figure

from ..api import run
from ..config import RunConfig
from ..results import RunResult
from ..runtime.launch import RankFailedError, RunTimeoutError
from ..strategies.registry import spec_for
from . import plots
from . import ps_tables as ps
from .ringtrace import trace_ring

Progress = Callable[[int, int, str], None]
PanelResult = tuple[Figure, pd.DataFrame]


# ---- the cache ---------------------------------------------------------------------------
class RunCache:
    """RunResults by RunConfig.run_id(); `launched` counts the runs that really started."""

    def __init__(self, runner: Callable[[RunConfig], RunResult] = run) -> None:
        self.runner = runner
        self.results: dict[str, RunResult] = {}
        self.launched = 0

    def get(self, cfg: RunConfig) -> RunResult:
        key = cfg.run_id()
        if key not in self.results:
            self.results[key] = self.runner(cfg)
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

    def __contains__(self, cfg: RunConfig) -> bool:
        return cfg.run_id() in self.results

    def __len__(self) -> int:
        return len(self.results)


CACHE = RunCache()


def frame_of(results: Iterable[RunResult]) -> pd.DataFrame:
    """One row per run, as dpkit.sweep returns them (with run_id first)."""
    frames = []
    for r in results:
        f = r.to_frame()
        f.insert(0, "run_id", r.config.run_id())
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def baseline_of(cfg: RunConfig) -> RunConfig:
    """The single-process run with the same model, data, batch and optimizer: what speedup divides by."""
    return spec_for(cfg).baseline(cfg)


# ---- pure functions: config in, (figure, frame) out ---------------------------------------
def one_run(cfg: RunConfig, cache: RunCache = CACHE, progress: Progress | None = None) -> PanelResult:
    """One run: its per-rank timeline and its summary row."""
    (result,) = cache.run_all([cfg], progress)
    return plots.timeline_plot(result), frame_of([result])


def scaling(
    base: RunConfig, world_sizes: Sequence[int] = (1, 2, 4), cache: RunCache = CACHE, progress: Progress | None = None
) -> PanelResult:
    """Strong scaling of `base` (same global batch): world size 1 is the single-process baseline."""
    configs = [baseline_of(base) if n == 1 else base.replace(world_size=n) for n in world_sizes]
    frame = plots.scaling_frame(frame_of(cache.run_all(configs, progress)))
    frame["per_rank_batch"] = frame.global_batch // frame.world_size
    return plots.speedup_plot(frame), frame


def compare(
    base: RunConfig, field: str, values: Sequence[Any], cache: RunCache = CACHE, progress: Progress | None = None
) -> PanelResult:
    """`base` with `field` set to each value: where each run's step time goes."""
    results = cache.run_all([base.replace(**{field: v}) for v in values], progress)
    frame = frame_of(results)
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
    shown = results[list(microbatches).index(show) if show in microbatches else -1]
    fig = plots.timeline_plot(shown, steps=[shown.config.warmup])
    return fig, frame


def compare_configs(configs: dict[str, RunConfig], cache: RunCache = CACHE, progress: Progress | None = None) -> PanelResult:
    """Differently configured runs under the names given (e.g. one per strategy), side by side."""
    frame = frame_of(cache.run_all(list(configs.values()), progress))
    frame.insert(1, "label", list(configs))
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
        self, title: str, controls: dict[str, W.ValueWidget], compute: Callable[..., PanelResult], columns: Sequence[str] = ()
    ) -> None:
        self.controls = controls
        self.compute = compute
        self.columns = list(columns)
        self.figure: Figure | None = None
        self.frame: pd.DataFrame | None = None
        self.error: Exception | None = None
        self.runs = 0
        self.button = W.Button(description="Run", button_style="primary", icon="play")
        self.bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="200px"))
        self.status = W.HTML()
        self.output = W.Output()
        self.button.on_click(lambda _button: self.run())
        for name, control in controls.items():
            control.description = control.description or name
            control.style = {"description_width": "initial"}
        box = W.GridBox(list(controls.values()), layout=W.Layout(grid_template_columns="repeat(2, 360px)"))
        super().__init__([W.HTML(f"<b>{title}</b>"), box, W.HBox([self.button, self.bar, self.status]), self.output])

    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items()}

    def set(self, **values: Any) -> Panel:
        """Set controls by name (what a learner does with the mouse); returns the panel."""
        for name, value in values.items():
            if name not in self.controls:
                raise ValueError(f"panel has no control {name!r}; it has {sorted(self.controls)}")
            self.controls[name].value = value
        return self

    def _progress(self, done: int, total: int, what: str) -> None:
        self.bar.max = max(total, 1)
        self.bar.value = done
        self.status.value = f"{done}/{total} runs" + ("" if what == "done" else f": {what}")

    def run(self) -> None:
        """What the Run button does: compute, then show the figure and the table (or the error)."""
        self.button.disabled = True
        self.error = None
        try:
            fig, frame = self.compute(**self.values(), progress=self._progress)
        except (ValueError, NotImplementedError, RankFailedError, RunTimeoutError) as exc:
            self.error = exc
            self.status.value = f"<span style='color:#b00'>{type(exc).__name__}: {exc}</span>"
            return
        finally:
            self.button.disabled = False
        self.figure, self.frame = fig, frame
        self.runs += 1
        with self.output:
            clear_output(wait=True)
            display(fig)
            cols = [c for c in self.columns if c in frame.columns]
            display(frame[cols] if cols else frame)


# ---- panels the notebooks show ---------------------------------------------------------
def _dropdown(options: Sequence, value: Any, description: str) -> W.Dropdown:
    return W.Dropdown(options=list(options), value=value, description=description)


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


def scaling_panel(base: RunConfig, cache: RunCache = CACHE) -> Panel:
    """Speedup and efficiency against world size, with batch, grad sync and model width as knobs."""
    controls = {
        "max_world_size": W.IntSlider(value=4, min=2, max=4, description="largest world size"),
        "global_batch": _dropdown([24, 48, 96, 192], base.global_batch, "global batch"),
        "grad_sync": _dropdown(["per-tensor", "flat", "bucketed", "ddp"], base.grad_sync, "grad sync"),
        "hidden": _dropdown([32, 128, 512], base.model_hidden, "model width (hidden)"),
    }

    def compute(
        max_world_size: int, global_batch: int, grad_sync: str, hidden: int, progress: Progress | None = None
    ) -> PanelResult:
        cfg = base.replace(global_batch=global_batch, grad_sync=grad_sync, hidden=hidden)
        return scaling(cfg, list(range(1, max_world_size + 1)), cache, progress)

    return Panel(
        "Scaling: speedup and efficiency",
        controls,
        compute,
        ["world_size", "per_rank_batch", "step_time_s", "speedup", "efficiency", "comm_s"],
    )


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

    base.global_batch must split into every micro-batch count offered (48 does: 1, 2, 3, 4, 6, 8)."""
    controls = {
        "world_size": W.IntSlider(value=base.world_size, min=2, max=4, description="stages p"),
        "microbatches": _dropdown([1, 2, 3, 4, 6, 8], base.microbatches, "micro-batches m"),
        "schedule": _dropdown(["naive", "gpipe", "1f1b"], base.schedule, "schedule"),
    }

    def compute(world_size: int, microbatches: int, schedule: str, progress: Progress | None = None) -> PanelResult:
        cfg = base.replace(world_size=world_size, schedule=schedule)
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
        "max_staleness": _dropdown([None, 0, 1, 2], base.max_staleness, "staleness bound"),
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
