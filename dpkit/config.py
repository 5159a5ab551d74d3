"""RunConfig: every knob of a run, checked before any process starts.

A bad value raises ValueError naming the field, the value and what is allowed, so a learner
who mistypes a widget value gets a sentence, not a hung rank.

The fields every run has are written below; each strategy's own fields (sync, zero_stage, schedule, ...) are the
knobs its spec declares (dpkit/strategies/specs/, `Knob`): RunConfig is completed from the registry's specs,
and so are FIELD_HELP, the checks and the command line. A strategy outside the package joins with
`register_strategy` (or `strategy_registered` for a while), which adds its knobs to RunConfig.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import numbers
import os
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .comm.link import LINK_CHOICES, validate_link
from .runtime.cores import cores_available
from .runtime.gloo_loop import GLOO_LOOP_MODES, default_mode
from .strategies import registry
from .strategies.registry import PARALLELISMS, SPECS, spec_for
from .strategies.spec import Knob, StrategySpec, config_error

# the choices of some strategies' knobs, importable from here as before (their specs declare them)
from .strategies.specs.data_parallel import ALLREDUCE_ALGOS, GRAD_SYNCS, SYNCS
from .strategies.specs.pipeline import SCHEDULES
from .strategies.specs.precision import validate as validate_precision
from .workloads import model_layout, trainable_names

__all__ = ["ALLREDUCE_ALGOS", "GRAD_SYNCS", "SCHEDULES", "SYNCS", "RunConfig", "register_strategy", "strategy_registered"]

MODELS = ("mlp", "cnn", "transformer")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")
LR_SCALINGS = ("none", "linear", "sqrt")  # lr x f(global_batch / base_batch): dpkit/runtime/lr_rules.py

# Default model sizes: deep enough for 4 pipeline stages, wide enough for 2 or 4 tensor ranks.
MODEL_DEFAULTS = {
    "mlp": {"hidden": 128, "layers": 4},
    "cnn": {"hidden": 16, "layers": 4},
    "transformer": {"hidden": 64, "layers": 4},
}


def max_local_ranks() -> int:
    """How many rank processes one machine may host: oversubscribing CPUs past 8x only measures thrashing."""
    return max(8, 4 * cores_available())


class UnknownFieldError(TypeError, ValueError):
    """A keyword RunConfig has no field for. A TypeError, as Python's own unexpected-keyword error is, and a
    ValueError, so code (and the CLI) that catches bad config values catches a misspelt name too."""


def unknown_fields_message(unknown: list[str], known: list[str]) -> str:
    """Names the unknown keywords, the likely intended field for each, and every field, so a typo is a one-look fix."""
    close = [difflib.get_close_matches(name, known, n=1) for name in unknown]
    guesses = [f"did you mean {match[0]!r}?" for match in close if match]
    hint = f" ({'; '.join(guesses)})" if guesses else ""
    return f"unknown RunConfig field {', '.join(map(repr, unknown))}{hint}; the fields are: {', '.join(known)}"


_Cls = TypeVar("_Cls", bound=type)


def _refuse_unknown_fields(cls: _Cls) -> _Cls:
    """Wrap the dataclass __init__ so `RunConfig(worldsize=2)` lists the fields and suggests 'world_size', instead
    of Python's bare "unexpected keyword argument". dataclasses.replace and pickling are unaffected."""
    init = vars(cls)["__init__"]  # the one @dataclass wrote
    known = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [name for name in kwargs if name not in known]
        if unknown:
            raise UnknownFieldError(unknown_fields_message(unknown, known))
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


