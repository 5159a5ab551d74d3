"""Shared test helpers: single-process references and parameter comparison.

Multi-process tests run on 2 cores: configs are small, and every rank gets one thread so results
do not depend on the machine's core count.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from dpkit import RunConfig, RunResult, run
from dpkit.strategies.registry import spec_for

_REFERENCES: dict[str, RunResult] = {}

# This session's runs take turns among themselves only (dpkit.runtime.queue): a colleague's test session on the
# same machine must not hold up this one's timing asserts, nor this one theirs. Callers it starts inherit it.
if "DPKIT_QUEUE_DIR" not in os.environ:
    os.environ["DPKIT_QUEUE_DIR"] = tempfile.mkdtemp(prefix="dpkit-test-queue-")
    atexit.register(shutil.rmtree, os.environ["DPKIT_QUEUE_DIR"], True)


def reference_config(cfg: RunConfig) -> RunConfig:
    """The single-process run that `cfg` must match: same model, data, batch, seed and optimizer."""
    return spec_for(cfg).baseline(cfg)


def reference(cfg: RunConfig) -> RunResult:
    """Cached single-process result for `cfg` (many parallel configs share one reference)."""
    ref_cfg = reference_config(cfg)
    key = ref_cfg.run_id()
    if key not in _REFERENCES:
        _REFERENCES[key] = run(ref_cfg)
    return _REFERENCES[key]


def assert_same_training(result: RunResult, ref: RunResult, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every step's loss and every final parameter agree with the reference to float tolerance."""
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(ref.losses), rtol=rtol, atol=atol)
    assert set(result.final_state_dict) == set(ref.final_state_dict), "state_dict keys differ from single-process"
    for name, expected in ref.final_state_dict.items():
        torch.testing.assert_close(
            result.final_state_dict[name], expected, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}"
        )


def assert_params_changed(result: RunResult, ref_init: RunResult) -> None:
    changed = [k for k, v in result.final_state_dict.items() if not torch.equal(v, ref_init.final_state_dict[k])]
    assert changed, "training changed no parameter"


SMALL = RunConfig(model="mlp", hidden=32, layers=3, global_batch=24, steps=3, warmup=1, threads_per_rank=1, timeout_s=60)


@pytest.fixture
def small() -> RunConfig:
    """A small, quick MLP config: 3 steps, one thread per rank."""
    return SMALL


# ---- processes: nothing may outlive a run --------------------------------------------
def descendants(pid: int) -> set[int]:
    """All live descendant pids of `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def rank_processes() -> set[int]:
    """Our live descendants except multiprocessing's forkserver and resource tracker (meant to stay)."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    helpers = {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }
    return descendants(os.getpid()) - helpers


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---- the fast tier -----------------------------------------------------------------------
# `pytest tests -m "not slow"` is the day-to-day tier. A test that starts subprocesses (the CLI, the demo, torchrun,
# a caller to kill), runs a benchmark or a grid of real runs, or asserts wall-clock time carries @pytest.mark.slow
# where it is defined (no list of names here: a renamed test would slip out of it); the full suite runs them all.
