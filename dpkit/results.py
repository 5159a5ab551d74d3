"""RunResult: what a run did, as tidy frames, a summary, and a folder of JSON/CSV/NPZ (no pickle).

Where a step's time goes (step_stats): at each instant a rank is in exactly one state, the highest of
injected > blocking comm > compute > in-flight comm > bubble > idle among its spans (time covered by
none is the rank's gap kind). So compute + exposed comm + idle + bubble + injected = the step time, for
every rank and step. A blocking message is exposed comm even inside a compute span (tensor parallelism's
all-reduces); an in-flight one is hidden where the rank computes meanwhile and exposed where it does not;
a straggler's injected delay is never compute. comm_s is all comm time (the union), = exposed + hidden.

Traffic (summarize): bytes_sent_per_step is the mean over training ranks; the busiest process (a
parameter server, a reduce-broadcast root) and each role kind are reported beside it, with whether the
bytes were counted or came from a formula (a backend collective dpkit cannot see into).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import RunConfig
from .runtime.cpu_time import waiting_for_core
from .runtime.evaluation import EVAL_COLUMNS, learning_summary
from .runtime.memory import memory_frame, memory_summary
from .runtime.profiler import trace_events as profiler_trace_events
from .strategies.parameter_server.staleness import staleness_frame, staleness_summary
from .strategies.registry import spec_for

TIMELINE_COLUMNS = ["rank", "step", "kind", "name", "start_s", "end_s", "bytes", "bytes_source", "blocking"]
STEP_COLUMNS = ["rank", "step", "role", "start_s", "end_s", "cpu_s"]

# ---- result folders: what save() writes, and the manifest that load() verifies ------------
RESULT_FORMAT = "dpkit-result"
RESULT_FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = (1,)
MANIFEST = "manifest.json"
RESULT_FILES = (
    "config.json",
    "meta.json",
    "extra.json",
    "losses.csv",
    "timeline.csv",
    "steps.csv",
    "state_dict.npz",
    "trace.json",
    "summary.json",
    "evals.csv",  # held-out evaluations (dpkit.runtime.evaluation)
)
CHECKPOINTS = "checkpoints"  # the run's checkpoints (dpkit.runtime.checkpoint), written while it runs
_TMP_PREFIX = ".dpkit-tmp-"  # half-written files: a crash leaves these, never a truncated real name


class ResultFolderError(ValueError):
    """A result folder that cannot be trusted (incomplete, corrupt, unknown format) or must not be overwritten.

    The message names the folder, the file and the problem, so a user can delete or rerun that one run.
    """

    def __init__(self, folder: str | Path, file: str | None, problem: str) -> None:
        self.folder, self.file, self.problem = Path(folder), file, problem
        where = f"result folder {self.folder}" + (f": {file}" if file else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple:  # picklable across processes despite the 3-argument __init__
        return (type(self), (self.folder, self.file, self.problem))


# ---- where a step's time goes: one state per instant ------------------------------------
STATES = ("injected", "blocking comm", "compute", "in-flight comm", "bubble", "idle")  # highest priority first
STAT_COLUMNS = [
    "compute_s", "comm_s", "exposed_comm_s", "hidden_comm_s", "idle_s", "bubble_s", "injected_s", "bytes_sent",
    "cpu_s", "waiting_for_core_s",
]  # fmt: skip


def _blocking(timeline: pd.DataFrame) -> np.ndarray:
    """The blocking flag of each span; timelines saved before it existed count every span as blocking."""
    if "blocking" not in timeline.columns:
        return np.ones(len(timeline), dtype=bool)
    flags = timeline["blocking"].map(lambda v: v if isinstance(v, (bool, np.bool_)) else str(v).strip().lower() != "false")
    return flags.fillna(True).to_numpy(dtype=bool)


def _gap_kinds(timeline: pd.DataFrame) -> dict[int, str]:
    """Per rank, what time covered by no span counts as: the kind its recorder filled gaps with (idle by default)."""
    fills = timeline[(timeline.name == "wait") & timeline.kind.isin(["idle", "bubble"])] if len(timeline) else timeline
    return {int(r): str(k) for r, k in fills.groupby("rank").kind.first().items()}


def partition(
    spans: pd.DataFrame, start: float, end: float, gap_kind: str = "idle", blocking: np.ndarray | None = None
) -> dict[str, float]:
    """Seconds of [start, end] in each state (STATES, by priority), plus comm_s: the union of all comm.

    A sweep over the elementary intervals between span boundaries: each gets the highest state among
    the spans covering it, or `gap_kind` when none does. The states sum to end - start exactly."""
    flags = np.ones(len(spans), dtype=bool) if blocking is None else np.asarray(blocking, dtype=bool)
    a = np.clip(spans.start_s.to_numpy(dtype=float), start, end)
    b = np.clip(spans.end_s.to_numpy(dtype=float), start, end)
    kind = spans.kind.to_numpy(dtype=object)
    state = np.where(kind == "comm", np.where(flags, "blocking comm", "in-flight comm"), kind)
    keep = b > a
    a, b, state = a[keep], b[keep], state[keep]
    out = dict.fromkeys(STATES, 0.0)
    bounds = np.unique(np.concatenate([[start, end], a, b]))
    lo, hi = bounds[:-1], bounds[1:]
    length = hi - lo
    covers = (a[:, None] <= lo[None, :]) & (b[:, None] >= hi[None, :])  # span i covers elementary interval j
    free = np.ones(len(lo), dtype=bool)
    comm = np.zeros(len(lo), dtype=bool)
    for name in STATES:
        here = covers[state == name].any(axis=0)
        if name.endswith("comm"):
            comm |= here
        out[name] = float(length[here & free].sum())
        free &= ~here
    out[gap_kind if gap_kind in out else "idle"] += float(length[free].sum())
    out["comm_s"] = float(length[comm].sum())
    return out


def step_stats(timeline: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per rank and step: the step time split into compute / exposed comm / idle / bubble / injected (which
    sum to step_time_s), all comm time and the part of it hidden behind other work, and bytes sent."""
    rows = []
    grouped: dict = {}
    gap_kinds: dict[int, str] = {}
    if len(timeline):
        timeline = timeline.assign(_blocking=_blocking(timeline))
        grouped = {key: g for key, g in timeline.groupby(["rank", "step"])}
        gap_kinds = _gap_kinds(timeline)
    for s in steps.itertuples(index=False):
        row = {"rank": s.rank, "step": s.step, "role": s.role, "step_time_s": s.end_s - s.start_s}
        g = grouped.get((s.rank, s.step))
        if g is None:
            g = timeline.iloc[:0] if len(timeline) else pd.DataFrame({"kind": [], "start_s": [], "end_s": [], "_blocking": []})
        parts = partition(g, s.start_s, s.end_s, gap_kinds.get(int(s.rank), "idle"), g["_blocking"].to_numpy(dtype=bool))
        exposed = parts["blocking comm"] + parts["in-flight comm"]
        row.update(
            compute_s=parts["compute"],
            comm_s=parts["comm_s"],
            exposed_comm_s=exposed,
            hidden_comm_s=parts["comm_s"] - exposed,
            idle_s=parts["idle"],
            bubble_s=parts["bubble"],
            injected_s=parts["injected"],
            bytes_sent=int(g.loc[g.kind == "comm", "bytes"].sum()) if len(g) else 0,
            cpu_s=float(getattr(s, "cpu_s", math.nan)),  # this process's CPU clock (runtime.cpu_time); NaN: not recorded
        )
        row["waiting_for_core_s"] = waiting_for_core(row["compute_s"], row["cpu_s"])
        rows.append(row)
    return pd.DataFrame(rows, columns=["rank", "step", "role", "step_time_s", *STAT_COLUMNS])