@dataclass(frozen=True)
class RunConfig:
    """One experiment. `world_size` counts the training ranks (workers; PS servers come on top).

    The fields here are the ones every run has; after `grad_accum` come the knobs of every registered strategy
    (`registry.knobs()`: sync, grad_sync, allreduce_algo, bucket_mb, zero_stage, num_servers, max_staleness,
    schedule, microbatches, stage_layers, data_parallel_size, ...), added by `_with_knobs` below.
    """

    if TYPE_CHECKING:  # the knobs are added at import, so a type checker sees them as keywords and attributes

        def __init__(self, **fields: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

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
    # (here: each registered strategy's knobs, from its spec)
    # mixed precision and activation checkpointing (dpkit/strategies/precision.py; where: specs/precision.py)
    precision: str = "fp32"
    checkpoint_activations: bool = False
    # stragglers (any strategy)
    straggler_ranks: tuple[int, ...] = ()
    straggler_delay_s: float = 0.0
    # fault injection (any strategy): rank fail_rank SIGKILLs itself when step fail_at_step begins
    fail_rank: int | None = None
    fail_at_step: int = 1
    # checkpoints (dpkit/runtime/checkpoint.py): the whole training state every this many steps (none: never)
    checkpoint_every: int | None = None
    # where and how it runs
    device: str = "auto"
    backend: str = "auto"
    threads_per_rank: int | None = None
    # gloo's busy-polling I/O thread: "low" (nice 5), "idle" (SCHED_IDLE) or "normal"; default $DPKIT_GLOO_LOOP or "low" (dpkit/runtime/gloo_loop.py)
    gloo_loop: str = dataclasses.field(default_factory=default_mode)
    timeout_s: float = 300.0
    # emulated network (dpkit/comm/link.py): "none", a preset of dpkit.cost.model.PRESETS, or "custom"
    link: str = "none"
    link_latency_s: float | None = None
    link_bandwidth_Bps: float | None = None
    ranks_per_node: int = 1  # emulated nodes (dpkit/comm/emulation/nodes.py): `link` between them,
    intra_node_link: str = "NVLink"  # ... and this preset (or "none") within one
    profile: bool = False  # torch.profiler per rank, beside dpkit's timeline in trace.json (dpkit/runtime/profiler.py)
    # learning (dpkit/runtime/evaluation.py, lr_rules.py): held-out evaluation, train to a target, lr rules
    eval_every: int | None = None
    target_accuracy: float | None = None
    lr_scaling: str = "none"
    base_batch: int | None = None
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        # every value as the plain Python type of its field first (numpy scalars, lists), so the checks,
        # to_dict and run_id see one representation; then the values themselves
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _normalised(f.name, getattr(self, f.name)))
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
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UnknownFieldError(unknown_fields_message(unknown, known))
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def run_id(self) -> str:
        """A short, stable name for this config: sweeps use it to skip runs already on disk."""
        d = {k: v for k, v in self.to_dict().items() if not (k in ADDED_AT_DEFAULT and v == ADDED_AT_DEFAULT[k])}
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


#: fields added after the first results were recorded: left out of run_id() at these defaults, so that a config
#: that does not use them keeps the id (and the sweep folder) it had before they existed
ADDED_AT_DEFAULT: dict[str, Any] = {
    "profile": False,
    "precision": "fp32",
    "checkpoint_activations": False,
    "checkpoint_every": None,
    "ps_recovery": "none",
    "compression": "none",
    "powersgd_rank": 1,
    "topk_ratio": 0.01,
    "local_steps": 1,
}

