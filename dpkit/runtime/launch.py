"""Start N ranks on this machine, watch them, and never leave one behind.

Ranks are forked from a forkserver that has torch preloaded (about 0.1 s per run instead of ~5 s
for spawn, which re-imports torch in every child); the worker function is importable from dpkit,
never a closure from the notebook. Rendezvous is a TCPStore on a socket the parent binds to
127.0.0.1 port 0 (the OS picks a free port and the parent holds it, so two runs at once cannot
collide, and nothing listens beyond this machine). Each rank gets one end of a pipe whose other
end only the parent holds: a rank that raises sends its traceback through it and the parent
raises RankFailedError naming it; a rank sees the pipe close when the parent dies (even by
kill -9) or gives up on the run, and exits at once. A rank killed from outside, or a run past its
timeout, raises too; in every case all ranks are killed. Before any of it, a run waits for its
turn on this machine (dpkit.runtime.queue), unless told not to.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .cores import default_threads
from .gloo_loop import check_mode, default_mode
from .queue import machine_turn

GRACE_S = 1.0  # after a first failure, how long to collect the other ranks' errors
WATCH_S = 0.5  # how often launch(watch=...) is asked whether the ranks are stuck
_PRELOAD = ["dpkit.runtime.rank", "torch._dynamo"]  # optimizers import dynamo lazily: ~1 s per rank if not preloaded


class RankFailedError(RuntimeError):
    """A rank raised or was killed; `rank`, `role`, `exitcode` and the rank's `traceback` say which and why."""

    def __init__(
        self, message: str, rank: int, role: str, exitcode: int | None, traceback: str, exitcodes: list | None = None
    ) -> None:
        super().__init__(message)
        self.rank, self.role, self.exitcode, self.traceback = rank, role, exitcode, traceback
        self.exitcodes = exitcodes or []  # every rank's exit code (None: killed by us at the end, still running)


class RunTimeoutError(TimeoutError):
    """The run did not finish within timeout_s; `ranks` lists those still running (now killed)."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


class RunStuckError(RunTimeoutError):
    """launch(watch=...) found the ranks stuck (a deadlock) before the timeout; the message says how."""


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


def run_cores(cfg) -> int:
    """The cores a RunConfig's run asks the queue for: processes x threads per rank (its core slot)."""
    nprocs = cfg.num_processes
    return nprocs * (cfg.threads_per_rank or default_threads(nprocs))


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
    out_dir_is_temporary: bool = False,
    queue: bool = True,
    watch: Callable[[], str | None] | None = None,
    grace_s: float = GRACE_S,
) -> None:
    """Run `target` ("module:function", called as fn(payload, rank, world, out_dir)) on nprocs ranks.
    `queue`: wait for this machine's turn first (dpkit.runtime.queue: runs from all processes on the machine
    take turns); False, or $DPKIT_QUEUE=off, starts at once. A caller already holding a turn is not queued again.
    `gloo_loop`: how the ranks' gloo I/O threads are scheduled (dpkit.gloo_loop; default $DPKIT_GLOO_LOOP or "low").
    `out_dir_is_temporary`: out_dir is a temporary folder that the caller deletes after the run; if the
    caller dies during the run (kill -9), the ranks delete it instead, so it is not left behind.
    `watch`: called about every WATCH_S while the ranks run; a text it returns ends the run as stuck
    (RunStuckError with that text): the exercise checker recognises a deadlock this way, long before the timeout.
    `grace_s`: after a first failure, how long the other ranks may take to end on their own (a run whose
    survivors hand over their state, ps_recovery='replicate', gives them longer) before all are killed.

    Interrupt-safe: Ctrl-C is held back while a rank is being forked (a process forked but not yet
    handed its arguments dies with a traceback), every rank is tracked before it is started, and the
    `finally` closes every rank's pipe, so even one that escaped tracking exits."""
    gloo_loop = check_mode(gloo_loop, "launch(gloo_loop)") if gloo_loop is not None else default_mode()
    ctx = mp_context(start_method)
    threads = threads_per_rank or default_threads(nprocs)
    roles = roles or [f"rank {r}" for r in range(nprocs)]
    with machine_turn(queue=queue, cores=nprocs * threads) as turn:  # before the store: no port held while waiting
        procs: list = []
        links: list = []  # our end of each rank's pipe
        store = _loopback_store(timeout_s)
        try:
            start_forkserver(ctx.get_start_method())  # seconds on the first run
            pinned = _forkserver_on(turn.cores) if ctx.get_start_method() == "forkserver" else contextlib.nullcontext()
            with _main_not_reimported(), pinned:
                for rank in range(nprocs):
                    ours, theirs = ctx.Pipe()
                    links.append(ours)
                    _CALLER_ENDS.add(ours)
                    args = (
                        target,
                        payload,
                        rank,
                        nprocs,
                        store.port,
                        backend,
                        threads,
                        str(out_dir),
                        theirs,
                        timeout_s,
                        gloo_loop,
                        out_dir_is_temporary,
                        _rank_cores(turn.cores, rank, nprocs, threads),
                    )
                    p = ctx.Process(target=_entry, args=args, name=f"dpkit-rank{rank}", daemon=True)  # type: ignore[attr-defined]
                    procs.append(p)  # before start(): a Ctrl-C inside start() must not leave it untracked
                    try:
                        with _sigint_held_back():
                            p.start()
                    finally:
                        theirs.close()  # the rank has its own copy; ours would hide the rank's exit (EOF) from us
            _supervise(procs, links, time.monotonic() + timeout_s, roles, timeout_s, watch, grace_s)
        finally:
            _kill_all(procs)
            for link in links:
                _close_link(link)  # any rank still running, tracked or not, now exits
            del store


