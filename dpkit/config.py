"""RunConfig: every knob of a run, checked before any process starts.

A bad value raises ValueError naming the field, the value and what is allowed, so a learner
who mistypes a widget value gets a sentence, not a hung rank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from .runtime.gloo_loop import GLOO_LOOP_MODES, default_mode
from .strategies.registry import PARALLELISMS, SPECS, spec_for
from .strategies.spec import config_error

SYNCS = ("allreduce", "ps", "ps-async")
MODELS = ("mlp", "cnn", "transformer")
GRAD_SYNCS = ("per-tensor", "flat", "bucketed", "ddp")
ALLREDUCE_ALGOS = ("native", "ring", "ring-whole", "reduce-broadcast", "tree")
SCHEDULES = ("naive", "gpipe", "1f1b")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")

# Default model sizes: deep enough for 4 pipeline stages, wide enough for 2 or 4 tensor ranks.
MODEL_DEFAULTS = {
    "mlp": {"hidden": 128, "layers": 4},
    "cnn": {"hidden": 16, "layers": 4},
    "transformer": {"hidden": 64, "layers": 4},
}


def max_local_ranks() -> int:
    """How many rank processes one machine may host: oversubscribing CPUs past 8x only measures thrashing."""
    return max(8, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class RunConfig:
    """One experiment. `world_size` counts the training ranks (workers; PS servers come on top)."""

    parallelism: str = "none"
    world_size: int = 1
    global_batch: int = 64
    steps: int = 10
    warmup: int = 1
    seed: int = 0
    model: str = "mlp"
    hidden: int | None = None
    layers: int | None = None
    seq_len: int = 32
    freeze: tuple[str, ...] = ()
    tie_weights: bool = False
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    grad_accum: int = 1
    # data parallelism
    sync: str = "allreduce"
    grad_sync: str = "bucketed"
    allreduce_algo: str = "native"
    bucket_mb: float = 1.0
    num_servers: int = 1
    max_staleness: int | None = None
    # model parallelism
    schedule: str = "1f1b"
    microbatches: int = 4
    stage_layers: tuple[int, ...] = ()
    data_parallel_size: int = 2
    # stragglers (any strategy)
    straggler_ranks: tuple[int, ...] = ()
    straggler_delay_s: float = 0.0
    # fault injection (any strategy): rank fail_rank SIGKILLs itself when step fail_at_step begins
    fail_rank: int | None = None
    fail_at_step: int = 1
    # where and how it runs
    device: str = "auto"
    backend: str = "auto"
    threads_per_rank: int | None = None
    # gloo's busy-polling I/O thread: "idle" (SCHED_IDLE) or "normal"; default $DPKIT_GLOO_LOOP or "idle" (dpkit/gloo_loop.py)
    gloo_loop: str = dataclasses.field(default_factory=default_mode)
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("freeze", "straggler_ranks", "stage_layers"):
            value = getattr(self, name)
            if isinstance(value, (list, str)):
                value = (value,) if isinstance(value, str) and name == "freeze" else tuple(value)
                object.__setattr__(self, name, value)
        if isinstance(self.freeze, tuple) and self.freeze == ("",):
            object.__setattr__(self, "freeze", ())
        validate(self)

    # ---- derived values -------------------------------------------------------------------
    @property
    def model_hidden(self) -> int:
        return self.hidden if self.hidden is not None else MODEL_DEFAULTS[self.model]["hidden"]

    @property
    def model_layers(self) -> int:
        return self.layers if self.layers is not None else MODEL_DEFAULTS[self.model]["layers"]

    @property
    def num_processes(self) -> int:
        """Processes the launcher starts: the training ranks plus any the strategy adds (parameter servers)."""
        return spec_for(self).num_processes(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def run_id(self) -> str:
        """A short, stable name for this config: sweeps use it to skip runs already on disk."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise config_error(field_name, value, allowed)