#: one line per field: `dpkit run --help` shows it (tests check that every field has one)
FIELD_HELP: dict[str, str] = {
    "parallelism": "how the work is split: " + " | ".join(PARALLELISMS),
    "world_size": "training ranks (workers, stages or tensor shards); parameter servers come on top",
    "global_batch": "samples per optimizer step, over all ranks",
    "steps": "optimizer steps to run",
    "warmup": "first steps left out of the timing summary",
    "seed": "seed of the model's initialisation and of the data order",
    "model": " | ".join(MODELS),
    "hidden": "model width (default: " + ", ".join(f"{m} {d['hidden']}" for m, d in MODEL_DEFAULTS.items()) + ")",
    "layers": "hidden blocks between the input block and the head (default: 4)",
    "seq_len": "tokens per sample (transformer)",
    "freeze": "parameter-name prefixes not to train, comma-separated (e.g. embed,block0)",
    "tie_weights": "share the transformer's embedding and output-head weight",
    "optimizer": " | ".join(OPTIMIZERS),
    "lr": "learning rate, a finite number > 0",
    "momentum": "SGD momentum, in [0, 1)",
    "grad_accum": "micro-steps whose gradients are accumulated per optimizer step",
    "precision": "fp32 | bf16 (autocast, fp32 master weights; parallelism none or data)",
    "checkpoint_activations": "recompute each hidden block in the backward instead of keeping its activations",
    "straggler_ranks": "ranks slowed down at every step, comma-separated",
    "straggler_delay_s": "seconds each straggler waits per step, a finite number >= 0",
    "fail_rank": "fault injection: this rank kills itself (SIGKILL) when step fail_at_step begins (none: no fault)",
    "fail_at_step": "the step at whose start fail_rank dies",
    "checkpoint_every": "write the whole training state every this many steps, to resume from (none: never)",
    "device": "where ranks compute: " + " | ".join(DEVICES) + " (auto: CUDA when there is a GPU)",
    "backend": "torch.distributed backend: " + " | ".join(BACKENDS),
    "threads_per_rank": "torch threads per rank (default 1: one rank = one core)",
    "gloo_loop": "scheduling of gloo's busy-polling I/O thread: "
    + " | ".join(GLOO_LOOP_MODES)
    + " (default: $DPKIT_GLOO_LOOP, else low)",
    "timeout_s": "seconds before an unfinished run is killed, a finite number > 0 and <= 86400 (one day)",
    "link": "emulated network every message is paced by: " + " | ".join(LINK_CHOICES) + " (none: the machine as it is)",
    "link_latency_s": "link='custom': latency per message in seconds, a finite number > 0",
    "link_bandwidth_Bps": "link='custom': bandwidth per direction in bytes/s, a finite number > 0",
    "ranks_per_node": "emulated nodes: ranks r*k..r*k+k-1 share node r (link between nodes); must divide the processes",
    "intra_node_link": "emulated nodes: the link within a node, a preset or none (ranks_per_node > 1)",
    "profile": "record torch.profiler's ops per rank into trace.json, on dpkit's time axis (slower: for reading a trace)",
    "eval_every": "held-out loss and accuracy every this many steps, at the start and at the end (none: never)",
    "target_accuracy": "stop at the first evaluation whose held-out accuracy reaches this, in (0, 1] (needs eval_every)",
    "lr_scaling": "learning rate x f(global_batch / base_batch): " + " | ".join(LR_SCALINGS),
    "base_batch": "the global batch lr was tuned for (default: global_batch, so no scaling)",
    "warmup_steps": "linear learning-rate warm-up steps: lr x min(1, (step + 1) / warmup_steps) (0: none)",
}

#: the lowest value of every integer field (fail_rank's highest depends on the run: validate() checks it)
INT_MINIMUMS: dict[str, int] = {
    "world_size": 1, "global_batch": 1, "steps": 1, "warmup": 0, "seed": 0, "hidden": 1, "layers": 1, "seq_len": 2,
    "grad_accum": 1, "fail_rank": 0, "fail_at_step": 0, "threads_per_rank": 1, "ranks_per_node": 1, "eval_every": 1,
    "base_batch": 1, "checkpoint_every": 1, "warmup_steps": 0,
}  # fmt: skip

#: what every float field allows, in words and as a test; a float is also always finite (inf trains to NaN or never ends)
FLOAT_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "lr": ("a finite number > 0", lambda v: v > 0),
    "momentum": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "straggler_delay_s": ("a finite number of seconds >= 0", lambda v: v >= 0),
    "timeout_s": ("a finite number of seconds > 0 and <= 86400 (one day)", lambda v: 0 < v <= 86400),
    "link_latency_s": ("None, or with link='custom' a finite number of seconds > 0", lambda v: v is None or v > 0),
    "link_bandwidth_Bps": ("None, or with link='custom' a finite number of bytes/s > 0", lambda v: v is None or v > 0),
    "target_accuracy": ("None, or with eval_every a finite number in (0, 1]", lambda v: v is None or 0 < v <= 1),
}

