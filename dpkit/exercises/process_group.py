"""Whatever a learner's function starts dies with its rank: each rank leads a process group of its own, and the
checker kills every such group after the launch (a forked child, a pool, would otherwise outlive the check and
keep the forkserver alive)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..runtime.launch import RankFailedError, RunTimeoutError, launch
from .source import write_module


def own_process_group(out_dir: str, rank: int) -> None:
    """Make this rank the leader of its own process group and say so (pid{rank}): whatever the learner's function
    starts (a forked child, a pool) is in that group, and the checker kills the whole group after the launch."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    Path(out_dir, f"pid{rank}").write_text(str(os.getpid()))


def kill_process_groups(out_dir: str | Path, world: int) -> None:
    """Parent side: kill what is left of every rank's process group (the learner's children)."""
    for rank in range(world):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(Path(out_dir, f"pid{rank}").read_text()), signal.SIGKILL)


def rows_from_child(target: str, fn: Callable, timeout_s: float, returns: str) -> tuple[list[dict] | None, str | None]:
    """Run `target` ("module:function", a launch() target that checks the learner's `fn` and writes rows.json) in one
    child process under `timeout_s`: (the rows, None), or (None, what went wrong, in words). `returns` says what
    the learner's function should have returned, for the message when it ended its own process instead."""
    with tempfile.TemporaryDirectory(prefix="dpkit-exercise-") as folder:
        payload = {"folder": folder, "function": [write_module(fn, folder), fn.__name__]}
        try:
            launch(target, payload, 1, folder, threads_per_rank=1, timeout_s=timeout_s)
            found = Path(folder, "rows.json")
            if found.exists():
                return json.loads(found.read_text()), None
            return None, f"your function ended its own process (os._exit or a similar call?) instead of returning {returns}."
        except RunTimeoutError:
            return None, (
                f"your function did not return within {timeout_s:g} s: look for a loop that never ends "
                "(check(..., timeout_s=...) gives it longer)."
            )
        except RankFailedError as exc:
            return None, f"checking your function failed: {str(exc).splitlines()[0]}"
        finally:
            kill_process_groups(folder, 1)