def start_forkserver(method: str | None = None) -> None:
    """Start the forkserver (and multiprocessing's resource tracker) if `method` uses one and none runs yet.

    Both are started with SIGINT blocked, a mask they and every rank forked from the server inherit: a
    terminal's Ctrl-C goes to the whole process group, and a process hit by it while starting Python dies
    with "Fatal Python error: init_sys_streams", or a rank with a KeyboardInterrupt traceback. Only the
    caller should answer Ctrl-C (its launch() then ends the ranks); the one it got meanwhile is delivered
    when the block ends. Call it before making a run's temporary folder: a kill -9 during these seconds
    then leaves no folder behind."""
    if (method or default_start_method()) != "forkserver":
        return
    mp_context("forkserver")  # its preload: a server started without it would import torch in every rank
    multiprocessing.resource_tracker.ensure_running()  # first: it blocks SIGINT itself, then UNblocks it (ours too)
    with sigint_blocked():
        multiprocessing.forkserver.ensure_running()


def temporary_run_folder(method: str | None = None) -> tempfile.TemporaryDirectory:
    """A run's temporary result folder (dpkit-run-*), made after the forkserver is started (start_forkserver)."""
    start_forkserver(method)
    return tempfile.TemporaryDirectory(prefix="dpkit-run-")


@contextlib.contextmanager
def sigint_blocked():
    """Block SIGINT in this thread for the block (processes started in it inherit the mask); a SIGINT that came
    meanwhile is delivered at the end."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_forkserver_lock = threading.Lock()  # runs of this process starting ranks at once take turns pinning the server


def forkserver_pid() -> int | None:
    """The pid of this process's forkserver, if one runs."""
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    return pid if isinstance(pid, int) and pid > 0 else None


@contextlib.contextmanager
def _forkserver_on(cores: list[int] | None):
    """While a run's ranks are forked, the forkserver runs on that run's cores (its core slot), so forking never
    touches the cores of a run beside it; each rank then pins itself to its own core before torch starts threads.
    Between runs the server stays where the last run put it, asleep. None (an unqueued run): the server gets every
    core this process may use again, as its unpinned ranks will."""
    pid = forkserver_pid()
    if pid is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    with _forkserver_lock:
        with contextlib.suppress(OSError):  # a server gone meanwhile: the ranks' start will say so
            os.sched_setaffinity(pid, cores or os.sched_getaffinity(0))
        yield


def _rank_cores(cores: list[int] | None, rank: int, nprocs: int, threads: int) -> list[int] | None:
    """The cores rank `rank` is pinned to: its own `threads` of the run's core slot (one rank per core), or the
    whole slot when it is smaller than processes x threads; None (not pinned) when the turn gave no cores."""
    if not cores:
        return None
    if len(cores) >= nprocs * threads:
        return cores[rank * threads : (rank + 1) * threads]
    return list(cores)


@contextlib.contextmanager
def _sigint_held_back():
    """Delay Ctrl-C (SIGINT) to the end of the block, then deliver it to the handler it was meant for.

    Only the main thread gets KeyboardInterrupt, and only a Python-level handler can be held back;
    elsewhere the block runs as is."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(handler):
        yield
        return
    caught: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if caught:
            handler(*caught[0])


_CALLER_ENDS: weakref.WeakSet = weakref.WeakSet()  # our ends of the ranks' pipes: no process forked from here may hold one


def _close_caller_ends_in_child() -> None:
    """After a fork (start method "fork", or any os.fork of the caller), close the copies of the
    caller's pipe ends: a child holding one would keep that pipe open after the caller died."""
    for link in list(_CALLER_ENDS):
        with contextlib.suppress(OSError):
            link.close()
    _CALLER_ENDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_caller_ends_in_child)


def _close_link(link) -> None:
    """Tell the rank this was on purpose ("stop": it must not delete out_dir, we still own it), then close."""
    _CALLER_ENDS.discard(link)
    with contextlib.suppress(OSError):
        link.send_bytes(b"stop")
    link.close()