#: what each tuple field holds, said when a value is not a tuple of that
TUPLE_ALLOWED: dict[str, str] = {
    "freeze": "a tuple of parameter-name prefixes such as ('embed',)",
    "straggler_ranks": "a tuple of rank numbers (integers >= 0) such as (1,)",
}


# ---- the strategies' knobs: RunConfig and the tables above learn them from the registered specs ----------
_KNOBS_AFTER = "grad_accum"  # the knobs' place among the fields (where the strategy fields always were)
#: the fields of RunConfig's own class body, as written there (captured once, before any knob is added)
_COMMON_FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(RunConfig)
#: what @dataclass writes into a class, removed before the class is made again with other knobs
_DATACLASS_MADE = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__", "__match_args__")
_COMMON_TABLES: dict[str, dict[str, Any]] = {
    "help": dict(FIELD_HELP),
    "int": dict(INT_MINIMUMS),
    "float": dict(FLOAT_RANGES),
    "tuple": dict(TUPLE_ALLOWED),
}
_knob_names: list[str] = []  # the knobs RunConfig has now


def _with_knobs(cls: type[RunConfig], knobs: dict[str, Knob]) -> None:
    """Make `cls` (in place, so every `from dpkit.config import RunConfig` sees it) the frozen dataclass of the
    common fields plus `knobs`, and the tables (FIELD_HELP, INT_MINIMUMS, FLOAT_RANGES, TUPLE_ALLOWED) theirs."""
    clash = sorted(set(knobs) & {f.name for f in _COMMON_FIELDS})
    if clash:
        raise ValueError(f"a strategy knob may not reuse a RunConfig field every run has: {', '.join(clash)}")
    for name in [*_DATACLASS_MADE, *_knob_names]:
        if name in vars(cls):
            delattr(cls, name)
    annotations: dict[str, Any] = {}
    for f in _COMMON_FIELDS:
        annotations[f.name] = f.type
        setattr(cls, f.name, dataclasses.field(default=f.default, default_factory=f.default_factory))
        if f.name == _KNOBS_AFTER:
            for knob in knobs.values():
                annotations[knob.name] = knob.type
                setattr(cls, knob.name, knob.default)
    cls.__annotations__ = annotations
    dataclass(frozen=True)(cls)
    _refuse_unknown_fields(cls)
    _knob_names[:] = list(knobs)
    _field_types.cache_clear()
    tables: tuple[tuple[dict[str, Any], str, Callable[[Knob], Any], Callable[[Knob], bool]], ...] = (
        (FIELD_HELP, "help", lambda k: k.help, lambda k: True),
        (INT_MINIMUMS, "int", lambda k: k.minimum, lambda k: _base_type(k.type) is int),
        (
            FLOAT_RANGES,
            "float",
            lambda k: (k.allowed or "a finite number", k.check or (lambda v: True)),
            lambda k: _base_type(k.type) is float,
        ),
        (TUPLE_ALLOWED, "tuple", lambda k: k.allowed or "a tuple", lambda k: typing.get_origin(k.type) is tuple),
    )
    for table, common, entry, applies in tables:
        table.clear()
        table.update(_COMMON_TABLES[common])
        table.update({k.name: entry(k) for k in knobs.values() if applies(k)})
    _field_types()  # fails now, not at the first RunConfig, for a knob of a type nothing checks