def role_kind(role: str) -> str:
    """'parameter server 0' -> 'parameter server', 'replica 1 stage 0' -> 'replica stage': a role without its indices."""
    return " ".join(w for w in role.split() if not w.isdigit())


def bytes_source(timeline: pd.DataFrame) -> str:
    """'counted' if dpkit counted every comm byte of the run, 'formula' if all came from formulas, else 'mixed'
    ('none': nothing was sent; 'unknown': a timeline saved before spans said where their bytes came from)."""
    comm = timeline[(timeline.kind == "comm") & (timeline.bytes > 0)] if len(timeline) else timeline
    if not len(comm):
        return "none"
    if "bytes_source" not in comm.columns:
        return "unknown"
    sources = set(comm.bytes_source.astype(str))
    return sources.pop() if len(sources) == 1 and sources <= {"counted", "formula"} else "mixed"


def _bytes_per_rank(cfg: RunConfig, stats: pd.DataFrame) -> pd.DataFrame:
    """rank, role, role_kind, bytes_sent_per_step (mean over the rank's timed steps) for every process."""
    roles = spec_for(cfg).roles(cfg)
    timed = stats[stats.step >= cfg.warmup]
    per_rank = timed.groupby("rank").bytes_sent.mean()
    out = pd.DataFrame({"rank": [int(r) for r in per_rank.index], "bytes_sent_per_step": per_rank.to_numpy(dtype=float)})
    out.insert(1, "role", [roles[r] if r < len(roles) else f"rank {r}" for r in out["rank"]])
    out.insert(2, "role_kind", [role_kind(r) for r in out.role])
    return out