def _choice(cfg: RunConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        _fail(name, value, "choose one of " + ", ".join(repr(c) for c in choices))


def _int_at_least(cfg: RunConfig, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(name, value, f"an integer >= {low}")


def validate(cfg: RunConfig) -> None:
    """Raise ValueError for the first bad field; called by RunConfig itself, so no bad config exists.

    Fields every run has are checked here; the strategy the config selects checks its own knobs
    (dpkit/strategies/: each module's spec), so no check here depends on a strategy's name.
    """
    for name, choices in (
        ("parallelism", PARALLELISMS),
        ("sync", SYNCS),
        ("model", MODELS),
        ("grad_sync", GRAD_SYNCS),
        ("allreduce_algo", ALLREDUCE_ALGOS),
        ("schedule", SCHEDULES),
        ("optimizer", OPTIMIZERS),
        ("device", DEVICES),
        ("backend", BACKENDS),
        ("gloo_loop", GLOO_LOOP_MODES),
    ):
        _choice(cfg, name, choices)
    for name, low in (
        ("world_size", 1),
        ("global_batch", 1),
        ("steps", 1),
        ("warmup", 0),
        ("seed", 0),
        ("seq_len", 2),
        ("grad_accum", 1),
        ("num_servers", 1),
        ("microbatches", 1),
        ("data_parallel_size", 1),
    ):
        _int_at_least(cfg, name, low)
    if cfg.hidden is not None:
        _int_at_least(cfg, "hidden", 1)
    if cfg.layers is not None:
        _int_at_least(cfg, "layers", 1)
    if cfg.threads_per_rank is not None:
        _int_at_least(cfg, "threads_per_rank", 1)
    if cfg.max_staleness is not None:
        _int_at_least(cfg, "max_staleness", 0)
    if cfg.warmup >= cfg.steps:
        _fail("warmup", cfg.warmup, f"fewer warm-up steps than steps={cfg.steps} (some steps must be timed)")
    for name in ("lr", "bucket_mb", "timeout_s"):
        if not float(getattr(cfg, name)) > 0:
            _fail(name, getattr(cfg, name), "a number > 0")
    if not 0 <= cfg.momentum < 1:
        _fail("momentum", cfg.momentum, "a number in [0, 1)")
    if cfg.straggler_delay_s < 0:
        _fail("straggler_delay_s", cfg.straggler_delay_s, "a number of seconds >= 0")
    spec = spec_for(cfg)
    for other in SPECS:
        for knob, default in other.exclusive_knobs.items():
            if other is not spec and getattr(cfg, knob) != default:
                _fail(knob, getattr(cfg, knob), f"{default!r} unless the run is {other.description}")
    nprocs = spec.num_processes(cfg)
    bad = [r for r in cfg.straggler_ranks if not isinstance(r, int) or not 0 <= r < nprocs]
    if bad:
        _fail("straggler_ranks", cfg.straggler_ranks, f"rank numbers in 0..{nprocs - 1}")
    if cfg.fail_rank is not None:
        if isinstance(cfg.fail_rank, bool) or not isinstance(cfg.fail_rank, int) or not 0 <= cfg.fail_rank < nprocs:
            _fail("fail_rank", cfg.fail_rank, f"None or a rank number in 0..{nprocs - 1}")
        if isinstance(cfg.fail_at_step, bool) or not isinstance(cfg.fail_at_step, int) or not 0 <= cfg.fail_at_step < cfg.steps:
            _fail("fail_at_step", cfg.fail_at_step, f"a step number in 0..{cfg.steps - 1}")
    if nprocs > max_local_ranks() and "TORCHELASTIC_RUN_ID" not in os.environ:
        _fail(
            "world_size",
            cfg.world_size,
            f"at most {max_local_ranks()} processes on this machine ({os.cpu_count()} cores; "
            f"this config needs {nprocs}); use torchrun across machines for more",
        )
    split, what = spec.batch_split(cfg)
    if cfg.global_batch % split:
        _fail("global_batch", cfg.global_batch, f"a multiple of {what} = {split}, so every shard has the same size")
    _validate_model(cfg)
    spec.validate(cfg)


def _validate_model(cfg: RunConfig) -> None:
    bad = [p for p in cfg.freeze if not isinstance(p, str) or not p]
    if bad:
        _fail("freeze", cfg.freeze, "a tuple of parameter-name prefixes such as ('embed',)")
    if cfg.tie_weights and cfg.model != "transformer":
        _fail("tie_weights", cfg.tie_weights, "True only for model='transformer' (ties embedding and output head)")
    if cfg.model == "transformer" and cfg.model_hidden % 4:
        _fail("hidden", cfg.model_hidden, "a multiple of 4 for the transformer (4 attention heads)")
