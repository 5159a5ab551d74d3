"""Issue 18 (items 5 and 6): a bad value is refused when the RunConfig is made, with the field, the value and
what is allowed, never by a rank after the launch or as a bare Python error; the CLI says it in one line."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpkit import RunConfig
from dpkit.config import FIELD_HELP, FLOAT_RANGES, INT_MINIMUMS, TUPLE_ALLOWED, _field_types
from dpkit.workloads import _layout

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"hidden": 16, "layers": 1, "global_batch": 8, "steps": 2}  # mlp with 3 blocks: embed, block0, head
PIPE = {"parallelism": "pipeline", "world_size": 2, "layers": 2}  # 4 blocks over 2 stages
DATA = {"parallelism": "data", "world_size": 2}
PS = {"parallelism": "data", "sync": "ps", "world_size": 2}


# ---- every value the issue found, refused at construction ------------------------------------
@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        # non-finite numbers: inf trains to NaN, never times out, or sleeps forever
        ({"lr": math.inf}, "lr", "a finite number > 0"),
        ({"bucket_mb": math.inf}, "bucket_mb", "a finite number of MiB > 0"),
        ({"timeout_s": math.inf}, "timeout_s", "a finite number of seconds > 0"),
        ({"straggler_delay_s": math.nan}, "straggler_delay_s", "a finite number of seconds >= 0"),
        ({"straggler_delay_s": math.inf}, "straggler_delay_s", "a finite number of seconds >= 0"),
        # strings and None where a number is expected: accepted, or a bare TypeError
        ({"lr": "0.1"}, "lr", "a finite number > 0, not a string"),
        ({"lr": None}, "lr", "a finite number > 0"),
        ({"momentum": "0.5"}, "momentum", "a number in [0, 1), not a string"),
        ({"timeout_s": "60"}, "timeout_s", "a finite number of seconds > 0 and <= 86400 (one day), not a string"),
        # bool is an int to Python, not a number of anything here
        ({"lr": True}, "lr", "a finite number > 0"),
        ({"momentum": False}, "momentum", "a number in [0, 1)"),
        ({"model": "transformer", "tie_weights": 1}, "tie_weights", "True or False"),
        ({**DATA, "straggler_ranks": (True,)}, "straggler_ranks", "a tuple of rank numbers"),
        ({"fail_at_step": -1}, "fail_at_step", "an integer >= 0"),
        # tuples of the wrong thing: started the ranks, or a bare TypeError
        ({**PIPE, "stage_layers": (2.0, 2.0)}, "stage_layers", "a tuple of block counts per pipeline stage"),
        ({**PIPE, "stage_layers": 4}, "stage_layers", "a tuple of block counts per pipeline stage"),
        ({"stage_layers": 4}, "stage_layers", "a tuple of block counts per pipeline stage"),
        ({**DATA, "straggler_ranks": 1}, "straggler_ranks", "a tuple of rank numbers (integers >= 0) such as (1,)"),
        ({"freeze": 5}, "freeze", "a tuple of parameter-name prefixes such as ('embed',)"),
        # parameter names: checked against the model before any rank builds it
        ({"freeze": ("nosuchlayer",)}, "freeze", "such as 'embed', 'block0'"),
        ({"freeze": ("embed", "nosuch")}, "freeze", "'nosuch' matches no parameter"),
        ({"model": "transformer", "freeze": ("embed.tok", "head.ln", "bloc0")}, "freeze", "'bloc0' matches no parameter"),
        ({**SMALL, "freeze": ("embed", "block", "head")}, "freeze", "leave at least one parameter to train"),
        ({**SMALL, **PIPE, "layers": 1, "stage_layers": (1, 2), "freeze": ("embed",)}, "freeze", "stage 0, ['embed'], has none"),
        ({**SMALL, **PIPE, "layers": 1, "world_size": 3, "freeze": ("head",)}, "freeze", "stage 2, ['head'], has none"),
        # a parameter server owns whole tensors: more servers than trainable tensors leaves one with nothing
        (
            {**SMALL, **PS, "num_servers": 3, "freeze": ("embed", "block0")},
            "num_servers",
            "at most 2, the trainable parameter tensors",
        ),
    ],
)
def test_bad_value_is_refused_at_construction(changes: dict, field: str, allowed: str) -> None:
    with pytest.raises(ValueError) as info:
        RunConfig(**changes)
    message = str(info.value)
    assert f"RunConfig.{field}=" in message, message
    assert allowed in message, message


def test_a_bad_gloo_loop_variable_names_the_field_it_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPKIT_GLOO_LOOP", "bogus")
    with pytest.raises(ValueError) as info:
        RunConfig()
    assert "DPKIT_GLOO_LOOP='bogus'" in str(info.value) and "RunConfig.gloo_loop" in str(info.value)
    assert "['low', 'idle', 'normal']" in str(info.value)
    assert RunConfig(gloo_loop="normal").gloo_loop == "normal"  # an explicit value does not read it


# ---- every numeric field: numbers only, of the right kind --------------------------------------
NUMERIC = sorted(name for name, (kind, _) in _field_types().items() if kind in (int, float))


@pytest.mark.parametrize("field", NUMERIC)
@pytest.mark.parametrize("value", ["1", True, [1]], ids=["str", "bool", "list"])
def test_every_numeric_field_refuses_what_is_not_a_number(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"RunConfig\.{field}=.* is not allowed: "):
        RunConfig(**{field: value})


@pytest.mark.parametrize("field", sorted(name for name, (kind, _) in _field_types().items() if kind is float))
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_field_refuses_what_is_not_finite(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"RunConfig\.{field}=.* is not allowed: (?:.*finite|a number in)"):
        RunConfig(**{field: value})


@pytest.mark.parametrize("field", sorted(name for name, (kind, _) in _field_types().items() if kind is int))
def test_every_int_field_refuses_a_float(field: str) -> None:
    with pytest.raises(ValueError, match=rf"RunConfig\.{field}=2\.0 is not allowed: .*an integer >= "):
        RunConfig(**{field: 2.0})


def test_every_field_has_a_type_check_and_its_allowed_values() -> None:
    kinds = _field_types()  # raises for a field whose type nothing checks
    assert set(INT_MINIMUMS) == {n for n, (k, _) in kinds.items() if k is int}
    assert set(FLOAT_RANGES) == {n for n, (k, _) in kinds.items() if k is float}
    assert set(TUPLE_ALLOWED) == {n for n, (k, _) in kinds.items() if isinstance(k, tuple)}


# ---- unknown keywords ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda: RunConfig(worldsize=2), lambda: RunConfig().replace(worldsize=2), lambda: RunConfig.from_dict({"worldsize": 2})],
    ids=["constructor", "replace", "from_dict"],
)
def test_unknown_keyword_lists_the_fields_and_the_likely_one(make) -> None:
    with pytest.raises(TypeError) as info:  # what Python raises for an unexpected keyword ...
        make()
    assert isinstance(info.value, ValueError)  # ... and what every other bad config raises
    message = str(info.value)
    assert "'worldsize'" in message and "did you mean 'world_size'?" in message
    for f in dataclasses.fields(RunConfig):
        assert f.name in message


def test_dataclass_machinery_still_works() -> None:
    cfg = RunConfig(parallelism="data", world_size=2, freeze=("embed",), straggler_ranks=[1])
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert dataclasses.replace(cfg, world_size=1, parallelism="none", straggler_ranks=()).world_size == 1
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert list(inspect.signature(RunConfig).parameters) == [f.name for f in dataclasses.fields(RunConfig)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.world_size = 4  # type: ignore[misc]


# ---- numpy values: accepted, stored as plain Python -----------------------------------------
def test_numpy_scalars_are_accepted_and_stored_as_python_numbers() -> None:
    cfg = RunConfig(
        parallelism="data", world_size=np.int64(2), hidden=np.int32(32), lr=np.float32(0.5), momentum=np.float64(0.5),
        straggler_ranks=np.array([1]), straggler_delay_s=np.float16(0.0), tie_weights=np.bool_(False),
    )  # fmt: skip
    plain = RunConfig(parallelism="data", world_size=2, hidden=32, lr=0.5, momentum=0.5, straggler_ranks=(1,))
    assert cfg == plain and cfg.run_id() == plain.run_id()
    for value in cfg.to_dict().values():
        assert type(value) in (int, float, str, bool, list, type(None)), value
    json.dumps(cfg.to_dict())  # the result folder's config.json
    assert type(cfg.world_size) is int and type(cfg.lr) is float and cfg.straggler_ranks == (1,)


def test_sweep_over_a_numpy_array_makes_plain_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    import dpkit.api

    class Stop(Exception):
        """Ends the sweep at its first run, before any process starts."""

    seen: list[RunConfig] = []

    def fake_run(cfg: RunConfig, out=None):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(dpkit.api, "run", fake_run)
    with pytest.raises(Stop):
        dpkit.api.sweep(RunConfig(parallelism="data"), progress=False, world_size=np.array([1, 2]))
    assert seen and type(seen[0].world_size) is int and seen[0].world_size == 1


# ---- decisions recorded ----------------------------------------------------------------------
def test_more_servers_than_workers_is_allowed_while_every_server_has_a_shard() -> None:
    """Servers shard the parameters, not the workers: 3 servers for 2 workers each take a third of the
    tensors (tests/test_parameter_server.py trains it to the single-process result). A server without a
    tensor is the waste, and is refused (above)."""
    cfg = RunConfig(**PS, num_servers=3)
    assert cfg.num_processes == 5


def test_an_empty_freeze_text_freezes_nothing() -> None:
    assert RunConfig(freeze="").freeze == () and RunConfig(freeze=[""]).freeze == ()
    assert RunConfig(freeze="embed").freeze == ("embed",)


# ---- cost of the checks --------------------------------------------------------------------
BUSY_FOR_TIMING = 1.0  # load average per core above which a 20 ms wall-clock bound says more about the machine


@pytest.mark.slow
def test_construction_is_fast() -> None:
    """A wall-clock bound, so in the slow tier, and skipped on a busy machine."""
    one = os.getloadavg()[0]
    if one > BUSY_FOR_TIMING * (os.cpu_count() or 1):
        pytest.skip(f"load average {one:.1f} on {os.cpu_count()} cores: too busy to time a 20 ms bound")
    configs = [
        {"model": "transformer", "freeze": ("embed.pos",)},
        {"model": "cnn", "parallelism": "pipeline", "world_size": 3, "freeze": ("block0",)},
        {"model": "mlp", "parallelism": "data", "sync": "ps", "world_size": 2, "num_servers": 3, "freeze": ("embed",)},
        {"parallelism": "data", "world_size": 2},
    ]
    for kw in configs:
        cold = []
        for _ in range(5):  # the best of 5: the machine may be busy with other work
            _layout.cache_clear()  # the first config of its shape in a process: builds the layout
            start = time.perf_counter()
            RunConfig(**kw)
            cold.append(time.perf_counter() - start)
        assert min(cold) < 0.020, (kw, cold)


def test_construction_leaves_the_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _layout.cache_clear()
    RunConfig(model="transformer", freeze=("embed",))  # builds the model's layout, which seeds torch
    assert torch.equal(torch.rand(3), expected)


# ---- the command line --------------------------------------------------------------------------
def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dpkit.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, **(env or {})},
    )  # fmt: skip


TINY = ("--hidden", "8", "--steps", "2", "--global-batch", "8", "--threads-per-rank", "1", "--timeout-s", "60")


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["run", *TINY, "--timeout-s", "inf"], {}, "RunConfig.timeout_s=inf"),
        (["run", *TINY, "--freeze", "nosuch"], {}, "RunConfig.freeze=('nosuch',)"),
        (["run", *TINY, "--straggler-delay-s", "inf"], {}, "RunConfig.straggler_delay_s=inf"),
        (["run", *TINY], {"DPKIT_GLOO_LOOP": "bogus"}, "RunConfig.gloo_loop"),
        (["run", *TINY, "--out", "afile"], {}, "--out afile is an existing file"),
        (["run", *TINY, "--out", "afile/run"], {}, "cannot be created"),
        (["run", *TINY, "--world-size", "two"], {}, "argument --world-size: 'two' is not an integer"),
        (["run", *TINY, "--lr", "fast"], {}, "argument --lr: 'fast' is not a number"),
        (["run", *TINY, "--straggler-ranks", "0,x"], {}, "argument --straggler-ranks: 'x' is not an integer"),
        (["run", *TINY, "--worldsize", "2"], {}, "did you mean --world-size?"),
        (["sweep", *TINY, "worldsize=1,2"], {}, "did you mean 'world_size'?"),
        (["sweep", *TINY, "--out", "afile", "world-size=1,2"], {}, "--out afile is an existing file"),
    ],
    ids=[
        "timeout-inf", "freeze-typo", "straggler-inf", "gloo-env", "out-file", "out-under-file", "int-option",
        "float-option", "tuple-option", "unknown-option", "unknown-grid-field", "sweep-out-file",
    ],
)  # fmt: skip
@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_nothing_runs(tmp_path: Path, args: list[str], env: dict, says: str) -> None:
    (tmp_path / "afile").write_text("keep me")
    done = _cli(*args, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpkit: error: "), done.stderr
    assert says in lines[0] and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no results/ folder, nothing written
    assert (tmp_path / "afile").read_text() == "keep me"


@pytest.mark.slow
def test_cli_help_describes_every_option_even_with_a_bad_environment(tmp_path: Path) -> None:
    done = _cli("run", "--help", cwd=tmp_path, env={"DPKIT_GLOO_LOOP": "bogus"})
    assert done.returncode == 0, done.stderr
    text = "".join(done.stdout.split())  # argparse wraps lines (also at hyphens): compare without whitespace
    for f in dataclasses.fields(RunConfig):
        assert FIELD_HELP.get(f.name, "").strip(), f"RunConfig.{f.name} has no help text"
        flag = "--" + f.name.replace("_", "-")
        assert flag in done.stdout, flag
        assert "".join(FIELD_HELP[f.name].split()) in text, f.name