def expected_bubble_fraction(cfg: RunConfig) -> float:
    """(p-1)/(m+p-1) for p pipeline stages and m micro-batches (naive: m = 1); NaN when there is no pipeline."""
    return spec_for(cfg).expected_bubble(cfg)


STEP_PARTS = ["compute_s", "exposed_comm_s", "idle_s", "bubble_s", "injected_s"]  # they partition a rank's step


def slowest_rank_parts(timed: pd.DataFrame) -> dict:
    """slowest_*: the parts of the slowest process's step in the median step (mean of the two middle steps for an
    even count), which add up to step_time_s; the means over ranks do not when ranks' steps differ (issue 27)."""
    if timed.empty:
        return {}
    per_step = timed.loc[timed.groupby("step").step_time_s.idxmax()].sort_values("step_time_s", kind="stable")
    middle = per_step.iloc[[(len(per_step) - 1) // 2, len(per_step) // 2]]
    parts = {f"slowest_{c}": float(middle[c].mean()) for c in ["step_time_s", *STEP_PARTS]}
    return {**parts, "slowest_rank": int(middle["rank"].iloc[-1]), "slowest_role": str(middle["role"].iloc[-1])}


def summarize(cfg: RunConfig, timeline: pd.DataFrame, steps: pd.DataFrame, losses: list[float], meta: dict) -> dict:
    """Medians over the timed steps (warm-up excluded); per-rank numbers are means over training ranks."""
    stats = step_stats(timeline, steps)
    timed = stats[stats.step >= cfg.warmup]
    workers = timed[timed["rank"].isin(spec_for(cfg).training_ranks(cfg))]
    per_step = workers.groupby("step")
    step_time = float(timed.groupby("step").step_time_s.max().median())
    mean = per_step[STAT_COLUMNS].mean().median()
    by_rank = _bytes_per_rank(cfg, stats)
    by_role = by_rank.groupby("role_kind", sort=False).bytes_sent_per_step.mean()
    return {
        "step_time_s": step_time,
        "samples_per_s": cfg.global_batch / step_time if step_time > 0 else float("nan"),
        "compute_s": float(mean.compute_s),
        "comm_s": float(mean.comm_s),
        "exposed_comm_s": float(mean.exposed_comm_s),
        "hidden_comm_s": float(mean.hidden_comm_s),
        "idle_s": float(mean.idle_s),
        "bubble_s": float(mean.bubble_s),
        "injected_s": float(mean.injected_s),
        "cpu_s": float(mean.cpu_s),
        "waiting_for_core_s": float(mean.waiting_for_core_s),
        "bubble_fraction": float(mean.bubble_s) / step_time if step_time > 0 else float("nan"),
        "bubble_fraction_formula": expected_bubble_fraction(cfg),
        **slowest_rank_parts(timed),  # slowest_*: what a stacked "where the step goes" bar draws
        "bytes_sent_per_step": float(mean.bytes_sent),
        "bytes_sent_per_step_busiest": float(by_rank.bytes_sent_per_step.max()) if len(by_rank) else 0.0,
        "bytes_sent_per_step_by_role": {k: float(v) for k, v in by_role.items()},
        "bytes_sent_per_step_all_ranks": float(timed.groupby("step").bytes_sent.sum().median()),
        "bytes_source": bytes_source(timeline),
        "timed_steps": int(timed.step.nunique()),  # fewer than steps - warmup when a target stopped the run
        "final_loss": float(losses[-1]),
        # same config + seed -> the same losses bit for bit, except where update order depends on timing (async PS)
        "reproducible": spec_for(cfg).trains_like_baseline(cfg),
        "clock": meta.get("clock"),
        "threads_per_rank": meta.get("threads_per_rank"),
        "gloo_loop": meta.get("gloo_loop"),
        "backend": meta.get("backend"),
        "device": meta.get("device"),
        "num_processes": meta.get("num_processes"),
        "start_method": meta.get("start_method"),
        "link": (meta.get("link") or {}).get("key", cfg.link),  # the emulated link's key; "none": the machine as it is
        **memory_summary(meta.get("memory"), spec_for(cfg).training_ranks(cfg)),  # mem_*: max over training ranks
    }


@dataclass
class RunResult:
    """One run: per-step losses, the trained parameters, each rank's timeline, and a summary."""

    config: RunConfig
    losses: list[float]
    final_state_dict: dict[str, torch.Tensor]
    timeline: pd.DataFrame
    steps: pd.DataFrame
    meta: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    #: held-out evaluations (RunConfig.eval_every): step, samples_seen, train_time_s, loss, accuracy
    evals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EVAL_COLUMNS))
    #: the effective learning rate of every step (dpkit.runtime.lr_rules)
    lrs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = summarize(self.config, self.timeline, self.steps, self.losses, self.meta)
            self.summary.update(staleness_summary(self.staleness))  # parameter server only: staleness_mean, _max
            self.summary.update(learning_summary(self.config, self.evals))

    def step_stats(self) -> pd.DataFrame:
        return step_stats(self.timeline, self.steps)

    @property
    def staleness(self) -> pd.DataFrame:
        """Every update a parameter server applied: step, worker, server, staleness_steps (the SSP bound's unit),
        staleness_updates (dpkit.strategies.parameter_server.staleness); saved with `extra`. Empty without a server."""
        return staleness_frame(self.extra)

    def bytes_by_rank(self) -> pd.DataFrame:
        """Every process's traffic (a parameter server's or a reduce-broadcast root's load, which the mean
        over training ranks hides): rank, role, role_kind, bytes_sent_per_step over the timed steps, and
        bytes_received_per_step where the strategy counted them (NaN elsewhere), over all steps."""
        out = _bytes_per_rank(self.config, self.step_stats())
        received = {
            int(r): b / max(len(self.losses), 1) for r, b in self.extra.get("bytes_in", {}).items()
        }  # steps run (a target may stop early)
        out["bytes_received_per_step"] = [received.get(int(r), float("nan")) for r in out["rank"]]
        return out

    def memory_frame(self) -> pd.DataFrame:
        """Every process's memory (dpkit.runtime.memory): rank, role, and each mem_* field in bytes."""
        return memory_frame(self.meta.get("memory"), spec_for(self.config).roles(self.config))

    def training_ranks(self) -> list[int]:
        """The ranks that compute forward/backward (not, e.g., parameter servers), as the strategy says."""
        return spec_for(self.config).training_ranks(self.config)

    def to_frame(self) -> pd.DataFrame:
        """One tidy row: every config field, then every summary field (what sweep() stacks)."""
        row = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.config.to_dict().items()}
        row.update(self.summary)
        return pd.DataFrame([row])

    def losses_frame(self) -> pd.DataFrame:
        """step, loss and (where recorded) the step's effective learning rate lr."""
        frame = pd.DataFrame({"step": range(len(self.losses)), "loss": self.losses})
        if len(self.lrs) == len(self.losses):
            frame["lr"] = self.lrs
        return frame

    def chrome_trace(self) -> dict:
        """Chrome-trace JSON (open in Perfetto): one process per rank, one track per span kind."""
        events: list[dict] = []
        tracks = {"compute": 0, "injected": 0, "eval": 0, "checkpoint": 0, "comm": 1, "idle": 2, "bubble": 2}
        roles = self.steps.groupby("rank").role.first().to_dict() if len(self.steps) else {}
        for rank in sorted(self.timeline["rank"].unique()) if len(self.timeline) else []:
            events.append(
                {"ph": "M", "name": "process_name", "pid": int(rank), "args": {"name": f"rank {rank} ({roles.get(rank, '')})"}}
            )
            for kind, tid in (("compute", 0), ("comm", 1), ("idle", 2)):
                events.append(
                    {
                        "ph": "M",
                        "name": "thread_name",
                        "pid": int(rank),
                        "tid": tid,
                        "args": {"name": kind if kind != "idle" else "idle/bubble"},
                    }
                )
        for s in self.timeline.itertuples(index=False):
            events.append(
                {
                    "name": s.name,
                    "cat": s.kind,
                    "ph": "X",
                    "pid": int(s.rank),
                    "tid": tracks[s.kind],
                    "ts": s.start_s * 1e6,
                    "dur": max(s.end_s - s.start_s, 0.0) * 1e6,
                    "args": {
                        "step": int(s.step),
                        "bytes": int(s.bytes),
                        "bytes_source": s.bytes_source,
                        "blocking": bool(s.blocking),
                    },
                }
            )
        events += profiler_trace_events(self.extra)  # RunConfig(profile=True): torch's ops, on the same axis
        return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"dpkit": self.meta}}

    # ---- persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the run to `folder`, each file atomically, then manifest.json (sizes, sha256) last.

        A crash leaves a folder without a valid manifest, which load() refuses and sweep() reruns.
        Refuses a folder holding another run or other files unless `overwrite`; saving a run to its
        own folder again is allowed.
        """
        folder = Path(folder)
        run_id = self.config.run_id()
        _check_save_target(folder, run_id, overwrite)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder does not verify until the new manifest lands
        for stale in folder.glob(_TMP_PREFIX + "*"):
            stale.unlink(missing_ok=True)
        files: dict[str, dict[str, Any]] = {}
        nonfinite: dict[str, list] = {}
        for name, obj in (
            ("config.json", self.config.to_dict()),
            ("meta.json", self.meta),
            ("extra.json", self.extra),
            ("trace.json", self.chrome_trace()),
            ("summary.json", self.summary),
        ):
            files[name], nonfinite[name] = _write_json(folder / name, obj)
        frames = [("losses.csv", self.losses_frame()), ("timeline.csv", self.timeline), ("steps.csv", self.steps)]
        for name, frame in [*frames, ("evals.csv", self.evals)]:
            files[name] = _write_atomic(folder / name, frame.to_csv(index=False).encode())
        buf = io.BytesIO()
        np.savez(buf, **{k: v.detach().cpu().numpy() for k, v in self.final_state_dict.items()})  # type: ignore[arg-type]
        files["state_dict.npz"] = _write_atomic(folder / "state_dict.npz", buf.getvalue())
        manifest = {
            "format": RESULT_FORMAT,
            "format_version": RESULT_FORMAT_VERSION,
            "run_id": run_id,
            "files": files,
            "nonfinite": {k: v for k, v in nonfinite.items() if v},  # where NaN/inf were, written as null
        }
        _write_json(folder / MANIFEST, manifest)  # last: its presence and checksums mark a complete save
        _fsync_dir(folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RunResult:
        """Read a folder save() wrote, after verifying it against its manifest; ResultFolderError otherwise."""
        folder = Path(folder)
        manifest, data = _verify(folder)
        nonfinite = manifest.get("nonfinite", {})

        def parse(name: str, reader: Any) -> Any:
            try:
                return reader(io.BytesIO(data[name]))
            except ResultFolderError:
                raise
            except Exception as exc:  # a file that verifies but does not parse: name it, whatever the parser raised
                raise ResultFolderError(folder, name, f"cannot be parsed: {type(exc).__name__}: {exc}") from exc

        def json_of(name: str) -> Any:
            return _restore_nonfinite(folder, name, _read_json(folder, name, data[name]), nonfinite.get(name, []))

        def tensors(b: io.BytesIO) -> dict[str, torch.Tensor]:
            with np.load(b, allow_pickle=False) as npz:
                return {k: torch.from_numpy(npz[k].copy()) for k in npz.files}

        state = parse("state_dict.npz", tensors)
        timeline = parse("timeline.csv", pd.read_csv)
        if timeline.empty:
            timeline = pd.DataFrame(columns=TIMELINE_COLUMNS)
        config = parse("config.json", lambda _: RunConfig.from_dict(json_of("config.json")))
        if config.run_id() != manifest["run_id"]:
            raise ResultFolderError(folder, "config.json", f"is run {config.run_id()}, the manifest says {manifest['run_id']}")
        losses = parse("losses.csv", pd.read_csv)
        return cls(
            config=config,
            losses=losses["loss"].astype(float).tolist(),
            lrs=losses["lr"].astype(float).tolist() if "lr" in losses.columns else [],
            evals=parse("evals.csv", pd.read_csv),
            final_state_dict=state,
            timeline=timeline,
            steps=parse("steps.csv", pd.read_csv),
            meta=json_of("meta.json"),
            extra=json_of("extra.json"),
            summary=json_of("summary.json"),
        )

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"RunResult({self.config.parallelism}, world_size={self.config.world_size}, "
            f"step={s['step_time_s'] * 1e3:.1f} ms, comm={s['comm_s'] * 1e3:.1f} ms, "
            f"final_loss={s['final_loss']:.4f}, backend={s['backend']}, device={s['device']})"
        )


def _write_atomic(path: Path, data: bytes) -> dict[str, Any]:
    """Write via a temp name in the same folder, fsync, os.replace: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable too (POSIX); where a folder cannot be opened (Windows), the OS flushes it later."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> tuple[dict[str, Any], list]:
    """Strict JSON (no NaN/Infinity tokens, which most JSON readers reject), written atomically.

    Returns the file's manifest entry and where non-finite floats were (written as null), so load() can put them back.
    """
    nonfinite: list = []
    text = json.dumps(_jsonable(obj, [], nonfinite), indent=1, allow_nan=False)
    return _write_atomic(path, text.encode()), nonfinite