def _loopback_store(timeout_s: float) -> dist.TCPStore:
    """The run's rendezvous, listening on 127.0.0.1 only.

    TCPStore("127.0.0.1", 0, is_master=True) binds every interface (`*:port`, IPv4 and IPv6), so any
    host that can reach this one could talk to the store. We bind the socket ourselves and hand it
    over with master_listen_fd; the store owns (and closes) it from then on.
    """
    timeout = timedelta(seconds=timeout_s)
    if sys.platform == "win32":  # master_listen_fd takes a POSIX file descriptor
        return dist.TCPStore("127.0.0.1", 0, None, True, timeout=timeout, wait_for_workers=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(socket.SOMAXCONN)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    fd = sock.detach()  # from here the store's: closing it here as well could close someone else's fd
    return dist.TCPStore("127.0.0.1", port, None, True, timeout=timeout, wait_for_workers=False, master_listen_fd=fd)


_main_lock = threading.Lock()
_main_hidden: dict = {"users": 0, "module": None, "saved": {}}  # guarded by _main_lock


@contextlib.contextmanager
def _main_not_reimported():
    """Hide __main__'s file/spec while starting ranks: the rank code lives in dpkit, so a user's
    script (or '<stdin>', or a notebook) is never re-run in each rank, guard or no guard.

    Runs started from several threads at once share one hiding: the first to enter saves the
    attributes, the last to leave restores them (saving per call, a later call would save the
    hidden state and restore that, leaving __main__.__spec__ None for good)."""
    with _main_lock:
        if _main_hidden["users"] == 0:
            main = sys.modules.get("__main__")
            saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
            if main is not None:
                main.__dict__.pop("__file__", None)
                main.__dict__["__spec__"] = None
            _main_hidden.update(module=main, saved=saved)
        _main_hidden["users"] += 1
    try:
        yield
    finally:
        with _main_lock:
            _main_hidden["users"] -= 1
            main = _main_hidden["module"]
            if _main_hidden["users"] == 0 and main is not None:
                main.__dict__.pop("__spec__", None)
                main.__dict__.update(_main_hidden["saved"])
                _main_hidden.update(module=None, saved={})


def _entry(*args) -> None:
    if hasattr(signal, "pthread_sigmask"):  # a forkserver started elsewhere: Ctrl-C is the caller's to answer
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    from .rank import rank_entry  # preloaded in the forkserver

    rank_entry(*args)


def _kill_all(procs: list) -> None:
    started = [p for p in procs if p.pid is not None]  # one interrupted before start() has no process
    for p in started:
        if p.is_alive():
            p.kill()
    for p in started:
        p.join(timeout=10)


def _read_reports(open_links: dict, reports: dict) -> None:
    """Take in the failure reports the ranks sent (without blocking); forget links at EOF (rank gone)."""
    for rank, link in list(open_links.items()):
        try:
            while link.poll():
                reports[rank] = json.loads(link.recv_bytes())
        except (EOFError, OSError):
            del open_links[rank]


def _supervise(
    procs: list,
    links: list,
    deadline: float,
    roles: list[str],
    timeout_s: float,
    watch: Callable[[], str | None] | None = None,
    grace_s: float = GRACE_S,
) -> None:
    first_failure: float | None = None
    next_watch = time.monotonic() + WATCH_S
    reports: dict[int, dict] = {}
    open_links = dict(enumerate(links))
    while True:
        _read_reports(open_links, reports)  # while running too: a long report must not block its rank
        codes = [p.exitcode for p in procs]
        if all(c == 0 for c in codes):
            return
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        now = time.monotonic()
        if failed and first_failure is None:
            first_failure = now
        if failed and first_failure is not None and (all(c is not None for c in codes) or now - first_failure > grace_s):
            _read_reports(open_links, reports)  # a rank sends before it exits: its report is here now
            raise _failure(procs, failed, reports, roles)
        if now > deadline:
            running = [r for r, c in enumerate(codes) if c is None]
            names = ", ".join(f"{r} ({roles[r]})" for r in running)
            raise RunTimeoutError(
                f"run timed out after {timeout_s:g} s: rank(s) {names} still running and now killed. "
                "A rank waiting on a collective that another rank never enters hangs like this; "
                "raise RunConfig.timeout_s if the run is just slow.",
                running,
            )
        if watch is not None and not failed and now >= next_watch:
            next_watch = now + WATCH_S
            stuck = watch()
            if stuck:
                raise RunStuckError(stuck, [r for r, c in enumerate(codes) if c is None])
        live = [p.sentinel for p in procs if p.exitcode is None]
        multiprocessing.connection.wait(live + list(open_links.values()), timeout=0.05)


def _failure(procs: list, failed: list[int], all_reports: dict[int, dict], roles: list[str]) -> RankFailedError:
    reports = {r: all_reports[r] for r in failed if r in all_reports}
    killed = [r for r in failed if r not in reports and procs[r].exitcode < 0]
    silent = [r for r in failed if r not in reports and procs[r].exitcode > 0]
    if killed:  # killed from outside: the others' errors are only its consequences
        root = killed[0]
        sig = signal.Signals(-procs[root].exitcode).name
        why = f"was killed by signal {sig} (no traceback: the process was stopped from outside, e.g. kill -9 or the OOM killer)"
        tb = ""
    elif silent:  # ended itself (os._exit, a C library's exit): the peers' "connection closed" follow from it
        root = silent[0]
        why, tb = f"exited with code {procs[root].exitcode} without a traceback (os._exit or sys.exit in its code?)", ""
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
    return RankFailedError(msg, root, roles[root], procs[root].exitcode, tb, [p.exitcode for p in procs])
