"""Start N ranks on this machine, watch them, and never leave one behind.

Ranks are forked from a forkserver that has torch preloaded (about 0.1 s per run instead of ~5 s
for spawn, which re-imports torch in every child); the worker function is importable from dpkit,
never a closure from the notebook. Rendezvous is a TCPStore the parent opens on 127.0.0.1 port 0
(the OS picks a free port and the parent holds it, so two runs at once cannot collide). A rank
that raises writes its traceback to a file; the parent raises RankFailedError naming it. A rank
killed from outside, or a run past its timeout, raises too; in every case all ranks are killed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .gloo_loop import check_mode, default_mode

GRACE_S = 1.0  # after a first failure, how long to collect the other ranks' errors
_PRELOAD = ["dpkit.runtime.rank", "torch._dynamo"]  # optimizers import dynamo lazily: ~1 s per rank if not preloaded


class RankFailedError(RuntimeError):
    """A rank raised or was killed; `rank`, `role`, `exitcode` and the rank's `traceback` say which and why."""

    def __init__(self, message: str, rank: int, role: str, exitcode: int | None, traceback: str) -> None:
        super().__init__(message)
        self.rank, self.role, self.exitcode, self.traceback = rank, role, exitcode, traceback


class RunTimeoutError(TimeoutError):
    """The run did not finish within timeout_s; `ranks` lists those still running (now killed)."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


def default_start_method() -> str:
    return os.environ.get("DPKIT_START_METHOD") or ("forkserver" if sys.platform != "win32" else "spawn")


def mp_context(method: str | None = None) -> mp.context.BaseContext:
    method = method or default_start_method()
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def choose_backend(device: str, backend: str, nprocs: int) -> tuple[str, str]:
    """(backend, device kind): NCCL only when every rank can own a GPU; otherwise gloo, sharing a GPU if any.

    Counting GPUs does not create a CUDA context in the parent.
    """
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus == 0:
        raise ValueError("RunConfig.device='cuda' is not allowed here: no CUDA device is visible; use 'auto' or 'cpu'")
    kind = "cuda" if gpus and device != "cpu" else "cpu"
    if backend == "nccl":
        if kind != "cuda" or gpus < nprocs:
            raise ValueError(
                f"RunConfig.backend='nccl' needs one GPU per rank: {nprocs} ranks, {gpus} GPUs; use 'auto' or 'gloo'"
            )
        return "nccl", kind
    if backend == "gloo":
        return "gloo", kind
    return ("nccl" if kind == "cuda" and gpus >= nprocs else "gloo"), kind


def default_threads(nprocs: int) -> int:
    """cores / ranks, at least 1: ranks on one machine share its cores."""
    return max(1, (os.cpu_count() or 1) // nprocs)


def launch(
    target: str,
    payload: dict,
    nprocs: int,
    out_dir: str | Path,
    *,
    backend: str = "gloo",
    threads_per_rank: int | None = None,
    timeout_s: float = 300.0,
    roles: list[str] | None = None,
    start_method: str | None = None,
    gloo_loop: str | None = None,
) -> None:
    """Run `target` ("module:function", called as fn(payload, rank, world, out_dir)) on nprocs ranks.
    `gloo_loop`: how the ranks' gloo I/O threads are scheduled (dpkit.gloo_loop; default $DPKIT_GLOO_LOOP or "idle")."""
    gloo_loop = check_mode(gloo_loop, "launch(gloo_loop)") if gloo_loop is not None else default_mode()
    ctx = mp_context(start_method)
    threads = threads_per_rank or default_threads(nprocs)
    roles = roles or [f"rank {r}" for r in range(nprocs)]
    store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    procs: list = []
    with tempfile.TemporaryDirectory(prefix="dpkit-errors-") as err_dir:
        try:
            with _main_not_reimported():
                for rank in range(nprocs):
                    args = (
                        target,
                        payload,
                        rank,
                        nprocs,
                        store.port,
                        backend,
                        threads,
                        str(out_dir),
                        err_dir,
                        timeout_s,
                        gloo_loop,
                    )
                    p = ctx.Process(target=_entry, args=args, name=f"dpkit-rank{rank}", daemon=True)
                    p.start()
                    procs.append(p)
            _supervise(procs, Path(err_dir), time.monotonic() + timeout_s, roles, timeout_s)
        finally:
            _kill_all(procs)
            del store


@contextlib.contextmanager
def _main_not_reimported():
    """Hide __main__'s file/spec while starting ranks: the rank code lives in dpkit, so a user's
    script (or '<stdin>', or a notebook) is never re-run in each rank, guard or no guard."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def _entry(*args) -> None:
    from .rank import rank_entry  # preloaded in the forkserver

    rank_entry(*args)


def _kill_all(procs: list) -> None:
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=10)


def _supervise(procs: list, err_dir: Path, deadline: float, roles: list[str], timeout_s: float) -> None:
    first_failure = None
    while True:
        codes = [p.exitcode for p in procs]
        if all(c == 0 for c in codes):
            return
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        now = time.monotonic()
        if failed and first_failure is None:
            first_failure = now
        if failed and (all(c is not None for c in codes) or now - first_failure > GRACE_S):
            raise _failure(procs, failed, err_dir, roles)
        if now > deadline:
            running = [r for r, c in enumerate(codes) if c is None]
            names = ", ".join(f"{r} ({roles[r]})" for r in running)
            raise RunTimeoutError(
                f"run timed out after {timeout_s:g} s: rank(s) {names} still running and now killed. "
                "A rank waiting on a collective that another rank never enters hangs like this; "
                "raise RunConfig.timeout_s if the run is just slow.",
                running,
            )
        live = [p.sentinel for p in procs if p.exitcode is None]
        multiprocessing.connection.wait(live, timeout=0.05)


def _failure(procs: list, failed: list[int], err_dir: Path, roles: list[str]) -> RankFailedError:
    reports = {}
    for r in failed:
        path = err_dir / f"rank{r}.json"
        if path.exists():
            reports[r] = json.loads(path.read_text())
    killed = [r for r in failed if r not in reports and procs[r].exitcode < 0]
    if killed:  # killed from outside: the others' errors are only its consequences
        root = killed[0]
        sig = signal.Signals(-procs[root].exitcode).name
        why = f"was killed by signal {sig} (no traceback: the process was stopped from outside, e.g. kill -9 or the OOM killer)"
        tb = ""
    elif reports:
        root = min(reports, key=lambda r: reports[r]["time"])
        tb = reports[root]["traceback"]
        why = f"raised {reports[root]['error']}"
    else:
        root = failed[0]
        why, tb = f"exited with code {procs[root].exitcode} without a traceback", ""
    others = [r for r in failed if r != root]
    msg = f"rank {root} ({roles[root]}) {why}"
    if others:
        msg += f"; then rank(s) {others} failed too (usually a consequence: their peer went away)"
    if tb:
        msg += f"\n--- traceback of rank {root} ---\n{tb}"
    return RankFailedError(msg, root, roles[root], procs[root].exitcode, tb)