def _jsonable(obj: Any, path: list, nonfinite: list) -> Any:
    """Plain JSON values for `obj`: numpy scalars unwrapped, tuples/sets as lists, NaN/inf as null (recorded in `nonfinite`)."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        nonfinite.append([path, "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")])
        return None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = _json_key(k)
            out[key] = _jsonable(v, [*path, key], nonfinite)
        return out
    if isinstance(obj, (set, frozenset)):
        obj = sorted(obj, key=repr)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, [*path, i], nonfinite) for i, v in enumerate(obj)]
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _json_key(key: Any) -> str:
    """A dict key as JSON will spell it, so recorded paths match the loaded object."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    if isinstance(key, (int, float)):
        return repr(key) if isinstance(key, float) else str(key)
    raise TypeError(f"not a JSON key: {type(key).__name__}")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (strict JSON has no NaN/Infinity)")


def _read_json(folder: Path, name: str, data: bytes) -> Any:
    """Strict JSON from a result file; any problem is a ResultFolderError naming the file."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ResultFolderError(folder, name, f"is not valid JSON: {exc}") from exc


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _restore_nonfinite(folder: Path, name: str, tree: Any, entries: list) -> Any:
    """Put back the NaN/inf that _write_json wrote as null, where the manifest says they were."""
    for entry in entries:
        try:
            path, token = entry
            value = _NONFINITE[token]  # shared objects: dicts of loaded results compare equal (NaN is NaN by identity)
            if not path:
                return value
            node = tree
            for key in path[:-1]:
                node = node[key]
            if node[path[-1]] is not None:
                raise ValueError("the value there is not null")
            node[path[-1]] = value
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ResultFolderError(folder, MANIFEST, f"its non-finite entry {entry!r} does not fit {name}: {exc}") from exc
    return tree


def _verify(folder: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and every file's bytes, once each file has the size and sha256 the manifest recorded."""
    if not folder.is_dir():
        raise ResultFolderError(folder, None, "is not a folder" if folder.exists() else "does not exist")
    if not (folder / MANIFEST).is_file():
        if (folder / "summary.json").exists():
            problem = "missing: saved by an older dpkit (before verified result folders) or not fully saved; rerun this config"
        else:
            problem = "missing: not a complete dpkit result (an interrupted save, or not a result folder at all)"
        raise ResultFolderError(folder, MANIFEST, problem)
    manifest = _read_json(folder, MANIFEST, (folder / MANIFEST).read_bytes())
    if not isinstance(manifest, dict) or manifest.get("format") != RESULT_FORMAT:
        raise ResultFolderError(folder, MANIFEST, f"is not a dpkit result manifest (format should be {RESULT_FORMAT!r})")
    version = manifest.get("format_version")
    if version not in KNOWN_FORMAT_VERSIONS:
        raise ResultFolderError(
            folder, MANIFEST, f"format version {version!r} is not one this dpkit reads {KNOWN_FORMAT_VERSIONS}; rerun or upgrade"
        )
    files = manifest.get("files")
    if (
        not isinstance(files, dict)
        or not isinstance(manifest.get("run_id"), str)
        or not isinstance(manifest.get("nonfinite", {}), dict)
    ):
        raise ResultFolderError(
            folder, MANIFEST, "is malformed: needs files (an object), run_id (a string), nonfinite (an object)"
        )
    unknown = sorted(set(files) - set(RESULT_FILES))
    if unknown:
        raise ResultFolderError(folder, MANIFEST, f"lists files format {version} does not have: {unknown}")
    data: dict[str, bytes] = {}
    for name in RESULT_FILES:
        entry = files.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
            raise ResultFolderError(folder, name, f"has no valid entry (size, sha256) in {MANIFEST}")
        if not (folder / name).is_file():
            raise ResultFolderError(folder, name, f"is missing ({MANIFEST} lists it)")
        blob = (folder / name).read_bytes()
        if len(blob) != entry["size"]:
            raise ResultFolderError(
                folder, name, f"is {len(blob)} bytes, {MANIFEST} says {entry['size']}: truncated or changed since it was saved"
            )
        if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
            raise ResultFolderError(
                folder, name, f"does not match its sha256 in {MANIFEST}: corrupted or edited since it was saved"
            )
        data[name] = blob
    return manifest, data