def _base_type(hint: Any) -> Any:
    """int for `int | None`, the hint itself otherwise."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is not tuple and len(args) == 1 else hint


def register_strategy(spec: StrategySpec) -> None:
    """Add a strategy kept outside the package (a notebook's, a test's): RunConfig gains its knobs (checked, in
    `dpkit run`'s options), `parallelism` its name, and run() builds it. The strategies in the package are listed
    in dpkit/strategies/registry.py instead. Ranks started by forkserver or spawn know only that list; with
    DPKIT_START_METHOD=fork they inherit this registration too."""
    registry.add(spec)
    try:
        _with_knobs(RunConfig, registry.knobs())
    except Exception:
        registry.remove(spec)
        _with_knobs(RunConfig, registry.knobs())
        raise


def unregister_strategy(spec: StrategySpec) -> None:
    """Remove a strategy added by register_strategy, and its knobs from RunConfig."""
    registry.remove(spec)
    _with_knobs(RunConfig, registry.knobs())


@contextlib.contextmanager
def strategy_registered(spec: StrategySpec) -> Iterator[StrategySpec]:
    """`with strategy_registered(MySpec()):` the strategy and its knobs exist inside the block only."""
    register_strategy(spec)
    try:
        yield spec
    finally:
        unregister_strategy(spec)


@functools.cache
def _field_types() -> dict[str, tuple[Any, bool]]:
    """Each field's (type, whether None is allowed) from RunConfig's annotations; a tuple field's type is (tuple, item).
    A field of a type with no check here fails loudly, so a new field cannot slip past the type checks."""
    out: dict[str, tuple[Any, bool]] = {}
    for name, hint in typing.get_type_hints(RunConfig).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        if optional:
            (hint,) = [a for a in args if a is not type(None)]
        if typing.get_origin(hint) is tuple:
            hint = (tuple, typing.get_args(hint)[0])
        elif hint not in (int, float, str, bool):
            raise TypeError(f"RunConfig.{name}: no type check for {hint!r}")
        out[name] = (hint, optional)
    return out


def _is_int(value: Any) -> bool:
    """Python and numpy integers; bool is an int to Python, but True is not a count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _not_text(value: Any) -> str:
    return ", not a string" if isinstance(value, str) else ""


def _normalised(name: str, value: Any) -> Any:
    """`value` as the plain Python type of field `name` (numpy scalars and lists accepted, so sweeps over
    np.arange work and to_dict stays JSON), or ValueError naming the field, the value and what is allowed."""
    kind, optional = _field_types()[name]
    if value is None and optional:
        return None
    if kind is int:
        if not _is_int(value):
            _fail(name, value, f"{'None or ' if optional else ''}an integer >= {INT_MINIMUMS.get(name, 0)}{_not_text(value)}")
        return int(value)
    if kind is float:
        if _is_int(value):
            return int(value)  # an int stays an int, so the run_id of existing configs does not change
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        _fail(name, value, FLOAT_RANGES.get(name, ("a finite number",))[0] + _not_text(value))
    if kind is bool:
        if not isinstance(value, (bool, np.bool_)):
            _fail(name, value, "True or False")
        return bool(value)
    if kind is str:
        return str(value) if isinstance(value, str) else value  # any other value fails its choice check in validate()
    item = kind[1]
    if name == "freeze":
        value = (value,) if isinstance(value, str) else value  # one prefix
        if isinstance(value, (tuple, list)) and list(value) == [""]:
            value = ()  # an empty text box freezes nothing
    if not isinstance(value, (tuple, list, np.ndarray)) or (isinstance(value, np.ndarray) and value.ndim != 1):
        _fail(name, value, TUPLE_ALLOWED.get(name, "a tuple"))
    if item is int:
        if not all(_is_int(v) for v in value):
            _fail(name, value, TUPLE_ALLOWED.get(name, "a tuple"))
        return tuple(int(v) for v in value)
    if not all(isinstance(v, str) and v for v in value):
        _fail(name, value, TUPLE_ALLOWED.get(name, "a tuple"))
    return tuple(str(v) for v in value)


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise config_error(field_name, value, allowed)


def _choice(cfg: RunConfig, name: str, choices: Sequence[Any]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        _fail(name, value, "choose one of " + ", ".join(repr(c) for c in choices))


def validate(cfg: RunConfig) -> None:
    """Raise ValueError for the first bad field; called by RunConfig itself, so no bad config exists.

    Types are already checked and normalised (RunConfig.__post_init__: `_normalised`), so only values are here.

    Fields every run has are checked here; the strategy the config selects checks its own knobs
    (its spec's knobs' allowed values above, then spec.validate), so no check here depends on a strategy's name.
    """
    for name, choices in (
        ("parallelism", PARALLELISMS),
        *((k.name, k.choices) for k in registry.knobs().values() if k.choices),
        ("model", MODELS),
        ("optimizer", OPTIMIZERS),
        ("device", DEVICES),
        ("backend", BACKENDS),
        ("gloo_loop", GLOO_LOOP_MODES),
        ("lr_scaling", LR_SCALINGS),
    ):
        _choice(cfg, name, choices)
    for name, low in INT_MINIMUMS.items():
        value = getattr(cfg, name)
        if value is not None and value < low and name != "fail_rank":  # fail_rank: against the process count below
            _fail(name, value, f"{'None or ' if _field_types()[name][1] else ''}an integer >= {low}")
    if cfg.warmup >= cfg.steps:
        _fail("warmup", cfg.warmup, f"fewer warm-up steps than steps={cfg.steps} (some steps must be timed)")
    for name, (allowed, ok) in FLOAT_RANGES.items():
        if not ok(getattr(cfg, name)):
            _fail(name, getattr(cfg, name), allowed)
    spec = spec_for(cfg)
    for other in SPECS:
        for knob, default in other.exclusive_knobs.items():
            if other is not spec and getattr(cfg, knob) != default:
                _fail(knob, getattr(cfg, knob), f"{default!r} unless the run is {other.description}")
        for knob, values in other.exclusive_values.items():
            if other is not spec and getattr(cfg, knob) in values:
                _fail(knob, getattr(cfg, knob), f"{getattr(cfg, knob)!r} only when the run is {other.description}")
    nprocs = spec.num_processes(cfg)
    if not all(0 <= r < nprocs for r in cfg.straggler_ranks):
        _fail("straggler_ranks", cfg.straggler_ranks, f"rank numbers in 0..{nprocs - 1}")
    if cfg.fail_rank is not None:
        if not 0 <= cfg.fail_rank < nprocs:
            _fail("fail_rank", cfg.fail_rank, f"None or a rank number in 0..{nprocs - 1}")
        if not cfg.fail_at_step < cfg.steps:
            _fail("fail_at_step", cfg.fail_at_step, f"a step number in 0..{cfg.steps - 1}")
    if nprocs > max_local_ranks() and "TORCHELASTIC_RUN_ID" not in os.environ:
        _fail(
            "world_size",
            cfg.world_size,
            f"at most {max_local_ranks()} processes on this machine ({cores_available()} cores; "
            f"this config needs {nprocs}); use torchrun across machines for more",
        )
    split, what = spec.batch_split(cfg)
    if cfg.global_batch % split:
        _fail("global_batch", cfg.global_batch, f"a multiple of {what} = {split}, so every shard has the same size")
    if cfg.target_accuracy is not None and cfg.eval_every is None:
        _fail("target_accuracy", cfg.target_accuracy, "None unless eval_every is set (the target is checked at evaluations)")
    validate_link(cfg)
    _validate_model(cfg)
    validate_precision(cfg)
    spec.validate(cfg)


_with_knobs(RunConfig, registry.knobs())


def _validate_model(cfg: RunConfig) -> None:
    if cfg.tie_weights and cfg.model != "transformer":
        _fail("tie_weights", cfg.tie_weights, "True only for model='transformer' (ties embedding and output head)")
    if cfg.model == "transformer" and cfg.model_hidden % 4:
        _fail("hidden", cfg.model_hidden, "a multiple of 4 for the transformer (4 attention heads)")
    if cfg.freeze:  # checked here, not when the ranks build the model: a typo must not cost a launch
        layout = model_layout(cfg)
        names, blocks = [name for name, _ in layout.params], layout.blocks
        shown = ", ".join(map(repr, blocks if len(blocks) <= 6 else [*blocks[:3], "...", blocks[-1]])).replace("'...'", "...")
        for prefix in cfg.freeze:
            if not any(name.startswith(prefix) for name in names):
                _fail(
                    "freeze",
                    cfg.freeze,
                    f"prefixes of this {cfg.model}'s parameter names, such as {shown} or {names[0]!r} "
                    f"({prefix!r} matches no parameter)",
                )
        if not trainable_names(cfg):
            _fail("freeze", cfg.freeze, "prefixes that leave at least one parameter to train (these freeze every one)")