def _held_run_id(folder: Path) -> str | None:
    """The run a folder holds, by its manifest or else its config.json; None when neither says."""
    try:
        return str(json.loads((folder / MANIFEST).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        return RunConfig.from_dict(json.loads((folder / "config.json").read_text())).run_id()
    except (OSError, ValueError, TypeError):
        return None


def _check_save_target(folder: Path, run_id: str, overwrite: bool) -> None:
    """Refuse to mix a run into a folder holding another run or other files: that would silently lose them."""
    if folder.exists() and not folder.is_dir():
        raise ResultFolderError(folder, None, "exists and is not a folder")
    if overwrite or not folder.exists():
        return
    names = {p.name for p in folder.iterdir()}
    known = {*RESULT_FILES, MANIFEST, CHECKPOINTS}
    others = sorted(n for n in names if n not in known and not n.startswith(_TMP_PREFIX))
    if others:
        raise ResultFolderError(
            folder,
            others[0],
            f"is not a dpkit result file ({len(others)} such): refusing to save here; pass overwrite=True to save anyway",
        )
    held = _held_run_id(folder) if names else None
    if held is not None and held != run_id:
        raise ResultFolderError(
            folder, None, f"holds run {held}, not {run_id}: refusing to overwrite it; pass overwrite=True to replace it"
        )
